// API_WORKERS: the real `bun src/index.ts` as a supervisor of several API processes on one port. Connections
// spread over the workers, /metrics sums them, a killed worker is replaced while the others keep answering,
// SIGTERM stops them all, and a killed supervisor takes its workers down with it.

import { spawn } from "node:child_process";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { createTestDatabase, type TestDatabase } from "@repo/db/testing";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { ConfigError, loadApiConfig } from "../src/config.ts";
import { type ApiProcess, scrapeMetrics, startApiProcess } from "./process.ts";

let database: TestDatabase;
let running: ApiProcess[] = [];

beforeAll(async () => {
  database = await createTestDatabase();
});

afterEach(async () => {
  for (const api of running) await api.stop();
  running = [];
});

afterAll(async () => {
  await database.drop();
});

/** The JSON log lines the process (supervisor and workers) has written so far. */
function lines(api: ApiProcess): Array<Record<string, unknown>> {
  return api
    .output()
    .split("\n")
    .filter((line) => line.startsWith("{"))
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

/** The pid each worker index last announced in its "API listening" line. */
function workerPids(api: ApiProcess): Map<number, number> {
  const pids = new Map<number, number>();
  for (const line of lines(api)) {
    if (line.msg === "API listening") pids.set(Number(line.worker), Number(line.pid));
  }
  return pids;
}

const alive = (pid: number): boolean => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

async function until(check: () => boolean, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** A session check without a session (401, access-logged), on a new connection each time: the kernel picks a
 * worker per connection. */
async function check(api: ApiProcess): Promise<number> {
  const response = await fetch(`${api.base}/v1/auth/session`, { headers: { connection: "close" } });
  await response.arrayBuffer();
  return response.status;
}

async function startWorkers(count: number): Promise<ApiProcess> {
  const api = await startApiProcess({
    DATABASE_URL: database.url,
    API_WORKERS: String(count),
    LOG_LEVEL: "info",
    SHUTDOWN_TIMEOUT_MS: "2000",
  });
  running.push(api);
  await api.ready();
  await until(() => workerPids(api).size === count, `${count} workers listening`);
  return api;
}

describe("API_WORKERS", () => {
  it("two workers share the port; /metrics counts both; a killed worker is replaced with no failed request; SIGTERM stops all", async () => {
    const api = await startWorkers(2);
    const first = workerPids(api);
    expect([...first.keys()].sort()).toEqual([0, 1]);

    const statuses = await Promise.all(Array.from({ length: 40 }, () => check(api)));
    expect(statuses.every((status) => status === 401)).toBe(true);
    // Access lines carry the worker's index: both served some of the 40 connections.
    await until(
      () =>
        new Set(
          lines(api)
            .filter((l) => l.route === "/v1/auth/session")
            .map((l) => l.worker),
        ).size === 2,
      "access lines from both workers",
      5000,
    );
    // Whichever worker answers /metrics, it counts every worker's requests.
    for (let i = 0; i < 4; i++) {
      const text = await scrapeMetrics(api.base);
      expect(text).toMatch(
        /^http_requests_total\{method="GET",route="\/v1\/auth\/session",status="401"\} 40$/m,
      );
    }

    const victim = first.get(1) as number;
    process.kill(victim, "SIGKILL");
    await until(() => !alive(victim), "the killed worker to be gone");
    // The other worker takes every new connection meanwhile.
    const during = await Promise.all(Array.from({ length: 30 }, () => check(api)));
    expect(during.every((status) => status === 401)).toBe(true);
    await until(() => workerPids(api).get(1) !== victim, "worker 1 restarted", 30_000);
    const restarted = lines(api).find((l) => l.msg === "API worker exited; restarting it");
    expect(restarted).toMatchObject({ worker: 1, pid: victim, signal: "SIGKILL" });
    const second = workerPids(api);
    expect(alive(second.get(1) as number)).toBe(true);
    expect(second.get(0)).toBe(first.get(0));

    expect(await api.stop()).toBe(0);
    for (const pid of second.values()) expect(alive(pid)).toBe(false);
    // Every line was written whole: supervisor and workers share stdout.
    expect(() => lines(api)).not.toThrow();
  });

  it("workers stop by themselves when the supervisor is killed", async () => {
    const api = await startWorkers(2);
    const pids = [...workerPids(api).values()];
    api.child.kill("SIGKILL");
    await api.exited;
    await until(() => pids.every((pid) => !alive(pid)), "the workers to stop", 15_000);
  });

  it("a worker that keeps failing at start makes the supervisor stop and give up, not retry forever", async () => {
    // The supervisor uses Bun.spawn, so it runs under Bun in a script of its own (vitest runs on Node).
    const dir = await mkdtemp(path.join(tmpdir(), "api-workers-"));
    try {
      const entry = path.join(dir, "fails.ts");
      await writeFile(entry, "process.exit(3);\n");
      const script = path.join(dir, "supervise.ts");
      const workers = fileURLToPath(new URL("../src/workers.ts", import.meta.url));
      await writeFile(
        script,
        `import { superviseWorkers } from ${JSON.stringify(workers)};
const logger = { info() {}, error(_fields, message) { console.log(message); } };
superviseWorkers({ count: 2, entry: ${JSON.stringify(entry)}, env: process.env, logger, stopTimeoutMs: 2000,
  restartDelayMs: { min: 10, max: 20 }, maxQuickFailures: 3, onGiveUp: () => { console.log("gave up"); process.exit(1); } });
`,
      );
      const child = spawn("bun", [script], { stdio: ["ignore", "pipe", "pipe"] });
      let output = "";
      child.stdout.on("data", (chunk) => (output += chunk));
      child.stderr.on("data", (chunk) => (output += chunk));
      const code = await new Promise<number | null>((resolve) => child.on("exit", resolve));
      expect(code).toBe(1);
      expect(output).toContain("API worker keeps failing at start; stopping every worker");
      expect(output).toContain("gave up");
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  }, 30_000);

  it("API_WORKERS takes auto or 1..64", () => {
    expect(loadApiConfig({}).API_WORKERS).toBe(1);
    expect(loadApiConfig({ API_WORKERS: "auto" }).API_WORKERS).toBeGreaterThanOrEqual(1);
    expect(loadApiConfig({ API_WORKERS: "3" }).API_WORKERS).toBe(3);
    for (const bad of ["0", "65", "two", "1.5", "-1"]) {
      expect(() => loadApiConfig({ API_WORKERS: bad })).toThrow(ConfigError);
    }
  });
});
