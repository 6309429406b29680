// docs/scaling.md plans how the schema would be sharded with Citus. Its two tables (where each table goes; the
// keys that must change) are read from the page and checked against the migrated schema: every table is
// placed; a distributed table's distribution column exists and is NOT NULL; a table colocated with users
// references users.id from its distribution column; every unique key and foreign key of a distributed table
// either works under Citus as it is or is listed with its replacement; nothing listed is stale. The checker is
// tested too, on a throwaway database with one deliberate violation of each rule.
import { readFileSync } from "node:fs";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { runMigrations } from "../src/migrate.ts";
import { createTestDatabase, type TestDatabase, useTestDatabase } from "../src/testing/index.ts";

const PAGE = new URL("../../../docs/scaling.md", import.meta.url);

/** The rows of the markdown table that follows `<!-- marker ...-->` on the page, as arrays of cell texts. */
function tableAfter(page: string, marker: string): string[][] {
  const at = page.indexOf(`<!-- ${marker}`);
  if (at < 0) throw new Error(`docs/scaling.md has no <!-- ${marker} --> table`);
  const lines = page.slice(at).split("\n").slice(1);
  const rows: string[][] = [];
  for (const line of lines) {
    if (!line.startsWith("|")) {
      if (rows.length > 0) break;
      continue;
    }
    rows.push(
      line
        .slice(1, -1)
        .split("|")
        .map((cell) => cell.trim()),
    );
  }
  // Header and separator first.
  return rows.slice(2);
}

interface Placement {
  table: string;
  placement: "distributed" | "coordinator" | "reference";
  column: string;
  colocatedWith: string;
}

interface Plan {
  placements: Map<string, Placement>;
  /** constraint name (or table.column for a nullable distribution column) → the table it is on */
  changes: Map<string, string>;
}

function readPlan(page: string): Plan {
  const placements = new Map<string, Placement>();
  for (const [table, placement, column, colocatedWith] of tableAfter(page, "citus-distribution")) {
    if (!table || !["distributed", "coordinator", "reference"].includes(placement ?? "")) {
      throw new Error(`docs/scaling.md: bad distribution row for ${table}`);
    }
    placements.set(table, {
      table,
      placement: placement as Placement["placement"],
      column: column ?? "",
      colocatedWith: colocatedWith ?? "",
    });
  }
  const changes = new Map<string, string>();
  for (const [name, table] of tableAfter(page, "citus-changes")) {
    if (name && table) changes.set(name, table);
  }
  return { placements, changes };
}

type Query = <R extends pg.QueryResultRow>(text: string) => Promise<R[]>;

