// /v1/auth sessions: the current session, the user's sessions (list, revoke one, revoke the others), sign-out.
import { SessionsService } from "@repo/db";
import type { Context } from "hono";
import type { AppEnv } from "../../context.ts";
import { ApiError } from "../../errors.ts";
import { clearSessionCookie } from "../../http.ts";
import { sessionView, userView } from "../../views.ts";
import { sessionIdParam } from "./shared.ts";

export async function signOut(c: Context<AppEnv>) {
  await SessionsService.revoke(c.var.session.id, c.var.log);
  clearSessionCookie(c);
  return c.body(null, 204);
}

export function currentSession(c: Context<AppEnv>) {
  return c.json({ user: userView(c.var.user), session: sessionView(c.var.session) });
}

export async function listSessions(c: Context<AppEnv>) {
  const sessions = await SessionsService.listForUser(c.var.user.id, c.var.log);
  return c.json({ sessions: sessions.map((session) => sessionView(session, c.var.session.id)) });
}

export async function revokeSession(c: Context<AppEnv>) {
  const parsed = sessionIdParam.safeParse(c.req.param("id"));
  if (!parsed.success) throw new ApiError("NOT_FOUND");
  const id = parsed.data.toLowerCase();
  // One UPDATE scoped to the caller: someone else's id is NOT_FOUND, exactly like an unknown one.
  await SessionsService.revoke(id, c.var.log, { userId: c.var.user.id });
  if (id === c.var.session.id) clearSessionCookie(c);
  return c.body(null, 204);
}

export async function revokeOtherSessions(c: Context<AppEnv>) {
  const revoked = await SessionsService.revokeAllForUser(
    { userId: c.var.user.id, except: c.var.session.id },
    c.var.log,
  );
  return c.json({ revoked });
}
