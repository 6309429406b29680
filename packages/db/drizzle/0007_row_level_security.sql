-- Row-level security: inside a user-scoped transaction (transaction(fn, { userId }) sets app.user_id with
-- SET LOCAL app.user_id, for that transaction only) every per-user row of another user is invisible and cannot
-- be written. Outside one (app.user_id unset, or '' once a scoped transaction on the connection has ended),
-- the system scope: every row, as before. FORCE makes the policies apply to the table owner, which is the
-- role the application connects as. On users, writes are scoped the same way, but reads are not: reverse() and
-- the trigram operators its search indexes serve are not LEAKPROOF, and under a reading policy PostgreSQL
-- may not use an index for them (the admin search would scan every user).
CREATE OR REPLACE FUNCTION app_scope_user() RETURNS uuid
  LANGUAGE sql STABLE PARALLEL SAFE
  AS $$ SELECT nullif(current_setting('app.user_id', true), '')::uuid $$;
--> statement-breakpoint
ALTER TABLE "users" ENABLE ROW LEVEL SECURITY;
--> statement-breakpoint
ALTER TABLE "users" FORCE ROW LEVEL SECURITY;
--> statement-breakpoint
CREATE POLICY "users_read" ON "users" FOR SELECT USING (true);
--> statement-breakpoint
CREATE POLICY "users_insert_system_scope" ON "users" FOR INSERT WITH CHECK (app_scope_user() IS NULL);
--> statement-breakpoint
CREATE POLICY "users_update_user_scope" ON "users" FOR UPDATE
  USING (app_scope_user() IS NULL OR "id" = app_scope_user())
  WITH CHECK (app_scope_user() IS NULL OR "id" = app_scope_user());
--> statement-breakpoint
CREATE POLICY "users_delete_user_scope" ON "users" FOR DELETE
  USING (app_scope_user() IS NULL OR "id" = app_scope_user());
--> statement-breakpoint
ALTER TABLE "sessions" ENABLE ROW LEVEL SECURITY;
--> statement-breakpoint
ALTER TABLE "sessions" FORCE ROW LEVEL SECURITY;
--> statement-breakpoint
CREATE POLICY "sessions_user_scope" ON "sessions"
  USING (app_scope_user() IS NULL OR "user_id" = app_scope_user())
  WITH CHECK (app_scope_user() IS NULL OR "user_id" = app_scope_user());
--> statement-breakpoint
ALTER TABLE "accounts" ENABLE ROW LEVEL SECURITY;
--> statement-breakpoint
ALTER TABLE "accounts" FORCE ROW LEVEL SECURITY;
--> statement-breakpoint
CREATE POLICY "accounts_user_scope" ON "accounts"
  USING (app_scope_user() IS NULL OR "user_id" = app_scope_user())
  WITH CHECK (app_scope_user() IS NULL OR "user_id" = app_scope_user());
--> statement-breakpoint
ALTER TABLE "one_time_tokens" ENABLE ROW LEVEL SECURITY;
--> statement-breakpoint
ALTER TABLE "one_time_tokens" FORCE ROW LEVEL SECURITY;
--> statement-breakpoint
CREATE POLICY "one_time_tokens_user_scope" ON "one_time_tokens"
  USING (app_scope_user() IS NULL OR "user_id" = app_scope_user())
  WITH CHECK (app_scope_user() IS NULL OR "user_id" = app_scope_user());
--> statement-breakpoint
ALTER TABLE "audit_events" ENABLE ROW LEVEL SECURITY;
--> statement-breakpoint
ALTER TABLE "audit_events" FORCE ROW LEVEL SECURITY;
--> statement-breakpoint
CREATE POLICY "audit_events_user_scope" ON "audit_events"
  USING (app_scope_user() IS NULL OR "subject_user_id" = app_scope_user())
  WITH CHECK (app_scope_user() IS NULL OR "subject_user_id" = app_scope_user());
