import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    globalSetup: ["./src/testing/global-setup.ts"],
    include: ["src/**/*.test.ts", "test/**/*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: "forks",
    // Two cores: one worker per core; each test file has its own database anyway.
    maxWorkers: 2,
    reporters: ["default", "json"],
    outputFile: { json: ".vitest/report.json" },
  },
});
