// The connection: one node-postgres pool per process, wrapped by Drizzle, plus a transaction helper that does
// not leak pool clients. `db` is usable anywhere after `initializeDB()`; services take `options.tx ?? db`.
import { DrizzleQueryError } from "drizzle-orm";
import { drizzle, type NodePgDatabase, NodePgTransaction } from "drizzle-orm/node-postgres";
import type { PgDialect, PgSession, PgTransactionConfig } from "drizzle-orm/pg-core";
import type { ExtractTablesWithRelations } from "drizzle-orm/relations";
import pg from "pg";
import { type DatabaseConfig, loadDatabaseConfig, redactUrl, sslOption } from "./config.ts";
import { DbError, isConnectionLevelError, toDbError } from "./errors.ts";
import { type Logger, noopLogger } from "./logger.ts";
import { setPoolStatsSource, setQueryLogger } from "./metrics.ts";
import { createReplicaSet, type ReplicaSet, type ReplicaStatus, readOn } from "./replicas.ts";
import * as schema from "./schema/index.ts";
import { resultTypes } from "./timestamps.ts";

export type Schema = typeof schema;
export type Database = NodePgDatabase<Schema>;
export type Transaction = NodePgTransaction<Schema, ExtractTablesWithRelations<Schema>>;
/** Services accept either: a transaction is a database whose queries run inside it. */
export type DatabaseOrTransaction = Database | Transaction;

interface State {
  pool: pg.Pool;
  db: Database;
  config: DatabaseConfig;
  logger: Logger;
  /** The read replicas (DATABASE_REPLICA_URLS), when there are any. */
  replicas: ReplicaSet | undefined;
}

let state: State | undefined;

function current(): State {
  if (!state) {
    throw new DbError("NOT_INITIALIZED", "The database is not initialized: call initializeDB() first");
  }
  return state;
}

/** node-postgres client options for a config; shared by the pool and by dedicated connections. */
export function clientOptions(config: DatabaseConfig, url: string = config.url): pg.ClientConfig {
  const options: pg.ClientConfig = {
    connectionString: url,
    application_name: config.applicationName,
    connectionTimeoutMillis: config.connectionTimeoutMs,
    keepAlive: true,
  };
  // A transaction-mode pooler rejects startup parameters: set these with ALTER ROLE ... SET there.
  if (!config.transactionPooler) {
    options.statement_timeout = config.statementTimeoutMs;
    options.idle_in_transaction_session_timeout = config.idleInTransactionTimeoutMs;
  }
  const ssl = sslOption(config.sslMode);
  if (ssl !== undefined) options.ssl = ssl;
  return options;
}

/**
 * Creates the pool and the Drizzle handle. Call once at start-up; calling again replaces the previous pool
 * (after `disconnectDB()`).
 * @throws DbError CONFIG_INVALID when the environment holds a bad setting.
 * @example initializeDB(); // reads DATABASE_URL and friends
 */
export function initializeDB(
  config: DatabaseConfig = loadDatabaseConfig(),
  options: { logger?: Logger } = {},
): Database {
  if (state) {
    throw new DbError("CONFIG_INVALID", "initializeDB() was already called: call disconnectDB() first");
  }
  const logger = options.logger ?? noopLogger;
  const poolOptions = (url: string): pg.PoolConfig => ({
    ...clientOptions(config, url),
    max: config.poolMax,
    min: config.poolMin,
    idleTimeoutMillis: config.idleTimeoutMs,
    types: resultTypes,
  });
  const pool = new pg.Pool(poolOptions(config.url));
  // Without this listener, an idle client whose backend dies (restart, pg_terminate_backend) crashes the
  // process with an unhandled 'error' event. The pool drops that client by itself.
  pool.on("error", (error) => {
    logger.warn({ code: toDbError(error).code }, "an idle database connection failed and was discarded");
  });
  const db = drizzle({ client: pool, schema });
  const replicas =
    config.replicaUrls.length === 0
      ? undefined
      : createReplicaSet({
          urls: config.replicaUrls,
          poolOptions,
          primary: pool,
          maxLagMs: config.replicaMaxLagMs,
          checkIntervalMs: config.replicaCheckIntervalMs,
          logger,
        });
  state = { pool, db, config, logger, replicas };
  setPoolStatsSource(() => state?.pool);
  setQueryLogger(config.logQueries ? logger : undefined);
  logger.info({ url: redactUrl(config.url), poolMax: config.poolMax }, "database initialized");
  return db;
}

