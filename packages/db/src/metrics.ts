// Prometheus metrics for every query the data layer runs, plus the connection pool's state.
// `withMetrics` is the one wrapper around each query: it times it, counts it, and turns failures into DbError.
import { Counter, Gauge, Registry } from "prom-client";
import { toDbError } from "./errors.ts";
import type { Logger } from "./logger.ts";
import { countsOf, TalliedHistogram } from "./tallies.ts";

/** The registry holding the db_* series; the API merges it into its own `/metrics`. */
export const registry = new Registry();

/**
 * db_query_duration_seconds and db_queries_total, tallied in plain numbers per (operation, table) and read
 * when scraped (see tallies.ts): a query pays for a few additions, not for prom-client's label hashing.
 */
export const dbQueryDurationSeconds = new TalliedHistogram({
  name: "db_query_duration_seconds",
  help: "Query duration in seconds, including waiting for a pooled connection",
  labelNames: ["operation", "table"],
  buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
  registers: [registry],
});

export const dbQueriesTotal = countsOf(dbQueryDurationSeconds, {
  name: "db_queries_total",
  help: "Queries run by the data layer",
  registers: [registry],
});

export const dbQueryErrorsTotal = new Counter({
  name: "db_query_errors_total",
  help: "Failed queries, by error code",
  labelNames: ["operation", "table", "code"] as const,
  registers: [registry],
});

/** What the pool gauges read; set by the connection module when a pool exists. */
export interface PoolStats {
  totalCount: number;
  idleCount: number;
  waitingCount: number;
}
let poolSource: (() => PoolStats | undefined) | undefined;

/** Points the pool gauges at a pool (or at nothing). */
export function setPoolStatsSource(source: (() => PoolStats | undefined) | undefined): void {
  poolSource = source;
}

const poolGauge = (name: string, help: string, read: (stats: PoolStats) => number) =>
  new Gauge({
    name,
    help,
    registers: [registry],
    collect() {
      const stats = poolSource?.();
      this.set(stats ? read(stats) : 0);
    },
  });

poolGauge("db_connection_pool_size", "Connections currently open in the pool", (s) => s.totalCount);
poolGauge("db_connection_pool_idle", "Open connections not checked out", (s) => s.idleCount);
poolGauge("db_connection_pool_waiting", "Callers waiting for a connection", (s) => s.waitingCount);

let queryLogger: Logger | undefined;

/** With a logger, every query wrapped in withMetrics is logged with its operation, table and duration. */
export function setQueryLogger(logger: Logger | undefined): void {
  queryLogger = logger;
}

/**
 * Runs one query, recording count, duration and (on failure) the error code; failures are rethrown as DbError.
 * @example const row = await withMetrics("select", "users", () => db.select().from(users).where(...));
 */
export async function withMetrics<T>(operation: string, table: string, fn: () => Promise<T>): Promise<T> {
  const started = performance.now();
  const tally = dbQueryDurationSeconds.tally(operation, table);
  try {
    return await fn();
  } catch (error) {
    const typed = toDbError(error, table);
    dbQueryErrorsTotal.inc({ operation, table, code: typed.code });
    queryLogger?.warn({ operation, table, code: typed.code }, "query failed");
    throw typed;
  } finally {
    const seconds = (performance.now() - started) / 1000;
    dbQueryDurationSeconds.observe(tally, seconds);
    queryLogger?.info({ operation, table, durationMs: Math.round(seconds * 100_000) / 100 }, "query");
  }
}
