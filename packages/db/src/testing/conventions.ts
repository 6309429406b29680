// The schema conventions, checked against a migrated database's catalog rather than the TypeScript schema,
// so hand-written migrations are held to them too. Exceptions are listed here with their reason.
import pg from "pg";

export type ConventionRule =
  | "timestamptz"
  | "primary_key"
  | "uuid_id"
  | "foreign_key_index"
  | "timestamps"
  | "updated_at_trigger"
  | "bigint_integers"
  | "unlogged_cache"
  | "logged_references_unlogged"
  | "user_scope";

export interface ConventionViolation {
  rule: ConventionRule;
  table: string;
  column?: string;
  message: string;
}

/** Tables that must be UNLOGGED. */
export const UNLOGGED_TABLES = ["cache"] as const;

/** Deliberate departures from the rules, each with its reason. */
export const CONVENTION_EXCEPTIONS: { table: string; rule: ConventionRule; reason: string }[] = [
  {
    table: "cache",
    rule: "uuid_id",
    reason:
      "keyed by (resource_type, key): lookups are by that pair, and an id would only cost a second index",
  },
  {
    table: "audit_events",
    rule: "timestamps",
    reason: "append-only: a row is written once (occurred_at) and never updated; its hash covers its content",
  },
  {
    table: "audit_events",
    rule: "updated_at_trigger",
    reason: "append-only: a row is never updated, so there is no updated_at to keep",
  },
  {
    table: "audit_chain",
    rule: "uuid_id",
    reason: "one row (id is always true): the audit chain's head, not an entity",
  },
  {
    table: "audit_chain",
    rule: "timestamps",
    reason: "the head moves with every audit event; the events carry the times",
  },
  {
    table: "audit_chain",
    rule: "updated_at_trigger",
    reason: "updated by every audit event: a trigger would tax each one for a time nobody reads",
  },
  {
    table: "user_roles",
    rule: "user_scope",
    reason:
      "the last-admin check must count every admin, also inside a user's scope; only RolesService writes it",
  },
  {
    table: "cache",
    rule: "updated_at_trigger",
    reason: "its upsert sets updated_at itself; a row trigger would tax the hottest write path",
  },
];

function excepted(table: string, rule: ConventionRule): boolean {
  return CONVENTION_EXCEPTIONS.some((e) => e.table === table && e.rule === rule);
}

type Queryable = Pick<pg.Client, "query">;

async function withClient<T>(target: string | Queryable, fn: (client: Queryable) => Promise<T>): Promise<T> {
  if (typeof target !== "string") return await fn(target);
  const client = new pg.Client({ connectionString: target });
  client.on("error", () => {});
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end();
  }
}

