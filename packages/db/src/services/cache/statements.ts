// The cache's SQL: the hot-path statements and the batch readers and writers (with their same-tick
// coalescing) that the functions in cache.ts run them through.
import { sql } from "drizzle-orm";
import { now } from "../../clock.ts";
import { coalescer } from "../../coalesce.ts";
import { withMetrics } from "../../metrics.ts";
import { defineStatement, param } from "../../statements.ts";
import type { ServiceOptions } from "../common.ts";
import { MAX_BATCH_KEYS } from "./limits.ts";

/** The table every statement here runs on (and its metrics are counted under). */
export const TABLE = "cache";

// ---------------------------------------------------------------------------------------------------------
// Statements: compiled once, prepared per connection (see statements.ts).

interface KeyParams extends Record<string, unknown> {
  type: string;
  key: string;
  at: Date;
}

// One statement: the data-modifying CTE always runs (even unreferenced) and removes the entry if it has
// expired; the SELECT sees the snapshot from before that DELETE, so it filters expiry itself.
const getStatement = defineStatement<{ value: unknown }, KeyParams>(
  "cache_get",
  sql`
    WITH expired AS (
      DELETE FROM cache
      WHERE resource_type = ${param("type")} AND key = ${param("key")}
        AND expires_at <= ${param("at")}::timestamptz
      RETURNING 1
    )
    SELECT value FROM cache
    WHERE resource_type = ${param("type")} AND key = ${param("key")}
      AND (expires_at IS NULL OR expires_at > ${param("at")}::timestamptz)`,
);

// The same for many (resource type, key) pairs given as two parallel arrays; n is each pair's position.
// Serves getMany and the coalesced get().
const getBatchStatement = defineStatement<
  { n: string; value: unknown },
  { types: string[]; keys: string[]; at: Date }
>(
  "cache_get_batch",
  sql`
    WITH wanted AS (
      SELECT * FROM unnest(${param("types")}::text[], ${param("keys")}::text[]) WITH ORDINALITY
        AS w(resource_type, key, n)
    ),
    expired AS (
      DELETE FROM cache c
      USING wanted w
      WHERE c.resource_type = w.resource_type AND c.key = w.key AND c.expires_at <= ${param("at")}::timestamptz
      RETURNING 1
    )
    SELECT w.n, c.value FROM wanted w
    JOIN cache c ON c.resource_type = w.resource_type AND c.key = w.key
    WHERE c.expires_at IS NULL OR c.expires_at > ${param("at")}::timestamptz`,
);

// An upsert on the primary key; there is no updated_at trigger on this table, so it sets updated_at.
const setStatement = defineStatement<never, KeyParams & { json: string; expiresAt: Date | null }>(
  "cache_set",
  sql`
    INSERT INTO cache (resource_type, key, value, expires_at, created_at, updated_at)
    VALUES (${param("type")}, ${param("key")}, ${param("json")}::jsonb, ${param("expiresAt")}::timestamptz,
            ${param("at")}::timestamptz, ${param("at")}::timestamptz)
    ON CONFLICT (resource_type, key) DO UPDATE
    SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at`,
);

/** One entry to store, serialized and with its expiry already computed. */
export interface SetEntry {
  type: string;
  key: string;
  json: string;
  expiresAt: Date | null;
}

// Many upserts in one statement, as parallel arrays; rows are written in array order (n), which setBatch
// sorts by key so that concurrent batches lock rows in one order and cannot deadlock each other.
const setBatchStatement = defineStatement<
  never,
  { types: string[]; keys: string[]; values: string[]; expires: Array<Date | null>; at: Date }
>(
  "cache_set_batch",
  sql`
    INSERT INTO cache (resource_type, key, value, expires_at, created_at, updated_at)
    SELECT e.resource_type, e.key, e.value::jsonb, e.expires_at, ${param("at")}::timestamptz,
           ${param("at")}::timestamptz
    FROM unnest(${param("types")}::text[], ${param("keys")}::text[], ${param("values")}::text[],
                ${param("expires")}::timestamptz[]) WITH ORDINALITY AS e(resource_type, key, value, expires_at, n)
    ORDER BY e.n
    ON CONFLICT (resource_type, key) DO UPDATE
    SET value = EXCLUDED.value, expires_at = EXCLUDED.expires_at, updated_at = EXCLUDED.updated_at`,
);

// One upsert: concurrent increments serialize on the row lock of ON CONFLICT DO UPDATE, each adding to the
// value the previous one committed. An expired counter restarts its window. A value that is not a JSON number
// is cast from a non-constant text ('not a counter: string'), so the cast fails (22P02) only for such rows; a
// constant there would be folded, and fail, at plan time.
export const incrementStatement = defineStatement<
  { value: number; expires_at: Date | null },
  KeyParams & { step: number; expiresAt: Date | null }
