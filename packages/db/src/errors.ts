// Typed errors for the data layer: every failure leaves @repo/db as a DbError with a stable UPPER_SNAKE code,
// never as a raw PostgreSQL error or SQLSTATE. The API maps these codes to HTTP statuses in one place.

/** Every code this package can raise, with whether retrying the same call can succeed. */
export const ERROR_CODES = {
  // Translated from PostgreSQL / the driver.
  UNIQUE_VIOLATION: { retryable: false },
  FOREIGN_KEY_VIOLATION: { retryable: false },
  NOT_NULL_VIOLATION: { retryable: false },
  CHECK_VIOLATION: { retryable: false },
  INVALID_INPUT: { retryable: false },
  SERIALIZATION_FAILURE: { retryable: true },
  DEADLOCK_DETECTED: { retryable: true },
  QUERY_TIMEOUT: { retryable: true },
  TOO_MANY_CONNECTIONS: { retryable: true },
  POOL_EXHAUSTED: { retryable: true },
  DATABASE_UNAVAILABLE: { retryable: true },
  DATABASE_ERROR: { retryable: false },
  // Raised by this package itself.
  CONFIG_INVALID: { retryable: false },
  NOT_INITIALIZED: { retryable: false },
  MIGRATION_FAILED: { retryable: false },
  LOCK_NOT_ACQUIRED: { retryable: true },
  VALIDATION_FAILED: { retryable: false },
  NOT_FOUND: { retryable: false },
  EMAIL_TAKEN: { retryable: false },
  PHONE_TAKEN: { retryable: false },
  ACCOUNT_ALREADY_LINKED: { retryable: false },
  INVALID_CREDENTIALS: { retryable: false },
  TOKEN_INVALID: { retryable: false },
  /** A new password is too common, contains the email's local part, or appears in a breach corpus. */
  PASSWORD_TOO_WEAK: { retryable: false },
  /** The password matched, but the account's email address is not proven yet (it grants nothing). */
  EMAIL_NOT_VERIFIED: { retryable: false },
  DECRYPTION_FAILED: { retryable: false },
  UNKNOWN_ENCRYPTION_KEY: { retryable: false },
} as const satisfies Record<string, { retryable: boolean }>;

export type ErrorCode = keyof typeof ERROR_CODES;

export interface DbErrorOptions {
  cause?: unknown;
  /** The violated constraint, for integrity errors. */
  constraint?: string;
  /** The table involved, when known. */
  table?: string;
  /** Field-level details for validation errors (safe to show a caller). */
  details?: Record<string, string>;
}

/** The one error class of @repo/db. Switch on `code`, never on `message`. */
export class DbError<C extends ErrorCode = ErrorCode> extends Error {
  override readonly name = "DbError";
  readonly code: C;
  readonly retryable: boolean;
  readonly constraint?: string;
  readonly table?: string;
  readonly details?: Record<string, string>;

  constructor(code: C, message: string, options: DbErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.retryable = ERROR_CODES[code].retryable;
    if (options.constraint !== undefined) this.constraint = options.constraint;
    if (options.table !== undefined) this.table = options.table;
    if (options.details !== undefined) this.details = options.details;
  }
}

export function isDbError<C extends ErrorCode>(error: unknown, code?: C): error is DbError<C> {
  return error instanceof DbError && (code === undefined || error.code === code);
}

/** The fields of a node-postgres `DatabaseError` that we read; found directly or on `DrizzleQueryError.cause`. */
interface PgErrorLike {
  code?: unknown;
  constraint?: unknown;
  table?: unknown;
  severity?: unknown;
  message?: unknown;
}

function findPgError(error: unknown): PgErrorLike | undefined {
  let current: unknown = error;
  for (let depth = 0; depth < 5 && current && typeof current === "object"; depth++) {
    const candidate = current as PgErrorLike & { cause?: unknown };
    if (typeof candidate.code === "string" && typeof candidate.severity === "string") return candidate;
    current = candidate.cause;
  }
  return undefined;
}

function findErrnoCode(error: unknown): string | undefined {
  let current: unknown = error;
  for (let depth = 0; depth < 5 && current && typeof current === "object"; depth++) {
    const candidate = current as { code?: unknown; cause?: unknown; errors?: unknown };
    if (typeof candidate.code === "string" && /^E[A-Z_]+$/.test(candidate.code)) return candidate.code;
    // Node reports a failed dual-stack connect as an AggregateError of per-address errors.
    if (Array.isArray(candidate.errors) && candidate.errors.length > 0) current = candidate.errors[0];
    else current = candidate.cause;
  }
  return undefined;
}

