// Section 6: what the audit trail costs the two product paths that now record an event in the transaction of
// the change, each measured without and with the trail, interleaved, on the service pool section 1 opened:
//  - sign-out: without = SessionsService.revoke alone (one autocommit UPDATE); with = the API's endSession
//    (apps/api/src/routes/auth/sessions.ts): the revoke with its `audit` event, one statement (a CTE inserts the
//    event from the revoked row);
//  - password sign-in: UsersService.signIn without and with the `audit` option that records one `sign_in`
//    event in signIn's own transaction (argon2 runs before that transaction, in both variants).
// The users and sessions are this section's own, made in setup with the services: the HTTP section's seeded
// sessions stay live.
import {
  type AuditEventInput,
  AuditService,
  getPool,
  type PublicUser,
  SessionsService,
  UsersService,
} from "@repo/db";
import { msText, opsText, ratioText, table } from "./format.ts";
import { compareInterleaved, type Measurement, type Op, pairedRatio, type RepeatOptions } from "./harness.ts";

export interface AuditCostRow {
  operation: string;
  concurrency: number;
  withoutTrail: Measurement;
  withTrail: Measurement;
  /** Throughput with the trail over without (below 1: the trail costs throughput). */
  opsRatio: number;
  /** p50 latency with the trail over without (above 1: the trail adds latency). */
  p50Ratio: number;
  /** p99 latency with the trail over without. */
  p99Ratio: number;
}

export interface AuditCostSection {
  /** Users made for this section (one password hash, one session each). */
  users: number;
  /** The sign-in session cap passed to signIn, and the most live sessions any of the users had at the end. */
  maxPerUser: number;
  maxLiveSessionsPerUser: number;
  /** The chaining pass after the measurements: how many events it linked and how long it took. */
  chainedAfter: { events: number; ms: number };
  /** Events in the trail at the end, all verified by AuditService.verify(). */
  eventsVerified: number;
  rows: AuditCostRow[];
  /** What the numbers say, computed from them. */
  notes: string[];
}

export interface AuditCostOptions extends Omit<RepeatOptions, "concurrency"> {
  /** Concurrencies of the sign-out rows. */
  signOutConcurrencies: number[];
  /** Concurrencies of the sign-in rows (argon2 makes each sign-in slow: fewer). */
  signInConcurrencies: number[];
  /** How many users (and sessions) to make. */
  users: number;
}

const BENCH_PASSWORD = "correct horse battery staple";
const IP_ADDRESS = "192.0.2.10";
const USER_AGENT = "bench/audit-cost";
// Sign-ins go round-robin over the section's users, so each user gets total sign-ins / users sessions. With
// the default cap of 50 live sessions and 2,000 users, the cap is reached only after about 98,000 sign-ins;
// sign-ins are bound by argon2 (a few tens of ms of one core each), so a full run makes a small fraction of
// that, and no sign-in revokes an older session for the cap (which would make it other work). The section
// checks this at the end and fails if a user reached the cap.
const MAX_PER_USER = SessionsService.DEFAULT_SESSION_CONFIG.maxPerUser;
// Setup calls in flight at once: the pool's size is enough.
const SETUP_CONCURRENCY = 16;

const pick = <T>(items: readonly T[], i: number): T => items[i % items.length] as T;

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

interface AuditFixture {
  users: { id: string; email: string }[];
  /** One session per user, same order, already revoked (see setup). */
  sessionIds: string[];
}

/**
 * Users with a password (hashed once and shared: argon2 per user would make setup take minutes) and one
 * session each. The sessions are revoked here once: a first revoke changes the row (status, revoked_at,
 * expires_at) and every later one rewrites it unchanged (revoke is idempotent and still returns the row), so
 * whichever variant ran first would otherwise get all the first revokes. This way every measured revoke,
 * without or with the trail, is the same UPDATE, and the sessions can be reused round-robin.
 */
async function setup(count: number): Promise<AuditFixture> {
  const password = await UsersService.preparePassword({ password: BENCH_PASSWORD });
  const emails = Array.from({ length: count }, (_, n) => `audit${n}@audit-bench.example`);
  const created = await inParallel(emails, (email) => UsersService.create({ email, password }));
  const users = created.map((user, n) => ({ id: user.id, email: emails[n] as string }));
  const sessions = await inParallel(users, (user) =>
    SessionsService.create({
      userId: user.id,
      authMethod: "password",
      ipAddress: IP_ADDRESS,
      userAgent: USER_AGENT,
    }),
  );
  const sessionIds = sessions.map(({ session }) => session.id);
  await inParallel(sessionIds, (id) => SessionsService.revoke(id));
  return { users, sessionIds };
}

