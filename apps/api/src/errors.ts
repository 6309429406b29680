// API error codes and the one table mapping them (and @repo/db's DbError codes) to HTTP statuses.
// Routes throw ApiError or let DbError through; app.onError turns either into `{ error: { code, message,
// requestId } }` and never shows a stack, SQL or internal detail.
import { type CodeOfKind, DbError, type ErrorCode, toDbError } from "@repo/db";
import { HTTPException } from "hono/http-exception";
import type { ContentfulStatusCode } from "hono/utils/http-status";

/** Every code the API answers with, its status and the message shown when the error carries none safe to show. */
export const API_ERRORS = {
  VALIDATION_FAILED: { status: 400, message: "The request is invalid" },
  INVALID_JSON: { status: 400, message: "The body is not valid JSON" },
  TOKEN_INVALID: { status: 400, message: "The link or token is invalid or expired" },
  PASSWORD_TOO_WEAK: { status: 400, message: "The password is too weak" },
  INVALID_CREDENTIALS: { status: 401, message: "Invalid email or password" },
  UNAUTHENTICATED: { status: 401, message: "Sign in first" },
  FORBIDDEN: { status: 403, message: "Not allowed" },
  REAUTHENTICATION_REQUIRED: {
    status: 403,
    message: "Confirm with your current password, or sign in again first (within 10 minutes)",
  },
  CSRF_REJECTED: { status: 403, message: "Cross-site request rejected" },
  NOT_FOUND: { status: 404, message: "Not found" },
  EMAIL_TAKEN: { status: 409, message: "The email address is already in use" },
  PHONE_TAKEN: { status: 409, message: "The phone number is already in use" },
  ACCOUNT_ALREADY_LINKED: { status: 409, message: "The account is already linked" },
  LAST_SIGN_IN_METHOD: {
    status: 409,
    message: "This is your last way to sign in: set a password or link another provider first",
  },
  LAST_ADMIN: { status: 409, message: "This is the last admin: grant the role to someone else first" },
  PAYLOAD_TOO_LARGE: { status: 413, message: "The body is too large" },
  UNSUPPORTED_MEDIA_TYPE: { status: 415, message: "Send application/json" },
  RATE_LIMITED: { status: 429, message: "Too many requests; retry later" },
  SIGN_IN_LINK_REQUIRED: {
    status: 429,
    message:
      "Too many failed sign-ins for this account: password sign-in is paused. Use a sign-in link (the account's address has been sent one) or retry later",
  },
  INTERNAL_ERROR: { status: 500, message: "Internal error" },
  SERVICE_UNAVAILABLE: { status: 503, message: "Temporarily unavailable; retry later" },
  PROVIDER_UNAVAILABLE: { status: 503, message: "The sign-in provider cannot be reached; retry later" },
  // The database is busy or away: retry. The code says which, so clients and dashboards can tell them apart.
  DATABASE_UNAVAILABLE: { status: 503, message: "The database is unavailable; retry later" },
  POOL_EXHAUSTED: { status: 503, message: "All database connections are busy; retry later" },
  TOO_MANY_CONNECTIONS: { status: 503, message: "The database has no free connections; retry later" },
  QUERY_TIMEOUT: { status: 503, message: "The database did not answer in time; retry later" },
  SERIALIZATION_FAILURE: { status: 503, message: "A concurrent change conflicted; retry" },
  DEADLOCK_DETECTED: { status: 503, message: "A concurrent change conflicted; retry" },
  LOCK_NOT_ACQUIRED: { status: 503, message: "Another process holds the lock; retry later" },
} as const satisfies Record<string, { status: ContentfulStatusCode; message: string }>;

export type ApiErrorCode = keyof typeof API_ERRORS;

/** DbError codes answered under another API code. */
const DB_CODE_ALIASES = {
  // An unproven address grants nothing, and says nothing either: it answers like a wrong password.
  EMAIL_NOT_VERIFIED: "INVALID_CREDENTIALS",
} as const satisfies Partial<Record<ErrorCode, ApiErrorCode>>;

