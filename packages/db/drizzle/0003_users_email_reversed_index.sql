-- Serves domain filters (`%@example.com`) in UsersService.list. CREATE INDEX blocks writes to users while it
-- builds. On a large table, build it first outside the migrator (CONCURRENTLY cannot run in its transaction):
--   CREATE INDEX CONCURRENTLY IF NOT EXISTS "users_email_reversed_idx" ON "users" USING btree (reverse("email") text_pattern_ops);
-- and this migration then finds it in place.
-- Its statistics are kept finer than the default 100 buckets: with coarse ones a rare domain is estimated at
-- 1% of the users, and the planner then walks the primary key hoping to fill a page early, reading the
-- whole table for a domain with 20 users.
CREATE INDEX IF NOT EXISTS "users_email_reversed_idx" ON "users" USING btree (reverse("email") text_pattern_ops);--> statement-breakpoint
ALTER INDEX "users_email_reversed_idx" ALTER COLUMN 1 SET STATISTICS 1000;
