// AuditService: the security events of the audit trail (schema/audit-events.ts). record() inserts one event,
// in the caller's transaction when given one (a change that rolls back leaves no event); chain() links the
// events written since its last run into the hash chain; verify() walks the chain and reports the first row
// where it breaks; prune() applies retention; list() reads events back.
//
// Writing and chaining are apart on purpose: record() is a plain INSERT, so audited changes never wait for each
// other (a chain built inside each writer's transaction serializes every audited change, commit flush
// included, through one row: a few hundred per second for the whole deployment). chain() takes the head row's
// lock, reads the unchained events (committed ones) in id order, and gives each the next seq and
// hash = SHA-256(previous hash || canonical content). An event is tamper-evident once chained: the API chains
// every second (AUDIT_CHAIN_INTERVAL_MS), and `bun run audit:verify` chains what is pending before it checks.
import { createHash } from "node:crypto";
import {
  and,
  desc,
  eq,
  getTableColumns,
  gte,
  inArray,
  isNull,
  lt,
  lte,
  or,
  type SQL,
  sql,
} from "drizzle-orm";
import { uuidv7 } from "uuidv7";
import { z } from "zod";
import { now } from "../clock.ts";
import { type DatabaseOrTransaction, transaction } from "../connection.ts";
import { isWellFormedSecret } from "../crypto/secrets.ts";
import { DbError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { withMetrics } from "../metrics.ts";
import { type AuditChainHead, auditChain } from "../schema/audit-chain.ts";
import { AUDIT_ACTIONS, AUDIT_ACTORS, type AuditEvent, auditEvents } from "../schema/audit-events.ts";
import { defineStatement, param } from "../statements.ts";
import { idSchema, type ServiceOptions, storable, validate } from "./common.ts";
import { type Call, defineService } from "./define.ts";

export type { AuditAction, AuditActor, AuditEvent } from "../schema/audit-events.ts";

const TABLE = "audit_events";
/** Keys that name a secret: such a detail is refused whatever its value. */
const SECRET_KEY = /pass(word)?|secret|token|cookie|authorization|api[_-]?key|private|credential|hash/i;

// Text must be storable() exactly as given: a lone surrogate stored as U+FFFD would break the hash.
const text = (max: number) =>
  z.string().max(max).refine(storable, "must not contain NUL or unpaired surrogates");
const recordInput = z.strictObject({
  action: z.enum(AUDIT_ACTIONS),
  actorType: z.enum(AUDIT_ACTORS),
  actorUserId: idSchema.nullish(),
  subjectUserId: idSchema.nullish(),
  ipAddress: text(64).nullish(),
  userAgent: text(1024).nullish(),
  requestId: text(128).nullish(),
  details: z.record(text(64), z.json()).default({}),
});
/** One event to record; details are plain JSON (checked at run time, as every input). */
export type AuditEventInput = Omit<z.input<typeof recordInput>, "details"> & {
  details?: Record<string, unknown> | undefined;
};

/**
 * The events a service records in its own transaction, from its result (for services that do work before
 * their transaction opens, such as a password check, so the caller cannot open it for them).
 */
export type AuditFor<R> = (result: R) => AuditEventInput | readonly AuditEventInput[] | undefined;

/** The options of a service that records the events `audit` derives from its result, in its transaction. */
export interface AuditedOptions<R> {
  audit?: AuditFor<R> | undefined;
}

/** JSON with object keys sorted at every level: the same text for the same value, before and after jsonb. */
export function canonicalJson(value: unknown): string {
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, item]) => item !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([key, item]) => `${JSON.stringify(key)}:${canonicalJson(item)}`).join(",")}}`;
  }
  return JSON.stringify(value);
}

/** The content a row's hash covers, besides its seq. */
type EventContent = Pick<
  AuditEvent,
  | "id"
  | "occurredAt"
  | "actorType"
  | "actorUserId"
  | "subjectUserId"
  | "action"
  | "ipAddress"
  | "userAgent"
  | "requestId"
  | "details"
>;

/**
 * What a row's hash covers, as one text: the canonical JSON array [id, seq, occurredAt, actorType,
 * actorUserId, subjectUserId, action, ipAddress, userAgent, requestId, details], read back from the row as
 * stored (jsonb details re-canonicalized), so the chainer and verify() compute the same text.
 */
function chainHash(previous: Buffer, row: EventContent & { seq: number }): Buffer {
  const content = canonicalJson([
    row.id,
    row.seq,
    row.occurredAt.toISOString(),
    row.actorType,
    row.actorUserId ?? null,
    row.subjectUserId ?? null,
    row.action,
    row.ipAddress ?? null,
    row.userAgent ?? null,
    row.requestId ?? null,
    row.details,
  ]);
  return createHash("sha256").update(previous).update(content, "utf8").digest();
}

/** Refuses details that name or carry a secret (a token in our format, a password, a key). */
function assertNoSecrets(details: unknown, path = "details"): void {
  if (typeof details === "string" && !storable(details)) {
    throw new DbError(
      "VALIDATION_FAILED",
      `Invalid input: ${path}: must not contain NUL or unpaired surrogates`,
      {
        details: { [path]: "must not contain NUL or unpaired surrogates" },
      },
    );
  }
  if (isWellFormedSecret(details)) {
    throw new DbError("VALIDATION_FAILED", `Invalid input: ${path}: looks like a secret`, {
      details: { [path]: "looks like a secret" },
    });
  }
  if (Array.isArray(details)) {
    details.forEach((item, index) => {
      assertNoSecrets(item, `${path}.${index}`);
    });
  } else if (details !== null && typeof details === "object") {
    for (const [key, item] of Object.entries(details)) {
      if (!storable(key)) {
        throw new DbError(
          "VALIDATION_FAILED",
          `Invalid input: ${path}: a key has NUL or unpaired surrogates`,
          {
            details: { [path]: "a key has NUL or unpaired surrogates" },
          },
        );
      }
      if (SECRET_KEY.test(key) && !/Id$/.test(key)) {
        throw new DbError("VALIDATION_FAILED", `Invalid input: ${path}.${key}: names a secret`, {
          details: { [`${path}.${key}`]: "names a secret" },
        });
      }
      assertNoSecrets(item, `${path}.${key}`);
    }
  }
}

/** The parameters of one event's INSERT (prefixed: they share statements with others, see insertEvent). */
export interface EventParams extends Record<string, unknown> {
  eventId: string;
  eventAt: Date;
  eventActorType: string;
  eventActorUserId: string | null;
  eventSubjectUserId: string | null;
  eventAction: string;
  eventIpAddress: string | null;
  eventUserAgent: string | null;
  eventRequestId: string | null;
  eventDetails: string;
}

/**
 * `INSERT INTO audit_events ... SELECT <the event's parameters> [FROM source]`: an event as part of another
 * statement (a data-modifying CTE inserts it only when `source` has a row, in the same round trip); `subject`
 * takes the subject from that row instead of the parameter. Bind it with eventParams().
 */
