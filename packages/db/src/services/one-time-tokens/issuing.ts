// One-time tokens, issuing: a new link token (retiring the live secrets it supersedes, under a lock on its
// target and purpose), retiring a user's tokens, and deleting the dead ones. Codes are issued the same way
// (codes.ts calls issue()).
import { and, eq, inArray, isNull, lte, or, type SQL, sql } from "drizzle-orm";
import { uuidv7 } from "uuidv7";
import { z } from "zod";
import { now } from "../../clock.ts";
import { statementTransaction } from "../../connection.ts";
import { preparedHash } from "../../crypto/passwords.ts";
import { generateSecret, sha256 } from "../../crypto/secrets.ts";
import { DbError } from "../../errors.ts";
import { advisoryLockKey } from "../../locks.ts";
import { withMetrics } from "../../metrics.ts";
import { type OneTimeTokenPurpose, oneTimeTokens } from "../../schema/index.ts";
import { defineStatement, param } from "../../statements.ts";
import { deleteInBatches, notFound, type ServiceOptions, validate } from "../common.ts";
import { type Call, defineService } from "../define.ts";
import {
  type CreateTokenInput,
  DEFAULT_TOKEN_TTL_MS,
  MAX_TOKEN_TTL_MS,
  type OneTimeTokenRecord,
  purposeSchema,
  recordList,
  sentToSchema,
  TABLE,
  toRecord,
  userIdSchema,
} from "./shared.ts";

const createSchema = z.strictObject({
  userId: userIdSchema.nullish(),
  purpose: purposeSchema,
  sentTo: sentToSchema,
  ttlMs: z.number().int().min(1000).max(MAX_TOKEN_TTL_MS).optional(),
});

const batchSchema = z.strictObject({
  batchSize: z.number().int().min(1).max(10_000).default(1000),
  maxBatches: z.number().int().min(1).max(100_000).default(1000),
});

export interface CleanupInput {
  /** Rows deleted per statement. Default 1000. */
  batchSize?: number | undefined;
  /** Upper bound on statements per call, so one call cannot run forever. Default 1000. */
  maxBatches?: number | undefined;
}

const lockStatement = defineStatement<Record<string, unknown>, { key: string }>(
  "one_time_tokens_lock",
  sql`SELECT pg_advisory_xact_lock(${param("key")}::bigint)`,
);

/** The row a new secret becomes. */
interface IssuedRow {
  id: string;
  userId: string | null;
  purpose: OneTimeTokenPurpose;
  sentTo: string;
  tokenHash: Buffer;
  expiresAt: Date;
  passwordHash: string | null;
  /** JSON text of a RegistrationProfile, or null. */
  profile: string | null;
}

interface IssueParams extends IssuedRow, Record<string, unknown> {
  at: Date;
  /** Retire the target's older live secrets of the purpose (false only for sign-up registrations). */
  retire: boolean;
}

/**
 * Retires the live secrets a new one supersedes and inserts it, in one statement run under the issuing lock.
 * `owner` yields the user id the new row belongs to, or no row (then nothing is written).
 */
function issueStatement(key: string, owner: SQL, superseded: SQL) {
  return defineStatement<Record<string, unknown>, IssueParams>(
    key,
    sql`
      WITH owner AS (${owner}),
      retired AS (
        UPDATE one_time_tokens SET deleted_at = ${param("at")}::timestamptz
        WHERE ${param("retire")}::boolean AND ${superseded} AND purpose = ${param("purpose")}::one_time_token_purpose
          AND used_at IS NULL AND deleted_at IS NULL AND EXISTS (SELECT 1 FROM owner)
        RETURNING id
      ),
      inserted AS (
        INSERT INTO one_time_tokens (id, user_id, purpose, token_hash, sent_to, expires_at, password_hash,
                                     profile)
        SELECT ${param("id")}::uuid, owner.user_id, ${param("purpose")}::one_time_token_purpose,
               ${param("tokenHash")}::bytea, ${param("sentTo")}, ${param("expiresAt")}::timestamptz,
               ${param("passwordHash")}::text, ${param("profile")}::jsonb
        FROM owner
        RETURNING ${recordList}
      )
      SELECT inserted.*, (SELECT count(*) FROM retired)::int AS invalidated FROM inserted`,
  );
}

// FOR SHARE waits for a concurrent soft delete of the user and then sees it, so a token can't be issued to a
// user who is being deleted (softDelete retires tokens in its own transaction).
const issueForUser = issueStatement(
  "one_time_tokens_issue_user",
  sql`SELECT id AS user_id FROM users WHERE id = ${param("userId")}::uuid AND deleted_at IS NULL FOR SHARE`,
  sql`user_id = ${param("userId")}::uuid`,
);
const issueForAddress = issueStatement(
  "one_time_tokens_issue_address",
  sql`SELECT NULL::uuid AS user_id`,
  sql`user_id IS NULL AND sent_to = ${param("sentTo")}`,
);

/**
 * Inserts one token row in a transaction after retiring the older live ones for the same target. A
 * transaction-scoped advisory lock on (target, purpose) serializes concurrent issuers, so at most one secret
 * per target and purpose is ever live.
 */
