// The session change feed: one connection per process LISTENs on rdb_session_changes (migration 0008's
// triggers announce every revocation, expiry cut, deletion and role change when it commits), and what this
// process holds about sessions obeys it:
//  - the session cache: validated sessions answered from memory for a short time (never past the session's
//    expiry nor its next refresh), forgotten when their session or user changes;
//  - replica reads (SESSION_READS=replica): a session or user changed in the last moments is read on the
//    primary, whatever the replica says, until any replica in use must have replayed the change.
// While the listening connection is down, both are bypassed (every check reads the primary), and when it is
// back the cache starts empty and replicas wait out one lag window: changes made meanwhile were not heard.
import pg from "pg";
import { Counter, Gauge } from "prom-client";
import { now } from "../../clock.ts";
import { clientOptions, getDatabaseConfig } from "../../connection.ts";
import type { Logger } from "../../logger.ts";
import { registry } from "../../metrics.ts";
import { replicaLagBoundMs } from "../../replicas.ts";
import { TalliedCounter } from "../../tallies.ts";

export const SESSION_CHANGES_CHANNEL = "rdb_session_changes";

/** What the cache holds per token: a validation's answer, shared by every hit (frozen by its maker). */
export interface CachedAnswer {
  readonly session: { readonly id: string };
  readonly user: { readonly id: string };
}

interface Entry {
  answer: CachedAnswer;
  sessionId: string;
  userId: string;
  /** Epoch ms after which the entry is not used. */
  until: number;
}

export interface SessionFeedOptions {
  /** A direct connection (not a transaction-mode pooler: LISTEN needs a session of its own). */
  url: string;
  /** node-postgres client options besides the URL (the pool's timeouts, SSL). */
  clientOptions?: pg.ClientConfig;
  /** How long a validated session may be answered from memory; 0: no cache. Default 2000. */
  cacheTtlMs?: number;
  /** Most sessions held at once (the oldest go first). Default 100,000. */
  cacheMaxEntries?: number;
  /**
   * How long a changed session or user is read on the primary only, when checks read replicas: at least the
   * largest lag a replica in use can have (its maximum lag plus one check interval). 0: checks never read
   * replicas.
   */
  replicaWindowMs?: number;
  logger: Logger;
  /** Reconnection delays: from min, doubling to max. Default 100 ms .. 5 s. */
  reconnectDelayMs?: { min: number; max: number };
  /** How often the listening connection is checked with a query (a dead peer sends nothing). Default 5 s. */
  heartbeatMs?: number;
}

export interface SessionFeedStatus {
  live: boolean;
  cached: number;
  /** Notifications heard since start. */
  heard: number;
}

const heardTotal = new Counter({
  name: "db_session_changes_heard_total",
  help: "Session change notifications this process received",
  registers: [registry],
});
const feedLive = new Gauge({
  // Across API workers: live only if every worker's feed is.
  aggregator: "min",
  name: "db_session_feed_live",
  help: "1 while this process listens for session changes (its session cache and replica checks in use), else 0",
  registers: [registry],
});
// Counted in plain numbers on the hot path and handed over when scraped (prom-client hashes labels per inc()).
const lookupsTotal = new TalliedCounter({
  name: "db_session_cache_lookups_total",
  help: "Session checks that looked in the in-process cache, by result",
  labelNames: ["result"],
  registers: [registry],
});
const lookups = { hit: lookupsTotal.tally("hit"), miss: lookupsTotal.tally("miss") };

class SessionFeed {
  readonly ttlMs: number;
  readonly replicaWindowMs: number;
  private readonly maxEntries: number;
  private readonly entries = new Map<string, Entry>();
  private readonly tokensBySession = new Map<string, string>();
  private readonly tokensByUser = new Map<string, Set<string>>();
  /** Session and user ids by the change number of their last change (for reads that overlapped it). */
  private readonly changedAt = new Map<string, { seq: number; at: number }>();
  private seq = 0;
  /** The change number when the feed last went live: reads marked before it may predate unheard changes. */
  private liveSeq = 0;
  private liveSince: number | undefined;
  private client: pg.Client | undefined;
  private closed = false;
  private failures = 0;
  private heard = 0;
  private retry: ReturnType<typeof setTimeout> | undefined;
  private readonly sweep: ReturnType<typeof setInterval>;
  private heartbeat: ReturnType<typeof setInterval> | undefined;

  constructor(private readonly options: SessionFeedOptions) {
    this.ttlMs = options.cacheTtlMs ?? 2000;
    this.maxEntries = options.cacheMaxEntries ?? 100_000;
    this.replicaWindowMs = options.replicaWindowMs ?? 0;
    this.sweep = setInterval(() => this.prune(), Math.max(1000, this.ttlMs));
    this.sweep.unref();
    void this.connect();
  }

  get live(): boolean {
    return this.liveSince !== undefined;
  }

