// metrics.ts: withMetrics() counts, times and types every query (on success and on failure), the pool gauges
// read the live pool, and the optional query logger. DATABASE_LOG_QUERIES through initializeDB() is covered by
// query-log.test.ts; here the logger is switched with setQueryLogger() and checked for what that file leaves out.
import { sql } from "drizzle-orm";
import type pg from "pg";
import { afterEach, describe, expect, it } from "vitest";
import { db, disconnectDB, getPool, initializeDB } from "../src/connection.ts";
import { DbError, isDbError } from "../src/errors.ts";
import type { Logger } from "../src/logger.ts";
import { registry, setQueryLogger, withMetrics } from "../src/metrics.ts";
import { users } from "../src/schema/index.ts";
import { recordingLogger, useTestDatabase } from "../src/testing/index.ts";

const initLines: string[] = [];
const initLogger: Logger = {
  audit() {},
  error() {},
  warn() {},
  debug() {},
  info: (_fields, message) => initLines.push(message),
};

// A small pool so the gauges can be driven to "full, with a caller waiting" deterministically. The logger is
// given to initializeDB() but DATABASE_LOG_QUERIES stays off (the default).
const database = useTestDatabase({ config: { poolMax: 2 }, logger: initLogger });

afterEach(() => setQueryLogger(undefined));

type Labels = Record<string, string>;

/** The value of one series of `metric` (0 when it does not exist yet); `series` picks a histogram's _sum etc. */
async function seriesValue(metric: string, labels: Labels, series = metric): Promise<number> {
  const found = await registry.getSingleMetric(metric)?.get();
  if (!found) throw new Error(`metric ${metric} is not registered`);
  const wanted = Object.entries(labels);
  const sample = found.values.find(
    (v) =>
      ("metricName" in v ? v.metricName : metric) === series &&
      Object.keys(v.labels).length === wanted.length &&
      wanted.every(([key, value]) => String(v.labels[key]) === value),
  );
  return sample?.value ?? 0;
}

/** Every db_* value withMetrics touches for one (operation, table) pair. */
async function snapshot(operation: string, table: string) {
  const labels = { operation, table };
  const errorsFound = await registry.getSingleMetric("db_query_errors_total")?.get();
  const errors: Record<string, number> = {};
  for (const v of errorsFound?.values ?? []) {
    if (v.labels.operation === operation && v.labels.table === table) errors[String(v.labels.code)] = v.value;
  }
  return {
    queries: await seriesValue("db_queries_total", labels),
    durationCount: await seriesValue("db_query_duration_seconds", labels, "db_query_duration_seconds_count"),
    durationSum: await seriesValue("db_query_duration_seconds", labels, "db_query_duration_seconds_sum"),
    bucket: (le: string) =>
      seriesValue("db_query_duration_seconds", { ...labels, le }, "db_query_duration_seconds_bucket"),
    errors,
  };
}

/** The value of an unlabelled gauge in the text exposition. */
function gauge(text: string, name: string): number {
  const match = new RegExp(`^${name} (\\S+)$`, "m").exec(text);
  if (!match?.[1]) throw new Error(`${name} not found in registry.metrics()`);
  return Number(match[1]);
}

async function poolGauges(): Promise<{ size: number; idle: number; waiting: number }> {
  const text = await registry.metrics();
  return {
    size: gauge(text, "db_connection_pool_size"),
    idle: gauge(text, "db_connection_pool_idle"),
    waiting: gauge(text, "db_connection_pool_waiting"),
  };
}

