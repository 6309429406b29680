// The attacks of the auth-hardening review, each performed against the app on a real database, next to the
// legitimate flow it must not break: account pre-hijacking, the /metrics oracle, IPv6 and lockout gaps in
// rate limits, weak passwords, token hygiene, re-authentication, caching and cross-site requests.
import { createHash } from "node:crypto";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import {
  AccountsService,
  OneTimeTokensService,
  SessionsService,
  sql,
  transaction,
  UsersService,
} from "@repo/db";
import { manualClock, resetClock, setClock, useTestDatabase } from "@repo/db/testing";
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { loadApiConfig } from "../src/config.ts";
import { ADMIN_KEY, call, makeApp, ORIGIN, PASSWORD, signUp, type TestApp, uniqueEmail } from "./helpers.ts";

const database = useTestDatabase();

let t: TestApp;
beforeEach(() => {
  t = makeApp();
});
afterEach(() => {
  resetClock();
});

const ATTACKER_PASSWORD = "attacker owns this 4ccount";
const VICTIM_PASSWORD = "victim's own passphrase 9";

/** The mails sent to an address, oldest first. */
const mailsTo = (app: TestApp, to: string) => app.mailer.messages.filter((m) => m.to === to);

/** The answer without its request id, to compare two answers. */
const shape = (res: { status: number; json: unknown }) => {
  const json = JSON.parse(JSON.stringify(res.json ?? null));
  if (json?.error) delete json.error.requestId;
  return { status: res.status, json };
};

async function signIn(app: TestApp, email: string, password: string) {
  return await call(app, "POST", "/v1/auth/sign-in", { body: { email, password } });
}

