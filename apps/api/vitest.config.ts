import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    globalSetup: ["@repo/db/testing/global-setup"],
    include: ["src/**/*.test.ts", "test/**/*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: "forks",
    maxWorkers: 2,
    reporters: ["default", "json"],
    outputFile: { json: ".vitest/report.json" },
  },
});
