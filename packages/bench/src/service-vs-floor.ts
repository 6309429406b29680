// Sections 1 and 2: each hot path through the @repo/db services, beside its floor (the same SQL as a raw
// node-postgres named prepared statement) and its naive baseline (the obvious Drizzle code), each on its own
// pool of the same size, measured interleaved at several concurrencies.
import { databaseConfigFromUrl, disconnectDB, initializeDB, resultTypes } from "@repo/db";
import * as schema from "@repo/db/schema";
import { drizzle, type NodePgDatabase } from "drizzle-orm/node-postgres";
import pg from "pg";
import { intervalText, msText, opsText, ratioText, table } from "./format.ts";
import {
  compareInterleaved,
  type Estimate,
  type Measurement,
  type MorePairs,
  measure,
  type Plan,
  pairedEstimate,
  pairedRatio,
  type RepeatOptions,
} from "./harness.ts";
import { type HotPath, hotPaths } from "./hot-paths.ts";
import type { Resources } from "./resources.ts";
import type { Fixture } from "./seed.ts";

/** Connections per pool; the service, the floor and the naive variant each get this many. */
export const POOL_SIZE = 16;

export interface Variants {
  paths: HotPath[];
  /** The same paths with their floor on a fourth pool: the floor measured against itself (see noiseGauge). */
  copies: HotPath[];
  floorPool: pg.Pool;
  naiveDb: NodePgDatabase<typeof schema>;
}

/** A raw pool like the service's: same size and idle timeout, so no variant reconnects more than another. */
function rawPool(url: string, idleTimeoutMs: number): pg.Pool {
  const pool = new pg.Pool({
    connectionString: url,
    max: POOL_SIZE,
    idleTimeoutMillis: idleTimeoutMs,
    connectionTimeoutMillis: 10_000,
    // The driver configured as the service's pool is: the same type parsers.
    types: resultTypes,
  });
  // An idle client whose backend dies would otherwise crash the process; the pool drops it by itself.
  pool.on("error", () => {});
  return pool;
}

/** Opens the three pools (registering their closing) and builds the hot paths on them. */
export function openVariants(url: string, fixture: Fixture, resources: Resources): Variants {
  const config = databaseConfigFromUrl(url, { poolMax: POOL_SIZE });
  initializeDB(config);
  resources.defer("the service pool", disconnectDB);
  const floorPool = rawPool(url, config.idleTimeoutMs);
  resources.defer("the floor pool", () => floorPool.end());
  const naivePool = rawPool(url, config.idleTimeoutMs);
  resources.defer("the naive pool", () => naivePool.end());
  const naiveDb = drizzle({ client: naivePool, schema });
  const copyPool = rawPool(url, config.idleTimeoutMs);
  resources.defer("the floor copy's pool", () => copyPool.end());
  return {
    paths: hotPaths({ fixture, floorPool, naiveDb }),
    copies: hotPaths({ fixture, floorPool: copyPool, naiveDb }),
    floorPool,
    naiveDb,
  };
}

export interface ComparisonRow {
  operation: string;
  concurrency: number;
  service: Measurement;
  floor: Measurement;
  naive: Measurement;
  /** Throughput of the service over the floor's (target: at least FLOOR_TARGET), the median of the pairs. */
  serviceToFloor: number;
  /** That median's 95% interval, and the pairs it was taken over (see morePairsUntilSettled). */
  serviceToFloorInterval: Estimate;
  /** p99 latency of the service over the floor's (target: at most 1.2). */
  p99ServiceToFloor: number;
  /** Throughput of the service over the naive baseline's (target: at least 2). */
  serviceToNaive: number;
  /** Repetitions of each variant, and each one's recorded window and warm-up (see repetitionPlan). */
  plan: Plan<"service" | "floor" | "naive">;
}

/** The throughput every service hot path is held to, as a fraction of its floor's. */
export const FLOOR_TARGET = 0.9;
/** An interval this narrow (half its width over the ratio) needs no more pairs, wherever it lies. */
const PRECISION = 0.03;
/** The most pairs a row gets, as a multiple of its planned repetitions. */
const MOST_PAIRS_FACTOR = 4;

const throughput = (x: Measurement) => x.opsPerSec;

/**
 * True when an interval answers the row's question: it lies wholly above or wholly below FLOOR_TARGET, or it
 * is within PRECISION of its ratio either way.
 */
