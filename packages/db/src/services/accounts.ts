// Linked OAuth identities. A (provider, provider account id) pair belongs to at most one user; the provider's
// access and refresh tokens are stored encrypted (AES-256-GCM, see encryption.ts) and never returned except
// by getTokens(). Every other read returns LinkedAccount, which has no ciphertext columns at all.
import { and, asc, eq, getTableColumns, isNotNull, isNull, ne, notInArray, sql } from "drizzle-orm";
import { uuidv7 } from "uuidv7";
import { z } from "zod";
import { type DatabaseOrTransaction, db, transaction } from "../connection.ts";
import {
  currentEncryptionKeyId,
  decrypt,
  type EncryptedValue,
  encrypt,
  tokenAad,
} from "../crypto/encryption.ts";
import { DbError, isDbError } from "../errors.ts";
import { withMetrics } from "../metrics.ts";
import { type Account, accounts } from "../schema/accounts.ts";
import { users } from "../schema/users.ts";
import {
  noNul,
  type PublicUser,
  publicUserColumns,
  type ServiceOptions,
  userNotFound,
  uuidSchema,
  validate,
} from "./common.ts";
import { type Call, defineService } from "./define.ts";

/** An account as returned to callers: everything but the encrypted tokens and their key id. */
export type LinkedAccount = Omit<
  Account,
  | "accessTokenCiphertext"
  | "accessTokenIv"
  | "accessTokenTag"
  | "refreshTokenCiphertext"
  | "refreshTokenIv"
  | "refreshTokenTag"
  | "encryptionKeyId"
>;
/** The user behind an account: the password hash and the search vector are left out. */
export type AccountUser = PublicUser;

/** The decrypted provider tokens of one account. */
export interface AccountTokens {
  accessToken: string | null;
  accessTokenExpiresAt: Date | null;
  refreshToken: string | null;
  refreshTokenExpiresAt: Date | null;
}

const {
  accessTokenCiphertext: _accessTokenCiphertext,
  accessTokenIv: _accessTokenIv,
  accessTokenTag: _accessTokenTag,
  refreshTokenCiphertext: _refreshTokenCiphertext,
  refreshTokenIv: _refreshTokenIv,
  refreshTokenTag: _refreshTokenTag,
  encryptionKeyId: _encryptionKeyId,
  ...linkedAccountColumns
} = getTableColumns(accounts);

// ---------------------------------------------------------------------------------------------------------
// Input

const uuid = uuidSchema;
/** Provider ids are short lower-case identifiers: google, github, microsoft-entra, ... */
const provider = z.string().regex(/^[a-z0-9][a-z0-9_.-]{0,63}$/, "must be a short lower-case identifier");
// NUL is refused because it separates the parts of the additional authenticated data (and text rejects it).
const providerAccountId = z.string().min(1).max(255).refine(noNul, "must not contain NUL");
const providerToken = z.string().min(1).max(16_384).refine(noNul, "must not contain NUL");

const linkInput = z.strictObject({
  userId: uuid,
  provider,
  providerAccountId,
  scope: z.string().max(4096).refine(noNul, "must not contain NUL").nullish(),
  accessToken: providerToken.nullish(),
  accessTokenExpiresAt: z.date().nullish(),
  refreshToken: providerToken.nullish(),
  refreshTokenExpiresAt: z.date().nullish(),
});
/**
 * What link() takes. On a relink, a field left `undefined` keeps its stored value and `null` clears it
 * (providers often send no new refresh token on re-consent: the stored one survives). A token's expiry
 * follows its token: sending a new token without an expiry clears the old expiry.
 */
export type LinkAccountInput = z.input<typeof linkInput>;

const unlinkInput = z.strictObject({ accountId: uuid, userId: uuid.optional() });
const findInput = z.strictObject({ provider, providerAccountId });
const reencryptInput = z.strictObject({
  batchSize: z.number().int().min(1).max(10_000).default(100),
  maxBatches: z.number().int().min(1).max(100_000).default(10_000),
});

// ---------------------------------------------------------------------------------------------------------
// Encryption of the two token columns

type TokenColumn = "access_token" | "refresh_token";

interface SealedToken {
  ciphertext: Buffer | null;
  iv: Buffer | null;
  tag: Buffer | null;
}

const EMPTY: SealedToken = { ciphertext: null, iv: null, tag: null };

function seal(
  plaintext: string | null | undefined,
  where: { provider: string; providerAccountId: string },
  column: TokenColumn,
): SealedToken {
  if (plaintext === null || plaintext === undefined) return EMPTY;
  const { ciphertext, iv, tag } = encrypt(
    plaintext,
    tokenAad(where.provider, where.providerAccountId, column),
  );
  return { ciphertext, iv, tag };
}

