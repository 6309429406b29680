// /v1/auth: sign-up, sign-in/out, sessions, email verification, password reset/change and magic links.
// The handlers live in ./auth/ by concern; this file registers them, in the order Hono matches them.
import { Hono } from "hono";
import { z } from "zod";
import type { AppEnv } from "../context.ts";
import type { Guards } from "../guards.ts";
import {
  documented,
  linkedAccountSchema,
  sessionSchema,
  signedInSchema,
  statusSchema,
  userSchema,
} from "../openapi.ts";
import {
  callback,
  callbackQuery,
  listAccounts,
  startLink,
  startQuery,
  startSignIn,
  unlinkAccount,
} from "./auth/oauth.ts";
import { changePassword, resetPassword } from "./auth/password.ts";
import {
  currentSession,
  listSessions,
  revokeOtherSessions,
  revokeSession,
  signOut,
} from "./auth/sessions.ts";
import {
  changeBody,
  emailBody,
  linkRequest,
  resetBody,
  signInBody,
  signUpBody,
  tokenBody,
  verifyBody,
} from "./auth/shared.ts";
import { signIn, verifyMagicLink } from "./auth/sign-in.ts";
import { resendVerification, signUp, verifyEmail } from "./auth/sign-up.ts";

export { confirmPassword, signedInRecently } from "./auth/shared.ts";

