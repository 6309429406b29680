// /v1/auth: sign-up, sign-in/out, sessions, email verification, password reset/change and magic links.
import {
  isDbError,
  OneTimeTokensService,
  type PublicSession,
  type PublicUser,
  SessionsService,
  transaction,
  UsersService,
} from "@repo/db";
import { type Context, Hono } from "hono";
import { z } from "zod";
import type { AppEnv } from "../context.ts";
import { ApiError } from "../errors.ts";
import type { Guards } from "../guards.ts";
import {
  clearHits,
  clearSessionCookie,
  clientAddress,
  clientNetwork,
  countHit,
  digestKey,
  presentedToken,
  rateLimit,
  rateLimited,
  readJson,
  setSessionCookie,
  wantsBearer,
  withinLimit,
} from "../http.ts";
import { sessionView, userView } from "../views.ts";

const email = z.string().trim().min(3).max(254);
const password = z.string().min(1).max(1024);
const token = z.string().min(1).max(256);
const name = z.string().max(200).nullish();

const signUpBody = z.strictObject({ email, password, firstName: name, lastName: name });
const signInBody = z.strictObject({ email, password });
const tokenBody = z.strictObject({ token });
const verifyBody = z.strictObject({ token, password: password.optional() });
const emailBody = z.strictObject({ email });
const resetBody = z.strictObject({ token, password });
const changeBody = z.strictObject({ currentPassword: password, newPassword: password });
const sessionIdParam = z.guid("must be a UUID");

function link(c: Context<AppEnv>, path: string, secret: string): string {
  // APP_URL may carry a base path (https://example.com/app): links go under it, not beside it.
  const base = c.var.deps.config.APP_URL.replace(/\/+$/, "");
  const url = new URL(`${base}/${path.replace(/^\/+/, "")}`);
  url.searchParams.set("token", secret);
  return url.toString();
}

/** The app's own address, for mails that send the reader there. */
function appHome(c: Context<AppEnv>): string {
  return c.var.deps.config.APP_URL;
}

/** Sends after the response: the answer neither waits for nor depends on delivery. */
function sendInBackground(c: Context<AppEnv>, to: string, subject: string, text: string): void {
  const { mailer, tasks } = c.var.deps;
  tasks.run("mail", c.var.log, () => mailer.send({ to, subject, text }));
}

/** What a new session records about the request that started it. */
function sessionFields(c: Context<AppEnv>, authMethod: string) {
  const ip = clientAddress(c);
  return {
    authMethod,
    ipAddress: ip === "unknown" ? null : ip,
    userAgent: c.req.header("user-agent")?.slice(0, 1024) ?? null,
  };
}

/** A session presented before sign-in is ended, never reused (session fixation). */
async function endPresentedSession(c: Context<AppEnv>): Promise<void> {
  const presented = presentedToken(c);
  if (!presented) return;
  const auth = await SessionsService.validate(presented.token, c.var.log);
  if (auth) await SessionsService.revoke(auth.session.id, c.var.log);
}

/**
 * The answer that starts a session: browsers get only the HttpOnly cookie; clients that asked for a bearer
 * token (X-Auth-Mode: bearer) get it in the body and no cookie.
 */
function signedIn(
  c: Context<AppEnv>,
  result: { session: PublicSession; token: string },
  user: PublicUser,
  status: 200 | 201 = 200,
) {
  const answer = { user: userView(user), session: sessionView(result.session) };
  if (wantsBearer(c)) return c.json({ ...answer, token: result.token }, status);
  setSessionCookie(c, result.token, result.session.expiresAt);
  return c.json(answer, status);
}

/** The breach check of new passwords, when PASSWORD_BREACH_CHECK_URL is set. */
function passwordOptions(c: Context<AppEnv>) {
  const { config } = c.var.deps;
  return config.PASSWORD_BREACH_CHECK_URL
    ? {
        breachCheck: {
          url: config.PASSWORD_BREACH_CHECK_URL,
          timeoutMs: config.PASSWORD_BREACH_CHECK_TIMEOUT_MS,
        },
      }
    : {};
}

/** The per-call session configuration: the configured cap of live sessions per user. */
function sessionConfig(c: Context<AppEnv>) {
  return { maxPerUser: c.var.deps.config.SESSION_MAX_PER_USER };
}

/**
 * The mail budget of an address, per kind ("sign-up": sign-up and unverified sign-in mails; "link": reset,
 * magic link and verification resend; "notice": password changed or reset), counted per (address, client
 * network), so one network cannot spend another's share, and per address under a higher ceiling, which bounds
 * the mail an address can be sent (someone with enough networks can still spend that for a window). Silent
 * (returns false) by default, so answers stay alike; `loud` throws RATE_LIMITED instead.
 */
