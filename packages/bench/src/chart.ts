// The chart of section 1, hand-written SVG (no dependency): per operation at one concurrency, horizontal bars
// of ops/s for the floor, the service and the naive baseline, with the numbers and the two ratios.
import { intervalText, opsText, ratioText } from "./format.ts";
import type { ComparisonRow } from "./service-vs-floor.ts";

const SERIES = [
  { key: "floor", label: "floor (raw node-postgres, named prepared)", color: "#7b8794" },
  { key: "service", label: "service (@repo/db)", color: "#2563eb" },
  { key: "naive", label: "naive Drizzle", color: "#f59e0b" },
] as const;

const WIDTH = 1000;
// Room for a name like "oneTimeTokens.create+consume" in 13 px bold.
const LABEL_WIDTH = 270;
const BAR_AREA = 560;
const BAR_HEIGHT = 16;
const BAR_GAP = 4;
const GROUP_GAP = 22;
const TOP = 84;

function escapeXml(text: string): string {
  return text
    .replaceAll("&", "&amp;")
    .replaceAll("<", "&lt;")
    .replaceAll(">", "&gt;")
    .replaceAll('"', "&quot;");
}

function text(x: number, y: number, content: string, attributes = ""): string {
  return `<text x="${x}" y="${y}" ${attributes}>${escapeXml(content)}</text>`;
}

function legend(): string {
  // Items laid out left to right by an estimate of their text width (about 7 px a character at 12 px).
  let x = LABEL_WIDTH;
  return SERIES.map((series) => {
    const item =
      `<rect x="${x}" y="48" width="14" height="14" fill="${series.color}"/>` +
      text(x + 20, 60, series.label, 'class="small"');
    x += 20 + series.label.length * 7 + 28;
    return item;
  }).join("");
}

function group(row: ComparisonRow, y: number, scale: number): string {
  // Labels left-aligned in their column, so a long name never runs off the left edge.
  const parts = [
    text(16, y + 16, row.operation, 'class="name"'),
    text(
      16,
      y + 34,
      `service/floor ${ratioText(row.serviceToFloor)} (95%: ${intervalText(row.serviceToFloorInterval)})`,
      'class="small"',
    ),
    text(16, y + 50, `service/naive ${ratioText(row.serviceToNaive)}`, 'class="small"'),
  ];
  SERIES.forEach((series, n) => {
    const value = row[series.key].opsPerSec;
    const width = Number.isFinite(value) ? Math.max(1, value * scale) : 0;
    const barY = y + n * (BAR_HEIGHT + BAR_GAP);
    parts.push(
      `<rect x="${LABEL_WIDTH}" y="${barY}" width="${width.toFixed(1)}" height="${BAR_HEIGHT}" fill="${series.color}"/>`,
      text(LABEL_WIDTH + width + 6, barY + 12.5, `${opsText(value)} ops/s`, 'class="small"'),
    );
  });
  return parts.join("");
}

/** The SVG document for the rows measured at `concurrency`. */
export function serviceVsFloorSvg(rows: ComparisonRow[], concurrency: number, subtitle: string): string {
  const shown = rows.filter((row) => row.concurrency === concurrency);
  const max = Math.max(1, ...shown.flatMap((row) => SERIES.map((series) => row[series.key].opsPerSec)));
  const scale = BAR_AREA / max;
  const groupHeight = SERIES.length * (BAR_HEIGHT + BAR_GAP) - BAR_GAP + GROUP_GAP;
  const groups =
    shown.length > 0
      ? shown.map((row, n) => group(row, TOP + n * groupHeight, scale)).join("")
      : text(
          LABEL_WIDTH,
          TOP + 16,
          "No measurements at this concurrency (see results.json).",
          'class="name"',
        );
  const height = TOP + Math.max(1, shown.length) * groupHeight + 16;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" role="img" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="system-ui, -apple-system, Segoe UI, Helvetica, Arial, sans-serif">`,
    `<title>Hot paths at concurrency ${concurrency}: service vs floor vs naive Drizzle throughput</title>`,
    "<style>.title{font-size:18px;font-weight:600}.name{font-size:13px;font-weight:600}.small{font-size:12px;fill:#333}</style>",
    `<rect width="${WIDTH}" height="${height}" fill="#ffffff"/>`,
    text(
      16,
      26,
      `Hot paths at concurrency ${concurrency}: throughput (ops/s, higher is better)`,
      'class="title"',
    ),
    text(WIDTH - 16, 26, subtitle, 'text-anchor="end" class="small"'),
    legend(),
    groups,
    "</svg>",
    "",
  ].join("\n");
}