  /** The change counter now: a read that started at this number must not be cached if its rows changed since. */
  mark(): number {
    return this.seq;
  }

  /** The cached answer for this token (the same object on every hit), or undefined. */
  get(token: string): CachedAnswer | undefined {
    if (!this.live || this.ttlMs === 0) return undefined;
    const entry = this.entries.get(token);
    if (entry === undefined || entry.until <= now().getTime()) {
      if (entry) this.forgetToken(token);
      lookups.miss.n++;
      return undefined;
    }
    lookups.hit.n++;
    return entry.answer;
  }

  /**
   * Keeps a validation's answer, unless its session or user changed after `mark` (the read may predate it).
   * True when it was kept: from then on every hit gets this very object, so the caller must freeze it.
   */
  put(token: string, answer: CachedAnswer, mark: number, limits: number[]): boolean {
    if (!this.live || this.ttlMs === 0 || mark < this.liveSeq) return false;
    const sessionId = answer.session.id;
    const userId = answer.user.id;
    if (this.changedSince(sessionId, mark) || this.changedSince(userId, mark)) return false;
    const until = Math.min(now().getTime() + this.ttlMs, ...limits);
    if (until <= now().getTime()) return false;
    this.forgetToken(token);
    while (this.entries.size >= this.maxEntries) {
      const oldest = this.entries.keys().next().value;
      if (oldest === undefined) break;
      this.forgetToken(oldest);
    }
    this.entries.set(token, { answer, sessionId, userId, until });
    this.tokensBySession.set(sessionId, token);
    let tokens = this.tokensByUser.get(userId);
    if (tokens === undefined) {
      tokens = new Set();
      this.tokensByUser.set(userId, tokens);
    }
    tokens.add(token);
    return true;
  }

  /**
   * True when a check may read this session on a replica: the feed has been live for a whole window, and
   * neither the session nor its user changed within the window.
   */
  replicaMayAnswer(sessionId: string, userId: string): boolean {
    if (!this.replicasUsable()) return false;
    const t = now().getTime();
    for (const id of [sessionId, userId]) {
      const changed = this.changedAt.get(id);
      if (changed !== undefined && t - changed.at < this.replicaWindowMs) return false;
    }
    return true;
  }

  /** Replicas may serve checks at all (the feed live for a whole window). */
  replicasUsable(): boolean {
    return (
      this.replicaWindowMs > 0 &&
      this.liveSince !== undefined &&
      now().getTime() - this.liveSince >= this.replicaWindowMs
    );
  }

  /** Forgets a session (or, with only a user, all of that user's): a change this process made or heard of. */
  changed(sessionId: string | undefined, userId: string | undefined): void {
    const seq = ++this.seq;
    const at = now().getTime();
    if (sessionId !== undefined) {
      this.changedAt.set(sessionId, { seq, at });
      const token = this.tokensBySession.get(sessionId);
      if (token !== undefined) this.forgetToken(token);
    }
    if (userId !== undefined && sessionId === undefined) {
      this.changedAt.set(userId, { seq, at });
      for (const token of [...(this.tokensByUser.get(userId) ?? [])]) this.forgetToken(token);
    }
  }

