// UsersService passwords: setting, checking and preparing them, and password sign-in.
import { and, eq, isNull, type SQL, sql } from "drizzle-orm";
import { now } from "../../clock.ts";
import { type DatabaseOrTransaction, db, transaction } from "../../connection.ts";
import { assertPasswordStrength, type BreachCheckOptions } from "../../crypto/password-policy.ts";
import {
  hashPassword,
  needsRehash,
  type PreparedPassword,
  preparedFromHash,
  verifyAgainstDummy,
  verifyPasswordHash,
} from "../../crypto/passwords.ts";
import { DbError } from "../../errors.ts";
import type { Logger } from "../../logger.ts";
import { withMetrics } from "../../metrics.ts";
import { users } from "../../schema/index.ts";
import { type AuditedOptions, recordFor } from "../audit.ts";
import { notFound, type PublicUser, publicUserColumns, type ServiceOptions, validate } from "../common.ts";
import { type Call, defineService } from "../define.ts";
import type * as OneTimeTokensService from "../one-time-tokens.ts";
import * as SessionsService from "../sessions.ts";
import {
  idSchema,
  type PreparePasswordInput,
  preparePasswordSchema,
  type SetPasswordInput,
  setPasswordSchema,
  type VerifyPasswordInput,
  verifyPasswordSchema,
} from "./schemas.ts";
import { hashOf } from "./shared.ts";

/**
 * Sets (or replaces) the password of an active user. Pass a PreparedPassword (preparePassword) to keep the
 * argon2 work out of a transaction; a plain string is checked against the common-password list and hashed here.
 * @throws DbError VALIDATION_FAILED (password not 8..1024 characters after NFKC), PASSWORD_TOO_WEAK, NOT_FOUND.
 * @example await setPassword({ id: user.id, password: await preparePassword({ password, email }) });
 */
export const setPassword = defineService(
  {
    name: "users.setPassword",
    table: "users",
    arity: 1,
    logFields: ([payload]) => ({ userId: payload?.id }),
  },
  async ({ logger, handle }: Call<ServiceOptions>, payload: SetPasswordInput): Promise<PublicUser> => {
    const { id, password } = validate(setPasswordSchema, payload);
    const passwordHash = await hashOf(password);
    const [user] = await withMetrics("update", "users", () =>
      handle
        .update(users)
        .set({ passwordHash })
        .where(and(eq(users.id, id), isNull(users.deletedAt)))
        .returning(publicUserColumns),
    );
    if (!user) throw notFound("users");
    logger.audit({ userId: id }, "password set");
    return user;
  },
);

/**
 * A column of the user's newest live sign-up registration (see register), as a correlated subquery.
 * one_time_tokens_user_id_idx finds the user's few token rows. `users.id` is spelled out: Drizzle renders a
 * column of a single-table select unqualified ("id"), which inside this subquery would mean t.id.
 */
function pendingRegistration<T>(column: "password_hash" | "profile", at: Date): SQL<T | null> {
  return sql<T | null>`(SELECT t.${sql.identifier(column)} FROM one_time_tokens t
    WHERE t.user_id = users.id AND t.purpose = 'email_verification'
      AND t.used_at IS NULL AND t.deleted_at IS NULL AND t.expires_at > ${at}::timestamptz
    ORDER BY t.id DESC LIMIT 1)`;
}

type Credentials = PublicUser & {
  passwordHash: string | null;
  pendingHash: string | null;
  pendingProfile: OneTimeTokensService.RegistrationProfile | null;
};

/** A live user by email or id with the password hashes sign-in and verification mails need. */
export async function credentialsOf(
  where: SQL,
  at: Date,
  handle: DatabaseOrTransaction,
  lock = false,
): Promise<Credentials | undefined> {
  const query = handle
    .select({
      ...publicUserColumns,
      passwordHash: users.passwordHash,
      pendingHash: pendingRegistration<string>("password_hash", at),
      pendingProfile: pendingRegistration<OneTimeTokensService.RegistrationProfile>("profile", at),
    })
    .from(users)
    .where(and(where, isNull(users.deletedAt)))
    .limit(1);
  const [row] = await withMetrics("select", "users", () =>
    lock ? query.for("update", { of: users }) : query,
  );
  return row;
}

