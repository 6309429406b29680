// /v1/auth: sign-up, sign-in/out, sessions, email verification, password reset/change and magic links.
// The handlers live in ./auth/ by concern; this file registers them, in the order Hono matches them.
import { Hono } from "hono";
import type { AppEnv } from "../context.ts";
import type { Guards } from "../guards.ts";
import { changePassword, resetPassword } from "./auth/password.ts";
import {
  currentSession,
  listSessions,
  revokeOtherSessions,
  revokeSession,
  signOut,
} from "./auth/sessions.ts";
import { linkRequest } from "./auth/shared.ts";
import { signIn, verifyMagicLink } from "./auth/sign-in.ts";
import { resendVerification, signUp, verifyEmail } from "./auth/sign-up.ts";

export { confirmPassword, signedInRecently } from "./auth/shared.ts";

export function authRoutes({ requireSession }: Guards): Hono<AppEnv> {
  const auth = new Hono<AppEnv>();

  auth.post("/sign-up", signUp);
  auth.post("/sign-in", signIn);
  auth.post("/sign-out", requireSession, signOut);
  auth.get("/session", requireSession, currentSession);
  auth.get("/sessions", requireSession, listSessions);
  auth.delete("/sessions/:id", requireSession, revokeSession);
  auth.post("/sessions/revoke-others", requireSession, revokeOtherSessions);
  auth.post("/email/verify", verifyEmail);
  auth.post("/email/verify/resend", requireSession, resendVerification);
  auth.post("/password/forgot", linkRequest("password_reset"));
  auth.post("/magic-link", linkRequest("magic_link"));
  auth.post("/password/reset", resetPassword);
  auth.post("/password/change", requireSession, changePassword);
  auth.post("/magic-link/verify", verifyMagicLink);

  return auth;
}
