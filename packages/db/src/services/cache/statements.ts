// The cache's SQL: the hot-path statements and the batch readers and writers (with their same-tick
// coalescing) that the functions in cache.ts run them through.
import { sql } from "drizzle-orm";
import { now } from "../../clock.ts";
import { coalescer } from "../../coalesce.ts";
import { isDbError } from "../../errors.ts";
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

/** One string naming an entry (resource type and key), for maps keyed by entry. */
export const entryName = (type: string, key: string): string => `${type}\u0000${key}`;

const compare = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0);

/** The order batches write entries in (by type, then key), so concurrent batches lock rows in one order. */
const inLockOrder = (a: { type: string; key: string }, b: { type: string; key: string }): number =>
  a.type === b.type ? compare(a.key, b.key) : compare(a.type, b.type);

/** One entry to store, serialized and with its expiry already computed. */
export interface SetEntry {
  type: string;
  key: string;
  json: string;
  expiresAt: Date | null;
}

/** The parameters of one set, listed (see getBatch). */
const setParams = (entry: SetEntry, at: Date) => ({
  type: entry.type,
  key: entry.key,
  json: entry.json,
  expiresAt: entry.expiresAt,
  at,
});

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

// The upsert of both increment statements (as `cache AS c`): the step is the inserted row's value, so one
// clause serves a single step and a batch's summed steps. An expired counter restarts its window. A value
// that is not a JSON number is cast from a non-constant text ('not a counter: string'), so the cast fails
// (22P02) only for such rows; a constant there would be folded, and fail, at plan time.
const addToCounter = sql`ON CONFLICT (resource_type, key) DO UPDATE SET
      value = CASE
        WHEN c.expires_at IS NOT NULL AND c.expires_at <= ${param("at")}::timestamptz THEN EXCLUDED.value
        ELSE to_jsonb((CASE WHEN jsonb_typeof(c.value) = 'number' THEN c.value #>> '{}'
                            ELSE 'not a counter: ' || jsonb_typeof(c.value) END)::bigint
                      + (EXCLUDED.value #>> '{}')::bigint)
      END,
      expires_at = CASE
        WHEN c.expires_at IS NOT NULL AND c.expires_at <= ${param("at")}::timestamptz THEN EXCLUDED.expires_at
        ELSE c.expires_at
      END,
      updated_at = EXCLUDED.updated_at`;

// One upsert: concurrent increments serialize on the row lock of ON CONFLICT DO UPDATE, each adding to the
// value the previous one committed.
const incrementStatement = defineStatement<
  { value: number; expires_at: Date | null },
  KeyParams & { step: number; expiresAt: Date | null }
>(
  "cache_increment",
  sql`
    INSERT INTO cache AS c (resource_type, key, value, expires_at, created_at, updated_at)
    VALUES (${param("type")}, ${param("key")}, to_jsonb(${param("step")}::bigint),
            ${param("expiresAt")}::timestamptz, ${param("at")}::timestamptz, ${param("at")}::timestamptz)
    ${addToCounter}
    RETURNING value, expires_at`,
);

/** One increment to apply: what cache.increment() computed from its arguments. */
export interface IncrementInput extends KeyParams {
  step: number;
  expiresAt: Date | null;
}

/** A counter after an increment (the row's value and window end). */
export interface CounterRow {
  value: number;
  expiresAt: Date | null;
}

// Several counters in one statement: one row per distinct (resource type, key) with the summed step of the
// increments to it, in array order (sorted by key, so concurrent batches lock rows in one order).
const incrementBatchStatement = defineStatement<
  { resource_type: string; key: string; value: number; expires_at: Date | null },
  { types: string[]; keys: string[]; steps: number[]; expires: Array<Date | null>; at: Date }
>(
  "cache_increment_batch",
  sql`
    INSERT INTO cache AS c (resource_type, key, value, expires_at, created_at, updated_at)
    SELECT e.resource_type, e.key, to_jsonb(e.step), e.expires_at, ${param("at")}::timestamptz,
           ${param("at")}::timestamptz
    FROM unnest(${param("types")}::text[], ${param("keys")}::text[], ${param("steps")}::bigint[],
                ${param("expires")}::timestamptz[]) WITH ORDINALITY AS e(resource_type, key, step, expires_at, n)
    ORDER BY e.n
    ${addToCounter}
    RETURNING resource_type, key, value, expires_at`,
);

