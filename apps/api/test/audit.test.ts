// The audit trail over HTTP: each action leaves exactly one event with the right actor and subject (found by
// the request's X-Request-Id), a change that fails leaves none, 50 concurrent sign-ins keep one valid chain,
// no event holds a secret in any form, users read only their own events, and admins read and export the
// trail. Roles: support reads and gets 403 on every change, a plain user gets 403 on every admin route.
import { AuditService } from "@repo/db";
import { useTestDatabase } from "@repo/db/testing";
import { beforeEach, describe, expect, it } from "vitest";
import {
  ADMIN_KEY,
  call,
  makeApp,
  NO_RATE_LIMITS,
  PASSWORD,
  signUp,
  type TestApp,
  uniqueEmail,
} from "./helpers.ts";

const database = useTestDatabase({ config: { poolMax: 20 } });

let t: TestApp;
beforeEach(() => {
  t = makeApp();
});

const admin = { authorization: `Bearer ${ADMIN_KEY}` };

interface Row {
  action: string;
  actor_type: string;
  actor_user_id: string | null;
  subject_user_id: string | null;
  ip_address: string | null;
  user_agent: string | null;
  details: Record<string, unknown>;
}

/** The events a request recorded, in order. */
async function eventsOf(response: { headers: Headers }): Promise<Row[]> {
  const requestId = response.headers.get("x-request-id");
  const { rows } = await database.admin<Row>(
    "SELECT action, actor_type, actor_user_id, subject_user_id, ip_address, user_agent, details FROM audit_events WHERE request_id = $1 ORDER BY id",
    [requestId],
  );
  return rows;
}

/** (action, actor, subject) of each event, for exact comparison. */
async function summary(response: { headers: Headers }) {
  return (await eventsOf(response)).map((row) => [
    row.action,
    row.actor_type,
    row.actor_user_id,
    row.subject_user_id,
  ]);
}

/** Signs up, then makes `role` holder of the new user with the admin key. */
async function userWithRole(role: "admin" | "support") {
  const user = await signUp(t);
  const granted = await call(t, "PUT", `/v1/admin/users/${user.user.id}/roles/${role}`, { headers: admin });
  expect(granted.status).toBe(200);
  return user;
}

