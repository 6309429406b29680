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

/**
 * What a reader sees of an audit event. `viewer`: a user reading their own events sees who acted by type, and
 * by id only when it was them (an admin's id is not theirs to know).
 */
export function auditEventView(event: AuditEventView, viewer?: string) {
  const actorId = event.actorUserId;
  return {
    id: event.id,
    seq: event.seq,
    occurredAt: event.occurredAt,
    action: event.action,
    actor: {
      type: event.actorType,
      userId: viewer === undefined || actorId === viewer ? actorId : null,
    },
    subjectUserId: event.subjectUserId,
    ipAddress: event.ipAddress,
    userAgent: event.userAgent,
    requestId: event.requestId,
    details: event.details,
  };
}
