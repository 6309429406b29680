// Shared by the /v1/auth handlers: request schemas, mailed links, session answers, mail budgets, and the
// re-authentication checks that /v1/users also uses.
import {
  isDbError,
  OneTimeTokensService,
  type PublicSession,
  type PublicUser,
  SessionsService,
  UsersService,
} from "@repo/db";
import type { Context } from "hono";
import { z } from "zod";
import { audited, auditFor } from "../../audit.ts";
import type { AppEnv } from "../../context.ts";
import { ApiError } from "../../errors.ts";
import {
  clearHits,
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
} from "../../http.ts";
import { sessionView, userView } from "../../views.ts";

const email = z.string().trim().min(3).max(254);
const password = z.string().min(1).max(1024);
const token = z.string().min(1).max(256);
const name = z.string().max(200).nullish();

export const signUpBody = z.strictObject({ email, password, firstName: name, lastName: name });
export const signInBody = z.strictObject({ email, password });
export const tokenBody = z.strictObject({ token });
export const verifyBody = z.strictObject({ token, password: password.optional() });
export const emailBody = z.strictObject({ email });
export const resetBody = z.strictObject({ token, password });
export const changeBody = z.strictObject({ currentPassword: password, newPassword: password });
export const sessionIdParam = z.guid("must be a UUID");

export function link(c: Context<AppEnv>, path: string, secret: string): string {
  // APP_URL may carry a base path (https://example.com/app): links go under it, not beside it.
  const base = c.get("deps").config.APP_URL.replace(/\/+$/, "");
  const url = new URL(`${base}/${path.replace(/^\/+/, "")}`);
  url.searchParams.set("token", secret);
  return url.toString();
}

/** The app's own address, for mails that send the reader there. */
export function appHome(c: Context<AppEnv>): string {
  return c.get("deps").config.APP_URL;
}

/** Sends after the response: the answer neither waits for nor depends on delivery. */
export function sendInBackground(c: Context<AppEnv>, to: string, subject: string, text: string): void {
  const { mailer, tasks } = c.get("deps");
  tasks.run("mail", c.get("log"), () => mailer.send({ to, subject, text }));
}

/** What a new session records about the request that started it. */
export function sessionFields(c: Context<AppEnv>, authMethod: string) {
  const ip = clientAddress(c);
  return {
    authMethod,
    ipAddress: ip === "unknown" ? null : ip,
    userAgent: c.req.header("user-agent")?.slice(0, 1024) ?? null,
  };
}

/** A session presented before sign-in is ended, never reused (session fixation); `keep` is the new one. */
export async function endPresentedSession(c: Context<AppEnv>, keep?: string): Promise<void> {
  const presented = presentedToken(c);
  if (!presented) return;
  const auth = await SessionsService.validate(presented.token, c.get("log"));
  if (auth && auth.session.id !== keep) await SessionsService.revoke(auth.session.id, c.get("log"));
}

/**
 * The answer that starts a session: browsers get only the HttpOnly cookie; clients that asked for a bearer
 * token (X-Auth-Mode: bearer) get it in the body and no cookie.
 */
