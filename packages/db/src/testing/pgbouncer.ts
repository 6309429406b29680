// A real PgBouncer in transaction mode in front of a test database, for proving that the data layer works
// behind a transaction-mode pooler. Uses the `pgbouncer` binary when installed (Debian's is 1.18, which does
// not track prepared statements); tests skip with a reason when it is not.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { chmod, chown, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { describe, it } from "vitest";
import { freePort, runAs, waitUntilReady } from "../embedded.ts";

const CANDIDATES = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer"];

/** The pgbouncer binary, or undefined when it is not installed. */
export function findPgBouncer(): string | undefined {
  const found = CANDIDATES.find((candidate) => existsSync(candidate));
  if (found) return found;
  try {
    return execFileSync("which", ["pgbouncer"], { encoding: "utf8" }).trim() || undefined;
  } catch {
    return undefined;
  }
}

/**
 * `describe` for tests that need a real PgBouncer: skipped without the binary, except under CI (which installs
 * it), where a missing PgBouncer is a failing test, not a silent skip.
 */
export function describeWithPgBouncer(title: string, body: () => void): void {
  const found = findPgBouncer() !== undefined;
  if (process.env.CI && !found) {
    it(`${title}: PgBouncer is installed (CI installs it for the transaction-pooler tests)`, () => {
      throw new Error("CI is set but no pgbouncer binary was found: the transaction-pooler tests cannot run");
    });
  }
  describe.skipIf(!found)(title, body);
}

export interface PgBouncer {
  /** postgres:// URL of the target database through the pooler (same user and password). */
  url: string;
  version: string;
  stop(): Promise<void>;
}

/**
 * Starts PgBouncer on a free loopback port in transaction mode with `poolSize` server connections, in front of
 * the database at `targetUrl`. Startup parameters other than extra_float_digits (and `ignoreStartupParameters`)
 * make it refuse the connection, as PgBouncer does by default.
 * @throws Error when the binary is missing or it does not accept connections within 10 s.
 */
export async function startPgBouncer(
  targetUrl: string,
  options: { poolSize?: number; ignoreStartupParameters?: string[]; settings?: Record<string, string> } = {},
): Promise<PgBouncer> {
  const binary = findPgBouncer();
  if (!binary) throw new Error("pgbouncer is not installed");
  const target = new URL(targetUrl);
  const user = decodeURIComponent(target.username);
  const password = decodeURIComponent(target.password);
  const database = target.pathname.slice(1);
  const port = await freePort();
  const dir = await mkdtemp(path.join(tmpdir(), "repo-db-pgbouncer-"));
  await chmod(dir, 0o755);
  const quoted = (value: string) => `"${value.replaceAll('"', '""')}"`;
  await writeFile(path.join(dir, "users.txt"), `${quoted(user)} ${quoted(password)}\n`);
  await writeFile(
    path.join(dir, "pgbouncer.ini"),
    [
      "[databases]",
      `${database} = host=${target.hostname} port=${target.port} dbname=${database}`,
      "[pgbouncer]",
      "listen_addr = 127.0.0.1",
      `listen_port = ${port}`,
      `unix_socket_dir = ${dir}`,
      "auth_type = plain",
      `auth_file = ${path.join(dir, "users.txt")}`,
      "pool_mode = transaction",
      `default_pool_size = ${options.poolSize ?? 2}`,
      "max_client_conn = 200",
      // Anything else a client sends at start-up (statement_timeout, ...) is refused, as by a real deployment.
      `ignore_startup_parameters = ${["extra_float_digits", ...(options.ignoreStartupParameters ?? [])].join(",")}`,
      `logfile = ${path.join(dir, "pgbouncer.log")}`,
      ...Object.entries(options.settings ?? {}).map(([name, value]) => `${name} = ${value}`),
      "",
    ].join("\n"),
  );
  // PgBouncer refuses to run as root: as root, run it as the user the embedded server runs as.
  const owner = runAs();
  if (owner.uid !== undefined && owner.gid !== undefined) {
    for (const file of ["", "users.txt", "pgbouncer.ini"])
      await chown(path.join(dir, file), owner.uid, owner.gid);
  }
  const version = execFileSync(binary, ["--version"], { encoding: "utf8" }).split("\n")[0] ?? "pgbouncer";
  let output = "";
  const child: ChildProcess = spawn(binary, [path.join(dir, "pgbouncer.ini")], {
    ...owner,
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout?.on("data", (chunk) => (output += chunk));
  child.stderr?.on("data", (chunk) => (output += chunk));
  const exited = new Promise<void>((resolve) => child.once("exit", () => resolve()));
  const url = new URL(targetUrl);
  url.hostname = "127.0.0.1";
  url.port = String(port);
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM");
    await exited;
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const exitReason = () => (child.exitCode === null ? undefined : `exit code ${child.exitCode}`);
    await waitUntilReady(url.toString(), 10_000, exitReason, "PgBouncer");
  } catch (error) {
    await stop();
    throw new Error(`${(error as Error).message}\n${output}`);
  }
  return { url: url.toString(), version, stop };
}
