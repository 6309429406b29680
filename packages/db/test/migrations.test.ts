import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { migrationStatus, pendingSql, readMigrations, runMigrations } from "../src/migrate.ts";
import {
  checkSchemaConventions,
  createTestDatabase,
  describeSchema,
  type TestDatabase,
} from "../src/testing/index.ts";

const created: TestDatabase[] = [];
async function emptyDatabase(): Promise<TestDatabase> {
  const database = await createTestDatabase({ empty: true });
  created.push(database);
  return database;
}
afterAll(async () => {
  for (const database of created) await database.drop();
});

describe("migrations", () => {
  it("have strictly increasing journal timestamps (the migrator skips older ones silently)", () => {
    const files = readMigrations();
    expect(files.length).toBeGreaterThanOrEqual(3);
    for (let i = 1; i < files.length; i++) {
      expect(files[i]?.when).toBeGreaterThan(files[i - 1]?.when ?? Number.POSITIVE_INFINITY);
    }
  });

  it("contain no CREATE INDEX CONCURRENTLY (it fails inside the migrator's transaction)", () => {
    // Comments may tell operators to build an index concurrently by hand; the SQL run must not.
    for (const file of readMigrations()) {
      expect(file.sql.replace(/--[^\n]*/g, "")).not.toMatch(/create\s+index\s+concurrently/i);
    }
  });

  it("four migrators racing on an empty database all succeed and apply each migration once", async () => {
    const raced = await emptyDatabase();
    const results = await Promise.all(Array.from({ length: 4 }, () => runMigrations({ url: raced.url })));
    const files = readMigrations();
    // Exactly one migrator applied everything; the others found nothing to do.
    const appliedCounts = results.map((r) => r.applied.length).sort();
    expect(appliedCounts).toEqual([0, 0, 0, files.length]);

    const client = new pg.Client({ connectionString: raced.url });
    await client.connect();
    const rows = await client.query<{ hash: string; n: string }>(
      "SELECT hash, count(*) AS n FROM drizzle.__drizzle_migrations GROUP BY hash",
    );
    await client.end();
    expect(rows.rows).toHaveLength(files.length);
    for (const row of rows.rows) expect(Number(row.n)).toBe(1);

    const serial = await emptyDatabase();
    await runMigrations({ url: serial.url });
    const racedSchema = await describeSchema(raced.url);
    const serialSchema = await describeSchema(serial.url);
    expect(racedSchema).toEqual(serialSchema);
    expect((racedSchema.tables as unknown[]).length).toBe(8);
  });

  it("reports pending migrations and prints their SQL, then none once applied", async () => {
    const database = await emptyDatabase();
    const before = await migrationStatus({ url: database.url });
    expect(before.applied).toHaveLength(0);
    expect(before.pending.map((m) => m.tag)).toEqual(readMigrations().map((m) => m.tag));
    const text = await pendingSql({ url: database.url });
    expect(text).toContain("-- migration: 0000_extensions_and_functions");
    expect(text).toContain('ALTER TABLE "cache" SET UNLOGGED');
    expect(text).not.toContain("statement-breakpoint");

    // Applying the printed SQL with another tool leaves the database exactly as runMigrations would.
    const client = new pg.Client({ connectionString: database.url });
    await client.connect();
    await client.query(text);
    await client.end();
    expect((await runMigrations({ url: database.url })).applied).toEqual([]);
    const serial = await emptyDatabase();
    await runMigrations({ url: serial.url });
    const printed = await describeSchema(database.url);
    const migrated = await describeSchema(serial.url);
    expect(printed).toEqual(migrated);
    const after = await migrationStatus({ url: database.url });
    expect(after.pending).toHaveLength(0);
    expect(after.unknown).toHaveLength(0);
    expect(await pendingSql({ url: database.url })).toBe("");
    // Running again is a no-op.
    expect((await runMigrations({ url: database.url })).applied).toEqual([]);
  });

  it("produce a schema that follows every convention, with a cache table that is unlogged", async () => {
    const database = await createTestDatabase();
    created.push(database);
    expect(await checkSchemaConventions(database.url)).toEqual([]);
    const client = new pg.Client({ connectionString: database.url });
    await client.connect();
    const cache = await client.query<{ relpersistence: string }>(
      "SELECT relpersistence FROM pg_class WHERE relname = 'cache'",
    );
    const superuser = await client.query<{ rolsuper: boolean }>(
      "SELECT rolsuper FROM pg_roles WHERE rolname = current_user",
    );
    await client.end();
    expect(cache.rows[0]?.relpersistence).toBe("u");
    // The suite migrates and runs as a role that is not a superuser, as on managed services.
    expect(superuser.rows[0]?.rolsuper).toBe(false);
  });
});
