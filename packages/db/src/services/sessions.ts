// Sessions: opaque bearer tokens for signed-in users. The token is 256 random bits handed to the client once;
// the database keeps only its SHA-256 (token_hash, unique index), so a leaked table holds no usable token.
// A session expires after an idle timeout (sliding, refreshed at most once per refresh interval) and in any
// case at an absolute lifetime after creation. A user has at most maxPerUser live sessions: creating one more
// revokes the oldest.
import { isIP } from "node:net";
import { and, desc, eq, getTableColumns, gt, ne, type SQL, sql } from "drizzle-orm";
import { uuidv7 } from "uuidv7";
import { z } from "zod";
import { now } from "../clock.ts";
import { coalescer } from "../coalesce.ts";
import { type DatabaseOrTransaction, db, statementTransaction } from "../connection.ts";
import { generateSecret, isWellFormedSecret, sha256 } from "../crypto/secrets.ts";
import { DbError, isDbError, toDbError } from "../errors.ts";
import { withMetrics } from "../metrics.ts";
import { type Session, sessions } from "../schema/sessions.ts";
import { users } from "../schema/users.ts";
import { defineStatement, param, selectColumns } from "../statements.ts";
import {
  deleteInBatches,
  noNul,
  type PublicUser,
  publicUserColumns,
  type ServiceOptions,
  userNotFound,
  uuidSchema,
  validate as validateInput,
} from "./common.ts";
import { type Call, defineService } from "./define.ts";

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

function configFor(options: SessionServiceOptions): Readonly<SessionConfig> {
  return options.config ? checkedConfig({ ...config, ...options.config }) : config;
}

