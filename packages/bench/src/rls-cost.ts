// Section 7: what the user scope (row-level security, migration 0007) costs the read every user route does:
// listing a user's live sessions (SessionsService.listForUser), measured three ways, interleaved, on the
// service pool section 1 opened:
//  - unscoped transaction: transaction(fn): BEGIN, the SELECT, COMMIT (three round trips);
//  - scoped transaction: withUser(id, fn): `BEGIN; SELECT set_config('app.user_id', ...)` in one round trip,
//    the SELECT, COMMIT (three round trips too), so scoped/unscoped isolates what the scope itself costs: the
//    set_config and the policy comparing user_id with the scope's user;
//  - autocommit, for context: the SELECT alone (one round trip), what the read cost before user routes opened
//    a scope.
// Both transactions run under the same FORCEd policy; in the unscoped one it short-circuits on
// `app_scope_user() IS NULL`. The users and sessions are this section's own, made in setup with the services:
// the HTTP section's seeded sessions stay untouched. After the measurements, a check that the scope holds: an
// unfiltered SELECT of sessions inside withUser(a) returns exactly user a's rows.
import {
  getPool,
  type PublicSession,
  SessionsService,
  sessions,
  transaction,
  UsersService,
  withUser,
} from "@repo/db";
import { msText, opsText, ratioText, table } from "./format.ts";
import { compareInterleaved, type Measurement, type Op, pairedRatio, type RepeatOptions } from "./harness.ts";

export interface RlsCostRow {
  concurrency: number;
  unscoped: Measurement;
  scoped: Measurement;
  autocommit: Measurement;
  /** Throughput of the scoped transaction over the unscoped one (the target: at least 0.9). */
  opsRatio: number;
  /** p50 latency of the scoped transaction over the unscoped one (above 1: the scope adds latency). */
  p50Ratio: number;
  /** p99 latency of the scoped transaction over the unscoped one. */
  p99Ratio: number;
  /** Throughput of the scoped transaction over autocommit (what a scoped route pays over the bare read). */
  scopedToAutocommit: number;
}

/** The check after the measurements: what an unfiltered SELECT of sessions saw in and out of a user's scope. */
export interface RlsIsolationCheck {
  /** Rows of the sessions table outside any scope (every user's). */
  totalSessions: number;
  /** For each user checked: its own sessions, and the rows the unfiltered SELECT returned in its scope. */
  users: { own: number; visible: number }[];
}

export interface RlsCostSection {
  /** Users made for this section, and live sessions made for each (what every measured read returns). */
  users: number;
  sessionsPerUser: number;
  /** The target of the issue: scoped ops/s at least this fraction of unscoped ops/s. */
  target: number;
  rows: RlsCostRow[];
  isolation: RlsIsolationCheck;
  /** What the numbers say, computed from them. */
  notes: string[];
}

export interface RlsCostOptions extends Omit<RepeatOptions, "concurrency"> {
  concurrencies: number[];
  /** How many users to make. */
  users: number;
  /** Live sessions per user (below the default cap, so no create revokes another). */
  sessionsPerUser: number;
}

/** The target: a scoped read at most 10% slower than the unscoped one. */
export const RLS_TARGET = 0.9;

const IP_ADDRESS = "192.0.2.20";
const USER_AGENT = "bench/rls-cost";
// Setup calls in flight at once: the pool's size is enough.
const SETUP_CONCURRENCY = 16;

/** Runs `fn` over `items`, `SETUP_CONCURRENCY` at a time, keeping the order of the results. */
async function inParallel<T, R>(items: readonly T[], fn: (item: T, n: number) => Promise<R>): Promise<R[]> {
  const results: R[] = new Array(items.length);
  let next = 0;
  const worker = async () => {
    for (let n = next++; n < items.length; n = next++) results[n] = await fn(items[n] as T, n);
  };
  await Promise.all(Array.from({ length: Math.min(SETUP_CONCURRENCY, items.length) }, worker));
  return results;
}

interface RlsFixture {
  users: { id: string; sessionIds: string[] }[];
}

/** Users without a password (nothing here signs in) and `sessionsPerUser` live sessions each. */
async function setup(count: number, sessionsPerUser: number): Promise<RlsFixture> {
  const emails = Array.from({ length: count }, (_, n) => `rls${n}@rls-bench.example`);
  const created = await inParallel(emails, (email) => UsersService.create({ email }));
  // Session k of every user before session k + 1 of any: one user's creations take turns on its row, so
  // spreading them keeps the workers from queueing behind one another.
  const slots = Array.from(
    { length: count * sessionsPerUser },
    (_, n) => created[n % count] as { id: string },
  );
  const made = await inParallel(slots, (user) =>
    SessionsService.create({
      userId: user.id,
      authMethod: "password",
      ipAddress: IP_ADDRESS,
      userAgent: USER_AGENT,
    }),
  );
  const users = created.map((user) => ({ id: user.id, sessionIds: [] as string[] }));
  for (const [n, { session }] of made.entries()) {
    (users[n % count] as { sessionIds: string[] }).sessionIds.push(session.id);
  }
  return { users };
}

