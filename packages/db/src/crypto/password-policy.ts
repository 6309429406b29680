// Weak-password checks for new passwords: common passwords, the email's name, an optional breach lookup.
import { createHash } from "node:crypto";
import { createRequire } from "node:module";
import type { dictionary as ZxcvbnDictionary } from "@zxcvbn-ts/language-common";
import { DbError } from "../errors.ts";
import { type Logger, noopLogger } from "../logger.ts";

/** Where and how to ask a Pwned Passwords compatible range API whether a password has been breached. */
export interface BreachCheckOptions {
  /** The API's base URL, with or without a trailing slash (e.g. "https://api.pwnedpasswords.com"). */
  url: string;
  /** The whole lookup, body included, is abandoned after this many milliseconds. Default 2000. */
  timeoutMs?: number | undefined;
  /** Replaces the global fetch (tests, proxies). */
  fetch?: typeof fetch | undefined;
}

/** What assertPasswordStrength checks besides the password itself. */
export interface PasswordStrengthOptions {
  /** The account's email; its local part must not appear in the password. */
  email?: string | null | undefined;
  /** When set, the password is also looked up in the breach corpus (after the offline checks pass). */
  breachCheck?: BreachCheckOptions | undefined;
}

// The reasons are shown to the user as is (the API's 400 message), so they read as the end of a sentence
// that starts with "password".
const REASON_COMMON = "is one of the most common passwords";
const REASON_LOCAL_PART = "must not contain the name of your email address";
const REASON_BREACHED = "appears in a known data breach; choose another";

const DEFAULT_BREACH_TIMEOUT_MS = 2000;

// A local part this short would match too much: "a" is in nearly every password.
const LOCAL_PART_MIN_LENGTH = 3;

let commonPasswords: ReadonlySet<string> | undefined;

/**
 * The common-password list as a Set, built on first use. The package decompresses its ~49,000 entries when
 * it is loaded (tens of milliseconds, a few MB), so it is required here rather than imported at the top:
 * a static import would pay that on every start of anything that imports @repo/db. createRequire is
 * synchronous (so passwordWeakness can stay sync) and, since the package has no "exports" map and only
 * "main" is honoured, it loads the same dist/index.cjs under Bun, Node and vitest's forks.
 */
function commonPasswordSet(): ReadonlySet<string> {
  if (commonPasswords === undefined) {
    const require = createRequire(import.meta.url);
    const { dictionary } = require("@zxcvbn-ts/language-common") as {
      dictionary: typeof ZxcvbnDictionary;
    };
    // Every entry is lower case (the compression uses capitals as markers), hence the lower-cased lookup.
    commonPasswords = new Set(dictionary["passwords-common"]);
  }
  return commonPasswords;
}

/** How many passwords the common list holds (for tests and docs). Loads the list if it is not loaded yet. */
export function commonPasswordCount(): number {
  return commonPasswordSet().size;
}

function codePointLength(value: string): number {
  let count = 0;
  for (const _ of value) count++;
  return count;
}

/** The local part (before the last "@") and, when it has a "+tag", the part before the tag; lower-cased. */
function localPartNames(email: string): string[] {
  const at = email.lastIndexOf("@");
  // No "@" is not an email, but the whole string is the closest thing to a name it has.
  const local = (at === -1 ? email : email.slice(0, at)).normalize("NFKC").toLowerCase();
  const names = [local];
  const plus = local.indexOf("+");
  if (plus !== -1) names.push(local.slice(0, plus));
  return names.filter((name) => codePointLength(name) >= LOCAL_PART_MIN_LENGTH);
}

/**
 * The first reason the password is weak (common, contains the local part), or null. Sync, no network.
 * `normalized` is the NFKC-normalized password (as passwordSchema returns it); comparisons ignore case.
 */
export function passwordWeakness(normalized: string, email?: string | null): string | null {
  const lower = normalized.toLowerCase();
  if (commonPasswordSet().has(lower)) return REASON_COMMON;
  if (email) {
    for (const name of localPartNames(email)) {
      if (lower.includes(name)) return REASON_LOCAL_PART;
    }
  }
  return null;
}

/** Why a lookup could not be made; its message is logged, so it never holds the password or its hash. */
class BreachCheckUnavailable extends Error {}

// One line of a range answer: the 35 hex characters after the prefix, then the count.
const RANGE_LINE = /^([0-9A-Fa-f]{35}):(\d+)$/;

