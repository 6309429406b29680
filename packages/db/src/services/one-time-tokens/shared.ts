// One-time tokens, shared pieces: the record shapes callers see, the default and maximum lifetimes, the input
// schemas links and codes both use, and the condition that a token's owner is live.
import { getTableColumns, sql } from "drizzle-orm";
import { z } from "zod";
import type { PreparedPassword } from "../../crypto/passwords.ts";
import {
  type OneTimeToken,
  type OneTimeTokenPurpose,
  oneTimeTokenPurpose,
  oneTimeTokens,
} from "../../schema/index.ts";
import { selectColumns } from "../../statements.ts";
import { idSchema } from "../common.ts";

export const TABLE = "one_time_tokens";

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
  ...columns
} = getTableColumns(oneTimeTokens);
/** The columns of a OneTimeTokenRecord: all but the digest and what a sign-up's link carries. */
export const recordColumns = columns;

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

export const purposeSchema = z.enum(oneTimeTokenPurpose.enumValues);
// Addresses are compared exactly by verifyCode: normalize them the same way on the way in and out.
export const sentToSchema = z.string().trim().toLowerCase().min(1).max(320);
export const userIdSchema = idSchema;

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

/** The token has no user, or its user is not soft-deleted. */
export const ownerIsLive = sql`(${oneTimeTokens.userId} IS NULL OR EXISTS (SELECT 1 FROM users u WHERE u.id = ${oneTimeTokens.userId} AND u.deleted_at IS NULL))`;

export const recordList = selectColumns(TABLE, recordColumns);

/** node-postgres reads bigint as text; the record's attempts is a number. */
export function toRecord(row: Record<string, unknown>): OneTimeTokenRecord {
  row.attempts = Number(row.attempts);
  return row as OneTimeTokenRecord;
}
