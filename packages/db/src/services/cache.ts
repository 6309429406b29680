// The PostgreSQL cache: JSON values by (resource_type, key) in the UNLOGGED `cache` table, with optional
// expiry, atomic counters for rate limits and an atomic take. Every hot path (get, set, increment, take) is
// one SQL statement. The table is emptied after a crash and not replicated: read it on the primary only.
import { sql } from "drizzle-orm";
import { z } from "zod";
import { now } from "../clock.ts";
import { DbError, isDbError } from "../errors.ts";
import { withMetrics } from "../metrics.ts";
import type { CacheEntry } from "../schema/index.ts";
import { decode, invalidValue, serialize } from "./cache/codec.ts";
import { MAX_BATCH_BYTES, MAX_BATCH_KEYS, MAX_TTL_SECONDS } from "./cache/limits.ts";
import {
  entryName,
  getBatch,
  getCoalesced,
  incrementCoalesced,
  incrementOne,
  type SetEntry,
  setBatch,
  setCoalesced,
  TABLE,
  type Taken,
  takeCoalesced,
  takeOne,
} from "./cache/statements.ts";
import { deleteInBatches, type ServiceOptions, storable, validate } from "./common.ts";
import { type Call, type CallTail, defineService, splitCallArguments } from "./define.ts";

// The limits live in cache/limits.ts (shared with the codec and the statements); re-exported here by name.
export { MAX_BATCH_BYTES, MAX_BATCH_KEYS, MAX_TTL_SECONDS, MAX_VALUE_BYTES } from "./cache/limits.ts";

const RESOURCE_TYPE_MAX = 256;
const KEY_MAX = 1024;
// Text columns cannot hold NUL (a driver error), and an unpaired surrogate would reach PostgreSQL as U+FFFD,
// so "a\uD800" and "a\uFFFD" would name one entry: both are refused.
const UNSTORABLE = "must not contain NUL or unpaired surrogates";
const resourceTypeSchema = z.string().min(1).max(RESOURCE_TYPE_MAX).refine(storable, { error: UNSTORABLE });
const keySchema = z.string().min(1).max(KEY_MAX).refine(storable, { error: UNSTORABLE });
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

// The common inputs (a short string without NUL, a plain { ttlSeconds } object) are checked inline: zod
// costs a measurable share of a cache call. Anything else goes to the schema, which gives the same verdict
// with its messages.
function checkedType(value: unknown): string {
  return typeof value === "string" && value.length > 0 && value.length <= RESOURCE_TYPE_MAX && storable(value)
    ? value
    : validate(resourceTypeSchema, value);
}

function checkedKey(value: unknown): string {
  return typeof value === "string" && value.length > 0 && value.length <= KEY_MAX && storable(value)
    ? value
    : validate(keySchema, value);
}

function checkedTtl(ttl: unknown): TtlOption {
  if (typeof ttl === "object" && ttl !== null && Object.getPrototypeOf(ttl) === Object.prototype) {
    let onlyTtl = true;
    for (const name in ttl) if (name !== "ttlSeconds") onlyTtl = false;
    const seconds = (ttl as TtlOption).ttlSeconds;
    if (
      onlyTtl &&
      (seconds === undefined || (typeof seconds === "number" && seconds > 0 && seconds <= MAX_TTL_SECONDS))
    )
      return ttl as TtlOption;
  }
  return validate(ttlSchema, ttl);
}

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

/** When an entry written at `at` with this TTL expires; null when it never does. */
function expiry(at: Date, ttl: TtlOption): Date | null {
  return ttl.ttlSeconds === undefined ? null : new Date(at.getTime() + Math.ceil(ttl.ttlSeconds * 1000));
}

/**
 * Reads a value; null when absent or expired. An expired entry is deleted by the same statement.
 * A stored `null` reads as null too (indistinguishable from absent).
 * @throws DbError VALIDATION_FAILED (bad resourceType or key).
 * @example const profile = await get<Profile>("profile", userId);
 */
