// Linked OAuth identities. A (provider, provider account id) pair belongs to at most one user; the provider's
// access and refresh tokens are stored encrypted (AES-256-GCM, see encryption.ts) and never returned except
// by getTokens(). Every other read returns LinkedAccount, which has no ciphertext columns at all.
import { and, asc, eq, isNotNull, isNull, ne, notInArray, sql } from "drizzle-orm";
import { transaction } from "../connection.ts";
import { currentEncryptionKeyId } from "../crypto/encryption.ts";
import { DbError, isDbError } from "../errors.ts";
import { withMetrics } from "../metrics.ts";
import { accounts } from "../schema/accounts.ts";
import { users } from "../schema/users.ts";
import { type LinkedAccount, linkedAccountColumns } from "./accounts/columns.ts";
import { rewrite, upsert } from "./accounts/link-writes.ts";
import {
  findInput,
  type LinkAccountInput,
  linkInput,
  reencryptInput,
  unlinkInput,
  uuid,
} from "./accounts/schemas.ts";
import { type SealedToken, seal, unseal } from "./accounts/sealing.ts";
import { notFound, type PublicUser, publicUserColumns, type ServiceOptions, validate } from "./common.ts";
import { type Call, defineService } from "./define.ts";

// Split by concern: the columns callers see (accounts/columns.ts), input schemas (accounts/schemas.ts), token
// sealing (accounts/sealing.ts) and the writes behind link() (accounts/link-writes.ts). Re-exported by name.
export type { LinkedAccount } from "./accounts/columns.ts";
export {
  type ProviderIdentityInput,
  type ProviderSignInOptions,
  type ProviderSignInOutcome,
  type ProviderSignInResult,
  signInWithProvider,
} from "./accounts/provider-sign-in.ts";
export {
  getFreshAccessToken,
  type RefreshedTokens,
  registerTokenRefresher,
  type TokenRefresher,
} from "./accounts/refresh.ts";
export type { LinkAccountInput } from "./accounts/schemas.ts";

/** The user behind an account: the password hash and the search vector are left out. */
export type AccountUser = PublicUser;

/** The decrypted provider tokens of one account. */
export interface AccountTokens {
  accessToken: string | null;
  accessTokenExpiresAt: Date | null;
  refreshToken: string | null;
  refreshTokenExpiresAt: Date | null;
}

function alreadyLinked(): DbError<"ACCOUNT_ALREADY_LINKED"> {
  return new DbError("ACCOUNT_ALREADY_LINKED", "This provider account is linked to another user", {
    table: "accounts",
  });
}

// ---------------------------------------------------------------------------------------------------------
// Service

/**
 * Links a provider identity to a user, or updates its tokens when it is already linked to that user.
 * Tokens are encrypted with the current key; see LinkAccountInput for what a relink keeps.
 * @throws DbError VALIDATION_FAILED, NOT_FOUND (no such user, or soft-deleted), ACCOUNT_ALREADY_LINKED
 *   (another user has it), CONFIG_INVALID (tokens given but no encryption key configured).
 * @example await link({ userId, provider: "google", providerAccountId: sub, accessToken, refreshToken });
 */
export const link = defineService(
  {
    name: "accounts.link",
    table: "accounts",
    arity: 1,
    logFields: ([payload]) => ({ userId: payload?.userId, provider: payload?.provider }),
  },
  async (
    { logger, options, handle }: Call<ServiceOptions>,
    payload: LinkAccountInput,
  ): Promise<LinkedAccount> => {
    const input = validate(linkInput, payload);
    const first = await upsert(handle, input);
    const outcome =
      first ??
      // Rare path: nothing written. Find out why under a row lock, in a transaction.
      (await transaction(
        async (tx) => {
          const [user] = await withMetrics("select", "users", () =>
            tx
              .select({ id: users.id })
              .from(users)
              .where(and(eq(users.id, input.userId), isNull(users.deletedAt))),
          );
          if (!user) throw notFound("users");
          const [existing] = await withMetrics("select", "accounts", () =>
            tx
              .select()
              .from(accounts)
              .where(
                and(
                  eq(accounts.provider, input.provider),
                  eq(accounts.providerAccountId, input.providerAccountId),
                ),
              )
              .for("update"),
          );
          if (!existing) {
            // Unlinked between the upsert and the lock: the same upsert now inserts (or meets a new owner).
            const retried = await upsert(tx, input);
            if (!retried) throw alreadyLinked();
            return retried;
          }
          if (existing.userId !== input.userId) throw alreadyLinked();
          return { account: await rewrite(tx, existing, input), inserted: false };
        },
        { tx: options.tx },
      ));
    const { account, inserted } = outcome;
    logger.audit(
      { accountId: account.id, userId: account.userId, provider: account.provider },
      inserted ? "account linked" : "account tokens updated",
    );
    return account;
  },
);

