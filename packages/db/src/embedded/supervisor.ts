// Process supervision: finding a server already running on a data folder, picking a port, waiting until the
// server answers, and the postmaster as a child process (started, watched, stopped, killed if we exit first).
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { createServer } from "node:net";
import path from "node:path";
import pg from "pg";
import type { RunAs } from "./os-user.ts";
import type { ShutdownMode } from "./types.ts";

/** Asks the OS for a free loopback port. */
export async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === "EPERM";
  }
}

/** Reads postmaster.pid: a live server on this data folder, with its port. */
export async function runningServer(dataDir: string): Promise<{ pid: number; port: number } | undefined> {
  const file = path.join(dataDir, "postmaster.pid");
  if (!existsSync(file)) return undefined;
  const lines = (await readFile(file, "utf8")).split("\n");
  const pid = Number(lines[0]);
  const port = Number(lines[3]);
  if (!Number.isInteger(pid) || pid <= 0 || !Number.isInteger(port) || !isAlive(pid)) return undefined;
  return { pid, port };
}

/** Polls `url` with `SELECT 1` until it answers; fails early when `exited` gives the server's exit reason. */
export async function waitUntilReady(
  adminUrl: string,
  timeoutMs: number,
  exited: () => string | undefined,
  what = "PostgreSQL",
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  while (Date.now() < deadline) {
    const exitReason = exited();
    if (exitReason !== undefined) throw new Error(`${what} exited during start-up: ${exitReason}`);
    const client = new pg.Client({ connectionString: adminUrl, connectionTimeoutMillis: 1000 });
    client.on("error", () => {});
    try {
      await client.connect();
      await client.query("SELECT 1");
      await client.end();
      return;
    } catch (error) {
      lastError = error;
      await client.end().catch(() => {});
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
  throw new Error(`${what} did not accept connections within ${timeoutMs} ms: ${String(lastError)}`);
}

/** What the supervisor needs to run the postmaster. */
export interface ServerProcessSpec {
  /** The `postgres` binary. */
  postgres: string;
  /** Its command line (see serverArgs). */
  args: string[];
  /** The OS user it runs as (see runAs). */
  owner: RunAs;
  /** Superuser URL polled for readiness. */
  adminUrl: string;
  startTimeoutMs: number;
  /** Receives the server's log lines. */
  log: (line: string) => void;
}

/** The postmaster as a child process; `pid` is undefined while it is not running. */
export interface ServerProcess {
  readonly pid: number | undefined;
  /** Spawns the server and waits until it answers; does nothing while it runs. */
  start(): Promise<void>;
  /** Stops it with `mode` (default `fast`) and waits for its exit; does nothing when it is not running. */
  stop(mode?: ShutdownMode): Promise<void>;
}

/** The state a supervisor shares with the listeners it puts on its child. */
interface Supervision {
  child: ChildProcess | undefined;
  exitReason: string | undefined;
  /** The last log lines, quoted when the server exits. */
  tail: string[];
}

/** Runs the postmaster as a child process that start() (re)spawns and stop() signals. */
export function superviseServer(spec: ServerProcessSpec): ServerProcess {
  const state: Supervision = { child: undefined, exitReason: undefined, tail: [] };
  // A last resort if the caller exits without stopping us: an orphaned postmaster would hold the port.
  const onExit = () => state.child?.kill("SIGQUIT");

  const start = async () => {
    if (state.child) return;
    state.exitReason = undefined;
    state.tail = [];
    const proc = spawnServer(spec);
    state.child = proc;
    process.once("exit", onExit);
    watch(proc, state, spec.log, onExit);
    try {
      await waitUntilReady(spec.adminUrl, spec.startTimeoutMs, () => state.exitReason);
    } catch (error) {
      proc.kill("SIGQUIT");
      throw error;
    }
  };

  const stop = async (mode: ShutdownMode = "fast") => {
    const proc = state.child;
    if (!proc) return;
    await signalAndWait(proc, mode);
    state.child = undefined;
  };

  return {
    get pid() {
      return state.child?.pid;
    },
    start,
    stop,
  };
}

function spawnServer(spec: ServerProcessSpec): ChildProcess {
  // Its own process group: a Ctrl-C in the terminal reaches us, and we close our pool before stopping it.
  return spawn(spec.postgres, spec.args, {
    ...spec.owner,
    detached: true,
    stdio: ["ignore", "ignore", "pipe"],
    env: { ...process.env, LC_ALL: "C" },
  });
}

/** Forwards the child's log lines (keeping the last 20) and records why it exited. */
function watch(
  proc: ChildProcess,
  state: Supervision,
  log: (line: string) => void,
  onExit: () => void,
): void {
  proc.stderr?.setEncoding("utf8");
  proc.stderr?.on("data", (chunk: string) => {
    for (const line of chunk.split("\n")) {
      if (!line) continue;
      state.tail.push(line);
      if (state.tail.length > 20) state.tail.shift();
      log(line);
    }
  });
  proc.on("exit", (code, signal) => {
    state.exitReason = `code ${code ?? "null"}, signal ${signal ?? "null"}; last log lines:\n${state.tail.join("\n")}`;
    if (state.child === proc) state.child = undefined;
    process.removeListener("exit", onExit);
  });
}

/** `smart` is SIGTERM, `fast` SIGINT, `immediate` SIGQUIT; SIGKILL after 30 s without an exit. */
async function signalAndWait(proc: ChildProcess, mode: ShutdownMode): Promise<void> {
  const signal = mode === "smart" ? "SIGTERM" : mode === "fast" ? "SIGINT" : "SIGQUIT";
  await new Promise<void>((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return resolve();
    const timer = setTimeout(() => proc.kill("SIGKILL"), 30_000);
    proc.once("exit", () => {
      clearTimeout(timer);
      resolve();
    });
    proc.kill(signal);
  });
}
