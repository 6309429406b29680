import { useTestDatabase } from "@repo/db/testing";
import { beforeEach, describe, expect, it } from "vitest";
import { call, makeApp, PASSWORD, signUp, type TestApp, uniqueEmail } from "./helpers.ts";

const database = useTestDatabase();

let t: TestApp;
beforeEach(() => {
  t = makeApp();
});

describe("forgot / reset password", () => {
  it("gives the same answer for known and unknown addresses, and mails only the known one", async () => {
    const { email } = await signUp(t);
    const unknownEmail = uniqueEmail("ghost");
    const known = await call(t, "POST", "/v1/auth/password/forgot", { body: { email } });
    const unknown = await call(t, "POST", "/v1/auth/password/forgot", { body: { email: unknownEmail } });
    expect(known.status).toBe(202);
    expect(unknown.status).toBe(202);
    expect(known.json).toEqual(unknown.json);
    expect(t.mailer.last(email)?.text).toContain("http://app.test/reset-password?token=");
    expect(t.mailer.last(unknownEmail)).toBeUndefined();
  });

  it("resets the password in one go: old sessions end, other tokens die, the new password works", async () => {
    const { email, token: oldSession } = await signUp(t);
    const verification = t.tokenFromMail(email);
    await call(t, "POST", "/v1/auth/password/forgot", { body: { email } });
    const resetToken = t.tokenFromMail(email);
    const res = await call(t, "POST", "/v1/auth/password/reset", {
      body: { token: resetToken, password: "a brand new password" },
    });
    expect(res.status).toBe(200);
    expect((await call(t, "GET", "/v1/auth/session", { bearer: oldSession })).status).toBe(401);
    // The verification link mailed at sign-up was retired with the reset.
    const verify = await call(t, "POST", "/v1/auth/email/verify", { body: { token: verification } });
    expect(verify.json.error.code).toBe("TOKEN_INVALID");
    const old = await call(t, "POST", "/v1/auth/sign-in", { body: { email, password: PASSWORD } });
    expect(old.status).toBe(401);
    const fresh = await call(t, "POST", "/v1/auth/sign-in", {
      body: { email, password: "a brand new password" },
    });
    expect(fresh.status).toBe(200);
    const reuse = await call(t, "POST", "/v1/auth/password/reset", {
      body: { token: resetToken, password: "yet another password" },
    });
    expect(reuse.status).toBe(400);
    expect(reuse.json.error.code).toBe("TOKEN_INVALID");
  });

  it("a reset with a too-short password consumes nothing", async () => {
    const { email } = await signUp(t);
    await call(t, "POST", "/v1/auth/password/forgot", { body: { email } });
    const resetToken = t.tokenFromMail(email);
    const bad = await call(t, "POST", "/v1/auth/password/reset", {
      body: { token: resetToken, password: "short" },
    });
    expect(bad.status).toBe(400);
    expect(bad.json.error.code).toBe("VALIDATION_FAILED");
    const { rows } = await database.admin(
      "SELECT count(*)::int AS n FROM one_time_tokens WHERE purpose = 'password_reset' AND used_at IS NOT NULL AND sent_to = $1",
      [email],
    );
    expect(rows[0]?.n).toBe(0);
    const good = await call(t, "POST", "/v1/auth/password/reset", {
      body: { token: resetToken, password: "long enough now" },
    });
    expect(good.status).toBe(200);
  });

  it("of 20 parallel resets with one token exactly one succeeds", async () => {
    const { email } = await signUp(t);
    await call(t, "POST", "/v1/auth/password/forgot", { body: { email } });
    const resetToken = t.tokenFromMail(email);
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        call(t, "POST", "/v1/auth/password/reset", {
          body: { token: resetToken, password: `parallel password ${i}` },
        }),
      ),
    );
    const statuses = results.map((r) => r.status);
    expect(statuses.filter((s) => s === 200)).toHaveLength(1);
    expect(statuses.filter((s) => s !== 200).every((s) => s === 400)).toBe(true);
  });

  it("rate-limits forgot-password per email and network, and per email overall, with Retry-After", async () => {
    const limited = makeApp({
      env: { RATE_LIMIT_EMAIL_PER_RECIPIENT: "2", RATE_LIMIT_EMAIL_PER_RECIPIENT_TOTAL: "3" },
    });
    const email = uniqueEmail("flood");
    const forgot = () => call(limited, "POST", "/v1/auth/password/forgot", { body: { email } });
    limited.setAddress("192.0.2.10");
    expect((await forgot()).status).toBe(202);
    expect((await forgot()).status).toBe(202);
    const perNetwork = await forgot();
    expect(perNetwork.status).toBe(429);
    expect(Number(perNetwork.headers.get("retry-after"))).toBeGreaterThan(0);
    // Another network has its own budget for the address, up to the overall ceiling.
    limited.setAddress("192.0.2.11");
    expect((await forgot()).status).toBe(202);
    limited.setAddress("192.0.2.12");
    expect((await forgot()).status).toBe(429);
  });
});

