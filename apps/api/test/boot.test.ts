import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { freePort } from "@repo/db/embedded";
import { createTestDatabase, type TestDatabase } from "@repo/db/testing";
import { afterAll, describe, expect, it } from "vitest";

const apiRoot = fileURLToPath(new URL("..", import.meta.url));
const databases: TestDatabase[] = [];
afterAll(async () => {
  for (const database of databases) await database.drop();
});

async function waitFor(url: string, timeoutMs: number): Promise<Response> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      const response = await fetch(url);
      if (response.status === 200) return response;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) throw new Error(`${url} not ready within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

describe("API process", () => {
  it("boots on an empty database, migrates it, becomes ready, and stops on SIGTERM", async () => {
    const database = await createTestDatabase({ empty: true });
    databases.push(database);
    const port = await freePort();
    const child = spawn("bun", ["src/index.ts"], {
      cwd: apiRoot,
      env: {
        ...process.env,
        DATABASE_URL: database.url,
        PORT: String(port),
        HOST: "127.0.0.1",
        NODE_ENV: "production",
        LOG_LEVEL: "warn",
      },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let output = "";
    child.stderr.on("data", (chunk) => (output += chunk));
    const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
    try {
      const ready = await waitFor(`http://127.0.0.1:${port}/readyz`, 30_000);
      expect(await ready.json()).toMatchObject({ status: "ready" });
      const health = await fetch(`http://127.0.0.1:${port}/healthz`);
      expect(health.status).toBe(200);
      const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
      expect(metrics).toContain("db_connection_pool_size");
    } finally {
      child.kill("SIGTERM");
    }
    expect(await exited).toBe(0);
    expect(output).not.toContain("failed");
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