export function signedIn(
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
export function passwordOptions(c: Context<AppEnv>) {
  const { config } = c.get("deps");
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
export function sessionConfig(c: Context<AppEnv>) {
  return { maxPerUser: c.get("deps").config.SESSION_MAX_PER_USER };
}

/**
 * The mail budget of an address, per kind ("sign-up": sign-up and unverified sign-in mails; "link": reset,
 * magic link and verification resend; "notice": password changed or reset), counted per (address, client
 * network), so one network cannot spend another's share, and per address under a higher ceiling, which bounds
 * the mail an address can be sent (someone with enough networks can still spend that for a window). Silent
 * (returns false) by default, so answers stay alike; `loud` throws RATE_LIMITED instead.
 */
export async function mailBudget(
  c: Context<AppEnv>,
  kind: "sign-up" | "link" | "notice",
  email: string,
  options: { loud?: boolean } = {},
): Promise<boolean> {
  const { config } = c.get("deps");
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
export async function limitLinkUse(c: Context<AppEnv>): Promise<void> {
  await rateLimit(c, "sign-in:client", clientNetwork(c), c.get("deps").config.RATE_LIMIT_SIGN_IN_PER_CLIENT);
}

/**
 * Uses a mailed link and signs in, in one transaction (UsersService.useEmailLink). A sign-up's verification
 * link also needs the password that sign-up chose; a wrong one says so, and the link stays usable for up to
 * LINK_MAX_ATTEMPTS guesses in all.
 */
export async function useLink(
  c: Context<AppEnv>,
  token: string,
  purpose: "email_verification" | "magic_link",
  authMethod: string,
  password?: string,
) {
  try {
    const result = await UsersService.useEmailLink(
      { token, purpose, ...(password === undefined ? {} : { password }) },
      c.get("log"),
      {
        session: sessionFields(c, authMethod),
        sessionConfig: sessionConfig(c),
        audit: auditFor(c, ({ user, firstProof, revokedSessions }) => [
          firstProof && [
            "email_verified",
            { subject: user.id, actor: "subject", details: { method: purpose, revokedSessions } },
          ],
          ["sign_in", { subject: user.id, actor: "subject", details: { method: purpose } }],
        ]),
      },
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

/**
 * Mails a reset or sign-in link to `email` if it has an account. Rate limits and the address's mail budget are
 * checked now (RATE_LIMITED); the lookup, the token and the mail happen after the answer, so neither the answer
 * nor its timing says whether the address has an account.
 */
export async function requestLink(
  c: Context<AppEnv>,
  purpose: "password_reset" | "magic_link",
  email: string,
): Promise<void> {
  const log = c.get("log");
  const { config, mailer, tasks } = c.get("deps");
  await rateLimit(c, "email:client", clientNetwork(c), config.RATE_LIMIT_EMAIL_PER_CLIENT);
  await mailBudget(c, "link", email, { loud: true });
  tasks.run(purpose, log, async () => {
    const user = await UsersService.findByEmail(email, log).catch((error: unknown) => {
      if (isDbError(error, "VALIDATION_FAILED")) return null;
      throw error;
    });
    if (!user?.email) return;
    const { token: secret } =
      purpose === "magic_link"
        ? await issueMagicLink(c, user.id, user.email, "requested")
        : await OneTimeTokensService.create({ userId: user.id, purpose, sentTo: user.email }, log);
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
}

/**
 * A new magic link for a user, recorded in the trail (magic_link_sent) in the transaction that issues it. The
 * caller mails it.
 */
export async function issueMagicLink(c: Context<AppEnv>, userId: string, email: string, reason: string) {
  return await audited(c, async (tx, record) => {
    const issued = await OneTimeTokensService.create(
      { userId, purpose: "magic_link", sentTo: email },
      c.get("log"),
      { tx },
    );
    await record("magic_link_sent", { subject: userId, actor: "anonymous", details: { reason } });
    return issued;
  });
}

/** Forgot password and magic link: the same answer whether or not the address has an account. */
export const linkRequest = (purpose: "password_reset" | "magic_link") => async (c: Context<AppEnv>) => {
  const body = await readJson(c, emailBody);
  await requestLink(c, purpose, body.email);
  return c.json({ status: "sent" }, 202);
};

/**
 * Signs in with a mailed link (a verification link with its sign-up's password, or a magic link): counts as a
 * sign-in attempt of the client network, uses the link, and ends any session presented with the request.
 */
export async function signInWithLink(
  c: Context<AppEnv>,
  token: string,
  purpose: "email_verification" | "magic_link",
  password?: string,
) {
  await limitLinkUse(c);
  // Following the link proves the address; if it is the first proof, what was set up before it ends.
  const result = await useLink(c, token, purpose, purpose, password);
  await endPresentedSession(c);
  return result;
}

/**
 * Checks the signed-in user's current password before a sensitive change. Wrong answers are counted per
 * session (a stolen session gets a few guesses, not unlimited ones) and never against the account's sign-in
 * limits, so nobody can lock the owner out of their own settings.
 * @throws ApiError RATE_LIMITED, INVALID_CREDENTIALS.
 */
export async function confirmPassword(c: Context<AppEnv>, password: string): Promise<void> {
  const { config } = c.get("deps");
  const key = c.get("session").id;
  const hit = await countHit(c, "reauth:session", key, config.RATE_LIMIT_REAUTH_FAILURES_PER_SESSION);
  if (hit.over) throw rateLimited(c, "reauth:session", hit);
  const email = c.get("user").email;
  try {
    if (!email) throw new ApiError("INVALID_CREDENTIALS");
    await UsersService.verifyPassword({ email, password }, c.get("log"));
  } catch (error) {
    if (isDbError(error, "EMAIL_NOT_VERIFIED") || isDbError(error, "VALIDATION_FAILED")) {
      throw new ApiError("INVALID_CREDENTIALS");
    }
    throw error;
  }
  await clearHits(c, "reauth:session", key);
}

/** How recent a sign-in must be to delete an account that has no password. */
const RECENT_SIGN_IN_MS = 10 * 60_000;

/** True when the current session was created by a sign-in within the last ten minutes. */
export function signedInRecently(c: Context<AppEnv>): boolean {
  return c.get("deps").clock().getTime() - c.get("session").createdAt.getTime() <= RECENT_SIGN_IN_MS;
}
