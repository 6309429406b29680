// Sessions, validation: the read-only check of a token on every request, the sliding refresh it triggers at
// most once per refresh interval, and the coalescing of concurrent checks into one read.
import { type SQL, sql } from "drizzle-orm";
import { coalescer } from "../../coalesce.ts";
import { type DatabaseOrTransaction, getDB, onReplica } from "../../connection.ts";
import { isWellFormedSecret, sha256 } from "../../crypto/secrets.ts";
import { withMetrics } from "../../metrics.ts";
import { defineStatement, param, selectColumns } from "../../statements.ts";
import { publicUserColumns } from "../common.ts";
import { type Call, defineService } from "../define.ts";
import {
  configFor,
  type SessionConfig,
  type SessionServiceOptions,
  sessionConfig,
  timesFor,
} from "./config.ts";
import { sessionFeed } from "./feed.ts";
import { type PublicSession, publicSessionColumns, type SessionUser } from "./shared.ts";

/** What the read binds: the tokens' digests and the instants of timesFor(). */
interface ReadParams extends Record<string, unknown> {
  /** The digest, for one token (a batch binds h0, h1, ...). */
  hash: Buffer | undefined;
  at: Date;
  absoluteCutoff: Date;
}

/**
 * The read every validation is: each digest (with its position n in the input) by the unique index on
 * token_hash, joined with the user, keeping only a live session (active, before its idle expiry and its
 * absolute lifetime) of a live user. It writes nothing, takes no lock and can run on a replica. The equality is
 * on a SHA-256 of 256 random bits, so timing reveals nothing usable. An expired row is left for
 * cleanupExpired(); deleting it here would make every check of a dead token a write.
 */
function readStatement(key: string, input: SQL) {
  return defineStatement<Record<string, unknown>, ReadParams>(
    key,
    sql`SELECT i.n, ${selectColumns("s", publicSessionColumns, "s.")}, ${selectColumns("u", publicUserColumns, "u.")}
      FROM ${input}
      JOIN sessions s ON s.token_hash = i.token_hash
      JOIN users u ON u.id = s.user_id
      WHERE s.status = 'active' AND s.expires_at > ${param("at")}::timestamptz
        AND s.created_at > ${param("absoluteCutoff")}::timestamptz AND u.deleted_at IS NULL`,
  );
}

// One token: a one-row input, so a generic plan's estimates equal a custom plan's and PostgreSQL keeps the
// generic plan after five runs.
const validateOne = readStatement(
  "sessions_validate",
  sql`(SELECT ${param("hash")}::bytea AS token_hash, 1 AS n) AS i`,
);

/**
 * Batch sizes with a statement of their own; a batch is padded to the next one with NO_TOKEN. Each statement
 * lists its digests as separate parameters (ARRAY[$1, ..., $n]), so its generic plan knows the row count, costs
 * what a custom plan costs, and PostgreSQL keeps it after five runs. With one array parameter
 * (unnest($1::bytea[])) the generic plan assumed 10 rows, never won, and every batch was planned anew: planning
 * took 0.25 ms where running took 0.06 ms (EXPLAIN ANALYZE on 100,000 sessions), and since batches take turns
 * (group commit), planning was most of each turn.
 */
const BATCH_SIZES = [2, 4, 8, 16, 32, 64, 128, 256] as const;
/** A digest no token has (SHA-256 never yields 32 zero bytes in practice): one index probe that finds nothing. */
const NO_TOKEN = Buffer.alloc(32);
const validateBatches = BATCH_SIZES.map((size) => {
  const digests = Array.from({ length: size }, (_, i) => sql`${param(`h${i}`)}::bytea`);
  const input = sql`unnest(ARRAY[${sql.join(digests, sql`, `)}]) WITH ORDINALITY AS i(token_hash, n)`;
  return { size, statement: readStatement(`sessions_validate_${size}`, input) };
});

