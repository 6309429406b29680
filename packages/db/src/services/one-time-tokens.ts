// One-time tokens: links (256-bit secrets) and short numeric codes sent to an address, used at most once.
// Only a SHA-256 digest is stored. "Use once" is always one conditional UPDATE ... RETURNING, never a read
// followed by a write, so concurrent callers cannot both win (see /work/shared/pitfalls.md, "Auth semantics").
import { createHmac } from "node:crypto";
import { and, desc, eq, getTableColumns, gt, inArray, isNull, lt, lte, or, type SQL, sql } from "drizzle-orm";
import { uuidv7 } from "uuidv7";
import { z } from "zod";
import { now } from "../clock.ts";
import { type DatabaseOrTransaction, db, statementTransaction } from "../connection.ts";
import { type PreparedPassword, preparedFromHash, preparedHash } from "../crypto/passwords.ts";
import {
  constantTimeEqual,
  generateNumericCode,
  generateSecret,
  isWellFormedSecret,
  sha256,
} from "../crypto/secrets.ts";
import { DbError } from "../errors.ts";
import { advisoryLockKey } from "../locks.ts";
import { withMetrics } from "../metrics.ts";
import {
  type OneTimeToken,
  type OneTimeTokenPurpose,
  oneTimeTokenPurpose,
  oneTimeTokens,
} from "../schema/index.ts";
import { defineStatement, param, selectColumns } from "../statements.ts";
import { deleteInBatches, type ServiceOptions, uuidSchema, validate } from "./common.ts";
import { type Call, type CallTail, defineService } from "./define.ts";

const TABLE = "one_time_tokens";

/** A token row as callers see it: everything but the digest and what a sign-up's link carries. */
export type OneTimeTokenRecord = Omit<OneTimeToken, "tokenHash" | "passwordHash" | "profile">;

/** The names a sign-up gave, carried by its verification link. */
export interface RegistrationProfile {
  firstName?: string | null | undefined;
  lastName?: string | null | undefined;
}

/** What a sign-up's verification link carries besides its record (see UsersService.useEmailLink). */
export interface LinkRegistration {
  record: OneTimeTokenRecord;
  /** The password the link confirms, opaque; null when it carries none. */
  password: PreparedPassword | null;
  profile: RegistrationProfile | null;
}

const {
  tokenHash: _tokenHash,
  passwordHash: _passwordHash,
  profile: _profile,
  ...recordColumns
} = getTableColumns(oneTimeTokens);

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/** How long a link token lives when the caller does not say. */
export const DEFAULT_TOKEN_TTL_MS: Readonly<Record<OneTimeTokenPurpose, number>> = {
  email_verification: DAY,
  password_reset: HOUR,
  magic_link: 15 * MINUTE,
  email_change: HOUR,
  phone_verification: 10 * MINUTE,
  invite: 7 * DAY,
};
/** The longest lifetime a link token may be given. */
export const MAX_TOKEN_TTL_MS = 30 * DAY;
/** How long a numeric code lives when the caller does not say. */
export const DEFAULT_CODE_TTL_MS = 10 * MINUTE;
/** The longest lifetime a numeric code may be given: short codes are guessable, so keep the window small. */
export const MAX_CODE_TTL_MS = HOUR;
/** Failed guesses after which a code is dead, unless `maxAttempts` says otherwise. */
export const DEFAULT_MAX_ATTEMPTS = 5;

const purposeSchema = z.enum(oneTimeTokenPurpose.enumValues);
// Addresses are compared exactly by verifyCode: normalize them the same way on the way in and out.
const sentToSchema = z.string().trim().toLowerCase().min(1).max(320);
const userIdSchema = uuidSchema;

const createSchema = z.strictObject({
  userId: userIdSchema.nullish(),
  purpose: purposeSchema,
  sentTo: sentToSchema,
  ttlMs: z.number().int().min(1000).max(MAX_TOKEN_TTL_MS).optional(),
});

