// The audit trail as the API writes it: every event carries who acted (the signed-in user, the admin key, or
// an anonymous client), the client's address, user agent and request id. Changes record their event in
// their own transaction (audited(): a change that rolls back leaves none); events that change nothing
// (a failed sign-in, the admin key's use) are written after the answer, off its path.
import {
  type AuditAction,
  type AuditEventInput,
  type AuditFor,
  AuditService,
  type Transaction,
  transaction,
} from "@repo/db";
import type { Context } from "hono";
import type { AppEnv } from "./context.ts";
import { clientAddress } from "./http.ts";

export interface EventFields {
  /** Whom the event is about. */
  subject?: string | null | undefined;
  /** Ids and facts, never a secret (AuditService refuses secret-named keys and token-shaped values). */
  details?: Record<string, unknown> | undefined;
  /**
   * Who acted, when not the request's caller: `subject` when the request itself proves who it is (a sign-in,
   * a mailed link), `anonymous` for what an unproven client asked for (a sign-up, a failed sign-in).
   */
  actor?: "subject" | "anonymous" | undefined;
}

/** The event `action` of this request. */
export function auditEvent(
  c: Context<AppEnv>,
  action: AuditAction,
  fields: EventFields = {},
): AuditEventInput {
  const subject = fields.subject ?? null;
  const address = clientAddress(c);
  const admin = c.get("admin");
  const user = c.get("user");
  const actor: Pick<AuditEventInput, "actorType" | "actorUserId"> =
    fields.actor === "subject" && subject
      ? { actorType: "user", actorUserId: subject }
      : fields.actor === "anonymous"
        ? { actorType: "anonymous" }
        : admin?.via === "key"
          ? { actorType: "admin_key" }
          : user
            ? { actorType: "user", actorUserId: user.id }
            : { actorType: "anonymous" };
  return {
    action,
    ...actor,
    subjectUserId: subject,
    ipAddress: address === "unknown" ? null : address.slice(0, 64),
    userAgent: c.req.header("user-agent")?.slice(0, 1024) ?? null,
    requestId: c.get("requestId") ?? null,
    ...(fields.details ? { details: fields.details } : {}),
  };
}

export type RecordEvent = (action: AuditAction, fields?: EventFields) => Promise<void>;

/**
 * Runs `fn` in a transaction whose events `record` writes in it: nothing is recorded if the change rolls back.
 * With `{ userId }`, the transaction is in that user's scope (row-level security: the user routes' changes).
 */
export async function audited<T>(
  c: Context<AppEnv>,
  fn: (tx: Transaction, record: RecordEvent) => Promise<T>,
  scope: { userId?: string } = {},
): Promise<T> {
  return await transaction(
    async (tx) =>
      fn(tx, async (action, fields) => {
        await AuditService.record(auditEvent(c, action, fields), c.get("log"), { tx });
      }),
    scope,
  );
}

/**
 * The `audit` option of a service that opens its own transaction (UsersService.signIn, useEmailLink,
 * AccountsService.signInWithProvider): the events it records from its result, in that transaction.
 */
export function auditFor<R>(
  c: Context<AppEnv>,
  events: (result: R) => ReadonlyArray<readonly [AuditAction, EventFields] | false | undefined>,
): AuditFor<R> {
  return (result) =>
    events(result)
      .filter((entry): entry is readonly [AuditAction, EventFields] => Boolean(entry))
      .map(([action, fields]) => auditEvent(c, action, fields));
}

/**
 * Records an event after the answer (nothing to roll back with, nothing for the answer to wait for). `fields`
 * may be computed there too, off the answer's path (a lookup of whom a failed sign-in was aimed at).
 */
export function recordLater(
  c: Context<AppEnv>,
  action: AuditAction,
  fields: EventFields | (() => Promise<EventFields>),
): void {
  const log = c.get("log");
  c.get("deps").tasks.run(`audit:${action}`, log, async () => {
    const resolved = typeof fields === "function" ? await fields() : fields;
    await AuditService.record(auditEvent(c, action, resolved), log);
  });
}
