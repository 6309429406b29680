import { eq, sql } from "drizzle-orm";
import { drizzle } from "drizzle-orm/node-postgres";
import pg from "pg";
import { beforeEach, describe, expect, it } from "vitest";
import { databaseConfigFromUrl, loadDatabaseConfig } from "../src/config.ts";
import { db, disconnectDB, getPool, initializeDB, transaction } from "../src/connection.ts";
import { DbError, isDbError } from "../src/errors.ts";
import type { Logger } from "../src/logger.ts";
import { registry, withMetrics } from "../src/metrics.ts";
import { users } from "../src/schema/index.ts";
import { useTestDatabase } from "../src/testing/index.ts";

const warnings: string[] = [];
const logger: Logger = {
  audit() {},
  error() {},
  info() {},
  debug() {},
  warn: (_fields, message) => warnings.push(message),
};
const database = useTestDatabase({ config: { poolMax: 2, connectionTimeoutMs: 1000 }, logger });

async function terminate(applicationName: string): Promise<number> {
  const result = await database.admin<{ ok: boolean }>(
    "SELECT pg_terminate_backend(pid) AS ok FROM pg_stat_activity WHERE datname = current_database() AND application_name = $1",
    [applicationName],
  );
  return result.rowCount ?? 0;
}

async function eventually(check: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * Opens both pooled connections before a test, retrying: this file's 1 s connect timeout (which the
 * POOL_EXHAUSTED case measures) can pass while a loaded CI machine forks a backend, and a test about error
 * codes must not see POOL_EXHAUSTED instead. pg keeps idle clients 10 s, longer than any test here.
 */
async function warmPool(): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await Promise.all([getPool().query("SELECT 1"), getPool().query("SELECT pg_sleep(0.01)")]);
      return;
    } catch (error) {
      if (attempt === 5) throw error;
    }
  }
}

beforeEach(warmPool);

describe("pool resilience", () => {
  it("survives pg_terminate_backend on an idle pooled client, and the next query succeeds", async () => {
    await Promise.all([getPool().query("SELECT pg_sleep(0.05)"), getPool().query("SELECT pg_sleep(0.05)")]);
    expect(getPool().idleCount).toBe(2);
    expect(await terminate("repo-db-test")).toBe(2);
    // The pool notices, drops both clients and tells our listener instead of crashing the process.
    await eventually(() => getPool().totalCount === 0);
    expect(warnings.filter((w) => w.includes("idle database connection failed"))).toHaveLength(2);
    const rows = await db.execute(sql`SELECT 1 AS one`);
    expect(rows.rows[0]).toEqual({ one: 1 });
  });

  it("Drizzle 0.45's own transaction leaks the pool client when BEGIN fails (the bug we work around)", async () => {
    const pool = new pg.Pool({ connectionString: database.url, max: 1, connectionTimeoutMillis: 300 });
    pool.on("error", () => {});
    const raw = drizzle({ client: pool });
    await expect(raw.transaction(async () => {}, { isolationLevel: "bogus" as never })).rejects.toThrow();
    // The only client was never released: it is still checked out, with nothing idle to hand out. (A query
    // racing a 300 ms checkout timeout showed the same once and was flaky under CI load, so the pool's own
    // accounting is asserted instead.)
    expect(pool.totalCount).toBe(1);
    expect(pool.idleCount).toBe(0);
    // End the pool without waiting for the leaked client.
    for (const client of (pool as unknown as { _clients: pg.PoolClient[] })._clients)
      client.release(new Error("leaked"));
    await pool.end();
  });

  it("our transaction() releases the client when BEGIN fails", async () => {
    for (let i = 0; i < 5; i++) {
      await expect(
        transaction(async () => "never", { isolationLevel: "bogus" as never }),
      ).rejects.toBeInstanceOf(DbError);
    }
    expect(getPool().waitingCount).toBe(0);
    expect(getPool().totalCount - getPool().idleCount).toBe(0);
    expect(await transaction(async (tx) => (await tx.execute(sql`SELECT 2 AS two`)).rows[0])).toEqual({
      two: 2,
    });
  });

  it("destroys a client whose backend dies inside a transaction, without crashing, and recovers", async () => {
    let pid = 0;
    const attempt = transaction(async (tx) => {
      pid = Number((await tx.execute<{ pid: number }>(sql`SELECT pg_backend_pid() AS pid`)).rows[0]?.pid);
      await database.admin("SELECT pg_terminate_backend($1)", [pid]);
      // Give the termination notice time to arrive while the client is checked out and between queries.
      await new Promise((resolve) => setTimeout(resolve, 200));
      await tx.execute(sql`SELECT 1`);
    });
    const error = await attempt.catch((e: unknown) => e);
    expect(isDbError(error, "DATABASE_UNAVAILABLE")).toBe(true);
    expect(getPool().totalCount - getPool().idleCount).toBe(0);
    // The dead client is not handed out again.
    const pids = await Promise.all(
      [0, 1].map(() =>
        transaction(
          async (tx) => (await tx.execute<{ pid: number }>(sql`SELECT pg_backend_pid() AS pid`)).rows[0]?.pid,
        ),
      ),
    );
    expect(pids).not.toContain(pid);
  });

  it("rolls back when the callback throws and passes the caller's own error through untouched", async () => {
    class Mine extends Error {}
    await expect(
      transaction(async (tx) => {
        await tx.insert(users).values({ email: "rollback@example.com" });
        throw new Mine("stop");
      }),
    ).rejects.toBeInstanceOf(Mine);
    // Only this test's row: other tests in the file may have committed users of their own.
    const found = await db.select().from(users).where(eq(users.email, "rollback@example.com"));
    expect(found).toHaveLength(0);
  });

  it("joins the caller's transaction when given { tx }", async () => {
    await expect(
      transaction(async (outer) => {
        await transaction(async (inner) => inner.insert(users).values({ email: "joined@example.com" }), {
          tx: outer,
        });
        throw new Error("undo both");
      }),
    ).rejects.toThrow("undo both");
    expect(await db.select().from(users).where(eq(users.email, "joined@example.com"))).toHaveLength(0);
  });

  it("answers POOL_EXHAUSTED within the connection timeout when every client is busy", async () => {
    const busy = [0, 1].map(() => getPool().query("SELECT pg_sleep(1.5)"));
    const started = Date.now();
    const error = await withMetrics("select", "users", () => db.select().from(users)).catch(
      (e: unknown) => e,
    );
    expect(isDbError(error, "POOL_EXHAUSTED")).toBe(true);
    expect(Date.now() - started).toBeLessThan(1400);
    await Promise.all(busy);
    expect(getPool().waitingCount).toBe(0);
  });
});

