// Request helpers shared by the routes: strict JSON bodies and queries, client address, rate limits,
// the session cookie, and the session/CSRF middleware.

import { createHash } from "node:crypto";
import { isIP } from "node:net";
import { CacheService, SessionsService } from "@repo/db";
import type { Context, MiddlewareHandler } from "hono";
import { deleteCookie, getCookie, setCookie } from "hono/cookie";
import type { z } from "zod";
import { allowedOrigins } from "./config.ts";
import type { AppEnv } from "./context.ts";
import { ApiError } from "./errors.ts";

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
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new ApiError("INVALID_JSON");
  }
  const parsed = schema.safeParse(body);
  if (!parsed.success) throw validationError(parsed.error);
  return parsed.data;
}

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
  const { config, getClientAddress } = c.var.deps;
  if (config.TRUST_PROXY > 0) {
    const entries = (c.req.header("x-forwarded-for") ?? "")
      .split(",")
      .map((entry) => entry.trim())
      .filter(Boolean);
    const entry = normalizeAddress(entries[entries.length - config.TRUST_PROXY]);
    if (entry) return entry;
  }
  return getClientAddress(c) ?? "unknown";
}

/** An X-Forwarded-For entry as a bare IP (`1.2.3.4:567` and `[::1]:80` lose their port), or undefined. */
function normalizeAddress(entry: string | undefined): string | undefined {
  if (!entry) return undefined;
  const bracketed = /^\[([^\]]+)\](?::\d+)?$/.exec(entry);
  const candidate =
    bracketed?.[1] ?? (/^[\d.]+:\d+$/.test(entry) ? entry.slice(0, entry.lastIndexOf(":")) : entry);
  return isIP(candidate) ? candidate : undefined;
}

/** A stable key for a rate-limit bucket that does not store the raw email in the cache. */
export function digestKey(value: string): string {
  return createHash("sha256").update(value.trim().toLowerCase()).digest("base64url");
}

/**
 * Counts one hit in a fixed window shared by every process (CacheService.increment); over `limit` throws
 * RATE_LIMITED with Retry-After = seconds until the window ends.
 */
export async function rateLimit(
  c: Context<AppEnv>,
  bucket: string,
  key: string,
  limit: number,
): Promise<void> {
  const { config, clock } = c.var.deps;
  const window = config.RATE_LIMIT_WINDOW_SECONDS;
  const counter = await CacheService.increment(`rate:${bucket}`, key, 1, { ttlSeconds: window }, c.var.log);
  if (counter.value > limit) {
    const ends = counter.expiresAt?.getTime() ?? clock().getTime() + window * 1000;
    const retryAfter = Math.max(1, Math.ceil((ends - clock().getTime()) / 1000));
    c.var.log.warn({ bucket, retryAfter }, "rate limited");
    throw new ApiError("RATE_LIMITED", undefined, { retryAfter });
  }
}

export function isSecure(c: Context<AppEnv>): boolean {
  return c.var.deps.config.NODE_ENV !== "development";
}

/** `__Host-session` when cookies are Secure (the prefix pins Secure, Path=/ and no Domain), else `session`. */
export function cookieName(c: Context<AppEnv>): string {
  const name = c.var.deps.config.SESSION_COOKIE_NAME;
  return isSecure(c) ? `__Host-${name}` : name;
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
  const match = /^Bearer\s+(\S+)$/i.exec(c.req.header("authorization") ?? "");
  if (match?.[1]) return { token: match[1], via: "bearer" };
  const cookie = getCookie(c, cookieName(c));
  return cookie ? { token: cookie, via: "cookie" } : undefined;
}

const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);
/** Only a bearer token exempts a request from the origin check: browsers may replay Basic credentials. */
const BEARER = /^Bearer\s+\S+$/i;

/**
 * CSRF: an unsafe request that carries the session cookie (and no bearer token) must come from an allowed
 * origin, shown by Origin or, failing that, Referer. Any unsafe request whose Origin is foreign is refused
 * too (login CSRF). Bearer-authenticated requests are not at risk: browsers never add that header.
 */
export const csrfGuard: MiddlewareHandler<AppEnv> = async (c, next) => {
  if (UNSAFE.has(c.req.method) && !BEARER.test(c.req.header("authorization") ?? "")) {
    const allowed = allowedOrigins(c.var.deps.config);
    const origin = c.req.header("origin");
    const hasCookie = getCookie(c, cookieName(c)) !== undefined;
    let source: string | undefined;
    if (origin && origin !== "null") source = origin;
    else {
      const referer = c.req.header("referer");
      if (referer) {
        try {
          source = new URL(referer).origin;
        } catch {
          source = "invalid";
        }
      }
    }
    if (source !== undefined ? !allowed.includes(source) : hasCookie || origin === "null") {
      c.var.log.warn({ origin: source ?? null }, "cross-site request rejected");
      throw new ApiError("CSRF_REJECTED");
    }
  }
  await next();
};

/** Requires a live session (cookie or bearer); sets session, user, sessionToken and authVia. */
export const requireSession: MiddlewareHandler<AppEnv> = async (c, next) => {
  const presented = presentedToken(c);
  if (!presented) throw new ApiError("UNAUTHENTICATED");
  const auth = await SessionsService.validate(presented.token, c.var.log);
  if (!auth) {
    if (presented.via === "cookie") clearSessionCookie(c);
    throw new ApiError("UNAUTHENTICATED");
  }
  // validate() slides the session's expiry; the cookie must follow, or a daily user is signed out when the
  // cookie set at sign-in expires (a rolling cookie, re-sent with the session's current expiry).
  if (presented.via === "cookie") setSessionCookie(c, presented.token, auth.session.expiresAt);
  c.set("session", auth.session);
  c.set("user", auth.user);
  c.set("sessionToken", presented.token);
  c.set("authVia", presented.via);
  await next();
};