/** The event the API records for `action` by a user about themself (apps/api/src/audit.ts auditEvent). */
function userEvent(
  action: "sign_in" | "sign_out",
  userId: string,
  i: number,
  details: Record<string, unknown>,
): AuditEventInput {
  return {
    action,
    actorType: "user",
    actorUserId: userId,
    subjectUserId: userId,
    ipAddress: IP_ADDRESS,
    userAgent: USER_AGENT,
    requestId: `bench-${i}`,
    details,
  };
}

interface Path {
  operation: string;
  concurrencies: number[];
  withoutTrail: Op;
  withTrail: Op;
}

function paths(fixture: AuditFixture, options: AuditCostOptions): Path[] {
  const session = (i: number) => {
    const n = i % fixture.sessionIds.length;
    return { id: fixture.sessionIds[n] as string, userId: (fixture.users[n] as { id: string }).id };
  };
  const signIn = (i: number, audited: boolean) => {
    const user = pick(fixture.users, i);
    return UsersService.signIn(
      { email: user.email, password: BENCH_PASSWORD },
      {
        session: { authMethod: "password", ipAddress: IP_ADDRESS, userAgent: USER_AGENT },
        sessionConfig: { maxPerUser: MAX_PER_USER },
        // The API's event for a password sign-in (apps/api/src/routes/auth/sign-in.ts).
        audit: audited
          ? ({ user: signed }: { user: PublicUser }) =>
              userEvent("sign_in", signed.id, i, { method: "password" })
          : undefined,
      },
    );
  };
  return [
    {
      operation: "sign-out",
      concurrencies: options.signOutConcurrencies,
      withoutTrail: (i) => SessionsService.revoke(session(i).id),
      withTrail: (i) => {
        const { id, userId } = session(i);
        return SessionsService.revoke(id, { audit: userEvent("sign_out", userId, i, { sessionId: id }) });
      },
    },
    {
      operation: "password sign-in",
      concurrencies: options.signInConcurrencies,
      withoutTrail: (i) => signIn(i, false),
      withTrail: (i) => signIn(i, true),
    },
  ];
}

/** Measures one path at one concurrency, the two variants interleaved (see compareInterleaved). */
async function compare(
  path: Path,
  concurrency: number,
  options: Omit<RepeatOptions, "concurrency">,
): Promise<AuditCostRow> {
  const { medians, runs } = await compareInterleaved(
    { withoutTrail: path.withoutTrail, withTrail: path.withTrail },
    { ...options, concurrency },
  );
  return {
    operation: path.operation,
    concurrency,
    withoutTrail: medians.withoutTrail,
    withTrail: medians.withTrail,
    opsRatio: pairedRatio(runs.withTrail, runs.withoutTrail, (m) => m.opsPerSec),
    p50Ratio: pairedRatio(runs.withTrail, runs.withoutTrail, (m) => m.p50Ms),
    p99Ratio: pairedRatio(runs.withTrail, runs.withoutTrail, (m) => m.p99Ms),
  };
}

/** The most live sessions any of the section's users has (what the cap counts). */
async function maxLiveSessions(users: { id: string }[]): Promise<number> {
  const result = await getPool().query<{ n: string | null }>(
    `SELECT max(n) AS n FROM (
       SELECT count(*) AS n FROM sessions
       WHERE user_id = ANY($1::uuid[]) AND status = 'active' AND expires_at > now()
       GROUP BY user_id) per_user`,
    [users.map((u) => u.id)],
  );
  return Number(result.rows[0]?.n ?? 0);
}

/**
 * What the trail costs one path, in words: the median operation's added time at the lowest concurrency (and
 * its share of the operation), and the throughput ratio at the highest. Medians of each variant, so an
 * addition within the noise reads as such.
 */
function note(rows: AuditCostRow[], operation: string, why: string): string | undefined {
  const own = rows.filter((r) => r.operation === operation);
  const low = own[0];
  const high = own.at(-1);
  if (!low || !high) return undefined;
  const added = low.withTrail.p50Ms - low.withoutTrail.p50Ms;
  const share = low.withTrail.p50Ms > 0 ? (100 * added) / low.withTrail.p50Ms : Number.NaN;
  const at =
    `At concurrency ${low.concurrency}, a ${operation} takes ${msText(low.withoutTrail.p50Ms)} ms (p50) ` +
    `without the trail and ${msText(low.withTrail.p50Ms)} ms with it`;
  const cost =
    !Number.isFinite(share) || added <= 0
      ? `${at}: no cost measurable above the noise.`
      : `${at}: the trail adds ${msText(added)} ms, ${share.toFixed(share < 10 ? 1 : 0)}% of the operation.`;
  const throughput =
    high === low
      ? ""
      : ` At concurrency ${high.concurrency}: ${opsText(high.withTrail.opsPerSec)} ops/s with the trail, ` +
        `${opsText(high.withoutTrail.opsPerSec)} without (${ratioText(high.opsRatio)}).`;
  return `${cost}${throughput} ${why}`;
}