/** Decrypts one token column of a stored row; null when the column holds no token. */
function unseal(row: Account, column: TokenColumn): string | null {
  const stored =
    column === "access_token"
      ? { ciphertext: row.accessTokenCiphertext, iv: row.accessTokenIv, tag: row.accessTokenTag }
      : { ciphertext: row.refreshTokenCiphertext, iv: row.refreshTokenIv, tag: row.refreshTokenTag };
  if (stored.ciphertext === null) return null;
  if (stored.iv === null || stored.tag === null || row.encryptionKeyId === null) {
    throw new DbError("DECRYPTION_FAILED", "The encrypted value is incomplete", { table: "accounts" });
  }
  const value: EncryptedValue = {
    keyId: row.encryptionKeyId,
    ciphertext: stored.ciphertext,
    iv: stored.iv,
    tag: stored.tag,
  };
  return decrypt(value, tokenAad(row.provider, row.providerAccountId, column));
}

function alreadyLinked(): DbError<"ACCOUNT_ALREADY_LINKED"> {
  return new DbError("ACCOUNT_ALREADY_LINKED", "This provider account is linked to another user", {
    table: "accounts",
  });
}

// ---------------------------------------------------------------------------------------------------------
// Service

type LinkValues = z.output<typeof linkInput>;

/** The single upsert behind link(); undefined when it wrote nothing (see link() for the reasons). */
async function upsert(
  handle: DatabaseOrTransaction,
  input: LinkValues,
): Promise<{ account: LinkedAccount; inserted: boolean } | undefined> {
  const given = {
    scope: input.scope !== undefined,
    access: input.accessToken !== undefined,
    accessExpiry: input.accessToken !== undefined || input.accessTokenExpiresAt !== undefined,
    refresh: input.refreshToken !== undefined,
    refreshExpiry: input.refreshToken !== undefined || input.refreshTokenExpiresAt !== undefined,
  };
  const hasNewToken = Boolean(input.accessToken || input.refreshToken);
  // Encrypt before any SQL: a missing key ring fails the call without a write.
  const keyId = hasNewToken ? currentEncryptionKeyId() : null;
  const access = seal(input.accessToken, input, "access_token");
  const refresh = seal(input.refreshToken, input, "refresh_token");
  const columns = Object.entries(linkedAccountColumns).map(
    ([key, column]) => sql`${sql.identifier(column.name)} AS ${sql.identifier(key)}`,
  );
  // One statement for the common cases. INSERT ... SELECT from users: a missing or soft-deleted user inserts
  // nothing. ON CONFLICT on accounts_provider_account_key turns a relink into an update, but only for the
  // same user (the DO UPDATE's WHERE): another user's row is left alone and RETURNING gives nothing. The
  // update also stands back when it would keep a stored token encrypted under an older key next to new
  // ones under the current key (a row has one key id); link() then re-encrypts in a transaction.
  // `xmax = 0` is true only for a freshly inserted row version: it tells an insert from an update.
  const result = await withMetrics("upsert", "accounts", () =>
    handle
      .execute<Record<string, unknown>>(sql`
        INSERT INTO accounts AS a (id, user_id, provider, provider_account_id, scope,
          access_token_ciphertext, access_token_iv, access_token_tag, access_token_expires_at,
          refresh_token_ciphertext, refresh_token_iv, refresh_token_tag, refresh_token_expires_at,
          encryption_key_id)
        SELECT ${uuidv7()}::uuid, u.id, ${input.provider}, ${input.providerAccountId}, ${input.scope ?? null},
          ${access.ciphertext}::bytea, ${access.iv}::bytea, ${access.tag}::bytea, ${input.accessTokenExpiresAt ?? null}::timestamptz,
          ${refresh.ciphertext}::bytea, ${refresh.iv}::bytea, ${refresh.tag}::bytea, ${input.refreshTokenExpiresAt ?? null}::timestamptz,
          ${keyId}::text
        FROM users u
        WHERE u.id = ${input.userId}::uuid AND u.deleted_at IS NULL
        ON CONFLICT (provider, provider_account_id) DO UPDATE SET
          scope = CASE WHEN ${given.scope}::boolean THEN EXCLUDED.scope ELSE a.scope END,
          access_token_ciphertext = CASE WHEN ${given.access}::boolean THEN EXCLUDED.access_token_ciphertext ELSE a.access_token_ciphertext END,
          access_token_iv = CASE WHEN ${given.access}::boolean THEN EXCLUDED.access_token_iv ELSE a.access_token_iv END,
          access_token_tag = CASE WHEN ${given.access}::boolean THEN EXCLUDED.access_token_tag ELSE a.access_token_tag END,
          access_token_expires_at = CASE WHEN ${given.accessExpiry}::boolean THEN EXCLUDED.access_token_expires_at ELSE a.access_token_expires_at END,
          refresh_token_ciphertext = CASE WHEN ${given.refresh}::boolean THEN EXCLUDED.refresh_token_ciphertext ELSE a.refresh_token_ciphertext END,
          refresh_token_iv = CASE WHEN ${given.refresh}::boolean THEN EXCLUDED.refresh_token_iv ELSE a.refresh_token_iv END,
          refresh_token_tag = CASE WHEN ${given.refresh}::boolean THEN EXCLUDED.refresh_token_tag ELSE a.refresh_token_tag END,
          refresh_token_expires_at = CASE WHEN ${given.refreshExpiry}::boolean THEN EXCLUDED.refresh_token_expires_at ELSE a.refresh_token_expires_at END,
          encryption_key_id = coalesce(EXCLUDED.encryption_key_id, a.encryption_key_id)
        WHERE a.user_id = EXCLUDED.user_id
          AND (EXCLUDED.encryption_key_id IS NULL
            OR a.encryption_key_id IS NULL
            OR a.encryption_key_id = EXCLUDED.encryption_key_id
            OR ((${given.access}::boolean OR a.access_token_ciphertext IS NULL)
              AND (${given.refresh}::boolean OR a.refresh_token_ciphertext IS NULL)))
        RETURNING ${sql.join(columns, sql`, `)}, (xmax = 0) AS inserted`)
      .catch((error: unknown) => {
        if (isDbError(error, "FOREIGN_KEY_VIOLATION")) throw userNotFound(error);
        throw error;
      }),
  );
  const row = result.rows[0];
  if (!row) return undefined;
  const account: Record<string, unknown> = {};
  for (const [key, column] of Object.entries(linkedAccountColumns)) {
    const value = row[key];
    account[key] = value === null || value === undefined ? null : column.mapFromDriverValue(value);
  }
  return { account: account as LinkedAccount, inserted: row.inserted === true };
}

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
  async ({ logger, options }: Call<ServiceOptions>, payload: LinkAccountInput): Promise<LinkedAccount> => {
    const input = validate(linkInput, payload);
    const first = await upsert(options.tx ?? db, input);
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
          if (!user) throw userNotFound();
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
 * Relink of a row whose kept tokens are encrypted under an older key: decrypts what is kept and writes every
 * token under the current key, so the row's single key id stays true. The caller holds the row lock.
 */
async function rewrite(
  tx: DatabaseOrTransaction,
  existing: Account,
  input: LinkValues,
): Promise<LinkedAccount> {
  const accessToken = input.accessToken !== undefined ? input.accessToken : unseal(existing, "access_token");
  const refreshToken =
    input.refreshToken !== undefined ? input.refreshToken : unseal(existing, "refresh_token");
  const access = seal(accessToken, input, "access_token");
  const refresh = seal(refreshToken, input, "refresh_token");
  const [account] = await withMetrics("update", "accounts", () =>
    tx
      .update(accounts)
      .set({
        ...(input.scope !== undefined ? { scope: input.scope } : {}),
        accessTokenCiphertext: access.ciphertext,
        accessTokenIv: access.iv,
        accessTokenTag: access.tag,
        ...(input.accessToken !== undefined || input.accessTokenExpiresAt !== undefined
          ? { accessTokenExpiresAt: input.accessTokenExpiresAt ?? null }
          : {}),
        refreshTokenCiphertext: refresh.ciphertext,
        refreshTokenIv: refresh.iv,
        refreshTokenTag: refresh.tag,
        ...(input.refreshToken !== undefined || input.refreshTokenExpiresAt !== undefined
          ? { refreshTokenExpiresAt: input.refreshTokenExpiresAt ?? null }
          : {}),
        encryptionKeyId: accessToken || refreshToken ? currentEncryptionKeyId() : null,
      })
      .where(eq(accounts.id, existing.id))
      .returning(linkedAccountColumns),
  );
  if (!account) throw new DbError("NOT_FOUND", "Account not found", { table: "accounts" });
  return account;
}

/**
 * Removes a linked identity. With `userId`, only if it belongs to that user (for self-service pages).
 * @throws DbError VALIDATION_FAILED, NOT_FOUND (no such account, or not that user's).
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
    payload: { accountId: string; userId?: string | undefined },
  ): Promise<LinkedAccount> => {
    const input = validate(unlinkInput, payload);
    const handle = options.tx ?? db;
    const [account] = await withMetrics("delete", "accounts", () =>
      handle
        .delete(accounts)
        .where(
          and(
            eq(accounts.id, input.accountId),
            input.userId === undefined ? undefined : eq(accounts.userId, input.userId),
          ),
        )
        .returning(linkedAccountColumns),
    );
    if (!account) throw new DbError("NOT_FOUND", "Account not found", { table: "accounts" });
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
    { options }: Call<ServiceOptions>,
    payload: { provider: string; providerAccountId: string },
  ): Promise<{ account: LinkedAccount; user: AccountUser } | null> => {
    const input = validate(findInput, payload);
    const handle = options.tx ?? db;
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
  async ({ options }: Call<ServiceOptions>, userId: string): Promise<LinkedAccount[]> => {
    const id = validate(uuid, userId);
    const handle = options.tx ?? db;
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
  async ({ logger, options }: Call<ServiceOptions>, accountId: string): Promise<AccountTokens | null> => {
    const id = validate(uuid, accountId);
    const handle = options.tx ?? db;
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