describe("each action over HTTP records exactly one event, with its actor and subject", () => {
  it("sign-up, verification, sign-in, failed sign-ins, sign-out and the sessions' revocations", async () => {
    const email = uniqueEmail("trail");
    const signUpAnswer = await call(t, "POST", "/v1/auth/sign-up", {
      body: { email, password: PASSWORD },
      headers: { "user-agent": "trail-test/1.0" },
    });
    const [signUpEvent] = await eventsOf(signUpAnswer);
    const userId = signUpEvent?.subject_user_id;
    expect(await summary(signUpAnswer)).toEqual([["sign_up", "anonymous", null, userId]]);
    expect(signUpEvent).toMatchObject({
      ip_address: "203.0.113.1",
      user_agent: "trail-test/1.0",
      details: { outcome: "created" },
    });

    const verified = await call(t, "POST", "/v1/auth/email/verify", {
      body: { token: t.tokenFromMail(email), password: PASSWORD },
    });
    expect(await summary(verified)).toEqual([
      ["email_verified", "user", userId, userId],
      ["sign_in", "user", userId, userId],
    ]);
    const token = verified.json.token as string;

    const signedIn = await call(t, "POST", "/v1/auth/sign-in", { body: { email, password: PASSWORD } });
    expect(await summary(signedIn)).toEqual([["sign_in", "user", userId, userId]]);
    expect((await eventsOf(signedIn))[0]?.details).toEqual({ method: "password" });

    const wrong = await call(t, "POST", "/v1/auth/sign-in", { body: { email, password: "not it at all" } });
    expect(wrong.status).toBe(401);
    expect(await summary(wrong)).toEqual([["sign_in_failed", "anonymous", null, userId]]);
    const nobody = await call(t, "POST", "/v1/auth/sign-in", {
      body: { email: uniqueEmail("nobody"), password: PASSWORD },
    });
    expect(await summary(nobody)).toEqual([["sign_in_failed", "anonymous", null, null]]);

    const other = await call(t, "POST", "/v1/auth/sign-in", { body: { email, password: PASSWORD } });
    const otherId = other.json.session.id as string;
    const revokedOne = await call(t, "DELETE", `/v1/auth/sessions/${otherId}`, { bearer: token });
    expect(revokedOne.status).toBe(204);
    expect(await summary(revokedOne)).toEqual([["session_revoked", "user", userId, userId]]);
    expect((await eventsOf(revokedOne))[0]?.details).toEqual({ sessionId: otherId });
    // Someone else's (or an unknown) session: 404 and no event.
    const unknown = await call(t, "DELETE", "/v1/auth/sessions/0190a1b2-c3d4-7e5f-8a9b-000000000001", {
      bearer: token,
    });
    expect(unknown.status).toBe(404);
    expect(await eventsOf(unknown)).toEqual([]);

    // Another live session to end, then none: the repeat records nothing (nobody can fill the trail with it).
    await call(t, "POST", "/v1/auth/sign-in", { body: { email, password: PASSWORD } });
    const revokedOthers = await call(t, "POST", "/v1/auth/sessions/revoke-others", { bearer: token });
    expect(await summary(revokedOthers)).toEqual([["sessions_revoked", "user", userId, userId]]);
    const again = await call(t, "POST", "/v1/auth/sessions/revoke-others", { bearer: token });
    expect(again.json.revoked).toBe(0);
    expect(await eventsOf(again)).toEqual([]);
    // An ended session again: 404 and nothing recorded.
    const ended = await call(t, "DELETE", `/v1/auth/sessions/${otherId}`, { bearer: token });
    expect(ended.status).toBe(404);
    expect(await eventsOf(ended)).toEqual([]);

    const signedOut = await call(t, "POST", "/v1/auth/sign-out", { bearer: token });
    expect(signedOut.status).toBe(204);
    expect(await summary(signedOut)).toEqual([["sign_out", "user", userId, userId]]);

    // Ten sign-outs of one session at once: all 204, one event.
    const twice = await call(t, "POST", "/v1/auth/sign-in", { body: { email, password: PASSWORD } });
    const outs = await Promise.all(
      Array.from({ length: 10 }, () => call(t, "POST", "/v1/auth/sign-out", { bearer: twice.json.token })),
    );
    const statuses = outs.map((out) => out.status);
    expect(statuses.filter((status) => status === 204).length).toBeGreaterThanOrEqual(1);
    expect(statuses.every((status) => status === 204 || status === 401)).toBe(true);
    const { rows } = await database.admin<{ n: number }>(
      "SELECT count(*)::int AS n FROM audit_events WHERE action = 'sign_out' AND details->>'sessionId' = $1",
      [twice.json.session.id],
    );
    expect(rows[0]?.n).toBe(1);
  });

  it("password change and reset, magic link sent and used, account deletion", async () => {
    const { email, token, user } = await signUp(t);
    const changed = await call(t, "POST", "/v1/auth/password/change", {
      bearer: token,
      body: { currentPassword: PASSWORD, newPassword: `${PASSWORD} 2` },
    });
    expect(changed.status).toBe(200);
    expect(await summary(changed)).toEqual([["password_changed", "user", user.id, user.id]]);

    const forgot = await call(t, "POST", "/v1/auth/password/forgot", { body: { email } });
    expect(await eventsOf(forgot)).toEqual([]);
    const reset = await call(t, "POST", "/v1/auth/password/reset", {
      body: { token: t.tokenFromMail(email), password: `${PASSWORD} 3` },
    });
    expect(reset.status).toBe(200);
    expect(await summary(reset)).toEqual([["password_reset", "user", user.id, user.id]]);

    const asked = await call(t, "POST", "/v1/auth/magic-link", { body: { email } });
    expect(asked.status).toBe(202);
    expect(await summary(asked)).toEqual([["magic_link_sent", "anonymous", null, user.id]]);
    // For an address without an account: the same answer, and nothing recorded about anyone.
    const unknown = await call(t, "POST", "/v1/auth/magic-link", { body: { email: uniqueEmail("none") } });
    expect(unknown.status).toBe(202);
    expect(await eventsOf(unknown)).toEqual([]);
    const used = await call(t, "POST", "/v1/auth/magic-link/verify", {
      body: { token: t.tokenFromMail(email) },
    });
    expect(await summary(used)).toEqual([["sign_in", "user", user.id, user.id]]);

    const deleted = await call(t, "DELETE", "/v1/users/me", {
      bearer: used.json.token,
      body: { password: `${PASSWORD} 3` },
    });
    expect(deleted.status).toBe(204);
    expect(await summary(deleted)).toEqual([["user_deleted", "user", user.id, user.id]]);
  });

  it("admin actions: with the key (admin_key_used, then the change by admin_key) and as a user with the role", async () => {
    const target = await signUp(t);
    const id = target.user.id;
    const read = await call(t, "GET", `/v1/admin/users/${id}`, { headers: admin });
    expect(await summary(read)).toEqual([["admin_key_used", "admin_key", null, null]]);
    expect((await eventsOf(read))[0]?.details).toEqual({ method: "GET", path: `/v1/admin/users/${id}` });

    const deleted = await call(t, "DELETE", `/v1/admin/users/${id}`, { headers: admin });
    expect(deleted.status).toBe(204);
    // The key's use is recorded after the answer, the change in its transaction: either may come first.
    expect((await summary(deleted)).sort()).toEqual([
      ["admin_key_used", "admin_key", null, null],
      ["user_deleted", "admin_key", null, id],
    ]);

    const boss = await userWithRole("admin");
    const bossId = boss.user.id;
    const restored = await call(t, "POST", `/v1/admin/users/${id}/restore`, { bearer: boss.token });
    expect(restored.status).toBe(200);
    expect(await summary(restored)).toEqual([["user_restored", "user", bossId, id]]);

    const granted = await call(t, "PUT", `/v1/admin/users/${id}/roles/support`, { bearer: boss.token });
    expect(granted.json.roles).toEqual(["support"]);
    expect(await summary(granted)).toEqual([["role_granted", "user", bossId, id]]);
    expect((await eventsOf(granted))[0]?.details).toEqual({ role: "support" });
    // Granting again changes nothing and records nothing.
    const again = await call(t, "PUT", `/v1/admin/users/${id}/roles/support`, { bearer: boss.token });
    expect(again.json.roles).toEqual(["support"]);
    expect(await eventsOf(again)).toEqual([]);
    const granter = await database.admin<{ granted_by: string }>(
      "SELECT granted_by FROM user_roles WHERE user_id = $1",
      [id],
    );
    expect(granter.rows[0]?.granted_by).toBe(bossId);

    const revoked = await call(t, "DELETE", `/v1/admin/users/${id}/roles/support`, { bearer: boss.token });
    expect(revoked.json.roles).toEqual([]);
    expect(await summary(revoked)).toEqual([["role_revoked", "user", bossId, id]]);

    await call(t, "POST", "/v1/auth/sign-in", { body: { email: target.email, password: PASSWORD } });
    const signedOut = await call(t, "POST", `/v1/admin/users/${id}/sessions/revoke`, { bearer: boss.token });
    expect(signedOut.json.revoked).toBe(1);
    expect(await summary(signedOut)).toEqual([["sessions_revoked", "user", bossId, id]]);
  });
});

