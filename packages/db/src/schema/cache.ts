// The cache table. It is UNLOGGED (made so by a custom migration, as drizzle cannot express it): writes skip
// the WAL, so it is fast, but it is emptied after a crash and not replicated. No logged table may reference it.
import { index, jsonb, pgTable, primaryKey, text } from "drizzle-orm/pg-core";
import { timestamptz } from "./columns.ts";

export const cache = pgTable(
  "cache",
  {
    resourceType: text("resource_type").notNull(),
    key: text("key").notNull(),
    value: jsonb("value").$type<unknown>().notNull(),
    /** Null: never expires. */
    expiresAt: timestamptz("expires_at"),
    createdAt: timestamptz("created_at").notNull().defaultNow(),
    /** Set by the upsert itself: no trigger on this hot path. */
    updatedAt: timestamptz("updated_at").notNull().defaultNow(),
  },
  (t) => [
    primaryKey({ name: "cache_pkey", columns: [t.resourceType, t.key] }),
    index("cache_expires_at_idx").on(t.expiresAt),
  ],
);

export type CacheEntry = typeof cache.$inferSelect;
