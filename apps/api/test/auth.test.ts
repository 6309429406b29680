import { randomInt } from "node:crypto";
import { useTestDatabase } from "@repo/db/testing";
import { beforeEach, describe, expect, it } from "vitest";
import { call, makeApp, ORIGIN, PASSWORD, signUp, type TestApp, uniqueEmail } from "./helpers.ts";

const database = useTestDatabase();

async function counts() {
  const { rows } = await database.admin<{ users: string; sessions: string; tokens: string }>(
    `SELECT (SELECT count(*) FROM users) AS users, (SELECT count(*) FROM sessions) AS sessions,
            (SELECT count(*) FROM one_time_tokens) AS tokens`,
  );
  return rows[0];
}

let t: TestApp;
beforeEach(() => {
  t = makeApp();
});

describe("sign-up", () => {
  it("puts mailed links under APP_URL's base path", async () => {
    const based = makeApp({ env: { APP_URL: "http://app.test/base/" } });
    const email = uniqueEmail("based");
    expect(
      (await call(based, "POST", "/v1/auth/sign-up", { body: { email, password: PASSWORD } })).status,
    ).toBe(202);
    expect(based.mailer.last(email.toLowerCase())?.text).toContain(
      "http://app.test/base/verify-email?token=",
    );
  });

  it("answers 202 without a session, mails a link, and the link signs the browser in with a cookie", async () => {
    const email = uniqueEmail("Ada");
    const res = await call(t, "POST", "/v1/auth/sign-up", {
      body: { email, password: PASSWORD, firstName: "Ada" },
      browser: true,
    });
    expect(res.status).toBe(202);
    expect(res.json).toEqual({ status: "check_email" });
    expect(res.headers.get("set-cookie")).toBeNull();
    expect(res.headers.get("x-request-id")).toBeTruthy();
    const mail = t.mailer.last(email.toLowerCase());
    expect(mail?.text).toContain("http://app.test/verify-email?token=");

    const verify = await call(t, "POST", "/v1/auth/email/verify", {
      body: { token: t.tokenFromMail(email.toLowerCase()), password: PASSWORD },
      browser: true,
    });
    expect(verify.status).toBe(200);
    expect(verify.json.user).toMatchObject({ email: email.toLowerCase(), firstName: "Ada" });
    expect(verify.json.user.emailVerifiedAt).not.toBeNull();
    // A browser gets the token only as an HttpOnly cookie, never in a body a script could read.
    expect(verify.json.token).toBeUndefined();
    const cookie = verify.headers.get("set-cookie") ?? "";
    const token = /__Host-session=([^;]+)/.exec(cookie)?.[1];
    expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(cookie).toContain("HttpOnly");
    expect(cookie).toContain("SameSite=Lax");
    expect(cookie).toContain("Secure");
    expect(cookie).toContain("Path=/");
    expect((await call(t, "GET", "/v1/users/me", { cookie: `__Host-session=${token}` })).status).toBe(200);
    // Used once.
    const again = await call(t, "POST", "/v1/auth/email/verify", {
      body: { token: t.tokenFromMail(email.toLowerCase()) },
    });
    expect(again.status).toBe(400);
    expect(again.json.error.code).toBe("TOKEN_INVALID");
  });

  it("rejects bad input with 400/413/415 and writes nothing", async () => {
    const before = await counts();
    const cases = [
      { rawBody: "{not json", code: "INVALID_JSON", status: 400 },
      {
        body: { email: uniqueEmail(), password: PASSWORD, admin: true },
        code: "VALIDATION_FAILED",
        status: 400,
      },
      { body: { email: "not-an-email", password: PASSWORD }, code: "VALIDATION_FAILED", status: 400 },
      { body: { email: uniqueEmail(), password: "short" }, code: "VALIDATION_FAILED", status: 400 },
      {
        body: { email: uniqueEmail(), password: "x".repeat(70_000) },
        code: "PAYLOAD_TOO_LARGE",
        status: 413,
      },
    ];
    for (const { code, status, ...request } of cases) {
      const res = await call(t, "POST", "/v1/auth/sign-up", request);
      expect(res.status, code).toBe(status);
      expect(res.json.error.code).toBe(code);
      // Refused before or after the body limit, a /v1 answer is never cached.
      expect(res.headers.get("cache-control"), code).toBe("no-store");
      expect(res.text).not.toMatch(/stack|SELECT|INSERT|at .*\.ts/);
    }
    const text = await t.app.request("/v1/auth/sign-up", {
      method: "POST",
      headers: { "content-type": "text/plain" },
      body: JSON.stringify({ email: uniqueEmail(), password: PASSWORD }),
    });
    expect(text.status).toBe(415);
    expect(((await text.json()) as { error: { code: string } }).error.code).toBe("UNSUPPORTED_MEDIA_TYPE");
    expect(await counts()).toEqual(before);
  });

  it("rate-limits sign-ups per client address with 429 and Retry-After", async () => {
    const limited = makeApp({ env: { RATE_LIMIT_SIGN_UP_PER_CLIENT: "2" }, address: "198.51.100.77" });
    await signUp(limited);
    await signUp(limited);
    const res = await call(limited, "POST", "/v1/auth/sign-up", {
      body: { email: uniqueEmail(), password: PASSWORD },
    });
    expect(res.status).toBe(429);
    expect(res.json.error.code).toBe("RATE_LIMITED");
    const retryAfter = Number(res.headers.get("retry-after"));
    expect(retryAfter).toBeGreaterThan(0);
    expect(retryAfter).toBeLessThanOrEqual(900);
    // A spoofed X-Forwarded-For does not change the key without TRUST_PROXY.
    const spoofed = await call(limited, "POST", "/v1/auth/sign-up", {
      body: { email: uniqueEmail(), password: PASSWORD },
      headers: { "x-forwarded-for": "192.0.2.99" },
    });
    expect(spoofed.status).toBe(429);
    // Another address has its own window.
    limited.setAddress("198.51.100.78");
    await signUp(limited);
  });
});