/**
 * Checks that the database answers, opening one pooled connection.
 * @throws DbError DATABASE_UNAVAILABLE (or POOL_EXHAUSTED) when it does not.
 */
export async function connectDB(): Promise<void> {
  const { pool } = current();
  try {
    await pool.query("SELECT 1");
  } catch (error) {
    throw toDbError(error);
  }
}

/** Closes the pool (waiting for checked-out clients to come back) and forgets it. Safe to call twice. */
export async function disconnectDB(): Promise<void> {
  const closing = state;
  if (!closing) return;
  state = undefined;
  setPoolStatsSource(undefined);
  setQueryLogger(undefined);
  await closing.replicas?.close();
  await closing.pool.end();
}

/** True between `initializeDB()` and `disconnectDB()`. */
export function isInitialized(): boolean {
  return state !== undefined;
}

/** The process-wide pool (for health checks, metrics and tests). */
export function getPool(): pg.Pool {
  return current().pool;
}

/**
 * False behind a transaction-mode pooler: statements then go out unnamed, since the next transaction may run
 * on a server connection that never prepared them. True otherwise (and before initializeDB()).
 */
export function usesNamedStatements(): boolean {
  return state === undefined || !state.config.transactionPooler;
}

/** The configuration the pool was created with. */
export function getDatabaseConfig(): DatabaseConfig {
  return current().config;
}

/** The Drizzle handle; prefer `db` or a service's `{ tx }` option. */
export function getDB(): Database {
  return current().db;
}

/**
 * The Drizzle handle of the initialized pool. It forwards to the current pool, so modules can import it
 * before `initializeDB()` runs; using it before then throws NOT_INITIALIZED.
 */
export const db: Database = new Proxy({} as Database, {
  get(_target, property) {
    const target = current().db;
    const value = Reflect.get(target, property, target);
    return typeof value === "function" ? value.bind(target) : value;
  },
  has(_target, property) {
    return Reflect.has(current().db, property);
  },
  getPrototypeOf() {
    return Reflect.getPrototypeOf(current().db);
  },
});

export interface TransactionOptions extends PgTransactionConfig {
  /** Run inside this transaction instead of opening one (nested work joins the caller's transaction). */
  tx?: DatabaseOrTransaction | undefined;
  /**
   * Open the transaction in this user's scope: row-level security then shows and lets it write only that
   * user's sessions, linked accounts, one-time tokens and audit events (migration 0007). Set with
   * `SET LOCAL app.user_id` in the same round trip as BEGIN, so it ends with the transaction
   * (nothing session-level, safe behind a transaction-mode pooler). Not with `tx`: a scope is chosen when a
   * transaction opens.
   */
  userId?: string | undefined;
}

const ISOLATION_LEVELS = new Set(["read uncommitted", "read committed", "repeatable read", "serializable"]);
const ACCESS_MODES = new Set(["read only", "read write"]);

/** What `userId` must look like: it is written into the BEGIN round trip as a literal. */
const SCOPE_USER_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

function isTransaction(handle: DatabaseOrTransaction): handle is Transaction {
  return "rollback" in handle && typeof handle.rollback === "function";
}

/**
 * Runs `fn` in a transaction on a client of its own, committing when it resolves and rolling back when it
 * throws. Unlike Drizzle 0.45's node-postgres `transaction()`, a failed BEGIN releases the client, and a
 * client whose connection broke is destroyed rather than returned to the pool. With `{ tx }` it joins that
 * transaction instead. Errors come out as DbError.
 * @throws DbError POOL_EXHAUSTED, DATABASE_UNAVAILABLE, SERIALIZATION_FAILURE, ... or whatever `fn` throws.
 * @example await transaction(async (tx) => { await UsersService.update(..., { tx }); ... });
 */
export async function transaction<T>(
  fn: (tx: Transaction) => Promise<T>,
  options: TransactionOptions = {},
): Promise<T> {
  const { tx: outer, userId, ...config } = options;
  if (userId !== undefined) {
    if (outer) {
      throw new DbError(
        "CONFIG_INVALID",
        "A user scope is chosen when a transaction opens: open it with { userId } and pass it as { tx } inside",
      );
    }
    return await openTransaction(fn, config, userId);
  }
  if (outer && isTransaction(outer)) return await fn(outer);
  // Another Database than ours (a caller's own drizzle instance): open the transaction there.
  if (outer && outer !== db && outer !== current().db) {
    return await outer.transaction(fn, Object.keys(config).length > 0 ? config : undefined);
  }
  return await openTransaction(fn, config);
}

