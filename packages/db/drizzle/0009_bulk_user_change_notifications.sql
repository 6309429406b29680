-- Changes of users are announced once per statement instead of once per row (migration 0008 announced each
-- row): a statement that changes up to 100 users still sends u:<user id> for each of them, and one that changes
-- more sends '*' (every listening process forgets every cached session check, as after a TRUNCATE). A bulk
-- UPDATE of a million users by an administrator used to queue a million notifications in the commit that made
-- it, holding the notification queue's cluster-wide lock meanwhile, and made every listener evict users one by
-- one. A statement that changes no row (or purges only soft-deleted users) announces nothing.
CREATE OR REPLACE FUNCTION notify_users_changed() RETURNS trigger
  LANGUAGE plpgsql
  AS $$
DECLARE
  changed bigint;
BEGIN
  IF TG_OP = 'DELETE' THEN
    SELECT count(*) INTO changed FROM old_users WHERE deleted_at IS NULL;
  ELSE
    SELECT count(*) INTO changed FROM old_users;
  END IF;
  IF changed > 100 THEN
    PERFORM pg_notify('rdb_session_changes', '*');
  ELSIF TG_OP = 'DELETE' THEN
    PERFORM pg_notify('rdb_session_changes', 'u:' || id::text) FROM old_users WHERE deleted_at IS NULL;
  ELSE
    PERFORM pg_notify('rdb_session_changes', 'u:' || id::text) FROM old_users;
  END IF;
  RETURN NULL;
END $$;
--> statement-breakpoint
DROP TRIGGER users_notify_changed ON users;
--> statement-breakpoint
DROP TRIGGER users_notify_purged ON users;
--> statement-breakpoint
CREATE TRIGGER users_notify_changed AFTER UPDATE ON users REFERENCING OLD TABLE AS old_users
  FOR EACH STATEMENT EXECUTE FUNCTION notify_users_changed();
--> statement-breakpoint
CREATE TRIGGER users_notify_purged AFTER DELETE ON users REFERENCING OLD TABLE AS old_users
  FOR EACH STATEMENT EXECUTE FUNCTION notify_users_changed();