describe("sign-in", () => {
  it("answers identically for an unknown email and a wrong password", async () => {
    const { email } = await signUp(t);
    const unknown = await call(t, "POST", "/v1/auth/sign-in", {
      body: { email: uniqueEmail("nobody"), password: PASSWORD },
    });
    const wrong = await call(t, "POST", "/v1/auth/sign-in", { body: { email, password: "wrong password!" } });
    expect(unknown.status).toBe(401);
    expect(wrong.status).toBe(401);
    const strip = (body: { error: Record<string, unknown> }) => ({ ...body.error, requestId: undefined });
    expect(strip(unknown.json)).toEqual(strip(wrong.json));
    expect(unknown.json.error.code).toBe("INVALID_CREDENTIALS");
  });

  it("creates a new session every time and never reuses a presented token", async () => {
    const { email, token } = await signUp(t);
    const res = await call(t, "POST", "/v1/auth/sign-in", {
      body: { email, password: PASSWORD },
      cookie: `__Host-session=${token}`,
      headers: { "x-auth-mode": "bearer" },
    });
    expect(res.status).toBe(200);
    expect(res.json.token).not.toBe(token);
    expect((await call(t, "GET", "/v1/auth/session", { bearer: token })).status).toBe(401);
    const session = await call(t, "GET", "/v1/auth/session", { bearer: res.json.token });
    expect(session.status).toBe(200);
    expect(session.json.user.email).toBe(email);
    expect(session.json.user.lastSignInAt).not.toBeNull();
  });

  it("uses X-Forwarded-For only with TRUST_PROXY, and only the trusted hop", async () => {
    const proxied = makeApp({ env: { TRUST_PROXY: "1", RATE_LIMIT_SIGN_IN_PER_CLIENT: "1" } });
    const body = { email: uniqueEmail(), password: PASSWORD };
    // Addresses of this test only: the rate-limit buckets live in the shared database, and another test may
    // have spent a fixed address's budget already (whatever order the tests run in).
    const hop = `10.${randomInt(256)}.${randomInt(256)}.${randomInt(1, 128)}`;
    const otherHop = hop.replace(/\.\d+$/, (last) => `.${Number(last.slice(1)) + 128}`);
    const first = await call(proxied, "POST", "/v1/auth/sign-in", {
      body,
      headers: { "x-forwarded-for": `1.1.1.1, ${hop}` },
    });
    expect(first.status).toBe(401);
    // The client-controlled left part changes; the proxy-appended entry does not: same key.
    const second = await call(proxied, "POST", "/v1/auth/sign-in", {
      body,
      headers: { "x-forwarded-for": `2.2.2.2, ${hop}` },
    });
    expect(second.status).toBe(429);
    const other = await call(proxied, "POST", "/v1/auth/sign-in", {
      body,
      headers: { "x-forwarded-for": otherHop },
    });
    expect(other.status).toBe(401);
  });
});

describe("sessions", () => {
  it("lists own sessions, deletes only own, revokes the others, signs out", async () => {
    const a = await signUp(t);
    const second = await call(t, "POST", "/v1/auth/sign-in", {
      body: { email: a.email, password: PASSWORD },
    });
    const b = await signUp(t);
    const list = await call(t, "GET", "/v1/auth/sessions", { bearer: a.token });
    expect(list.status).toBe(200);
    expect(list.json.sessions).toHaveLength(2);
    expect(list.json.sessions.filter((s: { current: boolean }) => s.current)).toHaveLength(1);
    const bSessions = await call(t, "GET", "/v1/auth/sessions", { bearer: b.token });
    const bId = bSessions.json.sessions[0].id;
    const foreign = await call(t, "DELETE", `/v1/auth/sessions/${bId}`, { bearer: a.token });
    expect(foreign.status).toBe(404);
    expect((await call(t, "GET", "/v1/auth/session", { bearer: b.token })).status).toBe(200);

    const others = await call(t, "POST", "/v1/auth/sessions/revoke-others", { bearer: a.token });
    expect(others.json).toEqual({ revoked: 1 });
    expect((await call(t, "GET", "/v1/auth/session", { bearer: second.json.token })).status).toBe(401);

    const out = await call(t, "POST", "/v1/auth/sign-out", { cookie: `__Host-session=${a.token}` });
    expect(out.status).toBe(204);
    expect(out.headers.get("set-cookie")).toContain("Max-Age=0");
    const after = await call(t, "GET", "/v1/auth/session", { bearer: a.token });
    expect(after.status).toBe(401);
    expect(after.json.error.code).toBe("UNAUTHENTICATED");
  });

  it("deletes one of its own sessions by id", async () => {
    const a = await signUp(t);
    const second = await call(t, "POST", "/v1/auth/sign-in", {
      body: { email: a.email, password: PASSWORD },
    });
    const list = await call(t, "GET", "/v1/auth/sessions", { bearer: a.token });
    const other = list.json.sessions.find((s: { current: boolean }) => !s.current);
    expect((await call(t, "DELETE", `/v1/auth/sessions/${other.id}`, { bearer: a.token })).status).toBe(204);
    expect((await call(t, "GET", "/v1/auth/session", { bearer: second.json.token })).status).toBe(401);
    expect((await call(t, "DELETE", "/v1/auth/sessions/not-a-uuid", { bearer: a.token })).status).toBe(404);
  });
});

