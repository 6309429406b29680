// Request helpers shared by the routes: strict JSON bodies and queries, client address, rate limits,
// the session cookie, and the session/CSRF middleware.

import { createHash, timingSafeEqual } from "node:crypto";
import { isIP } from "node:net";
import { CacheService } from "@repo/db";
import type { Context, MiddlewareHandler } from "hono";
import { deleteCookie, getCookie, setCookie } from "hono/cookie";
import { z } from "zod";
import type { ApiConfig } from "./config.ts";
import type { AppEnv } from "./context.ts";
import { ApiError } from "./errors.ts";
import { DEFAULT_MAX_JSON_DEPTH, parseJsonBody } from "./json.ts";

function validationError(error: z.ZodError): ApiError {
  const details: Record<string, string> = {};
  for (const issue of error.issues) {
    const key = issue.path.length > 0 ? issue.path.join(".") : "body";
    details[key] ??= issue.message;
  }
  const summary = Object.entries(details)
    .map(([key, message]) => `${key}: ${message}`)
    .join("; ");
  return new ApiError("VALIDATION_FAILED", `Invalid input: ${summary}`, { details });
}

/** Parses a JSON body with a strict zod schema: 415 unless JSON, 400 INVALID_JSON, 400 VALIDATION_FAILED. */
export async function readJson<S extends z.ZodType>(c: Context<AppEnv>, schema: S): Promise<z.output<S>> {
  const type = c.req.header("content-type") ?? "";
  if (!/^application\/([a-z0-9.+-]+\+)?json\s*(;|$)/i.test(type))
    throw new ApiError("UNSUPPORTED_MEDIA_TYPE");
  const text = await c.req.text();
  const body = parseJsonBody(text, DEFAULT_MAX_JSON_DEPTH);
  if (!body.ok && body.reason === "invalid") throw new ApiError("INVALID_JSON");
  if (!body.ok) {
    const message = `is nested too deeply (at most ${DEFAULT_MAX_JSON_DEPTH} levels)`;
    throw new ApiError("VALIDATION_FAILED", `Invalid input: body: ${message}`, {
      details: { body: message },
    });
  }
  return parseWith(schema, body.value);
}

/**
 * Validates with a zod schema. Nesting is bounded before this, but a schema that still throws (a recursion
 * limit, a refine that fails on odd input) is bad input all the same: a 400, never a 500.
 */
function parseWith<S extends z.ZodType>(schema: S, value: unknown): z.output<S> {
  let parsed: z.ZodSafeParseResult<z.output<S>>;
  try {
    parsed = schema.safeParse(value);
  } catch (error) {
    if (!(error instanceof RangeError)) throw error;
    throw new ApiError("VALIDATION_FAILED", "Invalid input: body: cannot be validated", {
      details: { body: "cannot be validated" },
    });
  }
  if (!parsed.success) throw validationError(parsed.error);
  return parsed.data;
}

/** A query parameter given at most once (readQuery hands every parameter over as a list); a repeated one fails `schema`. */
export const singleParam = <T extends z.ZodType>(schema: T) =>
  z.preprocess((value) => (Array.isArray(value) && value.length === 1 ? value[0] : value), schema);

/** Validates a query string: every parameter as a list of values (repeatable), strict. */
export function readQuery<S extends z.ZodType>(c: Context<AppEnv>, schema: S): z.output<S> {
  const parsed = schema.safeParse(c.req.queries());
  if (!parsed.success) throw validationError(parsed.error);
  return parsed.data;
}

/**
 * The client's address: with TRUST_PROXY = n, the n-th X-Forwarded-For entry from the right (the one our
 * first trusted proxy saw); otherwise, or when the header is short, the socket address. A client can
 * prepend anything to X-Forwarded-For, so entries left of the trusted ones are never used.
 */
export function clientAddress(c: Context<AppEnv>): string {
  const { config, getClientAddress } = c.get("deps");
  if (config.TRUST_PROXY > 0) {
    const entries = (c.req.header("x-forwarded-for") ?? "")
      .split(",")
      .map((entry) => entry.trim())
      .filter(Boolean);
    const entry = normalizeAddress(entries[entries.length - config.TRUST_PROXY]);
    if (entry) return canonicalAddress(entry);
  }
  const socket = getClientAddress(c);
  return socket && isIP(socket) ? canonicalAddress(socket) : (socket ?? "unknown");
}

