// The measuring loop: closed-loop workers for a bounded time, per-operation latency from the monotonic clock,
// and the helpers that repeat measurements, interleave variants and take medians.

import { ratio } from "./format.ts";

/** One operation under test; `i` is unique across the whole run, so ops can pick distinct keys from it. */
export type Op = (i: number) => Promise<unknown>;

export interface MeasureOptions {
  /** Workers; each awaits its operation before starting the next (a closed loop, like real clients). */
  concurrency: number;
  /** How long operations are recorded. */
  durationMs: number;
  /** Operations run but not recorded first (JIT, prepared statements, pool connections). */
  warmupMs: number;
}

export interface Measurement {
  ops: number;
  opsPerSec: number;
  p50Ms: number;
  p99Ms: number;
}

// Global, not per call: an operation that consumes what it touches (a one-time token, a cache take) never
// sees the same i twice, across variants and repetitions.
let counter = 0;

// Nanoseconds since this module loaded: small enough to stay exact as a double.
const origin = process.hrtime.bigint();
const nowNs = (): number => Number(process.hrtime.bigint() - origin);

/** The value at quantile `q` (0..1) of sorted samples, nearest rank. */
export function quantile(sorted: ArrayLike<number>, q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[rank] ?? Number.NaN;
}

export function median(values: number[]): number {
  return quantile(Float64Array.from(values).sort(), 0.5);
}

/**
 * Runs `fn` from `concurrency` workers for warm-up plus duration. Throughput is the operations that finished
 * inside the recorded window over its length: counting instead the operations started in it, and dividing by
 * the time until the last of them finished, would charge each window for one operation's latency beyond its
 * end, which biases short windows and slow operations. Latencies are those of the operations started in the
 * window. The first error stops every worker and is thrown.
 */
export async function measure(fn: Op, options: MeasureOptions): Promise<Measurement> {
  const start = nowNs();
  const recordFrom = start + options.warmupMs * 1e6;
  const stopAt = recordFrom + options.durationMs * 1e6;
  const latencies: number[] = [];
  let finished = 0;
  let failure: { error: unknown } | undefined;

  const worker = async (): Promise<void> => {
    while (failure === undefined) {
      const began = nowNs();
      if (began >= stopAt) return;
      try {
        await fn(counter++);
      } catch (error) {
        failure ??= { error };
        return;
      }
      const ended = nowNs();
      if (began >= recordFrom) latencies.push((ended - began) / 1e6);
      if (ended >= recordFrom && ended < stopAt) finished++;
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, worker));
  if (failure) throw failure.error;

  const sorted = Float64Array.from(latencies).sort();
  return {
    ops: sorted.length,
    opsPerSec: options.durationMs > 0 ? finished / (options.durationMs / 1000) : 0,
    p50Ms: quantile(sorted, 0.5),
    p99Ms: quantile(sorted, 0.99),
  };
}

export interface RepeatOptions extends MeasureOptions {
  /**
   * Repetitions of each variant when its operations are fast (at most this many; a multiple of twice the
   * variants). The recorded window and the warm-up are the shortest used; a slower variant gets longer ones,
   * and the repetitions shrink (see repetitionPlan).
   */
  reps: number;
}

/** Latencies a recorded window spans at least, and a warm-up: enough rounds of every worker to average over. */
export const WINDOW_LATENCIES = 10;
export const WARMUP_LATENCIES = 2;
/**
 * Fewest repetitions of a slow operation. Writes at concurrency 64 wait on commits that share an fsync, whose
 * time varies far more than a read's: there a median over 12 pairs moved by several percent from run to run.
 */
const MIN_REPS = 24;

/** One variant's recorded window and warm-up. */
export interface Window {
  durationMs: number;
  warmupMs: number;
}

/** How often the variants run, and each one's window (see repetitionPlan). */
export interface Plan<K extends string> {
  reps: number;
  windows: Record<K, Window>;
  /** The repetitions of the variants MorePairs named, when it asked for more (see compareInterleaved). */
  extendedTo?: number;
}

