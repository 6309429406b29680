// /v1/auth sign-up and email verification: sign-up, the verification link and its resend.
import { SessionsService, UsersService } from "@repo/db";
import type { Context } from "hono";
import { audited } from "../../audit.ts";
import type { AppEnv } from "../../context.ts";
import { ApiError } from "../../errors.ts";
import { clientNetwork, rateLimit, readJson } from "../../http.ts";
import {
  appHome,
  endPresentedSession,
  link,
  mailBudget,
  passwordOptions,
  sendInBackground,
  sessionConfig,
  sessionFields,
  signedIn,
  signInWithLink,
  signUpBody,
  verifyBody,
} from "./shared.ts";

const CHECK_EMAIL = { status: "check_email" } as const;

/**
 * Sign-up. By default it grants nothing before the address is proven: the answer is the same 202 for a new
 * address, one with an unverified account and one with a verified account, and only a mail differs (a
 * verification link, or a notice to the owner). The password is hashed before any transaction opens.
 */
export async function signUp(c: Context<AppEnv>) {
  const body = await readJson(c, signUpBody);
  const { config } = c.get("deps");
  const log = c.get("log");
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
  // The trail has the attempt whatever its outcome (created, an unverified account's newer sign-up, or an
  // address with an account already): the owner can see sign-ups aimed at their address.
  const registration = await audited(c, async (tx, record) => {
    const registered = await UsersService.register(
      { email: body.email, password, firstName: body.firstName, lastName: body.lastName },
      log,
      { passwordBeforeVerification: config.SIGN_IN_BEFORE_EMAIL_VERIFICATION, tx },
    );
    await record("sign_up", {
      subject: registered.user.id,
      actor: "anonymous",
      details: { outcome: registered.outcome },
    });
    return registered;
  });
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
    const userId = registration.user.id;
    const session = await audited(c, async (tx, record) => {
      const created = await SessionsService.create({ userId, ...sessionFields(c, "password") }, log, {
        config: sessionConfig(c),
        tx,
      });
      await record("sign_in", { subject: userId, actor: "subject", details: { method: "sign_up" } });
      return created;
    });
    await endPresentedSession(c);
    return signedIn(c, session, registration.user, 201);
  }
  return c.json(CHECK_EMAIL, 202);
}

/**
 * The verification link: proves the address, sets the password its sign-up chose, and signs the user in.
 * When it is the first proof, every session and token set up before it ends (UsersService.useEmailLink).
 */
export async function verifyEmail(c: Context<AppEnv>) {
  const body = await readJson(c, verifyBody);
  const { user, session } = await signInWithLink(c, body.token, "email_verification", body.password);
  return signedIn(c, session, user);
}

export async function resendVerification(c: Context<AppEnv>) {
  const user = c.get("user");
  const { config } = c.get("deps");
  if (!user.email) throw new ApiError("VALIDATION_FAILED", "Invalid input: the account has no email address");
  if (user.emailVerifiedAt) return c.json({ status: "already_verified" });
  await rateLimit(c, "email:client", clientNetwork(c), config.RATE_LIMIT_EMAIL_PER_CLIENT);
  await mailBudget(c, "link", user.email, { loud: true });
  const sent = await UsersService.sendVerification({ userId: user.id }, c.get("log"));
  if (!sent) return c.json({ status: "already_verified" });
  sendInBackground(
    c,
    sent.record.sentTo,
    "Confirm your email address",
    `Confirm your email address by opening this link within a day:\n\n${link(c, "/verify-email", sent.token)}\n`,
  );
  return c.json({ status: "sent" }, 202);
}
