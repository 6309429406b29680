// The writes behind link(): the single upsert of the common cases, and the rewrite of a relinked row whose
// kept tokens are encrypted under an older key.
import { eq, sql } from "drizzle-orm";
import { uuidv7 } from "uuidv7";
import type { DatabaseOrTransaction } from "../../connection.ts";
import { currentEncryptionKeyId } from "../../crypto/encryption.ts";
import { isDbError } from "../../errors.ts";
import { withMetrics } from "../../metrics.ts";
import { type Account, accounts } from "../../schema/accounts.ts";
import { notFound } from "../common.ts";
import { type LinkedAccount, linkedAccountColumns } from "./columns.ts";
import type { LinkValues } from "./schemas.ts";
import { seal, unseal } from "./sealing.ts";

/** The single upsert behind link(); undefined when it wrote nothing (see link() for the reasons). */
export async function upsert(
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
        if (isDbError(error, "FOREIGN_KEY_VIOLATION")) throw notFound("users", error);
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
 * Relink of a row whose kept tokens are encrypted under an older key: decrypts what is kept and writes every
 * token under the current key, so the row's single key id stays true. The caller holds the row lock.
 */
export async function rewrite(
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
  if (!account) throw notFound("accounts");
  return account;
}