/**
 * More repetitions of some variants (interleaved as before) after the planned ones, doubling the count each
 * time until `enough` says the runs so far answer the question, or `maxReps` is reached.
 */
export interface MorePairs<K extends string> {
  variants: readonly K[];
  enough: (runs: Record<K, Measurement[]>) => boolean;
  maxReps: number;
}

/**
 * The repetitions, and each variant's window for its latency (p50) at this concurrency. Many short windows
 * beat a few long ones: on this 2-core machine a variant's throughput moves from one 0.1 s window to the next
 * (by about a quarter at concurrency 1 and up to twofold at 16, where 16 backends and the driver share the
 * cores; A/A probes found no correlation between neighbouring windows), and a median over pairs measured
 * 0.1 s apart sees less of that than one over pairs measured seconds apart. A window must still span several
 * latencies, so a slow variant gets a longer one; when the windows grow the repetitions shrink, keeping about
 * the same wall time.
 */
export function repetitionPlan<K extends string>(
  options: RepeatOptions,
  latencies: Record<K, number>,
): Plan<K> {
  const names = Object.keys(latencies) as K[];
  const windows = {} as Record<K, Window>;
  let perRep = 0;
  for (const name of names) {
    const latencyMs = latencies[name];
    const durationMs = Math.max(options.durationMs, Math.ceil(WINDOW_LATENCIES * latencyMs));
    const warmupMs = Math.max(options.warmupMs, Math.ceil(WARMUP_LATENCIES * latencyMs));
    windows[name] = { durationMs, warmupMs };
    perRep += durationMs + warmupMs;
  }
  const budget = options.reps * names.length * (options.durationMs + options.warmupMs);
  // Whole forward and backward rounds (see runOrder), so each variant follows each other equally often.
  const round = 2 * names.length;
  const fitting = Math.floor(budget / perRep / round) * round;
  const fewest = Math.ceil(MIN_REPS / round) * round;
  return { reps: Math.min(options.reps, Math.max(fewest, fitting)), windows };
}

/** Medians over repetitions of each of ops/s, p50 and p99 (each taken on its own). */
export function medianOf(runs: Measurement[]): Measurement {
  return {
    ops: median(runs.map((r) => r.ops)),
    opsPerSec: median(runs.map((r) => r.opsPerSec)),
    p50Ms: median(runs.map((r) => r.p50Ms)),
    p99Ms: median(runs.map((r) => r.p99Ms)),
  };
}

/** Each variant's median measurement, and every repetition's measurement in run order. */
export interface Interleaved<K extends string> {
  medians: Record<K, Measurement>;
  runs: Record<K, Measurement[]>;
  /** The repetitions and windows used (see repetitionPlan). */
  plan: Plan<K>;
}

/**
 * The order of repetition `rep`: rotations forward (A B C, B C A, C A B), then backward (C B A, A C B, B A C),
 * and again. Rotation alone keeps each variant's predecessor fixed (B always after A), so whatever one variant
 * leaves behind (garbage to collect, a cold cache, a pool to refill) would always be paid by the same other
 * one; reversing every other round gives each variant each predecessor equally often.
 */
export function runOrder<K>(names: readonly K[], rep: number): K[] {
  const n = names.length;
  const rotated = names.map((_, k) => names[(rep + k) % n] as K);
  return Math.floor(rep / n) % 2 === 1 ? rotated.reverse() : rotated;
}

/**
 * Measures several variants of one operation up to `reps` times (see repetitionPlan), interleaved (see
 * runOrder), so slow drift (autovacuum, checkpoints, a noisy neighbour) hits every variant alike and none
 * always runs first. With `more`, the variants it names may then run more repetitions (see MorePairs).
 * Returns each variant's median measurement and its runs (for pairedRatio()).
 */
