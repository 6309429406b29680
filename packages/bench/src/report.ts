// The results of a run: the JSON file, the chart, and (full runs only) BENCHMARKS.md at the repository root.
import { execFileSync } from "node:child_process";
import { mkdir, writeFile } from "node:fs/promises";
import os from "node:os";
import path from "node:path";
import { AUDIT_COST_HEADERS, type AuditCostSection, auditCostCells, auditCostSummary } from "./audit-cost.ts";
import { serviceVsFloorSvg } from "./chart.ts";
import { table } from "./format.ts";
import { WARMUP_LATENCIES, WINDOW_LATENCIES } from "./harness.ts";
import { HTTP_HEADERS, type HttpRow, httpCells } from "./http.ts";
import { PASSWORD_HEADERS, type PasswordSection, passwordCells } from "./passwords.ts";
import { REDIS_HEADERS, type RedisSection, redisCells } from "./redis.ts";
import { RLS_COST_HEADERS, type RlsCostSection, rlsCostCells, rlsCostSummary } from "./rls-cost.ts";
import type { SeedSizes } from "./seed.ts";
import {
  COMPARISON_HEADERS,
  type ComparisonRow,
  comparisonCells,
  FLOOR_TARGET,
  NOISE_HEADERS,
  type NoiseRow,
  noiseCells,
} from "./service-vs-floor.ts";

/** A section's result, or why it failed. */
export type Outcome<T> = { ok: true; value: T } | { ok: false; error: string };

export interface Meta {
  date: string;
  mode: "full" | "quick";
  machine: { cpu: string; cores: number; memoryGiB: number; os: string };
  postgres: { version: string; source: string };
  bun: string;
  node: string;
  seed: SeedSizes;
  harness: { reps: number; durationMs: number; warmupMs: number; concurrencies: number[]; poolSize: number };
  http: { connections: number[]; durationSec: number; warmupSec: number; repeats: number; poolSize: number };
  passwordIterations: number;
  /** Where sections 1-2 ran (see pinning.ts); absent from results written before they were pinned. */
  pinning?: string;
  wallSeconds?: number;
}

export interface BenchResults {
  meta: Meta;
  serviceVsFloor: Outcome<ComparisonRow[]>;
  /** Absent from results written before the gauge existed. */
  noiseGauge?: Outcome<NoiseRow[]>;
  cacheVsRedis: Outcome<RedisSection>;
  http: Outcome<HttpRow[]>;
  passwords: Outcome<PasswordSection>;
  auditCost: Outcome<AuditCostSection>;
  rlsCost: Outcome<RlsCostSection>;
}

/** Where the chart's bars come from: the concurrency the targets are stated at. */
export const CHART_CONCURRENCY = 16;

function nodeVersion(): string {
  try {
    return execFileSync("node", ["--version"], { encoding: "utf8" }).trim();
  } catch {
    return "not installed";
  }
}

export function machineMeta(): Pick<Meta, "machine" | "bun" | "node"> {
  const cpus = os.cpus();
  return {
    machine: {
      cpu: cpus[0]?.model.trim() ?? "unknown",
      cores: cpus.length,
      memoryGiB: Math.round((os.totalmem() / 2 ** 30) * 10) / 10,
      os: `${os.type()} ${os.release()} ${os.arch()}`,
    },
    bun: Bun.version,
    node: nodeVersion(),
  };
}

const count = (n: number) => n.toLocaleString("en-US");

function describeHarness(meta: Meta): string {
  const h = meta.harness;
  return (
    `up to ${h.reps} repetition(s) of ${h.durationMs / 1000} s after ${h.warmupMs / 1000} s warm-up per variant ` +
    `(a slower variant gets a window of at least ${WINDOW_LATENCIES} and a warm-up of ${WARMUP_LATENCIES} of its latencies, and the repetitions ` +
    `shrink to keep about the same time); throughput counts the operations that finish inside the window; variants ` +
    `interleaved (rotated, every other round reversed, so each follows each equally often), medians; each ratio ` +
    `is the median of the repetitions' ratios (the two sides of a ratio measured moments apart); concurrency ` +
    `${h.concurrencies.join(", ")}; pools of ${h.poolSize}`
  );
}

