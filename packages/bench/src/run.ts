// `bun run bench [--quick]`: starts PostgreSQL (or uses BENCH_DATABASE_URL), seeds it, runs the seven sections
// and writes the results. The exit code reports breakage only (a server that did not start, a failed query, a
// wrong answer); the numbers themselves are never judged.
// `--only=7` (or `--only=1,6,7`) runs only the sections with those numbers (1 is sections 1-2), for checking a
// section while working on it; the others are reported as skipped and no file is written.
import path from "node:path";
import { fileURLToPath } from "node:url";
import { type AuditCostSection, auditCost } from "./audit-cost.ts";
import { openBenchDatabase } from "./database.ts";
import { table } from "./format.ts";
import { HTTP_POOL_SIZE, type HttpRow, httpSection } from "./http.ts";
import { type PasswordSection, passwordSection, printPasswords } from "./passwords.ts";
import { pinApart } from "./pinning.ts";
import { cacheVsRedis, type RedisSection } from "./redis.ts";
import { type BenchResults, type Meta, machineMeta, type Outcome, writeResults } from "./report.ts";
import { createResources } from "./resources.ts";
import { type RlsCostSection, rlsCost } from "./rls-cost.ts";
import { FULL_SEED, QUICK_SEED, seed } from "./seed.ts";
import {
  type ComparisonRow,
  NOISE_HEADERS,
  type NoiseRow,
  noiseCells,
  noiseGauge,
  openVariants,
  POOL_SIZE,
  serviceVsFloor,
  vacuumWrittenTables,
} from "./service-vs-floor.ts";

const quick = process.argv.includes("--quick");
const onlyArgument = process.argv.find((arg) => arg.startsWith("--only="));
const only =
  onlyArgument === undefined ? undefined : new Set(onlyArgument.slice("--only=".length).split(","));
const repoRoot = fileURLToPath(new URL("../../..", import.meta.url));
const resultsDir = fileURLToPath(new URL(quick ? "../results/quick" : "../results", import.meta.url));

const CONCURRENCIES = [1, 16, 64];
const HARNESS = quick
  ? { reps: 1, durationMs: 300, warmupMs: 100 }
  : // Up to 120 repetitions of 80 ms (whole forward and backward rounds), fewer and longer for slow
    // operations (see repetitionPlan). In A/A probes (one floor against itself on three pools) 12 repetitions
    // of 0.75 s put the median ratio anywhere from 0.91 to 1.03 and 120 of 80 ms from 0.98 to 1.03, in the
    // same wall time; inside a full run the noise gauge under section 1 still reached 0.93.
    { reps: 120, durationMs: 80, warmupMs: 10 };
const HTTP = quick
  ? { connections: [16, 64], durationSec: 2, warmupSec: 1, repeats: 1 }
  : { connections: [16, 64], durationSec: 5, warmupSec: 1, repeats: 6 };
const PASSWORD_ITERATIONS = quick ? 3 : 20;
// Section 6: password sign-in runs argon2 per call, so it is measured at the lower concurrencies only.
const AUDIT = { signInConcurrencies: [1, 16], users: quick ? 500 : 2000 };
// Section 7: the users whose sessions are read round-robin, and their live sessions each (a few, as on a
// "your devices" page; far below the session cap, so no create revokes another).
const RLS = { users: 400, sessionsPerUser: 4 };

const print = (text: string) => console.log(text);
const resources = createResources();
let failed = false;

// `bun run` forwards a terminal's Ctrl-C to us although the terminal already sent it to our process group, so
// one key press arrives twice: only a signal well after the first one means "exit now, skip the cleanup".
const FORCE_EXIT_AFTER_MS = 2000;
let firstSignalAt: number | undefined;
const interrupted = () => firstSignalAt !== undefined;
function onSignal(signal: string): void {
  if (firstSignalAt !== undefined) {
    // Children still get SIGKILL from their exit hooks.
    if (Date.now() - firstSignalAt > FORCE_EXIT_AFTER_MS) process.exit(130);
    return;
  }
  firstSignalAt = Date.now();
  console.error(`\n${signal}: stopping everything the bench started...`);
  void resources.closeAll().finally(() => process.exit(130));
}

/** Runs one section, printing its title; a failure is recorded and reported, and the next section runs. */
async function section<T>(title: string, run: () => Promise<T>): Promise<Outcome<T>> {
  if (interrupted()) return { ok: false, error: "interrupted" };
  if (only && !only.has(/^\d+/.exec(title)?.[0] ?? "")) return { ok: false, error: "skipped (--only)" };
  print(`\n## ${title}\n`);
  try {
    return { ok: true, value: await run() };
  } catch (error) {
    failed = true;
    // After Ctrl-C the servers are going away under the section: that is not news.
    if (interrupted()) return { ok: false, error: "interrupted" };
    const message = error instanceof Error ? (error.stack ?? error.message) : String(error);
    console.error(`FAILED: ${title}\n${message}`);
    return { ok: false, error: error instanceof Error ? error.message : String(error) };
  }
}