describe("account pre-hijacking (item 1)", () => {
  it("sign-up grants nothing before the address is proven; a password sign-in re-mails the link", async () => {
    const email = uniqueEmail("victim");
    const res = await call(t, "POST", "/v1/auth/sign-up", { body: { email, password: ATTACKER_PASSWORD } });
    expect(shape(res)).toEqual({ status: 202, json: { status: "check_email" } });
    expect(res.headers.get("set-cookie")).toBeNull();
    const { rows } = await database.admin<{ sessions: string }>(
      "SELECT count(*) AS sessions FROM sessions s JOIN users u ON u.id = s.user_id WHERE u.email = $1",
      [email],
    );
    expect(rows[0]?.sessions).toBe("0");
    // The right password of an unproven account answers exactly like a wrong one...
    const right = await signIn(t, email, ATTACKER_PASSWORD);
    const wrong = await signIn(t, email, "not the password at all");
    expect(shape(right)).toEqual(shape(wrong));
    expect(right.status).toBe(401);
    // ...and sends the address a fresh link (the wrong one sends nothing).
    const links = mailsTo(t, email).filter((m) => m.subject === "Confirm your email address");
    expect(links).toHaveLength(2);
    expect(links[1]?.text).toContain("tried to sign in");
    // The fresh link confirms the same registration: used, it signs in and the password works.
    const verified = await call(t, "POST", "/v1/auth/email/verify", {
      body: { token: t.tokenFromMail(email), password: ATTACKER_PASSWORD },
    });
    expect(verified.status).toBe(200);
    expect((await signIn(t, email, ATTACKER_PASSWORD)).status).toBe(200);
  });

  it("re-mailing on an unverified sign-in is rate limited per recipient", async () => {
    const app = makeApp({ env: { RATE_LIMIT_EMAIL_PER_RECIPIENT: "2" } });
    const email = uniqueEmail("spam");
    await call(app, "POST", "/v1/auth/sign-up", { body: { email, password: ATTACKER_PASSWORD } });
    for (let i = 0; i < 5; i++) expect((await signIn(app, email, ATTACKER_PASSWORD)).status).toBe(401);
    // The sign-up's mail and one re-mail: the recipient's budget of 2 is spent, silently.
    expect(mailsTo(app, email)).toHaveLength(2);
  });

  it("a newer sign-up for an unverified address answers the same, and only its password survives", async () => {
    const email = uniqueEmail("owner");
    const first = await call(t, "POST", "/v1/auth/sign-up", { body: { email, password: ATTACKER_PASSWORD } });
    const attackerLink = t.tokenFromMail(email);
    const second = await call(t, "POST", "/v1/auth/sign-up", { body: { email, password: VICTIM_PASSWORD } });
    expect(shape(second)).toEqual(shape(first));
    const victimLink = t.tokenFromMail(email);
    expect(victimLink).not.toBe(attackerLink);
    const verified = await call(t, "POST", "/v1/auth/email/verify", {
      body: { token: victimLink, password: VICTIM_PASSWORD },
    });
    expect(verified.status).toBe(200);
    // Once one registration completed, the other's link is dead: it can no longer set its password.
    const stale = await call(t, "POST", "/v1/auth/email/verify", {
      body: { token: attackerLink, password: ATTACKER_PASSWORD },
    });
    expect(stale.json.error.code).toBe("TOKEN_INVALID");
    expect((await signIn(t, email, ATTACKER_PASSWORD)).status).toBe(401);
    expect((await signIn(t, email, VICTIM_PASSWORD)).status).toBe(200);
  });

  it("sign-up says nothing about an address: new, unverified and verified answer alike; the owner is told", async () => {
    const fresh = uniqueEmail("new");
    const unverified = uniqueEmail("pending");
    await call(t, "POST", "/v1/auth/sign-up", { body: { email: unverified, password: PASSWORD } });
    const { email: verified } = await signUp(t);
    const before = await database.admin<{ users: string }>("SELECT count(*) AS users FROM users");
    const answers = [];
    for (const email of [fresh, unverified, verified]) {
      answers.push(
        shape(await call(t, "POST", "/v1/auth/sign-up", { body: { email, password: ATTACKER_PASSWORD } })),
      );
    }
    expect(answers[1]).toEqual(answers[0]);
    expect(answers[2]).toEqual(answers[0]);
    const after = await database.admin<{ users: string }>("SELECT count(*) AS users FROM users");
    expect(Number(after.rows[0]?.users)).toBe(Number(before.rows[0]?.users) + 1);
    const notice = t.mailer.last(verified);
    expect(notice?.subject).toBe("Someone tried to sign up with your address");
    expect(notice?.text).not.toMatch(/token=/);
    // The verified owner's password is untouched.
    expect((await signIn(t, verified, PASSWORD)).status).toBe(200);
    expect((await signIn(t, verified, ATTACKER_PASSWORD)).status).toBe(401);
  });

  describe("with SIGN_IN_BEFORE_EMAIL_VERIFICATION=true", () => {
    let open: TestApp;
    beforeEach(() => {
      open = makeApp({ env: { SIGN_IN_BEFORE_EMAIL_VERIFICATION: "true" } });
    });

    it("a new address gets a session at once; an existing one gets the same 202 as in the default mode", async () => {
      const email = uniqueEmail("quick");
      const res = await call(open, "POST", "/v1/auth/sign-up", { body: { email, password: PASSWORD } });
      expect(res.status).toBe(201);
      expect(res.json.token).toMatch(/^[A-Za-z0-9_-]{43}$/);
      expect((await signIn(open, email, PASSWORD)).status).toBe(200);
      const again = await call(open, "POST", "/v1/auth/sign-up", {
        body: { email, password: ATTACKER_PASSWORD },
      });
      expect(shape(again)).toEqual({ status: 202, json: { status: "check_email" } });
      expect((await signIn(open, email, ATTACKER_PASSWORD)).status).toBe(401);
    });

    for (const path of ["magic link", "password reset"] as const) {
      it(`the owner's first proof by ${path} ends the attacker's session, password and links`, async () => {
        const email = uniqueEmail("target");
        const attacker = await call(open, "POST", "/v1/auth/sign-up", {
          body: { email, password: ATTACKER_PASSWORD },
        });
        expect(attacker.status).toBe(201);
        const attackerLink = open.tokenFromMail(email);
        let ownerSession: string;
        if (path === "magic link") {
          await call(open, "POST", "/v1/auth/magic-link", { body: { email } });
          const used = await call(open, "POST", "/v1/auth/magic-link/verify", {
            body: { token: open.tokenFromMail(email) },
          });
          expect(used.status).toBe(200);
          expect(used.json.user.emailVerifiedAt).not.toBeNull();
          ownerSession = used.json.token;
        } else {
          await call(open, "POST", "/v1/auth/password/forgot", { body: { email } });
          const reset = await call(open, "POST", "/v1/auth/password/reset", {
            body: { token: open.tokenFromMail(email), password: VICTIM_PASSWORD },
          });
          expect(reset.status).toBe(200);
          expect(reset.json.user.emailVerifiedAt).not.toBeNull();
          ownerSession = (await signIn(open, email, VICTIM_PASSWORD)).json.token;
        }
        expect((await call(open, "GET", "/v1/auth/session", { bearer: attacker.json.token })).status).toBe(
          401,
        );
        expect((await signIn(open, email, ATTACKER_PASSWORD)).status).toBe(401);
        const stale = await call(open, "POST", "/v1/auth/email/verify", { body: { token: attackerLink } });
        expect(stale.json.error.code).toBe("TOKEN_INVALID");
        expect((await call(open, "GET", "/v1/auth/session", { bearer: ownerSession })).status).toBe(200);
      });
    }
  });

  it("in the default mode a magic link retires a pending registration, whose password never works", async () => {
    const email = uniqueEmail("linked");
    await call(t, "POST", "/v1/auth/sign-up", { body: { email, password: ATTACKER_PASSWORD } });
    const pending = t.tokenFromMail(email);
    await call(t, "POST", "/v1/auth/magic-link", { body: { email } });
    const used = await call(t, "POST", "/v1/auth/magic-link/verify", {
      body: { token: t.tokenFromMail(email) },
    });
    expect(used.status).toBe(200);
    expect((await call(t, "POST", "/v1/auth/email/verify", { body: { token: pending } })).status).toBe(400);
    expect((await signIn(t, email, ATTACKER_PASSWORD)).status).toBe(401);
  });
});

