// /v1/auth: sign-up, sign-in/out, sessions, email verification, password reset/change and magic links.
import {
  OneTimeTokensService,
  type PublicSession,
  type PublicUser,
  SessionsService,
  type Transaction,
  transaction,
  UsersService,
} from "@repo/db";
import { type Context, Hono } from "hono";
import { z } from "zod";
import type { AppEnv } from "../context.ts";
import { ApiError } from "../errors.ts";
import {
  clearSessionCookie,
  clientAddress,
  digestKey,
  presentedToken,
  rateLimit,
  readJson,
  requireSession,
  setSessionCookie,
} from "../http.ts";

const email = z.string().trim().min(3).max(254);
const password = z.string().min(1).max(1024);
const token = z.string().min(1).max(256);
const name = z.string().max(200).nullish();

const signUpBody = z.strictObject({ email, password, firstName: name, lastName: name });
const signInBody = z.strictObject({ email, password });
const tokenBody = z.strictObject({ token });
const emailBody = z.strictObject({ email });
const resetBody = z.strictObject({ token, password });
const changeBody = z.strictObject({ currentPassword: password, newPassword: password });
const sessionIdParam = z.guid("must be a UUID");

/** What a client sees of a session. */
function sessionView(session: PublicSession, currentId?: string) {
  return {
    id: session.id,
    authMethod: session.authMethod,
    ipAddress: session.ipAddress,
    userAgent: session.userAgent,
    createdAt: session.createdAt,
    lastAccessedAt: session.lastAccessedAt,
    expiresAt: session.expiresAt,
    ...(currentId === undefined ? {} : { current: session.id === currentId }),
  };
}

/** What a client sees of its user. */
export function userView(user: PublicUser) {
  return {
    id: user.id,
    email: user.email,
    emailVerifiedAt: user.emailVerifiedAt,
    phoneNumber: user.phoneNumber,
    firstName: user.firstName,
    lastName: user.lastName,
    avatarUrl: user.avatarUrl,
    metadata: user.metadata,
    lastSignInAt: user.lastSignInAt,
    createdAt: user.createdAt,
    updatedAt: user.updatedAt,
  };
}

function link(c: Context<AppEnv>, path: string, secret: string): string {
  // APP_URL may carry a base path (https://example.com/app): links go under it, not beside it.
  const base = c.var.deps.config.APP_URL.replace(/\/+$/, "");
  const url = new URL(`${base}/${path.replace(/^\/+/, "")}`);
  url.searchParams.set("token", secret);
  return url.toString();
}

/** Sends after the response: the answer neither waits for nor depends on delivery. */
function sendInBackground(c: Context<AppEnv>, to: string, subject: string, text: string): void {
  const { mailer, tasks } = c.var.deps;
  tasks.run("mail", c.var.log, () => mailer.send({ to, subject, text }));
}

