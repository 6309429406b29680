// AuditService: the security events of the audit trail (schema/audit-events.ts). record() appends one event,
// in the caller's transaction when given one (a change that rolls back leaves no event); verify() walks the
// chain and reports the first row where it breaks.
//
// The chain: writers take a transaction-scoped advisory lock, read the last row, and insert the next one with
// seq + 1 and hash = SHA-256(previous hash || canonical content). The lock is held until the writer's
// transaction ends, so concurrent writers append one after the other and never fork the chain; record() is
// meant to be the last statement of its transaction, so the lock is held briefly.
import { createHash } from "node:crypto";
import { asc, desc, gt } from "drizzle-orm";
import { uuidv7 } from "uuidv7";
import { z } from "zod";
import { now } from "../clock.ts";
import { transaction } from "../connection.ts";
import { isWellFormedSecret } from "../crypto/secrets.ts";
import { DbError } from "../errors.ts";
import { acquireAdvisoryLock } from "../locks.ts";
import { withMetrics } from "../metrics.ts";
import { AUDIT_ACTIONS, AUDIT_ACTORS, type AuditEvent, auditEvents } from "../schema/audit-events.ts";
import { idSchema, noNul, type ServiceOptions, validate } from "./common.ts";
import { type Call, defineService } from "./define.ts";

export type { AuditAction, AuditActor, AuditEvent } from "../schema/audit-events.ts";

const TABLE = "audit_events";
const CHAIN_LOCK = "audit_events:chain";
/** The previous hash of the first row ever written. */
const GENESIS = Buffer.alloc(32);
/** Keys that name a secret: such a detail is refused whatever its value. */
const SECRET_KEY = /pass(word)?|secret|token|cookie|authorization|api[_-]?key|private|credential|hash/i;

const text = (max: number) => z.string().max(max).refine(noNul, "must not contain NUL");
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

type ChainedContent = Pick<
  AuditEvent,
  | "id"
  | "seq"
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

/** What a row's hash covers, as one text. */
function contentOf(row: ChainedContent): string {
  return canonicalJson([
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
}

function chainHash(previous: Buffer, content: string): Buffer {
  return createHash("sha256").update(previous).update(content, "utf8").digest();
}

/** Refuses details that name or carry a secret (a token in our format, a password, a key). */
function assertNoSecrets(details: unknown, path = "details"): void {
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
      if (SECRET_KEY.test(key) && !/Id$/.test(key)) {
        throw new DbError("VALIDATION_FAILED", `Invalid input: ${path}.${key}: names a secret`, {
          details: { [`${path}.${key}`]: "names a secret" },
        });
      }
      assertNoSecrets(item, `${path}.${key}`);
    }
  }
}

/**
 * Appends one event to the trail, in `options.tx` when given (it then commits or rolls back with the change it
 * records). Details hold ids and facts: a key naming a secret or a value shaped like one of our tokens is
 * refused.
 * @throws DbError VALIDATION_FAILED (unknown action or actor, bad ids, a secret in details).
 * @example await AuditService.record({ action: "password_changed", actorType: "user", actorUserId: id, subjectUserId: id }, log, { tx });
 */
export const record = defineService(
  { name: "audit.record", table: TABLE, arity: 1, logFields: ([payload]) => ({ action: payload?.action }) },
  async ({ options }: Call<ServiceOptions>, payload: AuditEventInput): Promise<AuditEvent> => {
    const input = validate(recordInput, payload);
    assertNoSecrets(input.details);
    return await transaction(
      async (tx) => {
        await acquireAdvisoryLock(tx, CHAIN_LOCK);
        const [last] = await withMetrics("select", TABLE, () =>
          tx
            .select({ seq: auditEvents.seq, hash: auditEvents.hash })
            .from(auditEvents)
            .orderBy(desc(auditEvents.seq))
            .limit(1),
        );
        const prevHash = last?.hash ?? GENESIS;
        // The details as jsonb will give them back (keys reordered, nothing else): parsed from canonical text.
        const details = JSON.parse(canonicalJson(input.details)) as Record<string, unknown>;
        const content: ChainedContent = {
          id: uuidv7(),
          seq: (last?.seq ?? 0) + 1,
          occurredAt: new Date(now().getTime()),
          actorType: input.actorType,
          actorUserId: input.actorUserId?.toLowerCase() ?? null,
          subjectUserId: input.subjectUserId?.toLowerCase() ?? null,
          action: input.action,
          ipAddress: input.ipAddress ?? null,
          userAgent: input.userAgent ?? null,
          requestId: input.requestId ?? null,
          details,
        };
        const hash = chainHash(prevHash, contentOf(content));
        const [row] = await withMetrics("insert", TABLE, () =>
          tx
            .insert(auditEvents)
            .values({ ...content, prevHash, hash })
            .returning(),
        );
        if (!row) throw new DbError("DATABASE_ERROR", "The audit event was not written");
        return row;
      },
      { tx: options.tx },
    );
  },
);

export interface VerifyResult {
  ok: boolean;
  /** Rows checked. */
  checked: number;
  /** The first row where the chain breaks, and why. */
  broken?: { id: string; seq: number; reason: "content changed" | "previous row missing or changed" };
}

/**
 * Walks the chain in seq order, in batches, and reports the first row whose hash does not match its content,
 * or whose previous hash is not the hash of the row before it (a row edited, inserted or deleted). The first
 * row kept is trusted as the anchor (rows before it may have been removed by retention).
 * @throws DbError VALIDATION_FAILED (bad batch size).
 * @example const { ok, broken } = await AuditService.verify();
 */
export const verify = defineService(
  { name: "audit.verify", table: TABLE, arity: 1 },
  async (
    { handle }: Call<ServiceOptions>,
    payload: { batchSize?: number | undefined } = {},
  ): Promise<VerifyResult> => {
    const { batchSize } = validate(
      z.strictObject({ batchSize: z.number().int().min(1).max(10_000).default(1000) }),
      payload,
    );
    let previous: { seq: number; hash: Buffer } | undefined;
    let checked = 0;
    for (;;) {
      const rows = await withMetrics("select", TABLE, () =>
        handle
          .select()
          .from(auditEvents)
          .where(previous ? gt(auditEvents.seq, previous.seq) : undefined)
          .orderBy(asc(auditEvents.seq))
          .limit(batchSize),
      );
      for (const row of rows) {
        checked++;
        if (previous && (row.seq !== previous.seq + 1 || !row.prevHash.equals(previous.hash))) {
          return {
            ok: false,
            checked,
            broken: { id: row.id, seq: row.seq, reason: "previous row missing or changed" },
          };
        }
        if (!chainHash(row.prevHash, contentOf(row)).equals(row.hash)) {
          return { ok: false, checked, broken: { id: row.id, seq: row.seq, reason: "content changed" } };
        }
        previous = { seq: row.seq, hash: row.hash };
      }
      if (rows.length < batchSize) return { ok: true, checked };
    }
  },
);
