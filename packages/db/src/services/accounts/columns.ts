// The columns of an account that callers see: every one but the encrypted tokens and their key id.
import { getTableColumns } from "drizzle-orm";
import { type Account, accounts } from "../../schema/accounts.ts";

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

const {
  accessTokenCiphertext: _accessTokenCiphertext,
  accessTokenIv: _accessTokenIv,
  accessTokenTag: _accessTokenTag,
  refreshTokenCiphertext: _refreshTokenCiphertext,
  refreshTokenIv: _refreshTokenIv,
  refreshTokenTag: _refreshTokenTag,
  encryptionKeyId: _encryptionKeyId,
  ...columns
} = getTableColumns(accounts);
/** The columns of LinkedAccount, for selects and RETURNING clauses. */
export const linkedAccountColumns = columns;
