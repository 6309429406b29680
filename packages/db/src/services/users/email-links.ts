// UsersService sign-up and mailed links: registering, sending verification links and using a link
// (verification, magic link, password reset).
import { and, eq, isNull, sql } from "drizzle-orm";
import type { PgUpdateSetSource } from "drizzle-orm/pg-core";
import { now } from "../../clock.ts";
import { type Transaction, transaction } from "../../connection.ts";
import {
  candidatePasswordSchema,
  preparedFromHash,
  preparedHash,
  verifyPasswordHash,
} from "../../crypto/passwords.ts";
import { DbError } from "../../errors.ts";
import type { Logger } from "../../logger.ts";
import { withMetrics } from "../../metrics.ts";
import { accounts, users } from "../../schema/index.ts";
import { type AuditedOptions, recordFor } from "../audit.ts";
import { notFound, type PublicUser, publicUserColumns, type ServiceOptions, validate } from "../common.ts";
import { type Call, defineService } from "../define.ts";
import type { OneTimeTokenRecord } from "../one-time-tokens.ts";
import * as OneTimeTokensService from "../one-time-tokens.ts";
import * as SessionsService from "../sessions.ts";
import { credentialsOf } from "./credentials.ts";
import {
  type RegisterInput,
  registerSchema,
  type UseEmailLinkInput,
  useEmailLinkSchema,
  verificationTargetSchema,
} from "./schemas.ts";

/**
 * What a first proof of an address ends (and a reset, without `linkedAccounts`), in the caller's transaction:
 * every session, every pending link, and with `linkedAccounts` every linked provider identity (linked by
 * whoever held the account before the proof). Used by useEmailLink and by provider sign-in's first proof.
 */
export async function endPriorAccess(
  tx: Transaction,
  userId: string,
  logger: Logger,
  options: { linkedAccounts: boolean },
): Promise<{ revokedSessions: number; retiredTokens: number }> {
  const revokedSessions = await SessionsService.revokeAllForUser({ userId }, logger, { tx });
  const retiredTokens = await OneTimeTokensService.invalidateForUser(userId, {}, logger, { tx });
  if (options.linkedAccounts) {
    await withMetrics("delete", "accounts", () => tx.delete(accounts).where(eq(accounts.userId, userId)));
  }
  return { revokedSessions, retiredTokens };
}

export interface RegisterOptions extends ServiceOptions {
  /**
   * Put the password on a new account at once, so it can sign in before its address is verified (the API's
   * SIGN_IN_BEFORE_EMAIL_VERIFICATION=true). Default false: a new account has no password until its link is
   * used.
   */
  passwordBeforeVerification?: boolean | undefined;
}

export interface Registration {
  /**
   * created: a new, unverified account. unverified: the address has an unverified account, which is left as
   * it is. verified: the address belongs to a verified account (nothing was written; tell its owner).
   */
  outcome: "created" | "unverified" | "verified";
  user: PublicUser;
  /** The verification link to mail, which carries this registration's password and names; null for `verified`. */
  verification: { token: string; record: OneTimeTokenRecord } | null;
}

/**
 * A sign-up that cannot pre-hijack an account. The password and names ride on the verification link (not on
 * the user) and become the account's only when that link is used with that password; a newer sign-up for a
 * still unverified address issues a newer link (retiring the older), so only the newest registration can
 * complete. An address with a verified account is left untouched. All in one transaction; hash the password
 * beforehand (preparePassword).
 * @throws DbError VALIDATION_FAILED, NOT_FOUND (the account was deleted meanwhile; retry).
 * @example const { outcome, verification } = await register({ email, password: await preparePassword({ password, email }) });
 */
export const register = defineService(
  { name: "users.register", table: "users", arity: 1 },
  async ({ logger, options }: Call<RegisterOptions>, payload: RegisterInput): Promise<Registration> => {
    const input = validate(registerSchema, payload);
    const at = now();
    const result = await transaction(
      async (tx) => {
        // ON CONFLICT against the partial unique index: no read-then-insert race between two sign-ups.
        const [created] = await withMetrics("insert", "users", () =>
          tx
            .insert(users)
            .values({
              email: input.email,
              // Unproven names stay on the link unless the account is usable before its proof.
              firstName: options.passwordBeforeVerification ? (input.firstName ?? null) : null,
              lastName: options.passwordBeforeVerification ? (input.lastName ?? null) : null,
              passwordHash: options.passwordBeforeVerification ? preparedHash(input.password) : null,
              createdAt: at,
              updatedAt: at,
            })
            .onConflictDoNothing({ target: users.email, where: sql`deleted_at IS NULL` })
            .returning(publicUserColumns),
        );
        // FOR UPDATE: the user row is always locked before its token rows (as in useEmailLink), so a sign-up
        // and a link used at the same moment queue instead of deadlocking.
        const user =
          created ??
          (
            await withMetrics("select", "users", () =>
              tx
                .select(publicUserColumns)
                .from(users)
                .where(and(eq(users.email, input.email), isNull(users.deletedAt)))
                .for("update"),
            )
          )[0];
        if (!user) {
          throw notFound("users");
        }
        if (!created && user.emailVerifiedAt !== null) {
          return { outcome: "verified" as const, user, verification: null };
        }
        const verification = await OneTimeTokensService.create(
          {
            userId: user.id,
            purpose: "email_verification",
            sentTo: input.email,
            password: input.password,
            profile: { firstName: input.firstName ?? null, lastName: input.lastName ?? null },
          },
          logger,
          { tx },
        );
        return { outcome: created ? ("created" as const) : ("unverified" as const), user, verification };
      },
      { tx: options.tx },
    );
    logger.audit({ userId: result.user.id, outcome: result.outcome }, "sign-up registered");
    return result;
  },
);