describe("CSRF", () => {
  it("rejects cookie-authenticated unsafe requests from a foreign origin; bearer is unaffected", async () => {
    const { token } = await signUp(t);
    const cookie = `__Host-session=${token}`;
    const foreign = await call(t, "POST", "/v1/auth/sessions/revoke-others", {
      cookie,
      headers: { origin: "https://evil.example" },
    });
    expect(foreign.status).toBe(403);
    expect(foreign.json.error.code).toBe("CSRF_REJECTED");
    const noOrigin = await t.app.request("/v1/auth/sign-out", { method: "POST", headers: { cookie } });
    expect(noOrigin.status).toBe(403);
    const referer = await t.app.request("/v1/auth/sessions/revoke-others", {
      method: "POST",
      headers: { cookie, referer: `${ORIGIN}/settings` },
    });
    expect(referer.status).toBe(200);
    const bearer = await call(t, "POST", "/v1/auth/sessions/revoke-others", {
      bearer: token,
      headers: { origin: "https://evil.example" },
    });
    expect(bearer.status).toBe(200);
    // The session survived the rejected requests.
    expect((await call(t, "GET", "/v1/users/me", { cookie })).status).toBe(200);
  });

  it("does not let a non-bearer Authorization header (replayed Basic credentials) skip the origin check", async () => {
    const { token } = await signUp(t);
    const basic = await call(t, "POST", "/v1/auth/sessions/revoke-others", {
      cookie: `__Host-session=${token}`,
      headers: { origin: "https://evil.example", authorization: "Basic dXNlcjpwYXNz" },
    });
    expect(basic.status).toBe(403);
    expect(basic.json.error.code).toBe("CSRF_REJECTED");
  });

  it("re-sends the session cookie with the session's current expiry (a rolling cookie)", async () => {
    const { token } = await signUp(t);
    const me = await call(t, "GET", "/v1/auth/session", { cookie: `__Host-session=${token}` });
    expect(me.status).toBe(200);
    const cookie = me.headers.get("set-cookie") ?? "";
    expect(cookie).toContain(`__Host-session=${token}`);
    expect(cookie).toContain(`Expires=${new Date(me.json.session.expiresAt).toUTCString()}`);
    expect(cookie).toContain("HttpOnly");
  });
});

describe("client address behind a proxy", () => {
  it("takes the trusted X-Forwarded-For entry without its port, and ignores entries that are not addresses", async () => {
    const proxied = makeApp({ env: { TRUST_PROXY: "1" }, address: "10.0.0.1" });
    const { email } = await signUp(proxied);
    const withPort = await call(proxied, "POST", "/v1/auth/sign-in", {
      body: { email, password: PASSWORD },
      headers: { origin: ORIGIN, "x-forwarded-for": "198.51.100.9:51234" },
    });
    expect(withPort.status).toBe(200);
    expect(withPort.json.session.ipAddress).toBe("198.51.100.9");
    const garbage = await call(proxied, "POST", "/v1/auth/sign-in", {
      body: { email, password: PASSWORD },
      headers: { origin: ORIGIN, "x-forwarded-for": "unknown" },
    });
    expect(garbage.status).toBe(200);
    expect(garbage.json.session.ipAddress).toBe("10.0.0.1");
  });
});

describe("cookies in development", () => {
  it("are not Secure and have no __Host- prefix", async () => {
    const dev = makeApp({ env: { NODE_ENV: "development" } });
    const { email } = await signUp(dev);
    const res = await call(dev, "POST", "/v1/auth/sign-in", {
      body: { email, password: PASSWORD },
      browser: true,
    });
    const cookie = res.headers.get("set-cookie") ?? "";
    expect(cookie).toMatch(/^session=/);
    expect(cookie).not.toContain("Secure");
    expect(cookie).toContain("HttpOnly");
    const token = /^session=([^;]+)/.exec(cookie)?.[1];
    const me = await call(dev, "GET", "/v1/users/me", { cookie: `session=${token}` });
    expect(me.status).toBe(200);
  });
});
