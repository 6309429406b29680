import { DbError } from "@repo/db";
import { useTestDatabase } from "@repo/db/testing";
import { beforeEach, describe, expect, it } from "vitest";
import { toErrorAnswer } from "../src/errors.ts";
import { ADMIN_KEY, call, makeApp, PASSWORD, signUp, type TestApp, uniqueEmail } from "./helpers.ts";

useTestDatabase();

let t: TestApp;
beforeEach(() => {
  t = makeApp();
});

describe("/v1/users/me", () => {
  it("reads, patches (strictly) and soft-deletes the signed-in user", async () => {
    const { token, email } = await signUp(t);
    const cookie = `__Host-session=${token}`;
    expect((await call(t, "GET", "/v1/users/me")).status).toBe(401);
    const me = await call(t, "GET", "/v1/users/me", { cookie });
    expect(me.json.user.email).toBe(email);
    expect(me.json.user.passwordHash).toBeUndefined();
    const patched = await call(t, "PATCH", "/v1/users/me", { cookie, body: { firstName: "Grace" } });
    expect(patched.status).toBe(200);
    expect(patched.json.user.firstName).toBe("Grace");
    const unknownField = await call(t, "PATCH", "/v1/users/me", { cookie, body: { email: "x@example.com" } });
    expect(unknownField.status).toBe(400);
    expect(unknownField.json.error.details).toBeDefined();
    const empty = await call(t, "PATCH", "/v1/users/me", { cookie, body: {} });
    expect(empty.status).toBe(400);
    const deleted = await call(t, "DELETE", "/v1/users/me", { cookie, body: { password: PASSWORD } });
    expect(deleted.status).toBe(204);
    expect((await call(t, "GET", "/v1/users/me", { cookie })).status).toBe(401);
    expect((await call(t, "POST", "/v1/auth/sign-in", { body: { email, password: PASSWORD } })).status).toBe(
      401,
    );
  });
});

describe("/v1/admin", () => {
  const admin = { authorization: `Bearer ${ADMIN_KEY}` };

  it("401s with a wrong key, with no credentials, and with a key when none is configured", async () => {
    const noKey = makeApp({ env: { ADMIN_API_KEY: "" } });
    const unconfigured = await call(noKey, "GET", "/v1/admin/users", { headers: admin });
    expect(unconfigured.status).toBe(401);
    expect(unconfigured.json.error.code).toBe("UNAUTHENTICATED");
    const wrong = await call(t, "GET", "/v1/admin/users", { headers: { authorization: "Bearer nope" } });
    expect(wrong.status).toBe(401);
    expect(wrong.json.error.code).toBe("UNAUTHENTICATED");
    expect((await call(t, "GET", "/v1/admin/users")).status).toBe(401);
  });

  it("lists with wildcard filters and cursor pagination, reads, revokes sessions and deletes", async () => {
    const domain = `adm${Date.now().toString(36)}.example.org`;
    const made = [];
    for (const name of ["a", "b", "c"]) made.push(await signUp(t, `${name}@${domain}`));
    const page1 = await call(t, "GET", `/v1/admin/users?email=*@${domain}&limit=2`, { headers: admin });
    expect(page1.status).toBe(200);
    expect(page1.json.users.map((u: { email: string }) => u.email)).toEqual([`a@${domain}`, `b@${domain}`]);
    expect(page1.json.nextCursor).toBeTruthy();
    const page2 = await call(
      t,
      "GET",
      `/v1/admin/users?email=*@${domain}&limit=2&cursor=${page1.json.nextCursor}`,
      { headers: admin },
    );
    expect(page2.json.users.map((u: { email: string }) => u.email)).toEqual([`c@${domain}`]);
    expect(page2.json.nextCursor).toBeNull();
    // % is literal, not a wildcard.
    const literal = await call(t, "GET", `/v1/admin/users?email=%25@${domain}`, { headers: admin });
    expect(literal.json.users).toEqual([]);
    const bad = await call(t, "GET", "/v1/admin/users?limit=0&bogus=1", { headers: admin });
    expect(bad.status).toBe(400);
    expect(bad.json.error.code).toBe("VALIDATION_FAILED");

    const target = made[0];
    const one = await call(t, "GET", `/v1/admin/users/${target?.user.id}`, { headers: admin });
    expect(one.json.user.email).toBe(`a@${domain}`);
    const revoked = await call(t, "POST", `/v1/admin/users/${target?.user.id}/sessions/revoke`, {
      headers: admin,
    });
    expect(revoked.json).toEqual({ revoked: 1 });
    expect((await call(t, "GET", "/v1/auth/session", { bearer: target?.token })).status).toBe(401);
    expect((await call(t, "DELETE", `/v1/admin/users/${target?.user.id}`, { headers: admin })).status).toBe(
      204,
    );
    expect((await call(t, "DELETE", `/v1/admin/users/${target?.user.id}`, { headers: admin })).status).toBe(
      404,
    );
    const after = await call(t, "GET", `/v1/admin/users/${target?.user.id}`, { headers: admin });
    expect(after.json.user.deletedAt).not.toBeNull();
    const missing = await call(t, "GET", "/v1/admin/users/0190a0a0-0000-7000-8000-000000000000", {
      headers: admin,
    });
    expect(missing.status).toBe(404);
  });
});

