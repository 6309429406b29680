import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { createTestDatabase, type TestDatabase } from "@repo/db/testing";
import { afterAll, describe, expect, it } from "vitest";
import { scrapeMetrics, startApiProcess } from "./process.ts";

const apiRoot = fileURLToPath(new URL("..", import.meta.url));
const databases: TestDatabase[] = [];
afterAll(async () => {
  for (const database of databases) await database.drop();
});

describe("API process", () => {
  it("boots on an empty database, migrates it, becomes ready, and stops on SIGTERM", async () => {
    const database = await createTestDatabase({ empty: true });
    databases.push(database);
    const api = await startApiProcess({ DATABASE_URL: database.url });
    try {
      await api.ready(30_000);
      const ready = await fetch(`${api.base}/readyz`);
      expect(await ready.json()).toMatchObject({ status: "ready" });
      const health = await fetch(`${api.base}/healthz`);
      expect(health.status).toBe(200);
      expect((await fetch(`${api.base}/metrics`)).status).toBe(401);
      const metrics = await scrapeMetrics(api.base);
      expect(metrics).toContain("db_connection_pool_size");
    } finally {
      expect(await api.stop()).toBe(0);
    }
    expect(api.output()).not.toContain("failed");
  });

  it("refuses to start in production without DATABASE_URL, naming the variable", async () => {
    const env: Record<string, string | undefined> = {
      ...process.env,
      NODE_ENV: "production",
      PORT: "not-a-port",
    };
    delete env.DATABASE_URL;
    const child = spawn("bun", ["src/index.ts"], { cwd: apiRoot, env, stdio: ["ignore", "pipe", "pipe"] });
    let output = "";
    child.stderr.on("data", (chunk) => (output += chunk));
    const code = await new Promise<number | null>((resolve) => child.on("exit", (c) => resolve(c)));
    expect(code).toBe(1);
    expect(output).toContain("PORT");
  });
});