export const get = defineService(
  { name: "cache.get", table: TABLE, arity: 2, logFields: ([resourceType]) => ({ resourceType }) },
  async ({ options }: Call<ServiceOptions>, resourceType: string, key: string): Promise<unknown | null> => {
    const type = checkedType(resourceType);
    const name = checkedKey(key);
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
    const type = checkedType(resourceType);
    const name = checkedKey(key);
    const parsedTtl = checkedTtl(ttl);
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
  async ({ handle }: Call<ServiceOptions>, resourceType: string, key: string): Promise<boolean> => {
    const type = checkedType(resourceType);
    const name = checkedKey(key);
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
    const type = checkedType(resourceType);
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
    const type = checkedType(resourceType);
    const parsed = validate(entriesSchema, entries);
    const parsedTtl = checkedTtl(ttl);
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
  const flightKey = entryName(resourceType, key);
  const pending = inFlight.get(flightKey);
  if (pending !== undefined) return (await pending) as T;
  const flight = load().finally(() => {
    if (inFlight.get(flightKey) === flight) inFlight.delete(flightKey);
  });
  inFlight.set(flightKey, flight);
  return await flight;
}

/** 22P02 (not an integer) and 22003 (bigint overflow) arrive as INVALID_INPUT: the entry is no counter. */
function notACounter(error: unknown): unknown {
  if (!isDbError(error, "INVALID_INPUT")) return error;
  return new DbError("VALIDATION_FAILED", "Invalid input: the cached value is not an integer counter", {
    cause: error,
    details: { key: "the cached value is not an integer counter" },
  });
}

/**
 * Adds `by` to a counter atomically in one statement and returns the new value with its window's end:
 * a fixed-window rate limiter. Calls made together outside a transaction share one statement, each getting
 * the value it would have got in sequence. A missing or expired counter starts a new window at `by` with `ttlSeconds`;
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
    const type = checkedType(resourceType);
    const name = checkedKey(key);
    const step = Number.isSafeInteger(by) ? by : validate(incrementSchema, by);
    const parsedTtl = checkedTtl(ttl);
    const at = now();
    const input = { type, key: name, step, at, expiresAt: expiry(at, parsedTtl) };
    if (options.tx !== undefined) {
      return await incrementOne(input, options.tx).catch((error: unknown) => {
        throw notACounter(error);
      });
    }
    const outcome = await incrementCoalesced(input);
    if ("error" in outcome) throw notACounter(outcome.error);
    return outcome.value;
  },
);

/**
 * Removes an entry and returns its value, atomically: of concurrent takers exactly one gets it. Null when
 * absent or expired (an expired entry is removed too). Takes outside a transaction issued in the same tick
 * share one statement (of two takes of one key there, the first issued gets it; a tick with over
 * MAX_BATCH_KEYS takes sends several statements, which run concurrently).
 * @throws DbError VALIDATION_FAILED (bad resourceType or key).
 * @example const state = await take<OAuthState>("oauth-state", stateParam);
 */
export const take = defineService(
  { name: "cache.take", table: TABLE, arity: 2, logFields: ([resourceType]) => ({ resourceType }) },
  async ({ options }: Call<ServiceOptions>, resourceType: string, key: string): Promise<unknown | null> => {
    const pair = { type: checkedType(resourceType), key: checkedKey(key) };
    let taken: Taken;
    if (options.tx === undefined) {
      const outcome = await takeCoalesced(pair);
      if ("error" in outcome) throw outcome.error;
      taken = outcome.value;
    } else taken = await takeOne(pair, options.tx);
    // Decoded per caller, as get() does.
    return taken === null ? null : decode(taken.value);
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
  async ({ logger, handle }: Call<ServiceOptions>, input: CleanupInput = {}): Promise<number> => {
    const { batchSize, maxBatches } = validate(batchSchema, input);
    const at = now();
    // Batches found through cache_expires_at_idx; a row a writer is upserting right now (locked) is left
    // for the next round.
    const cleanup = { table: TABLE, batchSize, maxBatches, logger, message: "expired cache entries deleted" };
    return await deleteInBatches(cleanup, async () => {
      const result = await handle.execute(sql`
          DELETE FROM cache
          WHERE (resource_type, key) IN (
            SELECT resource_type, key FROM cache
            WHERE expires_at <= ${at}::timestamptz
            LIMIT ${batchSize}
            FOR UPDATE SKIP LOCKED
          )`);
      return result.rowCount ?? 0;
    });
  },
);
