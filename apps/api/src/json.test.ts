import { describe, expect, it } from "vitest";
import { DEFAULT_MAX_JSON_DEPTH, exceedsJsonTextDepth, parseJsonBody } from "./json.ts";

const arrays = (levels: number) => `${"[".repeat(levels)}${"]".repeat(levels)}`;
const objects = (levels: number) => `${'{"a":'.repeat(levels)}1${"}".repeat(levels)}`;

describe("parseJsonBody", () => {
  it("parses ordinary bodies", () => {
    expect(parseJsonBody('{"email":"a@example.com","n":[1,2,{"x":null}]}')).toEqual({
      ok: true,
      value: { email: "a@example.com", n: [1, 2, { x: null }] },
    });
    expect(parseJsonBody(" 42 ")).toEqual({ ok: true, value: 42 });
    expect(parseJsonBody('"text"')).toEqual({ ok: true, value: "text" });
    expect(parseJsonBody("null")).toEqual({ ok: true, value: null });
    expect(parseJsonBody("[]")).toEqual({ ok: true, value: [] });
  });

  it("allows 64 levels and refuses 65, for arrays, objects and a mix", () => {
    expect(DEFAULT_MAX_JSON_DEPTH).toBe(64);
    expect(parseJsonBody(arrays(64)).ok).toBe(true);
    expect(parseJsonBody(arrays(65))).toEqual({ ok: false, reason: "too_deep" });
    expect(parseJsonBody(objects(64)).ok).toBe(true);
    expect(parseJsonBody(objects(65))).toEqual({ ok: false, reason: "too_deep" });
    const mixed = (levels: number) => `${'[{"a":'.repeat(levels / 2)}0${"}]".repeat(levels / 2)}`;
    expect(parseJsonBody(mixed(64)).ok).toBe(true);
    expect(parseJsonBody(mixed(66))).toEqual({ ok: false, reason: "too_deep" });
  });

  it("measures the deepest branch, not the number of brackets", () => {
    // 1,000 sibling arrays two levels deep: many brackets, little depth.
    const wide = `[${Array.from({ length: 1000 }, () => "[[1]]").join(",")}]`;
    expect(parseJsonBody(wide, 3).ok).toBe(true);
    expect(parseJsonBody(wide, 2)).toEqual({ ok: false, reason: "too_deep" });
    // Depth returns to zero between siblings.
    expect(parseJsonBody(`{"a":${arrays(63)},"b":${arrays(63)}}`).ok).toBe(true);
    expect(parseJsonBody(`{"a":${arrays(63)},"b":${arrays(64)}}`)).toEqual({ ok: false, reason: "too_deep" });
  });

  it("honours the maxDepth argument", () => {
    expect(parseJsonBody("1", 0)).toEqual({ ok: true, value: 1 });
    expect(parseJsonBody("[]", 0)).toEqual({ ok: false, reason: "too_deep" });
    expect(parseJsonBody(arrays(3), 3).ok).toBe(true);
    expect(parseJsonBody(arrays(4), 3)).toEqual({ ok: false, reason: "too_deep" });
    expect(() => parseJsonBody("1", -1)).toThrow(RangeError);
    expect(() => parseJsonBody("1", 1.5)).toThrow(RangeError);
    expect(() => parseJsonBody("1", Number.NaN)).toThrow(RangeError);
  });

  it("does not count brackets inside strings", () => {
    const brackets = "[".repeat(1000) + "{".repeat(1000);
    expect(parseJsonBody(JSON.stringify({ note: brackets }))).toEqual({
      ok: true,
      value: { note: brackets },
    });
    expect(parseJsonBody(JSON.stringify({ [brackets]: 1 })).ok).toBe(true);
    // Closing brackets in strings must not lower the count either.
    const closers = "]".repeat(100);
    const hidden = `${"[".repeat(65)}"${closers}"${"]".repeat(65)}`;
    expect(parseJsonBody(hidden)).toEqual({ ok: false, reason: "too_deep" });
  });

  it("honours backslash escapes inside strings", () => {
    // An escaped quote does not end the string, so the brackets after it are still inside it.
    const escapedQuote = JSON.stringify({ s: `\\" ${"[".repeat(100)}` });
    expect(escapedQuote).toContain('\\"');
    expect(parseJsonBody(escapedQuote).ok).toBe(true);
    // An escaped backslash does end before the quote: the string closes and the brackets after it count.
    const endsWithBackslash = `["\\\\",${arrays(64)}]`;
    expect(JSON.parse(endsWithBackslash)).toHaveLength(2);
    expect(parseJsonBody(endsWithBackslash)).toEqual({ ok: false, reason: "too_deep" });
    expect(parseJsonBody(`["\\\\",${arrays(63)}]`).ok).toBe(true);
    // A \u escape and an escaped bracket-looking sequence.
    expect(parseJsonBody('{"a":"\\u005b\\u007b\\"]"}')).toEqual({ ok: true, value: { a: '[{"]' } });
  });

  it("rejects 10,000 levels in about 20 KB quickly, arrays and objects", () => {
    for (const text of [arrays(10_000), objects(10_000), `{"metadata":{"x":${arrays(10_000)}}}`]) {
      expect(text.length).toBeLessThan(70_000);
      const started = performance.now();
      expect(parseJsonBody(text)).toEqual({ ok: false, reason: "too_deep" });
      expect(performance.now() - started).toBeLessThan(50);
    }
    expect(arrays(10_000).length).toBe(20_000);
    // An unterminated opening run is refused as too deep, without waiting for the end that never comes.
    expect(parseJsonBody("[".repeat(1_000_000))).toEqual({ ok: false, reason: "too_deep" });
  });

  it("reads a large, flat body in one pass", () => {
    const text = `{"metadata":{"items":[${Array.from({ length: 100_000 }, () => "0").join(",")}]}}`;
    const started = performance.now();
    const parsed = parseJsonBody(text);
    expect(performance.now() - started).toBeLessThan(200);
    expect(parsed.ok).toBe(true);
  });

  it("answers invalid for text that is not JSON", () => {
    for (const text of [
      "",
      " ",
      '{"email": "a@',
      "email=a@example.com",
      "{'a': 1}",
      "[1,]",
      '{"a":1}}',
      "[[1]",
      '"unterminated',
      "\u00ef\u00bb\u00bf{}",
      "NaN",
      "undefined",
    ]) {
      expect(parseJsonBody(text), JSON.stringify(text)).toEqual({ ok: false, reason: "invalid" });
    }
  });

  it("calls unbalanced closers invalid, never too deep", () => {
    expect(parseJsonBody("]]]]]]]]")).toEqual({ ok: false, reason: "invalid" });
    expect(exceedsJsonTextDepth("]]]]", 0)).toBe(false);
  });
});