export function insertEvent(source?: SQL, subject?: SQL): SQL {
  return sql`INSERT INTO audit_events (id, occurred_at, actor_type, actor_user_id, subject_user_id, action,
      ip_address, user_agent, request_id, details)
    SELECT ${param("eventId")}::uuid, ${param("eventAt")}::timestamptz, ${param("eventActorType")}::text,
      ${param("eventActorUserId")}::uuid, ${subject ?? sql`${param("eventSubjectUserId")}::uuid`}, ${param("eventAction")}::text,
      ${param("eventIpAddress")}::text, ${param("eventUserAgent")}::text, ${param("eventRequestId")}::text,
      ${param("eventDetails")}::jsonb${source ? sql` FROM ${source}` : sql``}`;
}

const recordStatement = defineStatement<Record<string, never>, EventParams>("audit_record", insertEvent());

/**
 * Validates an event (VALIDATION_FAILED, including secrets in details) and gives the row it becomes and the
 * parameters insertEvent() binds.
 */
export function eventParams(payload: AuditEventInput): { event: AuditEvent; params: EventParams } {
  const input = validate(recordInput, payload);
  assertNoSecrets(input.details);
  // The details as jsonb will give them back (keys reordered, nothing else): parsed from canonical text.
  const detailsText = canonicalJson(input.details);
  const event: AuditEvent = {
    id: uuidv7(),
    seq: null,
    occurredAt: new Date(now().getTime()),
    actorType: input.actorType,
    actorUserId: input.actorUserId ?? null,
    subjectUserId: input.subjectUserId ?? null,
    action: input.action,
    ipAddress: input.ipAddress ?? null,
    userAgent: input.userAgent ?? null,
    requestId: input.requestId ?? null,
    details: JSON.parse(detailsText) as Record<string, unknown>,
    prevHash: null,
    hash: null,
  };
  const params: EventParams = {
    eventId: event.id,
    eventAt: event.occurredAt,
    eventActorType: event.actorType,
    eventActorUserId: event.actorUserId,
    eventSubjectUserId: event.subjectUserId,
    eventAction: event.action,
    eventIpAddress: event.ipAddress,
    eventUserAgent: event.userAgent,
    eventRequestId: event.requestId,
    eventDetails: detailsText,
  };
  return { event, params };
}

