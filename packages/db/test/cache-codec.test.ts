// The cache's value codec on its own: no database is touched (serialize and decode are pure).
import { describe, expect, it } from "vitest";
import { DbError } from "../src/errors.ts";
import { decode, invalidValue, serialize } from "../src/services/cache/codec.ts";
import { MAX_VALUE_BYTES } from "../src/services/cache/limits.ts";

/** What a write then a read does to a value: serialize, store as JSON, parse, decode. */
const roundTrip = (value: unknown): unknown => decode(JSON.parse(serialize(value)));

/** The DbError serialize() throws for `value`, or a failure when it throws nothing. */
function rejection(value: unknown, maxBytes?: number): DbError {
  try {
    serialize(value, maxBytes);
  } catch (error) {
    expect(error).toBeInstanceOf(DbError);
    return error as DbError;
  }
  throw new Error("serialize() accepted the value");
}

describe("cache codec: round trips", () => {
  it("keeps scalars, null, arrays and nested objects", () => {
    for (const value of [0, -1.5, 42, "", "text", "ünïcödé ✓", true, false, null, [], {}]) {
      expect(roundTrip(value)).toEqual(value);
    }
    const nested = { a: [1, "two", null, [true, { b: null }]], c: { d: { e: "f" } } };
    expect(roundTrip(nested)).toEqual(nested);
  });

  it("revives Dates anywhere inside, at the top, in arrays and in nested objects", () => {
    const at = new Date("2024-02-29T12:34:56.789Z");
    expect(serialize(at)).toBe('{"$date":"2024-02-29T12:34:56.789Z"}');
    const top = roundTrip(at);
    expect(top).toBeInstanceOf(Date);
    expect((top as Date).getTime()).toBe(at.getTime());

    const value = { at, list: [at, { deeper: [at] }], none: null };
    const back = roundTrip(value) as { at: Date; list: [Date, { deeper: [Date] }]; none: null };
    expect(back).toEqual(value);
    expect(back.at).toBeInstanceOf(Date);
    expect(back.list[0]).toBeInstanceOf(Date);
    expect(back.list[1].deeper[0]).toBeInstanceOf(Date);
    expect(back.none).toBeNull();
  });

  it("returns a fresh object: decoding does not hand back the parsed JSON", () => {
    const parsed = JSON.parse(serialize({ a: { b: 1 } }));
    const decoded = decode(parsed) as { a: { b: number } };
    expect(decoded).toEqual(parsed);
    expect(decoded).not.toBe(parsed);
    expect(decoded.a).not.toBe(parsed.a);
  });

  it("drops undefined object properties, as JSON.stringify does", () => {
    expect(roundTrip({ kept: 1, dropped: undefined })).toEqual({ kept: 1 });
    expect(serialize({ dropped: undefined })).toBe("{}");
  });

  it("accepts null-prototype objects and the same object referenced twice (not a cycle)", () => {
    const bare = Object.create(null) as Record<string, unknown>;
    bare.x = 1;
    expect(roundTrip(bare)).toEqual({ x: 1 });
    const shared = { n: 1 };
    expect(roundTrip({ left: shared, right: [shared, shared] })).toEqual({
      left: { n: 1 },
      right: [{ n: 1 }, { n: 1 }],
    });
  });

  it("keeps an own __proto__ property as data, on the way in and out, without touching any prototype", () => {
    // JSON.parse makes "__proto__" an own property; assigning it to a fresh object would set its prototype.
    const value = JSON.parse('{"__proto__": {"polluted": true}, "a": [1, {"__proto__": [2]}]}') as object;
    expect(serialize(value)).toBe('{"__proto__":{"polluted":true},"a":[1,{"__proto__":[2]}]}');
    const back = roundTrip(value) as Record<string, unknown>;
    expect(Object.getPrototypeOf(back)).toBe(Object.prototype);
    expect(Object.keys(back)).toEqual(["__proto__", "a"]);
    expect(JSON.stringify(back)).toBe(JSON.stringify(value));
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it("writes holes of a sparse array as null, as JSON.stringify does", () => {
    // biome-ignore lint/suspicious/noSparseArray: the hole is what is tested
    expect(serialize([1, , 3])).toBe("[1,null,3]");
  });
});

describe("cache codec: values that need no conversion", () => {
  it("stores them as JSON.stringify writes them, however deep and wherever a converted part sits", () => {
    const plain = { a: [1, "two", null, { b: true, gone: undefined }], "": { "\u00e9": -0 } };
    expect(serialize(plain)).toBe(JSON.stringify(plain));
    // Deeper than the short cut goes: the encoder takes it, with the same text.
    let deep: unknown = { leaf: [1] };
    for (let i = 0; i < 40; i++) deep = { next: deep, list: [i] };
    expect(serialize(deep)).toBe(JSON.stringify(deep));
    // One Date or one tag-like object anywhere sends the whole value through the encoder.
    const at = new Date("2024-02-29T12:34:56.789Z");
    expect(serialize({ a: [{ at }] })).toBe('{"a":[{"at":{"$date":"2024-02-29T12:34:56.789Z"}}]}');
    expect(serialize({ a: [{ $date: "x", other: undefined }] })).toBe('{"a":[{"$escape":{"$date":"x"}}]}');
  });

  it("still rejects what JSON.stringify would quietly drop or change inside an otherwise plain value", () => {
    expect(rejection({ a: { f: () => 1 } }).message).toContain("value.a.f");
    expect(rejection({ a: [1, undefined] }).message).toContain("value.a.1");
    expect(rejection({ a: { n: Number.NaN } }).message).toContain("value.a.n");
    expect(rejection({ a: { s: "x\u0000y" } }).message).toContain("value.a.s");
    expect(rejection({ a: new Map() }).message).toContain("value.a");
  });
});

describe("cache codec: objects that look like tags", () => {
  it("keeps a plain object whose only key is $date as that object, whatever the $date holds", () => {
    for (const inner of ["not a date", "2024-01-01T00:00:00.000Z", 5, null, { nested: true }]) {
      const value = { $date: inner };
      expect(JSON.parse(serialize(value))).toEqual({ $escape: value });
      const back = roundTrip(value);
      expect(back).not.toBeInstanceOf(Date);
      expect(back).toEqual(value);
    }
  });

  it("keeps a plain object whose only key is $escape, and leaves objects with more keys unwrapped", () => {
    const escaped = { $escape: { a: 1 } };
    expect(JSON.parse(serialize(escaped))).toEqual({ $escape: escaped });
    expect(roundTrip(escaped)).toEqual(escaped);
    expect(roundTrip({ $escape: [1, 2] })).toEqual({ $escape: [1, 2] });

    const twoKeys = { $date: "not a date", other: 1 };
    expect(JSON.parse(serialize(twoKeys))).toEqual(twoKeys);
    expect(roundTrip(twoKeys)).toEqual(twoKeys);
  });

  it("decodes a stored {$date: <string>} that is no date into an invalid Date (no check on read)", () => {
    // Only the codec writes the tag, always from a valid Date; a hand-written row is revived as-is.
    const revived = decode({ $date: "not a date" });
    expect(revived).toBeInstanceOf(Date);
    expect(Number.isNaN((revived as Date).getTime())).toBe(true);
  });

  it("decodes a stored $date tag holding a non-string, or an $escape holding a non-object, as plain objects", () => {
    expect(decode({ $date: 5 })).toEqual({ $date: 5 });
    expect(decode({ $escape: [1] })).toEqual({ $escape: [1] });
    expect(decode({ $escape: null })).toEqual({ $escape: null });
  });
});

describe("cache codec: rejections", () => {
  it("rejects undefined at the top and inside arrays", () => {
    const top = rejection(undefined);
    expect(top.code).toBe("VALIDATION_FAILED");
    expect(top.details).toEqual({ value: "undefined is not a JSON value (use delete, or null)" });
    expect(rejection({ list: [1, undefined] }).details).toEqual({
      "value.list.1": "undefined is not a JSON value (use delete, or null)",
    });
  });

  it("rejects functions, symbols and BigInt, naming where they are", () => {
    expect(rejection(() => 1).details).toEqual({ value: "a function is not a JSON value" });
    expect(rejection({ f: () => 1 }).details).toEqual({ "value.f": "a function is not a JSON value" });
    expect(rejection(Symbol("s")).details).toEqual({ value: "a symbol is not a JSON value" });
    expect(rejection([Symbol("s")]).details).toEqual({ "value.0": "a symbol is not a JSON value" });
    expect(rejection(10n).details).toEqual({ value: "a bigint is not a JSON value" });
    expect(rejection({ a: { b: 10n } }).details).toEqual({ "value.a.b": "a bigint is not a JSON value" });
  });

  it("rejects NaN and the infinities", () => {
    for (const number of [Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY]) {
      expect(rejection(number).details).toEqual({ value: "numbers must be finite" });
      expect(rejection({ n: number }).details).toEqual({ "value.n": "numbers must be finite" });
    }
  });

  it("rejects cycles, through objects and through arrays", () => {
    const object: Record<string, unknown> = { a: 1 };
    object.self = object;
    expect(rejection(object).details).toEqual({ "value.self": "circular reference" });
    const array: unknown[] = [1];
    array.push({ back: array });
    expect(rejection(array).details).toEqual({ "value.1.back": "circular reference" });
  });

  it("rejects invalid Dates, class instances other than Date, and NUL in strings or property names", () => {
    expect(rejection(new Date(Number.NaN)).details).toEqual({ value: "invalid Date" });
    const onlyPlain = "only plain objects, arrays and Dates are accepted";
    expect(rejection(new Map()).details).toEqual({ value: onlyPlain });
    expect(rejection({ s: new Set([1]) }).details).toEqual({ "value.s": onlyPlain });
    class Point {
      x = 1;
    }
    expect(rejection(new Point()).details).toEqual({ value: onlyPlain });
    expect(rejection("a\u0000b").details).toEqual({ value: "strings must not contain NUL" });
    expect(rejection({ "a\u0000b": 1 }).details).toEqual({ value: "property names must not contain NUL" });
  });

  it("rejects values whose JSON is over the limit (1 MiB by default), counted in UTF-8 bytes", () => {
    // A string's JSON is the string plus its two quotes.
    const fits = "x".repeat(MAX_VALUE_BYTES - 2);
    expect(serialize(fits)).toHaveLength(MAX_VALUE_BYTES);
    const over = rejection(`${fits}x`);
    expect(over.code).toBe("VALIDATION_FAILED");
    expect(over.details).toEqual({ value: `serialized value exceeds ${MAX_VALUE_BYTES} bytes` });

    // "é" is two bytes in UTF-8: 5 characters, 12 bytes with the quotes.
    expect(serialize("ééééé", 12)).toBe('"ééééé"');
    expect(rejection("ééééé", 11).details).toEqual({ value: "serialized value exceeds 11 bytes" });
  });

  it("makes VALIDATION_FAILED errors keyed by path, with the path in the message", () => {
    const error = invalidValue("entries", "the batch exceeds 16 bytes");
    expect(error).toBeInstanceOf(DbError);
    expect(error.code).toBe("VALIDATION_FAILED");
    expect(error.kind).toBe("rejected");
    expect(error.message).toBe("Invalid input: entries: the batch exceeds 16 bytes");
    expect(error.details).toEqual({ entries: "the batch exceeds 16 bytes" });
  });
});