describe("a change that fails records nothing", () => {
  it("the last admin revoking their own role (409), and a restore whose address was taken meanwhile (409)", async () => {
    await database.admin("DELETE FROM user_roles WHERE role = 'admin'");
    const only = await userWithRole("admin");
    const refused = await call(t, "DELETE", `/v1/admin/users/${only.user.id}/roles/admin`, {
      bearer: only.token,
    });
    expect(refused.status).toBe(409);
    expect(refused.json.error.code).toBe("LAST_ADMIN");
    expect(await eventsOf(refused)).toEqual([]);

    const gone = await signUp(t);
    await call(t, "DELETE", `/v1/admin/users/${gone.user.id}`, { headers: admin });
    await signUp(t, gone.email);
    const taken = await call(t, "POST", `/v1/admin/users/${gone.user.id}/restore`, { bearer: only.token });
    expect(taken.status).toBe(409);
    expect(await eventsOf(taken)).toEqual([]);
    expect(await AuditService.verify()).toMatchObject({ ok: true });
  });

  it("no signed-in user can remove the last admin by deleting an account; a deleted account's roles go, recorded", async () => {
    await database.admin("DELETE FROM user_roles WHERE role = 'admin'");
    const only = await userWithRole("admin");
    const byAdminRoute = await call(t, "DELETE", `/v1/admin/users/${only.user.id}`, { bearer: only.token });
    expect(byAdminRoute.status).toBe(409);
    expect(byAdminRoute.json.error.code).toBe("LAST_ADMIN");
    const bySelf = await call(t, "DELETE", "/v1/users/me", {
      bearer: only.token,
      body: { password: PASSWORD },
    });
    expect(bySelf.status).toBe(409);
    expect(await eventsOf(bySelf)).toEqual([]);
    expect((await call(t, "GET", "/v1/users/me", { bearer: only.token })).status).toBe(200);

    const helper = await userWithRole("support");
    const removed = await call(t, "DELETE", `/v1/admin/users/${helper.user.id}`, { bearer: only.token });
    expect(removed.status).toBe(204);
    expect(await summary(removed)).toEqual([
      ["role_revoked", "user", only.user.id, helper.user.id],
      ["user_deleted", "user", only.user.id, helper.user.id],
    ]);
    const back = await call(t, "POST", `/v1/admin/users/${helper.user.id}/restore`, { bearer: only.token });
    expect(back.status).toBe(200);
    const state = await call(t, "GET", `/v1/admin/users/${helper.user.id}`, { bearer: only.token });
    expect(state.json.roles).toEqual([]);
  });
});

