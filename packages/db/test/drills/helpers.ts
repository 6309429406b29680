// Shared by the fault drills: a durable embedded PostgreSQL of the drill's own, in a temp folder, migrated
// with the real migrations. Each drill stops (and deletes) the server it started.
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { type EmbeddedPostgres, startEmbeddedPostgres } from "../../src/embedded.ts";
import { runMigrations } from "../../src/migrate.ts";
import { queryOnce as query } from "../../src/testing/index.ts";

export interface DrillServer {
  server: EmbeddedPostgres;
  /** Stops the server and removes its folder; safe to call twice. */
  close(): Promise<void>;
}

/** Starts a durable server (fsync on: crash behaviour must be the real one) and migrates its database. */
export async function startDrillServer(): Promise<DrillServer> {
  const root = await mkdtemp(path.join(tmpdir(), "repo-db-drill-"));
  // mkdtemp makes a 0700 folder; as root the server runs as the `postgres` user, which must reach it.
  await chmod(root, 0o755);
  let server: EmbeddedPostgres;
  try {
    // Not removeOnStop: that deletes the data folder on every stop(), and the drills stop and start again.
    server = await startEmbeddedPostgres({ dataDir: path.join(root, "pg") });
    await runMigrations({ url: server.url });
  } catch (error) {
    await rm(root, { recursive: true, force: true });
    throw error;
  }
  let closed = false;
  return {
    server,
    async close() {
      if (closed) return;
      closed = true;
      try {
        await server.stop("fast");
      } finally {
        await rm(root, { recursive: true, force: true });
      }
    },
  };
}

/** One query on a fresh connection (superuser or app URL), closed afterwards. */
export { query };

/** Row count of a table. */
export async function count(url: string, table: string, where = "TRUE", values: unknown[] = []) {
  const result = await query<{ n: string }>(url, `SELECT count(*) AS n FROM ${table} WHERE ${where}`, values);
  return Number(result.rows[0]?.n);
}