/** Validates an event and inserts it on `handle` (a transaction, or the pool: then it commits alone). */
async function append(
  payload: AuditEventInput,
  handle: DatabaseOrTransaction | undefined,
): Promise<AuditEvent> {
  const { event, params } = eventParams(payload);
  await withMetrics("insert", TABLE, () => recordStatement.run(handle, params));
  return event;
}

/**
 * Records one event, in `options.tx` when given (it then commits or rolls back with the change it records).
 * One INSERT, which waits for nothing; chain() links it into the chain afterwards. Details hold ids and facts:
 * a key naming a secret or a value shaped like one of our tokens is refused.
 * @throws DbError VALIDATION_FAILED (unknown action or actor, bad ids, a secret in details).
 * @example await AuditService.record({ action: "password_changed", actorType: "user", actorUserId: id, subjectUserId: id }, log, { tx });
 */
export const record = defineService(
  { name: "audit.record", table: TABLE, arity: 1, logFields: ([payload]) => ({ action: payload?.action }) },
  async ({ options }: Call<ServiceOptions>, payload: AuditEventInput): Promise<AuditEvent> =>
    await append(payload, options.tx),
);

/**
 * Records the events `audit` derives from a service's result, in that service's transaction (see AuditFor).
 * For the services themselves; callers pass `audit` in the service's options.
 */
export async function recordFor<R>(
  tx: DatabaseOrTransaction,
  audit: AuditFor<R> | undefined,
  result: R,
  logger: Logger,
): Promise<void> {
  const events = audit?.(result);
  if (!events) return;
  for (const event of Array.isArray(events) ? events : [events as AuditEventInput]) {
    await record(event, logger, { tx });
  }
}

/**
 * Links every event recorded (and committed) since the last run into the chain, oldest id first, in batches of
 * `batchSize` (each one transaction under the head row's lock, so two chainers take turns and never fork the
 * chain). With `skipIfBusy`, returns 0 at once when another chainer holds the head. Returns how many events
 * it chained.
 * @throws DbError VALIDATION_FAILED.
 * @example await AuditService.chain();
 */
export const chain = defineService(
  { name: "audit.chain", table: TABLE, arity: 1 },
  async (
    { options }: Call<ServiceOptions>,
    payload: { batchSize?: number | undefined; skipIfBusy?: boolean | undefined } = {},
  ): Promise<number> => {
    const { batchSize, skipIfBusy } = validate(
      z.strictObject({
        batchSize: z.number().int().min(1).max(10_000).default(1000),
        skipIfBusy: z.boolean().default(false),
      }),
      payload,
    );
    let chained = 0;
    for (;;) {
      const linked = await transaction(
        async (tx) => {
          const head = tx.select().from(auditChain);
          const [current] = await withMetrics("select", "audit_chain", () =>
            skipIfBusy ? head.for("update", { skipLocked: true }) : head.for("update"),
          );
          if (!current) {
            // Locked by another chainer (skipIfBusy), or gone: only the first is a reason to return quietly.
            const exists = skipIfBusy && (await tx.select({ id: auditChain.id }).from(auditChain)).length > 0;
            return exists ? 0 : missingHead();
          }
          const pending = await withMetrics("select", TABLE, () =>
            tx
              .select()
              .from(auditEvents)
              .where(isNull(auditEvents.seq))
              .orderBy(auditEvents.id)
              .limit(batchSize),
          );
          if (pending.length === 0) return 0;
          let { seq, hash } = current;
          const ids: string[] = [];
          const seqs: number[] = [];
          const prevs: Buffer[] = [];
          const hashes: Buffer[] = [];
          for (const row of pending) {
            seq += 1;
            const next = chainHash(hash, { ...row, seq });
            ids.push(row.id);
            seqs.push(seq);
            prevs.push(hash);
            hashes.push(next);
            hash = next;
          }
          const { rowCount } = await withMetrics("update", TABLE, () =>
            tx.execute(sql`UPDATE audit_events e SET seq = v.seq, prev_hash = v.prev, hash = v.hash
              FROM unnest(${sql.param(ids)}::uuid[], ${sql.param(seqs)}::bigint[],
                ${sql.param(prevs)}::bytea[], ${sql.param(hashes)}::bytea[])
                AS v(id, seq, prev, hash)
              WHERE e.id = v.id AND e.seq IS NULL`),
          );
          if (rowCount !== pending.length) {
            throw new DbError("DATABASE_ERROR", "Audit events changed while they were being chained");
          }
          await withMetrics("update", "audit_chain", () => tx.update(auditChain).set({ seq, hash }));
          return pending.length;
        },
        { tx: options.tx },
      );
      chained += linked;
      if (linked < batchSize) return chained;
    }
  },
);