describe("pre-hijacking, the races and edges a review found (item 1)", () => {
  it("a link an attacker's later sign-up mailed the owner cannot adopt the attacker's password", async () => {
    const email = uniqueEmail("owner");
    await call(t, "POST", "/v1/auth/sign-up", { body: { email, password: VICTIM_PASSWORD } });
    const ownersLink = t.tokenFromMail(email);
    // The attacker signs up the same address later: the newest mail in the owner's box is the attacker's.
    await call(t, "POST", "/v1/auth/sign-up", { body: { email, password: ATTACKER_PASSWORD } });
    const attackersLink = t.tokenFromMail(email);
    const bare = await call(t, "POST", "/v1/auth/email/verify", { body: { token: attackersLink } });
    expect(bare.status).toBe(400);
    expect(bare.json.error.details.password).toBeDefined();
    // The owner clicks it and types their own password: refused, nothing proven, no session.
    const clicked = await call(t, "POST", "/v1/auth/email/verify", {
      body: { token: attackersLink, password: VICTIM_PASSWORD },
    });
    expect(clicked.status).toBe(401);
    expect(clicked.json.error.message).toMatch(/sign-up this link confirms/);
    const { rows } = await database.admin<{ verified: boolean; sessions: string }>(
      `SELECT u.email_verified_at IS NOT NULL AS verified,
              (SELECT count(*) FROM sessions s WHERE s.user_id = u.id) AS sessions
       FROM users u WHERE u.email = $1`,
      [email],
    );
    expect(rows[0]).toEqual({ verified: false, sessions: "0" });
    // The attacker's later sign-up did not kill the owner's own link, which completes with their password.
    const own = await call(t, "POST", "/v1/auth/email/verify", {
      body: { token: ownersLink, password: VICTIM_PASSWORD },
    });
    expect(own.status).toBe(200);
    expect((await signIn(t, email, ATTACKER_PASSWORD)).status).toBe(401);
    expect((await signIn(t, email, VICTIM_PASSWORD)).status).toBe(200);
  });

  it("a link allows a few password guesses in all, even in parallel, then dies", async () => {
    const email = uniqueEmail("guessed");
    await call(t, "POST", "/v1/auth/sign-up", { body: { email, password: VICTIM_PASSWORD } });
    const link = t.tokenFromMail(email);
    const guesses = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        call(t, "POST", "/v1/auth/email/verify", { body: { token: link, password: `guess number ${i}!` } }),
      ),
    );
    // Each guess is reserved before argon2 runs: 5 are checked (401), the rest find the link spent (400).
    expect(guesses.filter((g) => g.status === 401)).toHaveLength(5);
    expect(guesses.filter((g) => g.status === 400 && g.json.error.code === "TOKEN_INVALID")).toHaveLength(15);
    const right = await call(t, "POST", "/v1/auth/email/verify", {
      body: { token: link, password: VICTIM_PASSWORD },
    });
    expect(right.json.error.code).toBe("TOKEN_INVALID");
    // Below the limit, the right password still works after wrong ones.
    await call(t, "POST", "/v1/auth/sign-up", { body: { email, password: VICTIM_PASSWORD } });
    const fresh = t.tokenFromMail(email);
    for (let i = 0; i < 4; i++) {
      await call(t, "POST", "/v1/auth/email/verify", { body: { token: fresh, password: "not it at all" } });
    }
    const last = await call(t, "POST", "/v1/auth/email/verify", {
      body: { token: fresh, password: VICTIM_PASSWORD },
    });
    expect(last.status).toBe(200);
  });

  it("a first proof by magic link clears names and picture set before it", async () => {
    const open = makeApp({ env: { SIGN_IN_BEFORE_EMAIL_VERIFICATION: "true" } });
    const email = uniqueEmail("renamed");
    const attacker = await call(open, "POST", "/v1/auth/sign-up", {
      body: { email, password: ATTACKER_PASSWORD, firstName: "Call +1-555-0100", lastName: "support" },
    });
    await call(open, "PATCH", "/v1/users/me", {
      bearer: attacker.json.token,
      body: { avatarUrl: "https://evil.example/pixel.png" },
    });
    await call(open, "POST", "/v1/auth/magic-link", { body: { email } });
    const used = await call(open, "POST", "/v1/auth/magic-link/verify", {
      body: { token: open.tokenFromMail(email) },
    });
    expect(used.json.user).toMatchObject({ firstName: null, lastName: null, avatarUrl: null });
    // In the default mode an unproven sign-up's names are not on the account at all.
    const quiet = uniqueEmail("quiet");
    await call(t, "POST", "/v1/auth/sign-up", {
      body: { email: quiet, password: ATTACKER_PASSWORD, firstName: "Evil" },
    });
    await call(t, "POST", "/v1/auth/magic-link", { body: { email: quiet } });
    const proven = await call(t, "POST", "/v1/auth/magic-link/verify", {
      body: { token: t.tokenFromMail(quiet) },
    });
    expect(proven.json.user.firstName).toBeNull();
  });

  it("the names of the registration that completes replace those of earlier ones", async () => {
    const email = uniqueEmail("named");
    await call(t, "POST", "/v1/auth/sign-up", {
      body: { email, password: ATTACKER_PASSWORD, firstName: "Send", lastName: "gift cards to evil.example" },
    });
    await call(t, "POST", "/v1/auth/sign-up", {
      body: { email, password: VICTIM_PASSWORD, firstName: "Ada", lastName: "Lovelace" },
    });
    const verified = await call(t, "POST", "/v1/auth/email/verify", {
      body: { token: t.tokenFromMail(email), password: VICTIM_PASSWORD },
    });
    expect(verified.json.user).toMatchObject({ firstName: "Ada", lastName: "Lovelace" });
  });

  it("the first proof removes provider accounts linked before it", async () => {
    const open = makeApp({ env: { SIGN_IN_BEFORE_EMAIL_VERIFICATION: "true" } });
    const email = uniqueEmail("linked-early");
    const attacker = await call(open, "POST", "/v1/auth/sign-up", {
      body: { email, password: ATTACKER_PASSWORD },
    });
    await AccountsService.link({
      userId: attacker.json.user.id,
      provider: "github",
      providerAccountId: "evil-1",
    });
    await call(open, "POST", "/v1/auth/magic-link", { body: { email } });
    await call(open, "POST", "/v1/auth/magic-link/verify", { body: { token: open.tokenFromMail(email) } });
    const { rows } = await database.admin<{ n: string }>(
      "SELECT count(*) AS n FROM accounts WHERE user_id = $1",
      [attacker.json.user.id],
    );
    expect(rows[0]?.n).toBe("0");
  });

  it("a sign-in whose password check races a reset does not outlive the reset", async () => {
    const { email, user } = await signUp(t);
    const waiting = async () => {
      const { rows } = await database.admin<{ n: number }>(
        "SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
      );
      return rows[0]?.n ?? 0;
    };
    const prepared = await UsersService.preparePassword({ password: VICTIM_PASSWORD, email });
    let pending: ReturnType<typeof signIn> | undefined;
    // The reset's transaction holds the user row while the sign-in (old password, checked already) waits.
    await transaction(async (tx) => {
      await tx.execute(sql`SELECT 1 FROM users WHERE id = ${user.id} FOR UPDATE`);
      pending = signIn(t, email, PASSWORD);
      for (let i = 0; i < 100 && (await waiting()) === 0; i++) await new Promise((r) => setTimeout(r, 20));
      expect(await waiting()).toBeGreaterThan(0);
      await UsersService.setPassword({ id: user.id, password: prepared }, { tx });
      await SessionsService.revokeAllForUser({ userId: user.id }, { tx });
    });
    const raced = await pending;
    expect(raced?.status).toBe(401);
    const { rows } = await database.admin<{ n: string }>(
      "SELECT count(*) AS n FROM sessions WHERE user_id = $1 AND status = 'active'",
      [user.id],
    );
    expect(rows[0]?.n).toBe("0");
  });

  it("links used at the same moment as a reset queue on the user instead of deadlocking", async () => {
    const { email } = await signUp(t);
    const statuses: number[] = [];
    for (let round = 0; round < 8; round++) {
      await call(t, "POST", "/v1/auth/magic-link", { body: { email } });
      const magic = t.tokenFromMail(email);
      await call(t, "POST", "/v1/auth/password/forgot", { body: { email } });
      const reset = t.tokenFromMail(email);
      const answers = await Promise.all([
        call(t, "POST", "/v1/auth/magic-link/verify", { body: { token: magic } }),
        call(t, "POST", "/v1/auth/password/reset", {
          body: { token: reset, password: `round ${round} passphrase` },
        }),
      ]);
      statuses.push(...answers.map((a) => a.status));
    }
    expect(statuses.filter((status) => status >= 500)).toEqual([]);
  });

  it("someone else's sign-ups cannot use up the owner's mail budget or keep replacing links", async () => {
    const app = makeApp({ env: { RATE_LIMIT_EMAIL_PER_RECIPIENT: "3" }, address: "198.51.100.71" });
    const { email } = await signUp(app);
    app.setAddress("192.0.2.70");
    const before = await database.admin<{ n: string }>("SELECT count(*) AS n FROM one_time_tokens");
    for (let i = 0; i < 6; i++) {
      const res = await call(app, "POST", "/v1/auth/sign-up", {
        body: { email, password: ATTACKER_PASSWORD },
      });
      expect(res.status).toBe(202);
    }
    // Past the budget nothing is written and nothing mailed, with the same answer.
    const notices = mailsTo(app, email).filter(
      (m) => m.subject === "Someone tried to sign up with your address",
    );
    expect(notices).toHaveLength(3);
    const after = await database.admin<{ n: string }>("SELECT count(*) AS n FROM one_time_tokens");
    expect(after.rows[0]?.n).toBe(before.rows[0]?.n);
    // The owner, from their own network, still gets a reset link and a magic link.
    app.setAddress("198.51.100.71");
    expect((await call(app, "POST", "/v1/auth/password/forgot", { body: { email } })).status).toBe(202);
    expect(app.mailer.last(email)?.subject).toBe("Reset your password");
    expect((await call(app, "POST", "/v1/auth/magic-link", { body: { email } })).status).toBe(202);
    expect(app.mailer.last(email)?.subject).toBe("Your sign-in link");
  });

  it("a pre-proof session changing the password does not retire the owner's proof links", async () => {
    const open = makeApp({
      env: { SIGN_IN_BEFORE_EMAIL_VERIFICATION: "true", RATE_LIMIT_REAUTH_FAILURES_PER_SESSION: "3" },
    });
    const email = uniqueEmail("keeps-links");
    const attacker = await call(open, "POST", "/v1/auth/sign-up", {
      body: { email, password: ATTACKER_PASSWORD },
    });
    await call(open, "POST", "/v1/auth/password/forgot", { body: { email } });
    const ownerReset = open.tokenFromMail(email);
    await call(open, "POST", "/v1/auth/magic-link", { body: { email } });
    const ownerLink = open.tokenFromMail(email);
    // Successful changes are limited per session too (each mails the owner a notice).
    let session = attacker.json.token as string;
    let current = ATTACKER_PASSWORD;
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) {
      const next = `attacker passphrase number ${i}`;
      const res = await call(open, "POST", "/v1/auth/password/change", {
        bearer: session,
        body: { currentPassword: current, newPassword: next },
      });
      statuses.push(res.status);
      if (res.status === 200) {
        session = res.json.token;
        current = next;
      }
    }
    expect(statuses).toEqual([200, 200, 200, 429]);
    const changed = { json: { token: session } };
    expect(await OneTimeTokensService.peek(ownerReset, "password_reset")).not.toBeNull();
    const used = await call(open, "POST", "/v1/auth/magic-link/verify", { body: { token: ownerLink } });
    expect(used.status).toBe(200);
    expect((await call(open, "GET", "/v1/auth/session", { bearer: changed.json.token })).status).toBe(401);
  });
});

