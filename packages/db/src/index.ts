// @repo/db: the schema, the connection, migrations, metrics, typed errors and the services.
// Apps import from here (and from the explicit subpaths in package.json), never from deep paths or drizzle-orm.
// Every export is named: what is not listed here is internal to the package, and test hooks (the clock,
// resetAccountEncryption) are in @repo/db/testing. packages/db/README.md describes each name.

// Connection

export {
  connectDB,
  type Database,
  type DatabaseOrTransaction,
  db,
  disconnectDB,
  getDatabaseConfig,
  getPool,
  initializeDB,
  isInitialized,
  type Schema,
} from "./connection.ts";

// Transactions and statements

export { type CoalescerOptions, coalescer } from "./coalesce.ts";
export {
  statementTransaction,
  type Transaction,
  type TransactionOptions,
  transaction,
  withUser,
} from "./connection.ts";

// Read replicas

export { checkReplicas, onReplica, onReplicaAs, replicaStatus } from "./connection.ts";
export type { ReplicaStatus } from "./replicas.ts";
export {
  type SessionFeedStatus,
  sessionFeedStatus,
  startSessionChecks,
  stopSessionFeed,
} from "./services/sessions/feed.ts";
export {
  definedStatements,
  defineStatement,
  param,
  type Statement,
  type StatementOptions,
  type StatementTarget,
  selectColumns,
} from "./statements.ts";
export { parseTimestamptz, resultTypes } from "./timestamps.ts";

// Query building: Drizzle's operators, so apps need no drizzle-orm import of their own

export { and, asc, desc, eq, gt, gte, inArray, isNull, lt, lte, ne, or, sql } from "drizzle-orm";

// Errors

export {
  type CodeOfKind,
  codesOfKind,
  DbError,
  type DbErrorOptions,
  ERROR_CODES,
  type ErrorCode,
  type ErrorKind,
  errorKind,
  isDbError,
  toDbError,
} from "./errors.ts";

// Logging and metrics

export {
  consoleLogger,
  type LogFields,
  type Logger,
  noopLogger,
  type PinoLike,
  withAudit,
} from "./logger.ts";
export { registry, withMetrics } from "./metrics.ts";
export { type CounterTally, type HistogramTally, TalliedCounter, TalliedHistogram } from "./tallies.ts";

// Migrations and locks

export {
  type AdvisoryLockOptions,
  acquireAdvisoryLock,
  advisoryLockKey,
  tryWithAdvisoryLock,
  withAdvisoryLock,
} from "./locks.ts";
export {
  isSchemaCurrent,
  type MigrateOptions,
  type MigrationFile,
  type MigrationStatus,
  migrationStatus,
  pendingSql,
  runMigrations,
} from "./migrate.ts";

// Configuration

export {
  type DatabaseConfig,
  type DatabaseEnv,
  databaseConfigFromUrl,
  loadDatabaseConfig,
  redactUrl,
  type SslMode,
} from "./config.ts";
export {
  type AccountEncryptionConfig,
  configureAccountEncryption,
  currentEncryptionKeyId,
  isAccountEncryptionConfigured,
  loadAccountEncryptionFromEnv,
} from "./crypto/encryption.ts";
export { PASSWORD_MIN_LENGTH } from "./crypto/passwords.ts";
export {
  CODE_KEY_MIN_BYTES,
  configureOneTimeCodes,
  loadOneTimeCodeKeyFromEnv,
} from "./services/one-time-tokens.ts";

// Schema (the same names as @repo/db/schema)

export {
  type Account,
  AUDIT_ACTIONS,
  AUDIT_ACTORS,
  accounts,
  auditChain,
  auditEvents,
  type CacheEntry,
  cache,
  type NewAccount,
  type NewOneTimeToken,
  type NewSession,
  type NewUser,
  type OneTimeToken,
  type OneTimeTokenPurpose,
  oneTimeTokenPurpose,
  oneTimeTokens,
  ROLES,
  type Session,
  sessionStatus,
  sessions,
  type User,
  type UserRole,
  userRoles,
  users,
} from "./schema/index.ts";

// Services: one namespace each, plus the types their calls take and return

export type { AccountTokens, LinkedAccount } from "./services/accounts.ts";
export * as AccountsService from "./services/accounts.ts";
export type {
  AuditAction,
  AuditActor,
  AuditEvent,
  AuditEventInput,
  AuditEventView,
  AuditFor,
  ListAuditInput,
  VerifyResult,
} from "./services/audit.ts";
export * as AuditService from "./services/audit.ts";
export * as CacheService from "./services/cache.ts";
export type { ReadOptions, ServiceOptions } from "./services/common.ts";
export type { OneTimeTokenRecord } from "./services/one-time-tokens.ts";
export * as OneTimeTokensService from "./services/one-time-tokens.ts";
export type { Role } from "./services/roles.ts";
export * as RolesService from "./services/roles.ts";
export type { PublicSession, SessionCheck, SessionConfig, SessionUser } from "./services/sessions.ts";
export * as SessionsService from "./services/sessions.ts";
export type { PreparedPassword, PublicUser } from "./services/users.ts";
export * as UsersService from "./services/users.ts";
