// The real API process (bun src/index.ts) for end-to-end tests and drills: started on a free loopback port,
// its output captured, stopped by the test that started it.
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { freePort } from "@repo/db/embedded";

const apiRoot = fileURLToPath(new URL("..", import.meta.url));

/** The METRICS_TOKEN every test process gets: /metrics answers 404 in production without one. */
export const METRICS_TOKEN = "test-metrics-token-0123456789";

/** GET /metrics of a test process, with its token. */
export async function scrapeMetrics(base: string): Promise<string> {
  const response = await fetch(`${base}/metrics`, { headers: { authorization: `Bearer ${METRICS_TOKEN}` } });
  if (response.status !== 200) throw new Error(`/metrics answered ${response.status}`);
  return await response.text();
}

export interface ApiProcess {
  child: ChildProcess;
  base: string;
  exited: Promise<number | null>;
  output(): string;
  /** Resolves when /readyz answers 200; throws with the process output after `timeoutMs`. */
  ready(timeoutMs?: number): Promise<void>;
  /** SIGTERM (graceful shutdown) and the exit code. */
  stop(): Promise<number | null>;
}

/**
 * Starts `bun src/index.ts` in production mode with `env` on top of this process's environment (a function gets
 * the server's base URL first, for settings such as APP_URL that name the server itself).
 */
export async function startApiProcess(
  env: Record<string, string> | ((base: string) => Record<string, string>),
): Promise<ApiProcess> {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const extra = typeof env === "function" ? env(base) : env;
  let output = "";
  const child = spawn("bun", ["src/index.ts"], {
    cwd: apiRoot,
    env: {
      ...process.env,
      PORT: String(port),
      HOST: "127.0.0.1",
      NODE_ENV: "production",
      APP_URL: "http://app.test",
      METRICS_TOKEN,
      LOG_LEVEL: "warn",
      ...extra,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout?.on("data", (chunk) => (output += chunk));
  child.stderr?.on("data", (chunk) => (output += chunk));
  const exited = new Promise<number | null>((resolve) => child.on("exit", (code) => resolve(code)));
  return {
    child,
    base,
    exited,
    output: () => output,
    async ready(timeoutMs = 45_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        try {
          if ((await fetch(`${base}/readyz`)).status === 200) return;
        } catch {
          // not listening yet
        }
        if (child.exitCode !== null) throw new Error(`API exited with ${child.exitCode}:\n${output}`);
        if (Date.now() > deadline) throw new Error(`API not ready within ${timeoutMs} ms:\n${output}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    },
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
      return await exited;
    },
  };
}
