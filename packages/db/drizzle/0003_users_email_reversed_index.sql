-- Serves domain filters (`%@example.com`) in UsersService.list. CREATE INDEX blocks writes to users while it
-- builds. On a large table, build it first outside the migrator (CONCURRENTLY cannot run in its transaction):
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS "users_email_reversed_idx" ON "users" USING btree (reverse("email") text_pattern_ops);
-- and this migration then finds it in place.
CREATE INDEX IF NOT EXISTS "users_email_reversed_idx" ON "users" USING btree (reverse("email") text_pattern_ops);