describe("/metrics (item 2)", () => {
  it("is not public in production: 404 without METRICS_TOKEN, bearer-only with it", async () => {
    const prod = makeApp({ env: { NODE_ENV: "production" } });
    const hidden = await prod.app.request("/metrics");
    expect(hidden.status).toBe(404);
    expect(await hidden.text()).not.toContain("password_verifications_total");
    const token = "metrics-token-0123456789abcdef";
    const guarded = makeApp({ env: { NODE_ENV: "production", METRICS_TOKEN: token } });
    expect((await guarded.app.request("/metrics")).status).toBe(401);
    const wrong = await guarded.app.request("/metrics", { headers: { authorization: "Bearer nope" } });
    expect(wrong.status).toBe(401);
    const scraped = await guarded.app.request("/metrics", { headers: { authorization: `Bearer ${token}` } });
    expect(scraped.status).toBe(200);
    expect(await scraped.text()).toContain("password_verifications_total");
  });

  it("refuses a METRICS_TOKEN shorter than 16 characters at start", () => {
    expect(() => loadApiConfig({ METRICS_TOKEN: "short" })).toThrow(/METRICS_TOKEN/);
  });
});

describe("rate-limit keys (item 3)", () => {
  it("count an IPv6 client by its /64 and an IPv4-mapped address as IPv4", async () => {
    const app = makeApp({ env: { RATE_LIMIT_SIGN_IN_PER_CLIENT: "2" }, address: "2001:db8:1:2::1" });
    const body = { email: uniqueEmail(), password: "whatever it may be" };
    expect((await call(app, "POST", "/v1/auth/sign-in", { body })).status).toBe(401);
    // Another address in the same /64 is the same client.
    app.setAddress("2001:db8:1:2:ffff:ffff:ffff:fffe");
    expect((await call(app, "POST", "/v1/auth/sign-in", { body })).status).toBe(401);
    app.setAddress("2001:0db8:0001:0002::abcd");
    expect((await call(app, "POST", "/v1/auth/sign-in", { body })).status).toBe(429);
    // The next /64 is another client.
    app.setAddress("2001:db8:1:3::1");
    expect((await call(app, "POST", "/v1/auth/sign-in", { body })).status).toBe(401);
    // IPv4 through a dual-stack socket is the IPv4 address.
    app.setAddress("198.51.100.5");
    expect((await call(app, "POST", "/v1/auth/sign-in", { body })).status).toBe(401);
    expect((await call(app, "POST", "/v1/auth/sign-in", { body })).status).toBe(401);
    app.setAddress("::ffff:198.51.100.5");
    expect((await call(app, "POST", "/v1/auth/sign-in", { body })).status).toBe(429);
  });

  it("key every spelling of an IPv4 client alike, and accept a zone id", async () => {
    const app = makeApp({ env: { RATE_LIMIT_SIGN_IN_PER_CLIENT: "3" }, address: "192.0.2.33" });
    const body = { email: uniqueEmail(), password: "whatever it may be" };
    for (const address of ["192.0.2.33", "::ffff:c000:221", "0:0:0:0:0:ffff:192.0.2.33"]) {
      app.setAddress(address);
      expect((await call(app, "POST", "/v1/auth/sign-in", { body })).status).toBe(401);
    }
    app.setAddress("64:ff9b::192.0.2.33");
    expect((await call(app, "POST", "/v1/auth/sign-in", { body })).status).toBe(429);
    // Another IPv4 client is another bucket, even spelled as IPv6.
    app.setAddress("::ffff:192.0.2.34");
    expect((await call(app, "POST", "/v1/auth/sign-in", { body })).status).toBe(401);
    // A link-local peer with a zone id signs in (the zone is not part of the address stored).
    const zoned = makeApp({ address: "fe80::1%eth0" });
    const { email } = await signUp(zoned);
    const res = await call(zoned, "POST", "/v1/auth/sign-in", { body: { email, password: PASSWORD } });
    expect(res.status).toBe(200);
    expect(res.json.session.ipAddress).toBe("fe80::1");
  });

  it("stores an IPv4-mapped peer as IPv4 on the session", async () => {
    const app = makeApp({ address: "::ffff:203.0.113.9" });
    const { token } = await signUp(app);
    const session = await call(app, "GET", "/v1/auth/session", { bearer: token });
    expect(session.json.session.ipAddress).toBe("203.0.113.9");
  });
});

