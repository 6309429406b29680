// Sessions, creation: a new session for a user, with its token, and the per-user cap enforced in the same
// transaction.
import { isIP } from "node:net";
import { sql } from "drizzle-orm";
import { uuidv7 } from "uuidv7";
import { z } from "zod";
import { statementTransaction } from "../../connection.ts";
import { generateSecret, sha256 } from "../../crypto/secrets.ts";
import { isDbError, toDbError } from "../../errors.ts";
import { withMetrics } from "../../metrics.ts";
import { defineStatement, param, selectColumns } from "../../statements.ts";
import { idSchema, noNul, notFound, validate as validateInput } from "../common.ts";
import { type Call, defineService } from "../define.ts";
import { configFor, type SessionServiceOptions, timesFor } from "./config.ts";
import { sessionsChanged } from "./feed.ts";
import { type PublicSession, publicSessionColumns } from "./shared.ts";

// ---------------------------------------------------------------------------------------------------------
// Input

/** Longer user agents are stored cut to this many characters. */
export const USER_AGENT_MAX_STORED = 512;
/** Longer user agents are rejected: no browser sends one, so it is junk or an attack. */
export const USER_AGENT_MAX_ACCEPTED = 1024;
const METADATA_MAX_BYTES = 8192;

const uuid = idSchema;
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
        if (locked.rows.length === 0) throw notFound("users");
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
              if (isDbError(toDbError(error), "FOREIGN_KEY_VIOLATION")) throw notFound("users", error);
              throw error;
            }),
        );
        return result.rows[0];
      },
      { tx: options.tx },
    );
    if (!row) throw notFound("users");
    const { revokedForCap, ...session } = row;
    for (const id of revokedForCap) sessionsChanged(id, session.userId);
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
