// Read replicas (DATABASE_REPLICA_URLS): a pool per streaming replica, a health check that measures each
// one's lag behind the primary, and onReplica(), which runs a read that tolerates lag on a healthy replica and
// re-runs it on the primary when the replica fails to connect or answer. Writes, the UNLOGGED cache (never
// replicated), one-time tokens and any read that must see a write just made stay on the primary: callers
// choose, by calling onReplica() only for reads that may be a little behind.
//
// Lag: the replica's replay position against the primary's current WAL position, read just before. Caught up
// (replayed at least that far) is 0; behind, it is the time since the last transaction the replica replayed.
// A replica that does not answer the check, is not in recovery (promoted: it no longer follows the primary),
// or lags more than replicaMaxLagMs is skipped until a later check finds it healthy.
import { drizzle } from "drizzle-orm/node-postgres";
import pg from "pg";
import { Counter, Gauge } from "prom-client";
import { redactUrl } from "./config.ts";
import type { Database } from "./connection.ts";
import { toDbError } from "./errors.ts";
import type { Logger } from "./logger.ts";
import { registry } from "./metrics.ts";
import * as schema from "./schema/index.ts";

export interface ReplicaStatus {
  /** The replica's URL without its password. */
  name: string;
  healthy: boolean;
  /** Replay lag at the last check, in milliseconds; null when it could not be measured. */
  lagMs: number | null;
  /** Why it is skipped, when it is. */
  reason?: string | undefined;
}

interface Replica {
  name: string;
  pool: pg.Pool;
  db: Database;
  healthy: boolean;
  /**
   * When the primary position of the check that last found it healthy was read (epoch ms). Its lag now is
   * at most the lag bound plus the time since: pick() skips a verdict older than the check interval plus 1 s.
   */
  verifiedAt: number;
  /** Its own check in progress: a replica that hangs delays no other replica's check. */
  checking: Promise<void> | undefined;
  lagMs: number | null;
  reason: string | undefined;
}

export interface ReplicaSetOptions {
  urls: string[];
  /** node-postgres options each replica pool gets besides its URL (the primary's: timeouts, types, size). */
  poolOptions: (url: string) => pg.PoolConfig;
  /** The primary's pool: where the current WAL position is read. */
  primary: pg.Pool;
  maxLagMs: number;
  checkIntervalMs: number;
  logger: Logger;
}

/** A per-replica gauge; `aggregator` is how /metrics combines it across API workers (which sums by default). */
const replicaGauge = (name: string, help: string, aggregator: "sum" | "max" | "min" = "sum") =>
  new Gauge({ name, help, aggregator, labelNames: ["replica"] as const, registers: [registry] });
// Across workers a replica's lag is the largest any worker measured, and it is healthy only if all found it so.
const replicaLag = replicaGauge(
  "db_replica_lag_seconds",
  "Replay lag of each read replica at its last check (-1 when it could not be measured)",
  "max",
);
const replicaUp = replicaGauge(
  "db_replica_healthy",
  "1 while a read replica answers and lags no more than DATABASE_REPLICA_MAX_LAG_MS, else 0",
  "min",
);
const replicaReads = new Counter({
  name: "db_replica_reads_total",
  help: "Reads that could use a replica, by where they ran: replica, primary (none healthy) or fallback (the replica failed)",
  labelNames: ["replica", "ran_on"] as const,
  registers: [registry],
});
const replicaPoolSize = replicaGauge("db_replica_pool_size", "Connections open in each replica's pool");
const replicaPoolIdle = replicaGauge("db_replica_pool_idle", "Open connections not checked out, per replica");
const replicaPoolWaiting = replicaGauge(
  "db_replica_pool_waiting",
  "Callers waiting for a replica connection",
);

/** How long after its check a healthy verdict is trusted, beyond the check interval. */
const VERDICT_MARGIN_MS = 1000;

/**
 * The most a replica in use can lag: the bound its checks enforce, plus the time a verdict is trusted after
 * the primary position it was measured against (one check interval and the margin).
 */