/**
 * The three variants of the read, round-robin over the section's users. Every answer is checked to hold the
 * user's sessions: a scope that hid them would otherwise make the scoped read look cheap.
 */
function variants(fixture: RlsFixture, sessionsPerUser: number): Record<keyof Measured, Op> {
  const userId = (i: number) => (fixture.users[i % fixture.users.length] as { id: string }).id;
  const checked = (id: string, rows: PublicSession[]) => {
    if (rows.length !== sessionsPerUser || rows.some((row) => row.userId !== id)) {
      throw new Error(
        `listForUser(${id}) returned ${rows.length} session(s), expected the user's ${sessionsPerUser}`,
      );
    }
  };
  return {
    unscoped: async (i) => {
      const id = userId(i);
      checked(id, await transaction((tx) => SessionsService.listForUser(id, { tx })));
    },
    scoped: async (i) => {
      const id = userId(i);
      checked(id, await withUser(id, (tx) => SessionsService.listForUser(id, { tx })));
    },
    autocommit: async (i) => {
      const id = userId(i);
      checked(id, await SessionsService.listForUser(id));
    },
  };
}

type Measured = Pick<RlsCostRow, "unscoped" | "scoped" | "autocommit">;

/** Measures the three variants at one concurrency, interleaved (see compareInterleaved). */
async function compare(
  ops: Record<keyof Measured, Op>,
  concurrency: number,
  options: Omit<RepeatOptions, "concurrency">,
): Promise<RlsCostRow> {
  const { medians, runs } = await compareInterleaved(ops, { ...options, concurrency });
  return {
    concurrency,
    unscoped: medians.unscoped,
    scoped: medians.scoped,
    autocommit: medians.autocommit,
    opsRatio: pairedRatio(runs.scoped, runs.unscoped, (m) => m.opsPerSec),
    p50Ratio: pairedRatio(runs.scoped, runs.unscoped, (m) => m.p50Ms),
    p99Ratio: pairedRatio(runs.scoped, runs.unscoped, (m) => m.p99Ms),
    scopedToAutocommit: pairedRatio(runs.scoped, runs.autocommit, (m) => m.opsPerSec),
  };
}

/**
 * The scope's promise, checked outside the timings: inside withUser(a), `SELECT * FROM sessions` with no
 * WHERE returns a's sessions and nothing else, for the first and the last user of the section; and the table
 * holds other users' rows, so the check is not vacuous.
 */
async function checkIsolation(fixture: RlsFixture): Promise<RlsIsolationCheck> {
  const result = await getPool().query<{ n: string }>("SELECT count(*) AS n FROM sessions");
  const totalSessions = Number(result.rows[0]?.n ?? 0);
  const checked = [fixture.users[0], fixture.users.at(-1)].filter(
    (user): user is RlsFixture["users"][number] => user !== undefined,
  );
  if (checked.length === 0) throw new Error("the section made no users");
  const users: RlsIsolationCheck["users"] = [];
  for (const user of checked) {
    const rows = await withUser(user.id, (tx) => tx.select().from(sessions));
    const own = new Set(user.sessionIds);
    const foreign = rows.filter((row) => row.userId !== user.id || !own.has(row.id));
    if (foreign.length > 0 || rows.length !== own.size) {
      throw new Error(
        `inside withUser(${user.id}) an unfiltered SELECT of sessions returned ${rows.length} row(s), ` +
          `${foreign.length} of them not the user's own ${own.size}: the scope does not hold`,
      );
    }
    if (totalSessions <= rows.length) {
      throw new Error(
        `the sessions table holds ${totalSessions} row(s) outside any scope, no more than user ` +
          `${user.id}'s ${rows.length}: the check proves nothing`,
      );
    }
    users.push({ own: own.size, visible: rows.length });
  }
  return { totalSessions, users };
}

