// Hot-path statements: SQL compiled once at module load and sent by node-postgres as a named prepared
// statement, so PostgreSQL parses and plans it once per connection and each call costs one Bind/Execute.
// Building a Drizzle query per call costs more than the query itself on a primary-key read (the pitfalls list
// measured 7k ops/s for the query builder against 18k for a named statement at 16 clients).
// Behind a transaction-mode pooler (DATABASE_POOLER=transaction or ?pgbouncer=true) names are dropped: the
// same text goes out as an unnamed statement, because a named one may land on a server connection that never
// prepared it.
import { type Column, is, Placeholder, type SQL, sql } from "drizzle-orm";
import { PgDialect } from "drizzle-orm/pg-core";
import type pg from "pg";
import { type DatabaseOrTransaction, db, getDB, getPool, usesNamedStatements } from "./connection.ts";
import { DbError } from "./errors.ts";

const dialect = new PgDialect();

/** What node-postgres can run a query on: the pool, or the client a transaction holds. */
type Queryable = Pick<pg.Pool, "query"> | Pick<pg.ClientBase, "query">;

/**
 * Where a statement runs: the pool (undefined or `db`), a Drizzle transaction or database, or a client
 * checked out by statementTransaction().
 */
export type StatementTarget = DatabaseOrTransaction | pg.ClientBase | undefined;

/** A statement compiled once; `run` binds values by placeholder name. */
export interface Statement<Row extends pg.QueryResultRow, Params extends Record<string, unknown>> {
  /** The name the statement is prepared under on each connection (`rdb_` + its key). */
  readonly name: string;
  /** False for a statement planned on every call (see StatementOptions.prepare). */
  readonly prepared: boolean;
  /** The SQL with `$1..$n`, exactly as sent. */
  readonly text: string;
  /** The values in `$n` order for these parameters (what a raw node-postgres caller would send). */
  values(params: Params): unknown[];
  /** Runs on the pool (no handle, or `db`) or on the transaction's client. Errors are node-postgres errors. */
  run(handle: StatementTarget, params: Params): Promise<pg.QueryResult<Row>>;
  /** The plan PostgreSQL picks for these parameters, one line per element. */
  explain(handle: StatementTarget, params: Params, analyze?: boolean): Promise<string[]>;
}

export interface StatementOptions {
  /**
   * Prepare under a name (default true). After five runs PostgreSQL may switch a prepared statement to a
   * generic plan that ignores the values; a query whose best plan depends on them (LIKE patterns served by a
   * trigram index or not) says false and is planned per call, still without per-call query building.
   */
  prepare?: boolean;
}

const registry = new Map<string, Statement<pg.QueryResultRow, Record<string, unknown>>>();

/** `sql.placeholder(name)`: a value bound each time the statement runs. */
export const param = (name: string): Placeholder => sql.placeholder(name);

/**
 * Compiles `query` (built with `param(...)` for every per-call value) into a named statement.
 * @throws DbError CONFIG_INVALID when `key` is reused for another text or is over 59 bytes, or the query
 *   embeds a literal value (per-call values must be placeholders, or the text would vary).
 * @example const byId = defineStatement<{ id: string }, { id: string }>("users_by_id", sql`SELECT id FROM users WHERE id = ${param("id")}::uuid`);
 */
export function defineStatement<
  Row extends pg.QueryResultRow,
  Params extends Record<string, unknown> = Record<string, unknown>,
>(key: string, query: SQL, options: StatementOptions = {}): Statement<Row, Params> {
  const prepared = options.prepare ?? true;
  const name = `rdb_${key}`;
  // PostgreSQL cuts identifiers at 63 bytes: two long names could then collide on one connection.
  if (Buffer.byteLength(name) > 63) {
    throw new DbError("CONFIG_INVALID", `Statement name ${name} is longer than PostgreSQL's 63 bytes`);
  }
  const compiled = dialect.sqlToQuery(query);
  const order = compiled.params.map((value, index) => {
    if (!is(value, Placeholder)) {
      throw new DbError("CONFIG_INVALID", `Statement ${key}: parameter $${index + 1} is not a placeholder`);
    }
    return value.name as keyof Params & string;
  });
  const existing = registry.get(name);
  if (existing && existing.text !== compiled.sql) {
    throw new DbError("CONFIG_INVALID", `Statement ${key} is already defined with another text`);
  }
  const text = compiled.sql;
  const values = (params: Params): unknown[] => {
    const out = new Array<unknown>(order.length);
    for (let i = 0; i < order.length; i++) out[i] = params[order[i] as keyof Params];
    return out;
  };
  const statement: Statement<Row, Params> = {
    name,
    prepared,
    text,
    values,
    run(handle, params) {
      const config: pg.QueryConfig = { text, values: values(params) };
      if (prepared && usesNamedStatements()) config.name = name;
      return queryable(handle).query<Row>(config);
    },
    async explain(handle, params, analyze = false) {
      const result = await queryable(handle).query<{ "QUERY PLAN": string }>({
        text: `${analyze ? "EXPLAIN (ANALYZE, BUFFERS)" : "EXPLAIN"} ${text}`,
        values: values(params),
      });
      return result.rows.map((row) => row["QUERY PLAN"]);
    },
  };
  registry.set(name, statement as unknown as Statement<pg.QueryResultRow, Record<string, unknown>>);
  return statement;
}

/**
 * Every statement defined so far (the services define theirs at import; list statements on first use of
 * their shape): name, text and parameter order, for benchmarks and tests.
 */
export function definedStatements(): ReadonlyArray<
  Pick<Statement<pg.QueryResultRow, Record<string, unknown>>, "name" | "text" | "prepared" | "values">
> {
  return [...registry.values()];
}

/**
 * The node-postgres object behind a handle: our pool for `db`, otherwise the client Drizzle's session holds
 * (a transaction's checked-out client, or a caller's own pool).
 */
function queryable(handle: StatementTarget): Queryable {
  if (handle === undefined || handle === db) return getPool();
  // A node-postgres client has a query() method; a Drizzle handle's `query` is its relational API object.
  if (typeof (handle as { query?: unknown }).query === "function") return handle as pg.ClientBase;
  if (handle === getDB()) return getPool();
  const client = (handle as unknown as { session?: { client?: Queryable } }).session?.client;
  if (!client || typeof client.query !== "function") {
    throw new DbError(
      "CONFIG_INVALID",
      "The tx option must be a Drizzle node-postgres database or transaction",
    );
  }
  return client;
}

/** `alias.column AS "key"` for each column: rows come back keyed by the schema's property names. */
export function selectColumns(alias: string, columns: Record<string, Column>, prefix = ""): SQL {
  return sql.join(
    Object.entries(columns).map(
      ([key, column]) =>
        sql`${sql.identifier(alias)}.${sql.identifier(column.name)} AS ${sql.identifier(prefix + key)}`,
    ),
    sql`, `,
  );
}