/**
 * One spelling per client: a zone id (`fe80::1%eth0`, which PostgreSQL's inet refuses) is dropped, and an
 * IPv6 address that carries an IPv4 client, IPv4-mapped (`::ffff:0:0/96` in any notation, what a dual-stack
 * socket reports) or behind NAT64's well-known prefix (`64:ff9b::/96`), is that IPv4 address.
 */
function canonicalAddress(address: string): string {
  const bare = address.replace(/%.*$/, "");
  if (isIP(bare) !== 6) return bare;
  const [a = 0, b = 0, c = 0, d = 0, e = 0, f = 0, hi = 0, lo = 0] = ipv6Groups(bare);
  const mapped = a === 0 && b === 0 && c === 0 && d === 0 && e === 0 && f === 0xffff;
  const nat64 = a === 0x64 && b === 0xff9b && c === 0 && d === 0 && e === 0 && f === 0;
  return mapped || nat64 ? `${hi >> 8}.${hi & 255}.${lo >> 8}.${lo & 255}` : bare;
}

/** The eight 16-bit groups of an IPv6 address (`::` expanded, a trailing dotted IPv4 part converted). */
function ipv6Groups(address: string): number[] {
  let text = address.toLowerCase();
  const dotted = /(\d+)\.(\d+)\.(\d+)\.(\d+)$/.exec(text);
  if (dotted) {
    const [a, b, c, d] = dotted.slice(1).map(Number) as [number, number, number, number];
    text = `${text.slice(0, dotted.index)}${((a << 8) | b).toString(16)}:${((c << 8) | d).toString(16)}`;
  }
  const [head = "", tail] = text.split("::");
  const left = head ? head.split(":") : [];
  const right = tail ? tail.split(":") : [];
  const missing = tail === undefined ? 0 : 8 - left.length - right.length;
  return [...left, ...Array<string>(missing).fill("0"), ...right].map((group) => Number.parseInt(group, 16));
}

/**
 * The network a rate limit counts a client under: its IPv4 address, or the /64 prefix of its IPv6 address.
 * One IPv6 subscriber is routinely given a whole /64 (18 quintillion addresses); keying the full address
 * would give every attacker unlimited fresh buckets.
 */
export function clientNetwork(c: Context<AppEnv>): string {
  const address = clientAddress(c);
  if (isIP(address) !== 6) return address;
  const prefix = ipv6Groups(address)
    .slice(0, 4)
    .map((group) => group.toString(16))
    .join(":");
  return `${prefix}::/64`;
}

/** An X-Forwarded-For entry as a bare IP (`1.2.3.4:567` and `[::1]:80` lose their port), or undefined. */
function normalizeAddress(entry: string | undefined): string | undefined {
  if (!entry) return undefined;
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(entry);
  const candidate =
    bracketed?.[1] ?? (/^[\d.]+:\d+$/.test(entry) ? entry.slice(0, entry.lastIndexOf(":")) : entry);
  return isIP(candidate.replace(/%.*$/, "")) ? candidate : undefined;
}

const sha256 = (value: string) => createHash("sha256").update(value, "utf8").digest();

const BEARER = /^Bearer\s+(\S+)$/i;

/** The token of an `Authorization: Bearer <token>` header, or undefined: the one parser of that header. */
export function bearerToken(c: Context<AppEnv>): string | undefined {
  return BEARER.exec(c.req.header("authorization") ?? "")?.[1];
}

/** True when the request's `Authorization: Bearer` equals `expected`; constant time whatever the lengths. */
export function bearerMatches(c: Context<AppEnv>, expected: string): boolean {
  const token = bearerToken(c);
  return token !== undefined && timingSafeEqual(sha256(token), sha256(expected));
}

/** A stable key for a rate-limit bucket that does not store the raw email in the cache. */
export function digestKey(value: string): string {
  return createHash("sha256").update(value.trim().toLowerCase()).digest("base64url");
}

/** A fixed-window counter after one more hit: whether it is over its limit, and for how long. */
export interface Hit {
  value: number;
  over: boolean;
  /** Seconds until the window ends. */
  retryAfter: number;
}

/**
 * Counts `by` hits in a fixed window shared by every process (CacheService.increment, one atomic statement,
 * so parallel requests cannot all slip under the limit) and says whether the count is over `limit`.
 */