describe("change password", () => {
  it("keeps only the current session, under a rotated token", async () => {
    const { email, token } = await signUp(t);
    const other = await call(t, "POST", "/v1/auth/sign-in", { body: { email, password: PASSWORD } });
    const wrong = await call(t, "POST", "/v1/auth/password/change", {
      bearer: token,
      body: { currentPassword: "not my password", newPassword: "another good password" },
    });
    expect(wrong.status).toBe(401);
    const res = await call(t, "POST", "/v1/auth/password/change", {
      bearer: token,
      body: { currentPassword: PASSWORD, newPassword: "another good password" },
    });
    expect(res.status).toBe(200);
    expect(res.json.token).not.toBe(token);
    // A bearer client gets the new token in the body, and no cookie.
    expect(res.headers.get("set-cookie")).toBeNull();
    expect((await call(t, "GET", "/v1/auth/session", { bearer: token })).status).toBe(401);
    expect((await call(t, "GET", "/v1/auth/session", { bearer: other.json.token })).status).toBe(401);
    const current = await call(t, "GET", "/v1/auth/session", { bearer: res.json.token });
    expect(current.status).toBe(200);
    expect(current.json.session.id).toBeDefined();
  });
});

describe("change password limits", () => {
  it("counts wrong current passwords per session", async () => {
    const limited = makeApp({ env: { RATE_LIMIT_REAUTH_FAILURES_PER_SESSION: "2" } });
    const { token } = await signUp(limited);
    const statuses: number[] = [];
    for (let i = 0; i < 3; i++) {
      const res = await call(limited, "POST", "/v1/auth/password/change", {
        bearer: token,
        body: { currentPassword: `guess number ${i}`, newPassword: "another good password" },
      });
      statuses.push(res.status);
    }
    expect(statuses).toEqual([401, 401, 429]);
  });
});

describe("magic link", () => {
  it("same answer either way; the link signs in once and verifies the email", async () => {
    const { email } = await signUp(t);
    const known = await call(t, "POST", "/v1/auth/magic-link", { body: { email } });
    const unknown = await call(t, "POST", "/v1/auth/magic-link", { body: { email: uniqueEmail("nope") } });
    expect(known.status).toBe(202);
    expect(unknown.json).toEqual(known.json);
    const link = t.tokenFromMail(email);
    expect(t.mailer.last(email)?.text).toContain("http://app.test/magic-link?token=");
    const res = await call(t, "POST", "/v1/auth/magic-link/verify", { body: { token: link } });
    expect(res.status).toBe(200);
    expect(res.json.session.authMethod).toBe("magic_link");
    expect(res.json.user.emailVerifiedAt).not.toBeNull();
    expect((await call(t, "GET", "/v1/users/me", { bearer: res.json.token })).status).toBe(200);
    const again = await call(t, "POST", "/v1/auth/magic-link/verify", { body: { token: link } });
    expect(again.status).toBe(400);
  });

  it("resend mails a fresh verification link (to a signed-in, unverified account)", async () => {
    const open = makeApp({ env: { SIGN_IN_BEFORE_EMAIL_VERIFICATION: "true" } });
    const email = uniqueEmail("resend");
    const { json } = await call(open, "POST", "/v1/auth/sign-up", { body: { email, password: PASSWORD } });
    const first = open.tokenFromMail(email);
    const res = await call(open, "POST", "/v1/auth/email/verify/resend", { bearer: json.token });
    expect(res.status).toBe(202);
    const second = open.tokenFromMail(email);
    expect(second).not.toBe(first);
    expect(
      (await call(open, "POST", "/v1/auth/email/verify", { body: { token: second, password: PASSWORD } }))
        .status,
    ).toBe(200);
    // The first proof retired every other link.
    const stale = await call(open, "POST", "/v1/auth/email/verify", {
      body: { token: first, password: PASSWORD },
    });
    expect(stale.json.error.code).toBe("TOKEN_INVALID");
    // The password chosen at sign-up survives its own verification.
    expect(
      (await call(open, "POST", "/v1/auth/sign-in", { body: { email, password: PASSWORD } })).status,
    ).toBe(200);
    const done = await call(open, "POST", "/v1/auth/email/verify/resend", {
      bearer: (await call(open, "POST", "/v1/auth/sign-in", { body: { email, password: PASSWORD } })).json
        .token,
    });
    expect(done.json).toEqual({ status: "already_verified" });
  });
});
