// Request bodies as JSON, with their nesting bounded before anything recursive sees them. JSON.parse copes
// with deep input, but recursive validators (zod's z.json()) overflow the stack on it, and that RangeError
// escapes safeParse: 10,000 levels fit in 20 KB. One linear scan of the text measures the depth first.

/** The deepest nesting of arrays and objects a request body may have; `[]` and `{}` are one level. */
export const DEFAULT_MAX_JSON_DEPTH = 64;

export type ParsedJsonBody = { ok: true; value: unknown } | { ok: false; reason: "invalid" | "too_deep" };

const QUOTE = 0x22; // "
const BACKSLASH = 0x5c; // \
const OPEN_ARRAY = 0x5b; // [
const CLOSE_ARRAY = 0x5d; // ]
const OPEN_OBJECT = 0x7b; // {
const CLOSE_OBJECT = 0x7d; // }

/**
 * True when `text` opens more than `maxDepth` arrays/objects inside one another. Brackets inside string
 * literals do not count; a backslash inside a string escapes the next character (so `"\""` stays one
 * string). Stops at the first level over the bound, so hostile input costs at most one pass. Says nothing
 * about validity: unbalanced or otherwise broken text is left for JSON.parse to reject.
 */
export function exceedsJsonTextDepth(text: string, maxDepth: number): boolean {
  let depth = 0;
  let inString = false;
  for (let i = 0; i < text.length; i += 1) {
    const char = text.charCodeAt(i);
    if (inString) {
      if (char === BACKSLASH) i += 1;
      else if (char === QUOTE) inString = false;
    } else if (char === QUOTE) {
      inString = true;
    } else if (char === OPEN_ARRAY || char === OPEN_OBJECT) {
      depth += 1;
      if (depth > maxDepth) return true;
    } else if (char === CLOSE_ARRAY || char === CLOSE_OBJECT) {
      depth -= 1;
    }
  }
  return false;
}

/**
 * Parses a request body: `too_deep` when it nests arrays/objects more than `maxDepth` levels (checked on the
 * text, before parsing, without recursion), `invalid` when it is not JSON. Text that is both is `too_deep`.
 * @throws RangeError when `maxDepth` is not a non-negative integer (a programming error).
 * @example const parsed = parseJsonBody(await c.req.text()); if (!parsed.ok) throw ...;
 */
export function parseJsonBody(text: string, maxDepth = DEFAULT_MAX_JSON_DEPTH): ParsedJsonBody {
  if (!Number.isInteger(maxDepth) || maxDepth < 0) {
    throw new RangeError(`maxDepth must be a non-negative integer, got ${maxDepth}`);
  }
  if (exceedsJsonTextDepth(text, maxDepth)) return { ok: false, reason: "too_deep" };
  try {
    return { ok: true, value: JSON.parse(text) };
  } catch {
    return { ok: false, reason: "invalid" };
  }
}
