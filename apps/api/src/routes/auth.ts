// /v1/auth: sign-up, sign-in/out, sessions, email verification, password reset/change and magic links.
// The handlers live in ./auth/ by concern; this file registers them, in the order Hono matches them.
import { Hono } from "hono";
import { z } from "zod";
import type { AppEnv } from "../context.ts";
import type { Guards } from "../guards.ts";
import { documented, sessionSchema, signedInSchema, statusSchema, userSchema } from "../openapi.ts";
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

  return auth;
}