function missingHead(): never {
  throw new DbError("DATABASE_ERROR", "The audit chain's head row is missing");
}

export interface VerifyResult {
  /** The chain holds (events not chained yet are not judged: see `pending`). */
  ok: boolean;
  /** Chained rows checked. */
  checked: number;
  /** Events recorded but not chained yet, and when the oldest of them happened. */
  pending: number;
  oldestPendingAt: Date | null;
  /**
   * The first place the chain breaks, and why. `id` is the row's (absent when rows are missing at the end:
   * `seq` is then the first missing one).
   */
  broken?: {
    id?: string;
    seq: number;
    reason: "content changed" | "previous row missing or changed" | "newest rows missing";
  };
}

/**
 * Walks the chain in seq order, in batches, in one snapshot, and reports the first row whose hash does not
 * match its content, or whose previous hash is not the hash of the row before it (a row edited, inserted or
 * deleted). The oldest row must follow the point retention pruned to, and the newest must be the chain head's,
 * so rows deleted at either end show too. Events not chained yet are counted, not judged.
 * @throws DbError VALIDATION_FAILED (bad batch size).
 * @example const { ok, broken, pending } = await AuditService.verify();
 */
export const verify = defineService(
  { name: "audit.verify", table: TABLE, arity: 1 },
  async (
    { options }: Call<ServiceOptions>,
    payload: { batchSize?: number | undefined } = {},
  ): Promise<VerifyResult> => {
    const { batchSize } = validate(
      z.strictObject({ batchSize: z.number().int().min(1).max(10_000).default(1000) }),
      payload,
    );
    return await transaction(
      async (tx) => {
        const [head] = await withMetrics("select", "audit_chain", () => tx.select().from(auditChain));
        if (!head) missingHead();
        const [pending] = await withMetrics("select", TABLE, () =>
          tx
            .select({
              count: sql<number>`count(*)::int`,
              oldest: sql<Date | null>`min(${auditEvents.occurredAt})`,
            })
            .from(auditEvents)
            .where(isNull(auditEvents.seq)),
        );
        const oldest = pending?.oldest ?? null;
        const unchained = {
          pending: pending?.count ?? 0,
          oldestPendingAt: oldest === null ? null : new Date(oldest),
        };
        return { ...(await walk(tx, head, batchSize)), ...unchained };
      },
      { tx: options.tx, isolationLevel: "repeatable read", accessMode: "read only" },
    );
  },
);

type Walked = Omit<VerifyResult, "pending" | "oldestPendingAt">;

async function walk(tx: DatabaseOrTransaction, head: AuditChainHead, batchSize: number): Promise<Walked> {
  let previous = { seq: head.prunedSeq, hash: head.prunedHash };
  let checked = 0;
  for (;;) {
    const rows = await withMetrics("select", TABLE, () =>
      tx
        .select()
        .from(auditEvents)
        .where(sql`${auditEvents.seq} > ${previous.seq}`)
        .orderBy(auditEvents.seq)
        .limit(batchSize),
    );
    for (const row of rows) {
      checked++;
      const seq = row.seq as number;
      if (seq !== previous.seq + 1 || !row.prevHash?.equals(previous.hash)) {
        return { ok: false, checked, broken: { id: row.id, seq, reason: "previous row missing or changed" } };
      }
      const hash = chainHash(previous.hash, { ...row, seq });
      if (!row.hash?.equals(hash)) {
        return { ok: false, checked, broken: { id: row.id, seq, reason: "content changed" } };
      }
      previous = { seq, hash };
    }
    if (rows.length < batchSize) break;
  }
  if (previous.seq !== head.seq || !previous.hash.equals(head.hash)) {
    return { ok: false, checked, broken: { seq: previous.seq + 1, reason: "newest rows missing" } };
  }
  return { ok: true, checked };
}

/**
 * Retention: deletes the oldest chained events up to the first one at or after `before`, in batches of
 * `batchSize` (each its own short transaction, or all in `options.tx`), always a prefix of the chain, and moves
 * the head's pruned point so the rest stays verifiable. Events not chained yet wait for chain(). Returns how
 * many rows were deleted.
 * @throws DbError VALIDATION_FAILED.
 * @example await AuditService.prune({ before: new Date(Date.now() - 365 * 86_400_000) });
 */
