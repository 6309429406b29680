// /v1/auth sign-in: password sign-in with its failure (lockout) buckets, and the magic link's use.
import { isDbError, UsersService } from "@repo/db";
import type { Context } from "hono";
import { auditFor, recordLater } from "../../audit.ts";
import type { AppEnv } from "../../context.ts";
import { ApiError } from "../../errors.ts";
import {
  clearHits,
  clientNetwork,
  countHit,
  digestKey,
  rateLimit,
  rateLimited,
  readJson,
} from "../../http.ts";
import {
  appHome,
  endPresentedSession,
  issueMagicLink,
  link,
  mailBudget,
  sessionConfig,
  sessionFields,
  signedIn,
  signInBody,
  signInWithLink,
  tokenBody,
} from "./shared.ts";

/**
 * Password sign-in. Failures are counted per (account, client network) (a tight limit) and per account (a
 * loose cap, past which password sign-in for that account needs a mailed link). Each attempt reserves a
 * failure before the password is checked, so parallel guesses cannot slip under a limit; a success gives
 * its reservation back and clears that network's failures. Someone failing from other networks therefore
 * never blocks the owner's correct password from theirs.
 */
export async function signIn(c: Context<AppEnv>) {
  const body = await readJson(c, signInBody);
  const { config, tasks, mailer } = c.get("deps");
  const log = c.get("log");
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
      failedSignIn(c, body.email, "paused");
      tasks.run("sign-in-link", log, async () => {
        const user = await UsersService.findByEmail(body.email, log).catch(() => null);
        if (!user?.email) return;
        const { token } = await issueMagicLink(c, user.id, user.email, "sign_in_paused");
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
      audit: auditFor(c, ({ user }) => [
        ["sign_in", { subject: user.id, actor: "subject", details: { method: "password" } }],
      ]),
    });
  } catch (error) {
    if (isDbError(error, "INVALID_CREDENTIALS") || isDbError(error, "VALIDATION_FAILED")) {
      failedSignIn(c, body.email, "invalid_credentials");
    } else if (isDbError(error, "EMAIL_NOT_VERIFIED")) {
      failedSignIn(c, body.email, "email_not_verified");
    }
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
  await countHit(c, "sign-in:failures:account", account, config.RATE_LIMIT_SIGN_IN_FAILURES_PER_ACCOUNT, -1);
  await endPresentedSession(c);
  return signedIn(c, signed, signed.user);
}

/**
 * A password sign-in that failed, recorded after the answer (so neither its timing nor its round trips differ
 * between accounts that exist and those that do not), about the account it was aimed at when there is one.
 * Only attempts that got past the rate limits are recorded: a flood of refused requests writes nothing.
 */
function failedSignIn(c: Context<AppEnv>, email: string, reason: string): void {
  const log = c.get("log");
  recordLater(c, "sign_in_failed", async () => {
    const user = await UsersService.findByEmail(email, log).catch(() => null);
    return { subject: user?.id ?? null, actor: "anonymous", details: { method: "password", reason } };
  });
}

export async function verifyMagicLink(c: Context<AppEnv>) {
  const body = await readJson(c, tokenBody);
  const { user, session } = await signInWithLink(c, body.token, "magic_link");
  return signedIn(c, session, user);
}