/**
 * Issues a fresh email verification link for an unverified account. Older links stay: a link that carries a
 * password retires none (or anyone able to trigger a resend could kill the owner's link). It confirms the same
 * password the account would sign in with: the newest pending sign-up's (with its names), else the account's
 * own. Returns null when there is no such live account, it has no email, or the address is verified already.
 * @throws DbError VALIDATION_FAILED.
 * @example const link = await sendVerification({ userId: user.id });
 */
export const sendVerification = defineService(
  { name: "users.sendVerification", table: "users", arity: 1 },
  async (
    { logger, options }: Call<ServiceOptions>,
    payload: { userId: string } | { email: string },
  ): Promise<{ token: string; record: OneTimeTokenRecord } | null> => {
    const target = validate(verificationTargetSchema, payload);
    const where = "userId" in target ? eq(users.id, target.userId) : eq(users.email, target.email);
    // The user row first, then the token rows, like register and useEmailLink.
    return await transaction(
      async (tx) => {
        const row = await credentialsOf(where, now(), tx, true);
        if (!row?.email || row.emailVerifiedAt !== null) return null;
        const carried = row.pendingHash ?? row.passwordHash;
        return await OneTimeTokensService.create(
          {
            userId: row.id,
            purpose: "email_verification",
            sentTo: row.email,
            ...(carried ? { password: preparedFromHash(carried) } : {}),
            ...(row.pendingProfile ? { profile: row.pendingProfile } : {}),
          },
          logger,
          { tx },
        );
      },
      { tx: options.tx },
    );
  },
);

export interface EmailLinkOptions extends ServiceOptions, AuditedOptions<EmailLinkResult> {
  /** Sign in: create this session (its userId filled in) in the same transaction, after the proof. */
  session?: Omit<SessionsService.CreateSessionInput, "userId"> | undefined;
  /** Per-call session configuration (maxPerUser, lifetimes). */
  sessionConfig?: Partial<SessionsService.SessionConfig> | undefined;
}

export interface EmailLinkResult {
  user: PublicUser;
  /** With `options.session`: the session the link signed in, and its token. */
  session?: { session: SessionsService.PublicSession; token: string };
  /** The address had never been proven before this link: whatever was set up before it has ended. */
  firstProof: boolean;
  revokedSessions: number;
  retiredTokens: number;
}

/**
 * Uses a mailed link (email verification, magic link or password reset) once, and records what it proves:
 * control of the address it was sent to, which must still be the user's address. In one transaction:
 *  - the first proof of an address ends everything set up on the account before it: every session, every
 *    other pending token, every linked provider account, the password (replaced by the one a sign-up's
 *    verification link carries, by the reset's new password, or removed for a magic link) and the names and
 *    avatar (replaced by the sign-up's names, or cleared). This is what defeats account pre-hijacking.
 *    `metadata` is application data and is kept: do not let users write it before their address is proven.
 *  - a sign-up's verification link completes only with the password that sign-up chose (`password`; each
 *    guess reserved first, LINK_MAX_ATTEMPTS in all): the mailbox owner clicking a link an attacker's later
 *    sign-up mailed them cannot adopt the attacker's password by mistake. Its names replace the account's.
 *  - a reset always sets `newPassword`, ends every session and retires every other token.
 *  - with `options.session`, last_sign_in_at is set and that session is created in the same transaction.
 *  - with `options.audit`, the events it derives from the result are recorded last, in that transaction.
 * argon2 (checking `password`) runs before the transaction opens. Locks: the user row, then the token row,
 * the order every other writer of both follows.
 * @throws DbError TOKEN_INVALID (unknown, used, expired, wrong purpose, user gone, address changed since),
 *   INVALID_CREDENTIALS (not the password the link's sign-up chose), VALIDATION_FAILED (a reset without
 *   newPassword; a sign-up's link without password).
 * @example const { user, session } = await useEmailLink({ token, purpose: "magic_link" }, log, { session: { authMethod: "magic_link" } });
 */