export const AUDIT_COST_HEADERS = [
  "operation",
  "conc",
  "without ops/s",
  "with ops/s",
  "ops/s with/without",
  "without p50 ms",
  "with p50 ms",
  "p50 with/without",
  "without p99 ms",
  "with p99 ms",
  "p99 with/without",
];

export function auditCostCells(row: AuditCostRow): string[] {
  return [
    row.operation,
    String(row.concurrency),
    opsText(row.withoutTrail.opsPerSec),
    opsText(row.withTrail.opsPerSec),
    ratioText(row.opsRatio),
    msText(row.withoutTrail.p50Ms),
    msText(row.withTrail.p50Ms),
    ratioText(row.p50Ratio),
    msText(row.withoutTrail.p99Ms),
    msText(row.withTrail.p99Ms),
    ratioText(row.p99Ratio),
  ];
}

/**
 * Makes the section's users and sessions, measures both paths at their concurrencies (printing each path's
 * rows as soon as they are measured), then checks what the measurement relied on: no user reached the
 * session cap, and the trail the concurrent writers appended verifies end to end.
 */
export async function auditCost(
  options: AuditCostOptions,
  print: (text: string) => void,
): Promise<AuditCostSection> {
  const started = performance.now();
  const fixture = await setup(options.users);
  process.stderr.write(
    `audit-cost setup: ${options.users} users and sessions in ${((performance.now() - started) / 1000).toFixed(1)} s\n`,
  );

  const rows: AuditCostRow[] = [];
  for (const path of paths(fixture, options)) {
    const pathRows: AuditCostRow[] = [];
    for (const concurrency of path.concurrencies) {
      // Progress on stderr, so stdout keeps only the tables.
      process.stderr.write(
        `measuring ${path.operation} without and with the trail at concurrency ${concurrency}...\n`,
      );
      pathRows.push(await compare(path, concurrency, options));
    }
    print(table(AUDIT_COST_HEADERS, pathRows.map(auditCostCells)));
    rows.push(...pathRows);
  }

  const maxLive = await maxLiveSessions(fixture.users);
  if (maxLive >= MAX_PER_USER) {
    throw new Error(
      `a user of this section reached the session cap (${maxLive} live sessions, cap ${MAX_PER_USER}): ` +
        "sign-ins revoked older sessions, so the sign-in rows measured other work; make more users",
    );
  }
  // The events are chained after the fact (the API does it every second): one pass, timed, then the check.
  const chainStarted = performance.now();
  const chained = await AuditService.chain({ batchSize: 5000 });
  const chainMs = performance.now() - chainStarted;
  const verified = await AuditService.verify({ batchSize: 10_000 });
  if (!verified.ok || verified.pending > 0) {
    throw new Error(`the audit trail does not verify after the section: ${JSON.stringify(verified.broken)}`);
  }

  const notes = [
    note(
      rows,
      "sign-out",
      "The trail adds an INSERT to the sign-out's statement (a CTE fed by the revoked row): the same one " +
        "round trip, no transaction, and nothing shared, since writers do not chain (a chainer links events " +
        "afterwards, in batches).",
    ),
    note(
      rows,
      "password sign-in",
      "Most of a sign-in is argon2, before its transaction opens; the trail adds one INSERT at the end of " +
        "that transaction.",
    ),
  ].filter((text): text is string => text !== undefined);
  const section: AuditCostSection = {
    users: fixture.users.length,
    maxPerUser: MAX_PER_USER,
    maxLiveSessionsPerUser: maxLive,
    eventsVerified: verified.checked,
    chainedAfter: { events: chained, ms: chainMs },
    rows,
    notes,
  };
  print(auditCostSummary(section));
  return section;
}

/** The lines under the table: the checks and the notes. */
export function auditCostSummary(section: AuditCostSection): string {
  return [
    `${section.users.toLocaleString("en-US")} users of this section, sign-ins round-robin over them: at most ` +
      `${section.maxLiveSessionsPerUser} live session(s) per user at the end (cap ${section.maxPerUser}, never ` +
      `reached); one chaining pass linked the ${section.chainedAfter.events.toLocaleString("en-US")} events written in ` +
      `${(section.chainedAfter.ms / 1000).toFixed(2)} s, and the trail's ${section.eventsVerified.toLocaleString("en-US")} ` +
      "events verify (AuditService.verify).",
    ...section.notes,
  ].join("\n\n");
}