describe("targeted lockout (item 4)", () => {
  it("30 failures from 10 addresses do not stop the owner's correct password from another", async () => {
    const { email } = await signUp(t);
    for (let i = 0; i < 10; i++) {
      t.setAddress(`192.0.2.${10 + i}`);
      for (let j = 0; j < 3; j++) expect((await signIn(t, email, "guess number one")).status).toBe(401);
    }
    t.setAddress("198.51.100.200");
    expect((await signIn(t, email, PASSWORD)).status).toBe(200);
  });

  it("the tight limit is per (account, network), counts failures, and a success clears them", async () => {
    const app = makeApp({ env: { RATE_LIMIT_SIGN_IN_FAILURES_PER_ACCOUNT_NETWORK: "3" } });
    const { email } = await signUp(app);
    for (let i = 0; i < 2; i++) expect((await signIn(app, email, "wrong guess here")).status).toBe(401);
    // Successes are not failures, and clear this network's count.
    for (let i = 0; i < 5; i++) expect((await signIn(app, email, PASSWORD)).status).toBe(200);
    for (let i = 0; i < 3; i++) expect((await signIn(app, email, "wrong guess here")).status).toBe(401);
    const blocked = await signIn(app, email, PASSWORD);
    expect(blocked.status).toBe(429);
    expect(blocked.json.error.code).toBe("RATE_LIMITED");
    expect(Number(blocked.headers.get("retry-after"))).toBeGreaterThan(0);
    app.setAddress("198.51.100.201");
    expect((await signIn(app, email, PASSWORD)).status).toBe(200);
  });

  it("parallel guesses cannot slip under the tight limit", async () => {
    const app = makeApp({ env: { RATE_LIMIT_SIGN_IN_FAILURES_PER_ACCOUNT_NETWORK: "5" } });
    const { email } = await signUp(app);
    const answers = await Promise.all(
      Array.from({ length: 20 }, () => signIn(app, email, "parallel wrong guess")),
    );
    expect(answers.filter((a) => a.status === 401)).toHaveLength(5);
    expect(answers.filter((a) => a.status === 429)).toHaveLength(15);
  });

  it("past the per-account cap password sign-in needs a mailed link, said in the answer and mailed once", async () => {
    const app = makeApp({
      env: {
        RATE_LIMIT_SIGN_IN_FAILURES_PER_ACCOUNT: "4",
        RATE_LIMIT_SIGN_IN_FAILURES_PER_ACCOUNT_NETWORK: "100",
      },
    });
    const { email } = await signUp(app);
    const ghost = uniqueEmail("ghost");
    for (let i = 0; i < 4; i++) {
      app.setAddress(`192.0.2.${50 + i}`);
      expect((await signIn(app, email, "botnet guess pw")).status).toBe(401);
      expect((await signIn(app, ghost, "botnet guess pw")).status).toBe(401);
    }
    app.setAddress("198.51.100.202");
    const capped = await signIn(app, email, PASSWORD);
    expect(capped.status).toBe(429);
    expect(capped.json.error.code).toBe("SIGN_IN_LINK_REQUIRED");
    expect(capped.json.error.message).toMatch(/sign-in link/);
    // An address without an account answers the same: the cap tells nothing.
    expect(shape(await signIn(app, ghost, PASSWORD))).toEqual(shape(capped));
    expect((await signIn(app, email, PASSWORD)).status).toBe(429);
    const notices = mailsTo(app, email).filter((m) => m.subject === "Many failed sign-ins on your account");
    expect(notices).toHaveLength(1);
    expect(mailsTo(app, ghost)).toHaveLength(0);
    // The mailed link signs the owner in; resets are never blocked by sign-in failures.
    const used = await call(app, "POST", "/v1/auth/magic-link/verify", {
      body: { token: app.tokenFromMail(email) },
    });
    expect(used.status).toBe(200);
    expect((await call(app, "POST", "/v1/auth/password/forgot", { body: { email } })).status).toBe(202);
    const reset = await call(app, "POST", "/v1/auth/password/reset", {
      body: { token: app.tokenFromMail(email), password: VICTIM_PASSWORD },
    });
    expect(reset.status).toBe(200);
  });

  it("password change has its own limit per session, untouched by sign-in failures", async () => {
    const app = makeApp({
      env: {
        RATE_LIMIT_SIGN_IN_FAILURES_PER_ACCOUNT_NETWORK: "2",
        RATE_LIMIT_REAUTH_FAILURES_PER_SESSION: "3",
      },
    });
    const { email, token } = await signUp(app);
    for (let i = 0; i < 5; i++) await signIn(app, email, "attacker guessing");
    // The owner's session still changes the password despite the account's sign-in failures.
    const changed = await call(app, "POST", "/v1/auth/password/change", {
      bearer: token,
      body: { currentPassword: PASSWORD, newPassword: VICTIM_PASSWORD },
    });
    expect(changed.status).toBe(200);
    const session = changed.json.token;
    // A stolen session gets a few guesses of the current password, then 429.
    for (let i = 0; i < 2; i++) {
      const guess = await call(app, "POST", "/v1/auth/password/change", {
        bearer: session,
        body: { currentPassword: "a wrong guess!!", newPassword: ATTACKER_PASSWORD },
      });
      expect(guess.status).toBe(401);
    }
    const limited = await call(app, "POST", "/v1/auth/password/change", {
      bearer: session,
      body: { currentPassword: VICTIM_PASSWORD, newPassword: ATTACKER_PASSWORD },
    });
    expect(limited.status).toBe(429);
  });
});