export interface VerifyPasswordOptions extends ServiceOptions {
  /**
   * An account whose email address is not verified grants nothing: the right password for it raises
   * EMAIL_NOT_VERIFIED instead of returning the user. Default false (for compatibility); the API sets it.
   */
  requireVerifiedEmail?: boolean | undefined;
}

/**
 * The password check of verifyPassword and signIn: the user, and the hash that matched as it is stored now
 * (after a rehash, the new one).
 */
async function checkPassword(
  payload: VerifyPasswordInput,
  logger: Logger,
  options: VerifyPasswordOptions,
): Promise<{ user: PublicUser; stored: string }> {
  const { email, password } = validate(verifyPasswordSchema, payload);
  const handle = options.tx ?? db;
  const row = await credentialsOf(eq(users.email, email), now(), handle);
  const invalid = () => new DbError("INVALID_CREDENTIALS", "Invalid email or password");
  const unverified = row !== undefined && row.emailVerifiedAt === null;
  const stored =
    unverified && options.requireVerifiedEmail ? (row.pendingHash ?? row.passwordHash) : row?.passwordHash;
  const candidate = stored ?? (unverified ? row?.pendingHash : null);
  if (!row || !candidate) {
    await verifyAgainstDummy(password);
    throw invalid();
  }
  const { passwordHash, pendingHash: _hash, pendingProfile: _profile, ...user } = row;
  if (!(await verifyPasswordHash(candidate, password))) throw invalid();
  if (unverified && (options.requireVerifiedEmail || candidate !== passwordHash)) {
    throw new DbError("EMAIL_NOT_VERIFIED", "The email address is not verified yet", { table: "users" });
  }
  if (!needsRehash(candidate)) return { user, stored: candidate };
  const rehashed = await hashPassword(password);
  // Replaces the hash only if it is still the one just verified: a password changed concurrently (setPassword,
  // a reset) must not be overwritten by the old password's new hash.
  const replaced = await withMetrics("update", "users", () =>
    handle
      .update(users)
      .set({ passwordHash: rehashed })
      .where(and(eq(users.id, user.id), eq(users.passwordHash, candidate)))
      .returning({ id: users.id }),
  );
  if (replaced.length === 0) return { user, stored: candidate };
  logger.audit({ userId: user.id }, "password rehashed with current parameters");
  return { user, stored: rehashed };
}

/**
 * Checks an email and password; returns the user on success. Unknown email, deleted user, user without a
 * password and wrong password all raise the same error after the same argon2 work. A hash weaker than the
 * current policy is replaced after a successful check. For an unverified address, the password checked is the
 * newest pending sign-up's (see register), else the account's own; when it matches, EMAIL_NOT_VERIFIED is
 * raised if `requireVerifiedEmail` is set or the match was a pending sign-up's (which is not a password yet).
 * To start a session, use signIn: it also makes sure the password did not change meanwhile.
 * @throws DbError INVALID_CREDENTIALS, EMAIL_NOT_VERIFIED, VALIDATION_FAILED (malformed email, empty password).
 * @example const user = await verifyPassword({ email: "ada@example.com", password: "correct horse" });
 */
export const verifyPassword = defineService(
  { name: "users.verifyPassword", table: "users", arity: 1 },
  async (
    { logger, options }: Call<VerifyPasswordOptions>,
    payload: VerifyPasswordInput,
  ): Promise<PublicUser> => {
    return (await checkPassword(payload, logger, options)).user;
  },
);

export interface SignInOptions
  extends VerifyPasswordOptions,
    AuditedOptions<{ user: PublicUser; session: SessionsService.PublicSession }> {
  /** The session to create (its userId is filled in). */
  session: Omit<SessionsService.CreateSessionInput, "userId">;
  /** Per-call session configuration (maxPerUser, lifetimes). */
  sessionConfig?: Partial<SessionsService.SessionConfig> | undefined;
}