describe("the chain under load", () => {
  it("50 concurrent sign-ins leave one valid chain with 50 sign_in events", async () => {
    // Parallel attempts each reserve a failure before their check: the limits would refuse most of them.
    t = makeApp({ env: { ...NO_RATE_LIMITS } });
    const { email, user } = await signUp(t);
    const before = await database.admin<{ n: number }>(
      "SELECT count(*)::int AS n FROM audit_events WHERE subject_user_id = $1 AND action = 'sign_in'",
      [user.id],
    );
    const answers = await Promise.all(
      Array.from({ length: 50 }, () =>
        call(t, "POST", "/v1/auth/sign-in", { body: { email, password: PASSWORD } }),
      ),
    );
    expect(answers.map((answer) => answer.status)).toEqual(answers.map(() => 200));
    const after = await database.admin<{ n: number }>(
      "SELECT count(*)::int AS n FROM audit_events WHERE subject_user_id = $1 AND action = 'sign_in'",
      [user.id],
    );
    expect((after.rows[0]?.n ?? 0) - (before.rows[0]?.n ?? 0)).toBe(50);
    await AuditService.chain();
    expect(await AuditService.verify()).toMatchObject({ ok: true, pending: 0 });
  });
});

describe("roles on the admin routes", () => {
  /** Every admin route the app registers, with a path that reaches its handler. */
  function adminRoutes(id: string) {
    return t.app.routes
      .filter((r) => r.path.startsWith("/v1/admin/") && r.method !== "ALL")
      .map((r) => ({
        method: r.method,
        path: r.path.replace(":id", id).replace(":role", "support"),
      }))
      .filter((r, i, all) => all.findIndex((o) => o.method === r.method && o.path === r.path) === i);
  }

  it("support reads users and the trail, and gets 403 on every change; a plain user gets 403 on every route", async () => {
    const target = await signUp(t);
    const support = await userWithRole("support");
    const plain = await signUp(t);
    const routes = adminRoutes(target.user.id);
    expect(routes.length).toBeGreaterThanOrEqual(8);
    for (const { method, path } of routes) {
      const asPlain = await call(t, method, path, { bearer: plain.token });
      expect(asPlain.status, `${method} ${path} as a plain user`).toBe(403);
      expect(asPlain.json.error.code).toBe("FORBIDDEN");
      const asSupport = await call(t, method, path, { bearer: support.token });
      if (method === "GET") expect(asSupport.status, `${method} ${path} as support`).toBe(200);
      else {
        expect(asSupport.status, `${method} ${path} as support`).toBe(403);
        expect(await eventsOf(asSupport)).toEqual([]);
      }
    }
    // Nothing changed for the target.
    const state = await call(t, "GET", `/v1/admin/users/${target.user.id}`, { headers: admin });
    expect(state.json).toMatchObject({ user: { deletedAt: null }, roles: [] });
    // A bearer that is neither the key nor a live session: 401.
    expect((await call(t, "GET", "/v1/admin/users", { bearer: "not-a-session" })).status).toBe(401);
  });

  it("a signed-in admin uses a cookie session like any other: cross-site changes are refused", async () => {
    const boss = await userWithRole("admin");
    const target = await signUp(t);
    const crossSite = await t.app.request(`/v1/admin/users/${target.user.id}`, {
      method: "DELETE",
      headers: { cookie: `__Host-session=${boss.token}`, origin: "https://evil.example" },
    });
    expect(crossSite.status).toBe(403);
    expect(
      (await call(t, "GET", `/v1/admin/users/${target.user.id}`, { headers: admin })).json.user.deletedAt,
    ).toBeNull();
  });
});

