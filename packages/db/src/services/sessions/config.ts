// Sessions, configuration: the process-wide lifetimes and cap, their validation, and the instants one call
// compares against (see ../sessions.ts for what a session is).
import { z } from "zod";
import { now } from "../../clock.ts";
import { DbError } from "../../errors.ts";
import type { ServiceOptions } from "../common.ts";

// ---------------------------------------------------------------------------------------------------------
// Configuration

/** Session lifetimes, in milliseconds. */
export interface SessionConfig {
  /** A session not used for this long expires (sliding window). Default 7 days. */
  idleTimeoutMs: number;
  /** No session outlives its creation by more than this, however active. Default 30 days. */
  absoluteLifetimeMs: number;
  /**
   * `validate()` writes last_accessed_at / expires_at at most once per interval, so a busy session costs one
   * write an hour, not one per request. Default 1 hour. Must be shorter than the idle timeout.
   */
  refreshIntervalMs: number;
  /**
   * Live sessions (active, not expired) a user may have at once; creating one more revokes the oldest, so
   * a leaked password or a sign-in loop cannot pile up sessions without bound. Default 50, 1 to 10,000.
   */
  maxPerUser: number;
}

const HOUR = 60 * 60 * 1000;
const DAY = 24 * HOUR;

/** The defaults: idle 7 days, absolute 30 days, refresh 1 hour, 50 live sessions per user. */
export const DEFAULT_SESSION_CONFIG: Readonly<SessionConfig> = Object.freeze({
  idleTimeoutMs: 7 * DAY,
  absoluteLifetimeMs: 30 * DAY,
  refreshIntervalMs: HOUR,
  maxPerUser: 50,
});

const duration = z
  .number()
  .int()
  .positive()
  .max(10 * 366 * DAY);
const configSchema = z
  .object({
    idleTimeoutMs: duration,
    absoluteLifetimeMs: duration,
    refreshIntervalMs: duration,
    maxPerUser: z.number().int().min(1).max(10_000),
  })
  .refine((c) => c.refreshIntervalMs < c.idleTimeoutMs, {
    path: ["refreshIntervalMs"],
    message: "must be shorter than idleTimeoutMs",
  })
  .refine((c) => c.idleTimeoutMs <= c.absoluteLifetimeMs, {
    path: ["idleTimeoutMs"],
    message: "must not exceed absoluteLifetimeMs",
  });

let config: Readonly<SessionConfig> = DEFAULT_SESSION_CONFIG;

function checkedConfig(candidate: SessionConfig): Readonly<SessionConfig> {
  const parsed = configSchema.safeParse(candidate);
  if (parsed.success) return Object.freeze({ ...parsed.data });
  const details: Record<string, string> = {};
  for (const issue of parsed.error.issues) details[issue.path.join(".") || "config"] ??= issue.message;
  throw new DbError(
    "CONFIG_INVALID",
    `Invalid session configuration: ${Object.entries(details)
      .map(([k, v]) => `${k}: ${v}`)
      .join("; ")}`,
    { details },
  );
}

/**
 * Changes the process-wide session configuration; omitted fields keep their current value.
 * @throws DbError CONFIG_INVALID for non-positive durations, refresh >= idle, idle > absolute, or maxPerUser
 *   outside 1..10,000.
 * @example configureSessions({ idleTimeoutMs: 24 * 60 * 60 * 1000, maxPerUser: 20 });
 */
export function configureSessions(partial: Partial<SessionConfig>): Readonly<SessionConfig> {
  config = checkedConfig({ ...config, ...partial });
  return config;
}

/**
 * The process-wide session configuration in force.
 * @example const { idleTimeoutMs } = sessionConfig();
 */
export function sessionConfig(): Readonly<SessionConfig> {
  return config;
}

/** The options of every SessionsService function: a transaction, and optionally a per-call configuration. */
export interface SessionServiceOptions extends ServiceOptions {
  /** Overrides the process-wide configuration for this call only (validated the same way). */
  config?: Partial<SessionConfig> | undefined;
}

/** The configuration a call runs with: the process-wide one, with `options.config` (checked) over it. */
export function configFor(options: SessionServiceOptions): Readonly<SessionConfig> {
  return options.config ? checkedConfig({ ...config, ...options.config }) : config;
}

/** The instants one call compares against, all derived from one reading of the clock. */
export function timesFor(cfg: SessionConfig) {
  const at = now();
  const t = at.getTime();
  return {
    at,
    /** expires_at for a session touched now, before the absolute cap. */
    idleExpiry: new Date(t + cfg.idleTimeoutMs),
    /** created_at at or before this means the absolute lifetime is over. */
    absoluteCutoff: new Date(t - cfg.absoluteLifetimeMs),
    /** last_accessed_at after this means the row was refreshed recently enough. */
    refreshCutoff: new Date(t - cfg.refreshIntervalMs),
    absoluteSeconds: cfg.absoluteLifetimeMs / 1000,
  };
}
