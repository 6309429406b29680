// Child processes the bench starts (HTTP servers, redis-server): output captured for error messages, a bounded
// wait for readiness, and a stop that escalates to SIGKILL, so nothing outlives the run.
import { type ChildProcess, spawn } from "node:child_process";
import { closeSync, openSync } from "node:fs";

export interface Child {
  readonly name: string;
  readonly process: ChildProcess;
  /** The last few kilobytes of stdout and stderr. */
  output(): string;
  /** Throws (with the output) if the process has exited. */
  assertRunning(): void;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. Safe to call twice. */
  stop(graceMs?: number): Promise<void>;
}

const OUTPUT_LIMIT = 16_384;

export function startChild(
  name: string,
  command: string,
  args: string[],
  options: {
    cwd?: string;
    env?: Record<string, string | undefined>;
    /**
     * Send stdout to this file instead of through the bench process: a server logging every request (as the
     * API does by default) then writes to a file, as in production, and the bench's own event loop, which
     * also drives autocannon, does not carry its log lines.
     */
    stdoutFile?: string;
  } = {},
): Child {
  let output = "";
  const keep = (chunk: Buffer) => {
    output = (output + chunk.toString("utf8")).slice(-OUTPUT_LIMIT);
  };
  const stdoutFd = options.stdoutFile === undefined ? undefined : openSync(options.stdoutFile, "w");
  const child = spawn(command, args, {
    cwd: options.cwd,
    env: { ...process.env, ...options.env },
    stdio: ["ignore", stdoutFd ?? "pipe", "pipe"],
  });
  // The child has its own copy of the descriptor.
  if (stdoutFd !== undefined) closeSync(stdoutFd);
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  child.on("error", (error) => {
    output += `\n[spawn error] ${error.message}`;
  });
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    child.once("exit", () => resolve());
    child.once("error", () => resolve());
  });
  // Last resort when the bench itself exits without stopping us.
  const onExit = () => child.kill("SIGKILL");
  process.once("exit", onExit);
  const running = () => child.exitCode === null && child.signalCode === null && child.pid !== undefined;

  return {
    name,
    process: child,
    output: () => output,
    assertRunning() {
      if (!running()) {
        throw new Error(
          `${name} exited (code ${child.exitCode ?? "null"}, signal ${child.signalCode ?? "null"}):\n${output}`,
        );
      }
    },
    async stop(graceMs = 10_000) {
      if (running()) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
        await exited;
        clearTimeout(timer);
      }
      process.removeListener("exit", onExit);
    },
  };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` every 100 ms until it returns true; fails fast if `child` dies, and after `timeoutMs`. */
export async function waitUntil(
  child: Child,
  what: string,
  check: () => Promise<boolean>,
  timeoutMs = 45_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    child.assertRunning();
    try {
      if (await check()) return;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      throw new Error(`${child.name}: ${what} not within ${timeoutMs} ms:\n${child.output()}`);
    }
    await sleep(100);
  }
}

/** Resolves when GET `url` answers `status`. */
export async function waitForHttp(
  child: Child,
  url: string,
  status = 200,
  timeoutMs?: number,
): Promise<void> {
  await waitUntil(
    child,
    `${url} answering ${status}`,
    async () => {
      const response = await fetch(url, { signal: AbortSignal.timeout(2000) });
      await response.arrayBuffer();
      return response.status === status;
    },
    timeoutMs,
  );
}
