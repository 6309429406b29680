// The PostgreSQL cache: JSON values by (resource_type, key) in the UNLOGGED `cache` table, with optional
// expiry, atomic counters for rate limits and an atomic take. Every hot path (get, set, increment, take) is
// one SQL statement. The table is emptied after a crash and not replicated: read it on the primary only.
import { sql } from "drizzle-orm";
import { z } from "zod";
import { now } from "../clock.ts";
import { coalescer } from "../coalesce.ts";
import { db } from "../connection.ts";
import { DbError, isDbError } from "../errors.ts";
import { withMetrics } from "../metrics.ts";
import type { CacheEntry } from "../schema/index.ts";
import { defineStatement, param } from "../statements.ts";
import { deleteInBatches, noNul, type ServiceOptions, validate } from "./common.ts";
import { type Call, type CallTail, defineService, splitCallArguments } from "./define.ts";

const TABLE = "cache";

/** Largest serialized value accepted (1 MiB). */
export const MAX_VALUE_BYTES = 1024 * 1024;
/** Largest total payload of one setMany (16 MiB). */
export const MAX_BATCH_BYTES = 16 * 1024 * 1024;
/** Most keys one getMany or setMany may name. */
export const MAX_BATCH_KEYS = 1000;
/** Longest TTL accepted (one year). */
export const MAX_TTL_SECONDS = 365 * 24 * 60 * 60;

// Text columns cannot hold NUL: reject it here rather than get a driver error.
const resourceTypeSchema = z.string().min(1).max(256).refine(noNul, { error: "must not contain NUL" });
const keySchema = z.string().min(1).max(1024).refine(noNul, { error: "must not contain NUL" });
const ttlSchema = z.strictObject({
  ttlSeconds: z.number().positive().max(MAX_TTL_SECONDS).optional(),
});
const keysSchema = z.array(keySchema).max(MAX_BATCH_KEYS);
const entriesSchema = z.array(z.strictObject({ key: keySchema, value: z.unknown() })).max(MAX_BATCH_KEYS);
const incrementSchema = z.number().int().min(-Number.MAX_SAFE_INTEGER).max(Number.MAX_SAFE_INTEGER);
const batchSchema = z.strictObject({
  batchSize: z.number().int().min(1).max(10_000).default(1000),
  maxBatches: z.number().int().min(1).max(100_000).default(1000),
});

export interface TtlOption {
  /** Seconds until the entry expires; absent: it never does. At most MAX_TTL_SECONDS. */
  ttlSeconds?: number | undefined;
}

export interface CleanupInput {
  /** Rows deleted per statement. Default 1000. */
  batchSize?: number | undefined;
  /** Upper bound on statements per call. Default 1000. */
  maxBatches?: number | undefined;
}

/** A fixed-window counter after an increment. */
export interface Counter {
  value: number;
  /** When the window ends (compute Retry-After from it); null for a counter without TTL. */
  expiresAt: CacheEntry["expiresAt"];
}

// ---------------------------------------------------------------------------------------------------------
// Value encoding. jsonb has no dates: each Date becomes {"$date": "<ISO>"} and is revived on read. A plain
// object whose only key is "$date" or "$escape" is wrapped as {"$escape": {...}} so it is not mistaken for a tag.
// ---------------------------------------------------------------------------------------------------------

const DATE_TAG = "$date";
const ESCAPE_TAG = "$escape";

function invalidValue(path: string, message: string): DbError {
  return new DbError("VALIDATION_FAILED", `Invalid input: ${path}: ${message}`, {
    details: { [path]: message },
  });
}

