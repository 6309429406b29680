// What every service shares: the options object, input validation, the public user columns and batched cleanup.
import { getTableColumns } from "drizzle-orm";
import { z } from "zod";
import type { DatabaseOrTransaction } from "../connection.ts";
import { DbError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { withMetrics } from "../metrics.ts";
import { type User, users } from "../schema/index.ts";

/** A user as callers see it: everything but the password hash and the internal search vector. */
export type PublicUser = Omit<User, "passwordHash" | "searchVector">;

/** The columns of PublicUser, for selects and RETURNING clauses in every service that returns a user. */
const { passwordHash: _passwordHash, searchVector: _searchVector, ...userColumns } = getTableColumns(users);
export const publicUserColumns = userColumns;

/** PostgreSQL text cannot hold NUL: strings containing it are rejected as input, not left to fail in SQL. */
export const noNul = (value: string): boolean => !value.includes("\u0000");

const LONE_SURROGATE = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/;

/**
 * Text PostgreSQL stores exactly as given: no NUL, and no unpaired surrogate (the driver sends U+FFFD for
 * one, so the stored text, and what a lookup by it matches, would differ from what the caller gave).
 */
export const storable = (value: string): boolean => noNul(value) && !LONE_SURROGATE.test(value);

/**
 * The one id schema of service input: any 8-4-4-4-12 hex UUID (what PostgreSQL's uuid type accepts, whatever
 * its version bits), lower-cased.
 */
export const idSchema = z.guid("must be a UUID").transform((value) => value.toLowerCase());

const NOT_FOUND_MESSAGES: Record<string, string> = {
  users: "User not found",
  sessions: "Session not found",
  accounts: "Account not found",
  one_time_tokens: "Token not found",
};

/** The one NOT_FOUND: a row of `table` that does not exist (or is soft-deleted, or not the caller's). */
export function notFound(table: string, cause?: unknown): DbError<"NOT_FOUND"> {
  return new DbError("NOT_FOUND", NOT_FOUND_MESSAGES[table] ?? "Not found", {
    table,
    ...(cause === undefined ? {} : { cause }),
  });
}

/**
 * The last argument of every service function: `fn(input, logger, { tx })` or `fn(input, { tx, logger })`.
 */
export interface ServiceOptions {
  /** Run on this transaction (or database) instead of the pool; the call then commits or rolls back with it. */
  tx?: DatabaseOrTransaction | undefined;
  /** The logger, when it is not passed as the argument before the options. */
  logger?: Logger | undefined;
}

/** For reads of soft-deleted rows. */
export interface ReadOptions extends ServiceOptions {
  /** Also return soft-deleted rows. Default false. */
  includeDeleted?: boolean;
}

/**
 * Validates input with a zod schema.
 * @throws DbError VALIDATION_FAILED with one message per bad field; nothing has been written.
 */
export function validate<S extends z.ZodType>(schema: S, input: unknown): z.output<S> {
  const parsed = schema.safeParse(input);
  if (parsed.success) return parsed.data;
  const details: Record<string, string> = {};
  for (const issue of parsed.error.issues) {
    const key = issue.path.length > 0 ? issue.path.join(".") : "input";
    details[key] ??= issue.message;
  }
  throw new DbError(
    "VALIDATION_FAILED",
    `Invalid input: ${Object.entries(details)
      .map(([k, v]) => `${k}: ${v}`)
      .join("; ")}`,
    {
      details,
    },
  );
}

/**
 * The one cleanup-in-batches: runs `deleteBatch` (one DELETE of at most `batchSize` rows, returning how many
 * it removed; counted as operation "cleanup") until a batch comes back short or `maxBatches` ran, audits the
 * total, and returns it. Each batch is its own short statement, so
 * locks are held briefly; with FOR UPDATE SKIP LOCKED inside, concurrent cleaners take disjoint rows, and a
 * short batch means nothing unlocked is left (locked rows are the other cleaner's to delete).
 */
export interface CleanupBatches {
  /** The table the batches delete from: the metric label and the log line name it. */
  table: string;
  batchSize: number;
  maxBatches: number;
  logger: Logger;
  /** The audit line written when anything was deleted. */
  message: string;
  /** More fields for that line (ids and cut-offs only). */
  fields?: Record<string, unknown>;
}

export async function deleteInBatches(
  spec: CleanupBatches,
  deleteBatch: () => Promise<number>,
): Promise<number> {
  let total = 0;
  for (let batch = 0; batch < spec.maxBatches; batch++) {
    const deleted = await withMetrics("cleanup", spec.table, deleteBatch);
    total += deleted;
    if (deleted < spec.batchSize) break;
  }
  // Deleting rows is a state change: one audit line per call, whatever the table.
  if (total > 0) spec.logger.audit({ table: spec.table, deleted: total, ...spec.fields }, spec.message);
  return total;
}
