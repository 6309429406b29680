// One-time tokens, numeric codes: issuing a short code (stored as an HMAC under a server-side key) and
// checking one, with a bounded number of guesses.
import { createHmac } from "node:crypto";
import { and, desc, eq, gt, isNull, lt, lte, sql } from "drizzle-orm";
import { uuidv7 } from "uuidv7";
import { z } from "zod";
import { now } from "../../clock.ts";
import { db } from "../../connection.ts";
import { constantTimeEqual, generateNumericCode } from "../../crypto/secrets.ts";
import { DbError } from "../../errors.ts";
import { withMetrics } from "../../metrics.ts";
import { type OneTimeTokenPurpose, oneTimeTokens } from "../../schema/index.ts";
import { type ServiceOptions, validate } from "../common.ts";
import { type Call, defineService } from "../define.ts";
import { issue } from "./issuing.ts";
import {
  type CreateTokenInput,
  DEFAULT_CODE_TTL_MS,
  DEFAULT_MAX_ATTEMPTS,
  MAX_CODE_TTL_MS,
  type OneTimeTokenRecord,
  ownerIsLive,
  purposeSchema,
  recordColumns,
  sentToSchema,
  TABLE,
  userIdSchema,
} from "./shared.ts";

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
    { logger, options, handle }: Call<VerifyCodeOptions>,
    input: { sentTo: string; purpose: OneTimeTokenPurpose; code: string },
  ): Promise<OneTimeTokenRecord | null> => {
    const parsed = validate(verifyCodeSchema, input);
    requireCodeKey();
    const maxAttempts = validate(maxAttemptsSchema, options.maxAttempts ?? DEFAULT_MAX_ATTEMPTS);
    // Codes are digits only; anything else cannot match and costs no attempt.
    if (!/^[0-9]{4,10}$/.test(parsed.code)) return null;
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
