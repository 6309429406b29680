// /v1/auth passwords: reset with a mailed link, and change while signed in. (Forgot password shares its
// handler with the magic link request: linkRequest in shared.ts.)
import { OneTimeTokensService, SessionsService, UsersService } from "@repo/db";
import type { Context } from "hono";
import { audited, auditFor } from "../../audit.ts";
import type { AppEnv } from "../../context.ts";
import { ApiError } from "../../errors.ts";
import { clearSessionCookie, rateLimit, readJson } from "../../http.ts";
import { userView } from "../../views.ts";
import {
  appHome,
  changeBody,
  confirmPassword,
  limitLinkUse,
  mailBudget,
  passwordOptions,
  resetBody,
  sendInBackground,
  signedIn,
} from "./shared.ts";

/**
 * Reset: the token is checked cheaply first (no argon2 for a dead link), the new password checked and hashed
 * outside any transaction, then one transaction uses the token (which must have been sent to the user's
 * current address), sets the password, ends every session and retires every other token.
 */
export async function resetPassword(c: Context<AppEnv>) {
  const body = await readJson(c, resetBody);
  await limitLinkUse(c);
  const user = await resetWithLink(c, body.token, body.password);
  return c.json({ user: userView(user) });
}

/**
 * The reset itself (the JSON route and the reset page, each after limitLinkUse): the user, signed out
 * everywhere, with a new password.
 */
export async function resetWithLink(c: Context<AppEnv>, token: string, newPassword: string) {
  const log = c.get("log");
  const pending = await OneTimeTokensService.peek(token, "password_reset", log);
  if (!pending?.userId) throw new ApiError("TOKEN_INVALID");
  const password = await UsersService.preparePassword(
    { password: newPassword, email: pending.sentTo },
    log,
    passwordOptions(c),
  );
  const { user } = await UsersService.useEmailLink(
    { token, purpose: "password_reset", newPassword: password },
    log,
    {
      audit: auditFor(c, ({ user, firstProof, revokedSessions }) => [
        firstProof && [
          "email_verified",
          { subject: user.id, actor: "subject", details: { method: "password_reset" } },
        ],
        ["password_reset", { subject: user.id, actor: "subject", details: { revokedSessions } }],
      ]),
    },
  );
  clearSessionCookie(c);
  if (user.email && (await mailBudget(c, "notice", user.email))) {
    sendInBackground(
      c,
      user.email,
      "Your password was reset",
      `The password of your account was just reset with a link mailed to this address, and every session was signed out.\n\nIf it was not you, reset it again at ${appHome(c)} and check your mailbox's security.\n`,
    );
  }
  return user;
}

export async function changePassword(c: Context<AppEnv>) {
  const body = await readJson(c, changeBody);
  const log = c.get("log");
  const current = c.get("user");
  const { config } = c.get("deps");
  // Changes themselves are limited per session too (each mails a notice and ends the other sessions).
  await rateLimit(
    c,
    "password-change:session",
    c.get("session").id,
    config.RATE_LIMIT_REAUTH_FAILURES_PER_SESSION,
  );
  await confirmPassword(c, body.currentPassword);
  const password = await UsersService.preparePassword(
    { password: body.newPassword, email: current.email },
    log,
    passwordOptions(c),
  );
  // Keep only this session, under a new token: whoever held the old one (or any other) is out, and every
  // pending link (reset, magic link, verification) dies with the old password.
  const rotated = await audited(c, async (tx, record) => {
    await UsersService.setPassword({ id: current.id, password }, log, { tx });
    const revokedSessions = await SessionsService.revokeAllForUser(
      { userId: current.id, except: c.get("session").id },
      log,
      { tx },
    );
    // On an account whose address is not proven yet, every link stays: they are how its owner proves it,
    // and whoever set the password before that proof must not be able to keep killing them.
    if (current.emailVerifiedAt) await OneTimeTokensService.invalidateForUser(current.id, {}, log, { tx });
    const next = await SessionsService.rotate(c.get("sessionToken"), log, { tx });
    await record("password_changed", { subject: current.id, details: { revokedSessions } });
    return next;
  });
  if (current.email && (await mailBudget(c, "notice", current.email))) {
    sendInBackground(
      c,
      current.email,
      "Your password was changed",
      `The password of your account was just changed, and every other session was signed out.\n\nIf it was not you, reset your password at ${appHome(c)} now.\n`,
    );
  }
  // A bearer-authenticated client gets the new token in the body, a browser the new cookie (wantsBearer).
  return signedIn(c, rotated, current);
}
