// Number formatting and pipe tables, shared by the console output and BENCHMARKS.md (a pipe table reads well
// in both).

/** Operations per second: thousands separated, no decimals. */
export function opsText(value: number): string {
  return Number.isFinite(value) ? Math.round(value).toLocaleString("en-US") : "n/a";
}

/** Milliseconds with precision where it matters: 0.084, 1.23, 45.6, 1234. */
export function msText(value: number): string {
  if (!Number.isFinite(value)) return "n/a";
  if (value < 1) return value.toFixed(3);
  if (value < 10) return value.toFixed(2);
  if (value < 100) return value.toFixed(1);
  return value.toFixed(0);
}

/** A ratio as "0.93x". */
export function ratioText(value: number): string {
  return Number.isFinite(value) ? `${value.toFixed(2)}x` : "n/a";
}

/** A ratio's interval as "0.91-0.99". */
export function intervalText(interval: { low: number; high: number }): string {
  const { low, high } = interval;
  return Number.isFinite(low) && Number.isFinite(high) ? `${low.toFixed(2)}-${high.toFixed(2)}` : "n/a";
}

/** a / b, NaN when b is not a positive number. */
export function ratio(a: number, b: number): number {
  return b > 0 ? a / b : Number.NaN;
}

/** A Markdown pipe table with columns padded for reading in a terminal; numeric-looking cells right-aligned. */
export function table(headers: string[], rows: string[][]): string {
  const widths = headers.map((header, c) =>
    Math.max(header.length, ...rows.map((row) => (row[c] ?? "").length)),
  );
  const numeric = headers.map(
    (_, c) => rows.length > 0 && rows.every((row) => /^[-\d.,x%n/a ]*$/.test(row[c] ?? "")),
  );
  const line = (cells: string[]) =>
    `| ${cells
      .map((cell, c) => (numeric[c] ? cell.padStart(widths[c] ?? 0) : cell.padEnd(widths[c] ?? 0)))
      .join(" | ")} |`;
  const rule = `|${widths.map((width, c) => (numeric[c] ? `${"-".repeat(width + 1)}:` : "-".repeat(width + 2))).join("|")}|`;
  return [line(headers), rule, ...rows.map(line)].join("\n");
}