function sessionInput(c: Context<AppEnv>, userId: string, authMethod: string) {
  const ip = clientAddress(c);
  return {
    userId,
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

async function signedIn(
  c: Context<AppEnv>,
  result: { session: PublicSession; token: string },
  user: PublicUser,
  status: 200 | 201 = 200,
) {
  setSessionCookie(c, result.token, result.session.expiresAt);
  return c.json({ user: userView(user), session: sessionView(result.session), token: result.token }, status);
}

export function authRoutes(): Hono<AppEnv> {
  const auth = new Hono<AppEnv>();

  auth.post("/sign-up", async (c) => {
    const body = await readJson(c, signUpBody);
    const { config } = c.var.deps;
    await rateLimit(c, "sign-up:client", clientAddress(c), config.RATE_LIMIT_SIGN_UP_PER_CLIENT);
    const log = c.var.log;
    // User, session and verification token commit together or not at all.
    const { user, session, verification } = await transaction(async (tx: Transaction) => {
      const user = await UsersService.create(
        { email: body.email, password: body.password, firstName: body.firstName, lastName: body.lastName },
        log,
        { tx },
      );
      const session = await SessionsService.create(sessionInput(c, user.id, "password"), log, { tx });
      const verification = await OneTimeTokensService.create(
        { userId: user.id, purpose: "email_verification", sentTo: user.email ?? body.email },
        log,
        { tx },
      );
      return { user, session, verification };
    });
    await endPresentedSession(c);
    sendInBackground(
      c,
      verification.record.sentTo,
      "Verify your email address",
      `Welcome! Confirm your email address by opening this link:\n\n${link(c, "/verify-email", verification.token)}\n`,
    );
    return signedIn(c, session, user, 201);
  });

  auth.post("/sign-in", async (c) => {
    const body = await readJson(c, signInBody);
    const { config } = c.var.deps;
    await rateLimit(c, "sign-in:client", clientAddress(c), config.RATE_LIMIT_SIGN_IN_PER_CLIENT);
    await rateLimit(c, "sign-in:account", digestKey(body.email), config.RATE_LIMIT_SIGN_IN_PER_ACCOUNT);
    let user: PublicUser;
    try {
      user = await UsersService.verifyPassword({ email: body.email, password: body.password }, c.var.log);
    } catch (error) {
      // A malformed email answers exactly like a wrong password: nothing tells which addresses exist.
      if (error instanceof Error && "code" in error && error.code === "VALIDATION_FAILED") {
        throw new ApiError("INVALID_CREDENTIALS");
      }
      throw error;
    }
    await endPresentedSession(c);
    const session = await SessionsService.create(sessionInput(c, user.id, "password"), c.var.log);
    const updated = await UsersService.update(
      { id: user.id, patch: { lastSignInAt: c.var.deps.clock() } },
      c.var.log,
    );
    return signedIn(c, session, updated);
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
    // Only the caller's own sessions: someone else's id answers exactly like an unknown one.
    const own = await SessionsService.listForUser(c.var.user.id, c.var.log);
    if (!own.some((session) => session.id === id)) throw new ApiError("NOT_FOUND");
    await SessionsService.revoke(id, c.var.log);
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

  auth.post("/email/verify", async (c) => {
    const body = await readJson(c, tokenBody);
    const log = c.var.log;
    const at = c.var.deps.clock();
    // Consume and mark verified in one transaction: a failed update gives the token back.
    const user = await transaction(async (tx) => {
      const record = await OneTimeTokensService.consume(body.token, "email_verification", log, { tx });
      if (!record?.userId) throw new ApiError("TOKEN_INVALID");
      const current = await UsersService.findById(record.userId, log, { tx });
      // The address changed since the link was sent: the link proves nothing about the new one.
      if (!current || current.email !== record.sentTo) throw new ApiError("TOKEN_INVALID");
      return await UsersService.update({ id: current.id, patch: { emailVerifiedAt: at } }, log, { tx });
    });
    return c.json({ user: userView(user) });
  });

  auth.post("/email/verify/resend", requireSession, async (c) => {
    const user = c.var.user;
    const { config } = c.var.deps;
    if (!user.email)
      throw new ApiError("VALIDATION_FAILED", "Invalid input: the account has no email address");
    if (user.emailVerifiedAt) return c.json({ status: "already_verified" });
    await rateLimit(c, "email:client", clientAddress(c), config.RATE_LIMIT_EMAIL_PER_CLIENT);
    await rateLimit(c, "email:recipient", digestKey(user.email), config.RATE_LIMIT_EMAIL_PER_RECIPIENT);
    const { token: secret } = await OneTimeTokensService.create(
      { userId: user.id, purpose: "email_verification", sentTo: user.email },
      c.var.log,
    );
    sendInBackground(
      c,
      user.email,
      "Verify your email address",
      `Confirm your email address by opening this link:\n\n${link(c, "/verify-email", secret)}\n`,
    );
    return c.json({ status: "sent" }, 202);
  });

  /** Forgot password and magic link: the same answer whether or not the address has an account. */
  const linkRequest = (purpose: "password_reset" | "magic_link") => async (c: Context<AppEnv>) => {
    const body = await readJson(c, emailBody);
    const log = c.var.log;
    const { config, mailer, tasks } = c.var.deps;
    await rateLimit(c, "email:client", clientAddress(c), config.RATE_LIMIT_EMAIL_PER_CLIENT);
    await rateLimit(c, "email:recipient", digestKey(body.email), config.RATE_LIMIT_EMAIL_PER_RECIPIENT);
    // The lookup, the token and the mail happen after the response, so neither the answer nor its timing
    // says whether the address has an account.
    tasks.run(purpose, log, async () => {
      const user = await UsersService.findByEmail(body.email, log).catch((error: unknown) => {
        if (error instanceof Error && "code" in error && error.code === "VALIDATION_FAILED") return null;
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

  auth.post("/password/reset", async (c) => {
    const body = await readJson(c, resetBody);
    const log = c.var.log;
    // One transaction: use the token, set the password, end every session and retire the user's other
    // live tokens. Of concurrent resets with one token, exactly one consumes it; a failure undoes it all.
    const user = await transaction(async (tx) => {
      const record = await OneTimeTokensService.consume(body.token, "password_reset", log, { tx });
      if (!record?.userId) throw new ApiError("TOKEN_INVALID");
      const user = await UsersService.setPassword({ id: record.userId, password: body.password }, log, {
        tx,
      });
      await SessionsService.revokeAllForUser({ userId: user.id }, log, { tx });
      await OneTimeTokensService.invalidateForUser(user.id, {}, log, { tx });
      return user;
    });
    clearSessionCookie(c);
    return c.json({ user: userView(user) });
  });

  auth.post("/password/change", requireSession, async (c) => {
    const body = await readJson(c, changeBody);
    const log = c.var.log;
    const current = c.var.user;
    if (!current.email) throw new ApiError("INVALID_CREDENTIALS");
    // The current-password check is a sign-in attempt: a stolen session must not get unlimited guesses.
    await rateLimit(
      c,
      "sign-in:account",
      digestKey(current.email),
      c.var.deps.config.RATE_LIMIT_SIGN_IN_PER_ACCOUNT,
    );
    await UsersService.verifyPassword({ email: current.email, password: body.currentPassword }, log);
    // Keep only this session, under a new token: whoever held the old one (or any other) is out.
    const rotated = await transaction(async (tx) => {
      await UsersService.setPassword({ id: current.id, password: body.newPassword }, log, { tx });
      await SessionsService.revokeAllForUser({ userId: current.id, except: c.var.session.id }, log, { tx });
      await OneTimeTokensService.invalidateForUser(current.id, { purpose: "password_reset" }, log, { tx });
      return await SessionsService.rotate(c.var.sessionToken, log, { tx });
    });
    return signedIn(c, rotated, current);
  });

  auth.post("/magic-link/verify", async (c) => {
    const body = await readJson(c, tokenBody);
    const log = c.var.log;
    const at = c.var.deps.clock();
    const { user, session } = await transaction(async (tx) => {
      const record = await OneTimeTokensService.consume(body.token, "magic_link", log, { tx });
      if (!record?.userId) throw new ApiError("TOKEN_INVALID");
      const found = await UsersService.findById(record.userId, log, { tx });
      if (!found || found.email !== record.sentTo) throw new ApiError("TOKEN_INVALID");
      // Following the link proves the address.
      const user = await UsersService.update(
        {
          id: found.id,
          patch: { lastSignInAt: at, ...(found.emailVerifiedAt ? {} : { emailVerifiedAt: at }) },
        },
        log,
        { tx },
      );
      const session = await SessionsService.create(sessionInput(c, user.id, "magic_link"), log, { tx });
      return { user, session };
    });
    await endPresentedSession(c);
    return signedIn(c, session, user);
  });

  return auth;
}