/** The instants one call compares against, all derived from one reading of the clock. */
function timesFor(cfg: SessionConfig) {
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

// ---------------------------------------------------------------------------------------------------------
// Row shapes

/**
 * A session as returned to callers. token_hash is left out: it is a digest, not the token, but nothing
 * outside this module needs it and keeping it out of responses and logs costs nothing.
 */
export type PublicSession = Omit<Session, "tokenHash">;
/** The user behind a session: the password hash and the search vector are left out. */
export type SessionUser = PublicUser;

const { tokenHash: _tokenHash, ...publicSessionColumns } = getTableColumns(sessions);

// ---------------------------------------------------------------------------------------------------------
// Input

/** Longer user agents are stored cut to this many characters. */
export const USER_AGENT_MAX_STORED = 512;
/** Longer user agents are rejected: no browser sends one, so it is junk or an attack. */
export const USER_AGENT_MAX_ACCEPTED = 1024;
const METADATA_MAX_BYTES = 8192;

const uuid = uuidSchema;
const createInput = z.strictObject({
  userId: uuid,
  ipAddress: z
    .string()
    .max(64)
    // node:net accepts a zone suffix (fe80::1%eth0) that PostgreSQL's inet does not.
    .refine((ip) => isIP(ip) !== 0 && !ip.includes("%"), "must be an IPv4 or IPv6 address")
    .nullish(),
  userAgent: z
    .string()
    .max(USER_AGENT_MAX_ACCEPTED)
    .refine(noNul, "must not contain NUL")
    .transform((ua) => Array.from(ua).slice(0, USER_AGENT_MAX_STORED).join(""))
    .nullish(),
  /** How the user signed in: password, magic_link, oauth:google, ... */
  authMethod: z.string().regex(/^[a-z][a-z0-9_:.-]{0,31}$/, "must be a short lower-case identifier"),
  metadata: z
    .record(z.string(), z.unknown())
    .refine((value) => {
      try {
        const json = JSON.stringify(value);
        return Buffer.byteLength(json) <= METADATA_MAX_BYTES && noNul(json);
      } catch {
        return false;
      }
    }, `must be JSON of at most ${METADATA_MAX_BYTES} bytes`)
    .optional(),
});
export type CreateSessionInput = z.input<typeof createInput>;

const revokeAllInput = z.strictObject({ userId: uuid, except: uuid.optional() });
const cleanupInput = z.strictObject({
  batchSize: z.number().int().min(1).max(50_000).default(1000),
  /** Upper bound on the loop: at most batchSize * maxBatches rows per call. */
  maxBatches: z.number().int().min(1).max(100_000).default(1000),
});

// ---------------------------------------------------------------------------------------------------------
// Service

// Creating a session runs two statements in one transaction (statementTransaction: BEGIN/COMMIT on a pooled
// client, or the caller's transaction), so that a user's creations take turns and the cap holds under
// concurrency.
//
// 1. Lock the user row. FOR NO KEY UPDATE conflicts with itself and with any UPDATE of the user (soft delete,
//    password change), but not with the FOR KEY SHARE that foreign-key checks take, so inserts of the user's
//    tokens and accounts do not wait. A row lock rather than an advisory lock: softDelete() and the password
//    flows update this row before revoking the user's sessions, so a creation either commits before them (and
//    their revocation sees its session) or waits and then finds the user deleted. Every path that locks both
//    takes the user row before session rows, so the two kinds of lock never wait on each other in a cycle. Transaction-scoped,
//    so it works behind a transaction-mode pooler and dies with a crashed holder. Under READ COMMITTED a
//    waiter re-checks `deleted_at IS NULL` against the row as committed, so a deleted user yields no row.
const lockUserStatement = defineStatement<{ id: string }, { userId: string }>(
  "sessions_lock_user",
  sql`SELECT id FROM users WHERE id = ${param("userId")}::uuid AND deleted_at IS NULL FOR NO KEY UPDATE`,
);

/** What createStatement binds. */
interface CreateParams extends Record<string, unknown> {
  id: string;
  userId: string;
  tokenHash: Buffer;
  authMethod: string;
  ipAddress: string | null;
  userAgent: string | null;
  metadata: string;
  expiresAt: Date;
  at: Date;
  absoluteCutoff: Date;
  /** maxPerUser - 1: how many of the user's other live sessions survive next to the new one. */
  keep: number;
}

// 2. Insert, and revoke the user's live sessions beyond the newest maxPerUser - 1, in one statement sent
//    after the lock: its snapshot includes every creation that committed before we got the lock, so N
//    parallel creations for one user leave at most maxPerUser live sessions. The statement's snapshot does
//    not contain its own INSERT, so `overflow` counts the other sessions and keeps maxPerUser - 1 of them.
//    - inserted: INSERT ... SELECT from users (no row, nothing written, for a missing or deleted user).
//      created_at comes from the data layer's clock because the absolute lifetime is measured from it; it and
//      the id are taken after the lock, so they grow in lock order and "newest" agrees with the order the
//      creations happened in. updated_at is left to the database, like the trigger that maintains it.
//    - overflow: the user's live sessions (sessions_user_id_idx), newest first, after the ones kept. No lock.
//    - victims: locks them in id order (LockRows above the Sort), the order validate()'s refreshes lock in, so
//      a creation and a refresh naming the same sessions never wait on each other in a cycle. The
//      conditions are on `s`: a row revoked or expired meanwhile is re-checked when the lock is granted.
//    - capped: revokes them exactly as revoke() does (expires_at pulled back so cleanup finds them).
//    This relies on READ COMMITTED (the default, and what transaction() opens): a caller's REPEATABLE READ
//    transaction keeps the snapshot of its first statement and may not see a creation committed meanwhile.
const createStatement = defineStatement<PublicSession & { revokedForCap: string[] }, CreateParams>(
  "sessions_create",
  sql`
    WITH inserted AS (
      INSERT INTO sessions (id, user_id, token_hash, status, auth_method, ip_address, user_agent, metadata,
        expires_at, last_accessed_at, created_at)
      SELECT ${param("id")}::uuid, u.id, ${param("tokenHash")}::bytea, 'active', ${param("authMethod")},
        ${param("ipAddress")}::inet, ${param("userAgent")}, ${param("metadata")}::jsonb,
        ${param("expiresAt")}::timestamptz, ${param("at")}::timestamptz, ${param("at")}::timestamptz
      FROM users u
      WHERE u.id = ${param("userId")}::uuid AND u.deleted_at IS NULL
      RETURNING ${selectColumns("sessions", publicSessionColumns)}
    ),
    overflow AS (
      SELECT id FROM sessions
      WHERE user_id = ${param("userId")}::uuid AND status = 'active'
        AND expires_at > ${param("at")}::timestamptz AND created_at > ${param("absoluteCutoff")}::timestamptz
        AND EXISTS (SELECT 1 FROM inserted)
      ORDER BY created_at DESC, id DESC
      OFFSET ${param("keep")}::int
    ),
    victims AS (
      SELECT s.id FROM sessions s JOIN overflow o ON o.id = s.id
      WHERE s.status = 'active' AND s.expires_at > ${param("at")}::timestamptz
      ORDER BY s.id
      FOR UPDATE OF s
    ),
    capped AS (
      UPDATE sessions s
      SET status = 'revoked', revoked_at = coalesce(s.revoked_at, ${param("at")}::timestamptz),
          expires_at = least(s.expires_at, ${param("at")}::timestamptz)
      FROM victims v
      WHERE s.id = v.id AND s.status = 'active' AND s.expires_at > ${param("at")}::timestamptz
      RETURNING s.id
    )
    SELECT inserted.*,
           (SELECT coalesce(array_agg(c.id::text ORDER BY c.id), '{}') FROM capped c) AS "revokedForCap"
    FROM inserted`,
);

/**
 * Creates a session for an existing, not deleted user and returns it with its token (shown to the client
 * once; only its SHA-256 is stored). When the user would then have more than maxPerUser live sessions, the
 * oldest are revoked in the same transaction so that exactly maxPerUser remain, the new one included; a
 * user's concurrent creations take turns on the user row, so the cap holds under any concurrency. With
 * `{ tx }` it runs inside the caller's transaction and holds the user row lock until that commits.
 * @throws DbError VALIDATION_FAILED (bad id, IP, auth method, user agent over 1024 chars), NOT_FOUND (no such
 *   user, or deleted), CONFIG_INVALID (bad per-call config).
 * @example const { session, token } = await create({ userId, authMethod: "password", ipAddress: "203.0.113.7" });
 */
export const create = defineService(
  {
    name: "sessions.create",
    table: "sessions",
    arity: 1,
    logFields: ([payload]) => ({ userId: payload?.userId }),
  },
  async (
    { logger, options }: Call<SessionServiceOptions>,
    payload: CreateSessionInput,
  ): Promise<{ session: PublicSession; token: string }> => {
    const input = validateInput(createInput, payload);
    const cfg = configFor(options);
    const token = generateSecret();
    const tokenHash = sha256(token);
    const row = await statementTransaction(
      async (tx) => {
        const locked = await withMetrics("lock", "sessions", () =>
          lockUserStatement.run(tx, { userId: input.userId }),
        );
        if (locked.rows.length === 0) throw userNotFound();
        // Read the clock (and draw the UUIDv7) only once the lock is ours: see createStatement.
        const times = timesFor(cfg);
        const result = await withMetrics("insert", "sessions", () =>
          createStatement
            .run(tx, {
              id: uuidv7(),
              userId: input.userId,
              tokenHash,
              authMethod: input.authMethod,
              ipAddress: input.ipAddress ?? null,
              userAgent: input.userAgent ?? null,
              metadata: JSON.stringify(input.metadata ?? {}),
              expiresAt: new Date(
                Math.min(times.idleExpiry.getTime(), times.at.getTime() + cfg.absoluteLifetimeMs),
              ),
              at: times.at,
              absoluteCutoff: times.absoluteCutoff,
              keep: cfg.maxPerUser - 1,
            })
            .catch((error: unknown) => {
              // Defensive: the row lock already keeps the user from being hard-deleted meanwhile.
              if (isDbError(toDbError(error), "FOREIGN_KEY_VIOLATION")) throw userNotFound(error);
              throw error;
            }),
        );
        return result.rows[0];
      },
      { tx: options.tx },
    );
    if (!row) throw userNotFound();
    const { revokedForCap, ...session } = row;
    logger.audit(
      {
        sessionId: session.id,
        userId: session.userId,
        authMethod: session.authMethod,
        revokedForCap: revokedForCap.length,
        ...(revokedForCap.length > 0 ? { revokedSessionIds: revokedForCap } : {}),
      },
      "session created",
    );
    return { session, token };
  },
);

/** What the read binds: the tokens' digests and the instants of timesFor(). */
interface ReadParams extends Record<string, unknown> {
  /** The digest, for one token. */
  hash: Buffer | undefined;
  /** The digests, for a batch. */
  hashes: Buffer[];
  at: Date;
  absoluteCutoff: Date;
}

/**
 * The read every validation is: each digest (with its position n in the input) by the unique index on
 * token_hash, joined with the user, keeping only a live session (active, before its idle expiry and its
 * absolute lifetime) of a live user. It writes nothing, takes no lock and can run on a replica. The equality is
 * on a SHA-256 of 256 random bits, so timing reveals nothing usable. An expired row is left for
 * cleanupExpired(); deleting it here would make every check of a dead token a write.
 */
function readStatement(key: string, input: SQL) {
  return defineStatement<Record<string, unknown>, ReadParams>(
    key,
    sql`SELECT i.n, ${selectColumns("s", publicSessionColumns, "s.")}, ${selectColumns("u", publicUserColumns, "u.")}
      FROM ${input}
      JOIN sessions s ON s.token_hash = i.token_hash
      JOIN users u ON u.id = s.user_id
      WHERE s.status = 'active' AND s.expires_at > ${param("at")}::timestamptz
        AND s.created_at > ${param("absoluteCutoff")}::timestamptz AND u.deleted_at IS NULL`,
  );
}

// One token: a one-row input, so a generic plan's estimates equal a custom plan's and PostgreSQL keeps the
// generic plan after five runs. With unnest() the generic plan assumes 10 rows, costs more than a custom
// plan, and PostgreSQL would plan every call, which takes longer than running this statement.
const validateOne = readStatement(
  "sessions_validate",
  sql`(SELECT ${param("hash")}::bytea AS token_hash, 1 AS n) AS i`,
);
// Several tokens (a coalesced batch): planned per call, which the batch shares.
const validateBatch = readStatement(
  "sessions_validate_batch",
  sql`unnest(${param("hashes")}::bytea[]) WITH ORDINALITY AS i(token_hash, n)`,
);

interface RefreshParams extends Record<string, unknown> {
  ids: string[];
  at: Date;
  absoluteCutoff: Date;
  idleExpiry: Date;
  absoluteSeconds: number;
  refreshCutoff: Date;
}

/**
 * The sliding refresh, run only for sessions whose refresh is due (at most once per interval each). Its
 * conditions are re-checked on the row version it locks (READ COMMITTED): a session revoked or expired
 * meanwhile is not extended, and of concurrent refreshes of one session only the first writes (the others
 * find last_accessed_at recent). `id = ANY` walks the primary key in id order, and the ids are sorted too, so
 * two batches lock shared rows in the same order and cannot deadlock.
 */
const refreshStatement = defineStatement<Record<string, unknown>, RefreshParams>(
  "sessions_refresh",
  sql`UPDATE sessions s
      SET last_accessed_at = ${param("at")}::timestamptz,
          expires_at = least(${param("idleExpiry")}::timestamptz,
                             s.created_at + make_interval(secs => ${param("absoluteSeconds")}::float8))
      WHERE s.id = ANY(${param("ids")}::uuid[]) AND s.status = 'active'
        AND s.expires_at > ${param("at")}::timestamptz AND s.created_at > ${param("absoluteCutoff")}::timestamptz
        AND (s.last_accessed_at IS NULL OR s.last_accessed_at <= ${param("refreshCutoff")}::timestamptz)
      RETURNING s.id AS "s.id", s.expires_at AS "s.expiresAt", s.last_accessed_at AS "s.lastAccessedAt",
                s.updated_at AS "s.updatedAt"`,
);

type ValidatedRow = Record<string, unknown>;

/**
 * Validates distinct tokens: one read (one round trip), then, only when some session's refresh is due, one
 * refresh for those. One entry per token, in input order: undefined (not live), the row, or, for a row whose
 * refresh is due, a promise of the row carrying its new expiry. The returned promise settles once the read has
 * answered, so a caller gating on it (the coalescer) never waits on the refresh's row locks.
 */
async function readMany(
  tokens: readonly string[],
  cfg: SessionConfig,
  handle: DatabaseOrTransaction | undefined,
): Promise<Array<ValidatedRow | undefined | Promise<ValidatedRow>>> {
  const times = timesFor(cfg);
  const hashes = tokens.map(sha256);
  const params = { hash: hashes[0], hashes, at: times.at, absoluteCutoff: times.absoluteCutoff };
  const result = await withMetrics("validate", "sessions", () =>
    (tokens.length === 1 ? validateOne : validateBatch).run(handle, params),
  );
  const rows = new Array<ValidatedRow | undefined | Promise<ValidatedRow>>(tokens.length);
  const due: Array<{ row: ValidatedRow; index: number }> = [];
  // n is the 1-based position of the token in the input (bigint from unnest, so text from the driver).
  for (const row of result.rows) {
    const index = Number(row.n) - 1;
    rows[index] = row;
    const last = row["s.lastAccessedAt"] as Date | null;
    if (last === null || last.getTime() <= times.refreshCutoff.getTime()) due.push({ row, index });
  }
  if (due.length > 0) {
    const refreshed = refreshDue(
      due.map((entry) => entry.row),
      times,
      handle,
    );
    for (const { row, index } of due) rows[index] = refreshed.then(() => row);
  }
  return rows;
}

/** Slides the expiry of sessions whose refresh is due; each row that was extended gets the new values. */
async function refreshDue(
  due: ValidatedRow[],
  times: ReturnType<typeof timesFor>,
  handle: DatabaseOrTransaction | undefined,
): Promise<void> {
  const ids = due.map((row) => row["s.id"] as string).sort();
  const refreshed = await withMetrics("refresh", "sessions", () =>
    refreshStatement.run(handle, { ...times, ids }),
  );
  const byId = new Map(refreshed.rows.map((row) => [row["s.id"] as string, row]));
  for (const row of due) {
    const fresh = byId.get(row["s.id"] as string);
    if (fresh) Object.assign(row, fresh, { refreshed: true });
  }
}

/**
 * How many coalesced validation reads run at once. One: while a read is out, validations gather and the next
 * read answers all of them (group commit). Under load that turns a round trip per request into one per batch,
 * which costs the driver and PostgreSQL far less; an idle process still sends a lone check at once. The
 * refresh is outside the gate, so a session row locked by another transaction stalls only its own callers.
 */
const VALIDATE_READS_IN_FLIGHT = 1;

// Validations outside a transaction, with the process-wide configuration, share reads (see above). A call
// with { tx } or a per-call config runs alone (its snapshot or lifetimes differ).
const validateCoalesced = coalescer<string, ValidatedRow | undefined | Promise<ValidatedRow>>({
  key: (token) => token,
  run: (tokens) => readMany(tokens, config, undefined),
  maxInFlight: VALIDATE_READS_IN_FLIGHT,
});

/** The `prefix`ed properties of a row, keyed without the prefix. */
function pick<T>(row: Record<string, unknown>, keys: readonly string[], prefix: string): T {
  const out: Record<string, unknown> = {};
  for (const key of keys) out[key] = row[prefix + key];
  return out as T;
}

const sessionKeys = Object.keys(publicSessionColumns);
const userKeys = Object.keys(publicUserColumns);

/**
 * Checks a session token and returns the live session with its user, or null. On the common path this is
 * one read-only statement; at most once per refresh interval per session a conditional UPDATE slides the
 * expiry (the answer then carries the new one). Expired sessions are not deleted here (cleanupExpired() does).
 * Concurrent calls in the same tick share one read. A malformed token returns null without touching the
 * database.
 * @throws DbError only for database failures (DATABASE_UNAVAILABLE, QUERY_TIMEOUT, ...).
 * @example const auth = await validate(cookieToken); if (!auth) return c.text("Unauthorized", 401);
 */
export const validate = defineService(
  { name: "sessions.validate", table: "sessions", arity: 1 },
  async (
    { logger, options }: Call<SessionServiceOptions>,
    token: string,
  ): Promise<{ session: PublicSession; user: SessionUser } | null> => {
    if (!isWellFormedSecret(token)) return null;
    const row =
      options.tx === undefined && options.config === undefined
        ? await validateCoalesced(token)
        : await (await readMany([token], configFor(options), options.tx))[0];
    if (!row) return null;
    const session = pick<PublicSession>(row, sessionKeys, "s.");
    if (row.refreshed) logger.debug({ sessionId: session.id }, "session extended");
    return { session, user: pick<SessionUser>(row, userKeys, "u.") };
  },
);

/**
 * Replaces a live session's token with a new one (after sign-in elevation, privilege change, ...). The old
 * token stops working at once; of two concurrent rotations with the same token exactly one succeeds.
 * @throws DbError TOKEN_INVALID when the token is malformed, unknown, revoked, expired or its user deleted.
 * @example const { token } = await rotate(oldToken); setCookie(c, "session", token);
 */
export const rotate = defineService(
  { name: "sessions.rotate", table: "sessions", arity: 1 },
  async (
    { logger, options }: Call<SessionServiceOptions>,
    token: string,
  ): Promise<{ session: PublicSession; token: string }> => {
    if (!isWellFormedSecret(token)) throw tokenInvalid();
    const times = timesFor(configFor(options));
    const next = generateSecret();
    const handle = options.tx ?? db;
    // One conditional UPDATE keyed by the old hash: a concurrent rotation that committed first changed
    // token_hash, so PostgreSQL's re-check of the WHERE clause finds no row for the loser.
    const rows = await withMetrics("update", "sessions", () =>
      handle
        .update(sessions)
        .set({
          tokenHash: sha256(next),
          lastAccessedAt: times.at,
          expiresAt: sql`least(${times.idleExpiry}::timestamptz, ${sessions.createdAt} + make_interval(secs => ${times.absoluteSeconds}))`,
        })
        .where(
          and(
            eq(sessions.tokenHash, sha256(token)),
            eq(sessions.status, "active"),
            gt(sessions.expiresAt, times.at),
            gt(sessions.createdAt, times.absoluteCutoff),
            sql`EXISTS (SELECT 1 FROM ${users} WHERE ${users.id} = ${sessions.userId} AND ${users.deletedAt} IS NULL)`,
          ),
        )
        .returning(publicSessionColumns),
    );
    const session = rows[0];
    if (!session) throw tokenInvalid();
    logger.audit({ sessionId: session.id, userId: session.userId }, "session token rotated");
    return { session, token: next };
  },
);

function tokenInvalid(): DbError<"TOKEN_INVALID"> {
  return new DbError("TOKEN_INVALID", "The session token is invalid or expired");
}

/** The options of revoke(): those of every SessionsService function, plus the owner to check. */
export interface RevokeSessionOptions extends SessionServiceOptions {
  /**
   * Revoke the session only if it belongs to this user: another user's session id answers NOT_FOUND, like
   * an unknown one, and is left untouched. Checked in the UPDATE's WHERE, so it is one statement.
   */
  userId?: string | undefined;
}

/**
 * Revokes one session (sign-out). Idempotent: revoking a revoked session returns it unchanged.
 * Its expires_at is pulled back to now, so cleanupExpired() can remove it through the expires_at index.
 * With `options.userId`, only that user's session is revoked ("sign out this device" from a device list).
 * @throws DbError VALIDATION_FAILED (session id or userId not a uuid), NOT_FOUND (no such session, or not
 *   the given user's).
 * @example await revoke(sessionIdFromUrl, log, { userId: currentUser.id });
 */
export const revoke = defineService(
  {
    name: "sessions.revoke",
    table: "sessions",
    arity: 1,
    logFields: ([sessionId], options) => ({ sessionId, userId: options.userId }),
  },
  async ({ logger, options }: Call<RevokeSessionOptions>, sessionId: string): Promise<PublicSession> => {
    const id = validateInput(uuid, sessionId);
    const userId = validateInput(uuid.optional(), options.userId);
    const at = now();
    const handle = options.tx ?? db;
    // By primary key; the owner is one more condition on the same row, so someone else's session is simply
    // not matched (no read-then-write, no way to tell it apart from an unknown id).
    const rows = await withMetrics("update", "sessions", () =>
      handle
        .update(sessions)
        .set({
          status: "revoked",
          revokedAt: sql`coalesce(${sessions.revokedAt}, ${at}::timestamptz)`,
          expiresAt: sql`least(${sessions.expiresAt}, ${at}::timestamptz)`,
        })
        .where(and(eq(sessions.id, id), userId === undefined ? undefined : eq(sessions.userId, userId)))
        .returning(publicSessionColumns),
    );
    const session = rows[0];
    if (!session) throw new DbError("NOT_FOUND", "Session not found", { table: "sessions" });
    logger.audit({ sessionId: session.id, userId: session.userId }, "session revoked");
    return session;
  },
);

/**
 * Revokes every live session of a user ("sign out everywhere"), optionally keeping the current one.
 * Returns how many were revoked.
 * @throws DbError VALIDATION_FAILED (not a uuid).
 * @example await revokeAllForUser({ userId, except: currentSession.id });
 */
export const revokeAllForUser = defineService(
  {
    name: "sessions.revokeAllForUser",
    table: "sessions",
    arity: 1,
    logFields: ([payload]) => ({ userId: payload?.userId }),
  },
  async (
    { logger, options }: Call<SessionServiceOptions>,
    payload: { userId: string; except?: string | undefined },
  ): Promise<number> => {
    const input = validateInput(revokeAllInput, payload);
    const at = now();
    const handle = options.tx ?? db;
    // sessions_user_id_idx finds the user's rows; one UPDATE, so a session created meanwhile is either
    // revoked or was not yet visible (never half-handled).
    const rows = await withMetrics("update", "sessions", () =>
      handle
        .update(sessions)
        .set({
          status: "revoked",
          revokedAt: at,
          expiresAt: sql`least(${sessions.expiresAt}, ${at}::timestamptz)`,
        })
        .where(
          and(
            eq(sessions.userId, input.userId),
            eq(sessions.status, "active"),
            input.except === undefined ? undefined : ne(sessions.id, input.except),
          ),
        )
        .returning({ id: sessions.id }),
    );
    logger.audit(
      { userId: input.userId, exceptSessionId: input.except, revoked: rows.length },
      "user sessions revoked",
    );
    return rows.length;
  },
);

/**
 * The user's live sessions (active, not expired), newest first, for a "your devices" page.
 * @throws DbError VALIDATION_FAILED (not a uuid).
 * @example const devices = await listForUser(user.id);
 */
export const listForUser = defineService(
  { name: "sessions.listForUser", table: "sessions", arity: 1, logFields: ([userId]) => ({ userId }) },
  async ({ options }: Call<SessionServiceOptions>, userId: string): Promise<PublicSession[]> => {
    const id = validateInput(uuid, userId);
    const times = timesFor(configFor(options));
    const handle = options.tx ?? db;
    // sessions_user_id_idx; the few rows per user are filtered and sorted in memory.
    return await withMetrics("select", "sessions", () =>
      handle
        .select(publicSessionColumns)
        .from(sessions)
        .where(
          and(
            eq(sessions.userId, id),
            eq(sessions.status, "active"),
            gt(sessions.expiresAt, times.at),
            gt(sessions.createdAt, times.absoluteCutoff),
          ),
        )
        .orderBy(desc(sessions.createdAt), desc(sessions.id)),
    );
  },
);

/**
 * Deletes expired sessions (revoked ones included: revoking pulls expires_at back to now) in batches, and
 * returns how many it deleted. Safe to run from several processes at once: each batch skips rows another
 * process has locked, and every row is deleted exactly once.
 * @throws DbError VALIDATION_FAILED (bad batch size).
 * @example const deleted = await cleanupExpired({ batchSize: 1000 });
 */
export const cleanupExpired = defineService(
  { name: "sessions.cleanupExpired", table: "sessions", arity: 1 },
  async (
    { logger, options }: Call<SessionServiceOptions>,
    payload: { batchSize?: number | undefined; maxBatches?: number | undefined } = {},
  ): Promise<number> => {
    const input = validateInput(cleanupInput, payload);
    const at = now();
    const handle = options.tx ?? db;
    // The inner SELECT walks sessions_expires_at_idx. Sessions past the absolute lifetime always have
    // expires_at <= created_at + absolute, so this one index condition finds them too.
    const total = await deleteInBatches(input.batchSize, input.maxBatches, async () => {
      const result = await withMetrics("delete", "sessions", () =>
        handle.execute(sql`
          DELETE FROM sessions
          WHERE id IN (
            SELECT id FROM sessions
            WHERE expires_at <= ${at}::timestamptz
            LIMIT ${input.batchSize}
            FOR UPDATE SKIP LOCKED
          )`),
      );
      return result.rowCount ?? 0;
    });
    if (total > 0) logger.audit({ deleted: total }, "expired sessions deleted");
    return total;
  },
);