// Every DbError code a client may see (kinds `rejected` and `unavailable`, declared in @repo/db) is answered
// under its own name or an alias: a new code without an entry above fails to compile here, naming the code.
type Unanswered = Exclude<
  CodeOfKind<"rejected"> | CodeOfKind<"unavailable">,
  ApiErrorCode | keyof typeof DB_CODE_ALIASES
>;
const everyShownCodeAnswered: [Unanswered] extends [never] ? true : Unanswered = true;
void everyShownCodeAnswered;

export class ApiError extends Error {
  override readonly name = "ApiError";
  readonly code: ApiErrorCode;
  readonly details?: Record<string, string>;
  /** Seconds, for RATE_LIMITED. */
  readonly retryAfter?: number;

  constructor(
    code: ApiErrorCode,
    message: string = API_ERRORS[code].message,
    options: { details?: Record<string, string>; retryAfter?: number; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    if (options.details !== undefined) this.details = options.details;
    if (options.retryAfter !== undefined) this.retryAfter = options.retryAfter;
  }
}

export interface ErrorAnswer {
  status: ContentfulStatusCode;
  code: ApiErrorCode;
  message: string;
  details?: Record<string, string>;
  retryAfter?: number;
  /** Unexpected: log at error level with the stack. */
  unexpected: boolean;
}

const STATUS_CODES: Partial<Record<number, ApiErrorCode>> = {
  400: "VALIDATION_FAILED",
  401: "UNAUTHENTICATED",
  403: "FORBIDDEN",
  404: "NOT_FOUND",
  413: "PAYLOAD_TOO_LARGE",
  415: "UNSUPPORTED_MEDIA_TYPE",
  429: "RATE_LIMITED",
  503: "SERVICE_UNAVAILABLE",
};

function answer(code: ApiErrorCode, extra: Partial<ErrorAnswer> = {}): ErrorAnswer {
  return {
    status: API_ERRORS[code].status,
    code,
    message: API_ERRORS[code].message,
    unexpected: false,
    ...extra,
  };
}

/** The one mapping from anything thrown to what the client sees. */
export function toErrorAnswer(error: unknown): ErrorAnswer {
  if (error instanceof ApiError) {
    const extra: Partial<ErrorAnswer> = { message: error.message };
    if (error.details) extra.details = error.details;
    if (error.retryAfter !== undefined) extra.retryAfter = error.retryAfter;
    return answer(error.code, extra);
  }
  if (error instanceof DbError) {
    const alias = DB_CODE_ALIASES[error.code as keyof typeof DB_CODE_ALIASES];
    if (alias !== undefined) return answer(alias);
    // Internal failures are the server's: the client sees INTERNAL_ERROR and the log gets the stack.
    if (error.kind === "internal" || !Object.hasOwn(API_ERRORS, error.code)) {
      return answer("INTERNAL_ERROR", { unexpected: true });
    }
    const code = error.code as ApiErrorCode;
    // Validation and password-policy messages name fields and rules, never values or SQL: safe to show.
    if (code === "VALIDATION_FAILED" || code === "PASSWORD_TOO_WEAK") {
      return answer(code, { message: error.message, ...(error.details ? { details: error.details } : {}) });
    }
    return answer(code);
  }
  if (error instanceof HTTPException) {
    const code = STATUS_CODES[error.status];
    if (code) return answer(code);
    return answer("INTERNAL_ERROR", { unexpected: true });
  }
  // A database or connection failure that reached here untranslated (a query run outside the services and
  // transaction()) still means "busy or away, retry" when it is one: translate it as the services would.
  const translated = toDbError(error);
  if (translated.kind === "unavailable") return answer(translated.code as ApiErrorCode);
  return answer("INTERNAL_ERROR", { unexpected: true });
}