export function settled(estimate: Estimate): boolean {
  if (!Number.isFinite(estimate.value)) return true;
  const halfWidth = (estimate.high - estimate.low) / 2 / estimate.value;
  return estimate.low > FLOOR_TARGET || estimate.high < FLOOR_TARGET || halfWidth <= PRECISION;
}

/**
 * More pairs of `a` and `b` for a ratio whose interval straddles FLOOR_TARGET. On this machine one pair's
 * ratio spreads widely (a standard deviation of 30-45% of the ratio at concurrency 16 and 64, where 16
 * backends share a core), so a median over 32-120 pairs lands several percent from the one over 400: a
 * row truly at 0.95x its floor came out under 0.9x in some full runs and not in others. The rows far from
 * the line stop at the planned repetitions; the others double theirs (only `a` and `b` run) until the interval
 * settles or MOST_PAIRS_FACTOR times the plan. The count doubles so the interval is looked at three times at
 * most: every look is a chance to stop on a lucky streak.
 */
function morePairsUntilSettled<K extends string>(a: K, b: K, plannedReps: number): MorePairs<K> {
  return {
    variants: [a, b],
    enough: (runs) => settled(pairedEstimate(runs[a], runs[b], throughput)),
    maxReps: MOST_PAIRS_FACTOR * plannedReps,
  };
}

/** Measures one hot path at one concurrency, the three variants interleaved. */
async function compare(path: HotPath, concurrency: number, options: Omit<RepeatOptions, "concurrency">) {
  const {
    medians: m,
    runs,
    plan,
  } = await compareInterleaved(
    { service: path.service, floor: path.floor, naive: path.naive },
    { ...options, concurrency },
    (reps) => morePairsUntilSettled("service", "floor", reps),
  );
  const serviceToFloor = pairedEstimate(runs.service, runs.floor, throughput);
  return {
    operation: path.name,
    concurrency,
    service: m.service,
    floor: m.floor,
    naive: m.naive,
    serviceToFloor: serviceToFloor.value,
    serviceToFloorInterval: serviceToFloor,
    p99ServiceToFloor: pairedRatio(runs.service, runs.floor, (x) => x.p99Ms),
    serviceToNaive: pairedRatio(runs.service, runs.naive, throughput),
    plan,
  } satisfies ComparisonRow;
}

export const COMPARISON_HEADERS = [
  "operation",
  "conc",
  "floor ops/s",
  "service ops/s",
  "naive ops/s",
  "service/floor",
  "95% interval",
  "pairs",
  "service/naive",
  "floor p50 ms",
  "service p50 ms",
  "floor p99 ms",
  "service p99 ms",
  "naive p99 ms",
  "p99 service/floor",
];

export function comparisonCells(row: ComparisonRow): string[] {
  return [
    row.operation,
    String(row.concurrency),
    opsText(row.floor.opsPerSec),
    opsText(row.service.opsPerSec),
    opsText(row.naive.opsPerSec),
    ratioText(row.serviceToFloor),
    intervalText(row.serviceToFloorInterval),
    String(row.serviceToFloorInterval.n),
    ratioText(row.serviceToNaive),
    msText(row.floor.p50Ms),
    msText(row.service.p50Ms),
    msText(row.floor.p99Ms),
    msText(row.service.p99Ms),
    msText(row.naive.p99Ms),
    ratioText(row.p99ServiceToFloor),
  ];
}

/** Runs every hot path at every concurrency, printing each path's rows as soon as they are measured. */
export async function serviceVsFloor(
  paths: HotPath[],
  concurrencies: number[],
  options: Omit<RepeatOptions, "concurrency">,
  print: (text: string) => void,
  beforeRow: () => Promise<void> = async () => {},
): Promise<ComparisonRow[]> {
  // Every variant runs once, unrecorded, at each concurrency before anything is measured: the first
  // measured row otherwise pays for compiling the driver's code (which the variants share), and the variant
  // that happens to go first pays most.
  process.stderr.write("warming up every variant...\n");
  for (const path of paths) {
    for (const concurrency of concurrencies) {
      for (const op of [path.service, path.floor, path.naive]) {
        await measure(op, { concurrency, durationMs: 0, warmupMs: Math.max(options.warmupMs, 250) });
      }
    }
  }
  const rows: ComparisonRow[] = [];
  for (const path of paths) {
    const pathRows: ComparisonRow[] = [];
    for (const concurrency of concurrencies) {
      // Progress on stderr, so stdout keeps only the tables.
      process.stderr.write(`measuring ${path.name} at concurrency ${concurrency}...\n`);
      await beforeRow();
      pathRows.push(await compare(path, concurrency, options));
    }
    print(table(COMPARISON_HEADERS, pathRows.map(comparisonCells)));
    rows.push(...pathRows);
  }
  return rows;
}