/** The count the answer gives for `suffix` (0 if absent); one malformed line makes the answer suspect. */
function countInRange(body: string, suffix: string): number {
  let count = 0;
  let lines = 0;
  for (const raw of body.split("\n")) {
    const line = raw.trim();
    if (line === "") continue;
    const match = RANGE_LINE.exec(line);
    if (!match) throw new BreachCheckUnavailable("unparsable response");
    lines++;
    // Padding lines are fake suffixes with count 0; a real hit always has a count of at least 1.
    if (match[1]?.toUpperCase() === suffix) count = Math.max(count, Number(match[2]));
  }
  // A genuine answer (padded, too) always has lines: an empty 200 is a proxy or a stub, not "not found".
  if (lines === 0) throw new BreachCheckUnavailable("unparsable response");
  return count;
}

/** A short, secret-free description of a failed lookup: an errno code or an error name, never a message. */
function unavailableReason(error: unknown, signal: AbortSignal, timeoutMs: number): string {
  if (error instanceof BreachCheckUnavailable) return error.message;
  if (signal.aborted) return `timed out after ${timeoutMs} ms`;
  // A message could quote the request URL, which holds the hash prefix: only codes and names are logged.
  let current: unknown = error;
  for (let depth = 0; depth < 5 && current && typeof current === "object"; depth++) {
    const candidate = current as { code?: unknown; cause?: unknown };
    if (typeof candidate.code === "string" && /^[A-Z][A-Z0-9_]+$/.test(candidate.code)) {
      return `unreachable (${candidate.code})`;
    }
    current = candidate.cause;
  }
  return `unreachable (${error instanceof Error ? error.name : typeof error})`;
}

/**
 * Looks the password up in a Pwned Passwords range API by k-anonymity: only the first 5 hex characters of
 * its SHA-1 leave the process (never the password or the full hash), with `Add-Padding: true` so the
 * answer's size does not hint at the hit either.
 * true = breached, false = not found, undefined = the check could not be made (logged).
 * It fails open: unreachable, timeout, a non-2xx or an unparsable answer give undefined and one warn line.
 */
export async function isPasswordBreached(
  normalized: string,
  options: BreachCheckOptions,
  logger: Logger = noopLogger,
): Promise<boolean | undefined> {
  const hash = createHash("sha1").update(normalized, "utf8").digest("hex").toUpperCase();
  const prefix = hash.slice(0, 5);
  const suffix = hash.slice(5);
  const timeoutMs = options.timeoutMs ?? DEFAULT_BREACH_TIMEOUT_MS;
  const signal = AbortSignal.timeout(timeoutMs);
  const fetchImpl = options.fetch ?? fetch;
  const url = `${options.url.replace(/\/+$/, "")}/range/${prefix}`;

  const lookup = async (): Promise<number> => {
    const response = await fetchImpl(url, { headers: { "Add-Padding": "true" }, signal });
    if (!response.ok) {
      // Releases the connection instead of leaving an unread body holding it.
      await response.body?.cancel().catch(() => {});
      throw new BreachCheckUnavailable(`HTTP ${response.status}`);
    }
    return countInRange(await response.text(), suffix);
  };
  // The signal bounds fetch and the body read; the race also bounds a substitute fetch that ignores it.
  let onAbort: (() => void) | undefined;
  const aborted = new Promise<never>((_, reject) => {
    onAbort = () => reject(signal.reason);
    signal.addEventListener("abort", onAbort, { once: true });
  });
  const pending = lookup();
  // Whichever loses the race must not surface later as an unhandled rejection.
  pending.catch(() => {});
  aborted.catch(() => {});
  try {
    return (await Promise.race([pending, aborted])) > 0;
  } catch (error) {
    logger.warn({ reason: unavailableReason(error, signal, timeoutMs) }, "password breach check unavailable");
    return undefined;
  } finally {
    if (onAbort) signal.removeEventListener("abort", onAbort);
  }
}

function tooWeak(reason: string): DbError<"PASSWORD_TOO_WEAK"> {
  return new DbError("PASSWORD_TOO_WEAK", `Invalid input: password: ${reason}`, {
    details: { password: reason },
  });
}

/**
 * Throws DbError PASSWORD_TOO_WEAK with details.password = the reason; runs the breach check only when
 * configured and only if the sync checks pass (so a password already refused never leaves the process,
 * not even as a hash prefix). A breach check that cannot be made accepts the password.
 * @throws DbError PASSWORD_TOO_WEAK.
 */
export async function assertPasswordStrength(
  normalized: string,
  options: PasswordStrengthOptions = {},
  logger: Logger = noopLogger,
): Promise<void> {
  const reason = passwordWeakness(normalized, options.email);
  if (reason !== null) throw tooWeak(reason);
  if (options.breachCheck && (await isPasswordBreached(normalized, options.breachCheck, logger)) === true) {
    throw tooWeak(REASON_BREACHED);
  }
}