/**
 * `fn` in a new transaction on a pooled client: one round trip sends BEGIN (with the isolation settings and,
 * for a user scope, SET LOCAL app.user_id; see TransactionOptions.userId), then `fn` gets a Drizzle transaction on
 * that client, then COMMIT (ROLLBACK when `fn` throws).
 * @throws DbError VALIDATION_FAILED (a scope that is not a UUID), and whatever transaction() throws.
 */
async function openTransaction<T>(
  fn: (tx: Transaction) => Promise<T>,
  config: PgTransactionConfig,
  userId?: string,
  pool?: pg.Pool,
): Promise<T> {
  if (userId !== undefined && !SCOPE_USER_ID.test(userId)) {
    throw new DbError("VALIDATION_FAILED", "Invalid input: userId: must be a UUID", {
      details: { userId: "must be a UUID" },
    });
  }
  // Written into the BEGIN text: only the values PostgreSQL knows (callers without types could pass anything).
  if (
    (config.isolationLevel !== undefined && !ISOLATION_LEVELS.has(config.isolationLevel)) ||
    (config.accessMode !== undefined && !ACCESS_MODES.has(config.accessMode))
  ) {
    throw new DbError("CONFIG_INVALID", "Unknown transaction isolation level or access mode");
  }
  const settings = [
    config.isolationLevel ? `ISOLATION LEVEL ${config.isolationLevel.toUpperCase()}` : "",
    config.accessMode ? config.accessMode.toUpperCase() : "",
    config.deferrable === undefined ? "" : config.deferrable ? "DEFERRABLE" : "NOT DEFERRABLE",
  ].filter(Boolean);
  const begin = `BEGIN${settings.length > 0 ? ` ${settings.join(", ")}` : ""}${
    userId === undefined ? "" : `; SET LOCAL app.user_id = '${userId.toLowerCase()}'`
  }`;
  return await onPooledClient(pool, async (client, own) => {
    try {
      await client.query(begin);
    } catch (error) {
      // BEGIN may have started the block before the rest failed: never hand the client back inside it.
      await client.query("ROLLBACK").catch(() => {});
      throw error;
    }
    let result: T;
    try {
      result = await own(() => fn(transactionOn(client)));
    } catch (error) {
      await client.query("ROLLBACK");
      throw error;
    }
    await commit(client);
    return result;
  });
}

/**
 * COMMIT, refusing to report success for a transaction PostgreSQL rolled back: after a statement failed (and
 * `fn` caught the error and returned), COMMIT answers with the tag ROLLBACK and no error.
 */
async function commit(client: pg.PoolClient): Promise<void> {
  const done = await client.query("COMMIT");
  if (done.command === "ROLLBACK") {
    throw new DbError("DATABASE_ERROR", "The transaction was rolled back: a statement in it failed");
  }
}

/** `fn` in a transaction scoped to `userId`: `transaction(fn, { userId })`. */
export async function withUser<T>(userId: string, fn: (tx: Transaction) => Promise<T>): Promise<T> {
  return await transaction(fn, { userId });
}

/**
 * Runs a read that tolerates lag on a healthy read replica (DATABASE_REPLICA_URLS), or on the primary when
 * there is none, none is healthy, or the replica fails (the read then runs again on the primary). Pass the
 * handle to services as `{ tx }`. Never for writes, the cache (UNLOGGED tables are not replicated), one-time
 * tokens, or a read that must see a write this request just made.
 * @example const user = await onReplica((tx) => UsersService.findById(id, { tx }));
 */
export async function onReplica<T>(read: (handle: Database) => Promise<T>): Promise<T> {
  const { replicas, db: primary } = current();
  return await readOn(replicas, primary, read);
}

/**
 * onReplica() in a read-only transaction scoped to `userId` (row-level security shows only that user's rows),
 * as withUser() opens on the primary.
 */
export async function onReplicaAs<T>(userId: string, read: (tx: Transaction) => Promise<T>): Promise<T> {
  const { replicas, db: primary } = current();
  return await readOn(replicas, primary, (handle) =>
    openTransaction(read, { accessMode: "read only" }, userId, poolOf(handle)),
  );
}

/** Each read replica's health and lag at its last check (empty without replicas). */
export function replicaStatus(): ReplicaStatus[] {
  return current().replicas?.status() ?? [];
}

/** Checks every read replica now (tests, and a caller that just changed one). */
export async function checkReplicas(): Promise<void> {
  await current().replicas?.check();
}

/** The node-postgres pool a Drizzle database was made over (the primary's or a replica's). */
function poolOf(handle: Database): pg.Pool {
  return (handle as unknown as { $client: pg.Pool }).$client;
}