/** Every way the schema behind `query` departs from the plan, in words; empty when the plan holds. */
async function planProblems(query: Query, plan: Plan): Promise<string[]> {
  const problems: string[] = [];
  const tables = await query<{ name: string; unlogged: boolean }>(
    `SELECT c.relname AS name, c.relpersistence = 'u' AS unlogged FROM pg_class c
     WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') ORDER BY 1`,
  );
  const columns = await query<{ table: string; column: string; not_null: boolean }>(
    `SELECT c.relname AS table, a.attname AS column, a.attnotnull AS not_null
     FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
     WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped`,
  );
  const uniques = await query<{ table: string; name: string; columns: string[] }>(
    `SELECT t.relname AS table, i.relname AS name,
            array(SELECT a.attname::text FROM unnest(x.indkey) k JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k)
              AS columns
     FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid
     WHERE t.relnamespace = 'public'::regnamespace AND x.indisunique`,
  );
  const foreignKeys = await query<{
    table: string;
    name: string;
    columns: string[];
    target: string;
    target_columns: string[];
  }>(
    `SELECT t.relname AS table, c.conname AS name, f.relname AS target,
            array(SELECT a.attname::text FROM unnest(c.conkey) k JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = k) AS columns,
            array(SELECT a.attname::text FROM unnest(c.confkey) k JOIN pg_attribute a ON a.attrelid = f.oid AND a.attnum = k)
              AS target_columns
     FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid JOIN pg_class f ON f.oid = c.confrelid
     WHERE c.contype = 'f' AND t.relnamespace = 'public'::regnamespace`,
  );

  const existing = new Set(tables.map((t) => t.name));
  for (const table of existing)
    if (!plan.placements.has(table)) problems.push(`table ${table} is not placed`);
  for (const table of plan.placements.keys())
    if (!existing.has(table)) problems.push(`placed table ${table} does not exist`);

  const listed = (name: string) => plan.changes.has(name);
  const used = new Set<string>();
  const distributed = (table: string) => {
    const placement = plan.placements.get(table);
    return placement?.placement === "distributed" ? placement : undefined;
  };
  /** The tables colocated with `table` (its group's root and every member). */
  const group = (table: string) => {
    const root = plan.placements.get(table)?.colocatedWith || table;
    return new Set([
      root,
      ...[...plan.placements.values()].filter((p) => p.colocatedWith === root).map((p) => p.table),
    ]);
  };

  for (const placement of plan.placements.values()) {
    if (placement.placement !== "distributed" || !existing.has(placement.table)) continue;
    const column = columns.find((c) => c.table === placement.table && c.column === placement.column);
    if (!column) {
      problems.push(`${placement.table}.${placement.column} (distribution column) does not exist`);
      continue;
    }
    const nullable = `${placement.table}.${placement.column}`;
    if (!column.not_null) {
      if (listed(nullable)) used.add(nullable);
      else problems.push(`${nullable} is a distribution column and may be NULL`);
    }
    if (placement.colocatedWith) {
      const root = distributed(placement.colocatedWith);
      const reference = foreignKeys.find(
        (fk) =>
          fk.table === placement.table &&
          fk.target === placement.colocatedWith &&
          fk.columns.join() === placement.column &&
          fk.target_columns.join() === root?.column,
      );
      if (!root || !reference) {
        problems.push(
          `${placement.table} is colocated with ${placement.colocatedWith} but does not reference it by its distribution column`,
        );
      }
    }
  }

  for (const unique of uniques) {
    const placement = distributed(unique.table);
    if (!placement) continue;
    if (unique.columns.includes(placement.column)) continue;
    if (listed(unique.name)) used.add(unique.name);
    else
      problems.push(
        `unique key ${unique.name} on ${unique.table} lacks the distribution column ${placement.column}`,
      );
  }

  for (const fk of foreignKeys) {
    const placement = distributed(fk.table);
    const target = distributed(fk.target);
    if (!placement) continue;
    const works =
      target !== undefined &&
      group(fk.table).has(fk.target) &&
      fk.columns.join() === placement.column &&
      fk.target_columns.join() === target.column;
    if (works) continue;
    if (listed(fk.name)) used.add(fk.name);
    else
      problems.push(
        `foreign key ${fk.name} on ${fk.table} does not join distribution columns of colocated tables`,
      );
  }

  for (const [name, table] of plan.changes) {
    if (!used.has(name))
      problems.push(`listed change ${name} on ${table} matches nothing that needs changing`);
  }
  const cache = tables.find((t) => t.name === "cache");
  if (cache && !cache.unlogged) problems.push("cache is not UNLOGGED, as the plan's placement of it assumes");
  return problems;
}

const database = useTestDatabase();
const plan = readPlan(readFileSync(PAGE, "utf8"));

describe("the Citus plan in docs/scaling.md", () => {
  it("accounts for every table, unique key, foreign key and distribution column of the schema", async () => {
    const query: Query = async <R extends pg.QueryResultRow>(text: string) =>
      (await database.admin<R>(text)).rows;
    expect(await planProblems(query, plan)).toEqual([]);
  });

  it("places the session check's two tables together, and the per-user tables with them", () => {
    for (const table of ["sessions", "accounts", "user_roles", "one_time_tokens"]) {
      expect(plan.placements.get(table)).toMatchObject({
        placement: "distributed",
        column: "user_id",
        colocatedWith: "users",
      });
    }
    expect(plan.placements.get("users")).toMatchObject({ placement: "distributed", column: "id" });
  });

  describe("the checker", () => {
    let bad: TestDatabase;
    let client: pg.Client;
    beforeAll(async () => {
      bad = await createTestDatabase({ empty: true });
      await runMigrations({ url: bad.url });
      client = new pg.Client({ connectionString: bad.url });
      await client.connect();
      await client.query(`
        CREATE TABLE unplaced (id uuid PRIMARY KEY);
        CREATE UNIQUE INDEX sessions_ip_key ON sessions (ip_address, id);
        ALTER TABLE accounts ADD COLUMN granted_by uuid;
        ALTER TABLE accounts ADD CONSTRAINT accounts_granted_by_fk FOREIGN KEY (granted_by) REFERENCES users(id);
        ALTER TABLE sessions DROP CONSTRAINT sessions_user_id_users_id_fk;
        ALTER TABLE user_roles DROP CONSTRAINT user_roles_granted_by_users_id_fk;
      `);
    });
    afterAll(async () => {
      await client?.end();
      await bad?.drop();
    });

    it("reports each departure", async () => {
      const query: Query = async <R extends pg.QueryResultRow>(text: string) =>
        (await client.query<R>(text)).rows;
      const problems = await planProblems(query, plan);
      expect(problems).toEqual(
        expect.arrayContaining([
          "table unplaced is not placed",
          "unique key sessions_ip_key on sessions lacks the distribution column user_id",
          "foreign key accounts_granted_by_fk on accounts does not join distribution columns of colocated tables",
          "sessions is colocated with users but does not reference it by its distribution column",
          "listed change user_roles_granted_by_users_id_fk on user_roles matches nothing that needs changing",
        ]),
      );
      expect(problems).toHaveLength(5);
    });
  });
});