async function mailBudget(
  c: Context<AppEnv>,
  kind: "sign-up" | "link" | "notice",
  email: string,
  options: { loud?: boolean } = {},
): Promise<boolean> {
  const { config } = c.var.deps;
  const recipient = digestKey(email);
  const checks = [
    {
      bucket: `mail:${kind}:recipient-network`,
      key: `${recipient}:${clientNetwork(c)}`,
      limit: config.RATE_LIMIT_EMAIL_PER_RECIPIENT,
    },
    { bucket: `mail:${kind}:recipient`, key: recipient, limit: config.RATE_LIMIT_EMAIL_PER_RECIPIENT_TOTAL },
  ];
  for (const { bucket, key, limit } of checks) {
    if (options.loud) await rateLimit(c, bucket, key, limit);
    else if (!(await withinLimit(c, bucket, key, limit))) return false;
  }
  return true;
}

/**
 * Using a link is a sign-in attempt (and may cost an argon2 check or hash): it counts against the client
 * network's sign-in attempts, so nobody can spend the server's CPU on links without limit.
 */
async function limitLinkUse(c: Context<AppEnv>): Promise<void> {
  await rateLimit(c, "sign-in:client", clientNetwork(c), c.var.deps.config.RATE_LIMIT_SIGN_IN_PER_CLIENT);
}

/**
 * Uses a mailed link and signs in, in one transaction (UsersService.useEmailLink). A sign-up's verification
 * link also needs the password that sign-up chose; a wrong one says so, and the link stays usable for up to
 * LINK_MAX_ATTEMPTS guesses in all.
 */
async function useLink(
  c: Context<AppEnv>,
  token: string,
  purpose: "email_verification" | "magic_link",
  authMethod: string,
  password?: string,
) {
  try {
    const result = await UsersService.useEmailLink(
      { token, purpose, ...(password === undefined ? {} : { password }) },
      c.var.log,
      { session: sessionFields(c, authMethod), sessionConfig: sessionConfig(c) },
    );
    if (!result.session) throw new Error("useEmailLink created no session");
    return { user: result.user, session: result.session };
  } catch (error) {
    if (isDbError(error, "INVALID_CREDENTIALS")) {
      throw new ApiError(
        "INVALID_CREDENTIALS",
        "This is not the password of the sign-up this link confirms. Enter the password you chose, or sign up again for a new link",
      );
    }
    throw error;
  }
}

const CHECK_EMAIL = { status: "check_email" } as const;
/** How recent a sign-in must be to delete an account that has no password. */
const RECENT_SIGN_IN_MS = 10 * 60_000;