function messageOf(error: unknown): string {
  let current: unknown = error;
  const parts: string[] = [];
  for (let depth = 0; depth < 5 && current && typeof current === "object"; depth++) {
    const candidate = current as { message?: unknown; cause?: unknown };
    if (typeof candidate.message === "string") parts.push(candidate.message);
    current = candidate.cause;
  }
  return parts.join(" | ");
}

// Messages node-postgres and pg-pool produce when the connection itself is gone or cannot be had.
const CONNECTION_LOST = [
  "Connection terminated",
  "connection terminated",
  "Client has encountered a connection error",
  "Client was closed and is not queryable",
  "Cannot use a pool after calling end",
  "the database system is starting up",
  "the database system is shutting down",
];

/**
 * Turns anything thrown while talking to PostgreSQL into a DbError. Already-typed errors pass through.
 * The message never contains SQL parameters or connection strings.
 */
export function toDbError(error: unknown, table?: string): DbError {
  if (error instanceof DbError) return error;
  const withTable = (options: DbErrorOptions): DbErrorOptions =>
    table === undefined ? options : { table, ...options };
  const pg = findPgError(error);
  if (pg) {
    const code = pg.code as string;
    const constraint = typeof pg.constraint === "string" ? pg.constraint : undefined;
    const pgTable = typeof pg.table === "string" ? pg.table : table;
    const opts: DbErrorOptions = { cause: error };
    if (constraint !== undefined) opts.constraint = constraint;
    if (pgTable !== undefined) opts.table = pgTable;
    switch (code) {
      case "23505":
        return new DbError(
          "UNIQUE_VIOLATION",
          `Duplicate value violates ${constraint ?? "a unique constraint"}`,
          opts,
        );
      case "23503":
        return new DbError(
          "FOREIGN_KEY_VIOLATION",
          `Referenced row does not exist (${constraint ?? "foreign key"})`,
          opts,
        );
      case "23502":
        return new DbError("NOT_NULL_VIOLATION", "A required value is missing", opts);
      case "23514":
        return new DbError(
          "CHECK_VIOLATION",
          `Value rejected by ${constraint ?? "a check constraint"}`,
          opts,
        );
      case "40001":
        return new DbError("SERIALIZATION_FAILURE", "Concurrent update conflict; retry the operation", opts);
      case "40P01":
        return new DbError("DEADLOCK_DETECTED", "Deadlock detected; retry the operation", opts);
      case "57014":
        return new DbError("QUERY_TIMEOUT", "The query was cancelled after exceeding its time limit", opts);
      case "53300":
        return new DbError("TOO_MANY_CONNECTIONS", "The database has no free connection slots", opts);
      case "57P01":
      case "57P02":
      case "57P03":
        return new DbError("DATABASE_UNAVAILABLE", "The database is shutting down or starting up", opts);
      default:
        // Class 22: data exceptions (bad input syntax, out of range, invalid encoding, ...).
        if (code.startsWith("22")) return new DbError("INVALID_INPUT", "A value has an invalid format", opts);
        // Class 08: connection exceptions.
        if (code.startsWith("08"))
          return new DbError("DATABASE_UNAVAILABLE", "The database connection failed", opts);
        return new DbError("DATABASE_ERROR", `Database error (SQLSTATE ${code})`, opts);
    }
  }
  const errno = findErrnoCode(error);
  if (
    errno &&
    ["ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENOTFOUND", "EHOSTUNREACH", "EPIPE", "EAI_AGAIN"].includes(
      errno,
    )
  ) {
    return new DbError(
      "DATABASE_UNAVAILABLE",
      `The database cannot be reached (${errno})`,
      withTable({ cause: error }),
    );
  }
  const message = messageOf(error);
  if (message.includes("timeout exceeded when trying to connect")) {
    return new DbError(
      "POOL_EXHAUSTED",
      "No database connection became free within the connection timeout",
      withTable({ cause: error }),
    );
  }
  if (message.includes("Query read timeout")) {
    return new DbError(
      "QUERY_TIMEOUT",
      "The query did not answer within its time limit",
      withTable({ cause: error }),
    );
  }
  if (CONNECTION_LOST.some((fragment) => message.includes(fragment))) {
    return new DbError(
      "DATABASE_UNAVAILABLE",
      "The database connection was lost",
      withTable({ cause: error }),
    );
  }
  return new DbError("DATABASE_ERROR", "Unexpected database error", withTable({ cause: error }));
}

/** True when the error means the connection it happened on can no longer be trusted. */
export function isConnectionLevelError(error: unknown): boolean {
  const pg = findPgError(error);
  if (pg) {
    const code = pg.code as string;
    return code.startsWith("08") || code.startsWith("57P") || code === "XX000";
  }
  return true;
}