/** What the numbers say: the headline ratio against the target, the added time, and the context. */
function notes(rows: RlsCostRow[], target: number): string[] {
  const low = rows[0];
  const high = rows.at(-1);
  if (!low || !high) return [];
  const ratios = rows.map((r) => `${ratioText(r.opsRatio)} at concurrency ${r.concurrency}`).join(", ");
  const below = rows.filter((r) => !(r.opsRatio >= target)).map((r) => r.concurrency);
  const verdict =
    below.length === 0
      ? "within the target at every concurrency."
      : `below the target at concurrency ${below.join(", ")}.`;
  const headline =
    `Scoped over unscoped transaction, ops/s: ${ratios} (the issue's target: at least ` +
    `${ratioText(target)}): ${verdict}`;

  const added = low.scoped.p50Ms - low.unscoped.p50Ms;
  const share = low.scoped.p50Ms > 0 ? (100 * added) / low.scoped.p50Ms : Number.NaN;
  const at =
    `At concurrency ${low.concurrency}, the read takes ${msText(low.unscoped.p50Ms)} ms (p50) in an ` +
    `unscoped transaction and ${msText(low.scoped.p50Ms)} ms in a scoped one`;
  const cost =
    !Number.isFinite(share) || added <= 0
      ? `${at}: no cost measurable above the noise.`
      : `${at}: the scope adds ${msText(added)} ms, ${share.toFixed(share < 10 ? 1 : 0)}% of the read.`;

  const context =
    `For context, at concurrency ${high.concurrency}: the read alone (autocommit, one round trip) runs at ` +
    `${opsText(high.autocommit.opsPerSec)} ops/s, in an unscoped transaction at ` +
    `${opsText(high.unscoped.opsPerSec)}, in a scoped one at ${opsText(high.scoped.opsPerSec)} ` +
    `(${ratioText(high.scopedToAutocommit)} of autocommit); the gap between autocommit and the unscoped ` +
    "transaction is the transaction's two extra round trips (BEGIN, COMMIT), which both transactions pay.";
  return [headline, `${cost} ${context}`];
}

export const RLS_COST_HEADERS = [
  "conc",
  "unscoped ops/s",
  "scoped ops/s",
  "autocommit ops/s",
  "ops/s scoped/unscoped",
  "unscoped p50 ms",
  "scoped p50 ms",
  "autocommit p50 ms",
  "p50 scoped/unscoped",
  "unscoped p99 ms",
  "scoped p99 ms",
  "autocommit p99 ms",
  "p99 scoped/unscoped",
];

export function rlsCostCells(row: RlsCostRow): string[] {
  return [
    String(row.concurrency),
    opsText(row.unscoped.opsPerSec),
    opsText(row.scoped.opsPerSec),
    opsText(row.autocommit.opsPerSec),
    ratioText(row.opsRatio),
    msText(row.unscoped.p50Ms),
    msText(row.scoped.p50Ms),
    msText(row.autocommit.p50Ms),
    ratioText(row.p50Ratio),
    msText(row.unscoped.p99Ms),
    msText(row.scoped.p99Ms),
    msText(row.autocommit.p99Ms),
    ratioText(row.p99Ratio),
  ];
}

/**
 * Makes the section's users and sessions, measures the three variants of the read at each concurrency
 * (printing the table once all are measured), then checks that the scope holds.
 */
export async function rlsCost(
  options: RlsCostOptions,
  print: (text: string) => void,
): Promise<RlsCostSection> {
  const started = performance.now();
  const fixture = await setup(options.users, options.sessionsPerUser);
  process.stderr.write(
    `rls-cost setup: ${options.users} users with ${options.sessionsPerUser} sessions each in ` +
      `${((performance.now() - started) / 1000).toFixed(1)} s\n`,
  );

  const ops = variants(fixture, options.sessionsPerUser);
  const rows: RlsCostRow[] = [];
  for (const concurrency of options.concurrencies) {
    // Progress on stderr, so stdout keeps only the tables.
    process.stderr.write(
      `measuring listForUser unscoped, scoped and autocommit at concurrency ${concurrency}...\n`,
    );
    rows.push(await compare(ops, concurrency, options));
  }
  print(table(RLS_COST_HEADERS, rows.map(rlsCostCells)));

  const isolation = await checkIsolation(fixture);
  const section: RlsCostSection = {
    users: fixture.users.length,
    sessionsPerUser: options.sessionsPerUser,
    target: RLS_TARGET,
    rows,
    isolation,
    notes: notes(rows, RLS_TARGET),
  };
  print(rlsCostSummary(section));
  return section;
}

/** The lines under the table: the setup, the isolation check and the notes. */
export function rlsCostSummary(section: RlsCostSection): string {
  const rows = section.isolation.users.map((user) => user.visible).join(" and ");
  return [
    `${section.users.toLocaleString("en-US")} users of this section with ${section.sessionsPerUser} live ` +
      "sessions each, read round-robin; every measured call returned the user's sessions. Scope check after " +
      "the measurements: inside `withUser(a)`, an unfiltered `SELECT` of sessions returned exactly user a's " +
      `own sessions (${rows} rows, for the section's first and last user), while the table holds ` +
      `${section.isolation.totalSessions.toLocaleString("en-US")} rows outside any scope.`,
    ...section.notes,
  ].join("\n\n");
}
