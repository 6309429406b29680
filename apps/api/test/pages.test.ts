// The pages behind the mailed links, in process (the flows themselves run in Chromium: pages.browser.test.ts):
// what a GET answers and sets, and every way a forged or malformed form POST is refused without using the link.
import { useTestDatabase } from "@repo/db/testing";
import { describe, expect, it } from "vitest";
import { call, makeApp, signUp, type TestApp } from "./helpers.ts";

useTestDatabase();

/** A live magic link token for a new verified account. */
async function magicToken(t: TestApp): Promise<{ email: string; token: string }> {
  const { email } = await signUp(t);
  const sent = await call(t, "POST", "/v1/auth/magic-link", { body: { email } });
  expect(sent.status).toBe(202);
  return { email, token: t.tokenFromMail(email) };
}

/** Opens the link page like a browser and returns the form cookie and field it set. */
async function openPage(t: TestApp, path: string) {
  const page = await t.app.request(path);
  const cookie = /(__Host-form=[A-Za-z0-9_-]+)/.exec(page.headers.get("set-cookie") ?? "")?.[1] ?? "";
  const field = /name="csrf" value="([^"]+)"/.exec(await page.text())?.[1] ?? "";
  return { page, cookie, field };
}

function post(t: TestApp, path: string, fields: Record<string, string>, headers: Record<string, string>) {
  return t.app.request(path, {
    method: "POST",
    headers: { "content-type": "application/x-www-form-urlencoded", ...headers },
    body: new URLSearchParams(fields).toString(),
  });
}

/** Whether the magic link still signs in (nothing used it). */
async function stillUsable(t: TestApp, token: string): Promise<boolean> {
  return (await call(t, "POST", "/v1/auth/magic-link/verify", { body: { token } })).status === 200;
}

describe("pages behind the mailed links", () => {
  it("a GET answers HTML under no-store, no-referrer, a strict CSP and DENY framing, and sets only a form cookie", async () => {
    const t = makeApp();
    const { token } = await magicToken(t);
    for (const path of [
      `/magic-link?token=${token}`,
      "/verify-email?token=nope",
      "/reset-password",
      "/account",
    ]) {
      const { page, cookie } = await openPage(t, path);
      expect([200, 400], path).toContain(page.status);
      expect(page.headers.get("content-type"), path).toContain("text/html");
      expect(page.headers.get("cache-control"), path).toBe("no-store");
      expect(page.headers.get("referrer-policy"), path).toBe("no-referrer");
      expect(page.headers.get("x-frame-options"), path).toBe("DENY");
      const csp = page.headers.get("content-security-policy") ?? "";
      for (const directive of [
        "default-src 'none'",
        "frame-ancestors 'none'",
        "form-action 'self'",
        "base-uri 'none'",
      ])
        expect(csp, path).toContain(directive);
      expect(csp, path).not.toContain("script-src");
      if (path !== "/account") {
        expect(cookie, path).not.toBe("");
        expect(page.headers.get("set-cookie"), path).toMatch(/__Host-form=[^;]+;.*HttpOnly.*SameSite=Lax/);
      }
      expect(page.headers.get("set-cookie") ?? "", path).not.toContain("session=");
    }
    expect(await stillUsable(t, token)).toBe(true);
  });

  it("a dead link (unknown, used) answers 400 with a plain page that offers a new link", async () => {
    const t = makeApp();
    const { token } = await magicToken(t);
    expect(await stillUsable(t, token)).toBe(true);
    const used = await t.app.request(`/magic-link?token=${token}`);
    expect(used.status).toBe(400);
    const html = await used.text();
    expect(html).toContain("This link has expired or was already used");
    expect(html).toContain('action="/links/new"');
  });

  it("refuses a form without its token, with another browser's token, from another site, or not as a form; the link stays usable", async () => {
    const t = makeApp();
    const { token } = await magicToken(t);
    const { cookie, field } = await openPage(t, `/magic-link?token=${token}`);
    expect(field).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const other = await openPage(t, `/magic-link?token=${token}`);

    const attempts: Array<[string, Response]> = [
      ["no token", await post(t, "/magic-link", { token }, { cookie })],
      ["no cookie", await post(t, "/magic-link", { token, csrf: field }, {})],
      [
        "another browser's cookie",
        await post(t, "/magic-link", { token, csrf: field }, { cookie: other.cookie }),
      ],
      [
        "a sibling site",
        await post(t, "/magic-link", { token, csrf: field }, { cookie, "sec-fetch-site": "same-site" }),
      ],
      [
        "cross-site",
        await post(t, "/magic-link", { token, csrf: field }, { cookie, "sec-fetch-site": "cross-site" }),
      ],
    ];
    for (const [what, response] of attempts) {
      expect(response.status, what).toBe(403);
      expect(response.headers.get("set-cookie") ?? "", what).not.toContain("session=");
    }
    const json = await t.app.request("/magic-link", {
      method: "POST",
      headers: { "content-type": "application/json", cookie },
      body: JSON.stringify({ token, csrf: field }),
    });
    expect(json.status).toBe(415);
    const extra = await post(t, "/magic-link", { token, csrf: field, admin: "1" }, { cookie });
    expect(extra.status).toBe(400);
    expect(await stillUsable(t, token)).toBe(true);
  });

  it("a genuine form POST signs in with the session cookie and redirects to the account page", async () => {
    const t = makeApp();
    const { email, token } = await magicToken(t);
    const { cookie, field } = await openPage(t, `/magic-link?token=${token}`);
    const signedIn = await post(
      t,
      "/magic-link",
      { token, csrf: field },
      { cookie, "sec-fetch-site": "same-origin" },
    );
    expect(signedIn.status).toBe(303);
    expect(signedIn.headers.get("location")).toBe("/account");
    const session = /(__Host-session=[^;]+)/.exec(signedIn.headers.get("set-cookie") ?? "")?.[1];
    expect(session).toBeTruthy();
    const account = await t.app.request("/account", { headers: { cookie: session ?? "" } });
    expect(await account.text()).toContain(`You are signed in as <strong>${email}</strong>`);
  });

  it("the reset form counts against the network's link-use limit before it looks anything up, and says when to retry", async () => {
    // A network of its own: the other tests of this file count against the default one.
    const t = makeApp({ env: { RATE_LIMIT_SIGN_IN_PER_CLIENT: "2" }, address: "198.51.100.77" });
    const { cookie, field } = await openPage(t, "/reset-password?token=nope");
    const statuses: number[] = [];
    let retryAfter: string | null = null;
    for (let i = 0; i < 4; i++) {
      const response = await post(
        t,
        "/reset-password",
        { token: "not-a-live-token", csrf: field, password: "one two three four", confirm: "other" },
        { cookie },
      );
      statuses.push(response.status);
      if (response.status === 429) retryAfter = response.headers.get("retry-after");
    }
    expect(statuses).toEqual([400, 400, 429, 429]);
    expect(Number(retryAfter)).toBeGreaterThan(0);
  });
});