/** Returns every violation of the conventions in the `public` schema (empty when the schema is clean). */
export async function checkSchemaConventions(target: string | Queryable): Promise<ConventionViolation[]> {
  return await withClient(target, async (client) => {
    const violations: ConventionViolation[] = [];
    const add = (v: ConventionViolation) => {
      if (!excepted(v.table, v.rule)) violations.push(v);
    };

    const tables = await client.query<{ table: string; persistence: string }>(`
      SELECT c.relname AS table, c.relpersistence AS persistence
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1`);

    const columns = await client.query<{ table: string; column: string; type: string; notnull: boolean }>(`
      SELECT c.relname AS table, a.attname AS column, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS notnull
      FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped
      ORDER BY 1, a.attnum`);

    const primaryKeys = await client.query<{ table: string; columns: string[] }>(`
      SELECT c.relname AS table, array_agg(a.attname ORDER BY a.attnum)::text[] AS columns
      FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY (k.conkey)
      WHERE n.nspname = 'public' AND k.contype = 'p' GROUP BY c.relname`);

    // A foreign key is covered when some index's leading columns are exactly the key's columns.
    const unindexedForeignKeys = await client.query<{
      table: string;
      constraint: string;
      columns: string[];
    }>(`
      SELECT c.relname AS table, k.conname AS constraint,
             (SELECT array_agg(a.attname ORDER BY a.attnum) FROM pg_attribute a
               WHERE a.attrelid = c.oid AND a.attnum = ANY (k.conkey))::text[] AS columns
      FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'public' AND k.contype = 'f'
        AND NOT EXISTS (
          SELECT 1 FROM pg_index i
          WHERE i.indrelid = c.oid
            AND (SELECT array_agg(x ORDER BY x) FROM unnest(k.conkey) x)
              = (SELECT array_agg(x ORDER BY x) FROM unnest((i.indkey::int2[])[0:array_length(k.conkey, 1) - 1]) x)
        )`);

    const triggers = await client.query<{ table: string }>(`
      SELECT c.relname AS table
      FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
      JOIN pg_proc p ON p.oid = t.tgfoid
      WHERE n.nspname = 'public' AND NOT t.tgisinternal AND p.proname = 'set_updated_at'
        AND (t.tgtype & 2) <> 0 AND (t.tgtype & 16) <> 0`);

    const unloggedReferences = await client.query<{ table: string; referenced: string }>(`
      SELECT c.relname AS table, r.relname AS referenced
      FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_class r ON r.oid = k.confrelid
      JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'public' AND k.contype = 'f' AND c.relpersistence = 'p' AND r.relpersistence = 'u'`);

    // Tables of per-user rows (a user_id or subject_user_id column): row-level security enabled and forced on
    // the owner, with a policy that reads the transaction's user scope (migration 0007's pattern).
    const perUser = await client.query<{
      table: string;
      enabled: boolean;
      forced: boolean;
      scoped: boolean;
    }>(`
      SELECT c.relname AS table, c.relrowsecurity AS enabled, c.relforcerowsecurity AS forced,
        EXISTS (SELECT 1 FROM pg_policy p WHERE p.polrelid = c.oid
          AND pg_get_expr(p.polqual, p.polrelid) LIKE '%app_scope_user()%'
          AND pg_get_expr(p.polwithcheck, p.polrelid) LIKE '%app_scope_user()%') AS scoped
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
        AND EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND NOT a.attisdropped
          AND a.attname IN ('user_id', 'subject_user_id'))
      ORDER BY 1`);
    for (const { table, enabled, forced, scoped } of perUser.rows) {
      if (!enabled || !forced || !scoped) {
        add({
          rule: "user_scope",
          table,
          message: `${table} holds per-user rows but ${!enabled ? "has row-level security off" : !forced ? "does not force row-level security on its owner" : "has no policy on app_scope_user() (USING and WITH CHECK)"}: see drizzle/0007_row_level_security.sql`,
        });
      }
    }

    const pkByTable = new Map(primaryKeys.rows.map((row) => [row.table, row.columns]));
    const triggered = new Set(triggers.rows.map((row) => row.table));

    for (const column of columns.rows) {
      if (column.type.startsWith("timestamp") && column.type.includes("without time zone")) {
        add({
          rule: "timestamptz",
          table: column.table,
          column: column.column,
          message: `${column.table}.${column.column} is ${column.type}: use timestamptz`,
        });
      }
      if (column.type === "integer" || column.type === "smallint") {
        add({
          rule: "bigint_integers",
          table: column.table,
          column: column.column,
          message: `${column.table}.${column.column} is ${column.type}: counters and ids are bigint (or uuid)`,
        });
      }
    }

    for (const { table, persistence } of tables.rows) {
      const pk = pkByTable.get(table);
      if (!pk) {
        add({ rule: "primary_key", table, message: `${table} has no primary key` });
      } else {
        const idType = columns.rows.find((c) => c.table === table && c.column === "id")?.type;
        if (pk.length !== 1 || pk[0] !== "id" || idType !== "uuid") {
          add({
            rule: "uuid_id",
            table,
            message: `${table}'s primary key is (${pk.join(", ")}), not id uuid`,
          });
        }
      }
      for (const name of ["created_at", "updated_at"]) {
        const column = columns.rows.find((c) => c.table === table && c.column === name);
        if (column?.type !== "timestamp with time zone" || !column.notnull) {
          add({
            rule: "timestamps",
            table,
            column: name,
            message: `${table} lacks ${name} timestamptz not null`,
          });
        }
      }
      if (!triggered.has(table)) {
        add({
          rule: "updated_at_trigger",
          table,
          message: `${table} has no BEFORE UPDATE trigger calling set_updated_at()`,
        });
      }
      if ((UNLOGGED_TABLES as readonly string[]).includes(table) && persistence !== "u") {
        add({
          rule: "unlogged_cache",
          table,
          message: `${table} must be UNLOGGED (relpersistence is '${persistence}')`,
        });
      }
    }
    for (const missing of UNLOGGED_TABLES) {
      if (!tables.rows.some((t) => t.table === missing)) {
        add({ rule: "unlogged_cache", table: missing, message: `the ${missing} table is missing` });
      }
    }

    for (const fk of unindexedForeignKeys.rows) {
      add({
        rule: "foreign_key_index",
        table: fk.table,
        column: fk.columns.join(","),
        message: `${fk.table}.${fk.constraint} (${fk.columns.join(", ")}) has no index`,
      });
    }
    for (const ref of unloggedReferences.rows) {
      add({
        rule: "logged_references_unlogged",
        table: ref.table,
        message: `${ref.table} (logged) references ${ref.referenced} (unlogged)`,
      });
    }
    return violations;
  });
}

/**
 * A normalized description of the `public` schema (tables, columns, constraints, indexes, triggers, enums,
 * persistence) and of the recorded migrations, for comparing two databases.
 */
export async function describeSchema(target: string | Queryable): Promise<Record<string, unknown>> {
  return await withClient(target, async (client) => {
    const q = async (text: string) => (await client.query(text)).rows;
    return {
      tables:
        await q(`SELECT c.relname, c.relpersistence FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' AND c.relkind IN ('r','p') ORDER BY 1`),
      columns:
        await q(`SELECT table_name, column_name, data_type, is_nullable, column_default, generation_expression
        FROM information_schema.columns WHERE table_schema = 'public' ORDER BY 1, 2`),
      constraints:
        await q(`SELECT c.relname, k.conname, pg_get_constraintdef(k.oid) AS def FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'public' ORDER BY 1, 2`),
      indexes: await q(`SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1`),
      triggers:
        await q(`SELECT t.tgname, pg_get_triggerdef(t.oid) AS def FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND NOT t.tgisinternal ORDER BY 1`),
      enums:
        await q(`SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)::text[] AS labels FROM pg_type t
        JOIN pg_enum e ON e.enumtypid = t.oid GROUP BY 1 ORDER BY 1`),
      extensions: await q(`SELECT extname FROM pg_extension ORDER BY 1`),
      migrations: await q(`SELECT hash, created_at FROM drizzle.__drizzle_migrations ORDER BY created_at`),
    };
  });
}
