// Sessions, lifecycle: rotating a session's token, revoking one or all of a user's sessions, listing the live
// ones, and deleting the expired.
import { and, desc, eq, gt, ne, sql } from "drizzle-orm";
import { z } from "zod";
import { now } from "../../clock.ts";
import { generateSecret, isWellFormedSecret, sha256 } from "../../crypto/secrets.ts";
import { DbError } from "../../errors.ts";
import { withMetrics } from "../../metrics.ts";
import { sessions } from "../../schema/sessions.ts";
import { users } from "../../schema/users.ts";
import { defineStatement, param, selectColumns } from "../../statements.ts";
import { type AuditEventInput, type EventParams, eventParams, insertEvent } from "../audit.ts";
import { deleteInBatches, idSchema, notFound, validate as validateInput } from "../common.ts";
import { type Call, defineService } from "../define.ts";
import { configFor, type SessionServiceOptions, timesFor } from "./config.ts";
import { sessionsChanged } from "./feed.ts";
import { type PublicSession, publicSessionColumns } from "./shared.ts";

// ---------------------------------------------------------------------------------------------------------
// Input

const uuid = idSchema;
const revokeAllInput = z.strictObject({ userId: uuid, except: uuid.optional() });
const cleanupInput = z.strictObject({
  batchSize: z.number().int().min(1).max(50_000).default(1000),
  /** Upper bound on the loop: at most batchSize * maxBatches rows per call. */
  maxBatches: z.number().int().min(1).max(100_000).default(1000),
});

// ---------------------------------------------------------------------------------------------------------
// Service

/**
 * Replaces a live session's token with a new one (after sign-in elevation, privilege change, ...). The old
 * token stops working at once; of two concurrent rotations with the same token exactly one succeeds.
 * @throws DbError TOKEN_INVALID when the token is malformed, unknown, revoked, expired or its user deleted.
 * @example const { token } = await rotate(oldToken); setCookie(c, "session", token);
 */
export const rotate = defineService(
  { name: "sessions.rotate", table: "sessions", arity: 1 },
  async (
    { logger, options, handle }: Call<SessionServiceOptions>,
    token: string,
  ): Promise<{ session: PublicSession; token: string }> => {
    if (!isWellFormedSecret(token)) throw tokenInvalid();
    const times = timesFor(configFor(options));
    const next = generateSecret();
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
  /**
   * Revoke only a live session (active, before its expiry): an ended one answers NOT_FOUND, so a caller that
   * records the revocation records each session once.
   */
  activeOnly?: boolean | undefined;
  /**
   * An audit event to record with the revocation, in the same statement (one round trip, no transaction):
   * written only if a session was revoked. Pass `tx` as well to run it in your transaction.
   */
  audit?: AuditEventInput | undefined;
}

interface RevokeParams extends EventParams {
  id: string;
  at: Date;
  userId: string | null;
  activeOnly: boolean;
}

/** The revocation with its audit event: the event is inserted from the revoked row, so only if there is one. */
const revokeAudited = defineStatement<PublicSession, RevokeParams>(
  "sessions_revoke_audited",
  sql`WITH s AS (
      UPDATE sessions SET status = 'revoked',
        revoked_at = coalesce(revoked_at, ${param("at")}::timestamptz),
        expires_at = least(expires_at, ${param("at")}::timestamptz)
      WHERE id = ${param("id")}::uuid
        AND (${param("userId")}::uuid IS NULL OR user_id = ${param("userId")}::uuid)
        AND (NOT ${param("activeOnly")}::boolean OR (status = 'active' AND expires_at > ${param("at")}::timestamptz))
      RETURNING *
    ), e AS (${insertEvent(sql`s`, sql`s.user_id`)})
    SELECT ${selectColumns("s", publicSessionColumns)} FROM s`,
);

/**
 * Revokes one session (sign-out). Idempotent: revoking a revoked session returns it unchanged.
 * Its expires_at is pulled back to now, so cleanupExpired() can remove it through the expires_at index.
 * With `options.userId`, only that user's session is revoked ("sign out this device" from a device list).
 * With `options.audit`, the event is recorded in the same statement, only if a session was revoked, about
 * that session's user (whatever subject the event names).
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
  async (
    { logger, options, handle }: Call<RevokeSessionOptions>,
    sessionId: string,
  ): Promise<PublicSession> => {
    const id = validateInput(uuid, sessionId);
    const userId = validateInput(uuid.optional(), options.userId);
    const at = now();
    if (options.audit) {
      const { params } = eventParams(options.audit);
      const { rows } = await withMetrics("update", "sessions", () =>
        revokeAudited.run(options.tx, {
          ...params,
          id,
          at,
          userId: userId ?? null,
          activeOnly: options.activeOnly === true,
        }),
      );
      const session = rows[0];
      if (!session) throw notFound("sessions");
      sessionsChanged(session.id, session.userId);
      logger.audit({ sessionId: session.id, userId: session.userId }, "session revoked");
      return session;
    }
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
        .where(
          and(
            eq(sessions.id, id),
            userId === undefined ? undefined : eq(sessions.userId, userId),
            options.activeOnly ? and(eq(sessions.status, "active"), gt(sessions.expiresAt, at)) : undefined,
          ),
        )
        .returning(publicSessionColumns),
    );
    const session = rows[0];
    if (!session) throw notFound("sessions");
    sessionsChanged(session.id, session.userId);
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
    { logger, handle }: Call<SessionServiceOptions>,
    payload: { userId: string; except?: string | undefined },
  ): Promise<number> => {
    const input = validateInput(revokeAllInput, payload);
    const at = now();
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
    for (const row of rows) sessionsChanged(row.id, input.userId);
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
  async ({ options, handle }: Call<SessionServiceOptions>, userId: string): Promise<PublicSession[]> => {
    const id = validateInput(uuid, userId);
    const times = timesFor(configFor(options));
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
    { logger, handle }: Call<SessionServiceOptions>,
    payload: { batchSize?: number | undefined; maxBatches?: number | undefined } = {},
  ): Promise<number> => {
    const input = validateInput(cleanupInput, payload);
    const at = now();
    // The inner SELECT walks sessions_expires_at_idx. Sessions past the absolute lifetime always have
    // expires_at <= created_at + absolute, so this one index condition finds them too.
    const cleanup = { table: "sessions", ...input, logger, message: "expired sessions deleted" };
    return await deleteInBatches(cleanup, async () => {
      const result = await handle.execute(sql`
          DELETE FROM sessions
          WHERE id IN (
            SELECT id FROM sessions
            WHERE expires_at <= ${at}::timestamptz
            LIMIT ${input.batchSize}
            FOR UPDATE SKIP LOCKED
          )`);
      return result.rowCount ?? 0;
    });
  },
);