>(
  "cache_increment",
  sql`
    INSERT INTO cache AS c (resource_type, key, value, expires_at, created_at, updated_at)
    VALUES (${param("type")}, ${param("key")}, to_jsonb(${param("step")}::bigint),
            ${param("expiresAt")}::timestamptz, ${param("at")}::timestamptz, ${param("at")}::timestamptz)
    ON CONFLICT (resource_type, key) DO UPDATE SET
      value = CASE
        WHEN c.expires_at IS NOT NULL AND c.expires_at <= ${param("at")}::timestamptz THEN EXCLUDED.value
        ELSE to_jsonb((CASE WHEN jsonb_typeof(c.value) = 'number' THEN c.value #>> '{}'
                            ELSE 'not a counter: ' || jsonb_typeof(c.value) END)::bigint + ${param("step")}::bigint)
      END,
      expires_at = CASE
        WHEN c.expires_at IS NOT NULL AND c.expires_at <= ${param("at")}::timestamptz THEN EXCLUDED.expires_at
        ELSE c.expires_at
      END,
      updated_at = EXCLUDED.updated_at
    RETURNING value, expires_at`,
);

// DELETE ... RETURNING is the use-once primitive: a concurrent taker waits on the row lock, finds the row
// gone and gets nothing. An expired row is deleted as well but reported as absent.
export const takeStatement = defineStatement<{ value: unknown; live: boolean }, KeyParams>(
  "cache_take",
  sql`
    DELETE FROM cache WHERE resource_type = ${param("type")} AND key = ${param("key")}
    RETURNING value, (expires_at IS NULL OR expires_at > ${param("at")}::timestamptz) AS live`,
);

/** Values of live entries for (type, key) pairs, by position; expired ones are deleted on the way. */
export async function getBatch(
  pairs: ReadonlyArray<{ type: string; key: string }>,
  handle: ServiceOptions["tx"],
): Promise<unknown[]> {
  const at = now();
  const values = new Array<unknown>(pairs.length).fill(null);
  const first = pairs[0];
  if (pairs.length === 1 && first) {
    const result = await withMetrics("get", TABLE, () => getStatement.run(handle, { ...first, at }));
    values[0] = result.rows[0]?.value ?? null;
    return values;
  }
  const params = { types: pairs.map((pair) => pair.type), keys: pairs.map((pair) => pair.key), at };
  const result = await withMetrics("get_many", TABLE, () => getBatchStatement.run(handle, params));
  for (const row of result.rows) values[Number(row.n) - 1] = row.value;
  return values;
}

// get() calls outside a transaction issued in the same tick are answered by one statement.
export const getCoalesced = coalescer<{ type: string; key: string }, unknown>({
  key: (pair) => `${pair.type}\u0000${pair.key}`,
  run: (pairs) => getBatch(pairs, undefined),
  maxBatch: MAX_BATCH_KEYS,
});

/**
 * Stores entries in one statement. When a key appears more than once, the last entry wins (PostgreSQL
 * refuses an upsert that would update one row twice).
 */
export async function setBatch(entries: readonly SetEntry[], handle: ServiceOptions["tx"]): Promise<void> {
  const byKey = new Map<string, SetEntry>();
  for (const entry of entries) byKey.set(`${entry.type}\u0000${entry.key}`, entry);
  const distinct = [...byKey.values()];
  const at = now();
  const first = distinct[0];
  if (distinct.length === 1 && first) {
    await withMetrics("set", TABLE, () => setStatement.run(handle, { ...first, at }));
    return;
  }
  distinct.sort((a, b) => (a.type === b.type ? compare(a.key, b.key) : compare(a.type, b.type)));
  const params = {
    types: distinct.map((entry) => entry.type),
    keys: distinct.map((entry) => entry.key),
    values: distinct.map((entry) => entry.json),
    expires: distinct.map((entry) => entry.expiresAt),
    at,
  };
  await withMetrics("set_many", TABLE, () => setBatchStatement.run(handle, params));
}

const compare = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

// set() calls outside a transaction issued in the same tick are stored by one statement. Each call is its own
// entry (sequence-numbered) so that setBatch, not the coalescer, decides between writes to one key: the
// last issued wins, as if they had run one after the other.
let setSequence = 0;
export const setCoalesced = coalescer<SetEntry, void>({
  key: () => String(++setSequence),
  run: async (entries) => {
    await setBatch(entries, undefined);
    return entries.map(() => undefined);
  },
  maxBatch: MAX_BATCH_KEYS,
});
