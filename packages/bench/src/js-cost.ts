// What a hot path costs in this process with the network taken out: each variant's pool answers every query
// at once with a fresh copy of a result it really returned (new Dates and objects, as the driver builds them
// per row), so the time per call is the service's own JavaScript beside the floor's (parameters, the call
// layers, building the answer). Section 1 measures round trips, where a few microseconds of difference hide
// in run-to-run noise; this shows those microseconds directly.
//   bun packages/bench/src/js-cost.ts [hot path name ...]   (default: every path that runs on pool.query)
// A path that checks a client out of a pool (a transaction) is skipped: its queries cannot be answered here.
import { getPool } from "@repo/db";
import pg from "pg";
import { openBenchDatabase } from "./database.ts";
import { median } from "./harness.ts";
import type { HotPath } from "./hot-paths.ts";
import { createResources } from "./resources.ts";
import { QUICK_SEED, seed } from "./seed.ts";
import { openVariants } from "./service-vs-floor.ts";

const CALLS = 100_000;
const ROUNDS = 6;

type Query = (config: unknown, ...rest: unknown[]) => Promise<pg.QueryResult>;
const keyOf = (config: unknown): string =>
  typeof config === "string"
    ? config
    : String((config as { name?: string; text?: string }).name ?? (config as { text?: string }).text);

/** A copy of a value as the driver would build it again: new Dates, new objects, the same strings. */
function fresh(value: unknown): unknown {
  if (value instanceof Date) return new Date(value.getTime());
  if (typeof value !== "object" || value === null || ArrayBuffer.isView(value)) return value;
  return JSON.parse(JSON.stringify(value));
}

function freshResult(result: pg.QueryResult): pg.QueryResult {
  const rows = result.rows.map((row: Record<string, unknown>) => {
    const copy: Record<string, unknown> = {};
    for (const key in row) copy[key] = fresh(row[key]);
    return copy;
  });
  return { ...result, rows };
}

/** Answers each pool's queries from what they answered once for real; undo() puts the pools back. */
async function cannedPools(pools: pg.Pool[], calls: Array<() => Promise<unknown>>) {
  const originals = pools.map((pool) => pool.query.bind(pool) as Query);
  const seen = new Map<string, pg.QueryResult>();
  pools.forEach((pool, k) => {
    (pool as unknown as { query: Query }).query = async (config, ...rest) => {
      const result = await (originals[k] as Query)(config, ...rest);
      seen.set(keyOf(config), result);
      return result;
    };
  });
  for (const call of calls) await call();
  pools.forEach((pool) => {
    (pool as unknown as { query: Query }).query = (config) => {
      const result = seen.get(keyOf(config));
      if (!result) return Promise.reject(new Error(`no recorded answer for ${keyOf(config)}`));
      return Promise.resolve(freshResult(result));
    };
  });
  return {
    undo: () =>
      pools.forEach((pool, k) => {
        (pool as unknown as { query: Query }).query = originals[k] as Query;
      }),
  };
}

/** True when `call` sends a query other than through pool.query (a checked-out client's own query()). */
async function usesClients(call: () => Promise<unknown>): Promise<boolean> {
  const original = pg.Client.prototype.query;
  let direct = 0;
  pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
    direct++;
    return (original as (...a: unknown[]) => unknown).apply(this, args);
  } as typeof original;
  try {
    await call();
  } catch {
    direct++;
  } finally {
    pg.Client.prototype.query = original;
  }
  return direct > 0;
}

async function costOf(path: HotPath, pools: pg.Pool[]): Promise<string> {
  // Each variant's calls use their own i, like the bench; i stays within the recorded answers' shape.
  const canned = await cannedPools(pools, [() => path.service(1), () => path.floor(1)]);
  try {
    if ((await usesClients(() => path.service(2))) || (await usesClients(() => path.floor(2)))) {
      return `${path.name}: skipped (it checks a client out of the pool)`;
    }
    const perCall: Record<"service" | "floor", number[]> = { service: [], floor: [] };
    for (let round = 0; round < ROUNDS; round++) {
      for (const variant of ["service", "floor"] as const) {
        const op = path[variant];
        const started = performance.now();
        for (let i = 0; i < CALLS; i++) await op(i);
        perCall[variant].push(((performance.now() - started) * 1000) / CALLS);
      }
    }
    const service = median(perCall.service);
    const floor = median(perCall.floor);
    return `${path.name}: service ${service.toFixed(2)} µs, floor ${floor.toFixed(2)} µs, difference ${(service - floor).toFixed(2)} µs per call`;
  } finally {
    canned.undo();
  }
}

const resources = createResources();
process.on("SIGINT", () => void resources.closeAll().finally(() => process.exit(130)));
try {
  const database = await openBenchDatabase(undefined);
  resources.defer("the database", () => database.close());
  const fixture = await seed(database.url, QUICK_SEED);
  const { paths, floorPool } = openVariants(database.url, fixture, resources);
  const wanted = process.argv.slice(2);
  // Every path runs for real first, as in the bench: the shared code has seen every caller.
  for (const path of paths)
    for (const op of [path.service, path.floor, path.naive]) for (let i = 0; i < 200; i++) await op(i);
  for (const path of paths.filter((p) => wanted.length === 0 || wanted.includes(p.name))) {
    console.log(await costOf(path, [getPool(), floorPool]));
  }
} finally {
  await resources.closeAll();
}