describe("reading the trail", () => {
  it("a user reads only their own events, newest first, by keyset pages, with nothing about admins and no seq", async () => {
    const me = await signUp(t);
    const someone = await signUp(t);
    await call(t, "POST", "/v1/auth/sign-in", { body: { email: me.email, password: "wrong password!" } });
    const boss = await userWithRole("admin");
    await call(t, "POST", `/v1/admin/users/${me.user.id}/sessions/revoke`, { bearer: boss.token });
    const fresh = await call(t, "POST", "/v1/auth/sign-in", {
      body: { email: me.email, password: PASSWORD },
    });
    const mine: {
      id: string;
      action: string;
      subjectUserId: string;
      actor: { type: string; userId: string | null };
      ipAddress: string | null;
      userAgent: string | null;
      requestId: string | null;
    }[] = [];
    let cursor: string | null = null;
    do {
      const page: Awaited<ReturnType<typeof call>> = await call(
        t,
        "GET",
        `/v1/users/me/security-events?limit=2${cursor ? `&cursor=${cursor}` : ""}`,
        { bearer: fresh.json.token },
      );
      expect(page.status).toBe(200);
      mine.push(...page.json.events);
      cursor = page.json.nextCursor;
    } while (cursor !== null);
    expect(mine.map((e) => e.action)).toEqual([
      "sign_in",
      "sessions_revoked",
      "sign_in_failed",
      "sign_in",
      "email_verified",
      "sign_up",
    ]);
    expect(mine.every((e) => e.subjectUserId === me.user.id)).toBe(true);
    expect(mine.map((e) => e.id)).toEqual([...mine.map((e) => e.id)].sort().reverse());
    // The chain's counter is one for every user: its gaps would tell which other addresses have accounts.
    expect(mine.every((e) => !("seq" in e))).toBe(true);
    // An administrator's action: who, from where and which request are not the user's to know.
    const byAdmin = mine.find((e) => e.action === "sessions_revoked");
    expect(byAdmin).toMatchObject({
      actor: { type: "user", userId: null },
      ipAddress: null,
      userAgent: null,
      requestId: null,
    });
    // An anonymous attempt on a proven account: where it came from is shown.
    expect(mine.find((e) => e.action === "sign_in_failed")).toMatchObject({ ipAddress: "203.0.113.1" });
    expect(mine.find((e) => e.action === "sign_in")?.actor).toEqual({ type: "user", userId: me.user.id });
    expect(JSON.stringify(mine)).not.toContain(someone.user.id);
    expect((await call(t, "GET", "/v1/users/me/security-events")).status).toBe(401);
    expect(
      (await call(t, "GET", "/v1/users/me/security-events?limit=0", { bearer: fresh.json.token })).status,
    ).toBe(400);
  });

  it("before its address is proven, an account's sessions never show where an anonymous attempt came from", async () => {
    // Pre-hijack with sessions at sign-up: the attacker registers the address first and keeps a session.
    const early = makeApp({ env: { SIGN_IN_BEFORE_EMAIL_VERIFICATION: "true" } });
    const email = uniqueEmail("owner");
    const attacker = await call(early, "POST", "/v1/auth/sign-up", { body: { email, password: PASSWORD } });
    expect(attacker.status).toBe(201);
    early.setAddress("198.51.100.5");
    await call(early, "POST", "/v1/auth/sign-up", {
      body: { email, password: `${PASSWORD} owner` },
      headers: { "user-agent": "Owner-Phone/1.0" },
    });
    const seen = await call(early, "GET", "/v1/users/me/security-events", { bearer: attacker.json.token });
    expect(seen.status).toBe(200);
    const text = JSON.stringify(seen.json.events);
    expect(text).not.toContain("198.51.100.5");
    expect(text).not.toContain("Owner-Phone");
  });

  it("admins filter by user, action and time, page by cursor, and export NDJSON", async () => {
    const a = await signUp(t);
    await call(t, "POST", "/v1/auth/sign-in", { body: { email: a.email, password: PASSWORD } });
    await call(t, "POST", "/v1/auth/sign-in", { body: { email: a.email, password: PASSWORD } });
    const support = await userWithRole("support");
    const signIns = await call(t, "GET", `/v1/admin/audit?userId=${a.user.id}&action=sign_in&limit=2`, {
      bearer: support.token,
    });
    expect(signIns.status).toBe(200);
    expect(signIns.json.events.map((e: { action: string }) => e.action)).toEqual(["sign_in", "sign_in"]);
    expect(signIns.json.nextCursor).not.toBeNull();
    const rest = await call(
      t,
      "GET",
      `/v1/admin/audit?userId=${a.user.id}&action=sign_in&cursor=${signIns.json.nextCursor}`,
      { bearer: support.token },
    );
    expect(rest.json.events.map((e: { action: string }) => e.action)).toEqual(["sign_in"]);
    expect(rest.json.nextCursor).toBeNull();
    const future = await call(
      t,
      "GET",
      `/v1/admin/audit?from=${new Date(Date.now() + 60_000).toISOString()}`,
      {
        headers: admin,
      },
    );
    expect(future.json.events).toEqual([]);
    const bad = await call(t, "GET", "/v1/admin/audit?action=launch", { headers: admin });
    expect(bad.status).toBe(400);

    const exported = await t.app.request(`/v1/admin/audit?userId=${a.user.id}`, {
      headers: { ...admin, accept: "application/x-ndjson" },
    });
    expect(exported.status).toBe(200);
    expect(exported.headers.get("content-type")).toContain("application/x-ndjson");
    const lines = (await exported.text())
      .trim()
      .split("\n")
      .map((line) => JSON.parse(line));
    expect(lines.map((e) => e.action)).toEqual([
      "sign_in",
      "sign_in",
      "sign_in",
      "email_verified",
      "sign_up",
    ]);
    await t.tasks.settle();
  });
});