export async function issue(
  row: IssuedRow,
  at: Date,
  options: ServiceOptions,
): Promise<{ record: OneTimeTokenRecord; invalidated: number }> {
  const target = row.userId === null ? `to:${row.sentTo}` : `user:${row.userId}`;
  const lockKey = advisoryLockKey(`one_time_tokens:${target}:${row.purpose}`);
  return await statementTransaction(
    async (tx) => {
      // The lock comes first, in its own statement: the issuing statement then starts with a snapshot that
      // includes whatever a concurrent issuer committed before releasing it, and retires that too.
      await withMetrics("lock", TABLE, () => lockStatement.run(tx, { key: String(lockKey) }));
      const statement = row.userId === null ? issueForAddress : issueForUser;
      const retire = row.passwordHash === null;
      const result = await withMetrics("insert", TABLE, () => statement.run(tx, { ...row, at, retire }));
      const inserted = result.rows[0];
      if (!inserted) throw notFound("users");
      const { invalidated, ...record } = inserted;
      return { record: toRecord(record), invalidated: Number(invalidated) };
    },
    { tx: options.tx },
  );
}

/**
 * Issues a link token (256 bits) for a purpose, retiring older live tokens and codes of the same target.
 * The raw token is returned once and never stored; only its SHA-256 is.
 * @throws DbError VALIDATION_FAILED (bad input), NOT_FOUND (unknown or deleted userId).
 * @example const { token, record } = await create({ userId, purpose: "password_reset", sentTo: email });
 */
export const create = defineService(
  {
    name: "oneTimeTokens.create",
    table: "one_time_tokens",
    arity: 1,
    logFields: ([input]) => ({ userId: input?.userId }),
  },
  async (
    { logger, options }: Call<ServiceOptions>,
    input: CreateTokenInput,
  ): Promise<{ token: string; record: OneTimeTokenRecord }> => {
    const { password, profile, ...rest } = input ?? {};
    const parsed = validate(createSchema, rest);
    if ((password !== undefined || profile !== undefined) && parsed.purpose !== "email_verification") {
      throw new DbError(
        "VALIDATION_FAILED",
        "Invalid input: password: only an email verification link carries one",
        {
          details: { password: "only an email verification link carries one" },
        },
      );
    }
    const at = now();
    const token = generateSecret();
    const { record, invalidated } = await issue(
      {
        id: uuidv7(),
        userId: parsed.userId ?? null,
        purpose: parsed.purpose,
        sentTo: parsed.sentTo,
        tokenHash: sha256(token),
        expiresAt: new Date(at.getTime() + (parsed.ttlMs ?? DEFAULT_TOKEN_TTL_MS[parsed.purpose])),
        passwordHash: password === undefined ? null : preparedHash(password),
        profile:
          profile === undefined
            ? null
            : JSON.stringify({ firstName: profile.firstName ?? null, lastName: profile.lastName ?? null }),
      },
      at,
      options,
    );
    logger.audit(
      { tokenId: record.id, userId: record.userId, purpose: record.purpose, invalidated },
      "one-time token issued",
    );
    return { token, record };
  },
);

/**
 * Retires a user's live tokens and codes (all purposes, or one), e.g. after a password change. Returns how
 * many were retired.
 * @throws DbError VALIDATION_FAILED (bad userId or purpose).
 * @example await invalidateForUser(userId, { purpose: "password_reset" }, logger, { tx });
 */
export const invalidateForUser = defineService(
  {
    name: "oneTimeTokens.invalidateForUser",
    table: "one_time_tokens",
    arity: 2,
    logFields: ([userId]) => ({ userId }),
  },
  async (
    { logger, handle }: Call<ServiceOptions>,
    userId: string,
    filter: { purpose?: OneTimeTokenPurpose | undefined } = {},
  ): Promise<number> => {
    const id = validate(userIdSchema, userId);
    const purpose = validate(purposeSchema.optional(), filter?.purpose);
    const at = now();
    const retired = await withMetrics("invalidate", TABLE, () =>
      handle
        .update(oneTimeTokens)
        .set({ deletedAt: at })
        .where(
          and(
            eq(oneTimeTokens.userId, id),
            purpose === undefined ? undefined : eq(oneTimeTokens.purpose, purpose),
            isNull(oneTimeTokens.usedAt),
            isNull(oneTimeTokens.deletedAt),
          ),
        )
        .returning({ id: oneTimeTokens.id }),
    );
    if (retired.length > 0) {
      logger.audit({ userId: id, purpose, count: retired.length }, "one-time tokens invalidated");
    }
    return retired.length;
  },
);

/**
 * Hard-deletes tokens that are expired, used or retired, in batches; safe to run from several processes at
 * once (each skips the rows another is deleting). Returns how many rows this call deleted.
 * @throws DbError VALIDATION_FAILED (bad batch sizes).
 * @example const deleted = await cleanupExpired({ batchSize: 500 });
 */
export const cleanupExpired = defineService(
  { name: "oneTimeTokens.cleanupExpired", table: "one_time_tokens", arity: 1 },
  async ({ logger, handle }: Call<ServiceOptions>, input: CleanupInput = {}): Promise<number> => {
    const { batchSize, maxBatches } = validate(batchSchema, input);
    const at = now();
    // The used/retired arms have no index: this is a background job, a sequential scan is acceptable.
    const cleanup = {
      table: TABLE,
      batchSize,
      maxBatches,
      logger,
      message: "expired one-time tokens deleted",
    };
    return await deleteInBatches(cleanup, async () => {
      const doomed = handle
        .select({ id: oneTimeTokens.id })
        .from(oneTimeTokens)
        .where(
          or(
            lte(oneTimeTokens.expiresAt, at),
            lte(oneTimeTokens.usedAt, at),
            lte(oneTimeTokens.deletedAt, at),
          ),
        )
        .limit(batchSize)
        .for("update", { skipLocked: true });
      const result = await handle.delete(oneTimeTokens).where(inArray(oneTimeTokens.id, doomed));
      return result.rowCount ?? 0;
    });
  },
);
