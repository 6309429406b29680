// Users: soft-deleted (deleted_at), so email and phone are unique only among users that are not deleted.
import { sql } from "drizzle-orm";
import { check, index, jsonb, pgTable, text, uniqueIndex } from "drizzle-orm/pg-core";
import { id, timestamps, timestamptz, tsvector } from "./columns.ts";

export const users = pgTable(
  "users",
  {
    id: id(),
    /** Stored normalized: trimmed and lower-cased. */
    email: text("email"),
    emailVerifiedAt: timestamptz("email_verified_at"),
    /** E.164, e.g. +14155550123. */
    phoneNumber: text("phone_number"),
    phoneNumberVerifiedAt: timestamptz("phone_number_verified_at"),
    /** argon2id PHC string; null for accounts without a password. */
    passwordHash: text("password_hash"),
    firstName: text("first_name"),
    lastName: text("last_name"),
    avatarUrl: text("avatar_url"),
    metadata: jsonb("metadata").$type<Record<string, unknown>>().notNull().default(sql`'{}'::jsonb`),
    lastSignInAt: timestamptz("last_sign_in_at"),
    deletedAt: timestamptz("deleted_at"),
    ...timestamps(),
    // Email words, names and the string values of metadata, for ranked full-text search.
    // The 'simple' configuration keeps names and addresses unstemmed.
    searchVector: tsvector("search_vector")
      .notNull()
      .generatedAlwaysAs(
        sql`setweight(to_tsvector('simple', coalesce("email", '') || ' ' || translate(coalesce("email", ''), '@.+_-', '     ')), 'A') || setweight(to_tsvector('simple', coalesce("first_name", '') || ' ' || coalesce("last_name", '')), 'A') || setweight(jsonb_to_tsvector('simple', "metadata", '["string"]'), 'C')`,
      ),
  },
  (t) => [
    // Partial unique indexes: a deleted user's address can sign up again. Predicates are written as raw SQL
    // because drizzle-kit can emit `$1` placeholders for `.where(eq(...))`.
    uniqueIndex("users_email_active_key").on(t.email).where(sql`"deleted_at" IS NULL`),
    uniqueIndex("users_phone_number_active_key").on(t.phoneNumber).where(sql`"deleted_at" IS NULL`),
    // Trigram indexes serve `LIKE ANY` patterns with leading wildcards (`%@example.com`).
    index("users_email_trgm_idx").using("gin", t.email.op("gin_trgm_ops")),
    index("users_phone_number_trgm_idx").using("gin", t.phoneNumber.op("gin_trgm_ops")),
    // The reversed address in byte order serves domain filters (`%@example.com`) as a range scan: a suffix
    // pattern becomes a prefix pattern on reverse(email). The trigram index also matches it, but its
    // trigrams of ".example", ".com" are in most rows, so it reads most of the index to find a few.
    index("users_email_reversed_idx").on(sql`reverse("email") text_pattern_ops`),
    index("users_search_vector_idx").using("gin", t.searchVector),
    // Purging soft-deleted users scans by deletion time.
    index("users_deleted_at_idx").on(t.deletedAt).where(sql`"deleted_at" IS NOT NULL`),
    check("users_email_or_phone_check", sql`"email" IS NOT NULL OR "phone_number" IS NOT NULL`),
    check("users_email_normalized_check", sql`"email" = lower(btrim("email"))`),
  ],
);

export type User = typeof users.$inferSelect;
export type NewUser = typeof users.$inferInsert;