  status(): SessionFeedStatus {
    return { live: this.live, cached: this.entries.size, heard: this.heard };
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.retry);
    clearInterval(this.sweep);
    clearInterval(this.heartbeat);
    this.down();
    await this.client?.end().catch(() => {});
    this.client = undefined;
  }

  private changedSince(id: string, mark: number): boolean {
    const changed = this.changedAt.get(id);
    return changed !== undefined && changed.seq > mark;
  }

  private forgetToken(token: string): void {
    const entry = this.entries.get(token);
    if (entry === undefined) return;
    this.entries.delete(token);
    if (this.tokensBySession.get(entry.sessionId) === token) this.tokensBySession.delete(entry.sessionId);
    const tokens = this.tokensByUser.get(entry.userId);
    tokens?.delete(token);
    if (tokens?.size === 0) this.tokensByUser.delete(entry.userId);
  }

  private prune(): void {
    const t = now().getTime();
    for (const [token, entry] of this.entries) if (entry.until <= t) this.forgetToken(token);
    // A change matters to reads in flight (seconds at most) and to replica checks (one window).
    const keep = Math.max(this.replicaWindowMs, 60_000);
    for (const [id, changed] of this.changedAt) if (t - changed.at > keep) this.changedAt.delete(id);
  }

  /** Heard nothing for a while, or the connection failed: everything held may be stale. */
  private down(): void {
    if (this.liveSince !== undefined) {
      this.options.logger.warn({}, "session change feed down: session checks read the primary");
    }
    this.liveSince = undefined;
    feedLive.set(0);
    this.forgetAll();
  }

  private forgetAll(): void {
    this.entries.clear();
    this.tokensBySession.clear();
    this.tokensByUser.clear();
  }

  private heardPayload(payload: string | undefined): void {
    this.heard++;
    heardTotal.inc();
    if (payload === "*") {
      // A table was truncated, or one statement changed over 100 users (migration 0009): nothing held can be
      // trusted, and replicas wait out a window.
      this.seq++;
      this.liveSeq = this.seq;
      if (this.liveSince !== undefined) this.liveSince = now().getTime();
      this.forgetAll();
      return;
    }
    const [kind, first] = (payload ?? "").split(":");
    if (kind === "s" && first) this.changed(first, undefined);
    else if (kind === "u" && first) this.changed(undefined, first);
  }

  private async connect(): Promise<void> {
    if (this.closed) return;
    const client = new pg.Client({ ...this.options.clientOptions, connectionString: this.options.url });
    this.client = client;
    let failed = false;
    const fail = (error?: unknown) => {
      if (failed) return;
      failed = true;
      clearInterval(this.heartbeat);
      this.down();
      client.removeAllListeners("notification");
      void client.end().catch(() => {});
      if (this.client === client) this.client = undefined;
      if (this.closed) return;
      this.failures++;
      const { min, max } = this.options.reconnectDelayMs ?? { min: 100, max: 5000 };
      const delay = Math.min(max, min * 2 ** Math.min(this.failures - 1, 16));
      this.options.logger.warn(
        { retryInMs: delay, error: error instanceof Error ? error.message : undefined },
        "session change feed lost its connection; reconnecting",
      );
      this.retry = setTimeout(() => void this.connect(), delay);
    };
    client.on("error", fail);
    client.on("end", () => fail());
    client.on("notification", (message) => {
      if (message.channel === SESSION_CHANGES_CHANNEL) this.heardPayload(message.payload);
    });
    try {
      await client.connect();
      await client.query(`LISTEN ${SESSION_CHANGES_CHANNEL}`);
    } catch (error) {
      fail(error);
      return;
    }
    if (failed || this.closed) return;
    this.failures = 0;
    // Start empty: whatever changed while nobody listened was not heard; nor may a read that started before
    // now be kept (it may have seen a row that changed unheard).
    this.forgetAll();
    this.liveSeq = ++this.seq;
    this.liveSince = now().getTime();
    feedLive.set(1);
    this.options.logger.info({}, "session change feed live");
    const heartbeatMs = this.options.heartbeatMs ?? 5000;
    this.heartbeat = setInterval(() => {
      const timeout = setTimeout(() => fail(new Error("heartbeat timed out")), Math.max(1000, heartbeatMs));
      client.query("SELECT 1").then(
        () => clearTimeout(timeout),
        (error: unknown) => {
          clearTimeout(timeout);
          fail(error);
        },
      );
    }, heartbeatMs);
    this.heartbeat.unref();
  }
}

let feed: SessionFeed | undefined;

/**
 * Starts listening for session changes, with the in-process session cache and (with `replicaWindowMs`)
 * session checks on replicas. One per process; stop it with stopSessionFeed().
 */
export function startSessionFeed(options: SessionFeedOptions): void {
  if (feed) throw new Error("the session change feed is already started");
  feed = new SessionFeed(options);
}

export async function stopSessionFeed(): Promise<void> {
  const stopping = feed;
  feed = undefined;
  await stopping?.close();
}

/** The running feed, if any (validation and the revoking services use it). */
export function sessionFeed(): SessionFeed | undefined {
  return feed;
}

export function sessionFeedStatus(): SessionFeedStatus | undefined {
  return feed?.status();
}

/** Tells this process's feed at once about a change it made (the notification follows after commit). */
export function sessionsChanged(sessionId: string | undefined, userId: string | undefined): void {
  feed?.changed(sessionId, userId);
}

/**
 * Starts the feed for the initialized database: on DATABASE_DIRECT_URL when set (a transaction-mode pooler
 * cannot hold a LISTEN), else DATABASE_URL. With `replicaReads`, session checks may read the replicas
 * (DATABASE_REPLICA_URLS), and a changed session is read on the primary for one replica lag window
 * (replicaLagBoundMs). Returns false, after a warning, when only a transaction-mode pooler is configured.
 */
export function startSessionChecks(options: {
  cacheTtlMs?: number;
  replicaReads?: boolean;
  logger: Logger;
}): boolean {
  const config = getDatabaseConfig();
  if (config.transactionPooler && config.directUrl === undefined) {
    options.logger.warn(
      {},
      "no session cache and no session checks on replicas: LISTEN needs DATABASE_DIRECT_URL behind a transaction-mode pooler",
    );
    return false;
  }
  const url = config.directUrl ?? config.url;
  startSessionFeed({
    url,
    clientOptions: clientOptions(config, url),
    cacheTtlMs: options.cacheTtlMs,
    replicaWindowMs: options.replicaReads ? replicaLagBoundMs(config) : 0,
    logger: options.logger,
  });
  return true;
}
