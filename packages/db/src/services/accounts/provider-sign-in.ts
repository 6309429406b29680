// Sign-in with a provider identity (OpenID Connect or OAuth 2.0), with the linking rules that keep it safe
// from account pre-hijacking. The caller (the API) has already validated the provider's answer (ID token
// signature, issuer, audience, nonce, expiry); this decides whose account the identity opens, in one
// transaction:
//  1. an identity already linked signs its user in (and its tokens are updated);
//  2. otherwise, a provider-verified email that matches a user links to that user: if the user's address was
//     proven, as is; if not, the provider's proof is the first proof of the address, which ends everything
//     set up on the account before it (sessions, pending links, other linked identities, the password, the
//     names), exactly as a first mailed link does;
//  3. otherwise a new user is created with the address (verified) when the provider verified it; without a
//     verified address the sign-in is refused (EMAIL_NOT_VERIFIED): an email the provider did not verify never
//     links to, or claims, anything. (Such an identity can still be linked by its signed-in user, and then
//     signs in by rule 1.)
import { and, eq, isNull, sql } from "drizzle-orm";
import { uuidv7 } from "uuidv7";
import { now } from "../../clock.ts";
import { type DatabaseOrTransaction, transaction } from "../../connection.ts";
import { DbError, isDbError } from "../../errors.ts";
import { acquireAdvisoryLock } from "../../locks.ts";
import { withMetrics } from "../../metrics.ts";
import { accounts, users } from "../../schema/index.ts";
// A cycle (accounts.ts re-exports this module), used only at call time.
import * as AccountsService from "../accounts.ts";
import { type AuditedOptions, recordFor } from "../audit.ts";
import { notFound, type PublicUser, publicUserColumns, type ServiceOptions, validate } from "../common.ts";
import { type Call, defineService } from "../define.ts";
import * as SessionsService from "../sessions.ts";
import { endPriorAccess } from "../users/email-links.ts";
import { emailSchema } from "../users/schemas.ts";
import type { LinkedAccount } from "./columns.ts";
import { type ProviderIdentityInput, providerIdentityInput } from "./schemas.ts";

export type { ProviderIdentityInput } from "./schemas.ts";

export interface ProviderSignInOptions extends ServiceOptions, AuditedOptions<ProviderSignInResult> {
  /** The session to create (its userId filled in), in the same transaction. */
  session: Omit<SessionsService.CreateSessionInput, "userId">;
  /** Per-call session configuration (maxPerUser, lifetimes). */
  sessionConfig?: Partial<SessionsService.SessionConfig> | undefined;
}

/** Which rule opened the account. */
export type ProviderSignInOutcome = "signed_in" | "linked" | "linked_first_proof" | "created";

export interface ProviderSignInResult {
  user: PublicUser;
  account: LinkedAccount;
  session: { session: SessionsService.PublicSession; token: string };
  outcome: ProviderSignInOutcome;
  /** With linked_first_proof: what the first proof ended. */
  revokedSessions: number;
  retiredTokens: number;
}

/** The rows another transaction may insert first (same identity, same new address): retried once. */
const RACES = ["UNIQUE_VIOLATION", "ACCOUNT_ALREADY_LINKED"] as const;

/**
 * Signs in with a provider identity the caller has validated; see the file comment for the rules.
 * @throws DbError VALIDATION_FAILED, EMAIL_NOT_VERIFIED (a new identity without a verified address),
 *   CONFIG_INVALID (tokens given but no encryption key configured).
 * @example const { user, session } = await signInWithProvider({ provider: "google", providerAccountId: claims.sub, email: claims.email, emailVerified: claims.email_verified === true, accessToken }, log, { session: { authMethod: "oauth:google" } });
 */
