// One-time tokens, links: using a link token once, looking at it without using it, and reserving guesses of
// the password a sign-up's link carries.
import { sql } from "drizzle-orm";
import { now } from "../../clock.ts";
import { preparedFromHash } from "../../crypto/passwords.ts";
import { isWellFormedSecret, sha256 } from "../../crypto/secrets.ts";
import { withMetrics } from "../../metrics.ts";
import type { OneTimeTokenPurpose } from "../../schema/index.ts";
import { defineStatement, param } from "../../statements.ts";
import { type ServiceOptions, validate } from "../common.ts";
import { type Call, type CallTail, defineService } from "../define.ts";
import {
  type LinkRegistration,
  type OneTimeTokenRecord,
  ownerIsLive,
  purposeSchema,
  type RegistrationProfile,
  recordList,
  TABLE,
  toRecord,
} from "./shared.ts";

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