function isPlainObject(value: object): value is Record<string, unknown> {
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

/**
 * Turns a value into plain JSON. Rejects what JSON cannot hold faithfully: undefined (except as an object
 * property, which is dropped as JSON.stringify does), functions, symbols, BigInt, NaN/Infinity, strings with
 * NUL (jsonb refuses them), class instances other than Date, and cycles.
 */
function encode(value: unknown, path: string, seen: Set<object>): unknown {
  switch (typeof value) {
    case "string":
      if (!noNul(value)) throw invalidValue(path, "strings must not contain NUL");
      return value;
    case "boolean":
      return value;
    case "number":
      if (!Number.isFinite(value)) throw invalidValue(path, "numbers must be finite");
      return value;
    case "undefined":
      throw invalidValue(path, "undefined is not a JSON value (use delete, or null)");
    case "function":
    case "symbol":
    case "bigint":
      throw invalidValue(path, `a ${typeof value} is not a JSON value`);
  }
  if (value === null) return null;
  const object = value as object;
  if (object instanceof Date) {
    if (Number.isNaN(object.getTime())) throw invalidValue(path, "invalid Date");
    return { [DATE_TAG]: object.toISOString() };
  }
  if (seen.has(object)) throw invalidValue(path, "circular reference");
  seen.add(object);
  try {
    if (Array.isArray(object)) return object.map((item, index) => encode(item, `${path}.${index}`, seen));
    if (!isPlainObject(object)) throw invalidValue(path, "only plain objects, arrays and Dates are accepted");
    const out: Record<string, unknown> = {};
    for (const [name, item] of Object.entries(object)) {
      if (item === undefined) continue;
      if (!noNul(name)) throw invalidValue(path, "property names must not contain NUL");
      out[name] = encode(item, `${path}.${name}`, seen);
    }
    const names = Object.keys(out);
    if (names.length === 1 && (names[0] === DATE_TAG || names[0] === ESCAPE_TAG))
      return { [ESCAPE_TAG]: out };
    return out;
  } finally {
    seen.delete(object);
  }
}

function decode(value: unknown): unknown {
  if (value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) return value.map(decode);
  const object = value as Record<string, unknown>;
  const names = Object.keys(object);
  if (names.length === 1) {
    const inner = object[DATE_TAG];
    if (names[0] === DATE_TAG && typeof inner === "string") return new Date(inner);
    const escaped = object[ESCAPE_TAG];
    if (
      names[0] === ESCAPE_TAG &&
      escaped !== null &&
      typeof escaped === "object" &&
      !Array.isArray(escaped)
    ) {
      return decodeProperties(escaped as Record<string, unknown>);
    }
  }
  return decodeProperties(object);
}

function decodeProperties(object: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, item] of Object.entries(object)) out[name] = decode(item);
  return out;
}

/** The JSON text stored for a value. @throws DbError VALIDATION_FAILED */
function serialize(value: unknown, maxBytes = MAX_VALUE_BYTES): string {
  const json = JSON.stringify(encode(value, "value", new Set()));
  if (Buffer.byteLength(json, "utf8") > maxBytes) {
    throw invalidValue("value", `serialized value exceeds ${maxBytes} bytes`);
  }
  return json;
}

function expiry(at: Date, ttl: TtlOption): Date | null {
  return ttl.ttlSeconds === undefined ? null : new Date(at.getTime() + Math.ceil(ttl.ttlSeconds * 1000));
}