async function eventually(check: () => boolean, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error("condition not met in time");
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

describe("withMetrics on success", () => {
  it("returns the query's result and counts one query and one duration, with no error", async () => {
    const before = await snapshot("select", "metrics_ok");
    const rows = await withMetrics("select", "metrics_ok", () => db.execute(sql`SELECT 41 + 1 AS answer`));
    expect(rows.rows).toEqual([{ answer: 42 }]);
    const after = await snapshot("select", "metrics_ok");
    expect(after.queries).toBe(before.queries + 1);
    expect(after.durationCount).toBe(before.durationCount + 1);
    expect(after.durationSum).toBeGreaterThan(before.durationSum);
    expect(after.errors).toEqual({});
  });

  it("observes the real duration, in seconds, in the matching buckets", async () => {
    const before = await snapshot("select", "metrics_slow");
    const buckets = { le25ms: await before.bucket("0.025"), inf: await before.bucket("+Inf") };
    await withMetrics("select", "metrics_slow", () => db.execute(sql`SELECT pg_sleep(0.06)`));
    const after = await snapshot("select", "metrics_slow");
    // At least the 60 ms the server slept, and well under a second: seconds, not milliseconds.
    expect(after.durationSum - before.durationSum).toBeGreaterThanOrEqual(0.06);
    expect(after.durationSum - before.durationSum).toBeLessThan(10);
    expect(await after.bucket("0.025")).toBe(buckets.le25ms);
    expect(await after.bucket("+Inf")).toBe(buckets.inf + 1);
  });

  it("keeps each (operation, table) pair in series of its own", async () => {
    const pairs = [
      ["select", "metrics_a"],
      ["insert", "metrics_a"],
      ["select", "metrics_b"],
    ] as const;
    const before = await Promise.all(pairs.map(([op, table]) => snapshot(op, table)));
    await withMetrics("select", "metrics_a", () => db.execute(sql`SELECT 1`));
    await withMetrics("select", "metrics_a", () => db.execute(sql`SELECT 1`));
    await withMetrics("insert", "metrics_a", () => db.execute(sql`SELECT 1`));
    const after = await Promise.all(pairs.map(([op, table]) => snapshot(op, table)));
    expect(after.map((s, i) => s.queries - (before[i]?.queries ?? 0))).toEqual([2, 1, 0]);
    expect(after.map((s, i) => s.durationCount - (before[i]?.durationCount ?? 0))).toEqual([2, 1, 0]);
  });
});

describe("withMetrics on failure", () => {
  it("rethrows a real query failure as a DbError and counts it with its translated code", async () => {
    const before = await snapshot("select", "metrics_fail");
    const error = await withMetrics("select", "metrics_fail", () => db.execute(sql`SELECT 1/0`)).catch(
      (e: unknown) => e,
    );
    expect(error).toBeInstanceOf(DbError);
    expect(isDbError(error, "INVALID_INPUT")).toBe(true);
    // The original driver error is kept as the cause; the table label is reported on the error.
    expect((error as DbError).cause).toBeDefined();
    expect((error as DbError).table).toBe("metrics_fail");
    const after = await snapshot("select", "metrics_fail");
    expect(after.queries).toBe(before.queries + 1);
    expect(after.durationCount).toBe(before.durationCount + 1);
    expect(after.durationSum).toBeGreaterThan(before.durationSum);
    expect(after.errors).toEqual({ ...before.errors, INVALID_INPUT: (before.errors.INVALID_INPUT ?? 0) + 1 });
  });

  it("times a failure up to the moment it happened", async () => {
    const before = await snapshot("select", "metrics_slow_fail");
    await expect(
      withMetrics("select", "metrics_slow_fail", async () => {
        await db.execute(sql`SELECT pg_sleep(0.06)`);
        return await db.execute(sql`SELECT 1/0`);
      }),
    ).rejects.toBeInstanceOf(DbError);
    const after = await snapshot("select", "metrics_slow_fail");
    expect(after.durationCount).toBe(before.durationCount + 1);
    expect(after.durationSum - before.durationSum).toBeGreaterThanOrEqual(0.06);
    expect(after.errors.INVALID_INPUT).toBe((before.errors.INVALID_INPUT ?? 0) + 1);
  });

  it("labels errors by code: a constraint violation, an already-typed DbError, and a non-database error", async () => {
    const table = "metrics_codes";
    const before = await snapshot("insert", table);

    // A real CHECK violation (emails are stored normalized).
    const check = await withMetrics("insert", table, () =>
      db.insert(users).values({ email: " Not Normalized@example.com" }),
    ).catch((e: unknown) => e);
    expect(isDbError(check, "CHECK_VIOLATION")).toBe(true);

    // A DbError raised inside fn passes through as the very same object, counted under its own code.
    const own = new DbError("NOT_FOUND", "nothing here");
    const passed = await withMetrics("insert", table, async () => {
      throw own;
    }).catch((e: unknown) => e);
    expect(passed).toBe(own);

    // Anything else (even a synchronous throw) still comes out as a DbError.
    const other = await withMetrics("insert", table, (): Promise<never> => {
      throw new Error("boom");
    }).catch((e: unknown) => e);
    expect(isDbError(other, "DATABASE_ERROR")).toBe(true);

    const after = await snapshot("insert", table);
    expect(after.queries).toBe(before.queries + 3);
    expect(after.durationCount).toBe(before.durationCount + 3);
    expect(after.errors).toEqual({
      CHECK_VIOLATION: (before.errors.CHECK_VIOLATION ?? 0) + 1,
      NOT_FOUND: (before.errors.NOT_FOUND ?? 0) + 1,
      DATABASE_ERROR: (before.errors.DATABASE_ERROR ?? 0) + 1,
    });
  });

  it("shows the counters in the text exposition with their labels", async () => {
    await withMetrics("delete", "metrics_text", () => db.execute(sql`SELECT 1`));
    await withMetrics("delete", "metrics_text", () => db.execute(sql`SELECT 1/0`)).catch(() => {});
    const text = await registry.metrics();
    expect(text).toContain("# TYPE db_queries_total counter");
    expect(text).toContain("# TYPE db_query_duration_seconds histogram");
    expect(text).toContain("# TYPE db_query_errors_total counter");
    expect(text).toMatch(/^db_queries_total\{operation="delete",table="metrics_text"\} 2$/m);
    expect(text).toMatch(/^db_query_duration_seconds_count\{operation="delete",table="metrics_text"\} 2$/m);
    expect(text).toMatch(
      /^db_query_errors_total\{operation="delete",table="metrics_text",code="INVALID_INPUT"\} 1$/m,
    );
  });
});

describe("pool gauges", () => {
  it("report the open pool with sane values", async () => {
    await withMetrics("select", "metrics_pool", () => db.execute(sql`SELECT 1`));
    const text = await registry.metrics();
    for (const name of ["db_connection_pool_size", "db_connection_pool_idle", "db_connection_pool_waiting"])
      expect(text).toContain(`# TYPE ${name} gauge`);
    const { size, idle, waiting } = await poolGauges();
    expect(size).toBeGreaterThanOrEqual(1);
    expect(size).toBeLessThanOrEqual(database.config.poolMax);
    expect(idle).toBeGreaterThanOrEqual(0);
    expect(idle).toBeLessThanOrEqual(size);
    expect(waiting).toBe(0);
    expect({ size, idle, waiting }).toEqual({
      size: getPool().totalCount,
      idle: getPool().idleCount,
      waiting: getPool().waitingCount,
    });
  });

  it("follow the pool as clients are checked out, waited for and returned", async () => {
    const pool = getPool();
    const held: pg.PoolClient[] = [await pool.connect(), await pool.connect()];
    let third: Promise<pg.PoolClient> | undefined;
    try {
      expect(await poolGauges()).toEqual({ size: 2, idle: 0, waiting: 0 });
      third = pool.connect();
      await eventually(() => pool.waitingCount === 1);
      expect(await poolGauges()).toEqual({ size: 2, idle: 0, waiting: 1 });
      held.shift()?.release();
      held.push(await third);
      expect(await poolGauges()).toEqual({ size: 2, idle: 0, waiting: 0 });
    } finally {
      for (const client of held) client.release();
    }
    expect(await poolGauges()).toEqual({ size: 2, idle: 2, waiting: 0 });
  });

  it("read 0 once the pool is closed, and follow the new pool after initializeDB()", async () => {
    try {
      await disconnectDB();
      expect(await poolGauges()).toEqual({ size: 0, idle: 0, waiting: 0 });
    } finally {
      initializeDB(database.config, { logger: initLogger });
    }
    expect((await poolGauges()).size).toBe(0);
    await withMetrics("select", "metrics_pool", () => db.execute(sql`SELECT 1`));
    expect(await poolGauges()).toEqual({ size: 1, idle: 1, waiting: 0 });
  });
});

describe("query logger", () => {
  it("is off unless asked for: a logger given to initializeDB() alone sees no query lines", async () => {
    expect(initLines).toContain("database initialized");
    const seen = initLines.length;
    await withMetrics("select", "metrics_quiet", () => db.execute(sql`SELECT 1`));
    await withMetrics("select", "metrics_quiet", () => db.execute(sql`SELECT 1/0`)).catch(() => {});
    expect(initLines.slice(seen)).toEqual([]);
  });

  it("setQueryLogger() logs successes at info and failures at warn then info, with a duration in ms", async () => {
    const { logger, lines } = recordingLogger();
    setQueryLogger(logger);
    await withMetrics("select", "metrics_log", () => db.execute(sql`SELECT pg_sleep(0.06)`));
    await withMetrics("update", "metrics_log", () => db.execute(sql`SELECT 1/0`)).catch(() => {});
    expect(lines.map((l) => [l.level, l.message])).toEqual([
      ["info", "query"],
      ["warn", "query failed"],
      ["info", "query"],
    ]);
    expect(lines[0]?.fields).toEqual({
      operation: "select",
      table: "metrics_log",
      durationMs: expect.any(Number),
    });
    // Milliseconds (not seconds), rounded to two decimals.
    const slow = lines[0]?.fields.durationMs as number;
    expect(slow).toBeGreaterThanOrEqual(60);
    expect(String(slow)).toMatch(/^\d+(\.\d{1,2})?$/);
    expect(lines[1]?.fields).toEqual({ operation: "update", table: "metrics_log", code: "INVALID_INPUT" });
    expect(lines[2]?.fields).toEqual({
      operation: "update",
      table: "metrics_log",
      durationMs: expect.any(Number),
    });
  });

  it("setQueryLogger(undefined) stops logging and leaves the metrics running", async () => {
    const { logger, lines } = recordingLogger();
    setQueryLogger(logger);
    await withMetrics("select", "metrics_unlog", () => db.execute(sql`SELECT 1`));
    expect(lines).toHaveLength(1);
    setQueryLogger(undefined);
    const before = await snapshot("select", "metrics_unlog");
    await withMetrics("select", "metrics_unlog", () => db.execute(sql`SELECT 1`));
    expect(lines).toHaveLength(1);
    expect((await snapshot("select", "metrics_unlog")).queries).toBe(before.queries + 1);
  });
});
