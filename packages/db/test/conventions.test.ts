import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runMigrations } from "../src/migrate.ts";
import {
  CONVENTION_EXCEPTIONS,
  checkSchemaConventions,
  createTestDatabase,
  type TestDatabase,
} from "../src/testing/index.ts";

// The checker itself is tested: a throwaway database with one deliberately bad table per rule.
describe("schema convention checker", () => {
  let bad: TestDatabase;
  beforeAll(async () => {
    bad = await createTestDatabase({ empty: true });
    await runMigrations({ url: bad.url });
    const client = new pg.Client({ connectionString: bad.url });
    await client.connect();
    await client.query(`
      CREATE TABLE naive_timestamps (id uuid PRIMARY KEY, created_at timestamp NOT NULL, updated_at timestamptz NOT NULL);
      CREATE TRIGGER naive_timestamps_set_updated_at BEFORE UPDATE ON naive_timestamps FOR EACH ROW EXECUTE FUNCTION set_updated_at();
      CREATE TABLE no_key (id uuid, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
      CREATE TRIGGER no_key_set_updated_at BEFORE UPDATE ON no_key FOR EACH ROW EXECUTE FUNCTION set_updated_at();
      CREATE TABLE unindexed_child (id uuid PRIMARY KEY, user_id uuid REFERENCES users(id),
        created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
      CREATE TRIGGER unindexed_child_set_updated_at BEFORE UPDATE ON unindexed_child FOR EACH ROW EXECUTE FUNCTION set_updated_at();
      CREATE TABLE user_notes (id uuid PRIMARY KEY, user_id uuid NOT NULL REFERENCES users(id),
        created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
      CREATE INDEX user_notes_user_id_idx ON user_notes (user_id);
      CREATE TRIGGER user_notes_set_updated_at BEFORE UPDATE ON user_notes FOR EACH ROW EXECUTE FUNCTION set_updated_at();
      ALTER TABLE user_notes ENABLE ROW LEVEL SECURITY;
      CREATE POLICY user_notes_user_scope ON user_notes USING (app_scope_user() IS NULL OR user_id = app_scope_user())
        WITH CHECK (app_scope_user() IS NULL OR user_id = app_scope_user());
      ALTER TABLE sessions NO FORCE ROW LEVEL SECURITY;
      CREATE TABLE no_trigger (id uuid PRIMARY KEY, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
      CREATE TABLE int_counter (id uuid PRIMARY KEY, hits integer NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
      CREATE TRIGGER int_counter_set_updated_at BEFORE UPDATE ON int_counter FOR EACH ROW EXECUTE FUNCTION set_updated_at();
      CREATE TABLE serial_id (id serial PRIMARY KEY, created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL);
      CREATE TRIGGER serial_id_set_updated_at BEFORE UPDATE ON serial_id FOR EACH ROW EXECUTE FUNCTION set_updated_at();
      CREATE TABLE no_timestamps (id uuid PRIMARY KEY);
      ALTER TABLE cache SET LOGGED;
    `);
    await client.end();
  });
  afterAll(async () => {
    await bad?.drop();
  });

  it("reports each violation once, naming the table and column", async () => {
    const violations = await checkSchemaConventions(bad.url);
    const found = violations.map((v) => `${v.rule}:${v.table}${v.column ? `.${v.column}` : ""}`).sort();
    expect(found).toEqual(
      [
        "timestamptz:naive_timestamps.created_at",
        "timestamps:naive_timestamps.created_at",
        "primary_key:no_key",
        "foreign_key_index:unindexed_child.user_id",
        "updated_at_trigger:no_trigger",
        "bigint_integers:int_counter.hits",
        "bigint_integers:serial_id.id",
        "uuid_id:serial_id",
        "timestamps:no_timestamps.created_at",
        "timestamps:no_timestamps.updated_at",
        "updated_at_trigger:no_timestamps",
        "unlogged_cache:cache",
        // A per-user table without a policy, one whose policy is not forced on the owner, and one that lost
        // its FORCE: all three fail.
        "user_scope:unindexed_child",
        "user_scope:user_notes",
        "user_scope:sessions",
      ].sort(),
    );
    for (const v of violations) expect(v.message.length).toBeGreaterThan(10);
  });

  it("lists every exception with a reason, and only for tables that exist", () => {
    for (const exception of CONVENTION_EXCEPTIONS) {
      expect(exception.reason.length).toBeGreaterThan(20);
      expect(["cache", "audit_events", "audit_chain", "user_roles"]).toContain(exception.table);
    }
  });
});