/**
 * A Drizzle transaction object on `client`, whose BEGIN was sent already (Drizzle's own transaction() sends
 * BEGIN itself, a round trip a scope would add to). Built the way Drizzle 0.45's NodePgSession.transaction
 * builds it; a test checks the transaction's round trips.
 */
function transactionOn(client: pg.PoolClient): Transaction {
  const database = drizzleFor(client) as unknown as {
    dialect: PgDialect;
    session: PgSession & { schema: unknown };
  };
  return new NodePgTransaction(
    database.dialect,
    database.session as never,
    database.session.schema as never,
  ) as unknown as Transaction;
}

/**
 * A transaction for code that only runs compiled statements (statements.ts): plain BEGIN/COMMIT on a pooled
 * client, with the same guarantees as transaction() but without building Drizzle objects on a hot path.
 * `fn` gets the client (or, with `{ tx }`, that transaction) to pass to `Statement.run`.
 * @throws DbError as transaction() does.
 */
export async function statementTransaction<T>(
  fn: (handle: Transaction | pg.PoolClient) => Promise<T>,
  options: { tx?: DatabaseOrTransaction | undefined } = {},
): Promise<T> {
  const outer = options.tx;
  if (outer && isTransaction(outer)) return await fn(outer);
  if (outer && outer !== db && outer !== current().db) return await outer.transaction(fn);
  return await onPooledClient(undefined, async (client, own) => {
    await client.query("BEGIN");
    let result: T;
    try {
      result = await own(() => fn(client));
    } catch (error) {
      await client.query("ROLLBACK");
      throw error;
    }
    await commit(client);
    return result;
  });
}

/**
 * Checks out a client, runs `body` on it and releases it. `body` wraps the caller's own code in `own`, so a
 * failure there is told apart from BEGIN/COMMIT/ROLLBACK failing: the caller's error is what gets reported
 * (even when the rollback after it failed too), and a client whose connection broke is destroyed instead of
 * returning to the pool.
 */
async function onPooledClient<T>(
  on: pg.Pool | undefined,
  body: (client: pg.PoolClient, own: <R>(work: () => Promise<R>) => Promise<R>) => Promise<T>,
): Promise<T> {
  const pool = on ?? current().pool;
  let client: pg.PoolClient;
  try {
    client = await pool.connect();
  } catch (error) {
    throw toDbError(error);
  }
  // While checked out, the pool no longer listens for this client's errors: a backend that dies between
  // two statements of the transaction would otherwise be an unhandled 'error' event and crash the process.
  let connectionError: unknown;
  const onError = (error: unknown) => {
    connectionError = error;
  };
  client.on("error", onError);

  let fnError: unknown;
  let fnFailed = false;
  const own = async <R>(work: () => Promise<R>): Promise<R> => {
    try {
      return await work();
    } catch (error) {
      fnFailed = true;
      fnError = error;
      throw error;
    }
  };
  let releaseWith: Error | undefined;
  try {
    return await body(client, own);
  } catch (error) {
    // `error` is fn's own error when ROLLBACK worked; otherwise BEGIN, COMMIT or ROLLBACK failed.
    const infrastructure = !fnFailed || error !== fnError;
    if (connectionError !== undefined || (infrastructure && isConnectionLevelError(error))) {
      releaseWith = error instanceof Error ? error : new Error(String(error));
    }
    const reported = fnFailed ? fnError : error;
    throw reported instanceof DbError || fnFailed ? toDbErrorIfDatabase(reported) : toDbError(reported);
  } finally {
    client.removeListener("error", onError);
    // release(error) destroys the client instead of returning it to the pool.
    client.release(releaseWith ?? (connectionError instanceof Error ? connectionError : undefined));
  }
}

// Building a Drizzle instance walks the whole schema (tens of microseconds); pooled clients are reused, so
// each gets one for its lifetime.
const drizzleByClient = new WeakMap<pg.PoolClient, Database>();

function drizzleFor(client: pg.PoolClient): Database {
  let found = drizzleByClient.get(client);
  if (found === undefined) {
    found = drizzle({ client, schema });
    drizzleByClient.set(client, found);
  }
  return found;
}

/** Errors thrown by callers' own code pass through untouched; database errors become DbError. */
function toDbErrorIfDatabase(error: unknown): unknown {
  if (error instanceof DbError) return error;
  if (error instanceof DrizzleQueryError || error instanceof pg.DatabaseError) return toDbError(error);
  return error;
}