/** One increment in its own statement (on the pool, or on the caller's transaction). */
export async function incrementOne(input: IncrementInput, handle: ServiceOptions["tx"]): Promise<CounterRow> {
  const result = await withMetrics("increment", TABLE, () => incrementStatement.run(handle, input));
  const row = result.rows[0];
  if (!row) throw new Error("INSERT ... RETURNING gave no row");
  return { value: Number(row.value), expiresAt: row.expires_at };
}

/** What one caller of a batch gets: its own answer, or the error its call alone would have given. */
type Outcome<T> = { value: T } | { error: unknown };

/**
 * Runs each input on its own, one after the other in arrival order, so each caller gets the answer or the
 * error it would have had in sequence (the batches' fallback when their one statement cannot serve them).
 */
async function oneAfterAnother<I, T>(
  inputs: readonly I[],
  run: (input: I) => Promise<T>,
): Promise<Outcome<T>[]> {
  const outcomes: Outcome<T>[] = [];
  for (const input of inputs) {
    try {
      outcomes.push({ value: await run(input) });
    } catch (error) {
      outcomes.push({ error });
    }
  }
  return outcomes;
}

/**
 * A coalescer's run for calls answered by Outcomes: a batch of one (every batch when calls do not overlap) runs
 * `one` on its own, as oneAfterAnother() would, without that loop's and the batch function's async layers;
 * a larger batch goes to `many`.
 */
function oneOrMany<I, T>(
  one: (input: I) => Promise<T>,
  many: (inputs: I[]) => Promise<Outcome<T>[]>,
): (inputs: I[]) => Promise<Outcome<T>[]> {
  return (inputs) =>
    inputs.length === 1
      ? one(inputs[0] as I).then(
          (value) => [{ value }],
          (error: unknown) => [{ error }],
        )
      : many(inputs);
}

/** What one caller of a coalesced increment gets: its counter, or the error its increment alone would give. */
type IncrementOutcome = Outcome<CounterRow>;

/**
 * Applies increments that arrived together as if they had run one after the other in arrival order: each
 * counter's increments are summed into one row of one statement, and each caller gets the value its own
 * increment reached (the row's new value minus the steps of the callers after it). The window of a new or
 * expired counter is the first caller's, as it would be in sequence. When the statement fails (a value that
 * is not a counter, an overflow) or a sum would leave the exact integer range, every increment runs on its
 * own, so each caller gets the answer or the error it would have had alone.
 */
async function incrementBatch(inputs: IncrementInput[]): Promise<IncrementOutcome[]> {
  const alone = () => oneAfterAnother(inputs, (input) => incrementOne(input, undefined));
  const groups = new Map<string, { first: IncrementInput; total: number; callers: number[] }>();
  inputs.forEach((input, index) => {
    const name = entryName(input.type, input.key);
    const group = groups.get(name);
    if (group === undefined) groups.set(name, { first: input, total: input.step, callers: [index] });
    else {
      group.total += input.step;
      group.callers.push(index);
    }
  });
  const ordered = [...groups.values()];
  if (ordered.some((group) => !Number.isSafeInteger(group.total))) return await alone();
  ordered.sort((a, b) => inLockOrder(a.first, b.first));
  const params = {
    types: ordered.map((group) => group.first.type),
    keys: ordered.map((group) => group.first.key),
    steps: ordered.map((group) => group.total),
    expires: ordered.map((group) => group.first.expiresAt),
    at: now(),
  };
  let rows: Array<{ resource_type: string; key: string; value: number; expires_at: Date | null }>;
  try {
    const result = await withMetrics("increment_many", TABLE, () =>
      incrementBatchStatement.run(undefined, params),
    );
    rows = result.rows;
  } catch (error) {
    // Only a value that is not a counter (or a sum past bigint) is one caller's problem: find out whose.
    // Anything else (the database down, a timeout) would fail each of them alike, so it is everyone's answer.
    if (isDbError(error, "INVALID_INPUT")) return await alone();
    return inputs.map(() => ({ error }));
  }
  const byName = new Map(rows.map((row) => [entryName(row.resource_type, row.key), row]));
  const outcomes = new Array<IncrementOutcome>(inputs.length);
  for (const group of ordered) {
    const row = byName.get(entryName(group.first.type, group.first.key));
    if (row === undefined) throw new Error("INSERT ... RETURNING gave no row for a counter");
    // The value before this batch's steps; each caller adds the steps up to and including its own.
    let reached = Number(row.value) - group.total;
    for (const index of group.callers) {
      reached += (inputs[index] as IncrementInput).step;
      outcomes[index] = { value: { value: reached, expiresAt: row.expires_at } };
    }
  }
  return outcomes;
}