/** The statement for these digests and its parameters (a batch padded with NO_TOKEN to its size). */
function readFor(hashes: readonly Buffer[], times: { at: Date; absoluteCutoff: Date }) {
  const base: ReadParams = { hash: hashes[0], at: times.at, absoluteCutoff: times.absoluteCutoff };
  if (hashes.length === 1) return { statement: validateOne, params: base };
  const batch = validateBatches.find((candidate) => candidate.size >= hashes.length);
  if (!batch) throw new Error(`a validation batch holds at most ${BATCH_SIZES.at(-1)} tokens`);
  const params: ReadParams = { ...base };
  for (let i = 0; i < batch.size; i++) params[`h${i}`] = hashes[i] ?? NO_TOKEN;
  return { statement: batch.statement, params };
}

interface RefreshParams extends Record<string, unknown> {
  ids: string[];
  at: Date;
  absoluteCutoff: Date;
  idleExpiry: Date;
  absoluteSeconds: number;
  refreshCutoff: Date;
}

/**
 * The sliding refresh, run only for sessions whose refresh is due (at most once per interval each). Its
 * conditions are re-checked on the row version it locks (READ COMMITTED): a session revoked or expired
 * meanwhile is not extended, and of concurrent refreshes of one session only the first writes (the others
 * find last_accessed_at recent). `id = ANY` walks the primary key in id order, and the ids are sorted too, so
 * two batches lock shared rows in the same order and cannot deadlock.
 */
const refreshStatement = defineStatement<Record<string, unknown>, RefreshParams>(
  "sessions_refresh",
  sql`UPDATE sessions s
      SET last_accessed_at = ${param("at")}::timestamptz,
          expires_at = least(${param("idleExpiry")}::timestamptz,
                             s.created_at + make_interval(secs => ${param("absoluteSeconds")}::float8))
      WHERE s.id = ANY(${param("ids")}::uuid[]) AND s.status = 'active'
        AND s.expires_at > ${param("at")}::timestamptz AND s.created_at > ${param("absoluteCutoff")}::timestamptz
        AND (s.last_accessed_at IS NULL OR s.last_accessed_at <= ${param("refreshCutoff")}::timestamptz)
      RETURNING s.id AS "s.id", s.expires_at AS "s.expiresAt", s.last_accessed_at AS "s.lastAccessedAt",
                s.updated_at AS "s.updatedAt"`,
);

type ValidatedRow = Record<string, unknown>;

/**
 * Validates distinct tokens: one read (one round trip), then, only when some session's refresh is due, one
 * refresh for those. One entry per token, in input order: undefined (not live), the row, or, for a row whose
 * refresh is due, a promise of the row carrying its new expiry. The returned promise settles once the read has
 * answered, so a caller gating on it (the coalescer) never waits on the refresh's row locks.
 */
async function readMany(
  tokens: readonly string[],
  cfg: SessionConfig,
  handle: DatabaseOrTransaction | undefined,
): Promise<Array<ValidatedRow | undefined | Promise<ValidatedRow>>> {
  const times = timesFor(cfg);
  const rows: Array<ValidatedRow | undefined | Promise<ValidatedRow>> = byPosition(
    await runRead(tokens, times, handle),
    tokens.length,
  );
  let due: Array<{ row: ValidatedRow; index: number }> | undefined;
  // Rows not found are holes in the array: the check below skips them.
  for (let index = 0; index < rows.length; index++) {
    const row = rows[index] as ValidatedRow | undefined;
    if (row !== undefined && refreshIsDue(row, times)) {
      due ??= [];
      due.push({ row, index });
    }
  }
  if (due !== undefined) {
    const refreshed = refreshDue(
      due.map((entry) => entry.row),
      times,
      handle,
    );
    for (const { row, index } of due) rows[index] = refreshed.then(() => row);
  }
  return rows;
}

/** The read for these tokens: its statement (one token, or a padded batch) run under metrics. */
function runRead(
  tokens: readonly string[],
  times: ReturnType<typeof timesFor>,
  handle: DatabaseOrTransaction | undefined,
) {
  const { statement, params } = readFor(tokens.map(sha256), times);
  return withMetrics("validate", "sessions", () => statement.run(handle, params));
}

