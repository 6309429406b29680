// @repo/db: the schema, the connection, migrations, metrics, typed errors and the services.
// Apps import from here (and from the explicit subpaths in package.json), never from deep paths or drizzle-orm.
export { and, asc, desc, eq, gt, gte, inArray, isNull, lt, lte, ne, or, sql } from "drizzle-orm";
export { manualClock, now, resetClock, setClock } from "./clock.ts";
export { coalescer } from "./coalesce.ts";
export * from "./config.ts";
export * from "./connection.ts";
export {
  type AccountEncryptionConfig,
  configureAccountEncryption,
  currentEncryptionKeyId,
  isAccountEncryptionConfigured,
  loadAccountEncryptionFromEnv,
  resetAccountEncryption,
} from "./crypto/encryption.ts";
export * from "./errors.ts";
export * from "./locks.ts";
export * from "./logger.ts";
export * from "./metrics.ts";
export * from "./migrate.ts";
export * from "./schema/index.ts";
export type { AccountTokens, LinkedAccount } from "./services/accounts.ts";
export * as AccountsService from "./services/accounts.ts";
export * as CacheService from "./services/cache.ts";
export type { ReadOptions, ServiceOptions } from "./services/common.ts";
export * as OneTimeTokensService from "./services/one-time-tokens.ts";
export {
  CODE_KEY_MIN_BYTES,
  configureOneTimeCodes,
  loadOneTimeCodeKeyFromEnv,
  type OneTimeTokenRecord,
} from "./services/one-time-tokens.ts";
export type { PublicSession, SessionConfig, SessionUser } from "./services/sessions.ts";
export * as SessionsService from "./services/sessions.ts";
export type { PreparedPassword, PublicUser } from "./services/users.ts";
export * as UsersService from "./services/users.ts";
export {
  definedStatements,
  defineStatement,
  param,
  type Statement,
  type StatementOptions,
  selectColumns,
} from "./statements.ts";