// increment() calls outside a transaction issued in the same tick share one statement (see incrementBatch).
export const incrementCoalesced = coalescer<IncrementInput, IncrementOutcome>({
  run: oneOrMany((input) => incrementOne(input, undefined), incrementBatch),
  maxBatch: MAX_BATCH_KEYS,
});

// DELETE ... RETURNING is the use-once primitive: a concurrent taker waits on the row lock, finds the row
// gone and gets nothing. An expired row is deleted as well but reported as absent.
export const takeStatement = defineStatement<{ value: unknown; live: boolean }, KeyParams>(
  "cache_take",
  sql`
    DELETE FROM cache WHERE resource_type = ${param("type")} AND key = ${param("key")}
    RETURNING value, (expires_at IS NULL OR expires_at > ${param("at")}::timestamptz) AS live`,
);

// The same for many entries, as parallel arrays of distinct pairs, sorted by key; n is each pair's position.
// For a few keys PostgreSQL picks a nested loop over them by the primary key, which locks rows in that order,
// but the plan decides (a hash join would lock in the table's order): takeBatch() handles a deadlock.
const takeBatchStatement = defineStatement<
  { n: string; value: unknown; live: boolean },
  { types: string[]; keys: string[]; at: Date }
>(
  "cache_take_batch",
  sql`
    DELETE FROM cache c
    USING unnest(${param("types")}::text[], ${param("keys")}::text[]) WITH ORDINALITY AS w(resource_type, key, n)
    WHERE c.resource_type = w.resource_type AND c.key = w.key
    RETURNING w.n, c.value, (c.expires_at IS NULL OR c.expires_at > ${param("at")}::timestamptz) AS live`,
);

/** What one take finds: the entry's value, or null when it was absent, expired, or taken by another caller. */
export type Taken = { value: unknown } | null;

/** What one caller of a coalesced take gets: what it took, or the error its take alone gave. */
type TakeOutcome = Outcome<Taken>;

/** One take in its own statement (on the pool, or on the caller's transaction). */
export async function takeOne(
  pair: { type: string; key: string },
  handle: ServiceOptions["tx"],
): Promise<Taken> {
  const result = await withMetrics("take", TABLE, () =>
    takeStatement.run(handle, { type: pair.type, key: pair.key, at: now() }),
  );
  const row = result.rows[0];
  return row?.live === true ? { value: row.value } : null;
}

/**
 * Takes that arrived together, as if they had run one after the other in arrival order: of several takes of
 * one entry the first gets it and the others nothing. One statement deletes every entry. Should it deadlock
 * with another transaction, it has deleted nothing, and each take runs on its own, in order: each caller
 * then gets what it took or the error of its own take, so a value already taken is never lost with another
 * caller's failure.
 */