export const signInWithProvider = defineService(
  {
    name: "accounts.signInWithProvider",
    table: "accounts",
    arity: 1,
    logFields: ([payload]) => ({ provider: payload?.provider }),
  },
  async (
    { logger, options }: Call<ProviderSignInOptions>,
    payload: ProviderIdentityInput,
  ): Promise<ProviderSignInResult> => {
    const input = validate(providerIdentityInput, payload);
    // Only a verified address counts, and only one this package would accept as an address at all.
    const parsedEmail = input.emailVerified ? emailSchema.safeParse(input.email) : undefined;
    const email = parsedEmail?.success ? parsedEmail.data : null;
    const attempt = () =>
      transaction(
        async (tx) => {
          // First sign-ins of one identity, or of identities with one address, take turns: each would
          // otherwise insert the same user or account row and wait on the other's uncommitted insert while
          // holding rows the other needs (a deadlock the test of ten simultaneous sign-ins met). Names are
          // locked in sorted order, so two transactions wanting both never wait on each other in a cycle.
          const names = [`provider-identity:${input.provider}:${input.providerAccountId}`];
          if (email) names.push(`user-email:${email}`);
          for (const name of names.sort()) await acquireAdvisoryLock(tx, name);
          const at = now();
          const identity = {
            provider: input.provider,
            providerAccountId: input.providerAccountId,
            scope: input.scope,
            accessToken: input.accessToken,
            accessTokenExpiresAt: input.accessTokenExpiresAt,
            refreshToken: input.refreshToken,
            refreshTokenExpiresAt: input.refreshTokenExpiresAt,
          };
          let outcome: ProviderSignInOutcome;
          let userId: string;
          let revokedSessions = 0;
          let retiredTokens = 0;
          const [linked] = await withMetrics("select", "accounts", () =>
            tx
              .select({ userId: accounts.userId })
              .from(accounts)
              .innerJoin(users, and(eq(users.id, accounts.userId), isNull(users.deletedAt)))
              .where(
                and(
                  eq(accounts.provider, input.provider),
                  eq(accounts.providerAccountId, input.providerAccountId),
                ),
              ),
          );
          if (linked) {
            outcome = "signed_in";
            userId = linked.userId;
            // The user row first, then the account's: the order every other writer of both follows.
            await withMetrics("lock", "users", () =>
              tx.select({ id: users.id }).from(users).where(eq(users.id, linked.userId)).for("update"),
            );
          } else {
            const [owner] = email
              ? await withMetrics("select", "users", () =>
                  tx
                    .select({ id: users.id, emailVerifiedAt: users.emailVerifiedAt })
                    .from(users)
                    .where(and(eq(users.email, email), isNull(users.deletedAt)))
                    .for("update"),
                )
              : [];
            if (owner?.emailVerifiedAt) {
              outcome = "linked";
              userId = owner.id;
            } else if (owner) {
              // The provider proved the address first: whatever was set up before that proof ends.
              outcome = "linked_first_proof";
              userId = owner.id;
              await withMetrics("update", "users", () =>
                tx
                  .update(users)
                  .set({
                    emailVerifiedAt: at,
                    passwordHash: null,
                    firstName: input.firstName ?? null,
                    lastName: input.lastName ?? null,
                    avatarUrl: input.avatarUrl ?? null,
                  })
                  .where(eq(users.id, owner.id)),
              );
              ({ revokedSessions, retiredTokens } = await endPriorAccess(tx, owner.id, logger, {
                linkedAccounts: true,
              }));
            } else if (email) {
              outcome = "created";
              userId = await createUser(tx, {
                email,
                at,
                firstName: input.firstName ?? null,
                lastName: input.lastName ?? null,
                avatarUrl: input.avatarUrl ?? null,
              });
            } else {
              // A user needs an address (or a phone number) someone proved; this identity brings neither.
              throw new DbError("EMAIL_NOT_VERIFIED", "The provider did not give a verified email address");
            }
          }
          // link() in this transaction: its rewrite path keeps a row whose stored tokens are under an older key
          // usable; ACCOUNT_ALREADY_LINKED when the identity went to someone else meanwhile (retried below).
          const account = await AccountsService.link({ ...identity, userId }, logger, { tx });
          const [user] = await withMetrics("update", "users", () =>
            tx
              .update(users)
              .set({ lastSignInAt: at })
              .where(and(eq(users.id, userId), isNull(users.deletedAt)))
              .returning(publicUserColumns),
          );
          if (!user) throw notFound("users");
          const session = await SessionsService.create({ ...options.session, userId }, logger, {
            tx,
            config: options.sessionConfig,
          });
          const result = { user, account, session, outcome, revokedSessions, retiredTokens };
          await recordFor(tx, options.audit, result, logger);
          return result;
        },
        { tx: options.tx },
      );
    let result: ProviderSignInResult;
    try {
      result = await attempt();
    } catch (error) {
      // A concurrent first sign-in of the same identity (or of a new user with the same address) won the
      // insert: the second attempt finds its rows. Inside a caller's transaction there is no second attempt.
      if (options.tx || !RACES.some((code) => isDbError(error, code))) throw error;
      result = await attempt();
    }
    logger.audit(
      {
        userId: result.user.id,
        accountId: result.account.id,
        provider: input.provider,
        outcome: result.outcome,
        revokedSessions: result.revokedSessions,
        retiredTokens: result.retiredTokens,
      },
      "provider sign-in",
    );
    return result;
  },
);

/** A new user opened by a provider, with the provider's verified address. */
async function createUser(
  tx: DatabaseOrTransaction,
  values: {
    email: string;
    at: Date;
    firstName: string | null;
    lastName: string | null;
    avatarUrl: string | null;
  },
): Promise<string> {
  const id = uuidv7();
  await withMetrics("insert", "users", () =>
    tx.insert(users).values({
      id,
      email: values.email,
      emailVerifiedAt: values.at,
      firstName: values.firstName,
      lastName: values.lastName,
      avatarUrl: values.avatarUrl,
      metadata: sql`'{}'::jsonb`,
    }),
  );
  return id;
}
