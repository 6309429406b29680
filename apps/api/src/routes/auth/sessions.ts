// /v1/auth sessions: the current session, the user's sessions (list, revoke one, revoke the others), sign-out.
import { isDbError, onReplicaAs, SessionsService } from "@repo/db";
import type { Context } from "hono";
import { auditEvent, audited } from "../../audit.ts";
import type { AppEnv } from "../../context.ts";
import { ApiError } from "../../errors.ts";
import { clearSessionCookie } from "../../http.ts";
import { currentSessionBody, sessionView } from "../../views.ts";
import { sessionIdParam } from "./shared.ts";

const JSON_CONTENT = { "Content-Type": "application/json" };

export async function signOut(c: Context<AppEnv>) {
  await endSession(c, c.get("session").id, c.get("user").id);
  clearSessionCookie(c);
  return c.body(null, 204);
}

/**
 * Sign-out (the JSON route and the page): the session ends and the trail says so, in one statement (the
 * event is written only if the session was revoked).
 */
export async function endSession(c: Context<AppEnv>, sessionId: string, userId: string): Promise<void> {
  try {
    // A live session only: two sign-outs of one session at once record one event.
    await SessionsService.revoke(sessionId, c.get("log"), {
      activeOnly: true,
      audit: auditEvent(c, "sign_out", { subject: userId, actor: "subject", details: { sessionId } }),
    });
  } catch (error) {
    // Ended meanwhile (the other sign-out, an expiry): signed out all the same.
    if (!isDbError(error, "NOT_FOUND")) throw error;
  }
}

export function currentSession(c: Context<AppEnv>) {
  return c.body(currentSessionBody(c.get("session"), c.get("user")), 200, JSON_CONTENT);
}

export async function listSessions(c: Context<AppEnv>) {
  const userId = c.get("user").id;
  // A list that may lag a moment: on a replica when there are any (DATABASE_REPLICA_URLS).
  const sessions = await onReplicaAs(userId, (tx) =>
    SessionsService.listForUser(userId, c.get("log"), { tx }),
  );
  return c.json({ sessions: sessions.map((session) => sessionView(session, c.get("session").id)) });
}

export async function revokeSession(c: Context<AppEnv>) {
  const parsed = sessionIdParam.safeParse(c.req.param("id"));
  if (!parsed.success) throw new ApiError("NOT_FOUND");
  const id = parsed.data.toLowerCase();
  // One UPDATE scoped to the caller: someone else's id is NOT_FOUND, exactly like an unknown one.
  const userId = c.get("user").id;
  await audited(
    c,
    async (tx, record) => {
      // A live session only: revoking an ended one again is NOT_FOUND, so each session is recorded once.
      await SessionsService.revoke(id, c.get("log"), { userId, activeOnly: true, tx });
      await record("session_revoked", { subject: userId, details: { sessionId: id } });
    },
    { userId },
  );
  if (id === c.get("session").id) clearSessionCookie(c);
  return c.body(null, 204);
}

export async function revokeOtherSessions(c: Context<AppEnv>) {
  const userId = c.get("user").id;
  const revoked = await audited(
    c,
    async (tx, record) => {
      const count = await SessionsService.revokeAllForUser(
        { userId, except: c.get("session").id },
        c.get("log"),
        { tx },
      );
      // Nothing ended, nothing to record (or every repeat would add a row).
      if (count > 0) {
        await record("sessions_revoked", { subject: userId, details: { revoked: count, keptCurrent: true } });
      }
      return count;
    },
    { userId },
  );
  return c.json({ revoked });
}