export async function compareInterleaved<K extends string>(
  variants: Record<K, Op>,
  options: RepeatOptions,
  more?: (plannedReps: number) => MorePairs<NoInfer<K>>,
): Promise<Interleaved<K>> {
  const names = Object.keys(variants) as K[];
  const runs = Object.fromEntries(names.map((name) => [name, [] as Measurement[]])) as Record<
    K,
    Measurement[]
  >;
  // A short look at each variant sizes its window.
  const latencies = {} as Record<K, number>;
  for (const name of names) {
    const look = await measure(variants[name], { ...options, durationMs: 2 * options.durationMs });
    latencies[name] = Number.isFinite(look.p50Ms) ? look.p50Ms : 0;
  }
  const plan = repetitionPlan(options, latencies);
  for (let rep = 0; rep < plan.reps; rep++) {
    for (const name of runOrder(names, rep)) {
      runs[name].push(
        await measure(variants[name], { ...plan.windows[name], concurrency: options.concurrency }),
      );
    }
  }
  const extra = more?.(plan.reps);
  if (extra) {
    // Doubling, so the estimate is looked at a few times only (at reps, 2 reps, 4 reps...): every look is a
    // chance to stop on a lucky streak.
    const subset = names.filter((name) => extra.variants.includes(name));
    let done = plan.reps;
    while (done < extra.maxReps && !extra.enough(runs)) {
      const target = Math.min(extra.maxReps, 2 * done);
      for (let rep = done; rep < target; rep++) {
        for (const name of runOrder(subset, rep)) {
          runs[name].push(
            await measure(variants[name], { ...plan.windows[name], concurrency: options.concurrency }),
          );
        }
      }
      done = target;
    }
    plan.extendedTo = done;
  }
  const medians = Object.fromEntries(names.map((name) => [name, medianOf(runs[name])])) as Record<
    K,
    Measurement
  >;
  return { medians, runs, plan };
}

/** A median with its 95% confidence interval, and how many values it was taken over. */
export interface Estimate {
  value: number;
  low: number;
  high: number;
  n: number;
}

/** Normal quantile of a two-sided 95% interval. */
const Z95 = 1.959964;

/**
 * The median of `values` with its distribution-free 95% confidence interval: the order statistics whose ranks
 * lie 1.96 standard deviations of a Binomial(n, 1/2) either side of the middle. It assumes only that the
 * values are independent draws of one distribution (A/A probes found no correlation between neighbouring
 * windows), not that they are normal: the ratios of two windows have heavy tails. NaN values are dropped.
 */
export function medianInterval(values: readonly number[]): Estimate {
  const sorted = Float64Array.from(values.filter((v) => !Number.isNaN(v))).sort();
  const n = sorted.length;
  if (n === 0) return { value: Number.NaN, low: Number.NaN, high: Number.NaN, n };
  const spread = (Z95 * Math.sqrt(n)) / 2;
  // 1-based ranks j and k of the usual normal approximation: j = floor(n/2 - spread), k = ceil(1 + n/2 + spread).
  const lowRank = Math.max(1, Math.floor(n / 2 - spread));
  const highRank = Math.min(n, Math.ceil(1 + n / 2 + spread));
  return {
    value: quantile(sorted, 0.5),
    low: sorted[lowRank - 1] ?? Number.NaN,
    high: sorted[highRank - 1] ?? Number.NaN,
    n,
  };
}

/**
 * The median over repetitions of `a`'s value over `b`'s in the same repetition (measured moments apart), with
 * its 95% interval (see medianInterval). A machine that slows down for a while slows both sides of a pair, so
 * this ratio moves far less than the ratio of two medians taken over the whole run.
 */
export function pairedEstimate<T>(a: readonly T[], b: readonly T[], value: (m: T) => number): Estimate {
  const ratios: number[] = [];
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const x = a[i];
    const y = b[i];
    const r = x === undefined || y === undefined ? Number.NaN : ratio(value(x), value(y));
    if (Number.isFinite(r)) ratios.push(r);
  }
  return medianInterval(ratios);
}

/** pairedEstimate()'s median alone. */
export function pairedRatio<T>(a: readonly T[], b: readonly T[], value: (m: T) => number): number {
  return pairedEstimate(a, b, value).value;
}
