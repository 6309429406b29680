// Typed errors for the data layer: every failure leaves @repo/db as a DbError with a stable UPPER_SNAKE code,
// never as a raw PostgreSQL error or SQLSTATE. The API maps these codes to HTTP statuses in one place.

/**
 * What a failure means for whoever made the call; every code belongs to exactly one kind, declared below:
 * - `rejected`: the input or the state of the data refuses the call (bad input, not found, taken, wrong
 *   password). The caller's business: logged at warn, answered with the code itself.
 * - `unavailable`: the database is busy or away, or a concurrent change conflicted. Retrying the same call
 *   later can succeed (`retryable`): logged at error, answered 503 with the code.
 * - `internal`: a bug or a broken deployment (a constraint the services should have prevented, bad
 *   configuration, a failed migration). Logged at error with its cause, never shown to a client.
 */
export type ErrorKind = "rejected" | "unavailable" | "internal";

/** Every code this package can raise and its kind. Adding a code: one entry here (and its HTTP status). */
export const ERROR_CODES = {
  // Translated from PostgreSQL / the driver.
  UNIQUE_VIOLATION: { kind: "internal" },
  FOREIGN_KEY_VIOLATION: { kind: "internal" },
  NOT_NULL_VIOLATION: { kind: "internal" },
  CHECK_VIOLATION: { kind: "internal" },
  INVALID_INPUT: { kind: "internal" },
  SERIALIZATION_FAILURE: { kind: "unavailable" },
  DEADLOCK_DETECTED: { kind: "unavailable" },
  QUERY_TIMEOUT: { kind: "unavailable" },
  TOO_MANY_CONNECTIONS: { kind: "unavailable" },
  POOL_EXHAUSTED: { kind: "unavailable" },
  DATABASE_UNAVAILABLE: { kind: "unavailable" },
  DATABASE_ERROR: { kind: "internal" },
  // Raised by this package itself.
  CONFIG_INVALID: { kind: "internal" },
  NOT_INITIALIZED: { kind: "internal" },
  MIGRATION_FAILED: { kind: "internal" },
  /** Another process holds the lock (migrations, a maintenance job): try again later. */
  LOCK_NOT_ACQUIRED: { kind: "unavailable" },
  VALIDATION_FAILED: { kind: "rejected" },
  NOT_FOUND: { kind: "rejected" },
  EMAIL_TAKEN: { kind: "rejected" },
  PHONE_TAKEN: { kind: "rejected" },
  ACCOUNT_ALREADY_LINKED: { kind: "rejected" },
  /** Unlinking would leave the user no way to sign in (no password, no proven address, no other provider). */
  LAST_SIGN_IN_METHOD: { kind: "rejected" },
  /** Revoking the role would leave no live admin. */
  LAST_ADMIN: { kind: "rejected" },
  INVALID_CREDENTIALS: { kind: "rejected" },
  TOKEN_INVALID: { kind: "rejected" },
  /** A new password is too common, contains the email's local part, or appears in a breach corpus. */
  PASSWORD_TOO_WEAK: { kind: "rejected" },
  /** The password matched, but the account's email address is not proven yet (it grants nothing). */
  EMAIL_NOT_VERIFIED: { kind: "rejected" },
  DECRYPTION_FAILED: { kind: "internal" },
  UNKNOWN_ENCRYPTION_KEY: { kind: "internal" },
} as const satisfies Record<string, { kind: ErrorKind }>;

export type ErrorCode = keyof typeof ERROR_CODES;

/** The codes of one kind, as a type: `CodeOfKind<"unavailable">` is "QUERY_TIMEOUT" | "POOL_EXHAUSTED" | .... */
export type CodeOfKind<K extends ErrorKind> = {
  [C in ErrorCode]: (typeof ERROR_CODES)[C]["kind"] extends K ? C : never;
}[ErrorCode];

/** The kind of a code; `internal` for anything that is not one of ours. */
export function errorKind(code: string): ErrorKind {
  return Object.hasOwn(ERROR_CODES, code) ? ERROR_CODES[code as ErrorCode].kind : "internal";
}

/** The codes of one kind, as a list (for tables and tests). */
export function codesOfKind<K extends ErrorKind>(kind: K): CodeOfKind<K>[] {
  return (Object.keys(ERROR_CODES) as ErrorCode[]).filter(
    (code) => ERROR_CODES[code].kind === kind,
  ) as CodeOfKind<K>[];
}

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
  readonly kind: ErrorKind;
  /** Retrying the same call later can succeed (the kind is `unavailable`). */
  readonly retryable: boolean;
  readonly constraint?: string;
  readonly table?: string;
  readonly details?: Record<string, string>;

  constructor(code: C, message: string, options: DbErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.kind = ERROR_CODES[code].kind;
    this.retryable = this.kind === "unavailable";
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
