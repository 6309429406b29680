// coalescer(): batching of single calls, on its own (the database-backed batches of the services are tested in
// statements.test.ts). No database involved.
import { describe, expect, it } from "vitest";
import { coalescer } from "../src/coalesce.ts";

describe("coalescer", () => {
  it("answers calls made in one tick with one batch, equal keys sharing one entry", async () => {
    const batches: number[][] = [];
    const load = coalescer<number, string>({
      key: (n) => String(n),
      run: async (inputs) => {
        batches.push(inputs);
        return inputs.map((n) => `v${n}`);
      },
    });
    expect(await Promise.all([load(1), load(2), load(1), load(3)])).toEqual(["v1", "v2", "v1", "v3"]);
    expect(batches).toEqual([[1, 2, 3]]);
    // A later tick is a new batch.
    expect(await load(4)).toBe("v4");
    expect(batches).toHaveLength(2);
    // A key repeated before any other (one entry so far) and after others joined shares its entry alike.
    expect(await Promise.all([load(5), load(5), load(6), load(5), load(6)])).toEqual([
      "v5",
      "v5",
      "v6",
      "v5",
      "v6",
    ]);
    expect(batches.at(-1)).toEqual([5, 6]);
  });

  it("rejects every caller of a failed batch and keeps batches under maxBatch", async () => {
    const sizes: number[] = [];
    const load = coalescer<number, number>({
      key: (n) => String(n),
      run: async (inputs) => {
        sizes.push(inputs.length);
        if (inputs.includes(13)) throw new Error("boom");
        return inputs.map((n) => n * 2);
      },
      maxBatch: 4,
    });
    const settled = await Promise.allSettled([1, 2, 3, 4, 5, 6, 13, 6].map(load));
    expect(sizes).toEqual([4, 3]);
    expect(settled.slice(0, 4).map((s) => (s.status === "fulfilled" ? s.value : s.status))).toEqual([
      2, 4, 6, 8,
    ]);
    expect(settled.slice(4).map((s) => s.status)).toEqual(["rejected", "rejected", "rejected", "rejected"]);
  });

  it("with maxInFlight, calls arriving while a batch runs gather into the next one (group commit)", async () => {
    const sizes: number[] = [];
    let running = 0;
    let maxRunning = 0;
    const releases: Array<() => void> = [];
    const load = coalescer<number, number>({
      key: (n) => String(n),
      run: async (inputs) => {
        sizes.push(inputs.length);
        maxRunning = Math.max(maxRunning, ++running);
        await new Promise<void>((resolve) => releases.push(resolve));
        running--;
        return inputs.map((n) => n + 1);
      },
      maxInFlight: 1,
    });
    const nextTurn = () => new Promise((resolve) => setImmediate(resolve));
    // A lone call is sent at the end of its tick, without waiting for company.
    const first = load(0);
    await nextTurn();
    expect(sizes).toEqual([1]);
    // Ten calls in ten separate turns of the event loop while the first batch runs: none is sent yet.
    const later: Promise<number>[] = [];
    for (let i = 1; i <= 10; i++) {
      later.push(load(i));
      await nextTurn();
    }
    expect(sizes).toEqual([1]);
    // All ten go out together once the first finishes, before the first's caller resumes: the next query is
    // already running while that caller builds its answer.
    let sentWhenFirstResumed: number[] = [];
    const resumed = first.then((value) => {
      sentWhenFirstResumed = [...sizes];
      return value;
    });
    releases.shift()?.();
    expect(await resumed).toBe(1);
    expect(sentWhenFirstResumed).toEqual([1, 10]);
    expect(sizes).toEqual([1, 10]);
    releases.shift()?.();
    expect(await Promise.all(later)).toEqual([2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
    expect(maxRunning).toBe(1);
    // A failed batch frees its place too.
    const failing = coalescer<number, number>({
      key: (n) => String(n),
      run: async () => {
        throw new Error("down");
      },
      maxInFlight: 1,
    });
    await expect(failing(1)).rejects.toThrow("down");
    await expect(failing(2)).rejects.toThrow("down");
  });

  it("without maxInFlight, a finished batch does not cut short the batch of the current tick", async () => {
    const batches: number[][] = [];
    let release: () => void = () => {};
    const load = coalescer<number, number>({
      key: (n) => String(n),
      run: async (inputs) => {
        batches.push(inputs);
        if (inputs[0] === 0) await new Promise<void>((resolve) => (release = resolve));
        return inputs;
      },
    });
    const first = load(0);
    await new Promise((resolve) => setImmediate(resolve));
    // In one tick: a call, the first batch finishing, and two more calls; all three share the tick's batch.
    const calls = [load(1)];
    release();
    await first;
    calls.push(load(2), load(3));
    await Promise.all(calls);
    expect(batches).toEqual([[0], [1, 2, 3]]);
  });
});
