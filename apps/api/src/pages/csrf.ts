// CSRF protection of the pages' forms: a double-submit token. Showing a form sets a random token in an HttpOnly,
// SameSite=Lax cookie (`__Host-` prefixed outside development, so no subdomain can plant one) and puts the
// same value in the form; a POST must carry both, equal. A cross-site page cannot read the cookie, and with
// SameSite=Lax its POST does not even send it (Lax, not Strict: a link opened from webmail is a cross-site
// navigation, and a Strict cookie would be missing there, so a new token would break a form already open in
// another tab). The forms cannot rely on Origin: under Referrer-Policy no-referrer, Chromium sends
// `Origin: null` with a same-origin form POST. Fetch metadata is checked as well: a browser that says the POST
// came from another site (or a sibling subdomain) is refused whatever it carries.
// Left open: in development over plain http (no `__Host-` prefix, and browsers send no Sec-Fetch-* to http
// origins other than localhost), a sibling subdomain could plant the cookie and post a form with the same
// value (login CSRF). The development default is http://localhost, where Sec-Fetch-Site is sent.
import { randomBytes, timingSafeEqual } from "node:crypto";
import type { Context } from "hono";
import { getCookie, setCookie } from "hono/cookie";
import type { AppEnv } from "../context.ts";
import { isSecure } from "../http.ts";

const TOKEN = /^[A-Za-z0-9_-]{43}$/;
const MAX_AGE_SECONDS = 60 * 60;

function cookieName(c: Context<AppEnv>): string {
  return isSecure(c) ? "__Host-form" : "form";
}

/** The form token of this browser (a new one when it has none), set or refreshed in its cookie. */
export function formToken(c: Context<AppEnv>): string {
  const existing = getCookie(c, cookieName(c));
  const token = existing && TOKEN.test(existing) ? existing : randomBytes(32).toString("base64url");
  setCookie(c, cookieName(c), token, {
    httpOnly: true,
    sameSite: "Lax",
    secure: isSecure(c),
    path: "/",
    maxAge: MAX_AGE_SECONDS,
  });
  return token;
}

/** True when a form POST carries this browser's form token and nothing says it came from elsewhere. */
export function formTokenMatches(c: Context<AppEnv>, submitted: unknown): boolean {
  const site = c.req.header("sec-fetch-site");
  if (site !== undefined && site !== "same-origin") return false;
  const cookie = getCookie(c, cookieName(c));
  if (typeof submitted !== "string" || !cookie || !TOKEN.test(cookie) || !TOKEN.test(submitted)) return false;
  return timingSafeEqual(Buffer.from(cookie), Buffer.from(submitted));
}
