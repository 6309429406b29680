// The audit trail's chain head: one row holding the newest chained event's seq and hash, and where retention
// cut the chain. AuditService.chain locks it while it chains the events written since (so two chainers never
// fork the chain); verify() checks the newest chained event against it (a deleted tail shows) and the oldest
// against the pruned point (so does a deleted head).
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
    /** The last seq retention deleted (0 if none): the oldest kept event must be the next one. */
    prunedSeq: bigint("pruned_seq", { mode: "number" }).notNull(),
    /** That event's hash: the oldest kept event's prev_hash. */
    prunedHash: bytea("pruned_hash").notNull(),
  },
  (t) => [check("audit_chain_one_row", sql`${t.id}`)],
);

export type AuditChainHead = typeof auditChain.$inferSelect;