/** The tables the hot paths write (the services, their floors and the naive code alike). */
const WRITTEN_TABLES = ["cache", "one_time_tokens", "sessions"];

/**
 * Vacuums the tables the hot paths write, before each row. A service that coalesces writes many times more
 * rows than its floor at concurrency 16 and 64 (cache.set: 37k against 8k a second), and the dead rows it
 * leaves are its own keys': without this, the next row met them (and the autovacuum they set off) on one
 * side of its pairs more than on the other. One run had cache.increment at concurrency 1 at 0.82x its floor,
 * both sides at half their usual speed and the service's p99 2.7x the floor's, right after cache.set's rows;
 * the same row measured in a fresh process right after warm-up was 0.98x-0.99x.
 */
export async function vacuumWrittenTables(pool: pg.Pool): Promise<void> {
  await pool.query(`VACUUM ${WRITTEN_TABLES.join(", ")}`);
}

/** The floor against a copy of itself on its own pool: how far a ratio of two equal things lands from 1. */
export interface NoiseRow {
  operation: string;
  concurrency: number;
  /** The copy's throughput over the floor's, as serviceToFloor is taken: the run's noise in that ratio. */
  copyToFloor: number;
  /** Its 95% interval and pairs, more of them when it straddles FLOOR_TARGET, as for the rows. */
  copyToFloorInterval: Estimate;
  p99CopyToFloor: number;
}

/**
 * The paths whose floors are measured against themselves, at these concurrencies (about 25 s each, more when
 * a ratio needs more pairs): two reads, one of them at 64 too (where the pool queues), and one write bound by
 * commit flushes, whose ratios spread far wider (its gauge reached 0.90x at 16 in a full run over 32 pairs).
 */
export const NOISE_GAUGE: ReadonlyArray<{ path: string; concurrencies: number[] }> = [
  { path: "sessions.validate", concurrencies: [1, 16] },
  { path: "users.findById", concurrencies: [1, 16, 64] },
  { path: "oneTimeTokens.create+consume", concurrencies: [16] },
];

/**
 * An A/A test: each gauge path's floor against the same floor on another pool, interleaved and paired exactly
 * as the rows above are. A service/floor ratio is only worth as much as this one's distance from 1.00x.
 */
export async function noiseGauge(
  paths: HotPath[],
  copies: HotPath[],
  options: Omit<RepeatOptions, "concurrency">,
): Promise<NoiseRow[]> {
  const rows: NoiseRow[] = [];
  for (const { path: name, concurrencies } of NOISE_GAUGE) {
    const path = paths.find((p) => p.name === name);
    const copy = copies.find((p) => p.name === name);
    if (!path || !copy) throw new Error(`no hot path ${name} for the noise gauge`);
    for (const concurrency of concurrencies) {
      process.stderr.write(`measuring ${name}'s floor against itself at concurrency ${concurrency}...\n`);
      // The copy's pool has not run yet: unwarmed, its first look would be sized by connection set-up.
      for (const op of [path.floor, copy.floor]) {
        await measure(op, { concurrency, durationMs: 0, warmupMs: Math.max(options.warmupMs, 250) });
      }
      const { runs } = await compareInterleaved(
        { floor: path.floor, copy: copy.floor },
        { ...options, concurrency },
        (reps) => morePairsUntilSettled("copy", "floor", reps),
      );
      const copyToFloor = pairedEstimate(runs.copy, runs.floor, throughput);
      rows.push({
        operation: name,
        concurrency,
        copyToFloor: copyToFloor.value,
        copyToFloorInterval: copyToFloor,
        p99CopyToFloor: pairedRatio(runs.copy, runs.floor, (m) => m.p99Ms),
      });
    }
  }
  return rows;
}

export const NOISE_HEADERS = ["floor of", "conc", "copy/floor", "95% interval", "pairs", "p99 copy/floor"];

export function noiseCells(row: NoiseRow): string[] {
  return [
    row.operation,
    String(row.concurrency),
    ratioText(row.copyToFloor),
    intervalText(row.copyToFloorInterval),
    String(row.copyToFloorInterval.n),
    ratioText(row.p99CopyToFloor),
  ];
}
