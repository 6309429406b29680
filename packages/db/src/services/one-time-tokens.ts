// One-time tokens: links (256-bit secrets) and short numeric codes sent to an address, used at most once.
// Only a SHA-256 digest is stored. "Use once" is always one conditional UPDATE ... RETURNING, never a read
// followed by a write, so concurrent callers cannot both win (see /work/shared/pitfalls.md, "Auth semantics").
//
// The functions live in one-time-tokens/, by concern: issuing.ts (issuing links, retiring, cleanup), links.ts
// (using and peeking at links), codes.ts (numeric codes and their key); shared.ts holds the record shapes,
// lifetimes and schemas. This module is the OneTimeTokensService namespace: it re-exports each of them by name.
export {
  CODE_KEY_MIN_BYTES,
  type CreateCodeInput,
  configureOneTimeCodes,
  createCode,
  loadOneTimeCodeKeyFromEnv,
  type VerifyCodeOptions,
  verifyCode,
} from "./one-time-tokens/codes.ts";
export { type CleanupInput, cleanupExpired, create, invalidateForUser } from "./one-time-tokens/issuing.ts";
export {
  consume,
  consumeLink,
  LINK_MAX_ATTEMPTS,
  peek,
  peekLink,
  reserveLinkAttempt,
} from "./one-time-tokens/links.ts";
export {
  type CreateTokenInput,
  DEFAULT_CODE_TTL_MS,
  DEFAULT_MAX_ATTEMPTS,
  DEFAULT_TOKEN_TTL_MS,
  type LinkRegistration,
  MAX_CODE_TTL_MS,
  MAX_TOKEN_TTL_MS,
  type OneTimeTokenRecord,
  type RegistrationProfile,
} from "./one-time-tokens/shared.ts";
