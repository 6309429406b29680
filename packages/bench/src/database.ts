// The PostgreSQL the bench runs against: an embedded server in a temporary folder (default), or a fresh
// database created on the server of BENCH_DATABASE_URL. Either way the schema comes from the real migrations,
// and `close()` removes whatever was created.
import { randomBytes } from "node:crypto";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { runMigrations } from "@repo/db";
import { startEmbeddedPostgres } from "@repo/db/embedded";
import pg from "pg";

export interface BenchDatabase {
  /** URL of the fresh, migrated database, for an application (non-superuser) role. */
  url: string;
  /** "embedded" or the redacted external server. */
  source: string;
  serverVersion: string;
  /** The postmaster's process id when the bench started the server (embedded), else undefined. */
  readonly serverPid: number | undefined;
  close(): Promise<void>;
}

async function withClient<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 10_000 });
  client.on("error", () => {
    // A broken connection surfaces as the failure of the query in flight.
  });
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => {});
  }
}

function withDatabase(serverUrl: string, database: string): string {
  const url = new URL(serverUrl);
  url.pathname = `/${database}`;
  return url.toString();
}

async function serverVersion(url: string): Promise<string> {
  return await withClient(url, async (client) => {
    const result = await client.query<{ server_version: string }>("SHOW server_version");
    return result.rows[0]?.server_version ?? "unknown";
  });
}

/** A new database on an existing server; its role needs CREATEDB. Dropped on close. */
async function externalDatabase(serverUrl: string): Promise<BenchDatabase> {
  const name = `bench_${Date.now().toString(36)}_${randomBytes(3).toString("hex")}`;
  await withClient(serverUrl, (client) => client.query(`CREATE DATABASE "${name}"`));
  const url = withDatabase(serverUrl, name);
  const parsed = new URL(serverUrl);
  const close = async () => {
    // FORCE: a pool that failed to close must not keep the database alive (PostgreSQL 13+).
    await withClient(serverUrl, (client) => client.query(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`));
  };
  try {
    const source = `BENCH_DATABASE_URL (${parsed.hostname}:${parsed.port || "5432"})`;
    return { url, source, serverVersion: await serverVersion(url), serverPid: undefined, close };
  } catch (error) {
    await close();
    throw error;
  }
}

/** An embedded server in a temporary folder, stopped and deleted on close. Server defaults (fsync on). */
async function embeddedDatabase(): Promise<BenchDatabase> {
  const root = await mkdtemp(path.join(tmpdir(), "repo-bench-"));
  // mkdtemp makes a 0700 folder; as root the server runs as the `postgres` user, which must reach it.
  await chmod(root, 0o755);
  try {
    const server = await startEmbeddedPostgres({
      dataDir: path.join(root, "pg"),
      database: "bench",
      role: "bench",
      rolePassword: randomBytes(12).toString("hex"),
      removeOnStop: true,
    });
    const close = async () => {
      try {
        await server.stop();
      } finally {
        await rm(root, { recursive: true, force: true });
      }
    };
    try {
      return {
        url: server.url,
        source: "embedded",
        serverVersion: await serverVersion(server.url),
        get serverPid() {
          return server.pid;
        },
        close,
      };
    } catch (error) {
      await close();
      throw error;
    }
  } catch (error) {
    await rm(root, { recursive: true, force: true });
    throw error;
  }
}

/** Starts (or creates) the database and applies the migrations. */
export async function openBenchDatabase(externalUrl: string | undefined): Promise<BenchDatabase> {
  const database = externalUrl ? await externalDatabase(externalUrl) : await embeddedDatabase();
  try {
    await runMigrations({ url: database.url });
    return database;
  } catch (error) {
    await database.close();
    throw error;
  }
}
