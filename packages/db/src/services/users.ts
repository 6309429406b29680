// UsersService: creating, finding, listing, searching, updating, soft-deleting, restoring and purging users,
// and their passwords. Callers never see password hashes: every function returns `PublicUser`.
// The code lives in ./users/ by concern (schemas, list-query, lookups, records, credentials, email-links,
// shared); this module re-exports it by name, so `UsersService.<name>` and this import path stay as they were.
export type { BreachCheckOptions } from "../crypto/password-policy.ts";
export type { PreparedPassword } from "../crypto/passwords.ts";
export type { PublicUser } from "./common.ts";
export {
  hasPassword,
  type PreparePasswordOptions,
  preparePassword,
  type SignInOptions,
  setPassword,
  signIn,
  type VerifyPasswordOptions,
  verifyPassword,
} from "./users/credentials.ts";
export {
  type EmailLinkOptions,
  type EmailLinkResult,
  type RegisterOptions,
  type Registration,
  register,
  sendVerification,
  useEmailLink,
} from "./users/email-links.ts";
export {
  create,
  explainList,
  findByEmail,
  findById,
  findByPhone,
  list,
  purge,
  restore,
  search,
  softDelete,
  update,
} from "./users/records.ts";
export {
  AVATAR_URL_MAX_LENGTH,
  type CreateUserInput,
  EMAIL_MAX_LENGTH,
  LIST_DEFAULT_LIMIT,
  LIST_MAX_LIMIT,
  LIST_MAX_PATTERNS,
  type ListUsersInput,
  METADATA_MAX_BYTES,
  METADATA_MAX_DEPTH,
  NAME_MAX_LENGTH,
  type PreparePasswordInput,
  PURGE_DEFAULT_BATCH_SIZE,
  PURGE_DEFAULT_MAX_BATCHES,
  type PurgeUsersInput,
  type RegisterInput,
  SEARCH_DEFAULT_LIMIT,
  SEARCH_MAX_LIMIT,
  type SearchUsersInput,
  type SetPasswordInput,
  type UpdateUserInput,
  type UseEmailLinkInput,
  type UserPage,
  type UserPatch,
  type VerifyPasswordInput,
} from "./users/schemas.ts";
