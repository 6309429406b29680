// Background maintenance: expired sessions, one-time tokens and cache entries, and audit events past their
// retention, are deleted in rounds; and every AUDIT_CHAIN_INTERVAL_MS the audit events written since are
// linked into the hash chain (AuditService.chain: one process at a time, the others skip). Every
// process schedules rounds; the "maintenance" advisory lock and a last-round stamp in the cache let only one
// of them run each round.
import {
  AuditService,
  CacheService,
  type Logger,
  OneTimeTokensService,
  SessionsService,
  tryWithAdvisoryLock,
} from "@repo/db";

export type MaintenanceOutcome =
  | { ran: true; sessions: number; tokens: number; cache: number; auditEvents: number }
  | { ran: false };

export interface MaintenanceOptions {
  /** Skip the round when another process ran one less than this ago. Default 0. */
  minGapMs?: number;
  /** Delete audit events older than this many days; 0 keeps them. Default 365 (AUDIT_RETENTION_DAYS). */
  auditRetentionDays?: number;
}

const DAY_MS = 86_400_000;

/**
 * One round: skipped at once (ran: false) when another process holds the lock, or when another process
 * already ran a round less than `minGapMs` ago (every process schedules rounds; one of them does each).
 */
export async function maintenanceRound(
  logger: Logger,
  { minGapMs = 0, auditRetentionDays = 365 }: MaintenanceOptions = {},
): Promise<MaintenanceOutcome> {
  const outcome = await tryWithAdvisoryLock("maintenance", async (tx) => {
    const last = await CacheService.get<Date>("maintenance", "last-round", logger, { tx });
    if (last instanceof Date && Date.now() - last.getTime() < minGapMs) return undefined;
    // The cleanups run on the pool in small batches of their own, not in the lock's transaction, so no
    // batch holds row locks for the whole round; the lock only decides whose round it is.
    const sessions = await SessionsService.cleanupExpired({}, logger);
    const tokens = await OneTimeTokensService.cleanupExpired({}, logger);
    const cache = await CacheService.cleanupExpired({}, logger);
    // Chained first: retention deletes chained events only.
    await AuditService.chain({ skipIfBusy: true }, logger);
    const auditEvents =
      auditRetentionDays > 0
        ? await AuditService.prune({ before: new Date(Date.now() - auditRetentionDays * DAY_MS) }, logger)
        : 0;
    await CacheService.set("maintenance", "last-round", new Date(), {}, logger, { tx });
    return { sessions, tokens, cache, auditEvents };
  });
  if (!outcome.acquired || outcome.result === undefined) {
    logger.debug({}, "maintenance round skipped: another process runs or just ran it");
    return { ran: false };
  }
  logger.info(outcome.result, "maintenance round done");
  return { ran: true, ...outcome.result };
}

export interface MaintenanceSchedule {
  /** Between maintenance rounds. */
  intervalMs: number;
  /** Between audit chaining passes. */
  auditChainIntervalMs: number;
  auditRetentionDays: number;
}

/**
 * Runs a maintenance round every `intervalMs` and an audit chaining pass every `auditChainIntervalMs` (never
 * two of a kind at once in this process). `stop()` waits for running ones, then chains what is left once
 * more, so the events of the last requests are not left for another process.
 */
export function scheduleMaintenance(
  schedule: MaintenanceSchedule,
  logger: Logger,
): { stop(): Promise<void> } {
  const failed = (what: string) => (error: unknown) => {
    logger.error({ code: (error as { code?: string }).code ?? "UNKNOWN" }, `${what} failed`);
  };
  const every = (ms: number, work: () => Promise<unknown>) => {
    let running: Promise<unknown> | undefined;
    const timer = setInterval(() => {
      if (running !== undefined) return;
      running = work().finally(() => {
        running = undefined;
      });
    }, ms);
    timer.unref();
    return async () => {
      clearInterval(timer);
      await running;
    };
  };
  // Half an interval: rounds of processes started at different times still leave one round per interval.
  const stopRounds = every(schedule.intervalMs, () =>
    maintenanceRound(logger, {
      minGapMs: schedule.intervalMs / 2,
      auditRetentionDays: schedule.auditRetentionDays,
    }).catch(failed("maintenance round")),
  );
  const chain = () => AuditService.chain({ skipIfBusy: true }, logger).catch(failed("audit chaining"));
  const stopChaining = every(schedule.auditChainIntervalMs, chain);
  return {
    async stop() {
      await Promise.all([stopRounds(), stopChaining()]);
      await chain();
    },
  };
}