const createCodeSchema = z.strictObject({
  userId: userIdSchema.nullish(),
  purpose: purposeSchema,
  sentTo: sentToSchema,
  ttlMs: z.number().int().min(1000).max(MAX_CODE_TTL_MS).optional(),
  digits: z.number().int().min(4).max(10).default(6),
});

const verifyCodeSchema = z.strictObject({
  sentTo: sentToSchema,
  purpose: purposeSchema,
  code: z.string(),
});

const maxAttemptsSchema = z.number().int().min(1).max(100);
const batchSchema = z.strictObject({
  batchSize: z.number().int().min(1).max(10_000).default(1000),
  maxBatches: z.number().int().min(1).max(100_000).default(1000),
});

export interface CreateTokenInput {
  /** Null or absent for an address with no user yet (invites, sign-up by link). */
  userId?: string | null | undefined;
  purpose: OneTimeTokenPurpose;
  /** The email or phone number the secret is sent to (stored trimmed and lower-cased). */
  sentTo: string;
  /** Lifetime; defaults per purpose (DEFAULT_TOKEN_TTL_MS), at most MAX_TOKEN_TTL_MS. */
  ttlMs?: number | undefined;
  /**
   * An email verification link only: the password this link confirms (a sign-up's choice). It becomes the
   * user's password when the link is used, with that password, as the first proof of the address
   * (UsersService.useEmailLink). Such a link does not retire older ones: each sign-up's link stays bound to
   * its own password, so someone signing up an address again cannot kill its owner's link.
   */
  password?: PreparedPassword | undefined;
  /** An email verification link only: the names the sign-up gave, applied with its password. */
  profile?: RegistrationProfile | undefined;
}

export interface CreateCodeInput extends Omit<CreateTokenInput, "ttlMs" | "password" | "profile"> {
  /** Lifetime; default DEFAULT_CODE_TTL_MS (10 minutes), at most MAX_CODE_TTL_MS. */
  ttlMs?: number | undefined;
  /** 4 to 10; default 6. */
  digits?: number | undefined;
}

export interface VerifyCodeOptions extends ServiceOptions {
  /** Failed guesses after which the code is dead. Default 5. */
  maxAttempts?: number | undefined;
}

export interface CleanupInput {
  /** Rows deleted per statement. Default 1000. */
  batchSize?: number | undefined;
  /** Upper bound on statements per call, so one call cannot run forever. Default 1000. */
  maxBatches?: number | undefined;
}

/** The token has no user, or its user is not soft-deleted. */
const ownerIsLive = sql`(${oneTimeTokens.userId} IS NULL OR EXISTS (SELECT 1 FROM users u WHERE u.id = ${oneTimeTokens.userId} AND u.deleted_at IS NULL))`;

/**
 * A link token that can be used now: this secret and purpose, not used, not retired, not expired
 * (`expires_at > now` means still valid), and its user (if any) not deleted. Binds tokenHash, purpose, at.
 */
const liveLinkToken = sql`token_hash = ${param("tokenHash")}::bytea
  AND purpose = ${param("purpose")}::one_time_token_purpose
  AND used_at IS NULL AND deleted_at IS NULL
  AND expires_at > ${param("at")}::timestamptz
  AND ${ownerIsLive}`;

/**
 * Wrong passwords after which a sign-up's verification link is dead (see reserveLinkAttempt): the link is a
 * bearer of a password guess, and a forwarded or leaked link must not allow unlimited ones.
 */
export const LINK_MAX_ATTEMPTS = 5;

/** A live link with guesses left (peek, reserve). */
const usableLinkToken = sql`${liveLinkToken} AND attempts < ${sql.raw(String(LINK_MAX_ATTEMPTS))}`;

interface LinkTokenParams extends Record<string, unknown> {
  tokenHash: Buffer;
  purpose: OneTimeTokenPurpose;
  at: Date;
}

const recordList = selectColumns(TABLE, recordColumns);

/** node-postgres reads bigint as text; the record's attempts is a number. */
function toRecord(row: Record<string, unknown>): OneTimeTokenRecord {
  row.attempts = Number(row.attempts);
  return row as OneTimeTokenRecord;
}