export function authRoutes({ requireSession }: Guards): Hono<AppEnv> {
  const auth = new Hono<AppEnv>();

  /**
   * Sign-up. By default it grants nothing before the address is proven: the answer is the same 202 for a new
   * address, one with an unverified account and one with a verified account, and only a mail differs (a
   * verification link, or a notice to the owner). The password is hashed before any transaction opens.
   */
  auth.post("/sign-up", async (c) => {
    const body = await readJson(c, signUpBody);
    const { config } = c.var.deps;
    const log = c.var.log;
    await rateLimit(c, "sign-up:client", clientNetwork(c), config.RATE_LIMIT_SIGN_UP_PER_CLIENT);
    const password = await UsersService.preparePassword(
      { password: body.password, email: body.email },
      log,
      passwordOptions(c),
    );
    // The address's sign-up mail budget is checked before anything is written, and silently: past it the
    // answer is the same 202 and nothing happens (no retired link, no mail), so sign-ups by someone else
    // cannot flood the address or keep replacing its owner's link.
    if (!(await mailBudget(c, "sign-up", body.email))) return c.json(CHECK_EMAIL, 202);
    const registration = await UsersService.register(
      { email: body.email, password, firstName: body.firstName, lastName: body.lastName },
      log,
      { passwordBeforeVerification: config.SIGN_IN_BEFORE_EMAIL_VERIFICATION },
    );
    const to = registration.user.email ?? body.email;
    if (registration.verification) {
      sendInBackground(
        c,
        to,
        "Confirm your email address",
        `Someone (hopefully you) signed up with this address. To finish, open this link within a day and enter the password you chose:\n\n${link(c, "/verify-email", registration.verification.token)}\n\nIf it was not you, ignore this message: nothing happens without this link and that password.\n`,
      );
    } else {
      sendInBackground(
        c,
        to,
        "Someone tried to sign up with your address",
        `Someone tried to create an account with this address, which already has one. Nothing changed.\n\nIf it was you, sign in at ${appHome(c)}, or reset your password there if you forgot it.\nIf it was not you, you can ignore this message.\n`,
      );
    }
    if (config.SIGN_IN_BEFORE_EMAIL_VERIFICATION && registration.outcome === "created") {
      const session = await SessionsService.create(
        { userId: registration.user.id, ...sessionFields(c, "password") },
        log,
        { config: sessionConfig(c) },
      );
      await endPresentedSession(c);
      return signedIn(c, session, registration.user, 201);
    }
    return c.json(CHECK_EMAIL, 202);
  });

  /**
   * Password sign-in. Failures are counted per (account, client network) (a tight limit) and per account (a
   * loose cap, past which password sign-in for that account needs a mailed link). Each attempt reserves a
   * failure before the password is checked, so parallel guesses cannot slip under a limit; a success gives
   * its reservation back and clears that network's failures. Someone failing from other networks therefore
   * never blocks the owner's correct password from theirs.
   */
  auth.post("/sign-in", async (c) => {
    const body = await readJson(c, signInBody);
    const { config, tasks, mailer } = c.var.deps;
    const log = c.var.log;
    const network = clientNetwork(c);
    const account = digestKey(body.email);
    const pair = `${account}:${network}`;
    await rateLimit(c, "sign-in:client", network, config.RATE_LIMIT_SIGN_IN_PER_CLIENT);
    const pairHit = await countHit(
      c,
      "sign-in:failures:pair",
      pair,
      config.RATE_LIMIT_SIGN_IN_FAILURES_PER_ACCOUNT_NETWORK,
    );
    if (pairHit.over) throw rateLimited(c, "sign-in:failures:pair", pairHit);
    const accountHit = await countHit(
      c,
      "sign-in:failures:account",
      account,
      config.RATE_LIMIT_SIGN_IN_FAILURES_PER_ACCOUNT,
    );
    if (accountHit.over) {
      // No password was checked: the reservation on this network is given back.
      await countHit(
        c,
        "sign-in:failures:pair",
        pair,
        config.RATE_LIMIT_SIGN_IN_FAILURES_PER_ACCOUNT_NETWORK,
        -1,
      );
      // The same answer for every address, with or without an account; the owner (if any) gets a link once,
      // when the cap is first crossed.
      if (accountHit.value === config.RATE_LIMIT_SIGN_IN_FAILURES_PER_ACCOUNT + 1) {
        tasks.run("sign-in-link", log, async () => {
          const user = await UsersService.findByEmail(body.email, log).catch(() => null);
          if (!user?.email) return;
          const { token } = await OneTimeTokensService.create(
            { userId: user.id, purpose: "magic_link", sentTo: user.email },
            log,
          );
          await mailer.send({
            to: user.email,
            subject: "Many failed sign-ins on your account",
            text: `Someone tried many wrong passwords on your account, so password sign-in is paused for a while. Your password was not changed.\n\nTo sign in now, open this link within 15 minutes:\n\n${link(c, "/magic-link", token)}\n\nIf you did not try to sign in, consider resetting your password at ${appHome(c)}.\n`,
          });
        });
      }
      throw new ApiError("SIGN_IN_LINK_REQUIRED", undefined, { retryAfter: accountHit.retryAfter });
    }
    let signed: Awaited<ReturnType<typeof UsersService.signIn>>;
    try {
      // The session is created only if the password checked is still the account's when it is written.
      signed = await UsersService.signIn({ email: body.email, password: body.password }, log, {
        requireVerifiedEmail: !config.SIGN_IN_BEFORE_EMAIL_VERIFICATION,
        session: sessionFields(c, "password"),
        sessionConfig: sessionConfig(c),
      });
    } catch (error) {
      if (isDbError(error, "EMAIL_NOT_VERIFIED")) {
        // The right password for an unproven address: it answers like a wrong one (an unverified account
        // grants nothing), and the address gets a fresh link, within its silent sign-up mail budget. The
        // budget is counted after the answer too, so the answer takes no longer than a wrong password's.
        tasks.run("verification", log, async () => {
          if (!(await mailBudget(c, "sign-up", body.email))) return;
          const sent = await UsersService.sendVerification({ email: body.email }, log);
          if (!sent) return;
          await mailer.send({
            to: sent.record.sentTo,
            subject: "Confirm your email address",
            text: `Someone tried to sign in with this address, which is not confirmed yet. To confirm it and sign in, open this link within a day and enter your password:\n\n${link(c, "/verify-email", sent.token)}\n\nIf it was not you, ignore this message.\n`,
          });
        });
        throw new ApiError("INVALID_CREDENTIALS");
      }
      // A malformed email answers exactly like a wrong password: nothing tells which addresses exist.
      if (isDbError(error, "VALIDATION_FAILED")) throw new ApiError("INVALID_CREDENTIALS");
      throw error;
    }
    // A success: this network's failures are forgotten and the account's reserved failure given back.
    await clearHits(c, "sign-in:failures:pair", pair);
    await countHit(
      c,
      "sign-in:failures:account",
      account,
      config.RATE_LIMIT_SIGN_IN_FAILURES_PER_ACCOUNT,
      -1,
    );
    await endPresentedSession(c);
    return signedIn(c, signed, signed.user);
  });

  auth.post("/sign-out", requireSession, async (c) => {
    await SessionsService.revoke(c.var.session.id, c.var.log);
    clearSessionCookie(c);
    return c.body(null, 204);
  });

  auth.get("/session", requireSession, (c) =>
    c.json({ user: userView(c.var.user), session: sessionView(c.var.session) }),
  );

  auth.get("/sessions", requireSession, async (c) => {
    const sessions = await SessionsService.listForUser(c.var.user.id, c.var.log);
    return c.json({ sessions: sessions.map((session) => sessionView(session, c.var.session.id)) });
  });

  auth.delete("/sessions/:id", requireSession, async (c) => {
    const parsed = sessionIdParam.safeParse(c.req.param("id"));
    if (!parsed.success) throw new ApiError("NOT_FOUND");
    const id = parsed.data.toLowerCase();
    // One UPDATE scoped to the caller: someone else's id is NOT_FOUND, exactly like an unknown one.
    await SessionsService.revoke(id, c.var.log, { userId: c.var.user.id });
    if (id === c.var.session.id) clearSessionCookie(c);
    return c.body(null, 204);
  });

  auth.post("/sessions/revoke-others", requireSession, async (c) => {
    const revoked = await SessionsService.revokeAllForUser(
      { userId: c.var.user.id, except: c.var.session.id },
      c.var.log,
    );
    return c.json({ revoked });
  });

  /**
   * The verification link: proves the address, sets the password its sign-up chose, and signs the user in.
   * When it is the first proof, every session and token set up before it ends (UsersService.useEmailLink).
   */
  auth.post("/email/verify", async (c) => {
    const body = await readJson(c, verifyBody);
    await limitLinkUse(c);
    const { user, session } = await useLink(
      c,
      body.token,
      "email_verification",
      "email_verification",
      body.password,
    );
    await endPresentedSession(c);
    return signedIn(c, session, user);
  });

  auth.post("/email/verify/resend", requireSession, async (c) => {
    const user = c.var.user;
    const { config } = c.var.deps;
    if (!user.email)
      throw new ApiError("VALIDATION_FAILED", "Invalid input: the account has no email address");
    if (user.emailVerifiedAt) return c.json({ status: "already_verified" });
    await rateLimit(c, "email:client", clientNetwork(c), config.RATE_LIMIT_EMAIL_PER_CLIENT);
    await mailBudget(c, "link", user.email, { loud: true });
    const sent = await UsersService.sendVerification({ userId: user.id }, c.var.log);
    if (!sent) return c.json({ status: "already_verified" });
    sendInBackground(
      c,
      sent.record.sentTo,
      "Confirm your email address",
      `Confirm your email address by opening this link within a day:\n\n${link(c, "/verify-email", sent.token)}\n`,
    );
    return c.json({ status: "sent" }, 202);
  });

  /** Forgot password and magic link: the same answer whether or not the address has an account. */
  const linkRequest = (purpose: "password_reset" | "magic_link") => async (c: Context<AppEnv>) => {
    const body = await readJson(c, emailBody);
    const log = c.var.log;
    const { config, mailer, tasks } = c.var.deps;
    await rateLimit(c, "email:client", clientNetwork(c), config.RATE_LIMIT_EMAIL_PER_CLIENT);
    await mailBudget(c, "link", body.email, { loud: true });
    // The lookup, the token and the mail happen after the response, so neither the answer nor its timing
    // says whether the address has an account.
    tasks.run(purpose, log, async () => {
      const user = await UsersService.findByEmail(body.email, log).catch((error: unknown) => {
        if (isDbError(error, "VALIDATION_FAILED")) return null;
        throw error;
      });
      if (!user?.email) return;
      const { token: secret } = await OneTimeTokensService.create(
        { userId: user.id, purpose, sentTo: user.email },
        log,
      );
      const url = link(c, purpose === "password_reset" ? "/reset-password" : "/magic-link", secret);
      await mailer.send(
        purpose === "password_reset"
          ? {
              to: user.email,
              subject: "Reset your password",
              text: `Someone asked to reset your password. If it was you, open this link within an hour:\n\n${url}\n\nOtherwise ignore this message.\n`,
            }
          : {
              to: user.email,
              subject: "Your sign-in link",
              text: `Open this link within 15 minutes to sign in:\n\n${url}\n`,
            },
      );
    });
    return c.json({ status: "sent" }, 202);
  };
  auth.post("/password/forgot", linkRequest("password_reset"));
  auth.post("/magic-link", linkRequest("magic_link"));

  /**
   * Reset: the token is checked cheaply first (no argon2 for a dead link), the new password checked and hashed
   * outside any transaction, then one transaction uses the token (which must have been sent to the user's
   * current address), sets the password, ends every session and retires every other token.
   */
  auth.post("/password/reset", async (c) => {
    const body = await readJson(c, resetBody);
    const log = c.var.log;
    await limitLinkUse(c);
    const pending = await OneTimeTokensService.peek(body.token, "password_reset", log);
    if (!pending?.userId) throw new ApiError("TOKEN_INVALID");
    const password = await UsersService.preparePassword(
      { password: body.password, email: pending.sentTo },
      log,
      passwordOptions(c),
    );
    const { user } = await UsersService.useEmailLink(
      { token: body.token, purpose: "password_reset", newPassword: password },
      log,
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
    return c.json({ user: userView(user) });
  });

  auth.post("/password/change", requireSession, async (c) => {
    const body = await readJson(c, changeBody);
    const log = c.var.log;
    const current = c.var.user;
    const { config } = c.var.deps;
    // Changes themselves are limited per session too (each mails a notice and ends the other sessions).
    await rateLimit(
      c,
      "password-change:session",
      c.var.session.id,
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
    const rotated = await transaction(async (tx) => {
      await UsersService.setPassword({ id: current.id, password }, log, { tx });
      await SessionsService.revokeAllForUser({ userId: current.id, except: c.var.session.id }, log, { tx });
      // On an account whose address is not proven yet, every link stays: they are how its owner proves it,
      // and whoever set the password before that proof must not be able to keep killing them.
      if (current.emailVerifiedAt) await OneTimeTokensService.invalidateForUser(current.id, {}, log, { tx });
      return await SessionsService.rotate(c.var.sessionToken, log, { tx });
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
  });

  auth.post("/magic-link/verify", async (c) => {
    const body = await readJson(c, tokenBody);
    await limitLinkUse(c);
    // Following the link proves the address; if it is the first proof, what was set up before it ends.
    const { user, session } = await useLink(c, body.token, "magic_link", "magic_link");
    await endPresentedSession(c);
    return signedIn(c, session, user);
  });

  return auth;
}

/**
 * Checks the signed-in user's current password before a sensitive change. Wrong answers are counted per
 * session (a stolen session gets a few guesses, not unlimited ones) and never against the account's sign-in
 * limits, so nobody can lock the owner out of their own settings.
 * @throws ApiError RATE_LIMITED, INVALID_CREDENTIALS.
 */
export async function confirmPassword(c: Context<AppEnv>, password: string): Promise<void> {
  const { config } = c.var.deps;
  const key = c.var.session.id;
  const hit = await countHit(c, "reauth:session", key, config.RATE_LIMIT_REAUTH_FAILURES_PER_SESSION);
  if (hit.over) throw rateLimited(c, "reauth:session", hit);
  const email = c.var.user.email;
  try {
    if (!email) throw new ApiError("INVALID_CREDENTIALS");
    await UsersService.verifyPassword({ email, password }, c.var.log);
  } catch (error) {
    if (isDbError(error, "EMAIL_NOT_VERIFIED") || isDbError(error, "VALIDATION_FAILED")) {
      throw new ApiError("INVALID_CREDENTIALS");
    }
    throw error;
  }
  await clearHits(c, "reauth:session", key);
}

/** True when the current session was created by a sign-in within the last ten minutes. */
export function signedInRecently(c: Context<AppEnv>): boolean {
  return c.var.deps.clock().getTime() - c.var.session.createdAt.getTime() <= RECENT_SIGN_IN_MS;
}
