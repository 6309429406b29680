// A primary and a streaming replica on loopback, for tests of replica reads: the replica is a cold copy of the
// primary's data folder (stopped for the copy, started again) with standby.signal and primary_conninfo, so it
// replays the primary's WAL over a replication connection as a hot standby. Both are embedded servers in one
// temporary folder; close() stops both and removes it.
import { execFile } from "node:child_process";
import { appendFile, chmod, chown, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { promisify } from "node:util";
import pg from "pg";
import { type EmbeddedPostgres, freePort, runAs, startEmbeddedPostgres } from "../embedded.ts";
import { runMigrations } from "../migrate.ts";

export interface StreamingPair {
  primary: EmbeddedPostgres;
  replica: EmbeddedPostgres;
  /** Superuser query on the replica (pause or resume replay), on `database` (default `postgres`). */
  onReplica(sql: string, database?: string): Promise<pg.QueryResult>;
  /** Superuser query on the primary, on `database` (default `postgres`). */
  onPrimary(sql: string, database?: string): Promise<pg.QueryResult>;
  /** Pauses the replica's replay and waits until it has actually stopped (a pause is only requested at first). */
  pauseReplay(): Promise<void>;
  resumeReplay(): Promise<void>;
  /** Waits until the replica has replayed everything the primary had written when this was called. */
  caughtUp(timeoutMs?: number): Promise<void>;
  /** Stops both servers and removes their folders; safe to call twice. */
  close(): Promise<void>;
}

async function once(url: string, sql: string, values: unknown[] = []): Promise<pg.QueryResult> {
  const client = new pg.Client({ connectionString: url });
  client.on("error", () => {});
  await client.connect();
  try {
    return await client.query(sql, values);
  } finally {
    await client.end().catch(() => {});
  }
}

function onDatabase(adminUrl: string, database = "postgres"): string {
  const url = new URL(adminUrl);
  url.pathname = `/${database}`;
  return url.toString();
}

/** Starts a migrated primary and a streaming replica of it. */
export async function startStreamingPair(): Promise<StreamingPair> {
  const root = await mkdtemp(path.join(tmpdir(), "repo-db-replica-"));
  // As root the servers run as `postgres`, which must reach the folders.
  await chmod(root, 0o755);
  const started: EmbeddedPostgres[] = [];
  let closed = false;
  const close = async () => {
    if (closed) return;
    closed = true;
    for (const server of started.reverse()) await server.stop("fast").catch(() => {});
    await rm(root, { recursive: true, force: true });
  };
  try {
    const primary = await startEmbeddedPostgres({ dataDir: path.join(root, "primary") });
    started.push(primary);
    await runMigrations({ url: primary.url });

    // A cold copy: consistent without pg_basebackup (the embedded binaries are initdb, pg_ctl and postgres).
    const replicaDir = path.join(root, "replica");
    await primary.stop("fast");
    try {
      // cp -a keeps the owner (the `postgres` OS user when running as root) and the 0700 mode.
      await promisify(execFile)("cp", ["-a", primary.dataDir, replicaDir]);
    } finally {
      await primary.start();
    }
    const owner = runAs();
    const signal = path.join(replicaDir, "standby.signal");
    await writeFile(signal, "");
    const auto = path.join(replicaDir, "postgresql.auto.conf");
    const admin = new URL(primary.adminUrl);
    const conninfo = `host=127.0.0.1 port=${primary.port} user=postgres password=${decodeURIComponent(admin.password)} application_name=replica`;
    await appendFile(auto, `\nprimary_conninfo = '${conninfo}'\nhot_standby = on\n`);
    if (owner.uid !== undefined && owner.gid !== undefined) await chown(signal, owner.uid, owner.gid);
    await rm(path.join(replicaDir, "postmaster.pid"), { force: true });

    const replica = await startEmbeddedPostgres({ dataDir: replicaDir, port: await freePort() });
    started.push(replica);

    const pair: StreamingPair = {
      primary,
      replica,
      onReplica: (sql, database) => once(onDatabase(replica.adminUrl, database), sql),
      async pauseReplay() {
        await once(replica.adminUrl, "SELECT pg_wal_replay_pause()");
        const deadline = Date.now() + 10_000;
        for (;;) {
          const state = await once(replica.adminUrl, "SELECT pg_get_wal_replay_pause_state() AS state");
          if (state.rows[0]?.state === "paused") return;
          if (Date.now() > deadline) throw new Error("the replica's replay did not pause");
          await new Promise((resolve) => setTimeout(resolve, 10));
        }
      },
      async resumeReplay() {
        await once(replica.adminUrl, "SELECT pg_wal_replay_resume()");
      },
      onPrimary: (sql, database) => once(onDatabase(primary.adminUrl, database), sql),
      async caughtUp(timeoutMs = 30_000) {
        const target = (await once(primary.adminUrl, "SELECT pg_current_wal_lsn()::text AS lsn")).rows[0]
          ?.lsn;
        const deadline = Date.now() + timeoutMs;
        for (;;) {
          const behind = await once(
            replica.adminUrl,
            "SELECT pg_wal_lsn_diff($1::pg_lsn, pg_last_wal_replay_lsn()) AS bytes",
            [target],
          );
          if (Number(behind.rows[0]?.bytes) <= 0) return;
          if (Date.now() > deadline) throw new Error("the replica did not catch up");
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
      },
      close,
    };
    await pair.caughtUp();
    return pair;
  } catch (error) {
    await close();
    throw error;
  }
}
