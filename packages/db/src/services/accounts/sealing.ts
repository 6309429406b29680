// Token sealing: the provider's access and refresh tokens are encrypted (AES-256-GCM, see encryption.ts)
// with additional authenticated data that binds each to its provider account and column.
import { decrypt, type EncryptedValue, encrypt, tokenAad } from "../../crypto/encryption.ts";
import { DbError } from "../../errors.ts";
import type { Account } from "../../schema/accounts.ts";

// ---------------------------------------------------------------------------------------------------------
// Encryption of the two token columns

export type TokenColumn = "access_token" | "refresh_token";

export interface SealedToken {
  ciphertext: Buffer | null;
  iv: Buffer | null;
  tag: Buffer | null;
}

const EMPTY: SealedToken = { ciphertext: null, iv: null, tag: null };

/** Encrypts one token for `column` of the account `where`; all null when there is no token. */
export function seal(
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
export function unseal(row: Account, column: TokenColumn): string | null {
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