describe("weak passwords (item 6)", () => {
  let rangeServer: Server;
  let rangeUrl: string;
  const breached = "a perfectly fine phrase 77";
  beforeAll(async () => {
    // A local stand-in for the k-anonymity range API: it knows one breached password.
    const sha1 = createHash("sha1").update(breached).digest("hex").toUpperCase();
    rangeServer = createServer((req, res) => {
      const prefix = req.url?.split("/range/")[1] ?? "";
      res.end(
        prefix === sha1.slice(0, 5) ? `${sha1.slice(5)}:42\r\n0123456789ABCDEF0123456789ABCDEF012:0` : "",
      );
    });
    await new Promise<void>((resolve) => rangeServer.listen(0, "127.0.0.1", resolve));
    rangeUrl = `http://127.0.0.1:${(rangeServer.address() as AddressInfo).port}`;
  });
  afterAll(async () => {
    rangeServer.closeAllConnections();
    await new Promise((resolve) => rangeServer.close(resolve));
  });

  it("refuses common passwords and the email's name at sign-up, change and reset, writing nothing", async () => {
    const before = await database.admin<{ n: string }>("SELECT count(*) AS n FROM users");
    const common = await call(t, "POST", "/v1/auth/sign-up", {
      body: { email: uniqueEmail(), password: "password123" },
    });
    expect(common.status).toBe(400);
    expect(common.json.error.code).toBe("PASSWORD_TOO_WEAK");
    expect(common.json.error.message).toMatch(/common/);
    const named = await call(t, "POST", "/v1/auth/sign-up", {
      body: { email: "grace.hopper@example.com", password: "Grace.Hopper forever" },
    });
    expect(named.json.error.code).toBe("PASSWORD_TOO_WEAK");
    expect(named.json.error.details.password).toMatch(/email/);
    const after = await database.admin<{ n: string }>("SELECT count(*) AS n FROM users");
    expect(after.rows[0]?.n).toBe(before.rows[0]?.n);

    const { email, token } = await signUp(t);
    const change = await call(t, "POST", "/v1/auth/password/change", {
      bearer: token,
      body: { currentPassword: PASSWORD, newPassword: "qwertyuiop" },
    });
    expect(change.json.error.code).toBe("PASSWORD_TOO_WEAK");
    await call(t, "POST", "/v1/auth/password/forgot", { body: { email } });
    const resetToken = t.tokenFromMail(email);
    const reset = await call(t, "POST", "/v1/auth/password/reset", {
      body: { token: resetToken, password: "iloveyou1" },
    });
    expect(reset.json.error.code).toBe("PASSWORD_TOO_WEAK");
    // Neither consumed anything: the old password and the reset link still work.
    expect((await signIn(t, email, PASSWORD)).status).toBe(200);
    const good = await call(t, "POST", "/v1/auth/password/reset", {
      body: { token: resetToken, password: VICTIM_PASSWORD },
    });
    expect(good.status).toBe(200);
  });

  it("refuses a breached password when PASSWORD_BREACH_CHECK_URL is set, and fails open when it is down", async () => {
    const app = makeApp({ env: { PASSWORD_BREACH_CHECK_URL: rangeUrl } });
    const refused = await call(app, "POST", "/v1/auth/sign-up", {
      body: { email: uniqueEmail(), password: breached },
    });
    expect(refused.status).toBe(400);
    expect(refused.json.error.details.password).toMatch(/breach/);
    expect(
      (await call(app, "POST", "/v1/auth/sign-up", { body: { email: uniqueEmail(), password: PASSWORD } }))
        .status,
    ).toBe(202);
    const down = makeApp({
      env: { PASSWORD_BREACH_CHECK_URL: "http://127.0.0.1:9", PASSWORD_BREACH_CHECK_TIMEOUT_MS: "500" },
    });
    const accepted = await call(down, "POST", "/v1/auth/sign-up", {
      body: { email: uniqueEmail(), password: breached },
    });
    expect(accepted.status).toBe(202);
    expect(down.logs.some((line) => line.msg === "password breach check unavailable")).toBe(true);
  });
});

