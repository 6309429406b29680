// Applies the migrations in packages/db/drizzle with Drizzle's migrator, on one dedicated connection under a
// session-level advisory lock, so several processes starting at once apply each migration exactly once
// (Drizzle's migrator takes no lock of its own: drizzle-orm#874). Also reports and prints pending migrations.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { sql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/node-postgres";
import { migrate } from "drizzle-orm/node-postgres/migrator";
import pg from "pg";
import { type DatabaseConfig, databaseConfigFromUrl } from "./config.ts";
import { clientOptions, type DatabaseOrTransaction, db } from "./connection.ts";
import { DbError, toDbError } from "./errors.ts";
import { advisoryLockKey } from "./locks.ts";
import { type Logger, noopLogger } from "./logger.ts";
import { withMetrics } from "./metrics.ts";

/** The folder holding the SQL migrations and drizzle-kit's journal. */
export const migrationsFolder = fileURLToPath(new URL("../drizzle", import.meta.url));

/** The schema and table where Drizzle's migrator records applied migrations. */
const MIGRATIONS_TABLE = `"drizzle"."__drizzle_migrations"`;

export interface MigrationFile {
  /** drizzle-kit's tag, e.g. `0001_tables`. */
  tag: string;
  /** The journal timestamp; the migrator applies files newer than the last one applied. */
  when: number;
  sql: string;
}

export interface MigrationStatus {
  applied: MigrationFile[];
  pending: MigrationFile[];
  /** Rows in the migrations table that match no file here: a migration from another branch or release. */
  unknown: { createdAt: number; hash: string }[];
}

interface Journal {
  entries: { idx: number; when: number; tag: string }[];
}

/** Reads the journal and the SQL of every migration, in order. */
export function readMigrations(folder: string = migrationsFolder): MigrationFile[] {
  const journal = JSON.parse(readFileSync(path.join(folder, "meta", "_journal.json"), "utf8")) as Journal;
  return journal.entries.map((entry) => ({
    tag: entry.tag,
    when: entry.when,
    sql: readFileSync(path.join(folder, `${entry.tag}.sql`), "utf8"),
  }));
}

export interface MigrateOptions {
  /** Connection string; defaults to DATABASE_DIRECT_URL, then DATABASE_URL, from `config`. */
  url?: string;
  config?: DatabaseConfig;
  folder?: string;
  logger?: Logger;
  /** How long to wait for another process's migration lock. Default 5 minutes. */
  lockTimeoutMs?: number;
}

function resolveConfig(options: MigrateOptions): { config: DatabaseConfig; url: string } {
  const config =
    options.config ??
    databaseConfigFromUrl(options.url ?? process.env.DATABASE_DIRECT_URL ?? process.env.DATABASE_URL ?? "");
  if (!options.url && config.transactionPooler && !config.directUrl) {
    // The migration lock is held by the session, which a transaction-mode pooler does not keep.
    throw new DbError(
      "CONFIG_INVALID",
      "DATABASE_DIRECT_URL is required for migrations when DATABASE_URL is a transaction-mode pooler",
      { details: { DATABASE_DIRECT_URL: "required with a transaction-mode pooler" } },
    );
  }
  return { config, url: options.url ?? config.directUrl ?? config.url };
}

async function dedicatedClient(config: DatabaseConfig, url: string, name: string): Promise<pg.Client> {
  // Migrations may run longer than the application's statement timeout.
  const client = new pg.Client({
    ...clientOptions(config, url),
    application_name: name,
    statement_timeout: 0,
  });
  client.on("error", () => {
    // A broken connection surfaces as the failure of the query in flight.
  });
  try {
    await client.connect();
  } catch (error) {
    await client.end().catch(() => {});
    throw toDbError(error);
  }
  return client;
}

async function appliedRows(client: pg.Client): Promise<{ createdAt: number; hash: string }[]> {
  const exists = await client.query<{ found: string | null }>(
    `SELECT to_regclass('drizzle.__drizzle_migrations')::text AS found`,
  );
  if (!exists.rows[0]?.found) return [];
  const rows = await client.query<{ created_at: string; hash: string }>(
    `SELECT created_at, hash FROM ${MIGRATIONS_TABLE} ORDER BY created_at`,
  );
  return rows.rows.map((row) => ({ createdAt: Number(row.created_at), hash: row.hash }));
}

function status(files: MigrationFile[], rows: { createdAt: number; hash: string }[]): MigrationStatus {
  // Drizzle's rule: a file is applied when its journal time is not newer than the last recorded one.
  const last = rows.reduce((max, row) => Math.max(max, row.createdAt), Number.NEGATIVE_INFINITY);
  const known = new Set(files.map((file) => file.when));
  return {
    applied: files.filter((file) => file.when <= last),
    pending: files.filter((file) => file.when > last),
    unknown: rows.filter((row) => !known.has(row.createdAt)),
  };
}