function sectionBody<T>(outcome: Outcome<T>, render: (value: T) => string): string {
  return outcome.ok ? render(outcome.value) : `Failed: ${outcome.error}`;
}

function redisBody(section: RedisSection): string {
  if ("skipped" in section) return section.skipped;
  return [
    `Redis ${section.version} on loopback (no persistence), ioredis on one connection, without and with ` +
      "auto-pipelining. `pg before` sends one named prepared statement per call (the floor of section 1, " +
      "i.e. the cache before coalescing); `pg service` is CacheService, whose reads issued in the same tick " +
      "share one statement. Ratios are PostgreSQL's throughput over Redis'.",
    "",
    table(REDIS_HEADERS, section.rows.map(redisCells)),
  ].join("\n");
}

/** BENCHMARKS.md: one table per section, with the machine and versions, and how to read and rerun it. */
export function markdown(results: BenchResults, links: { json: string; svg: string }): string {
  const { meta } = results;
  const lines = [
    "# Benchmarks",
    "",
    "Written by `bun run bench` (full mode); rerun it to refresh this file, or `bun run bench --quick` for a " +
      "short smoke run that leaves this file alone. How to read: every ratio compares two things measured in " +
      "the same run on the same machine (`service/floor` 1.00x means the service costs nothing over raw " +
      "node-postgres); absolute numbers depend on the machine. Each section says what its floor is: the least " +
      "work that gives the same answer, measured beside the product, never our own SQL sent another way " +
      "passed off as the minimum. Raw numbers: " +
      `[results.json](${links.json}); chart: [service-vs-floor.svg](${links.svg}).`,
    "",
    "| | |",
    "|---|---|",
    `| date | ${meta.date} |`,
    `| machine | ${meta.machine.cpu}, ${meta.machine.cores} cores, ${meta.machine.memoryGiB} GiB, ${meta.machine.os} |`,
    `| PostgreSQL | ${meta.postgres.version} (${meta.postgres.source}, loopback) |`,
    `| Bun | ${meta.bun} |`,
    `| Node | ${meta.node} |`,
    `| mode | ${meta.mode}: ${describeHarness(meta)} |`,
    `| sections 1-2 | ${meta.pinning ?? "not pinned"} |`,
    `| seed | ${count(meta.seed.users)} users with one live session each, ${count(meta.seed.oneTimeTokens)} one-time tokens, ${count(meta.seed.cacheEntries)} cache entries |`,
    `| wall time | ${meta.wallSeconds === undefined ? "n/a" : `${Math.round(meta.wallSeconds)} s`} |`,
    "",
    "## 1-2. Hot paths: service vs floor vs naive Drizzle",
    "",
    "Floor: the same SQL sent by raw node-postgres as a named prepared statement, on a pool with the " +
      "service's type parsers. Naive: the obvious Drizzle " +
      "code (query builder per call, relational queries). Before the first row, every variant of every " +
      "path runs unrecorded at each concurrency, so the first row measured does not pay for compiling the " +
      "driver code all variants share. Before each row the tables the paths write are vacuumed, so the dead " +
      "rows one row's writers leave (a coalescing service writes several times what its floor does) do not " +
      "slow one side of the next row's pairs. " +
      "When the bench starts PostgreSQL itself and has at least two cores, these rows and the gauge under them " +
      "run with the bench process on one core and the server on the others (see the header): a variant that " +
      "shares a core with the backends it drives loses whole windows to the scheduler, which made the ratio " +
      "of two equal things drift by up to 8% at concurrency 16; pinned, it stays within about 2%. Both sides " +
      "of every ratio run pinned alike. The other sections are not pinned. " +
      "Latencies in milliseconds.",
    "",
    `How to read \`service/floor\`: each repetition runs the service and the floor moments apart, and the ` +
      `ratio is the median of the repetitions' ratios, with its 95% interval (distribution-free: order ` +
      `statistics of the pair ratios) and the number of pairs it was taken over. One pair's ratio spreads ` +
      `widely here (a standard deviation of 30-45% at concurrency 16 and 64), so a median over the planned ` +
      `repetitions can land several percent away from the true ratio. A row whose interval straddles ` +
      `${FLOOR_TARGET}x (the target) gets more pairs of the service and the floor alone, doubling up to four ` +
      `times its plan, until the interval lies on one side of ${FLOOR_TARGET}x or is within 3% of its ratio; ` +
      `the other rows keep their plan. The target holds for a row when its ratio is at least ${FLOOR_TARGET}x; ` +
      `an interval that still reaches under ${FLOOR_TARGET}x says the run could not tell.`,
    "",
    `![service vs floor at concurrency ${CHART_CONCURRENCY}](${links.svg})`,
    "",
    sectionBody(results.serviceVsFloor, (rows) => table(COMPARISON_HEADERS, rows.map(comparisonCells))),
    "",
    "How far a ratio of two equal things lands from 1.00x in this run: the floor of a path against a copy of " +
      "itself on a fourth pool of the same size, interleaved, paired and given more pairs exactly as the rows " +
      "above. A `service/floor` ratio that differs from 1.00x by less than this is not a measured difference; " +
      "an interval here that misses 1.00x says the run had a bias the intervals do not cover.",
    "",
    results.noiseGauge === undefined
      ? "Not measured."
      : sectionBody(results.noiseGauge, (rows) => table(NOISE_HEADERS, rows.map(noiseCells))),
    "",
    "## 3. Cache vs Redis",
    "",
    sectionBody(results.cacheVsRedis, redisBody),
    "",
    "## 4. HTTP: GET /v1/auth/session",
    "",
    `autocannon (in the bench process, on the same machine) loads each server in turn for ` +
      `${meta.http.durationSec} s after ${meta.http.warmupSec} s of warm-up, ${meta.http.repeats} round(s) per ` +
      "connection count, the order rotated each round; the table shows medians and every run's requests/s, " +
      "and each ratio is the median over rounds of the API's run over the other server's run in that round. " +
      `Every server that reads PostgreSQL has a pool of ${meta.http.poolSize}. The servers:`,
    "",
    "- **api**: this product as users start it (`bun run start`): `NODE_ENV=production`, default log level, so " +
      "the access log is on at `info` (written to a file), and the default in-process session cache " +
      "(`SESSION_CACHE_TTL_MS=2000`, evicted by the session change feed). Bearer tokens of seeded sessions; the " +
      "load cycles over 256 of them, so after the first pass most checks are answered from memory.",
    "- **api, no session cache**: the same with `SESSION_CACHE_TTL_MS=0`: every check reads PostgreSQL, the " +
      "work the database floors do. Compare the floors with this row for the cost of the read path.",
    "- **bun-sql floor**, the minimal floor: the least correct work for the same answer. Hono on Bun, SHA-256 of " +
      "the token, one prepared `SELECT` of the live session joined with its user through Bun's built-in " +
      "PostgreSQL client, JSON. No logging, no metrics, no coalescing.",
    "- **raw-pg floor**: the same work through node-postgres, the driver the API uses (with the API's type " +
      "parsers), running the API's read as a named prepared statement. The gap between the two floors is what node-postgres costs on Bun, not what " +
      "this product adds.",
    "- **better-auth**: the peer, Better Auth's default `GET /api/auth/get-session` (Better Auth 1.7 with its " +
      "Drizzle adapter over node-postgres, Hono on Bun, tables from its CLI's schema in the same database), " +
      "with the signed session cookies of sessions made by its own sign-up. One setting differs from its " +
      "defaults: its rate limiter is off (under `NODE_ENV=production` it allows 100 requests per 10 s per " +
      "client address, so a load run would measure 429s).",
    "- **constant floor**: a fixed JSON answer: what Bun, Hono and the load generator cost with no database.",
    "",
    "`API req/s / this` above 1 means the API (with its cache) serves more requests per second than that " +
      "server; `API p99 / this` below 1 means its slowest 1% answer faster. Targets at 16 connections: without " +
      "the cache, at least 0.8x the minimal floor's requests/s with at most 1.5x its p99, and at least 5x Better " +
      "Auth's requests/s; with the cache, at least 2x the minimal floor. The API can beat a floor without the " +
      "cache too: concurrent session checks share one read (group commit), which no floor does.",
    "",
    sectionBody(results.http, (rows) => table(HTTP_HEADERS, rows.flatMap(httpCells))),
    "",
    "## 5. Password hashing",
    "",
    sectionBody(results.passwords, (section) =>
      [
        `argon2 parameters of the stored hash: \`${section.parameters}\`.`,
        "",
        table(PASSWORD_HEADERS, passwordCells(section)),
        "",
        section.note,
      ].join("\n"),
    ),
    "",
    "## 6. What the audit trail costs",
    "",
    "Each product path that now records an event in the transaction of its change, without and with the " +
      "trail, in process through the services on the service pool of section 1 (same harness settings, the " +
      "two variants interleaved). **sign-out**: without is `SessionsService.revoke` alone (one autocommit " +
      "UPDATE); with is the API's: the same UPDATE with its `audit` event, which a CTE inserts from the revoked row, one statement; " +
      "writers share no lock, and the chainer links their events afterwards (its pass over them is timed " +
      "below the table). **password sign-in**: `UsersService.signIn` without and with the `audit` option " +
      "recording one `sign_in` event in its own transaction; argon2 runs before that transaction in both. The " +
      "users and sessions are the section's own. `with/without` is the median of the repetitions' paired " +
      "ratios: ops/s below 1x and latency above 1x is what the trail costs. Latencies in milliseconds.",
    "",
    sectionBody(results.auditCost, (section) =>
      [table(AUDIT_COST_HEADERS, section.rows.map(auditCostCells)), "", auditCostSummary(section)].join("\n"),
    ),
    "",
    "## 7. What the user scope costs",
    "",
    "The read every user route does, listing a user's live sessions (`SessionsService.listForUser`), three " +
      "ways, in process through the services on the service pool of section 1 (same harness settings, the " +
      "three variants interleaved). **unscoped**: in `transaction(fn)`: BEGIN, the SELECT, COMMIT. " +
      "**scoped**: in `withUser(id, fn)`, the user-scoped transaction user routes open: `BEGIN; SELECT " +
      "set_config('app.user_id', ...)` in one round trip, the SELECT, COMMIT. Both make three round trips " +
      "under the same forced row-level security policy (`app_scope_user() IS NULL OR user_id = " +
      "app_scope_user()`, migration 0007), so `scoped/unscoped` isolates what the scope costs: the set_config " +
      "and the policy's comparison. **autocommit**, for context: the SELECT alone, one round trip. The users " +
      "and sessions are the section's own, read round-robin, and every call's answer is checked. " +
      "`scoped/unscoped` is the median of the repetitions' paired ratios: ops/s below 1x and latency above 1x " +
      "is what the scope costs; the issue's target is at least 0.90x ops/s. Latencies in milliseconds.",
    "",
    sectionBody(results.rlsCost, (section) =>
      [table(RLS_COST_HEADERS, section.rows.map(rlsCostCells)), "", rlsCostSummary(section)].join("\n"),
    ),
    "",
  ];
  return lines.join("\n");
}

/** Writes results.json and the chart to `dir`, and BENCHMARKS.md to `markdownPath` when given. */
export async function writeResults(
  results: BenchResults,
  dir: string,
  markdownPath: string | undefined,
): Promise<string[]> {
  await mkdir(dir, { recursive: true });
  const jsonPath = path.join(dir, "results.json");
  const svgPath = path.join(dir, "service-vs-floor.svg");
  await writeFile(jsonPath, `${JSON.stringify(results, null, 2)}\n`);
  const rows = results.serviceVsFloor.ok ? results.serviceVsFloor.value : [];
  const subtitle = `${results.meta.machine.cores} cores, PostgreSQL ${results.meta.postgres.version}, ${results.meta.date.slice(0, 10)}`;
  await writeFile(svgPath, serviceVsFloorSvg(rows, CHART_CONCURRENCY, subtitle));
  const written = [jsonPath, svgPath];
  if (markdownPath) {
    const base = path.dirname(markdownPath);
    const links = {
      json: path.relative(base, jsonPath).split(path.sep).join("/"),
      svg: path.relative(base, svgPath).split(path.sep).join("/"),
    };
    await writeFile(markdownPath, markdown(results, links));
    written.push(markdownPath);
  }
  return written;
}