export async function countHit(
  c: Context<AppEnv>,
  bucket: string,
  key: string,
  limit: number,
  by = 1,
): Promise<Hit> {
  const { config, clock } = c.get("deps");
  const window = config.RATE_LIMIT_WINDOW_SECONDS;
  const counter = await CacheService.increment(
    `rate:${bucket}`,
    key,
    by,
    { ttlSeconds: window },
    c.get("log"),
  );
  const ends = counter.expiresAt?.getTime() ?? clock().getTime() + window * 1000;
  const retryAfter = Math.max(1, Math.ceil((ends - clock().getTime()) / 1000));
  return { value: counter.value, over: counter.value > limit, retryAfter };
}

/** Forgets a counter (a success clears the failures it counted). */
export async function clearHits(c: Context<AppEnv>, bucket: string, key: string): Promise<void> {
  await CacheService.take(`rate:${bucket}`, key, c.get("log"));
}

/** Counts one hit; over `limit` throws RATE_LIMITED with Retry-After = seconds until the window ends. */
export async function rateLimit(
  c: Context<AppEnv>,
  bucket: string,
  key: string,
  limit: number,
): Promise<void> {
  const hit = await countHit(c, bucket, key, limit);
  if (hit.over) throw rateLimited(c, bucket, hit);
}

export function rateLimited(c: Context<AppEnv>, bucket: string, hit: Hit): ApiError {
  c.get("log").warn({ bucket, retryAfter: hit.retryAfter }, "rate limited");
  return new ApiError("RATE_LIMITED", undefined, { retryAfter: hit.retryAfter });
}

/**
 * Counts one hit and says whether it is within `limit`, without failing the request: for limits whose answer
 * must not differ (mails to an address, which would otherwise tell whether it has an account).
 */
export async function withinLimit(
  c: Context<AppEnv>,
  bucket: string,
  key: string,
  limit: number,
): Promise<boolean> {
  const hit = await countHit(c, bucket, key, limit);
  if (hit.over) c.get("log").warn({ bucket }, "rate limited (silently)");
  return !hit.over;
}

/** The session cookie's name and Secure flag, derived once from the configuration. */
export interface SessionCookie {
  name: string;
  secure: boolean;
}

/** Secure outside development; then `__Host-session` (the prefix pins Secure, Path=/ and no Domain). */
export function sessionCookie(config: ApiConfig): SessionCookie {
  const secure = config.NODE_ENV !== "development";
  const name = config.SESSION_COOKIE_NAME;
  return { name: secure ? `__Host-${name}` : name, secure };
}

export function isSecure(c: Context<AppEnv>): boolean {
  return c.get("deps").cookie.secure;
}

export function cookieName(c: Context<AppEnv>): string {
  return c.get("deps").cookie.name;
}

export function setSessionCookie(c: Context<AppEnv>, token: string, expiresAt: Date): void {
  setCookie(c, cookieName(c), token, {
    httpOnly: true,
    sameSite: "Lax",
    path: "/",
    secure: isSecure(c),
    expires: expiresAt,
  });
}

export function clearSessionCookie(c: Context<AppEnv>): void {
  deleteCookie(c, cookieName(c), { path: "/", secure: isSecure(c), httpOnly: true, sameSite: "Lax" });
}

/** The session token a request presents: `Authorization: Bearer` wins over the cookie. */
export function presentedToken(c: Context<AppEnv>): { token: string; via: "cookie" | "bearer" } | undefined {
  const bearer = bearerToken(c);
  if (bearer !== undefined) return { token: bearer, via: "bearer" };
  const cookie = getCookie(c, cookieName(c));
  return cookie ? { token: cookie, via: "cookie" } : undefined;
}

/**
 * Clients that are not browsers ask for the session token in the JSON body with `X-Auth-Mode: bearer` (and get
 * no cookie); a request already authenticated with a bearer token is such a client too. Browsers get the
 * HttpOnly cookie only, so script injected into the page cannot read the token from an answer.
 */
export function wantsBearer(c: Context<AppEnv>): boolean {
  return c.req.header("x-auth-mode")?.trim().toLowerCase() === "bearer" || bearerToken(c) !== undefined;
}

/** Every /v1 answer is about one person or carries a credential: no shared or browser cache may keep it. */
export const noStore: MiddlewareHandler<AppEnv> = async (c, next) => {
  // Set before the answer exists, so every answer (errors included) is built with it. Setting a header after
  // next() makes Hono copy the finished Response: 5% of the session check's CPU (bun --cpu-prof).
  c.header("Cache-Control", "no-store");
  await next();
};