/** The rows of a read by the position of their token in the input (undefined where none was found). */
function byPosition(result: { rows: ValidatedRow[] }, count: number): Array<ValidatedRow | undefined> {
  const rows = new Array<ValidatedRow | undefined>(count);
  // n is the 1-based position of the token in the input (bigint from unnest, so text from the driver).
  for (const row of result.rows) {
    const index = Number(row.n) - 1;
    // Only padding could sit past the input, and NO_TOKEN matches no session; skip such a row all the same.
    if (index < count) rows[index] = row;
  }
  return rows;
}

function refreshIsDue(row: ValidatedRow, times: ReturnType<typeof timesFor>): boolean {
  const last = row["s.lastAccessedAt"] as Date | null;
  return last === null || last.getTime() <= times.refreshCutoff.getTime();
}

/**
 * readMany() for the coalesced checks, on a replica when the session feed allows it (SESSION_READS=replica):
 * the replica answers only for sessions it found, whose refresh is not due, and that neither the feed nor
 * this process saw change within one lag window. Every other token is read again on the primary, so a
 * session created a moment ago validates and a revoked one is refused whatever the replica's lag.
 */
function readManyRouted(
  tokens: readonly string[],
  cfg: SessionConfig,
): Promise<Array<ValidatedRow | undefined | Promise<ValidatedRow>>> {
  const feed = sessionFeed();
  // Without replicas, the read itself (no async layer of its own: this runs on every check).
  return feed?.replicasUsable() ? readOnReplica(tokens, cfg, feed) : readMany(tokens, cfg, undefined);
}

/** readManyRouted() when the feed lets the replicas answer. */
async function readOnReplica(
  tokens: readonly string[],
  cfg: SessionConfig,
  feed: NonNullable<ReturnType<typeof sessionFeed>>,
): Promise<Array<ValidatedRow | undefined | Promise<ValidatedRow>>> {
  const times = timesFor(cfg);
  // Only the replica's read runs inside onReplica(): a failure of the primary's re-read below must not be
  // taken for the replica's (it would be marked down and the batch read a second time).
  const first = await onReplica(async (handle) =>
    handle === getDB()
      ? { onPrimary: true, rows: await readMany(tokens, cfg, undefined) }
      : { onPrimary: false, rows: byPosition(await runRead(tokens, times, handle), tokens.length) },
  );
  const rows: Array<ValidatedRow | undefined | Promise<ValidatedRow>> = first.rows;
  if (first.onPrimary) return rows;
  const again: number[] = [];
  // A plain loop: the array has holes where no row was found, which forEach would skip.
  for (let index = 0; index < tokens.length; index++) {
    const found = rows[index] as ValidatedRow | undefined;
    const trusted =
      found !== undefined &&
      !refreshIsDue(found, times) &&
      feed.replicaMayAnswer(found["s.id"] as string, found["u.id"] as string);
    if (!trusted) again.push(index);
  }
  if (again.length === 0) return rows;
  const fresh = await readMany(
    again.map((index) => tokens[index] as string),
    cfg,
    undefined,
  );
  again.forEach((index, k) => {
    rows[index] = fresh[k];
  });
  return rows;
}

/** Slides the expiry of sessions whose refresh is due; each row that was extended gets the new values. */
async function refreshDue(
  due: ValidatedRow[],
  times: ReturnType<typeof timesFor>,
  handle: DatabaseOrTransaction | undefined,
): Promise<void> {
  const ids = due.map((row) => row["s.id"] as string).sort();
  const refreshed = await withMetrics("refresh", "sessions", () =>
    refreshStatement.run(handle, { ...times, ids }),
  );
  const byId = new Map(refreshed.rows.map((row) => [row["s.id"] as string, row]));
  for (const row of due) {
    const fresh = byId.get(row["s.id"] as string);
    if (fresh) Object.assign(row, fresh, { refreshed: true });
  }
}

/**
 * How many coalesced validation reads run at once. One: while a read is out, validations gather and the next
 * read answers all of them (group commit). Under load that turns a round trip per request into one per batch,
 * which costs the driver and PostgreSQL far less; an idle process still sends a lone check at once. The
 * refresh is outside the gate, so a session row locked by another transaction stalls only its own callers.
 */
