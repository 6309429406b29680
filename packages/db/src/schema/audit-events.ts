// The audit trail: one row per security event, inserted in the transaction of the change it records. Rows
// are then chained (AuditService.chain, run every second by the API): in `seq` order, each row's `hash`
// covers the previous row's hash and the row's own content, so editing or deleting a chained row breaks the
// chain at that row (AuditService.verify). Writers never wait for each other: only the chainer orders rows.
import { sql } from "drizzle-orm";
import { bigint, check, index, jsonb, pgTable, text, uuid } from "drizzle-orm/pg-core";
import { bytea, id, timestamptz } from "./columns.ts";

/** Every action the trail records. */
export const AUDIT_ACTIONS = [
  "sign_up",
  "sign_in",
  "sign_in_failed",
  "sign_out",
  "session_revoked",
  "sessions_revoked",
  "password_changed",
  "password_reset",
  "email_verified",
  "magic_link_sent",
  "provider_linked",
  "provider_unlinked",
  "user_deleted",
  "user_restored",
  "role_granted",
  "role_revoked",
  "admin_key_used",
] as const;
export type AuditAction = (typeof AUDIT_ACTIONS)[number];

/**
 * Who did it: a signed-in user (actorUserId), the admin API key, the system (maintenance, the command line), or
 * an anonymous client (a failed sign-in, a sign-up: the subject, if any, is the account it was aimed at).
 */
export const AUDIT_ACTORS = ["user", "admin_key", "system", "anonymous"] as const;
export type AuditActor = (typeof AUDIT_ACTORS)[number];

const list = (values: readonly string[]) => sql.raw(values.map((value) => `'${value}'`).join(", "));

export const auditEvents = pgTable(
  "audit_events",
  {
    id: id(),
    /** The chain's order, assigned by the chainer (null until then). */
    seq: bigint("seq", { mode: "number" }).unique("audit_events_seq_key"),
    occurredAt: timestamptz("occurred_at").notNull(),
    actorType: text("actor_type").notNull(),
    /** The acting user when actorType is `user`. Not a foreign key: the trail outlives purged users. */
    actorUserId: uuid("actor_user_id"),
    /** Whom the event is about. Not a foreign key, for the same reason. */
    subjectUserId: uuid("subject_user_id"),
    action: text("action").notNull(),
    ipAddress: text("ip_address"),
    userAgent: text("user_agent"),
    requestId: text("request_id"),
    /** Ids and facts only; never a secret (AuditService.record refuses secret-looking fields and values). */
    details: jsonb("details").$type<Record<string, unknown>>().notNull(),
    /** The previous row's hash (32 zero bytes for the first row ever); null until chained. */
    prevHash: bytea("prev_hash"),
    /** SHA-256 of prevHash and this row's canonical content; null until chained. */
    hash: bytea("hash"),
  },
  (t) => [
    check("audit_events_action_check", sql`${t.action} IN (${list(AUDIT_ACTIONS)})`),
    check("audit_events_actor_type_check", sql`${t.actorType} IN (${list(AUDIT_ACTORS)})`),
    /** Chained (seq, prev_hash and hash) or not yet (none of them). */
    check(
      "audit_events_chained_check",
      sql`(${t.seq} IS NULL) = (${t.hash} IS NULL) AND (${t.hash} IS NULL) = (${t.prevHash} IS NULL)`,
    ),
    index("audit_events_subject_id_idx").on(t.subjectUserId, t.id),
    index("audit_events_actor_id_idx").on(t.actorUserId, t.id),
    index("audit_events_unchained_idx").on(t.id).where(sql`${t.seq} IS NULL`),
    index("audit_events_occurred_at_idx").on(t.occurredAt),
  ],
);

export type AuditEvent = typeof auditEvents.$inferSelect;