export const useEmailLink = defineService(
  {
    name: "users.useEmailLink",
    table: "users",
    arity: 1,
    logFields: ([payload]) => ({ purpose: payload?.purpose }),
  },
  async (
    { logger, options }: Call<EmailLinkOptions>,
    payload: UseEmailLinkInput,
  ): Promise<EmailLinkResult> => {
    const input = validate(useEmailLinkSchema, payload);
    if ((input.purpose === "password_reset") !== (input.newPassword !== undefined)) {
      throw new DbError(
        "VALIDATION_FAILED",
        "Invalid input: newPassword: required for a reset, only for a reset",
        { details: { newPassword: "required for a reset, only for a reset" } },
      );
    }
    const at = now();
    const tokenInvalid = () => new DbError("TOKEN_INVALID", "The link is invalid or expired");
    // A look first, without using the link: whose it is (to lock that user before the token), and, for a
    // sign-up's link, the password to check before any transaction opens.
    const pending = await OneTimeTokensService.peekLink(input.token, input.purpose, logger);
    if (!pending?.record.userId) throw tokenInvalid();
    if (input.purpose === "email_verification" && pending.password) {
      if (input.password === undefined) {
        throw new DbError(
          "VALIDATION_FAILED",
          "Invalid input: password: enter the password chosen at sign-up",
          {
            details: { password: "enter the password chosen at sign-up" },
          },
        );
      }
      const candidate = validate(candidatePasswordSchema, input.password);
      // A guess is reserved before argon2 runs: a link allows LINK_MAX_ATTEMPTS guesses in all, parallel or not.
      if (!(await OneTimeTokensService.reserveLinkAttempt(input.token, input.purpose, logger))) {
        throw tokenInvalid();
      }
      if (!(await verifyPasswordHash(preparedHash(pending.password), candidate))) {
        throw new DbError("INVALID_CREDENTIALS", "Not the password of the sign-up this link confirms");
      }
    }
    const userId = pending.record.userId;
    const result = await transaction(
      async (tx) => {
        const [current] = await withMetrics("select", "users", () =>
          tx
            .select({ id: users.id, email: users.email, emailVerifiedAt: users.emailVerifiedAt })
            .from(users)
            .where(and(eq(users.id, userId), isNull(users.deletedAt)))
            .for("update"),
        );
        const used = await OneTimeTokensService.consumeLink(input.token, input.purpose, logger, { tx });
        // Used or retired meanwhile (then it is not the link that was peeked), or the address changed since
        // the link was sent: the link proves nothing about the user's address.
        if (!used || used.record.id !== pending.record.id) throw tokenInvalid();
        if (!current || current.email !== used.record.sentTo) throw tokenInvalid();
        const firstProof = current.emailVerifiedAt === null;
        const set: PgUpdateSetSource<typeof users> = { emailVerifiedAt: current.emailVerifiedAt ?? at };
        if (input.newPassword) set.passwordHash = preparedHash(input.newPassword);
        else if (firstProof && input.purpose === "email_verification" && used.password) {
          set.passwordHash = preparedHash(used.password);
        } else if (firstProof && input.purpose === "magic_link") set.passwordHash = null;
        if (firstProof && input.purpose === "email_verification" && used.profile) {
          set.firstName = used.profile.firstName ?? null;
          set.lastName = used.profile.lastName ?? null;
        } else if (firstProof && input.purpose !== "email_verification") {
          // Names and picture shown to people were set by whoever held the account before its proof.
          set.firstName = null;
          set.lastName = null;
          set.avatarUrl = null;
        }
        if (options.session) set.lastSignInAt = at;
        const [user] = await withMetrics("update", "users", () =>
          tx.update(users).set(set).where(eq(users.id, current.id)).returning(publicUserColumns),
        );
        if (!user) throw tokenInvalid();
        const { revokedSessions, retiredTokens } =
          firstProof || input.purpose === "password_reset"
            ? await endPriorAccess(tx, user.id, logger, { linkedAccounts: firstProof })
            : { revokedSessions: 0, retiredTokens: 0 };
        const session = options.session
          ? await SessionsService.create({ ...options.session, userId: user.id }, logger, {
              tx,
              config: options.sessionConfig,
            })
          : undefined;
        const result = { user, firstProof, revokedSessions, retiredTokens, ...(session ? { session } : {}) };
        await recordFor(tx, options.audit, result, logger);
        return result;
      },
      { tx: options.tx },
    );
    logger.audit(
      {
        userId: result.user.id,
        purpose: input.purpose,
        firstProof: result.firstProof,
        revokedSessions: result.revokedSessions,
        retiredTokens: result.retiredTokens,
      },
      result.firstProof ? "email address proven for the first time" : "email link used",
    );
    return result;
  },
);
