// A depth bound for values that did not come from JSON text (library callers hand objects straight to the
// services). zod's recursive z.json() overflows the stack on deep input and the RangeError escapes
// safeParse, so this runs first, without recursion: an explicit stack, one pass over the distinct objects.

/** Typed arrays and DataViews hold numbers only; walking their indices would be slow and find nothing. */
function isContainer(value: unknown): value is object {
  return typeof value === "object" && value !== null && !ArrayBuffer.isView(value);
}

interface Frame {
  node: object;
  keys: string[];
  next: number;
  /** Levels from this node down to its deepest descendant seen so far; the node itself is 1. */
  height: number;
}

/**
 * True when `value` nests arrays/objects more than `maxDepth` levels deep (`[]` and `{}` are one level,
 * scalars none), or contains itself (a cycle is unbounded depth).
 *
 * Deliberately an over-estimate of what a JSON walker would visit: every non-null object counts as a level
 * (class instances, Dates and Maps included, which the JSON schema rejects anyway) and its own enumerable
 * string-keyed properties are its children, read the way zod reads them (getters run). The work is linear
 * in the distinct objects and their properties: an object reached along several paths is walked once and
 * its height remembered, so shared references (`a = [b, b]`, `b = [c, c]`, ...) cost nothing exponential.
 * Exceptions thrown by getters or proxy traps propagate.
 * @throws RangeError when `maxDepth` is not a non-negative integer (a programming error).
 * @example if (exceedsJsonDepth(metadata, 64)) ctx.addIssue({ code: "custom", message: "is nested too deeply" });
 */
export function exceedsJsonDepth(value: unknown, maxDepth: number): boolean {
  if (!Number.isInteger(maxDepth) || maxDepth < 0) {
    throw new RangeError(`maxDepth must be a non-negative integer, got ${maxDepth}`);
  }
  if (!isContainer(value)) return false;
  if (maxDepth < 1) return true;
  // Objects finished with their height; objects on the current path (seeing one again is a cycle).
  const heights = new Map<object, number>();
  const onPath = new Set<object>([value]);
  const stack: Frame[] = [{ node: value, keys: Object.keys(value), next: 0, height: 1 }];
  for (;;) {
    const top = stack[stack.length - 1];
    if (!top) return false;
    const key = top.keys[top.next];
    if (key === undefined) {
      stack.pop();
      onPath.delete(top.node);
      heights.set(top.node, top.height);
      const parent = stack[stack.length - 1];
      if (parent) parent.height = Math.max(parent.height, top.height + 1);
      continue;
    }
    top.next += 1;
    const child: unknown = (top.node as Record<string, unknown>)[key];
    if (!isContainer(child)) continue;
    if (onPath.has(child)) return true;
    // The stack holds the path: the child sits at depth stack.length + 1.
    const known = heights.get(child);
    if (known !== undefined) {
      if (stack.length + known > maxDepth) return true;
      top.height = Math.max(top.height, known + 1);
      continue;
    }
    if (stack.length + 1 > maxDepth) return true;
    onPath.add(child);
    stack.push({ node: child, keys: Object.keys(child), next: 0, height: 1 });
  }
}
