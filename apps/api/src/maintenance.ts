// Background maintenance: expired sessions, one-time tokens and cache entries, and audit events past their
// retention, are deleted in rounds. Every
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

/** Runs a round every `intervalMs` (never two at once in this process); `stop()` waits for a running one. */
export function scheduleMaintenance(
  intervalMs: number,
  logger: Logger,
  auditRetentionDays: number,
): { stop(): Promise<void> } {
  let running: Promise<unknown> | undefined;
  const timer = setInterval(() => {
    if (running !== undefined) return;
    // Half an interval: rounds of processes started at different times still leave one round per interval.
    running = maintenanceRound(logger, { minGapMs: intervalMs / 2, auditRetentionDays })
      .catch((error: unknown) => {
        logger.error({ code: (error as { code?: string }).code ?? "UNKNOWN" }, "maintenance round failed");
      })
      .finally(() => {
        running = undefined;
      });
  }, intervalMs);
  timer.unref();
  return {
    async stop() {
      clearInterval(timer);
      await running;
    },
  };
}
