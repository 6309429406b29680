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
 * Runs `fn` from `concurrency` workers for warm-up plus duration. Only operations started after the warm-up
 * are recorded, and throughput is their count over the time from the end of the warm-up to the last of them
 * finishing. The first error stops every worker and is thrown.
 */
export async function measure(fn: Op, options: MeasureOptions): Promise<Measurement> {
  const start = nowNs();
  const recordFrom = start + options.warmupMs * 1e6;
  const stopAt = recordFrom + options.durationMs * 1e6;
  const latencies: number[] = [];
  let lastEnd = recordFrom;
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
      if (began >= recordFrom) {
        latencies.push((ended - began) / 1e6);
        if (ended > lastEnd) lastEnd = ended;
      }
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, worker));
  if (failure) throw failure.error;

  const sorted = Float64Array.from(latencies).sort();
  const seconds = (lastEnd - recordFrom) / 1e9;
  return {
    ops: sorted.length,
    opsPerSec: seconds > 0 ? sorted.length / seconds : 0,
    p50Ms: quantile(sorted, 0.5),
    p99Ms: quantile(sorted, 0.99),
  };
}

export interface RepeatOptions extends MeasureOptions {
  reps: number;
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
 * Measures several variants of one operation `reps` times, interleaved (see runOrder), so slow drift
 * (autovacuum, checkpoints, a noisy neighbour) hits every variant alike and none always runs first.
 * Returns each variant's median measurement and its runs (for pairedRatio()).
 */
export async function compareInterleaved<K extends string>(
  variants: Record<K, Op>,
  options: RepeatOptions,
): Promise<Interleaved<K>> {
  const names = Object.keys(variants) as K[];
  const runs = Object.fromEntries(names.map((name) => [name, [] as Measurement[]])) as Record<
    K,
    Measurement[]
  >;
  for (let rep = 0; rep < options.reps; rep++) {
    for (const name of runOrder(names, rep)) runs[name].push(await measure(variants[name], options));
  }
  const medians = Object.fromEntries(names.map((name) => [name, medianOf(runs[name])])) as Record<
    K,
    Measurement
  >;
  return { medians, runs };
}

/**
 * The median over repetitions of `a`'s value over `b`'s in the same repetition (measured seconds apart). A
 * machine that slows down for a while slows both sides of a pair, so this ratio moves far less than the ratio
 * of two medians taken over the whole run.
 */
export function pairedRatio<T>(a: readonly T[], b: readonly T[], value: (m: T) => number): number {
  const ratios: number[] = [];
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const x = a[i];
    const y = b[i];
    const r = x === undefined || y === undefined ? Number.NaN : ratio(value(x), value(y));
    if (Number.isFinite(r)) ratios.push(r);
  }
  return ratios.length === 0 ? Number.NaN : median(ratios);
}
