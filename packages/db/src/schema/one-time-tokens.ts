// One-time tokens (links and short codes). Only a digest is stored; use-once is enforced by a conditional
// UPDATE ... RETURNING on used_at in the service.
import { sql } from "drizzle-orm";
import { bigint, index, jsonb, pgEnum, pgTable, text, uuid } from "drizzle-orm/pg-core";
import { bytea, id, timestamps, timestamptz } from "./columns.ts";
import { users } from "./users.ts";

export const oneTimeTokenPurpose = pgEnum("one_time_token_purpose", [
  "email_verification",
  "password_reset",
  "magic_link",
  "email_change",
  "phone_verification",
  "invite",
]);

export const oneTimeTokens = pgTable(
  "one_time_tokens",
  {
    id: id(),
    /** Null for tokens sent to an address that has no user yet (invites, sign-up by link). */
    userId: uuid("user_id").references(() => users.id, { onDelete: "cascade" }),
    purpose: oneTimeTokenPurpose("purpose").notNull(),
    tokenHash: bytea("token_hash").notNull().unique("one_time_tokens_token_hash_key"),
    /** The address (email or phone) the token was sent to. */
    sentTo: text("sent_to").notNull(),
    expiresAt: timestamptz("expires_at").notNull(),
    usedAt: timestamptz("used_at"),
    /**
     * For a sign-up's email verification link: the argon2 hash of the password that registration chose. It is
     * set on the user only when this link is used, so each registration's link confirms its own password.
     */
    passwordHash: text("password_hash"),
    /** For a sign-up's email verification link: the names that registration gave, applied with its password. */
    profile: jsonb("profile").$type<{ firstName?: string | null; lastName?: string | null }>(),
    /** Failed verification attempts, for short codes. */
    attempts: bigint("attempts", { mode: "number" }).notNull().default(0),
    deletedAt: timestamptz("deleted_at"),
    ...timestamps(),
  },
  (t) => [
    index("one_time_tokens_user_id_idx").on(t.userId),
    index("one_time_tokens_expires_at_idx").on(t.expiresAt),
    // Finding the live tokens of an address for a purpose (codes, invalidating older tokens).
    index("one_time_tokens_live_sent_to_idx")
      .on(t.sentTo, t.purpose)
      .where(sql`"used_at" IS NULL AND "deleted_at" IS NULL`),
  ],
);

export type OneTimeToken = typeof oneTimeTokens.$inferSelect;
export type NewOneTimeToken = typeof oneTimeTokens.$inferInsert;
export type OneTimeTokenPurpose = (typeof oneTimeTokenPurpose.enumValues)[number];