export function authRoutes({ requireSession }: Guards): Hono<AppEnv> {
  const auth = new Hono<AppEnv>();
  const route = documented(auth, "/v1/auth");
  const signedInAnswer = {
    description: "Signed in (the session cookie, or the token with X-Auth-Mode: bearer)",
    schema: signedInSchema,
  };
  const sent = {
    description: "Accepted: a mail is sent if the address has an account",
    schema: statusSchema("sent"),
  };

  route.post(
    "/sign-up",
    {
      summary: "Sign up",
      description:
        "The answer is the same 202 whether or not the address has an account; only the mail differs (a verification link, or a notice to the owner). With SIGN_IN_BEFORE_EMAIL_VERIFICATION a new account is signed in at once (201).",
      tag: "auth",
      access: "public",
      body: signUpBody,
      answers: {
        201: {
          ...signedInAnswer,
          description: "Created and signed in (SIGN_IN_BEFORE_EMAIL_VERIFICATION only)",
        },
        202: { description: "Check your mail", schema: statusSchema("check_email") },
      },
      errors: ["PASSWORD_TOO_WEAK", "RATE_LIMITED"],
    },
    signUp,
  );
  route.post(
    "/sign-in",
    {
      summary: "Sign in with email and password",
      tag: "auth",
      access: "public",
      body: signInBody,
      answers: { 200: signedInAnswer },
      errors: ["INVALID_CREDENTIALS", "RATE_LIMITED", "SIGN_IN_LINK_REQUIRED"],
    },
    signIn,
  );
  route.post(
    "/sign-out",
    {
      summary: "Sign out (end this session)",
      tag: "sessions",
      access: "session",
      answers: { 204: { description: "Signed out" } },
    },
    requireSession,
    signOut,
  );
  route.get(
    "/session",
    {
      summary: "The current session and its user",
      tag: "sessions",
      access: "session",
      answers: {
        200: { description: "Signed in", schema: z.object({ user: userSchema, session: sessionSchema }) },
      },
    },
    requireSession,
    currentSession,
  );
  route.get(
    "/sessions",
    {
      summary: "The user's live sessions",
      tag: "sessions",
      access: "session",
      answers: {
        200: {
          description: "Live sessions, the current one marked",
          schema: z.object({ sessions: z.array(sessionSchema) }),
        },
      },
    },
    requireSession,
    listSessions,
  );
  route.delete(
    "/sessions/:id",
    {
      summary: "Revoke one of the user's sessions",
      tag: "sessions",
      access: "session",
      params: { id: "The session's id (someone else's answers 404 like an unknown one)" },
      answers: { 204: { description: "Revoked" } },
    },
    requireSession,
    revokeSession,
  );
  route.post(
    "/sessions/revoke-others",
    {
      summary: "Revoke every other session of the user",
      tag: "sessions",
      access: "session",
      answers: {
        200: { description: "How many were revoked", schema: z.object({ revoked: z.number().int() }) },
      },
    },
    requireSession,
    revokeOtherSessions,
  );
  route.post(
    "/email/verify",
    {
      summary: "Use a verification link",
      description:
        "Proves the address with the mailed token and the password chosen at sign-up, and signs in.",
      tag: "auth",
      access: "public",
      body: verifyBody,
      answers: { 200: signedInAnswer },
      errors: ["TOKEN_INVALID", "INVALID_CREDENTIALS", "RATE_LIMITED"],
    },
    verifyEmail,
  );
  route.post(
    "/email/verify/resend",
    {
      summary: "Send a new verification link",
      tag: "auth",
      access: "session",
      answers: {
        200: {
          description: "Nothing to send: the address is verified",
          schema: statusSchema("already_verified"),
        },
        202: { description: "Sent", schema: statusSchema("sent") },
      },
      errors: ["VALIDATION_FAILED", "RATE_LIMITED"],
    },
    requireSession,
    resendVerification,
  );
  route.post(
    "/password/forgot",
    {
      summary: "Mail a password reset link",
      tag: "auth",
      access: "public",
      body: emailBody,
      answers: { 202: sent },
      errors: ["RATE_LIMITED"],
    },
    linkRequest("password_reset"),
  );
  route.post(
    "/magic-link",
    {
      summary: "Mail a sign-in link",
      tag: "auth",
      access: "public",
      body: emailBody,
      answers: { 202: sent },
      errors: ["RATE_LIMITED"],
    },
    linkRequest("magic_link"),
  );
  route.post(
    "/password/reset",
    {
      summary: "Set a new password with a reset link",
      description: "Ends every session of the user; sign in again with the new password.",
      tag: "auth",
      access: "public",
      body: resetBody,
      answers: { 200: { description: "The password is set", schema: z.object({ user: userSchema }) } },
      errors: ["TOKEN_INVALID", "PASSWORD_TOO_WEAK", "RATE_LIMITED"],
    },
    resetPassword,
  );
  route.post(
    "/password/change",
    {
      summary: "Change the password",
      description: "Every other session ends, and this one continues under a new token.",
      tag: "auth",
      access: "session",
      body: changeBody,
      answers: { 200: signedInAnswer },
      errors: ["INVALID_CREDENTIALS", "PASSWORD_TOO_WEAK", "RATE_LIMITED"],
    },
    requireSession,
    changePassword,
  );
  route.post(
    "/magic-link/verify",
    {
      summary: "Sign in with a magic link",
      tag: "auth",
      access: "public",
      body: tokenBody,
      answers: { 200: signedInAnswer },
      errors: ["TOKEN_INVALID", "RATE_LIMITED"],
    },
    verifyMagicLink,
  );

  // --- sign-in providers and linked accounts ---------------------------------------------------------------
  const provider = { provider: "A configured provider's id (OAUTH_<ID>_* lower-cased; google, github)" };
  route.get(
    "/oauth/:provider/start",
    {
      summary: "Sign in with a provider: redirects to it",
      description:
        "Keeps state, nonce and a PKCE verifier server-side (10 minutes, used once) bound to this browser by a cookie, and redirects to the provider. `redirectTo` (under APP_URL or an allowed origin) is where the callback sends the browser.",
      tag: "auth",
      access: "public",
      params: provider,
      query: startQuery,
      answers: { 302: { description: "To the provider" } },
      errors: ["NOT_FOUND", "RATE_LIMITED", "PROVIDER_UNAVAILABLE"],
    },
    startSignIn,
  );
  route.get(
    "/oauth/:provider/callback",
    {
      summary: "Where the provider sends the browser back (register this URL with it)",
      description:
        "Uses the state once, exchanges the code, validates the ID token (signature, issuer, audience, nonce, expiry), signs in with the session cookie and redirects to redirectTo. A failure redirects there with `?error=` OAUTH_STATE_INVALID, OAUTH_PROVIDER_ERROR, OAUTH_TOKEN_INVALID, OAUTH_PROVIDER_UNAVAILABLE, OAUTH_EMAIL_UNVERIFIED (a new identity without a verified address), OAUTH_ACCOUNT_ALREADY_LINKED, OAUTH_SESSION_ENDED or RATE_LIMITED.",
      tag: "auth",
      access: "public",
      params: provider,
      query: callbackQuery,
      answers: {
        302: { description: "To redirectTo (with ?error=CODE on failure, ?linked=<provider> after a link)" },
      },
      errors: ["NOT_FOUND"],
    },
    callback,
  );
  route.post(
    "/oauth/:provider/link",
    {
      summary: "Link a provider to the signed-in user: answers the URL to send the browser to",
      tag: "auth",
      access: "session",
      params: provider,
      query: startQuery,
      answers: {
        200: {
          description: "The provider's authorization URL",
          schema: z.object({ authorizationUrl: z.url() }),
        },
      },
      errors: ["NOT_FOUND", "RATE_LIMITED", "PROVIDER_UNAVAILABLE"],
    },
    requireSession,
    startLink,
  );
  route.get(
    "/accounts",
    {
      summary: "The user's linked providers",
      tag: "auth",
      access: "session",
      answers: {
        200: {
          description: "Linked providers",
          schema: z.object({ accounts: z.array(linkedAccountSchema) }),
        },
      },
    },
    requireSession,
    listAccounts,
  );
  route.delete(
    "/accounts/:id",
    {
      summary: "Unlink a provider",
      description:
        "Refused when it would leave the user no way to sign in (no password, no proven address, no other provider).",
      tag: "auth",
      access: "session",
      params: { id: "The linked account's id" },
      answers: { 204: { description: "Unlinked" } },
      errors: ["LAST_SIGN_IN_METHOD"],
    },
    requireSession,
    unlinkAccount,
  );

  return auth;
}