const VALIDATE_READS_IN_FLIGHT = 1;

// Validations outside a transaction, with the process-wide configuration, share reads (see above). A call
// with { tx } or a per-call config runs alone (its snapshot or lifetimes differ).
const validateCoalesced = coalescer<string, ValidatedRow | undefined | Promise<ValidatedRow>>({
  key: (token) => token,
  run: (tokens) => readManyRouted(tokens, sessionConfig()),
  maxInFlight: VALIDATE_READS_IN_FLIGHT,
  maxBatch: BATCH_SIZES[BATCH_SIZES.length - 1],
});

/** A row of the read as the driver gives it: each column of T under its key with a prefix ("s." or "u."). */
type Prefixed<T, P extends string> = { [K in keyof T & string as `${P}${K}`]: T[K] };
type ReadRow = Prefixed<PublicSession, "s."> & Prefixed<SessionUser, "u.">;

/**
 * The session of a read row, as an object literal: a loop copying keys from a list made each property a lookup
 * by a computed key, which cost 0.4 µs of the check's JavaScript (bun --cpu-prof on js-cost.ts). The return
 * type makes a column added to the schema (and so to the read) a type error here until it is copied.
 */
function sessionOf(row: ReadRow): PublicSession {
  return {
    id: row["s.id"],
    userId: row["s.userId"],
    status: row["s.status"],
    authMethod: row["s.authMethod"],
    ipAddress: row["s.ipAddress"],
    userAgent: row["s.userAgent"],
    expiresAt: row["s.expiresAt"],
    lastAccessedAt: row["s.lastAccessedAt"],
    revokedAt: row["s.revokedAt"],
    metadata: row["s.metadata"],
    createdAt: row["s.createdAt"],
    updatedAt: row["s.updatedAt"],
  };
}

/** The user of a read row (see sessionOf). */
function userOf(row: ReadRow): SessionUser {
  return {
    id: row["u.id"],
    email: row["u.email"],
    emailVerifiedAt: row["u.emailVerifiedAt"],
    phoneNumber: row["u.phoneNumber"],
    phoneNumberVerifiedAt: row["u.phoneNumberVerifiedAt"],
    firstName: row["u.firstName"],
    lastName: row["u.lastName"],
    avatarUrl: row["u.avatarUrl"],
    metadata: row["u.metadata"],
    lastSignInAt: row["u.lastSignInAt"],
    deletedAt: row["u.deletedAt"],
    createdAt: row["u.createdAt"],
    updatedAt: row["u.updatedAt"],
  };
}

/**
 * When a cached check must stop answering (epoch ms): the session's idle expiry, the end of its absolute
 * lifetime, and its next refresh (a cached answer never skips one).
 */
function cacheLimits(row: ValidatedRow, cfg: SessionConfig): number[] {
  const expires = (row["s.expiresAt"] as Date).getTime();
  const created = (row["s.createdAt"] as Date).getTime();
  const last = row["s.lastAccessedAt"] as Date | null;
  return [
    expires,
    created + cfg.absoluteLifetimeMs,
    last === null ? 0 : last.getTime() + cfg.refreshIntervalMs,
  ];
}

/**
 * A validation's answer. An answer the session cache keeps is frozen, metadata included: the cache hands that
 * same object to every check of the token while the entry lives (a caller can then memoize what it derives
 * from it, as the API does with its JSON answer). An answer read for one caller alone is that caller's own and
 * is not frozen (see ownRow): freezing its fourteen objects cost 1 µs per check, of the 2.8 µs the service
 * added to its floor's JavaScript, to protect nothing. Either way it is read-only by type; treat it as such.
 * Dates are the one part freezing cannot protect: do not call their setters.
 */
export type SessionCheck = Readonly<{ session: Readonly<PublicSession>; user: Readonly<SessionUser> }>;

/**
 * Freezes one of an answer's values: a Date (a frozen Date still has working setters, but no caller can give
 * it a property, such as a `toJSON` that would change how the next check serializes), or the metadata with
 * everything inside it (walked without recursion: metadata may be deep). Typed arrays (a bytea column) are
 * skipped: freezing one throws.
 */
