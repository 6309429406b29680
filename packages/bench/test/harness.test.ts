// The bench's statistics: the median's confidence interval, the extra pairs a row straddling its target gets,
// and the rule that decides when it has enough. No database involved.
import { describe, expect, it } from "vitest";
import { compareInterleaved, medianInterval, pairedEstimate } from "../src/harness.ts";
import { FLOOR_TARGET, settled } from "../src/service-vs-floor.ts";

/** A seeded generator (mulberry32), so the coverage check below draws the same samples every run. */
function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

describe("medianInterval", () => {
  it("takes the order statistics 1.96 binomial standard deviations either side of the middle", () => {
    const values = Array.from({ length: 100 }, (_, i) => 100 - i); // unsorted on purpose
    // n = 100: ranks floor(50 - 9.8) = 40 and ceil(51 + 9.8) = 61 (1-based).
    expect(medianInterval(values)).toEqual({ value: 50, low: 40, high: 61, n: 100 });
  });

  it("drops NaN, and has no interval without values", () => {
    expect(medianInterval([Number.NaN, 2, Number.NaN]).n).toBe(1);
    expect(medianInterval([Number.NaN, 2]).value).toBe(2);
    const none = medianInterval([]);
    expect(none.n).toBe(0);
    expect(none.low).toBeNaN();
  });

  it("covers the true median of a skewed, heavy-tailed distribution in about 95% of samples", () => {
    // Ratios like the bench's pairs: lognormal with a standard deviation of 0.4 in log, median 0.95.
    const next = random(42);
    const normal = () => Math.sqrt(-2 * Math.log(1 - next())) * Math.cos(2 * Math.PI * next());
    const trueMedian = 0.95;
    for (const n of [32, 120, 480]) {
      let covered = 0;
      const trials = 2000;
      for (let t = 0; t < trials; t++) {
        const sample = Array.from({ length: n }, () => trueMedian * Math.exp(0.4 * normal()));
        const { low, high } = medianInterval(sample);
        if (low <= trueMedian && trueMedian <= high) covered++;
      }
      expect(covered / trials).toBeGreaterThan(0.93);
      expect(covered / trials).toBeLessThan(0.98);
    }
  });

  it("pairs two runs by repetition", () => {
    const a = [{ v: 2 }, { v: 3 }, { v: 9 }];
    const b = [{ v: 1 }, { v: 3 }, { v: 0 }]; // the last pair has no ratio
    const estimate = pairedEstimate(a, b, (m) => m.v);
    // Ratios 2 and 1; the median by nearest rank is the lower of two.
    expect(estimate).toEqual({ value: 1, low: 1, high: 2, n: 2 });
  });
});

describe("settled", () => {
  it("is true for an interval wholly above or below the target, or within 3% of its ratio", () => {
    expect(settled({ value: 0.95, low: 0.91, high: 0.99, n: 120 })).toBe(true);
    expect(settled({ value: 0.85, low: 0.8, high: 0.89, n: 120 })).toBe(true);
    expect(settled({ value: 0.92, low: 0.895, high: 0.945, n: 480 })).toBe(true);
    expect(settled({ value: 0.93, low: 0.88, high: 0.99, n: 120 })).toBe(false);
    expect(settled({ value: FLOOR_TARGET, low: 0.85, high: 0.95, n: 120 })).toBe(false);
  });
});

describe("compareInterleaved with more pairs", () => {
  const options = { reps: 4, durationMs: 1, warmupMs: 0, concurrency: 1 };
  const op = async () => {};
  const variants = { a: op, b: op, c: op };

  it("doubles the named variants' repetitions until enough says so, the others keeping their plan", async () => {
    const looks: number[] = [];
    const { runs, plan } = await compareInterleaved(variants, options, (reps) => ({
      variants: ["a", "b"],
      enough: (sofar) => {
        looks.push(sofar.a.length);
        return sofar.a.length >= 8;
      },
      maxReps: 4 * reps,
    }));
    expect(looks).toEqual([4, 8]);
    expect([runs.a.length, runs.b.length, runs.c.length]).toEqual([8, 8, 4]);
    expect(plan.extendedTo).toBe(8);
  });

  it("stops at maxReps when the runs never answer the question", async () => {
    const { runs, plan } = await compareInterleaved(variants, options, (reps) => ({
      variants: ["a", "c"],
      enough: () => false,
      maxReps: 3 * reps,
    }));
    // 4, then 8, then 12 (capped), never 16.
    expect([runs.a.length, runs.b.length, runs.c.length]).toEqual([12, 4, 12]);
    expect(plan.extendedTo).toBe(12);
  });

  it("runs the plan alone without more", async () => {
    const { runs, plan } = await compareInterleaved(variants, options);
    expect(runs.a.length).toBe(4);
    expect(plan.extendedTo).toBeUndefined();
  });
});
