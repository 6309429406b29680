// Linked OAuth identities. Provider tokens are stored encrypted with AES-256-GCM: ciphertext, IV and tag per
// token, plus the id of the key that encrypted them so keys can rotate while old rows stay readable.
import { index, pgTable, text, unique, uuid } from "drizzle-orm/pg-core";
import { bytea, id, timestamps, timestamptz } from "./columns.ts";
import { users } from "./users.ts";

export const accounts = pgTable(
  "accounts",
  {
    id: id(),
    userId: uuid("user_id")
      .notNull()
      .references(() => users.id, { onDelete: "cascade" }),
    provider: text("provider").notNull(),
    providerAccountId: text("provider_account_id").notNull(),
    scope: text("scope"),
    accessTokenCiphertext: bytea("access_token_ciphertext"),
    accessTokenIv: bytea("access_token_iv"),
    accessTokenTag: bytea("access_token_tag"),
    accessTokenExpiresAt: timestamptz("access_token_expires_at"),
    refreshTokenCiphertext: bytea("refresh_token_ciphertext"),
    refreshTokenIv: bytea("refresh_token_iv"),
    refreshTokenTag: bytea("refresh_token_tag"),
    refreshTokenExpiresAt: timestamptz("refresh_token_expires_at"),
    /** Id of the configured key the tokens were encrypted with. */
    encryptionKeyId: text("encryption_key_id"),
    ...timestamps(),
  },
  (t) => [
    unique("accounts_provider_account_key").on(t.provider, t.providerAccountId),
    index("accounts_user_id_idx").on(t.userId),
  ],
);

export type Account = typeof accounts.$inferSelect;
export type NewAccount = typeof accounts.$inferInsert;