// One conditional UPDATE ... RETURNING: of concurrent callers, the first sets used_at; the others wait on its
// row lock, re-check `used_at IS NULL` and get no row. The registration's password hash comes back beside the
// record for consumeLink(); consume() drops it.
const consumeStatement = defineStatement<Record<string, unknown>, LinkTokenParams>(
  "one_time_tokens_consume",
  // The last guess a link allows may be the right one: its reservation made attempts = LINK_MAX_ATTEMPTS.
  sql`UPDATE one_time_tokens SET used_at = ${param("at")}::timestamptz
      WHERE ${liveLinkToken} AND attempts <= ${sql.raw(String(LINK_MAX_ATTEMPTS))}
      RETURNING ${recordList}, password_hash AS "registrationHash", profile AS "registrationProfile"`,
);

// One guess of a link's password, reserved before the guess is checked (as verifyCode does for codes): of
// parallel guesses at most LINK_MAX_ATTEMPTS ever get an argon2 check, and a wrong guess cannot be given back.
const reserveStatement = defineStatement<{ id: string }, LinkTokenParams>(
  "one_time_tokens_reserve_attempt",
  sql`UPDATE one_time_tokens SET attempts = attempts + 1 WHERE ${usableLinkToken} RETURNING id`,
);

const peekStatement = defineStatement<Record<string, unknown>, LinkTokenParams>(
  "one_time_tokens_peek",
  sql`SELECT ${recordList}, password_hash AS "registrationHash", profile AS "registrationProfile"
      FROM one_time_tokens WHERE ${usableLinkToken} LIMIT 1`,
);

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
async function issue(
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
      if (!inserted) throw new DbError("NOT_FOUND", "No such user", { table: "users" });
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
 * Issues a short numeric code, retiring older live codes and tokens of the same target. What is stored is
 * HMAC-SHA-256(`${rowId}:${code}`) under the key of configureOneTimeCodes() / ONE_TIME_CODE_KEY.
 * @throws DbError VALIDATION_FAILED (bad input), NOT_FOUND (unknown or deleted userId), CONFIG_INVALID (no key).
 * @example const { code } = await createCode({ purpose: "phone_verification", sentTo: "+14155550123" });
 */
export const createCode = defineService(
  {
    name: "oneTimeTokens.createCode",
    table: "one_time_tokens",
    arity: 1,
    logFields: ([input]) => ({ userId: input?.userId }),
  },
  async (
    { logger, options }: Call<ServiceOptions>,
    input: CreateCodeInput,
  ): Promise<{ code: string; record: OneTimeTokenRecord }> => {
    const parsed = validate(createCodeSchema, input);
    requireCodeKey();
    const at = now();
    const id = uuidv7();
    const code = generateNumericCode(parsed.digits);
    const { record, invalidated } = await issue(
      {
        id,
        userId: parsed.userId ?? null,
        purpose: parsed.purpose,
        sentTo: parsed.sentTo,
        tokenHash: codeDigest(id, code),
        expiresAt: new Date(at.getTime() + (parsed.ttlMs ?? DEFAULT_CODE_TTL_MS)),
        passwordHash: null,
        profile: null,
      },
      at,
      options,
    );
    logger.audit(
      { tokenId: record.id, userId: record.userId, purpose: record.purpose, invalidated },
      "one-time code issued",
    );
    return { code, record };
  },
);

// ---------------------------------------------------------------------------------------------------------
// The key of numeric codes. A code has 10^4..10^10 values: a plain or salted SHA-256 of it is reversed by
// trying them all in milliseconds by anyone who can read the table (a backup, a replica, a leaked dump). An
// HMAC under a key kept in the application's configuration, never in the database, is not.

/** The shortest ONE_TIME_CODE_KEY accepted, in bytes (UTF-8). */
export const CODE_KEY_MIN_BYTES = 32;
let codeKey: Buffer | undefined;

/**
 * Sets the server-side key numeric codes are stored under (HMAC-SHA-256), or removes it with `null`. Codes
 * issued under another key no longer verify (they live minutes: rotate by changing the key).
 * @throws DbError CONFIG_INVALID for a key shorter than 32 bytes.
 * @example configureOneTimeCodes({ key: process.env.ONE_TIME_CODE_KEY! });
 */
export function configureOneTimeCodes(config: { key: string | Buffer } | null): void {
  if (config === null) {
    codeKey = undefined;
    return;
  }
  const key = typeof config.key === "string" ? Buffer.from(config.key, "utf8") : Buffer.from(config.key);
  if (key.length < CODE_KEY_MIN_BYTES) {
    throw new DbError("CONFIG_INVALID", `ONE_TIME_CODE_KEY must be at least ${CODE_KEY_MIN_BYTES} bytes`, {
      details: { ONE_TIME_CODE_KEY: `must be at least ${CODE_KEY_MIN_BYTES} bytes` },
    });
  }
  codeKey = key;
}

/**
 * Reads ONE_TIME_CODE_KEY from the environment when set; returns whether a key is now configured.
 * @throws DbError CONFIG_INVALID for a key shorter than 32 bytes.
 * @example loadOneTimeCodeKeyFromEnv();
 */
export function loadOneTimeCodeKeyFromEnv(env: Record<string, string | undefined> = process.env): boolean {
  const key = env.ONE_TIME_CODE_KEY;
  if (key) configureOneTimeCodes({ key });
  return codeKey !== undefined;
}

function requireCodeKey(): Buffer {
  if (codeKey === undefined) {
    throw new DbError(
      "CONFIG_INVALID",
      "Numeric codes need a server-side key: set ONE_TIME_CODE_KEY or call configureOneTimeCodes()",
    );
  }
  return codeKey;
}

/** Codes collide and token_hash is unique, so the row's own id is part of what is authenticated. */
function codeDigest(id: string, code: string): Buffer {
  return createHmac("sha256", requireCodeKey()).update(`${id}:${code}`, "utf8").digest();
}

/**
 * Checks a numeric code sent to an address and uses it once. Each guess first reserves one attempt, so
 * parallel guesses cannot exceed maxAttempts in total; after maxAttempts failures the code is dead, even
 * for the right code. Returns the used record, or null (wrong, expired, used, dead or no code).
 * @throws DbError VALIDATION_FAILED (unknown purpose, bad address).
 * @example const record = await verifyCode({ sentTo: "+14155550123", purpose: "phone_verification", code });
 */
export const verifyCode = defineService(
  {
    name: "oneTimeTokens.verifyCode",
    table: "one_time_tokens",
    arity: 1,
    logFields: ([input]) => ({ purpose: input?.purpose }),
  },
  async (
    { logger, options }: Call<VerifyCodeOptions>,
    input: { sentTo: string; purpose: OneTimeTokenPurpose; code: string },
  ): Promise<OneTimeTokenRecord | null> => {
    const parsed = validate(verifyCodeSchema, input);
    requireCodeKey();
    const maxAttempts = validate(maxAttemptsSchema, options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS);
    // Codes are digits only; anything else cannot match and costs no attempt.
    if (!/^[0-9]{4,10}$/.test(parsed.code)) return null;
    const handle = options.tx ?? db;
    const at = now();

    // The newest live row for the address (one_time_tokens_live_sent_to_idx). Its attempts are not
    // filtered here: a burnt code must not let an older one through (issuing retires older ones anyway).
    const newest = db
      .select({ id: oneTimeTokens.id })
      .from(oneTimeTokens)
      .where(
        and(
          eq(oneTimeTokens.sentTo, parsed.sentTo),
          eq(oneTimeTokens.purpose, parsed.purpose),
          isNull(oneTimeTokens.usedAt),
          isNull(oneTimeTokens.deletedAt),
          gt(oneTimeTokens.expiresAt, at),
        ),
      )
      .orderBy(desc(oneTimeTokens.id))
      .limit(1);
    // Reserve an attempt before comparing: one atomic increment guarded by `attempts < max`. Under READ
    // COMMITTED a concurrent guesser waits for the row lock and re-checks the guard, so no more than
    // maxAttempts guesses (parallel or not) are ever compared. The reservation always commits on its own
    // (on the pool, not the caller's `tx`): a caller that rolls back after a wrong guess must not get the
    // attempt back, or the limit would never bite. So the code row must be committed before verifyCode.
    const [reserved] = await withMetrics("reserve_attempt", TABLE, () =>
      db
        .update(oneTimeTokens)
        .set({ attempts: sql`${oneTimeTokens.attempts} + 1` })
        .where(
          and(
            eq(oneTimeTokens.id, sql`(${newest})`),
            isNull(oneTimeTokens.usedAt),
            isNull(oneTimeTokens.deletedAt),
            gt(oneTimeTokens.expiresAt, at),
            lt(oneTimeTokens.attempts, maxAttempts),
            ownerIsLive,
          ),
        )
        .returning({
          id: oneTimeTokens.id,
          tokenHash: oneTimeTokens.tokenHash,
          attempts: oneTimeTokens.attempts,
        }),
    );
    if (!reserved) return null;

    if (!constantTimeEqual(codeDigest(reserved.id, parsed.code), reserved.tokenHash)) {
      logger.audit(
        { tokenId: reserved.id, purpose: parsed.purpose, attempts: reserved.attempts },
        "one-time code rejected",
      );
      return null;
    }
    // The right code: use it once. The conditional UPDATE is the use-once guarantee (a second winner of
    // the comparison finds used_at set and gets no row); the reserved attempt is given back, so `attempts`
    // ends up counting failed guesses only.
    const [used] = await withMetrics("use", TABLE, () =>
      handle
        .update(oneTimeTokens)
        .set({ usedAt: at, attempts: sql`${oneTimeTokens.attempts} - 1` })
        .where(
          and(
            eq(oneTimeTokens.id, reserved.id),
            isNull(oneTimeTokens.usedAt),
            isNull(oneTimeTokens.deletedAt),
            gt(oneTimeTokens.expiresAt, at),
            lte(oneTimeTokens.attempts, maxAttempts),
          ),
        )
        .returning(recordColumns),
    );
    if (!used) return null;
    logger.audit({ tokenId: used.id, userId: used.userId, purpose: used.purpose }, "one-time code used");
    return used;
  },
);

/**
 * Uses a link token exactly once. Returns its record, or null when it is malformed, unknown, expired, used,
 * retired or issued for another purpose. With `{ tx }` the use commits or rolls back with the caller's writes.
 * @throws DbError VALIDATION_FAILED (unknown purpose).
 * @example const record = await consume(token, "password_reset", logger, { tx });
 */
export async function consume(
  token: string,
  purpose: OneTimeTokenPurpose,
  ...rest: CallTail
): Promise<OneTimeTokenRecord | null> {
  return (await consumeLink(token, purpose, ...rest))?.record ?? null;
}

/** The parameters of the link statements, or null for a string that cannot be a secret we issued. */
function linkParams(token: string, purpose: OneTimeTokenPurpose): LinkTokenParams | null {
  return isWellFormedSecret(token) ? { tokenHash: sha256(token), purpose, at: now() } : null;
}

/** A consume or peek row split into the record and what a sign-up's link carries. */
function toRegistration(row: Record<string, unknown>): LinkRegistration {
  const { registrationHash, registrationProfile, ...record } = row;
  return {
    record: toRecord(record),
    password: typeof registrationHash === "string" ? preparedFromHash(registrationHash) : null,
    profile: (registrationProfile as RegistrationProfile | null) ?? null,
  };
}

/**
 * consume(), plus the password and names an email verification link carries (null when none). For
 * UsersService.useEmailLink, which applies them; the hash stays opaque.
 * @throws DbError VALIDATION_FAILED (unknown purpose).
 * @example const used = await consumeLink(token, "email_verification", logger, { tx });
 */
export const consumeLink = defineService(
  {
    name: "oneTimeTokens.consume",
    table: "one_time_tokens",
    arity: 2,
    logFields: ([, purpose]) => ({ purpose }),
  },
  async (
    { logger, options }: Call<ServiceOptions>,
    token: string,
    purpose: OneTimeTokenPurpose,
  ): Promise<LinkRegistration | null> => {
    const params = linkParams(token, validate(purposeSchema, purpose));
    if (!params) return null;
    const result = await withMetrics("consume", TABLE, () => consumeStatement.run(options.tx, params));
    if (!result.rows[0]) return null;
    const used = toRegistration(result.rows[0]);
    logger.audit({ tokenId: used.record.id, userId: used.record.userId, purpose }, "one-time token used");
    return used;
  },
);

/**
 * Says whether a link token is currently usable, without using it (for showing a form before a POST).
 * @throws DbError VALIDATION_FAILED (unknown purpose).
 * @example const record = await peek(token, "invite");
 */
export async function peek(
  token: string,
  purpose: OneTimeTokenPurpose,
  ...rest: CallTail
): Promise<OneTimeTokenRecord | null> {
  return (await peekLink(token, purpose, ...rest))?.record ?? null;
}

/**
 * peek(), plus the password and names an email verification link carries (null when none), without using it.
 * @throws DbError VALIDATION_FAILED (unknown purpose).
 * @example const pending = await peekLink(token, "email_verification");
 */
export const peekLink = defineService(
  {
    name: "oneTimeTokens.peek",
    table: "one_time_tokens",
    arity: 2,
    logFields: ([, purpose]) => ({ purpose }),
  },
  async (
    { options }: Call<ServiceOptions>,
    token: string,
    purpose: OneTimeTokenPurpose,
  ): Promise<LinkRegistration | null> => {
    const params = linkParams(token, validate(purposeSchema, purpose));
    if (!params) return null;
    const result = await withMetrics("select", TABLE, () => peekStatement.run(options.tx, params));
    return result.rows[0] ? toRegistration(result.rows[0]) : null;
  },
);

/**
 * Reserves one guess of the password a link carries, before the guess is checked; false when the link is not
 * usable (unknown, used, expired, or out of guesses: LINK_MAX_ATTEMPTS). A wrong guess keeps its reservation.
 * @throws DbError VALIDATION_FAILED (unknown purpose).
 * @example if (!(await reserveLinkAttempt(token, "email_verification"))) throw tokenInvalid();
 */
export const reserveLinkAttempt = defineService(
  {
    name: "oneTimeTokens.reserveLinkAttempt",
    table: "one_time_tokens",
    arity: 2,
    logFields: ([, purpose]) => ({ purpose }),
  },
  async (
    { options }: Call<ServiceOptions>,
    token: string,
    purpose: OneTimeTokenPurpose,
  ): Promise<boolean> => {
    const params = linkParams(token, validate(purposeSchema, purpose));
    if (!params) return false;
    const result = await withMetrics("reserve_attempt", TABLE, () =>
      reserveStatement.run(options.tx, params),
    );
    return result.rows.length > 0;
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
    { logger, options }: Call<ServiceOptions>,
    userId: string,
    filter: { purpose?: OneTimeTokenPurpose | undefined } = {},
  ): Promise<number> => {
    const id = validate(userIdSchema, userId);
    const purpose = validate(purposeSchema.optional(), filter?.purpose);
    const handle = options.tx ?? db;
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
  async ({ logger, options }: Call<ServiceOptions>, input: CleanupInput = {}): Promise<number> => {
    const { batchSize, maxBatches } = validate(batchSchema, input);
    const handle: DatabaseOrTransaction = options.tx ?? db;
    const at = now();
    // The used/retired arms have no index: this is a background job, a sequential scan is acceptable.
    const total = await deleteInBatches(batchSize, maxBatches, async () => {
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
      const result = await withMetrics("cleanup", TABLE, () =>
        handle.delete(oneTimeTokens).where(inArray(oneTimeTokens.id, doomed)),
      );
      return result.rowCount ?? 0;
    });
    if (total > 0) logger.info({ table: TABLE, deleted: total }, "expired one-time tokens deleted");
    return total;
  },
);
