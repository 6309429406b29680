// What clients see of the data layer's rows: the one place a field is added to (or kept out of) an answer.
import type { AuditEventView, PublicSession, PublicUser } from "@repo/db";

/** What a client sees of a session. */
export function sessionView(session: PublicSession, currentId?: string) {
  return {
    id: session.id,
    authMethod: session.authMethod,
    ipAddress: session.ipAddress,
    userAgent: session.userAgent,
    createdAt: session.createdAt,
    lastAccessedAt: session.lastAccessedAt,
    expiresAt: session.expiresAt,
    ...(currentId === undefined ? {} : { current: session.id === currentId }),
  };
}

/** What a client sees of its user. */
export function userView(user: PublicUser) {
  return {
    id: user.id,
    email: user.email,
    emailVerifiedAt: user.emailVerifiedAt,
    phoneNumber: user.phoneNumber,
    firstName: user.firstName,
    lastName: user.lastName,
    avatarUrl: user.avatarUrl,
    metadata: user.metadata,
    lastSignInAt: user.lastSignInAt,
    createdAt: user.createdAt,
    updatedAt: user.updatedAt,
  };
}

/** What an administrator sees of an audit event: all of it but the chain's hashes. */
export function auditEventView(event: AuditEventView) {
  return {
    id: event.id,
    seq: event.seq,
    occurredAt: event.occurredAt,
    action: event.action,
    actor: { type: event.actorType, userId: event.actorUserId },
    subjectUserId: event.subjectUserId,
    ipAddress: event.ipAddress,
    userAgent: event.userAgent,
    requestId: event.requestId,
    details: event.details,
  };
}

/**
 * What users see of the events about them. Never the chain's `seq` (one counter for every user: its gaps
 * would tell which other addresses have accounts). Where the request came from only when they acted
 * themselves, or when it was an anonymous attempt on their account (a failed sign-in, a sign-up with their
 * address) and their address is proven: before that proof, whoever registered the address first could read
 * where its real owner connects from. Nothing about administrators: who, from where, which request.
 */
export function ownAuditEventView(event: AuditEventView, viewer: { id: string; emailVerified: boolean }) {
  const self = event.actorType === "user" && event.actorUserId === viewer.id;
  const origin = self || (event.actorType === "anonymous" && viewer.emailVerified);
  return {
    id: event.id,
    occurredAt: event.occurredAt,
    action: event.action,
    actor: { type: event.actorType, userId: self ? viewer.id : null },
    subjectUserId: event.subjectUserId,
    ipAddress: origin ? event.ipAddress : null,
    userAgent: origin ? event.userAgent : null,
    requestId: self ? event.requestId : null,
    details: event.details,
  };
}

/** The answers built from a session check, by the check's session: see currentSessionBody(). */
const sessionBodies = new WeakMap<object, { user: object; body: string }>();

/**
 * The JSON text of `GET /v1/auth/session`. The session cache answers every check of a token with the same
 * frozen session and user (SessionCheck) while its entry lives, so the text is built once per entry and lives
 * exactly as long as it: serializing it per request (JSON.stringify, Date.toISOString) was a fifth of the cached
 * check's CPU (bun --cpu-prof). Checks that read the database get fresh objects, so a fresh text.
 */
export function currentSessionBody(session: PublicSession, user: PublicUser): string {
  const memo = sessionBodies.get(session);
  if (memo !== undefined && memo.user === user) return memo.body;
  const body = JSON.stringify({ user: userView(user), session: sessionView(session) });
  if (Object.isFrozen(session) && Object.isFrozen(user)) sessionBodies.set(session, { user, body });
  return body;
}