// ---------------------------------------------------------------------------------------------------------

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
interface SetEntry {
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
const incrementStatement = defineStatement<
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
const takeStatement = defineStatement<{ value: unknown; live: boolean }, KeyParams>(
  "cache_take",
  sql`
    DELETE FROM cache WHERE resource_type = ${param("type")} AND key = ${param("key")}
    RETURNING value, (expires_at IS NULL OR expires_at > ${param("at")}::timestamptz) AS live`,
);

/** Values of live entries for (type, key) pairs, by position; expired ones are deleted on the way. */
async function getBatch(
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
const getCoalesced = coalescer<{ type: string; key: string }, unknown>({
  key: (pair) => `${pair.type}\u0000${pair.key}`,
  run: (pairs) => getBatch(pairs, undefined),
  maxBatch: MAX_BATCH_KEYS,
});

/**
 * Stores entries in one statement. When a key appears more than once, the last entry wins (PostgreSQL
 * refuses an upsert that would update one row twice).
 */
async function setBatch(entries: readonly SetEntry[], handle: ServiceOptions["tx"]): Promise<void> {
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
const setCoalesced = coalescer<SetEntry, void>({
  key: () => String(++setSequence),
  run: async (entries) => {
    await setBatch(entries, undefined);
    return entries.map(() => undefined);
  },
  maxBatch: MAX_BATCH_KEYS,
});

/**
 * Reads a value; null when absent or expired. An expired entry is deleted by the same statement.
 * A stored `null` reads as null too (indistinguishable from absent).
 * @throws DbError VALIDATION_FAILED (bad resourceType or key).
 * @example const profile = await get<Profile>("profile", userId);
 */
export const get = defineService(
  { name: "cache.get", table: TABLE, arity: 2, logFields: ([resourceType]) => ({ resourceType }) },
  async ({ options }: Call<ServiceOptions>, resourceType: string, key: string): Promise<unknown | null> => {
    const type = validate(resourceTypeSchema, resourceType);
    const name = validate(keySchema, key);
    const pair = { type, key: name };
    const value =
      options.tx === undefined ? await getCoalesced(pair) : (await getBatch([pair], options.tx))[0];
    // Decoded per caller: callers sharing a coalesced read must not share (and mutate) one object.
    return value === null || value === undefined ? null : decode(value);
  },
) as <T = unknown>(resourceType: string, key: string, ...rest: CallTail) => Promise<T | null>;

/**
 * Stores a value (any JSON; Dates anywhere inside come back as Dates), replacing what was there.
 * @throws DbError VALIDATION_FAILED (bad key, TTL or value: undefined, function, BigInt, over 1 MiB, ...).
 * @example await set("profile", userId, profile, { ttlSeconds: 300 });
 */
export const set = defineService(
  { name: "cache.set", table: "cache", arity: 4, logFields: ([resourceType]) => ({ resourceType }) },
  async (
    { options }: Call<ServiceOptions>,
    resourceType: string,
    key: string,
    value: unknown,
    ttl: TtlOption = {},
  ): Promise<void> => {
    const type = validate(resourceTypeSchema, resourceType);
    const name = validate(keySchema, key);
    const parsedTtl = validate(ttlSchema, ttl);
    const json = serialize(value);
    const entry = { type, key: name, json, expiresAt: expiry(now(), parsedTtl) };
    if (options.tx === undefined) await setCoalesced(entry);
    else await setBatch([entry], options.tx);
  },
);

/**
 * Deletes an entry; true when a live (unexpired) entry was removed.
 * @throws DbError VALIDATION_FAILED (bad resourceType or key).
 * @example await CacheService.delete("profile", userId);
 */
const deleteEntry = defineService(
  { name: "cache.delete", table: TABLE, arity: 2, logFields: ([resourceType]) => ({ resourceType }) },
  async ({ options }: Call<ServiceOptions>, resourceType: string, key: string): Promise<boolean> => {
    const type = validate(resourceTypeSchema, resourceType);
    const name = validate(keySchema, key);
    const handle = options.tx ?? db;
    const at = now();
    const result = await withMetrics("delete", TABLE, () =>
      handle.execute<{ live: boolean }>(sql`
        DELETE FROM cache WHERE resource_type = ${type} AND key = ${name}
        RETURNING (expires_at IS NULL OR expires_at > ${at}::timestamptz) AS live`),
    );
    return result.rows[0]?.live === true;
  },
);

export { deleteEntry as delete };

/**
 * Reads several keys of one resource type in one statement; the map holds only the keys found (live).
 * Expired entries among them are deleted by the same statement.
 * @throws DbError VALIDATION_FAILED (bad keys, more than 1000).
 * @example const found = await getMany<Profile>("profile", ids); found.get(id);
 */
export const getMany = defineService(
  {
    name: "cache.getMany",
    table: TABLE,
    arity: 2,
    logFields: ([resourceType, keys]) => ({ resourceType, count: keys?.length }),
  },
  async (
    { options }: Call<ServiceOptions>,
    resourceType: string,
    keys: readonly string[],
  ): Promise<Map<string, unknown>> => {
    const type = validate(resourceTypeSchema, resourceType);
    const names = [...new Set(validate(keysSchema, keys))];
    const found = new Map<string, unknown>();
    if (names.length === 0) return found;
    const values = await getBatch(
      names.map((key) => ({ type, key })),
      options.tx,
    );
    names.forEach((key, index) => {
      const value = values[index];
      if (value !== null && value !== undefined) found.set(key, decode(value));
    });
    return found;
  },
) as <T = unknown>(
  resourceType: string,
  keys: readonly string[],
  ...rest: CallTail
) => Promise<Map<string, T>>;

/**
 * Stores several entries of one resource type in one statement, all with the same TTL. When a key appears
 * more than once, the last entry wins.
 * @throws DbError VALIDATION_FAILED (bad keys or values, more than 1000 entries, over 16 MiB in total).
 * @example await setMany("profile", users.map((u) => ({ key: u.id, value: u })), { ttlSeconds: 60 });
 */
export const setMany = defineService(
  {
    name: "cache.setMany",
    table: "cache",
    arity: 3,
    logFields: ([resourceType, entries]) => ({ resourceType, count: entries?.length }),
  },
  async (
    { options }: Call<ServiceOptions>,
    resourceType: string,
    entries: ReadonlyArray<{ key: string; value: unknown }>,
    ttl: TtlOption = {},
  ): Promise<void> => {
    const type = validate(resourceTypeSchema, resourceType);
    const parsed = validate(entriesSchema, entries);
    const parsedTtl = validate(ttlSchema, ttl);
    let bytes = 0;
    const expiresAt = expiry(now(), parsedTtl);
    const batch = parsed.map((entry): SetEntry => {
      const json = serialize(entry.value);
      bytes += Buffer.byteLength(json, "utf8");
      return { type, key: entry.key, json, expiresAt };
    });
    if (bytes > MAX_BATCH_BYTES) throw invalidValue("entries", `the batch exceeds ${MAX_BATCH_BYTES} bytes`);
    if (batch.length > 0) await setBatch(batch, options.tx);
  },
);

// Loads in flight in this process, by resource type and key: concurrent getOrSet callers share one.
const inFlight = new Map<string, Promise<unknown>>();

/**
 * Returns the cached value, or runs `loader`, stores its result and returns it. Concurrent callers for one
 * key in this process share one load; a loader that throws rejects them all and caches nothing. Calls with
 * `{ tx }` do not share loads (their reads belong to their transaction). A `null` result is stored but reads
 * as a miss next time.
 * @throws DbError VALIDATION_FAILED (bad key, TTL or loaded value); whatever the loader throws.
 * @example const user = await getOrSet("user", id, () => loadUser(id), { ttlSeconds: 60 });
 */
export async function getOrSet<T>(
  resourceType: string,
  key: string,
  loader: () => Promise<T>,
  ttl: TtlOption = {},
  ...rest: CallTail
): Promise<T> {
  const { logger, options } = splitCallArguments<ServiceOptions>(rest, 0);
  const load = async (): Promise<T> => {
    const cached = await get<T>(resourceType, key, logger, options);
    if (cached !== null) return cached;
    const loaded = await loader();
    await set(resourceType, key, loaded, ttl, logger, options);
    return loaded;
  };
  if (options.tx) return await load();
  const flightKey = `${resourceType}\u0000${key}`;
  const pending = inFlight.get(flightKey);
  if (pending !== undefined) return (await pending) as T;
  const flight = load().finally(() => {
    if (inFlight.get(flightKey) === flight) inFlight.delete(flightKey);
  });
  inFlight.set(flightKey, flight);
  return await flight;
}

/**
 * Adds `by` to a counter atomically in one statement and returns the new value with its window's end:
 * a fixed-window rate limiter. A missing or expired counter starts a new window at `by` with `ttlSeconds`;
 * a live one keeps its expiry. An existing non-integer value is an error, not overwritten.
 * @throws DbError VALIDATION_FAILED (bad key, `by` or TTL; the entry holds something other than an integer).
 * @example const { value, expiresAt } = await increment("login-attempts", ip, 1, { ttlSeconds: 60 });
 */
export const increment = defineService(
  { name: "cache.increment", table: "cache", arity: 4, logFields: ([resourceType]) => ({ resourceType }) },
  async (
    { options }: Call<ServiceOptions>,
    resourceType: string,
    key: string,
    by: number = 1,
    ttl: TtlOption = {},
  ): Promise<Counter> => {
    const type = validate(resourceTypeSchema, resourceType);
    const name = validate(keySchema, key);
    const step = validate(incrementSchema, by);
    const parsedTtl = validate(ttlSchema, ttl);
    const at = now();
    const params = { type, key: name, step, at, expiresAt: expiry(at, parsedTtl) };
    const result = await withMetrics("increment", TABLE, () =>
      incrementStatement.run(options.tx, params),
    ).catch((error: unknown) => {
      // 22P02 (not an integer) and 22003 (bigint overflow) arrive as INVALID_INPUT.
      if (isDbError(error, "INVALID_INPUT")) {
        throw new DbError("VALIDATION_FAILED", "Invalid input: the cached value is not an integer counter", {
          cause: error,
          details: { key: "the cached value is not an integer counter" },
        });
      }
      throw error;
    });
    const row = result.rows[0];
    if (!row) throw new Error("INSERT ... RETURNING gave no row");
    return { value: Number(row.value), expiresAt: row.expires_at };
  },
);

/**
 * Removes an entry and returns its value, atomically: of concurrent takers exactly one gets it. Null when
 * absent or expired (an expired entry is removed too).
 * @throws DbError VALIDATION_FAILED (bad resourceType or key).
 * @example const state = await take<OAuthState>("oauth-state", stateParam);
 */
export const take = defineService(
  { name: "cache.take", table: TABLE, arity: 2, logFields: ([resourceType]) => ({ resourceType }) },
  async ({ options }: Call<ServiceOptions>, resourceType: string, key: string): Promise<unknown | null> => {
    const type = validate(resourceTypeSchema, resourceType);
    const name = validate(keySchema, key);
    const params = { type, key: name, at: now() };
    const result = await withMetrics("take", TABLE, () => takeStatement.run(options.tx, params));
    const row = result.rows[0];
    return row?.live === true ? decode(row.value) : null;
  },
) as <T = unknown>(resourceType: string, key: string, ...rest: CallTail) => Promise<T | null>;

/**
 * Deletes expired entries in batches; safe to run from several processes at once. Returns how many rows
 * this call deleted.
 * @throws DbError VALIDATION_FAILED (bad batch sizes).
 * @example const deleted = await cleanupExpired({ batchSize: 5000 });
 */
export const cleanupExpired = defineService(
  { name: "cache.cleanupExpired", table: "cache", arity: 1 },
  async ({ logger, options }: Call<ServiceOptions>, input: CleanupInput = {}): Promise<number> => {
    const { batchSize, maxBatches } = validate(batchSchema, input);
    const handle = options.tx ?? db;
    const at = now();
    // Batches found through cache_expires_at_idx; a row a writer is upserting right now (locked) is left
    // for the next round.
    const total = await deleteInBatches(batchSize, maxBatches, async () => {
      const result = await withMetrics("cleanup", TABLE, () =>
        handle.execute(sql`
          DELETE FROM cache
          WHERE (resource_type, key) IN (
            SELECT resource_type, key FROM cache
            WHERE expires_at <= ${at}::timestamptz
            LIMIT ${batchSize}
            FOR UPDATE SKIP LOCKED
          )`),
      );
      return result.rowCount ?? 0;
    });
    if (total > 0) logger.info({ table: TABLE, deleted: total }, "expired cache entries deleted");
    return total;
  },
);