export function replicaLagBoundMs(config: {
  replicaMaxLagMs: number;
  replicaCheckIntervalMs: number;
}): number {
  return config.replicaMaxLagMs + config.replicaCheckIntervalMs + VERDICT_MARGIN_MS;
}

/** What the health check asks a replica (one round trip). */
const CHECK_SQL = `SELECT pg_is_in_recovery() AS in_recovery,
  CASE WHEN pg_is_in_recovery() THEN pg_wal_lsn_diff($1::pg_lsn, pg_last_wal_replay_lsn()) END AS behind_bytes,
  (extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp()) * 1000)::float8 AS since_replay_ms`;

export interface ReplicaSet {
  /** A healthy replica's Drizzle handle (round robin), or undefined when none is. */
  pick(): { name: string; db: Database } | undefined;
  /** Marks a replica down until the next check finds it healthy (a read on it just failed). */
  markDown(name: string, reason: string): void;
  /** Runs one health check of every replica now. */
  check(): Promise<void>;
  status(): ReplicaStatus[];
  /** Stops the checks and closes the replica pools. */
  close(): Promise<void>;
}

export function createReplicaSet(options: ReplicaSetOptions): ReplicaSet {
  const replicas: Replica[] = options.urls.map((url) => {
    const pool = new pg.Pool(options.poolOptions(url));
    const name = redactUrl(url);
    pool.on("error", () => {
      // An idle replica connection that died: the pool drops it; the next check notices the replica.
    });
    return {
      name,
      pool,
      db: drizzle({ client: pool, schema }),
      healthy: false,
      verifiedAt: 0,
      checking: undefined,
      lagMs: null,
      reason: "not checked yet",
    };
  });
  let next = 0;
  const staleAfterMs = options.checkIntervalMs + VERDICT_MARGIN_MS;
  // A replica's check that gets no answer (a server that hangs, or a connection whose peer vanished without a
  // word) fails once its verdict would be stale anyway, instead of holding the replica's checks forever; the
  // pool destroys the client it ran on. The primary's read is not bounded: a slow primary is asked once per
  // round (see check()), and cutting it off would only cost it a reconnection per round.
  const bounded = (query: pg.QueryConfig): pg.QueryConfig =>
    Object.assign(query, { query_timeout: staleAfterMs }) as pg.QueryConfig;
  let primaryRead: Promise<void> | undefined;

  const set = (replica: Replica, healthy: boolean, lagMs: number | null, reason?: string, verifiedAt = 0) => {
    const changed = replica.healthy !== healthy;
    replica.healthy = healthy;
    if (healthy) replica.verifiedAt = verifiedAt;
    replica.lagMs = lagMs;
    replica.reason = healthy ? undefined : reason;
    replicaUp.set({ replica: replica.name }, healthy ? 1 : 0);
    replicaLag.set({ replica: replica.name }, lagMs === null ? -1 : lagMs / 1000);
    if (changed) {
      const fields = { replica: replica.name, lagMs, reason };
      if (healthy) options.logger.info(fields, "read replica in use");
      else options.logger.warn(fields, "read replica skipped");
    }
  };

  const checkOne = async (replica: Replica, primaryLsn: string | null, readAt: number): Promise<void> => {
    try {
      const result = await replica.pool.query<{
        in_recovery: boolean;
        behind_bytes: string | null;
        since_replay_ms: number | null;
      }>(bounded({ text: CHECK_SQL, values: [primaryLsn ?? "0/0"] }));
      const row = result.rows[0];
      if (!row?.in_recovery) {
        set(replica, false, null, "not in recovery: it does not follow the primary");
        return;
      }
      const caughtUp = primaryLsn !== null && Number(row.behind_bytes) <= 0;
      const lagMs = caughtUp ? 0 : row.since_replay_ms === null ? null : Math.max(0, row.since_replay_ms);
      if (lagMs === null) set(replica, false, null, "has not replayed anything yet");
      else if (lagMs > options.maxLagMs) set(replica, false, lagMs, `lags ${Math.round(lagMs)} ms`);
      else set(replica, true, lagMs, undefined, readAt);
    } catch (error) {
      set(replica, false, null, `check failed: ${toDbError(error).code}`);
    }
  };

  const check = async (): Promise<void> => {
    // The primary's position first, so a replica that has replayed up to it is caught up at that moment. A
    // primary too slow to answer within a round is asked once, not once per tick: later rounds wait for it.
    if (primaryRead) {
      await primaryRead;
      return;
    }
    const readAt = Date.now();
    const run = options.primary
      .query<{ lsn: string }>("SELECT pg_current_wal_lsn()::text AS lsn")
      .then((result) => result.rows[0]?.lsn ?? null)
      .catch(() => null)
      .then((primaryLsn) => {
        primaryRead = undefined;
        // Each replica on its own: one that hangs keeps only its own check (and its verdict goes stale).
        return Promise.all(
          replicas.map((replica) => {
            replica.checking ??= checkOne(replica, primaryLsn, readAt).finally(() => {
              replica.checking = undefined;
            });
            return replica.checking;
          }),
        );
      })
      .then(() => {
        for (const replica of replicas) {
          const labels = { replica: replica.name };
          replicaPoolSize.set(labels, replica.pool.totalCount);
          replicaPoolIdle.set(labels, replica.pool.idleCount);
          replicaPoolWaiting.set(labels, replica.pool.waitingCount);
        }
      });
    primaryRead = run;
    await run;
  };

  // A round starts on every tick; a replica whose previous check is still running is not asked again.
  const timer = setInterval(() => void check(), options.checkIntervalMs);
  timer.unref();
  void check();

  return {
    pick() {
      for (let i = 0; i < replicas.length; i++) {
        const replica = replicas[(next + i) % replicas.length] as Replica;
        if (replica.healthy && Date.now() - replica.verifiedAt <= staleAfterMs) {
          next = (next + i + 1) % replicas.length;
          return { name: replica.name, db: replica.db };
        }
      }
      return undefined;
    },
    markDown(name, reason) {
      const replica = replicas.find((r) => r.name === name);
      if (replica?.healthy) set(replica, false, replica.lagMs, reason);
    },
    check,
    status: () =>
      replicas.map((r) => ({ name: r.name, healthy: r.healthy, lagMs: r.lagMs, reason: r.reason })),
    async close() {
      clearInterval(timer);
      await Promise.all(replicas.map((replica) => replica.checking?.catch(() => {})));
      await Promise.all(replicas.map((replica) => replica.pool.end().catch(() => {})));
      for (const replica of replicas) {
        for (const gauge of [replicaLag, replicaUp, replicaPoolSize, replicaPoolIdle, replicaPoolWaiting]) {
          gauge.remove({ replica: replica.name });
        }
      }
    },
  };
}

/**
 * Runs `read` on a healthy replica's handle (pass it to services as `{ tx }`), or on `primary` when none is
 * healthy. When the replica fails in a way the primary would not (it cannot be reached, its pool is
 * exhausted, a query was cancelled by recovery), it is marked down and `read` runs again on the primary, so
 * the caller sees no error from a replica.
 */
export async function readOn<T>(
  replicas: ReplicaSet | undefined,
  primary: Database,
  read: (handle: Database) => Promise<T>,
): Promise<T> {
  const replica = replicas?.pick();
  if (!replica) {
    if (replicas) replicaReads.inc({ replica: "", ran_on: "primary" });
    return await read(primary);
  }
  try {
    const result = await read(replica.db);
    replicaReads.inc({ replica: replica.name, ran_on: "replica" });
    return result;
  } catch (error) {
    const typed = toDbError(error);
    // A rejection of the caller's input, or a missing row, would be the same on the primary.
    if (!typed.retryable) throw typed;
    replicas?.markDown(replica.name, `a read failed: ${typed.code}`);
    replicaReads.inc({ replica: replica.name, ran_on: "fallback" });
    return await read(primary);
  }
}