describe("pending links die with a password change or an address change (item 9)", () => {
  it("a password change retires every pending link, not only resets", async () => {
    const { email, token } = await signUp(t);
    await call(t, "POST", "/v1/auth/magic-link", { body: { email } });
    const magic = t.tokenFromMail(email);
    const changed = await call(t, "POST", "/v1/auth/password/change", {
      bearer: token,
      body: { currentPassword: PASSWORD, newPassword: VICTIM_PASSWORD },
    });
    expect(changed.status).toBe(200);
    const used = await call(t, "POST", "/v1/auth/magic-link/verify", { body: { token: magic } });
    expect(used.json.error.code).toBe("TOKEN_INVALID");
  });

  it("a reset link works only for the address it was sent to, and an address change retires it", async () => {
    const { email, user } = await signUp(t);
    await call(t, "POST", "/v1/auth/password/forgot", { body: { email } });
    const sentToOld = t.tokenFromMail(email);
    await UsersService.update({ id: user.id, patch: { email: uniqueEmail("moved") } });
    const reset = await call(t, "POST", "/v1/auth/password/reset", {
      body: { token: sentToOld, password: VICTIM_PASSWORD },
    });
    expect(reset.json.error.code).toBe("TOKEN_INVALID");
    // Even a live link fails when it went to another address than the user's current one.
    const { token: elsewhere } = await OneTimeTokensService.create({
      userId: user.id,
      purpose: "password_reset",
      sentTo: "someone-else@example.com",
    });
    const foreign = await call(t, "POST", "/v1/auth/password/reset", {
      body: { token: elsewhere, password: VICTIM_PASSWORD },
    });
    expect(foreign.json.error.code).toBe("TOKEN_INVALID");
  });
});

