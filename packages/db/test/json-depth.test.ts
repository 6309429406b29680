import { describe, expect, it } from "vitest";
import { z } from "zod";
import { exceedsJsonDepth } from "../src/json-depth.ts";

/** `levels` arrays inside one another, built without recursion. */
function nestedArrays(levels: number): unknown {
  let value: unknown = 1;
  for (let i = 0; i < levels; i += 1) value = [value];
  return value;
}

function nestedObjects(levels: number): unknown {
  let value: unknown = "leaf";
  for (let i = 0; i < levels; i += 1) value = { a: value };
  return value;
}

describe("exceedsJsonDepth", () => {
  it("counts each array or object as one level and scalars as none", () => {
    for (const scalar of [1, "x", true, null, undefined, 0n, Symbol("s"), () => 1]) {
      expect(exceedsJsonDepth(scalar, 0)).toBe(false);
    }
    expect(exceedsJsonDepth([], 0)).toBe(true);
    expect(exceedsJsonDepth({}, 0)).toBe(true);
    expect(exceedsJsonDepth([], 1)).toBe(false);
    expect(exceedsJsonDepth({ a: 1, b: "x", c: null }, 1)).toBe(false);
    expect(exceedsJsonDepth({ a: [] }, 1)).toBe(true);
    expect(exceedsJsonDepth({ a: [] }, 2)).toBe(false);
  });

  it("allows 64 levels and refuses 65, for arrays, objects and a mix", () => {
    expect(exceedsJsonDepth(nestedArrays(64), 64)).toBe(false);
    expect(exceedsJsonDepth(nestedArrays(65), 64)).toBe(true);
    expect(exceedsJsonDepth(nestedObjects(64), 64)).toBe(false);
    expect(exceedsJsonDepth(nestedObjects(65), 64)).toBe(true);
    let mixed: unknown = 0;
    for (let i = 0; i < 32; i += 1) mixed = [{ a: mixed }];
    expect(exceedsJsonDepth(mixed, 64)).toBe(false);
    expect(exceedsJsonDepth([mixed], 64)).toBe(true);
  });

  it("finds the deepest branch wherever it is, not only the first", () => {
    const wide = Array.from({ length: 1000 }, (_, i) => (i === 777 ? nestedArrays(10) : [[1]]));
    expect(exceedsJsonDepth(wide, 11)).toBe(false);
    expect(exceedsJsonDepth(wide, 10)).toBe(true);
    expect(exceedsJsonDepth({ a: nestedObjects(3), b: nestedObjects(63) }, 64)).toBe(false);
    expect(exceedsJsonDepth({ a: nestedObjects(3), b: nestedObjects(64) }, 64)).toBe(true);
  });

  it("rejects 10,000 levels quickly and without recursion, where z.json() overflows the stack", () => {
    for (const deep of [nestedArrays(10_000), nestedObjects(10_000)]) {
      // The trap this guards against: the RangeError escapes safeParse.
      expect(() => z.json().safeParse(deep)).toThrow(RangeError);
      const started = performance.now();
      expect(exceedsJsonDepth(deep, 64)).toBe(true);
      expect(performance.now() - started).toBeLessThan(50);
    }
    // Deeper than any call stack, with a bound that lets it all through: still no recursion.
    expect(exceedsJsonDepth(nestedArrays(200_000), 1_000_000)).toBe(false);
  });

  it("walks a huge flat array in one pass", () => {
    const huge = { items: Array.from({ length: 100_000 }, (_, i) => ({ i })) };
    const started = performance.now();
    expect(exceedsJsonDepth(huge, 3)).toBe(false);
    expect(exceedsJsonDepth(huge, 2)).toBe(true);
    expect(performance.now() - started).toBeLessThan(1000);
  });

  it("calls a cycle too deep, at any bound, and stops", () => {
    const self: Record<string, unknown> = {};
    self.self = self;
    expect(exceedsJsonDepth(self, 64)).toBe(true);
    expect(exceedsJsonDepth(self, 1_000_000)).toBe(true);
    const a: unknown[] = [];
    const b = { a };
    a.push(1, b);
    expect(exceedsJsonDepth({ root: [a] }, 1_000_000)).toBe(true);
  });

  it("walks shared references once: a DAG with 2^60 paths answers at once", () => {
    let shared: unknown = { leaf: true };
    for (let i = 0; i < 60; i += 1) shared = [shared, shared];
    const started = performance.now();
    expect(exceedsJsonDepth(shared, 61)).toBe(false);
    expect(exceedsJsonDepth(shared, 60)).toBe(true);
    // The same object met again deeper down: its remembered height is measured from the new place.
    const inner = nestedArrays(5);
    expect(exceedsJsonDepth([inner, [[inner]]], 8)).toBe(false);
    expect(exceedsJsonDepth([inner, [[inner]]], 7)).toBe(true);
    // A parent finished from remembered heights passes the full height on when it is met again itself.
    const parent = [inner];
    const again = [inner, parent, [[[parent]]]];
    expect(exceedsJsonDepth(again, 10)).toBe(false);
    expect(exceedsJsonDepth(again, 9)).toBe(true);
    expect(performance.now() - started).toBeLessThan(500);
  });

  it("over-estimates rather than misses for values that are not plain JSON", () => {
    // Any object is a level: a Date or a Map at the top is over a bound of 0, under a bound of 1.
    expect(exceedsJsonDepth(new Date(), 0)).toBe(true);
    expect(exceedsJsonDepth({ at: new Date(), m: new Map([[1, nestedArrays(100)]]) }, 2)).toBe(false);
    // Class instances and prototype-less objects are walked like plain ones (zod treats some as plain).
    class Box {
      constructor(readonly inner: unknown) {}
    }
    let boxed: unknown = 1;
    for (let i = 0; i < 100; i += 1) boxed = new Box(boxed);
    expect(exceedsJsonDepth(boxed, 64)).toBe(true);
    const bare = Object.assign(Object.create(null) as Record<string, unknown>, { a: nestedObjects(64) });
    expect(exceedsJsonDepth(bare, 64)).toBe(true);
    expect(exceedsJsonDepth(Object.create({ inherited: nestedArrays(100) }), 64)).toBe(false);
    // Getters run, as they do when zod reads the value; lazily built nesting is bounded like any other.
    const lazy = (level: number): Record<string, unknown> => ({
      get next() {
        return lazy(level + 1);
      },
    });
    expect(exceedsJsonDepth(lazy(0), 64)).toBe(true);
    // Typed arrays hold numbers only and are not walked element by element.
    expect(exceedsJsonDepth({ bytes: new Uint8Array(10_000_000) }, 2)).toBe(false);
    // Sparse arrays: only the elements present are walked, not the length.
    const sparse: unknown[] = [];
    sparse[4_294_967_294] = [1];
    expect(exceedsJsonDepth(sparse, 2)).toBe(false);
    expect(exceedsJsonDepth(sparse, 1)).toBe(true);
  });

  it("lets getter errors through and refuses a bad bound", () => {
    const throwing = {
      get boom(): unknown {
        throw new Error("getter failed");
      },
    };
    expect(() => exceedsJsonDepth(throwing, 64)).toThrow("getter failed");
    expect(() => exceedsJsonDepth({}, -1)).toThrow(RangeError);
    expect(() => exceedsJsonDepth({}, 2.5)).toThrow(RangeError);
    expect(() => exceedsJsonDepth({}, Number.POSITIVE_INFINITY)).toThrow(RangeError);
  });

  it("agrees with z.json() wherever z.json() can answer", () => {
    const samples: unknown[] = [
      { a: 1 },
      { a: [1, { b: [2, [3]] }], c: "[[[" },
      nestedArrays(30),
      nestedObjects(30),
    ];
    for (const sample of samples) {
      expect(z.json().safeParse(sample).success).toBe(true);
      expect(exceedsJsonDepth(sample, 64)).toBe(false);
    }
  });
});