describe("secrets", () => {
  it("no audit event holds a password, session token, link token or the admin key, in any encoding", async () => {
    const email = uniqueEmail("secret");
    const secrets: string[] = [PASSWORD, ADMIN_KEY];
    await call(t, "POST", "/v1/auth/sign-up", { body: { email, password: PASSWORD } });
    const link = t.tokenFromMail(email);
    secrets.push(link);
    const verified = await call(t, "POST", "/v1/auth/email/verify", {
      body: { token: link, password: PASSWORD },
    });
    secrets.push(verified.json.token);
    await call(t, "POST", "/v1/auth/sign-in", { body: { email, password: "a wrong guess 123" } });
    secrets.push("a wrong guess 123");
    await call(t, "POST", "/v1/auth/magic-link", { body: { email } });
    const magic = t.tokenFromMail(email);
    secrets.push(magic);
    const used = await call(t, "POST", "/v1/auth/magic-link/verify", { body: { token: magic } });
    secrets.push(used.json.token);
    const changed = await call(t, "POST", "/v1/auth/password/change", {
      bearer: used.json.token,
      body: { currentPassword: PASSWORD, newPassword: "a brand new secret 77" },
    });
    expect(changed.status).toBe(200);
    secrets.push("a brand new secret 77", changed.json.token);
    await call(t, "GET", "/v1/admin/users", { headers: admin });
    const { rows } = await database.admin<{ row: string }>(
      "SELECT row_to_json(a)::text AS row FROM audit_events a",
    );
    const all = rows.map((r) => r.row).join("\n");
    expect(rows.length).toBeGreaterThan(5);
    for (const secret of secrets) {
      const bytes = Buffer.from(secret, "utf8");
      for (const form of [
        secret,
        bytes.toString("hex"),
        bytes.toString("base64"),
        bytes.toString("base64url"),
      ]) {
        expect(all.includes(form), `a secret as ${form.slice(0, 8)}…`).toBe(false);
      }
    }
  });
});
