import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // The JSON report is what CI's closing line counts (.ci/run).
    reporters: ["default", "json"],
    outputFile: { json: ".vitest/report.json" },
  },
});