async function main(): Promise<void> {
  const started = performance.now();
  const sizes = quick ? QUICK_SEED : FULL_SEED;
  print(`# bench (${quick ? "quick" : "full"} mode)`);
  if (quick) print(`quick mode: seeding ${sizes.users.toLocaleString("en-US")} users instead of 100,000`);

  const database = await openBenchDatabase(process.env.BENCH_DATABASE_URL || undefined);
  resources.defer("the bench database", () => database.close());
  print(`PostgreSQL ${database.serverVersion} (${database.source}), migrated`);

  const seedStarted = performance.now();
  const fixture = await seed(database.url, sizes);
  print(
    `seeded ${sizes.users} users and sessions, ${sizes.oneTimeTokens} one-time tokens, ` +
      `${sizes.cacheEntries} cache entries in ${((performance.now() - seedStarted) / 1000).toFixed(1)} s`,
  );

  const variants = openVariants(database.url, fixture, resources);
  const meta: Meta = {
    date: new Date().toISOString(),
    mode: quick ? "quick" : "full",
    ...machineMeta(),
    postgres: { version: database.serverVersion, source: database.source },
    seed: sizes,
    harness: { ...HARNESS, concurrencies: CONCURRENCIES, poolSize: POOL_SIZE },
    http: { ...HTTP, poolSize: HTTP_POOL_SIZE },
    passwordIterations: PASSWORD_ITERATIONS,
  };

  // Sections 1-2 and their noise gauge only: the bench on one core, PostgreSQL on the others (see pinning.ts).
  const pinning = only && !only.has("1") ? undefined : pinApart(database.serverPid);
  if (pinning) {
    resources.defer("the CPU pinning", async () => pinning.release());
    meta.pinning = pinning.description;
    print(`sections 1-2: ${pinning.description}`);
  }
  const comparison: Outcome<ComparisonRow[]> = await section("1-2. Service vs floor vs naive", () =>
    serviceVsFloor(variants.paths, CONCURRENCIES, HARNESS, print, () =>
      vacuumWrittenTables(variants.floorPool),
    ),
  );
  const noise: Outcome<NoiseRow[]> = await section("1-2 (noise). The floor against itself", async () => {
    const rows = await noiseGauge(variants.paths, variants.copies, HARNESS);
    print(table(NOISE_HEADERS, rows.map(noiseCells)));
    return rows;
  });
  pinning?.release();
  const redis: Outcome<RedisSection> = await section("3. Cache vs Redis", async () => {
    const result = await cacheVsRedis(variants.paths, fixture, CONCURRENCIES, HARNESS, resources, print);
    if ("skipped" in result) print(result.skipped);
    return result;
  });
  const http: Outcome<HttpRow[]> = await section("4. HTTP: GET /v1/auth/session", () =>
    httpSection(database.url, fixture.sessionTokens, HTTP, resources, print),
  );
  const passwords: Outcome<PasswordSection> = await section("5. Password hashing", async () => {
    // The last seeded user: not among the sessions the HTTP load used.
    const user = fixture.users.at(-1);
    if (!user) throw new Error("no users were seeded");
    const result = await passwordSection(user, PASSWORD_ITERATIONS, meta.machine.cores, variants.floorPool);
    printPasswords(result, print);
    return result;
  });

  const auditCostResult: Outcome<AuditCostSection> = await section("6. What the audit trail costs", () =>
    auditCost(
      {
        ...HARNESS,
        signOutConcurrencies: CONCURRENCIES,
        signInConcurrencies: AUDIT.signInConcurrencies,
        users: AUDIT.users,
      },
      print,
    ),
  );

  const rlsCostResult: Outcome<RlsCostSection> = await section("7. What the user scope costs", () =>
    rlsCost({ ...HARNESS, concurrencies: CONCURRENCIES, ...RLS }, print),
  );

  meta.wallSeconds = (performance.now() - started) / 1000;
  const results: BenchResults = {
    meta,
    serviceVsFloor: comparison,
    noiseGauge: noise,
    cacheVsRedis: redis,
    http,
    passwords,
    auditCost: auditCostResult,
    rlsCost: rlsCostResult,
  };
  if (interrupted()) return;
  if (only) {
    print(`\nNot writing results: only section(s) ${[...only].join(", ")} ran (--only).`);
    return;
  }
  if (failed && !quick) {
    print("\nNot writing results: a section failed (see above).");
    return;
  }
  const written = await writeResults(
    results,
    resultsDir,
    quick ? undefined : path.join(repoRoot, "BENCHMARKS.md"),
  );
  print(`\nwrote ${written.map((file) => path.relative(repoRoot, file)).join(", ")}`);
  print(`wall time ${meta.wallSeconds.toFixed(0)} s`);
}

process.on("SIGINT", () => onSignal("SIGINT"));
process.on("SIGTERM", () => onSignal("SIGTERM"));

try {
  await main();
} catch (error) {
  failed = true;
  if (!interrupted()) {
    console.error(`bench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
  }
} finally {
  await resources.closeAll();
}
process.exit(interrupted() ? 130 : failed ? 1 : 0);
