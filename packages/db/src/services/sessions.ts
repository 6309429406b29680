// Sessions: opaque bearer tokens for signed-in users. The token is 256 random bits handed to the client once;
// the database keeps only its SHA-256 (token_hash, unique index), so a leaked table holds no usable token.
// A session expires after an idle timeout (sliding, refreshed at most once per refresh interval) and in any
// case at an absolute lifetime after creation. A user has at most maxPerUser live sessions: creating one more
// revokes the oldest.
//
// The functions live in sessions/, by concern: config.ts (lifetimes and cap), create.ts, validation.ts (the
// per-request check and its sliding refresh) and lifecycle.ts (rotate, revoke, list, cleanup); shared.ts holds
// the row shapes. This module is the SessionsService namespace: it re-exports each of them by name.
export {
  configureSessions,
  DEFAULT_SESSION_CONFIG,
  type SessionConfig,
  type SessionServiceOptions,
  sessionConfig,
} from "./sessions/config.ts";
export {
  type CreateSessionInput,
  create,
  USER_AGENT_MAX_ACCEPTED,
  USER_AGENT_MAX_STORED,
} from "./sessions/create.ts";
export {
  cleanupExpired,
  listForUser,
  type RevokeSessionOptions,
  revoke,
  revokeAllForUser,
  rotate,
} from "./sessions/lifecycle.ts";
export type { PublicSession, SessionUser } from "./sessions/shared.ts";
export { type SessionCheck, validate } from "./sessions/validation.ts";
