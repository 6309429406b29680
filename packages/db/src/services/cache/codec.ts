// The cache's value codec: pure code, no database access. serialize() turns a value into the JSON text stored
// in the jsonb column; decode() revives what a read returns.
import { DbError } from "../../errors.ts";
import { noNul } from "../common.ts";
import { MAX_VALUE_BYTES } from "./limits.ts";

// ---------------------------------------------------------------------------------------------------------
// Value encoding. jsonb has no dates: each Date becomes {"$date": "<ISO>"} and is revived on read. A plain
// object whose only key is "$date" or "$escape" is wrapped as {"$escape": {...}} so it is not mistaken for a tag.
// ---------------------------------------------------------------------------------------------------------

const DATE_TAG = "$date";
const ESCAPE_TAG = "$escape";

/** A VALIDATION_FAILED error for a value (or batch) the cache refuses, naming where in it the problem is. */
export function invalidValue(path: string, message: string): DbError {
  return new DbError("VALIDATION_FAILED", `Invalid input: ${path}: ${message}`, {
    details: { [path]: message },
  });
}

function isPlainObject(value: object): value is Record<string, unknown> {
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

/**
 * Sets a property on a fresh plain object. `out[name] = item` would not do for "__proto__" (an own property
 * that JSON.parse creates, and that a caller may store): that assignment replaces the object's prototype.
 */
function setProperty(out: Record<string, unknown>, name: string, item: unknown): void {
  if (name === "__proto__") {
    Object.defineProperty(out, name, { value: item, enumerable: true, writable: true, configurable: true });
  } else {
    out[name] = item;
  }
}

/**
 * Turns a value into plain JSON. Rejects what JSON cannot hold faithfully: undefined (except as an object
 * property, which is dropped as JSON.stringify does), functions, symbols, BigInt, NaN/Infinity, strings with
 * NUL (jsonb refuses them), class instances other than Date, and cycles.
 */
function encode(value: unknown, path: string, seen: Set<object>): unknown {
  switch (typeof value) {
    case "string":
      if (!noNul(value)) throw invalidValue(path, "strings must not contain NUL");
      return value;
    case "boolean":
      return value;
    case "number":
      if (!Number.isFinite(value)) throw invalidValue(path, "numbers must be finite");
      return value;
    case "undefined":
      throw invalidValue(path, "undefined is not a JSON value (use delete, or null)");
    case "function":
    case "symbol":
    case "bigint":
      throw invalidValue(path, `a ${typeof value} is not a JSON value`);
  }
  if (value === null) return null;
  const object = value as object;
  if (object instanceof Date) {
    if (Number.isNaN(object.getTime())) throw invalidValue(path, "invalid Date");
    return { [DATE_TAG]: object.toISOString() };
  }
  if (seen.has(object)) throw invalidValue(path, "circular reference");
  seen.add(object);
  try {
    if (Array.isArray(object)) return object.map((item, index) => encode(item, `${path}.${index}`, seen));
    if (!isPlainObject(object)) throw invalidValue(path, "only plain objects, arrays and Dates are accepted");
    const out: Record<string, unknown> = {};
    for (const [name, item] of Object.entries(object)) {
      if (item === undefined) continue;
      if (!noNul(name)) throw invalidValue(path, "property names must not contain NUL");
      setProperty(out, name, encode(item, `${path}.${name}`, seen));
    }
    const names = Object.keys(out);
    if (names.length === 1 && (names[0] === DATE_TAG || names[0] === ESCAPE_TAG))
      return { [ESCAPE_TAG]: out };
    return out;
  } finally {
    seen.delete(object);
  }
}

export function decode(value: unknown): unknown {
  if (value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) return value.map(decode);
  const object = value as Record<string, unknown>;
  const names = Object.keys(object);
  if (names.length === 1) {
    const inner = object[DATE_TAG];
    if (names[0] === DATE_TAG && typeof inner === "string") return new Date(inner);
    const escaped = object[ESCAPE_TAG];
    if (
      names[0] === ESCAPE_TAG &&
      escaped !== null &&
      typeof escaped === "object" &&
      !Array.isArray(escaped)
    ) {
      return decodeProperties(escaped as Record<string, unknown>);
    }
  }
  return decodeProperties(object);
}

function decodeProperties(object: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [name, item] of Object.entries(object)) setProperty(out, name, decode(item));
  return out;
}

/** Nesting past which alreadyJson() leaves a value to encode() (which also finds cycles). */
const SHORT_CUT_DEPTH = 32;

/**
 * True when JSON.stringify(value) is already the text encode() would produce: finite numbers, strings and
 * property names without NUL, plain objects and dense arrays of those, no Date, no function, symbol or BigInt,
 * undefined only as an object property (stringify drops it, as encode does), and no object that reads as a
 * tag. It only reads the value, where encode() copies it (and builds each element's path up front): most
 * values stored are like this, and the copy was most of a set()'s own time. Anything else, or anything
 * deeper than SHORT_CUT_DEPTH, is left to encode(), which rejects or converts it.
 */
function alreadyJson(value: unknown, depth: number): boolean {
  switch (typeof value) {
    case "string":
      return noNul(value);
    case "boolean":
      return true;
    case "number":
      return Number.isFinite(value);
    case "object":
      break;
    default:
      return false;
  }
  if (value === null) return true;
  if (depth >= SHORT_CUT_DEPTH) return false;
  if (Array.isArray(value)) {
    // A hole reads as undefined: encode() keeps it as a hole, stringify writes null; let encode() decide.
    for (let i = 0; i < value.length; i++) if (!alreadyJson(value[i], depth + 1)) return false;
    return true;
  }
  if (!isPlainObject(value)) return false;
  let defined = 0;
  let last = "";
  for (const name of Object.keys(value)) {
    const item = value[name];
    if (item === undefined) continue;
    if (!noNul(name) || !alreadyJson(item, depth + 1)) return false;
    defined++;
    last = name;
  }
  return !(defined === 1 && (last === DATE_TAG || last === ESCAPE_TAG));
}

/** The JSON text stored for a value. @throws DbError VALIDATION_FAILED */
export function serialize(value: unknown, maxBytes = MAX_VALUE_BYTES): string {
  const json = JSON.stringify(alreadyJson(value, 0) ? value : encode(value, "value", new Set()));
  // A UTF-16 unit takes at most 3 bytes of UTF-8 (a pair of them 4): short text needs no count.
  if (json.length * 3 > maxBytes && Buffer.byteLength(json, "utf8") > maxBytes) {
    throw invalidValue("value", `serialized value exceeds ${maxBytes} bytes`);
  }
  return json;
}
