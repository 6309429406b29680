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
 * Where in the value the encoder is: "value" then each property name or index on the way down. It is joined
 * into a path ("value.items.0") only when an error names it, so a value that is accepted builds no strings.
 */
type Trail = Array<string | number>;
const pathOf = (trail: Trail): string => trail.join(".");

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
function encode(value: unknown, trail: Trail, seen: Set<object>): unknown {
  switch (typeof value) {
    case "string":
      if (!noNul(value)) throw invalidValue(pathOf(trail), "strings must not contain NUL");
      return value;
    case "boolean":
      return value;
    case "number":
      if (!Number.isFinite(value)) throw invalidValue(pathOf(trail), "numbers must be finite");
      return value;
    case "undefined":
      throw invalidValue(pathOf(trail), "undefined is not a JSON value (use delete, or null)");
    case "function":
    case "symbol":
    case "bigint":
      throw invalidValue(pathOf(trail), `a ${typeof value} is not a JSON value`);
  }
  if (value === null) return null;
  const object = value as object;
  if (object instanceof Date) {
    if (Number.isNaN(object.getTime())) throw invalidValue(pathOf(trail), "invalid Date");
    return { [DATE_TAG]: object.toISOString() };
  }
  if (seen.has(object)) throw invalidValue(pathOf(trail), "circular reference");
  seen.add(object);
  try {
    if (Array.isArray(object)) {
      const out = new Array<unknown>(object.length);
      for (let index = 0; index < object.length; index++) {
        // A hole stays a hole (JSON.stringify writes null), as Array.prototype.map leaves it.
        if (!(index in object)) continue;
        trail.push(index);
        out[index] = encode(object[index], trail, seen);
        trail.pop();
      }
      return out;
    }
    if (!isPlainObject(object)) {
      throw invalidValue(pathOf(trail), "only plain objects, arrays and Dates are accepted");
    }
    const record = object as Record<string, unknown>;
    const out: Record<string, unknown> = {};
    let kept = 0;
    let last: string | undefined;
    for (const name of Object.keys(record)) {
      const item = record[name];
      if (item === undefined) continue;
      if (!noNul(name)) throw invalidValue(pathOf(trail), "property names must not contain NUL");
      trail.push(name);
      setProperty(out, name, encode(item, trail, seen));
      trail.pop();
      kept++;
      last = name;
    }
    if (kept === 1 && (last === DATE_TAG || last === ESCAPE_TAG)) return { [ESCAPE_TAG]: out };
    return out;
  } finally {
    seen.delete(object);
  }
}

export function decode(value: unknown): unknown {
  if (value === null || typeof value !== "object") return value;
  if (Array.isArray(value)) {
    const out = new Array<unknown>(value.length);
    for (let index = 0; index < value.length; index++) out[index] = decode(value[index]);
    return out;
  }
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
      return decodeProperties(escaped as Record<string, unknown>, Object.keys(escaped));
    }
  }
  return decodeProperties(object, names);
}

function decodeProperties(object: Record<string, unknown>, names: string[]): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const name of names) setProperty(out, name, decode(object[name]));
  return out;
}

/** The JSON text stored for a value. @throws DbError VALIDATION_FAILED */
export function serialize(value: unknown, maxBytes = MAX_VALUE_BYTES): string {
  const json = JSON.stringify(encode(value, ["value"], new Set()));
  if (Buffer.byteLength(json, "utf8") > maxBytes) {
    throw invalidValue("value", `serialized value exceeds ${maxBytes} bytes`);
  }
  return json;
}
