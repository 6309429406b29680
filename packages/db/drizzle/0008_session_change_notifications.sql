-- Session change notifications: every change that can end a session or its user's right to one is announced
-- on the channel rdb_session_changes when its transaction commits (NOTIFY is transactional), whichever code
-- made it: the services, maintenance, or SQL typed by hand. Processes that cache validated sessions or read
-- them from replicas LISTEN and forget what they hold for that session or user. Payloads:
--   s:<session id>:<user id>   a live session was revoked, expired, shortened or deleted
--   *                          a table was truncated: forget everything
--   u:<user id>                the user changed (deleted, or its profile, which a session check returns), or
--                              its roles changed
-- Rows that no check would accept any more (an expired session deleted by cleanup, a soft-deleted user purged)
-- are not announced: cleanup deletes them by the thousand, and every listener would have to read each one.
-- The sliding refresh (expires_at moved later) matches no WHEN clause, so the hot path never notifies:
-- committing a transaction that notified takes a cluster-wide lock on the notification queue. Users change
-- rarely (a sign-in, a profile edit), so every update of a user is announced: a cached session check answers
-- with the user, and must not show an old profile.
CREATE OR REPLACE FUNCTION notify_session_ended() RETURNS trigger
  LANGUAGE plpgsql
  AS $$
BEGIN
  PERFORM pg_notify('rdb_session_changes', 's:' || OLD.id::text || ':' || OLD.user_id::text);
  RETURN NULL;
END $$;
--> statement-breakpoint
CREATE OR REPLACE FUNCTION notify_user_sessions_changed() RETURNS trigger
  LANGUAGE plpgsql
  AS $$
BEGIN
  IF TG_TABLE_NAME = 'users' THEN
    PERFORM pg_notify('rdb_session_changes', 'u:' || OLD.id::text);
  ELSIF TG_OP = 'DELETE' THEN
    PERFORM pg_notify('rdb_session_changes', 'u:' || OLD.user_id::text);
  ELSE
    PERFORM pg_notify('rdb_session_changes', 'u:' || NEW.user_id::text);
    IF TG_OP = 'UPDATE' AND OLD.user_id IS DISTINCT FROM NEW.user_id THEN
      PERFORM pg_notify('rdb_session_changes', 'u:' || OLD.user_id::text);
    END IF;
  END IF;
  RETURN NULL;
END $$;
--> statement-breakpoint
CREATE TRIGGER sessions_notify_ended AFTER UPDATE ON sessions FOR EACH ROW
  WHEN (OLD.status = 'active' AND (NEW.status <> 'active' OR NEW.expires_at < OLD.expires_at
        OR NEW.user_id IS DISTINCT FROM OLD.user_id OR NEW.token_hash IS DISTINCT FROM OLD.token_hash))
  EXECUTE FUNCTION notify_session_ended();
--> statement-breakpoint
CREATE TRIGGER sessions_notify_deleted AFTER DELETE ON sessions FOR EACH ROW
  WHEN (OLD.status = 'active' AND OLD.expires_at > now())
  EXECUTE FUNCTION notify_session_ended();
--> statement-breakpoint
CREATE TRIGGER users_notify_changed AFTER UPDATE ON users FOR EACH ROW
  EXECUTE FUNCTION notify_user_sessions_changed();
--> statement-breakpoint
CREATE TRIGGER users_notify_purged AFTER DELETE ON users FOR EACH ROW
  WHEN (OLD.deleted_at IS NULL)
  EXECUTE FUNCTION notify_user_sessions_changed();
--> statement-breakpoint
CREATE TRIGGER user_roles_notify_changed AFTER INSERT OR UPDATE OR DELETE ON user_roles FOR EACH ROW
  EXECUTE FUNCTION notify_user_sessions_changed();
--> statement-breakpoint
CREATE OR REPLACE FUNCTION notify_sessions_truncated() RETURNS trigger
  LANGUAGE plpgsql
  AS $$
BEGIN
  PERFORM pg_notify('rdb_session_changes', '*');
  RETURN NULL;
END $$;
--> statement-breakpoint
CREATE TRIGGER sessions_notify_truncated AFTER TRUNCATE ON sessions FOR EACH STATEMENT
  EXECUTE FUNCTION notify_sessions_truncated();
--> statement-breakpoint
CREATE TRIGGER users_notify_truncated AFTER TRUNCATE ON users FOR EACH STATEMENT
  EXECUTE FUNCTION notify_sessions_truncated();
--> statement-breakpoint
CREATE TRIGGER user_roles_notify_truncated AFTER TRUNCATE ON user_roles FOR EACH STATEMENT
  EXECUTE FUNCTION notify_sessions_truncated();
