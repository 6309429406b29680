// Password hashing for the users service: argon2id (OWASP's minimum: 19 MiB, 2 passes, 1 lane), NFKC
// normalization, length rules, a dummy hash that makes unknown accounts cost the same as known ones, and
// the check that tells when a stored hash is weaker than the current policy and should be replaced.
import { randomBytes } from "node:crypto";
import { type Algorithm, hash, verify } from "@node-rs/argon2";
import { Counter } from "prom-client";
import { z } from "zod";
import { registry } from "../metrics.ts";

/** The parameters every new hash uses. A stored hash weaker than these is rehashed after a successful sign-in. */
export const PASSWORD_HASH_POLICY = {
  // `Algorithm` is a declared `const enum`: under Node its runtime object is empty (`Algorithm.Argon2id` is
  // undefined there) and isolatedModules forbids inlining it, so the value is spelled out. 2 = Argon2id.
  algorithm: 2 as Algorithm,
  memoryCost: 19_456,
  timeCost: 2,
  parallelism: 1,
} as const;

export const PASSWORD_MIN_LENGTH = 8;
export const PASSWORD_MAX_LENGTH = 1024;

// A cheap bound checked before normalizing, so a megabyte of input is never NFKC-normalized or hashed.
// NFKC composes at most a handful of code points into one, so nothing this long can come back within 1024.
const RAW_MAX_UTF16_UNITS = 16 * PASSWORD_MAX_LENGTH;

/** Code points, not UTF-16 units: "🔑" is one character. */
function codePointLength(value: string): number {
  let count = 0;
  for (const _ of value) count++;
  return count;
}

/**
 * A new password: NFKC-normalized (so "é" typed composed or decomposed is the same password), then 8 to
 * 1024 characters counted in code points. Never trimmed or truncated.
 */
export const passwordSchema = z
  .string()
  .max(RAW_MAX_UTF16_UNITS, `must be at most ${PASSWORD_MAX_LENGTH} characters`)
  .transform((value) => value.normalize("NFKC"))
  .refine((value) => codePointLength(value) >= PASSWORD_MIN_LENGTH, {
    message: `must be at least ${PASSWORD_MIN_LENGTH} characters`,
  })
  .refine((value) => codePointLength(value) <= PASSWORD_MAX_LENGTH, {
    message: `must be at most ${PASSWORD_MAX_LENGTH} characters`,
  });

/**
 * A password offered at sign-in: normalized the same way, but only required to be non-empty and bounded,
 * so a hash imported from elsewhere with a shorter password still verifies.
 */
export const candidatePasswordSchema = z
  .string()
  .min(1, "must not be empty")
  .max(RAW_MAX_UTF16_UNITS, `must be at most ${PASSWORD_MAX_LENGTH} characters`)
  .transform((value) => value.normalize("NFKC"))
  .refine((value) => codePointLength(value) <= PASSWORD_MAX_LENGTH, {
    message: `must be at most ${PASSWORD_MAX_LENGTH} characters`,
  });

/** Hashes an already-validated (normalized) password with the current policy; returns a PHC string. */
export async function hashPassword(normalized: string): Promise<string> {
  return await hash(normalized, PASSWORD_HASH_POLICY);
}

let dummyHash: Promise<string> | undefined;
let dummyStored: string | undefined;

/**
 * argon2 verifications by kind: `stored` against a user's hash, `dummy` for sign-ins with no hash to check.
 * Every sign-in attempt moves exactly one of them, which is what keeps the answer time flat (and what tests
 * check, instead of timing).
 */
export const passwordVerificationsTotal = new Counter({
  name: "password_verifications_total",
  help: "argon2 password verifications, by kind (stored hash or dummy)",
  labelNames: ["kind"] as const,
  registers: [registry],
});

/** True when `normalized` matches the PHC string. A malformed or unsupported stored hash is a mismatch. */
export async function verifyPasswordHash(stored: string, normalized: string): Promise<boolean> {
  passwordVerificationsTotal.inc({ kind: stored === dummyStored ? "dummy" : "stored" });
  try {
    return await verify(stored, normalized);
  } catch {
    return false;
  }
}

/**
 * Spends one argon2 verification, with the current parameters, on a hash no password matches. Sign-in calls
 * it when there is no hash to check (unknown email, deleted user, user without a password) so the answer
 * takes as long as a wrong password and does not reveal whether the account exists.
 */
export async function verifyAgainstDummy(normalized: string): Promise<false> {
  // Computed once, lazily, from a random secret nobody knows; a failed computation is retried next time.
  dummyHash ??= hash(randomBytes(32), PASSWORD_HASH_POLICY).catch((error: unknown) => {
    dummyHash = undefined;
    throw error;
  });
  dummyStored = await dummyHash;
  await verifyPasswordHash(dummyStored, normalized);
  return false;
}

const PHC_ARGON2 = /^\$(argon2(?:id|i|d))\$v=(\d+)\$m=(\d+),t=(\d+),p=(\d+)\$/;

/**
 * True when a stored hash is weaker than the policy: not argon2id, an older argon2 version, or less memory
 * or fewer passes. A stronger hash (from a later, stricter policy) is left alone rather than downgraded.
 */
export function needsRehash(stored: string): boolean {
  const match = PHC_ARGON2.exec(stored);
  if (!match) return true;
  const [, variant, version, memory, time] = match;
  return (
    variant !== "argon2id" ||
    Number(version) !== 19 ||
    Number(memory) < PASSWORD_HASH_POLICY.memoryCost ||
    Number(time) < PASSWORD_HASH_POLICY.timeCost
  );
}

// ---------------------------------------------------------------------------------------------------------
// Prepared passwords: hashed ahead of any transaction, opaque outside this package.

/**
 * A new password that passed the policy and has been hashed, ready to be stored. It is made before a
 * transaction opens (argon2 takes tens of milliseconds; inside a transaction it would hold a pooled connection
 * and any row lock for that long), then handed to `UsersService.create` / `setPassword` / `register`. The hash
 * is not reachable from outside @repo/db: callers can pass it on, never read or forge it.
 */
export interface PreparedPassword {
  readonly kind: "prepared-password";
}

const preparedHashes = new WeakMap<PreparedPassword, string>();

/** Wraps a PHC string this package computed (or read from its own tables) as a PreparedPassword. */
export function preparedFromHash(phc: string): PreparedPassword {
  const prepared: PreparedPassword = Object.freeze({ kind: "prepared-password" as const });
  preparedHashes.set(prepared, phc);
  return prepared;
}

/** True for a PreparedPassword made by this package. */
export function isPreparedPassword(value: unknown): value is PreparedPassword {
  return typeof value === "object" && value !== null && preparedHashes.has(value as PreparedPassword);
}

/** The PHC string behind a PreparedPassword; throws for anything this package did not make. */
export function preparedHash(prepared: PreparedPassword): string {
  const phc = preparedHashes.get(prepared);
  if (phc === undefined) throw new TypeError("not a PreparedPassword made by UsersService.preparePassword");
  return phc;
}
