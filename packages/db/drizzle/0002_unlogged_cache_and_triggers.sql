-- Custom migration: what drizzle-kit cannot express about the tables created in 0001.
--
-- The cache is UNLOGGED: its writes skip the write-ahead log, which makes set/increment several times cheaper,
-- at a price we accept for a cache: PostgreSQL empties the table after a crash or an immediate shutdown (not
-- after a clean one), and it is not replicated to standbys (cache reads must go to the primary).
-- drizzle-kit neither writes nor detects this (drizzle-orm#5347); a schema-convention test checks
-- pg_class.relpersistence = 'u'. No logged table may reference it (PostgreSQL forbids that anyway).
ALTER TABLE "cache" SET UNLOGGED;
--> statement-breakpoint
-- updated_at triggers for every mutable table. The cache has none on purpose: its upsert sets updated_at.
CREATE TRIGGER "users_set_updated_at" BEFORE UPDATE ON "users"
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
--> statement-breakpoint
CREATE TRIGGER "sessions_set_updated_at" BEFORE UPDATE ON "sessions"
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
--> statement-breakpoint
CREATE TRIGGER "one_time_tokens_set_updated_at" BEFORE UPDATE ON "one_time_tokens"
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
--> statement-breakpoint
CREATE TRIGGER "accounts_set_updated_at" BEFORE UPDATE ON "accounts"
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();
