// Column builders shared by the tables, so every table follows the same conventions:
// UUIDv7 ids generated in TypeScript (PostgreSQL < 18 has no uuidv7()), timestamptz only, bytea for hashes.
import { customType, timestamp, uuid } from "drizzle-orm/pg-core";
import { uuidv7 } from "uuidv7";

/** `id uuid primary key`, a UUIDv7 made by the application: time-ordered, so inserts stay index-friendly. */
export const id = () =>
  uuid("id")
    .primaryKey()
    .$defaultFn(() => uuidv7());

/** A `timestamptz` column read and written as `Date`. */
export const timestamptz = (name: string) => timestamp(name, { withTimezone: true, mode: "date" });

/** `created_at` / `updated_at`; `updated_at` is kept current by the `set_updated_at` trigger. */
export const timestamps = () => ({
  createdAt: timestamptz("created_at").notNull().defaultNow(),
  updatedAt: timestamptz("updated_at").notNull().defaultNow(),
});

/** Raw bytes (SHA-256 digests, ciphertexts, IVs); node-postgres returns them as Buffer. */
export const bytea = customType<{ data: Buffer; driverData: Buffer }>({
  dataType: () => "bytea",
});

/** Full-text search vector; only ever written by a generated column. */
export const tsvector = customType<{ data: string }>({
  dataType: () => "tsvector",
});
