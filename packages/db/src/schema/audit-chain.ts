// The audit trail's chain head: one row holding the newest event's seq and hash, and where retention cut the
// chain. AuditService.record appends through it in one statement: `UPDATE audit_chain ... RETURNING` waits
// for the row lock and then sees the committed head (PostgreSQL re-reads an updated row after a lock wait),
// so concurrent writers chain one after the other without a separate lock or read. verify() checks the
// newest event against it (a deleted tail shows) and the oldest against the pruned point (so does a
// deleted head).
import { sql } from "drizzle-orm";
import { bigint, boolean, check, pgTable } from "drizzle-orm/pg-core";
import { bytea } from "./columns.ts";

export const auditChain = pgTable(
  "audit_chain",
  {
    /** Always true: the table holds one row. */
    id: boolean("id").primaryKey().default(true),
    /** The newest event's seq (0 before the first). */
    seq: bigint("seq", { mode: "number" }).notNull(),
    /** The newest event's hash (32 zero bytes before the first). */
    hash: bytea("hash").notNull(),
    /** The hash before the newest event's: what that event's prev_hash must be. */
    prevHash: bytea("prev_hash").notNull(),
    /** The last seq retention deleted (0 if none): the oldest kept event must be the next one. */
    prunedSeq: bigint("pruned_seq", { mode: "number" }).notNull(),
    /** That event's hash: the oldest kept event's prev_hash. */
    prunedHash: bytea("pruned_hash").notNull(),
  },
  (t) => [check("audit_chain_one_row", sql`${t.id}`)],
);

export type AuditChainHead = typeof auditChain.$inferSelect;