async function takeBatch(pairs: Array<{ type: string; key: string }>): Promise<TakeOutcome[]> {
  const alone = () => oneAfterAnother(pairs, (pair) => takeOne(pair, undefined));
  const firstOf = new Map<string, number>();
  pairs.forEach((pair, index) => {
    const name = entryName(pair.type, pair.key);
    if (!firstOf.has(name)) firstOf.set(name, index);
  });
  // The caller each distinct pair goes to (its first), in lock order.
  const callers = [...firstOf.values()].sort((a, b) =>
    inLockOrder(pairs[a] as { type: string; key: string }, pairs[b] as { type: string; key: string }),
  );
  const params = {
    types: callers.map((index) => (pairs[index] as { type: string }).type),
    keys: callers.map((index) => (pairs[index] as { key: string }).key),
    at: now(),
  };
  let rows: Array<{ n: string; value: unknown; live: boolean }>;
  try {
    rows = (await withMetrics("take_many", TABLE, () => takeBatchStatement.run(undefined, params))).rows;
  } catch (error) {
    // Any other failure rolled the statement back too, and would fail each take alike: everyone's answer.
    if (isDbError(error, "DEADLOCK_DETECTED")) return await alone();
    return pairs.map(() => ({ error }));
  }
  const outcomes: TakeOutcome[] = pairs.map(() => ({ value: null }));
  for (const row of rows) {
    // n is 1-based and from unnest (bigint, so text from the driver).
    const index = callers[Number(row.n) - 1];
    if (index === undefined) throw new Error("DELETE ... RETURNING gave a position past the batch");
    if (row.live === true) outcomes[index] = { value: { value: row.value } };
  }
  return outcomes;
}

// take() calls outside a transaction issued in the same tick share one statement (see takeBatch). Each call
// is its own entry: two takes of one key must not share the one answer.
export const takeCoalesced = coalescer<{ type: string; key: string }, TakeOutcome>({
  run: oneOrMany((pair: { type: string; key: string }) => takeOne(pair, undefined), takeBatch),
  maxBatch: MAX_BATCH_KEYS,
});

/** Values of live entries for (type, key) pairs, by position; expired ones are deleted on the way. */
export async function getBatch(
  pairs: ReadonlyArray<{ type: string; key: string }>,
  handle: ServiceOptions["tx"],
): Promise<unknown[]> {
  const at = now();
  const first = pairs[0];
  if (pairs.length === 1 && first) {
    // Parameters listed, not spread from the pair: a spread was a visible part of a lone get's JavaScript.
    const params = { type: first.type, key: first.key, at };
    const result = await withMetrics("get", TABLE, () => getStatement.run(handle, params));
    return [result.rows[0]?.value ?? null];
  }
  const values = new Array<unknown>(pairs.length).fill(null);
  const params = { types: pairs.map((pair) => pair.type), keys: pairs.map((pair) => pair.key), at };
  const result = await withMetrics("get_many", TABLE, () => getBatchStatement.run(handle, params));
  for (const row of result.rows) values[Number(row.n) - 1] = row.value;
  return values;
}

// get() calls outside a transaction issued in the same tick are answered by one statement.
export const getCoalesced = coalescer<{ type: string; key: string }, unknown>({
  key: (pair) => entryName(pair.type, pair.key),
  run: (pairs) => getBatch(pairs, undefined),
  maxBatch: MAX_BATCH_KEYS,
});

/**
 * Stores entries in one statement. When a key appears more than once, the last entry wins (PostgreSQL
 * refuses an upsert that would update one row twice).
 */
export async function setBatch(entries: readonly SetEntry[], handle: ServiceOptions["tx"]): Promise<void> {
  const at = now();
  const only = entries.length === 1 ? entries[0] : undefined;
  if (only !== undefined) {
    await withMetrics("set", TABLE, () => setStatement.run(handle, setParams(only, at)));
    return;
  }
  const byKey = new Map<string, SetEntry>();
  for (const entry of entries) byKey.set(entryName(entry.type, entry.key), entry);
  const distinct = [...byKey.values()];
  const first = distinct[0];
  if (distinct.length === 1 && first) {
    await withMetrics("set", TABLE, () => setStatement.run(handle, setParams(first, at)));
    return;
  }
  distinct.sort(inLockOrder);
  const params = {
    types: distinct.map((entry) => entry.type),
    keys: distinct.map((entry) => entry.key),
    values: distinct.map((entry) => entry.json),
    expires: distinct.map((entry) => entry.expiresAt),
    at,
  };
  await withMetrics("set_many", TABLE, () => setBatchStatement.run(handle, params));
}

// set() calls outside a transaction issued in the same tick are stored by one statement. Each call is its own
// entry (the coalescer gets no key function) so that setBatch, not the coalescer, decides between writes to
// one key: the last issued wins, as if they had run one after the other.
export const setCoalesced = coalescer<SetEntry, void>({
  run: (entries) => setBatch(entries, undefined).then(() => entries.map(() => undefined)),
  maxBatch: MAX_BATCH_KEYS,
});