describe("errors", () => {
  it("maps PostgreSQL errors to typed codes without leaking SQLSTATE to callers", async () => {
    await withMetrics("insert", "users", () => db.insert(users).values({ email: "dup@example.com" }));
    const dup = await withMetrics("insert", "users", () =>
      db.insert(users).values({ email: "dup@example.com" }),
    ).catch((e: unknown) => e);
    expect(isDbError(dup, "UNIQUE_VIOLATION")).toBe(true);
    expect((dup as DbError).constraint).toBe("users_email_active_key");

    const check = await withMetrics("insert", "users", () =>
      db.insert(users).values({ email: " Upper@Example.com" }),
    ).catch((e: unknown) => e);
    expect(isDbError(check, "CHECK_VIOLATION")).toBe(true);

    const invalid = await withMetrics("select", "users", () =>
      db.execute(sql`SELECT ${"not-a-uuid"}::uuid`),
    ).catch((e: unknown) => e);
    expect(isDbError(invalid, "INVALID_INPUT")).toBe(true);

    const timeout = await transaction(async (tx) => {
      await tx.execute(sql`SET LOCAL statement_timeout = 50`);
      await withMetrics("select", "users", () => tx.execute(sql`SELECT pg_sleep(1)`));
    }).catch((e: unknown) => e);
    // The code itself in the assertion: a CI run once saw something else here, and the message must say what.
    expect((timeout as DbError).code, String(timeout)).toBe("QUERY_TIMEOUT");

    for (const e of [dup, check, invalid, timeout])
      expect((e as Error).message).not.toMatch(/SQLSTATE|\b23505\b/);
  });

  it("reports a refused connection as DATABASE_UNAVAILABLE", async () => {
    const pool = new pg.Pool({
      connectionString: "postgres://nobody:secret@127.0.0.1:1/none",
      connectionTimeoutMillis: 1000,
    });
    pool.on("error", () => {});
    const error = await withMetrics("select", "users", () =>
      drizzle({ client: pool }).select().from(users),
    ).catch((e: unknown) => e);
    await pool.end();
    expect(isDbError(error, "DATABASE_UNAVAILABLE")).toBe(true);
    expect((error as Error).message).not.toContain("secret");
  });
});