/**
 * Password sign-in: checks the password (argon2, outside any transaction), then in one transaction locks the
 * user, makes sure the password (and, with requireVerifiedEmail, the verification) is still the one checked,
 * records the sign-in and creates the session (and the events of `audit`, in that transaction). A reset or first proof of the address that commits while the
 * password is being checked therefore wins: the sign-in fails instead of leaving a session it would not end.
 * @throws DbError INVALID_CREDENTIALS, EMAIL_NOT_VERIFIED, VALIDATION_FAILED.
 * @example const { user, token } = await signIn({ email, password }, log, { session: { authMethod: "password" } });
 */
export const signIn = defineService(
  { name: "users.signIn", table: "users", arity: 1 },
  async (
    { logger, options }: Call<SignInOptions>,
    payload: VerifyPasswordInput,
  ): Promise<{ user: PublicUser; session: SessionsService.PublicSession; token: string }> => {
    const { user, stored } = await checkPassword(payload, logger, { ...options, tx: undefined });
    const at = now();
    return await transaction(
      async (tx) => {
        const [current] = await withMetrics("update", "users", () =>
          tx
            .update(users)
            .set({ lastSignInAt: at })
            .where(
              and(
                eq(users.id, user.id),
                isNull(users.deletedAt),
                eq(users.passwordHash, stored),
                options.requireVerifiedEmail ? sql`${users.emailVerifiedAt} IS NOT NULL` : undefined,
              ),
            )
            .returning(publicUserColumns),
        );
        if (!current) throw new DbError("INVALID_CREDENTIALS", "Invalid email or password");
        const created = await SessionsService.create({ ...options.session, userId: user.id }, logger, {
          tx,
          config: options.sessionConfig,
        });
        const result = { user: current, ...created };
        await recordFor(tx, options.audit, result, logger);
        return result;
      },
      { tx: options.tx },
    );
  },
  // The session to create is required: the options are not optional here.
) as (
  payload: VerifyPasswordInput,
  loggerOrOptions: Logger | SignInOptions,
  options?: SignInOptions,
) => Promise<{ user: PublicUser; session: SessionsService.PublicSession; token: string }>;

export interface PreparePasswordOptions extends ServiceOptions {
  /** Also look the password up in a breach corpus (Pwned Passwords range API); fails open. */
  breachCheck?: BreachCheckOptions | undefined;
}

/**
 * Checks a new password against the policy (8..1024 characters after NFKC, not one of the most common
 * passwords, not containing the email's local part, optionally not in a breach corpus) and hashes it with
 * argon2id, outside any transaction. Pass the result to register, create or setPassword.
 * @throws DbError VALIDATION_FAILED (length), PASSWORD_TOO_WEAK (details.password says why).
 * @example const password = await preparePassword({ password: body.password, email: body.email });
 */
export const preparePassword = defineService(
  { name: "users.preparePassword", table: "users", arity: 1 },
  async (
    { logger, options }: Call<PreparePasswordOptions>,
    payload: PreparePasswordInput,
  ): Promise<PreparedPassword> => {
    const { password, email } = validate(preparePasswordSchema, payload);
    await assertPasswordStrength(password, { email, breachCheck: options.breachCheck }, logger);
    return preparedFromHash(await hashPassword(password));
  },
);

/**
 * Whether a live user has a password (accounts made by a magic link or a provider have none), for deciding
 * how a sensitive action is confirmed.
 * @throws DbError VALIDATION_FAILED, NOT_FOUND.
 * @example if (await hasPassword(user.id)) await verifyPassword({ email, password });
 */
export const hasPassword = defineService(
  { name: "users.hasPassword", table: "users", arity: 1, logFields: ([id]) => ({ userId: id }) },
  async ({ handle }: Call<ServiceOptions>, id: string): Promise<boolean> => {
    const userId = validate(idSchema, id);
    const [row] = await withMetrics("select", "users", () =>
      handle
        .select({ has: sql<boolean>`${users.passwordHash} IS NOT NULL` })
        .from(users)
        .where(and(eq(users.id, userId), isNull(users.deletedAt))),
    );
    if (!row) throw notFound("users");
    return row.has;
  },
);