describe("metrics, logs and errors", () => {
  it("/metrics parses and counts requests by route pattern", async () => {
    const { user } = await signUp(t);
    await call(t, "GET", `/v1/admin/users/${user.id}`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } });
    await call(t, "GET", "/nowhere/at/all");
    const res = await t.app.request("/metrics");
    expect(res.status).toBe(200);
    const text = await res.text();
    const samples = text.split("\n").filter((line) => line && !line.startsWith("#"));
    for (const line of samples)
      expect(line).toMatch(/^[a-zA-Z_:][a-zA-Z0-9_:]*(\{.*\})? (-?[0-9.e+-]+|NaN|[+-]Inf)$/);
    expect(text).toContain('http_requests_total{method="GET",route="/v1/admin/users/:id",status="200"} 1');
    expect(text).toContain('http_requests_total{method="POST",route="/v1/auth/sign-up",status="202"} 1');
    expect(text).toContain('route="unmatched",status="404"');
    expect(text).not.toContain(user.id);
    expect(text).toContain("http_request_duration_seconds_bucket");
    expect(text).toContain("db_queries_total");
  });

  it("puts the request id on every log line and never logs secrets", async () => {
    const { token, email } = await signUp(t);
    await call(t, "POST", "/v1/auth/sign-in", {
      body: { email, password: PASSWORD },
      headers: { "x-request-id": "req-12345" },
    });
    await call(t, "POST", "/v1/auth/sign-in", { body: { email, password: "wrong password" } });
    expect(t.logs.length).toBeGreaterThan(3);
    for (const line of t.logs) expect(line.requestId).toEqual(expect.any(String));
    expect(t.logs.some((line) => line.requestId === "req-12345" && line.msg === "request")).toBe(true);
    expect(t.logs.some((line) => line.audit === true && line.msg === "session created")).toBe(true);
    const all = JSON.stringify(t.logs);
    expect(all).not.toContain(token);
    expect(all).not.toContain(PASSWORD);
    expect(all).not.toContain("wrong password");
  });

  it("maps database outages to 503 and unknown errors to 500 without details", async () => {
    expect(toErrorAnswer(new DbError("POOL_EXHAUSTED", "pool")).status).toBe(503);
    expect(toErrorAnswer(new DbError("SERIALIZATION_FAILURE", "x")).status).toBe(503);
    expect(toErrorAnswer(new DbError("DATABASE_ERROR", "SELECT secret FROM x")).message).toBe(
      "Internal error",
    );
    expect(toErrorAnswer(new DbError("PHONE_TAKEN", "x")).status).toBe(409);
    const crash = makeApp();
    crash.app.get("/boom", () => {
      throw new Error("SELECT password_hash FROM users");
    });
    const res = await call(crash, "GET", "/boom");
    expect(res.status).toBe(500);
    expect(res.json.error).toEqual({
      code: "INTERNAL_ERROR",
      message: "Internal error",
      requestId: expect.any(String),
    });
    expect(res.text).not.toContain("password_hash");
  });

  it("answers unknown paths with the JSON 404 shape", async () => {
    const res = await call(t, "GET", `/v1/${uniqueEmail()}`);
    expect(res.status).toBe(404);
    expect(res.json.error.code).toBe("NOT_FOUND");
    expect(res.headers.get("x-request-id")).toBe(res.json.error.requestId);
  });
});