describe("notices and re-authentication (item 10)", () => {
  it("mails a notice on password change and on reset", async () => {
    const { email, token } = await signUp(t);
    await call(t, "POST", "/v1/auth/password/change", {
      bearer: token,
      body: { currentPassword: PASSWORD, newPassword: VICTIM_PASSWORD },
    });
    expect(t.mailer.last(email)?.subject).toBe("Your password was changed");
    await call(t, "POST", "/v1/auth/password/forgot", { body: { email } });
    await call(t, "POST", "/v1/auth/password/reset", {
      body: { token: t.tokenFromMail(email), password: "a third passphrase 3" },
    });
    expect(t.mailer.last(email)?.subject).toBe("Your password was reset");
  });

  it("DELETE /v1/users/me needs the current password", async () => {
    const { token } = await signUp(t);
    const bare = await call(t, "DELETE", "/v1/users/me", { bearer: token });
    expect(bare.status).toBe(403);
    expect(bare.json.error.code).toBe("REAUTHENTICATION_REQUIRED");
    const wrong = await call(t, "DELETE", "/v1/users/me", { bearer: token, body: { password: "nope nope" } });
    expect(wrong.status).toBe(401);
    expect((await call(t, "GET", "/v1/users/me", { bearer: token })).status).toBe(200);
    const right = await call(t, "DELETE", "/v1/users/me", { bearer: token, body: { password: PASSWORD } });
    expect(right.status).toBe(204);
    expect((await call(t, "GET", "/v1/users/me", { bearer: token })).status).toBe(401);
  });

  it("an account without a password can delete itself only within 10 minutes of signing in", async () => {
    const user = await UsersService.create({ email: uniqueEmail("nopass") });
    setClock(manualClock(new Date(Date.now() - 11 * 60_000)).now);
    const old = await SessionsService.create({ userId: user.id, authMethod: "magic_link" });
    resetClock();
    const fresh = await SessionsService.create({ userId: user.id, authMethod: "magic_link" });
    const stale = await call(t, "DELETE", "/v1/users/me", { bearer: old.token });
    expect(stale.json.error.code).toBe("REAUTHENTICATION_REQUIRED");
    expect((await call(t, "DELETE", "/v1/users/me", { bearer: fresh.token })).status).toBe(204);
  });
});

describe("sessions per user (item 11)", () => {
  it("creating one more than SESSION_MAX_PER_USER ends the oldest", async () => {
    const app = makeApp({ env: { SESSION_MAX_PER_USER: "2" } });
    const { email, token: first } = await signUp(app);
    const second = (await signIn(app, email, PASSWORD)).json.token;
    const third = (await signIn(app, email, PASSWORD)).json.token;
    expect((await call(app, "GET", "/v1/auth/session", { bearer: first })).status).toBe(401);
    expect((await call(app, "GET", "/v1/auth/session", { bearer: second })).status).toBe(200);
    expect((await call(app, "GET", "/v1/auth/session", { bearer: third })).status).toBe(200);
  });
});

describe("caching and token delivery (item 13)", () => {
  it("answers carrying a token or personal data are no-store", async () => {
    const { email, token } = await signUp(t);
    const signedIn = await signIn(t, email, PASSWORD);
    expect(signedIn.headers.get("cache-control")).toBe("no-store");
    const me = await call(t, "GET", "/v1/users/me", { bearer: token });
    expect(me.headers.get("cache-control")).toBe("no-store");
    const failed = await signIn(t, email, "wrong password x");
    expect(failed.headers.get("cache-control")).toBe("no-store");
  });

  it("browsers get the token as a cookie only; bearer clients in the body only", async () => {
    const { email } = await signUp(t);
    const browser = await call(t, "POST", "/v1/auth/sign-in", {
      body: { email, password: PASSWORD },
      browser: true,
    });
    expect(browser.json.token).toBeUndefined();
    expect(browser.headers.get("set-cookie")).toContain("__Host-session=");
    const client = await call(t, "POST", "/v1/auth/sign-in", { body: { email, password: PASSWORD } });
    expect(client.json.token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(client.headers.get("set-cookie")).toBeNull();
  });
});

describe("origins and production settings (item 14)", () => {
  it("refuses Origin: null on unsafe methods, whatever the credentials", async () => {
    const { email, token } = await signUp(t);
    for (const extra of [{}, { bearer: token }]) {
      const res = await call(t, "POST", "/v1/auth/sign-in", {
        body: { email, password: PASSWORD },
        headers: { origin: "null" },
        ...extra,
      });
      expect(res.status).toBe(403);
      expect(res.json.error.code).toBe("CSRF_REJECTED");
    }
    const allowed = await call(t, "POST", "/v1/auth/sign-in", {
      body: { email, password: PASSWORD },
      headers: { origin: ORIGIN },
    });
    expect(allowed.status).toBe(200);
  });

  it("requires APP_URL in production", () => {
    expect(() => loadApiConfig({ NODE_ENV: "production" })).toThrow(/APP_URL/);
    expect(loadApiConfig({ NODE_ENV: "production", APP_URL: "https://app.example.com" }).APP_URL).toBe(
      "https://app.example.com",
    );
    expect(ADMIN_KEY.length).toBeGreaterThanOrEqual(32);
  });
});
