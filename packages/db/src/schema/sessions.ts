// Sessions: the token's secret is never stored, only its SHA-256 digest (token_hash).
import { sql } from "drizzle-orm";
import { index, inet, jsonb, pgEnum, pgTable, text, uuid } from "drizzle-orm/pg-core";
import { bytea, id, timestamps, timestamptz } from "./columns.ts";
import { users } from "./users.ts";

export const sessionStatus = pgEnum("session_status", ["active", "expired", "revoked"]);

export const sessions = pgTable(
  "sessions",
  {
    id: id(),
    userId: uuid("user_id")
      .notNull()
      .references(() => users.id, { onDelete: "cascade" }),
    tokenHash: bytea("token_hash").notNull().unique("sessions_token_hash_key"),
    status: sessionStatus("status").notNull().default("active"),
    /** How the user signed in: password, magic_link, oauth, ... */
    authMethod: text("auth_method").notNull(),
    ipAddress: inet("ip_address"),
    userAgent: text("user_agent"),
    expiresAt: timestamptz("expires_at").notNull(),
    lastAccessedAt: timestamptz("last_accessed_at"),
    revokedAt: timestamptz("revoked_at"),
    metadata: jsonb("metadata").$type<Record<string, unknown>>().notNull().default(sql`'{}'::jsonb`),
    ...timestamps(),
  },
  (t) => [index("sessions_user_id_idx").on(t.userId), index("sessions_expires_at_idx").on(t.expiresAt)],
);

export type Session = typeof sessions.$inferSelect;
export type NewSession = typeof sessions.$inferInsert;