function freezeValue(value: object): void {
  if (value instanceof Date) {
    Object.freeze(value);
    return;
  }
  if (ArrayBuffer.isView(value) || Object.isFrozen(value)) return;
  const pending: object[] = [value];
  for (let next = pending.pop(); next !== undefined; next = pending.pop()) {
    if (Object.isFrozen(next)) continue;
    Object.freeze(next);
    const items: unknown[] = Array.isArray(next) ? next : Object.values(next);
    for (const item of items) {
      if (typeof item === "object" && item !== null && !ArrayBuffer.isView(item)) pending.push(item);
    }
  }
}

/** Freezes an answer the session cache keeps, to its leaves (see SessionCheck). */
function freezeAnswer(answer: SessionCheck): void {
  for (const part of [answer.session, answer.user] as Array<Record<string, unknown>>) {
    for (const key in part) {
      const value = part[key];
      if (typeof value === "object" && value !== null) freezeValue(value);
    }
    Object.freeze(part);
  }
  Object.freeze(answer);
}

/** Rows a caller's answer was built from (a set beside the rows: a property added to a row cost 0.5 µs). */
const claimedRows = new WeakSet<ValidatedRow>();

/**
 * The row for this caller alone. Concurrent checks of one token share one read and so one row object: the
 * first caller to resume takes it, each later one gets a copy with its own Dates and metadata, so no caller's
 * change to its (unfrozen) answer reaches another's.
 */
function ownRow(row: ValidatedRow): ValidatedRow {
  if (!claimedRows.has(row)) {
    claimedRows.add(row);
    return row;
  }
  const copy: ValidatedRow = {};
  for (const key in row) {
    const value = row[key];
    copy[key] =
      value instanceof Date
        ? new Date(value.getTime())
        : typeof value === "object" && value !== null && !ArrayBuffer.isView(value)
          ? structuredClone(value)
          : value;
  }
  return copy;
}

function answerOf(row: ValidatedRow): SessionCheck {
  const read = row as unknown as ReadRow;
  return { session: sessionOf(read), user: userOf(read) };
}

/**
 * Checks a session token and returns the live session with its user, or null. On the common path this is
 * one read-only statement; at most once per refresh interval per session a conditional UPDATE slides the
 * expiry (the answer then carries the new one). Expired sessions are not deleted here (cleanupExpired() does).
 * Concurrent calls in the same tick share one read. A malformed token returns null without touching the
 * database.
 * @throws DbError only for database failures (DATABASE_UNAVAILABLE, QUERY_TIMEOUT, ...).
 * @example const auth = await validate(cookieToken); if (!auth) return c.text("Unauthorized", 401);
 */
export const validate = defineService(
  { name: "sessions.validate", table: "sessions", arity: 1 },
  async ({ logger, options }: Call<SessionServiceOptions>, token: string): Promise<SessionCheck | null> => {
    if (!isWellFormedSecret(token)) return null;
    // Outside a transaction and with the process-wide lifetimes, checks share reads and the session cache.
    const shared = options.tx === undefined && options.config === undefined;
    const feed = shared ? sessionFeed() : undefined;
    const cached = feed?.get(token);
    if (cached !== undefined) return cached as SessionCheck;
    const mark = feed?.mark() ?? 0;
    const read = shared
      ? await validateCoalesced(token)
      : await (await readMany([token], configFor(options), options.tx))[0];
    if (read === undefined) return null;
    // Synchronously on resuming: every caller sharing this row has made its copy before the first one's
    // caller can touch its answer (keep no await between the read and this line).
    const row = ownRow(read);
    if (row.refreshed) logger.debug({ sessionId: row["s.id"] }, "session extended");
    const answer = answerOf(row);
    // Kept by the session cache, it is every hit's answer from now on: frozen before anyone else sees it.
    if (feed?.put(token, answer, mark, cacheLimits(row, sessionConfig()))) freezeAnswer(answer);
    return answer;
  },
);