/**
 * Removes a linked identity. With `userId`, only if it belongs to that user (for self-service pages); with
 * `keepSignInMethod` too, only if the user keeps another way to sign in (a password, a proven address for
 * mailed links, or another provider), checked under the user's row lock.
 * @throws DbError VALIDATION_FAILED, NOT_FOUND (no such account, or not that user's), LAST_SIGN_IN_METHOD.
 * @example await unlink({ accountId, userId: currentUser.id });
 */
export const unlink = defineService(
  {
    name: "accounts.unlink",
    table: "accounts",
    arity: 1,
    logFields: ([payload]) => ({ accountId: payload?.accountId, userId: payload?.userId }),
  },
  async (
    { logger, options }: Call<ServiceOptions>,
    payload: { accountId: string; userId?: string | undefined; keepSignInMethod?: boolean | undefined },
  ): Promise<LinkedAccount> => {
    const input = validate(unlinkInput, payload);
    const account = await transaction(
      async (tx) => {
        if (input.keepSignInMethod && input.userId !== undefined) {
          // Under the user's row lock (the lock every writer of a user's password and address takes), so two
          // unlinks of the last two providers cannot both pass the check.
          const [owner] = await withMetrics("select", "users", () =>
            tx
              .select({ passwordHash: users.passwordHash, emailVerifiedAt: users.emailVerifiedAt })
              .from(users)
              .where(eq(users.id, input.userId as string))
              .for("update"),
          );
          if (!owner) throw notFound("accounts");
          const [others] = await withMetrics("select", "accounts", () =>
            tx
              .select({ count: sql<number>`count(*)::int` })
              .from(accounts)
              .where(and(eq(accounts.userId, input.userId as string), ne(accounts.id, input.accountId))),
          );
          if (!owner.passwordHash && !owner.emailVerifiedAt && (others?.count ?? 0) === 0) {
            const owned = await withMetrics("select", "accounts", () =>
              tx
                .select({ id: accounts.id })
                .from(accounts)
                .where(and(eq(accounts.id, input.accountId), eq(accounts.userId, input.userId as string))),
            );
            if (owned.length > 0) {
              throw new DbError("LAST_SIGN_IN_METHOD", "This is the user's last way to sign in", {
                table: "accounts",
              });
            }
          }
        }
        const [deleted] = await withMetrics("delete", "accounts", () =>
          tx
            .delete(accounts)
            .where(
              and(
                eq(accounts.id, input.accountId),
                input.userId === undefined ? undefined : eq(accounts.userId, input.userId),
              ),
            )
            .returning(linkedAccountColumns),
        );
        if (!deleted) throw notFound("accounts");
        return deleted;
      },
      { tx: options.tx },
    );
    logger.audit(
      { accountId: account.id, userId: account.userId, provider: account.provider },
      "account unlinked",
    );
    return account;
  },
);

/**
 * The account and user for a provider identity (the OAuth callback's lookup), or null when it is not linked
 * or its user is soft-deleted.
 * @throws DbError VALIDATION_FAILED.
 * @example const found = await findByProvider({ provider: "github", providerAccountId: String(profile.id) });
 */
export const findByProvider = defineService(
  {
    name: "accounts.findByProvider",
    table: "accounts",
    arity: 1,
    logFields: ([payload]) => ({ provider: payload?.provider }),
  },
  async (
    { handle }: Call<ServiceOptions>,
    payload: { provider: string; providerAccountId: string },
  ): Promise<{ account: LinkedAccount; user: AccountUser } | null> => {
    const input = validate(findInput, payload);
    // accounts_provider_account_key finds the row; the user's primary key the join.
    const [found] = await withMetrics("select", "accounts", () =>
      handle
        .select({ account: linkedAccountColumns, user: publicUserColumns })
        .from(accounts)
        .innerJoin(users, and(eq(users.id, accounts.userId), isNull(users.deletedAt)))
        .where(
          and(eq(accounts.provider, input.provider), eq(accounts.providerAccountId, input.providerAccountId)),
        ),
    );
    return found ?? null;
  },
);

/**
 * The identities linked to a user, oldest first.
 * @throws DbError VALIDATION_FAILED.
 * @example const linked = await listForUser(user.id);
 */
