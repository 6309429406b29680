// Advisory locks for work that must run in one process at a time (maintenance rounds, one-off jobs).
// Transaction-scoped by default: the lock lives and dies with a transaction, so it also works behind a
// transaction-mode pooler, and a crashed holder can never leave it behind.
import { createHash } from "node:crypto";
import { sql } from "drizzle-orm";
import { type DatabaseOrTransaction, type Transaction, transaction } from "./connection.ts";
import { DbError } from "./errors.ts";
import { withMetrics } from "./metrics.ts";

/** A stable signed 64-bit lock key for a name (the first 8 bytes of its SHA-256), as a decimal string. */
export function advisoryLockKey(name: string): string {
  return createHash("sha256").update(name).digest().readBigInt64BE(0).toString();
}

export interface AdvisoryLockOptions {
  /** Join this transaction instead of opening one; the lock is released when it ends. */
  tx?: DatabaseOrTransaction;
  /**
   * `true` (default) waits for the lock, bounded by the statement timeout. `false` gives up at once and
   * throws LOCK_NOT_ACQUIRED, so a round already running elsewhere is skipped.
   */
  wait?: boolean;
}

/**
 * Runs `fn` inside a transaction holding a transaction-scoped advisory lock named `name`.
 * @throws DbError LOCK_NOT_ACQUIRED with `{ wait: false }` when another transaction holds it.
 * @example await withAdvisoryLock("cleanup:sessions", (tx) => SessionsService.cleanupExpired({}, { tx }));
 */
export async function withAdvisoryLock<T>(
  name: string,
  fn: (tx: Transaction) => Promise<T>,
  options: AdvisoryLockOptions = {},
): Promise<T> {
  const outcome = await locked(name, fn, options);
  if (!outcome.acquired)
    throw new DbError("LOCK_NOT_ACQUIRED", `The lock "${name}" is held by another process`);
  return outcome.result;
}

/**
 * Like `withAdvisoryLock(name, fn, { wait: false })`, but reports a busy lock as `{ acquired: false }`.
 * @example const round = await tryWithAdvisoryLock("maintenance", (tx) => cleanup(tx));
 */
export async function tryWithAdvisoryLock<T>(
  name: string,
  fn: (tx: Transaction) => Promise<T>,
  options: Omit<AdvisoryLockOptions, "wait"> = {},
): Promise<{ acquired: true; result: T } | { acquired: false }> {
  return await locked(name, fn, { ...options, wait: false });
}

/**
 * Waits for the transaction-scoped advisory lock `name` inside `tx` (released when `tx` ends): for work that
 * already runs in a transaction and must take turns with other transactions on the same name.
 * @example await acquireAdvisoryLock(tx, `user-email:${email}`);
 */
export async function acquireAdvisoryLock(tx: DatabaseOrTransaction, name: string): Promise<void> {
  await withMetrics("lock", "advisory", () =>
    tx.execute(sql`SELECT pg_advisory_xact_lock(${advisoryLockKey(name)}::bigint)`),
  );
}

async function locked<T>(
  name: string,
  fn: (tx: Transaction) => Promise<T>,
  options: AdvisoryLockOptions,
): Promise<{ acquired: true; result: T } | { acquired: false }> {
  const key = advisoryLockKey(name);
  return await transaction(
    async (tx) => {
      if (options.wait === false) {
        const rows = await withMetrics("lock", "advisory", () =>
          tx.execute<{ acquired: boolean }>(
            sql`SELECT pg_try_advisory_xact_lock(${key}::bigint) AS acquired`,
          ),
        );
        if (!rows.rows[0]?.acquired) return { acquired: false } as const;
      } else {
        await acquireAdvisoryLock(tx, name);
      }
      return { acquired: true, result: await fn(tx) } as const;
    },
    { tx: options.tx },
  );
}