/** Which migrations the database has and which it lacks. */
export async function migrationStatus(options: MigrateOptions = {}): Promise<MigrationStatus> {
  const { config, url } = resolveConfig(options);
  const client = await dedicatedClient(config, url, `${config.applicationName}:status`);
  try {
    return status(readMigrations(options.folder), await appliedRows(client));
  } catch (error) {
    throw toDbError(error);
  } finally {
    await client.end().catch(() => {});
  }
}

/**
 * Applies pending migrations. Safe to call from several processes at once: they queue on an advisory lock
 * and each migration is applied once. Use a direct URL, not a transaction-mode pooler: the lock is held by
 * the session.
 * @throws DbError MIGRATION_FAILED (with the failing migration's error as cause), DATABASE_UNAVAILABLE.
 */
export async function runMigrations(options: MigrateOptions = {}): Promise<{ applied: string[] }> {
  const { config, url } = resolveConfig(options);
  const logger = options.logger ?? noopLogger;
  const folder = options.folder ?? migrationsFolder;
  const client = await dedicatedClient(config, url, `${config.applicationName}:migrate`);
  const key = advisoryLockKey("repo-db:migrations");
  let locked = false;
  try {
    await client.query(`SET statement_timeout = ${Math.trunc(options.lockTimeoutMs ?? 300_000)}`);
    try {
      await client.query("SELECT pg_advisory_lock($1::bigint)", [key]);
    } catch (error) {
      const typed = toDbError(error);
      if (typed.code === "QUERY_TIMEOUT") {
        throw new DbError("MIGRATION_FAILED", "Timed out waiting for another process's migration lock", {
          cause: error,
        });
      }
      throw typed;
    }
    locked = true;
    await client.query("SET statement_timeout = 0");
    const before = status(readMigrations(folder), await appliedRows(client));
    if (before.pending.length === 0) {
      logger.info({ applied: before.applied.length }, "migrations: database is up to date");
      return { applied: [] };
    }
    logger.info({ pending: before.pending.map((m) => m.tag) }, "migrations: applying");
    try {
      await migrate(drizzle({ client }), { migrationsFolder: folder });
    } catch (error) {
      throw new DbError("MIGRATION_FAILED", `Migration failed: ${toDbError(error).message}`, {
        cause: error,
      });
    }
    const applied = before.pending.map((m) => m.tag);
    logger.audit({ applied }, "migrations: applied");
    return { applied };
  } finally {
    if (locked) await client.query("SELECT pg_advisory_unlock($1::bigint)", [key]).catch(() => {});
    await client.end().catch(() => {});
  }
}

/**
 * The SQL that `runMigrations` would run, for teams applying migrations with their own tools. Each migration
 * is followed by the row Drizzle's migrator records for it, so `runMigrations`, `db:check` and `/readyz`
 * agree afterwards. With `all`, every migration regardless of the database (no connection needed).
 */
export async function pendingSql(options: MigrateOptions & { all?: boolean } = {}): Promise<string> {
  const files = options.all ? readMigrations(options.folder) : (await migrationStatus(options)).pending;
  if (files.length === 0) return "";
  const bookkeeping = [
    "CREATE SCHEMA IF NOT EXISTS drizzle;",
    "CREATE TABLE IF NOT EXISTS drizzle.__drizzle_migrations (id SERIAL PRIMARY KEY, hash text NOT NULL, created_at bigint);",
  ].join("\n");
  const body = files.map((file) => {
    // The same digest Drizzle's migrator computes: SHA-256 of the whole file.
    const hash = createHash("sha256").update(file.sql).digest("hex");
    const statements = file.sql.replaceAll("--> statement-breakpoint", "").trim();
    return `-- migration: ${file.tag}\n${statements}\nINSERT INTO drizzle.__drizzle_migrations (hash, created_at) VALUES ('${hash}', ${file.when});\n`;
  });
  return `BEGIN;\n${bookkeeping}\n\n${body.join("\n")}COMMIT;\n`;
}

let latestWhen: number | undefined;

/**
 * True when the database behind the pool has every migration this build ships (for readiness probes).
 * One cheap query on the pool; the journal is read once.
 */
export async function isSchemaCurrent(handle: DatabaseOrTransaction = db): Promise<boolean> {
  latestWhen ??= Math.max(...readMigrations().map((file) => file.when));
  const result = await withMetrics("select", "__drizzle_migrations", () =>
    handle.execute<{ last: string | null }>(
      sql`SELECT CASE WHEN to_regclass('drizzle.__drizzle_migrations') IS NULL THEN NULL
                 ELSE (SELECT max(created_at)::text FROM drizzle.__drizzle_migrations) END AS last`,
    ),
  );
  const last = result.rows[0]?.last;
  return last !== null && last !== undefined && Number(last) >= latestWhen;
}