export const listForUser = defineService(
  { name: "accounts.listForUser", table: "accounts", arity: 1, logFields: ([userId]) => ({ userId }) },
  async ({ handle }: Call<ServiceOptions>, userId: string): Promise<LinkedAccount[]> => {
    const id = validate(uuid, userId);
    // accounts_user_id_idx.
    return await withMetrics("select", "accounts", () =>
      handle
        .select(linkedAccountColumns)
        .from(accounts)
        .where(eq(accounts.userId, id))
        .orderBy(asc(accounts.createdAt), asc(accounts.id)),
    );
  },
);

/**
 * The decrypted provider tokens of an account, or null when there is no such account.
 * @throws DbError VALIDATION_FAILED, DECRYPTION_FAILED (tampered or misplaced ciphertext),
 *   UNKNOWN_ENCRYPTION_KEY (the row's key is no longer configured), CONFIG_INVALID (no key ring).
 * @example const tokens = await getTokens(account.id); await callProvider(tokens?.accessToken);
 */
export const getTokens = defineService(
  { name: "accounts.getTokens", table: "accounts", arity: 1, logFields: ([accountId]) => ({ accountId }) },
  async ({ logger, handle }: Call<ServiceOptions>, accountId: string): Promise<AccountTokens | null> => {
    const id = validate(uuid, accountId);
    const [row] = await withMetrics("select", "accounts", () =>
      handle.select().from(accounts).where(eq(accounts.id, id)),
    );
    if (!row) return null;
    const tokens: AccountTokens = {
      accessToken: unseal(row, "access_token"),
      accessTokenExpiresAt: row.accessTokenExpiresAt,
      refreshToken: unseal(row, "refresh_token"),
      refreshTokenExpiresAt: row.refreshTokenExpiresAt,
    };
    logger.debug({ accountId: row.id }, "account tokens read");
    return tokens;
  },
);

/**
 * After a key rotation: re-encrypts, under the current key, the tokens of every row still on another key,
 * in batches (one short transaction each). Rows that cannot be decrypted are skipped and reported by id.
 * Safe to run from several processes at once.
 * @throws DbError VALIDATION_FAILED, CONFIG_INVALID (no key ring).
 * @example const { reencrypted, failedIds } = await reencrypt({ batchSize: 200 });
 */
export const reencrypt = defineService(
  { name: "accounts.reencrypt", table: "accounts", arity: 1 },
  async (
    { logger, options }: Call<ServiceOptions>,
    payload: { batchSize?: number | undefined; maxBatches?: number | undefined } = {},
  ): Promise<{ reencrypted: number; failedIds: string[] }> => {
    const input = validate(reencryptInput, payload);
    const keyId = currentEncryptionKeyId();
    const failedIds: string[] = [];
    let reencrypted = 0;
    for (let batch = 0; batch < input.maxBatches; batch++) {
      const seen = await transaction(
        async (tx) => {
          // No index on encryption_key_id: rotation is rare and this scan runs once per batch. SKIP LOCKED
          // lets concurrent runs (and relinks holding a row) work on disjoint rows.
          const rows = await withMetrics("select", "accounts", () =>
            tx
              .select()
              .from(accounts)
              .where(
                and(
                  isNotNull(accounts.encryptionKeyId),
                  ne(accounts.encryptionKeyId, keyId),
                  failedIds.length > 0 ? notInArray(accounts.id, failedIds) : undefined,
                ),
              )
              .orderBy(asc(accounts.id))
              .limit(input.batchSize)
              .for("update", { skipLocked: true }),
          );
          for (const row of rows) {
            let access: SealedToken;
            let refresh: SealedToken;
            try {
              access = seal(unseal(row, "access_token"), row, "access_token");
              refresh = seal(unseal(row, "refresh_token"), row, "refresh_token");
            } catch (error) {
              if (!isDbError(error, "DECRYPTION_FAILED") && !isDbError(error, "UNKNOWN_ENCRYPTION_KEY"))
                throw error;
              failedIds.push(row.id);
              logger.error(
                { accountId: row.id, code: error.code },
                "account tokens could not be re-encrypted",
              );
              continue;
            }
            await withMetrics("update", "accounts", () =>
              tx
                .update(accounts)
                .set({
                  accessTokenCiphertext: access.ciphertext,
                  accessTokenIv: access.iv,
                  accessTokenTag: access.tag,
                  refreshTokenCiphertext: refresh.ciphertext,
                  refreshTokenIv: refresh.iv,
                  refreshTokenTag: refresh.tag,
                  encryptionKeyId: keyId,
                })
                .where(eq(accounts.id, row.id)),
            );
            reencrypted++;
          }
          return rows.length;
        },
        { tx: options.tx },
      );
      if (seen < input.batchSize) break;
    }
    if (reencrypted > 0) logger.audit({ reencrypted, keyId }, "account tokens re-encrypted");
    return { reencrypted, failedIds };
  },
);
