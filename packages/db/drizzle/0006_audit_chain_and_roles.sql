CREATE TABLE "audit_chain" (
	"id" boolean PRIMARY KEY DEFAULT true NOT NULL,
	"seq" bigint NOT NULL,
	"hash" "bytea" NOT NULL,
	"pruned_seq" bigint NOT NULL,
	"pruned_hash" "bytea" NOT NULL,
	CONSTRAINT "audit_chain_one_row" CHECK ("audit_chain"."id")
);
--> statement-breakpoint
CREATE TABLE "user_roles" (
	"id" uuid PRIMARY KEY NOT NULL,
	"user_id" uuid NOT NULL,
	"role" text NOT NULL,
	"granted_by" uuid,
	"created_at" timestamp with time zone DEFAULT now() NOT NULL,
	"updated_at" timestamp with time zone DEFAULT now() NOT NULL,
	CONSTRAINT "user_roles_user_role_key" UNIQUE("user_id","role"),
	CONSTRAINT "user_roles_role_check" CHECK ("user_roles"."role" IN ('admin', 'support'))
);
--> statement-breakpoint
ALTER TABLE "audit_events" DROP CONSTRAINT "audit_events_actor_type_check";--> statement-breakpoint
DROP INDEX "audit_events_subject_seq_idx";--> statement-breakpoint
ALTER TABLE "audit_events" ALTER COLUMN "seq" DROP NOT NULL;--> statement-breakpoint
ALTER TABLE "audit_events" ALTER COLUMN "prev_hash" DROP NOT NULL;--> statement-breakpoint
ALTER TABLE "audit_events" ALTER COLUMN "hash" DROP NOT NULL;--> statement-breakpoint
ALTER TABLE "user_roles" ADD CONSTRAINT "user_roles_user_id_users_id_fk" FOREIGN KEY ("user_id") REFERENCES "public"."users"("id") ON DELETE cascade ON UPDATE no action;--> statement-breakpoint
ALTER TABLE "user_roles" ADD CONSTRAINT "user_roles_granted_by_users_id_fk" FOREIGN KEY ("granted_by") REFERENCES "public"."users"("id") ON DELETE set null ON UPDATE no action;--> statement-breakpoint
CREATE INDEX "user_roles_granted_by_idx" ON "user_roles" USING btree ("granted_by");--> statement-breakpoint
CREATE INDEX "audit_events_subject_id_idx" ON "audit_events" USING btree ("subject_user_id","id");--> statement-breakpoint
CREATE INDEX "audit_events_actor_id_idx" ON "audit_events" USING btree ("actor_user_id","id");--> statement-breakpoint
CREATE INDEX "audit_events_unchained_idx" ON "audit_events" USING btree ("id") WHERE "audit_events"."seq" IS NULL;--> statement-breakpoint
ALTER TABLE "audit_events" ADD CONSTRAINT "audit_events_chained_check" CHECK (("audit_events"."seq" IS NULL) = ("audit_events"."hash" IS NULL) AND ("audit_events"."hash" IS NULL) = ("audit_events"."prev_hash" IS NULL));--> statement-breakpoint
ALTER TABLE "audit_events" ADD CONSTRAINT "audit_events_actor_type_check" CHECK ("audit_events"."actor_type" IN ('user', 'admin_key', 'system', 'anonymous'));--> statement-breakpoint
CREATE TRIGGER "user_roles_set_updated_at" BEFORE UPDATE ON "user_roles"
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
--> statement-breakpoint
-- The chain head starts where the events already chained end (the oldest kept one's prev_hash is the pruned
-- point), or at the genesis (seq 0, 32 zero bytes) on an empty trail.
INSERT INTO "audit_chain" ("id", "seq", "hash", "pruned_seq", "pruned_hash")
SELECT true,
  coalesce(newest.seq, 0),
  coalesce(newest.hash, decode(repeat('00', 32), 'hex')),
  coalesce(oldest.seq - 1, 0),
  coalesce(oldest.prev_hash, decode(repeat('00', 32), 'hex'))
FROM (SELECT 1) AS one
LEFT JOIN LATERAL (SELECT seq, hash FROM "audit_events" WHERE seq IS NOT NULL ORDER BY seq DESC LIMIT 1) AS newest ON true
LEFT JOIN LATERAL (SELECT seq, prev_hash FROM "audit_events" WHERE seq IS NOT NULL ORDER BY seq ASC LIMIT 1) AS oldest ON true;
