// Prometheus metrics for every query the data layer runs, plus the connection pool's state.
// `withMetrics` is the one wrapper around each query: it times it, counts it, and turns failures into DbError.
import { Counter, Gauge, type Histogram, Registry } from "prom-client";
import { toDbError } from "./errors.ts";
import type { Logger } from "./logger.ts";

/** The registry holding the db_* series; the API merges it into its own `/metrics`. */
export const registry = new Registry();

const LABEL_NAMES = ["operation", "table"] as const;
const DURATION_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5];

/**
 * What withMetrics records per (operation, table), in plain numbers. prom-client hashes and validates the
 * labels on every inc() and observe(), even through a cached child: a measurable share of a primary-key read.
 * The series below read these tallies when they are collected (a scrape), so a query pays for two additions.
 */
interface Tally {
  labels: { operation: string; table: string };
  /** Queries run, and how many of them db_queries_total has already been given. */
  queries: number;
  reported: number;
  /** The duration histogram: count, sum in seconds, and per-bucket (non-cumulative) counts. */
  count: number;
  sum: number;
  buckets: Float64Array;
}

// By table, then operation: two lookups without building a key string per call.
const tallies = new Map<string, Map<string, Tally>>();

function tallyFor(operation: string, table: string): Tally {
  let byOperation = tallies.get(table);
  if (byOperation === undefined) {
    byOperation = new Map();
    tallies.set(table, byOperation);
  }
  let tally = byOperation.get(operation);
  if (tally === undefined) {
    tally = {
      labels: { operation, table },
      queries: 0,
      reported: 0,
      count: 0,
      sum: 0,
      buckets: new Float64Array(DURATION_BUCKETS.length),
    };
    byOperation.set(operation, tally);
  }
  return tally;
}

function* allTallies(): Generator<Tally> {
  for (const byOperation of tallies.values()) yield* byOperation.values();
}

export const dbQueriesTotal = new Counter({
  name: "db_queries_total",
  help: "Queries run by the data layer",
  labelNames: LABEL_NAMES,
  registers: [registry],
  // Hands over what was counted since the last collection (reset() of this counter keeps working).
  collect() {
    for (const tally of allTallies()) {
      const pending = tally.queries - tally.reported;
      if (pending > 0) this.inc(tally.labels, pending);
      tally.reported = tally.queries;
    }
  },
});

/**
 * db_query_duration_seconds, exposed exactly as a prom-client Histogram with the same buckets would be
 * (cumulative `_bucket` series with `le`, then `_sum` and `_count`), read from the tallies.
 */
class QueryDurationHistogram {
  readonly name = "db_query_duration_seconds";
  readonly help = "Query duration in seconds, including waiting for a pooled connection";
  readonly type = "histogram";
  readonly aggregator = "sum";
  readonly labelNames = [...LABEL_NAMES];

  async get() {
    const values: Array<{ value: number; labels: Record<string, string | number>; metricName: string }> = [];
    for (const tally of allTallies()) {
      if (tally.count === 0) continue;
      let cumulative = 0;
      DURATION_BUCKETS.forEach((le, index) => {
        cumulative += tally.buckets[index] ?? 0;
        values.push({
          value: cumulative,
          labels: { le, ...tally.labels },
          metricName: `${this.name}_bucket`,
        });
      });
      values.push(
        { value: tally.count, labels: { le: "+Inf", ...tally.labels }, metricName: `${this.name}_bucket` },
        { value: tally.sum, labels: { ...tally.labels }, metricName: `${this.name}_sum` },
        { value: tally.count, labels: { ...tally.labels }, metricName: `${this.name}_count` },
      );
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  reset(): void {
    for (const tally of allTallies()) {
      tally.count = 0;
      tally.sum = 0;
      tally.buckets.fill(0);
    }
  }

  /** Records one duration. */
  observe(tally: Tally, seconds: number): void {
    tally.count++;
    tally.sum += seconds;
    for (let i = 0; i < DURATION_BUCKETS.length; i++) {
      if (seconds <= (DURATION_BUCKETS[i] as number)) {
        (tally.buckets as Float64Array)[i] = (tally.buckets[i] ?? 0) + 1;
        return;
      }
    }
  }
}

export const dbQueryDurationSeconds = new QueryDurationHistogram();
// The registry formats any metric object with get(); prom-client's types list only its own classes.
registry.registerMetric(dbQueryDurationSeconds as unknown as Histogram);

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
  const tally = tallyFor(operation, table);
  try {
    return await fn();
  } catch (error) {
    const typed = toDbError(error, table);
    dbQueryErrorsTotal.inc({ operation, table, code: typed.code });
    queryLogger?.warn({ operation, table, code: typed.code }, "query failed");
    throw typed;
  } finally {
    const seconds = (performance.now() - started) / 1000;
    tally.queries++;
    dbQueryDurationSeconds.observe(tally, seconds);
    queryLogger?.info({ operation, table, durationMs: Math.round(seconds * 100_000) / 100 }, "query");
  }
}
