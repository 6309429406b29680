// What every service shares: the options object, input validation, the public user columns and batched cleanup.
import { getTableColumns } from "drizzle-orm";
import { z } from "zod";
import type { DatabaseOrTransaction } from "../connection.ts";
import { DbError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { type User, users } from "../schema/index.ts";

/** A user as callers see it: everything but the password hash and the internal search vector. */
export type PublicUser = Omit<User, "passwordHash" | "searchVector">;

/** The columns of PublicUser, for selects and RETURNING clauses in every service that returns a user. */
const { passwordHash: _passwordHash, searchVector: _searchVector, ...userColumns } = getTableColumns(users);
export const publicUserColumns = userColumns;

/** PostgreSQL text cannot hold NUL: strings containing it are rejected as input, not left to fail in SQL. */
export const noNul = (value: string): boolean => !value.includes("\u0000");

/** A UUID (any version) for ids in service input. */
export const uuidSchema = z.uuid();

/** NOT_FOUND for a user that does not exist or is soft-deleted. */
export function userNotFound(cause?: unknown): DbError<"NOT_FOUND"> {
  return new DbError("NOT_FOUND", "User not found", cause === undefined ? {} : { cause, table: "users" });
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
 * Runs `deleteBatch` (one DELETE of at most `batchSize` rows, returning how many it removed) until a batch
 * comes back short or `maxBatches` ran, and returns the total. Each batch is its own short statement, so
 * locks are held briefly; with FOR UPDATE SKIP LOCKED inside, concurrent cleaners take disjoint rows, and a
 * short batch means nothing unlocked is left (locked rows are the other cleaner's to delete).
 */
export async function deleteInBatches(
  batchSize: number,
  maxBatches: number,
  deleteBatch: () => Promise<number>,
): Promise<number> {
  let total = 0;
  for (let batch = 0; batch < maxBatches; batch++) {
    const deleted = await deleteBatch();
    total += deleted;
    if (deleted < batchSize) break;
  }
  return total;
}
