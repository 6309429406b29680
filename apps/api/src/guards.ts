// The two guards every /v1 route relies on, built once from the configuration by createApp(): the CSRF check of
// unsafe requests and the session requirement of signed-in routes.
import { SessionsService } from "@repo/db";
import type { MiddlewareHandler } from "hono";
import { getCookie } from "hono/cookie";
import { type ApiConfig, allowedOrigins } from "./config.ts";
import type { AppEnv } from "./context.ts";
import { ApiError } from "./errors.ts";
import { bearerToken, clearSessionCookie, cookieName, presentedToken, setSessionCookie } from "./http.ts";

const UNSAFE = new Set(["POST", "PUT", "PATCH", "DELETE"]);

export interface Guards {
  csrfGuard: MiddlewareHandler<AppEnv>;
  requireSession: MiddlewareHandler<AppEnv>;
}

export function createGuards(config: ApiConfig): Guards {
  const allowed = new Set(allowedOrigins(config));

  /**
   * CSRF: an unsafe request that carries the session cookie (and no bearer token) must come from an allowed
   * origin, shown by Origin or, failing that, Referer. Any unsafe request whose Origin is foreign is refused
   * too (login CSRF). Bearer-authenticated requests are not at risk: browsers never add that header.
   */
  const csrfGuard: MiddlewareHandler<AppEnv> = async (c, next) => {
    // `Origin: null` comes from sandboxed iframes, data: URLs and some redirects: an unsafe request with it is
    // refused whatever credentials it carries, since no allowed origin can be told from it.
    if (UNSAFE.has(c.req.method) && c.req.header("origin")?.trim() === "null") {
      c.get("log").warn({ origin: "null" }, "cross-site request rejected");
      throw new ApiError("CSRF_REJECTED");
    }
    // Only a bearer token exempts a request from the origin check: browsers may replay Basic credentials.
    if (UNSAFE.has(c.req.method) && bearerToken(c) === undefined) {
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
      if (source !== undefined ? !allowed.has(source) : hasCookie || origin === "null") {
        c.get("log").warn({ origin: source ?? null }, "cross-site request rejected");
        throw new ApiError("CSRF_REJECTED");
      }
    }
    await next();
  };

  /** Requires a live session (cookie or bearer); sets session, user, sessionToken and authVia. */
  const requireSession: MiddlewareHandler<AppEnv> = async (c, next) => {
    const presented = presentedToken(c);
    if (!presented) throw new ApiError("UNAUTHENTICATED");
    const auth = await SessionsService.validate(presented.token, c.get("log"));
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

  return { csrfGuard, requireSession };
}