describe("metrics", () => {
  it("counts queries, durations and errors per operation and table, and reports the pool", async () => {
    await withMetrics("select", "users", () => db.select().from(users));
    await withMetrics("select", "users", () => db.execute(sql`SELECT 1/0`)).catch(() => {});
    const text = await registry.metrics();
    expect(text).toMatch(/db_queries_total\{operation="select",table="users"\} \d+/);
    expect(text).toMatch(
      /db_query_duration_seconds_bucket\{le="0.0005",operation="select",table="users"\} \d+/,
    );
    expect(text).toMatch(/db_query_duration_seconds_bucket\{le="5",operation="select",table="users"\} \d+/);
    expect(text).toMatch(
      /db_query_errors_total\{operation="select",table="users",code="INVALID_INPUT"\} [1-9]/,
    );
    expect(text).toMatch(/db_connection_pool_size \d+/);
    expect(text).toMatch(/db_connection_pool_idle \d+/);
    expect(text).toMatch(/db_connection_pool_waiting 0/);
  });
});

describe("configuration", () => {
  it("names each bad setting and never prints the password", () => {
    const attempt = () =>
      loadDatabaseConfig({
        DATABASE_URL: "mysql://user:hunter2@db/app",
        DATABASE_POOL_MAX: "lots",
        DATABASE_SSL_MODE: "maybe",
      });
    expect(attempt).toThrow(DbError);
    try {
      attempt();
    } catch (error) {
      const e = error as DbError;
      expect(e.code).toBe("CONFIG_INVALID");
      expect(Object.keys(e.details ?? {}).sort()).toEqual([
        "DATABASE_POOL_MAX",
        "DATABASE_SSL_MODE",
        "DATABASE_URL",
      ]);
      expect(e.message).not.toContain("hunter2");
    }
    expect(() => loadDatabaseConfig({})).toThrow(/DATABASE_URL is required/);
  });

  it("has safe defaults: a connection timeout, statement and idle-in-transaction timeouts, an application name", () => {
    const config = loadDatabaseConfig({ DATABASE_URL: "postgres://u:p@localhost/app" });
    expect(config.connectionTimeoutMs).toBeGreaterThan(0);
    expect(config.statementTimeoutMs).toBeGreaterThan(0);
    expect(config.idleInTransactionTimeoutMs).toBeGreaterThan(0);
    expect(config.applicationName).toBe("repo-db");
    expect(config.transactionPooler).toBe(false);
    const pooled = loadDatabaseConfig({ DATABASE_URL: "postgres://u:p@localhost:6432/app?pgbouncer=true" });
    expect(pooled.transactionPooler).toBe(true);
    expect(pooled.url).not.toContain("pgbouncer");
  });

  it("sends the timeouts and application name to the server", async () => {
    const rows = await db.execute<{ statement_timeout: string; idle: string; app: string }>(
      sql`SELECT current_setting('statement_timeout') AS statement_timeout,
                 current_setting('idle_in_transaction_session_timeout') AS idle,
                 current_setting('application_name') AS app`,
    );
    expect(rows.rows[0]).toEqual({ statement_timeout: "30s", idle: "1min", app: "repo-db-test" });
  });

  it("refuses a second initializeDB() and throws NOT_INITIALIZED after disconnect", async () => {
    expect(() => initializeDB(databaseConfigFromUrl(database.url))).toThrow(/already called/);
    await disconnectDB();
    expect(() => db.select()).toThrow(/not initialized/);
    // Back as useTestDatabase() set it up (logger included), for whichever test runs next.
    initializeDB(database.config, { logger });
  });
});

describe("transaction() never reports a rolled-back transaction as committed", () => {
  it("a statement that failed inside, caught by fn, makes the transaction fail instead of a silent rollback", async () => {
    const email = `swallowed-${Date.now()}@example.com`;
    const outcome = await transaction(async (tx) => {
      await tx.execute(sql`INSERT INTO users (id, email) VALUES (gen_random_uuid(), ${email})`);
      await tx.execute(sql`SELECT 1 / 0`).catch(() => "caught");
      return "fn returned";
    }).catch((error: unknown) => error);
    expect(isDbError(outcome, "DATABASE_ERROR")).toBe(true);
    const { rows } = await getPool().query("SELECT 1 FROM users WHERE email = $1", [email]);
    expect(rows).toHaveLength(0);
    // The pooled client is clean for the next user.
    expect((await getPool().query("SELECT 1 AS ok")).rows[0]).toEqual({ ok: 1 });
  });
});
