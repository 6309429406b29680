// Secrets the data layer hands out (session tokens, link tokens, numeric codes) and how they are stored:
// only a SHA-256 of a secret reaches the database, and comparisons of digests take constant time.
import { createHash, randomBytes, randomInt, timingSafeEqual } from "node:crypto";

/** A new secret with 256 bits from the CSPRNG, base64url-encoded (43 characters). */
export function generateSecret(): string {
  return randomBytes(32).toString("base64url");
}

/** A numeric code of `digits` digits, uniformly drawn from the CSPRNG. */
export function generateNumericCode(digits: number): string {
  return randomInt(0, 10 ** digits)
    .toString()
    .padStart(digits, "0");
}

/** SHA-256 of a secret: what the database stores instead of the secret. */
export function sha256(value: string): Buffer {
  return createHash("sha256").update(value, "utf8").digest();
}

/** Constant-time comparison of two digests (false, not an exception, when lengths differ). */
export function constantTimeEqual(a: Buffer, b: Buffer): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Secrets we hand out are base64url of 32 bytes; anything else can be rejected before touching the database. */
export function isWellFormedSecret(token: unknown): token is string {
  return typeof token === "string" && /^[A-Za-z0-9_-]{43}$/.test(token);
}
