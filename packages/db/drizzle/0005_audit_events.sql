CREATE TABLE "audit_events" (
	"id" uuid PRIMARY KEY NOT NULL,
	"seq" bigint NOT NULL,
	"occurred_at" timestamp with time zone NOT NULL,
	"actor_type" text NOT NULL,
	"actor_user_id" uuid,
	"subject_user_id" uuid,
	"action" text NOT NULL,
	"ip_address" text,
	"user_agent" text,
	"request_id" text,
	"details" jsonb NOT NULL,
	"prev_hash" "bytea" NOT NULL,
	"hash" "bytea" NOT NULL,
	CONSTRAINT "audit_events_seq_key" UNIQUE("seq"),
	CONSTRAINT "audit_events_action_check" CHECK ("audit_events"."action" IN ('sign_up', 'sign_in', 'sign_in_failed', 'sign_out', 'session_revoked', 'sessions_revoked', 'password_changed', 'password_reset', 'email_verified', 'magic_link_sent', 'provider_linked', 'provider_unlinked', 'user_deleted', 'user_restored', 'role_granted', 'role_revoked', 'admin_key_used')),
	CONSTRAINT "audit_events_actor_type_check" CHECK ("audit_events"."actor_type" IN ('user', 'admin_key', 'system'))
);
--> statement-breakpoint
CREATE INDEX "audit_events_subject_seq_idx" ON "audit_events" USING btree ("subject_user_id","seq");--> statement-breakpoint
CREATE INDEX "audit_events_occurred_at_idx" ON "audit_events" USING btree ("occurred_at");