// @repo/db/testing: a database of its own for each test file, cloned from the template the global setup
// migrated. Tests always run against a real PostgreSQL.
import { randomBytes } from "node:crypto";
import pg from "pg";
import { afterAll, afterEach, beforeAll, beforeEach, expect, inject } from "vitest";
import { manualClock, resetClock, setClock } from "../clock.ts";
import { type DatabaseConfig, databaseConfigFromUrl } from "../config.ts";
import { type Database, db, disconnectDB, getPool, initializeDB } from "../connection.ts";
import { DbError } from "../errors.ts";
import type { LogFields, Logger } from "../logger.ts";
import { users } from "../schema/index.ts";
import type { TestDatabaseContext } from "./context.ts";

// Test hooks of the data layer, kept out of the root entry: the clock tests move, and the key ring they forget.
export { manualClock, resetClock, setClock } from "../clock.ts";
export { resetAccountEncryption } from "../crypto/encryption.ts";
export type { TestDatabaseContext } from "./context.ts";
export {
  CONVENTION_EXCEPTIONS,
  type ConventionViolation,
  checkSchemaConventions,
  describeSchema,
} from "./conventions.ts";
export { type StreamingPair, startStreamingPair } from "./replica.ts";

export function testContext(): TestDatabaseContext {
  return inject("repoDbTest");
}

/** A URL for `database` as the given role (defaults to the application role). */
export function databaseUrl(database: string, role?: { user: string; password: string }): string {
  const ctx = testContext();
  const url = new URL(ctx.adminUrl);
  url.username = role?.user ?? ctx.appRole;
  url.password = role?.password ?? ctx.appPassword;
  url.pathname = `/${database}`;
  return url.toString();
}

/** Runs one statement as the administrator (superuser on the embedded server). */
export async function adminQuery<R extends pg.QueryResultRow = pg.QueryResultRow>(
  text: string,
  values: unknown[] = [],
  database?: string,
): Promise<pg.QueryResult<R>> {
  const url = new URL(testContext().adminUrl);
  if (database) url.pathname = `/${database}`;
  return await queryOnce<R>(url.toString(), text, values);
}

/** Runs one statement on a fresh connection to `url` (a drill's own server), closed afterwards. */
export async function queryOnce<R extends pg.QueryResultRow = pg.QueryResultRow>(
  url: string,
  text: string,
  values: unknown[] = [],
): Promise<pg.QueryResult<R>> {
  const client = new pg.Client({ connectionString: url, connectionTimeoutMillis: 5000 });
  client.on("error", () => {});
  await client.connect();
  try {
    return await client.query<R>(text, values);
  } finally {
    await client.end().catch(() => {});
  }
}

export interface TestDatabase {
  name: string;
  /** URL as the application (non-superuser) role. */
  url: string;
  drop(): Promise<void>;
}

/** Clones the migrated template into a new database. `empty` gives an unmigrated one instead. */
export async function createTestDatabase(options: { empty?: boolean } = {}): Promise<TestDatabase> {
  const ctx = testContext();
  const name = `${ctx.runId}_${randomBytes(5).toString("hex")}`;
  const template = options.empty ? "template0" : ctx.template;
  await adminQuery(`CREATE DATABASE "${name}" TEMPLATE "${template}" OWNER "${ctx.appRole}"`);
  return {
    name,
    url: databaseUrl(name),
    drop: async () => {
      await adminQuery(`DROP DATABASE IF EXISTS "${name}" WITH (FORCE)`);
    },
  };
}

export interface UseTestDatabase {
  /** Filled in by beforeAll. */
  readonly url: string;
  readonly name: string;
  readonly config: DatabaseConfig;
  readonly db: Database;
  /** Runs one statement as the administrator on this test database. */
  admin<R extends pg.QueryResultRow = pg.QueryResultRow>(
    text: string,
    values?: unknown[],
  ): Promise<pg.QueryResult<R>>;
}

/**
 * Gives the calling test file its own migrated database and initializes the `db` handle on it; both are
 * torn down after the file. Call at the top level of a test file.
 */
export function useTestDatabase(
  options: { config?: Partial<DatabaseConfig>; logger?: Logger } = {},
): UseTestDatabase {
  let database: TestDatabase | undefined;
  let handle: Database | undefined;
  let config: DatabaseConfig | undefined;
  const need = <T>(value: T | undefined): T => {
    if (value === undefined)
      throw new Error("useTestDatabase(): the database exists only inside tests and hooks");
    return value;
  };
  beforeAll(async () => {
    database = await createTestDatabase();
    config = databaseConfigFromUrl(database.url, { applicationName: "repo-db-test", ...options.config });
    handle = initializeDB(config, options.logger ? { logger: options.logger } : {});
    // Fail early (and clearly) if the clone is unreachable.
    await getPool().query("SELECT 1");
  });
  afterAll(async () => {
    await disconnectDB();
    await database?.drop();
  });
  return {
    get url() {
      return need(database).url;
    },
    get name() {
      return need(database).name;
    },
    get config() {
      return need(config);
    },
    get db() {
      return need(handle);
    },
    admin: (text, values = []) => adminQuery(text, values, need(database).name),
  };
}

/** Awaits `promise` and asserts it rejected with a DbError carrying `code`. */
export async function expectDbError(promise: Promise<unknown>, code: string): Promise<void> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(DbError);
  expect((error as DbError).code).toBe(code);
}

/**
 * Gives each test of the calling file the data layer's clock set to `start`, moved only by `advance`/`set`;
 * the system clock comes back after each test. Call at the top level of a test file.
 */
export function useManualClock(start: Date): { now(): Date; advance(ms: number): void; set(at: Date): void } {
  let current = manualClock(start);
  beforeEach(() => {
    current = manualClock(start);
    setClock(current.now);
  });
  afterEach(() => resetClock());
  return { now: () => current.now(), advance: (ms) => current.advance(ms), set: (at) => current.set(at) };
}

let insertedUsers = 0;

/** Inserts a bare user (a unique email, nothing else) straight into the table and returns its id. */
export async function insertUser(prefix = "user"): Promise<string> {
  const email = `${prefix}-${++insertedUsers}-${randomBytes(4).toString("hex")}@example.com`;
  const [row] = await db.insert(users).values({ email }).returning({ id: users.id });
  if (!row) throw new Error("user not inserted");
  return row.id;
}

/** One line a recordingLogger() received. */
export interface RecordedLine {
  level: "audit" | "error" | "warn" | "info" | "debug";
  fields: LogFields;
  message: string;
}

/**
 * A Logger that keeps every line it is given, for tests of what the services log.
 * @example const { logger, lines } = recordingLogger(); await fn(x, { logger }); expect(lines).toEqual([...]);
 */
export function recordingLogger(): { logger: Logger; lines: RecordedLine[] } {
  const lines: RecordedLine[] = [];
  const at =
    (level: RecordedLine["level"]) =>
    (fields: LogFields, message: string): void => {
      lines.push({ level, fields, message });
    };
  const logger: Logger = {
    audit: at("audit"),
    error: at("error"),
    warn: at("warn"),
    info: at("info"),
    debug: at("debug"),
  };
  return { logger, lines };
}