export const prune = defineService(
  { name: "audit.prune", table: TABLE, arity: 1 },
  async (
    { options }: Call<ServiceOptions>,
    payload: { before: Date; batchSize?: number | undefined },
  ): Promise<number> => {
    const { before, batchSize } = validate(
      z.strictObject({ before: z.date(), batchSize: z.number().int().min(1).max(10_000).default(1000) }),
      payload,
    );
    let deleted = 0;
    for (;;) {
      const removed = await transaction(
        async (tx) => {
          // The head is locked first (a chainer waits a moment), then the oldest rows read in seq order; the
          // prefix older than `before` goes, up to the first newer row even if an older one follows it.
          const [head] = await withMetrics("select", "audit_chain", () =>
            tx.select().from(auditChain).for("update"),
          );
          if (!head) missingHead();
          const oldest = await withMetrics("select", TABLE, () =>
            tx
              .select({ seq: auditEvents.seq, hash: auditEvents.hash, occurredAt: auditEvents.occurredAt })
              .from(auditEvents)
              .where(sql`${auditEvents.seq} > ${head.prunedSeq}`)
              .orderBy(auditEvents.seq)
              .limit(batchSize),
          );
          const cut = oldest.findIndex((row) => row.occurredAt >= before);
          const doomed = cut === -1 ? oldest : oldest.slice(0, cut);
          const last = doomed.at(-1);
          if (!last?.seq || !last.hash) return 0;
          const { seq: lastSeq, hash: lastHash } = last;
          await withMetrics("delete", TABLE, () =>
            tx.delete(auditEvents).where(sql`${auditEvents.seq} <= ${lastSeq}`),
          );
          await withMetrics("update", "audit_chain", () =>
            tx.update(auditChain).set({ prunedSeq: lastSeq, prunedHash: lastHash }),
          );
          return doomed.length;
        },
        { tx: options.tx },
      );
      deleted += removed;
      if (removed < batchSize) return deleted;
    }
  },
);

const listInput = z.strictObject({
  /** Events about this user or done by them. */
  userId: idSchema.optional(),
  /** Only events about this user (a user's own security events). */
  subjectUserId: idSchema.optional(),
  actions: z.array(z.enum(AUDIT_ACTIONS)).max(AUDIT_ACTIONS.length).optional(),
  from: z.date().optional(),
  to: z.date().optional(),
  /** Only events before this one (the previous page's nextCursor, an event id). */
  before: idSchema.optional(),
  limit: z.number().int().min(1).max(1000).default(50),
});
export type ListAuditInput = z.input<typeof listInput>;

/** An event as readers get it: everything but the chain's hashes. */
export type AuditEventView = Omit<AuditEvent, "prevHash" | "hash">;

const { prevHash: _prevHash, hash: _hash, ...viewColumns } = getTableColumns(auditEvents);

/**
 * Events newest first (by id, a UUIDv7: time order), chained or not, filtered, one page (keyset: pass
 * nextCursor as `before`). The user filters use the (subject_user_id, id) and (actor_user_id, id) indexes.
 * @throws DbError VALIDATION_FAILED.
 * @example const { events, nextCursor } = await AuditService.list({ subjectUserId: user.id, limit: 20 });
 */
export const list = defineService(
  { name: "audit.list", table: TABLE, arity: 1 },
  async (
    { handle }: Call<ServiceOptions>,
    payload: ListAuditInput,
  ): Promise<{ events: AuditEventView[]; nextCursor: string | null }> => {
    const input = validate(listInput, payload);
    const where: (SQL | undefined)[] = [
      input.userId
        ? or(eq(auditEvents.subjectUserId, input.userId), eq(auditEvents.actorUserId, input.userId))
        : undefined,
      input.subjectUserId ? eq(auditEvents.subjectUserId, input.subjectUserId) : undefined,
      input.actions ? inArray(auditEvents.action, input.actions) : undefined,
      input.from ? gte(auditEvents.occurredAt, input.from) : undefined,
      input.to ? lte(auditEvents.occurredAt, input.to) : undefined,
      input.before ? lt(auditEvents.id, input.before) : undefined,
    ];
    const rows = await withMetrics("select", TABLE, () =>
      handle
        .select(viewColumns)
        .from(auditEvents)
        .where(and(...where))
        .orderBy(desc(auditEvents.id))
        .limit(input.limit + 1),
    );
    const events = rows.slice(0, input.limit) as AuditEventView[];
    const more = rows.length > input.limit;
    return { events, nextCursor: more ? (events.at(-1)?.id ?? null) : null };
  },
);
