// Sign-in with a provider against a real OpenID provider (oidc-provider on loopback, test/oidc-provider.ts):
// the full flow as a browser would follow it (redirects and cookies on both sides), every way the answer can be
// wrong, the linking rules that stop account pre-hijacking, link and unlink, and the token refresh.
import { randomBytes } from "node:crypto";
import { AccountsService, configureAccountEncryption, SessionsService, UsersService } from "@repo/db";
import { queryOnce, useTestDatabase } from "@repo/db/testing";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { call, makeApp, PASSWORD, signUp, type TestApp, uniqueEmail } from "./helpers.ts";
import { startTestProvider, type TestIdentity, type TestProvider } from "./oidc-provider.ts";

const database = useTestDatabase();
const API_URL = "http://api.test";
const CALLBACK = `${API_URL}/v1/auth/oauth/acme/callback`;
let provider: TestProvider;

beforeAll(async () => {
  provider = await startTestProvider(CALLBACK);
});
afterAll(async () => {
  await provider?.close();
});
beforeEach(() => {
  configureAccountEncryption({ keys: { a: randomBytes(32) }, currentKeyId: "a" });
});

function oauthApp(): TestApp {
  return makeApp({
    env: {
      API_URL,
      OAUTH_ACME_ISSUER: provider.issuer,
      OAUTH_ACME_CLIENT_ID: provider.clientId,
      OAUTH_ACME_CLIENT_SECRET: provider.clientSecret,
      ACCOUNT_ENCRYPTION_KEYS: `a:${randomBytes(32).toString("base64")}`,
    },
  });
}

/** name=value pairs from Set-Cookie headers. */
function cookiesOf(response: Response): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of response.headers.getSetCookie()) {
    const [pair = ""] = line.split(";");
    const index = pair.indexOf("=");
    out[pair.slice(0, index)] = pair.slice(index + 1);
  }
  return out;
}

const cookieHeader = (jar: Record<string, string>) =>
  Object.entries(jar)
    .filter(([, value]) => value !== "")
    .map(([name, value]) => `${name}=${value}`)
    .join("; ");

/** Follows the provider's redirects (with its cookies) until it sends the browser back to our callback. */
async function throughProvider(authorizationUrl: string): Promise<string> {
  const jar: Record<string, string> = {};
  let url = authorizationUrl;
  for (let hop = 0; hop < 20; hop++) {
    if (url.startsWith(CALLBACK)) return url;
    const response = await fetch(url, { redirect: "manual", headers: { cookie: cookieHeader(jar) } });
    Object.assign(jar, cookiesOf(response));
    const location = response.headers.get("location");
    if (!location) throw new Error(`the provider answered ${response.status}: ${await response.text()}`);
    url = new URL(location, url).toString();
  }
  throw new Error("too many redirects at the provider");
}

interface FlowResult {
  /** Where the callback sent the browser. */
  location: string;
  error: string | null;
  /** The session cookie the callback set, if any. */
  session?: string;
  callbackUrl: string;
  binding: string;
}

/** Start → provider (signed in as `identity`) → callback, as one browser; `browserCookies` are its own. */
async function signInWithProvider(
  t: TestApp,
  identity: TestIdentity,
  options: { redirectTo?: string; browserCookies?: string; start?: Response } = {},
): Promise<FlowResult> {
  provider.signInAs(identity);
  const start =
    options.start ??
    (await t.app.request(
      `/v1/auth/oauth/acme/start?redirectTo=${encodeURIComponent(options.redirectTo ?? "/account")}`,
      { headers: options.browserCookies ? { cookie: options.browserCookies } : {} },
    ));
  expect(start.status).toBe(302);
  const binding = cookiesOf(start)["__Host-oauth"] ?? "";
  const callbackUrl = await throughProvider(start.headers.get("location") ?? "");
  return { ...(await finish(t, callbackUrl, binding, options.browserCookies)), callbackUrl, binding };
}

async function finish(t: TestApp, callbackUrl: string, binding: string, browserCookies?: string) {
  const url = new URL(callbackUrl);
  const cookie = [browserCookies, binding ? `__Host-oauth=${binding}` : ""].filter(Boolean).join("; ");
  const response = await t.app.request(`${url.pathname}${url.search}`, { headers: { cookie } });
  await t.tasks.settle();
  expect(response.status).toBe(302);
  const location = response.headers.get("location") ?? "";
  const session = cookiesOf(response)["__Host-session"];
  return {
    location,
    error: new URL(location).searchParams.get("error"),
    ...(session ? { session } : {}),
  };
}

const newIdentity = (email: string, verified = true): TestIdentity => ({
  sub: `acme-${randomBytes(6).toString("hex")}`,
  email,
  email_verified: verified,
  given_name: "Ada",
  family_name: "Lovelace",
});

/** The audit trail's events about a user, oldest first: [action, actor type, actor id]. */
async function trailOf(userId: string) {
  const { rows } = await queryOnce<{ action: string; actor_type: string; actor_user_id: string | null }>(
    database.url,
    "SELECT action, actor_type, actor_user_id FROM audit_events WHERE subject_user_id = $1 ORDER BY id",
    [userId],
  );
  return rows.map((row) => [row.action, row.actor_type, row.actor_user_id]);
}

async function me(t: TestApp, session: string | undefined) {
  return await call(t, "GET", "/v1/auth/session", { cookie: `__Host-session=${session}` });
}

describe("sign-in with an OpenID provider", () => {
  it("creates a verified account on first sign-in, signs in by cookie, and the same identity signs into it again", async () => {
    const t = oauthApp();
    const email = uniqueEmail("oidc");
    const identity = newIdentity(email);
    const first = await signInWithProvider(t, identity);
    expect(first.error).toBeNull();
    expect(first.location).toBe("http://app.test/account");
    const session = await me(t, first.session);
    expect(session.status).toBe(200);
    expect(session.json.user.email).toBe(email);
    expect(session.json.user.emailVerifiedAt).not.toBeNull();
    expect(session.json.user.firstName).toBe("Ada");
    expect(session.json.session.authMethod).toBe("oauth:acme");

    const again = await signInWithProvider(t, identity);
    const userId = session.json.user.id;
    expect((await me(t, again.session)).json.user.id).toBe(userId);
    // The trail: the account opened (sign-up and link), then two sign-ins, each by the user.
    expect(await trailOf(userId)).toEqual([
      ["sign_up", "user", userId],
      ["provider_linked", "user", userId],
      ["sign_in", "user", userId],
      ["sign_in", "user", userId],
    ]);
    // The provider's tokens are stored, encrypted.
    const accounts = await call(t, "GET", "/v1/auth/accounts", { cookie: `__Host-session=${again.session}` });
    expect(accounts.json.accounts).toHaveLength(1);
    const stored = await queryOnce<{ access_token_ciphertext: Buffer | null }>(
      database.url,
      "SELECT access_token_ciphertext FROM accounts WHERE provider = 'acme' AND provider_account_id = $1",
      [identity.sub],
    );
    expect(stored.rows[0]?.access_token_ciphertext?.length).toBeGreaterThan(16);
  });

  it("refuses a replayed state, a callback without the browser's cookie, and another browser's callback", async () => {
    const t = oauthApp();
    const done = await signInWithProvider(t, newIdentity(uniqueEmail("replay")));
    expect(done.error).toBeNull();
    // The same callback again: its state was used.
    const replayed = await finish(t, done.callbackUrl, done.binding);
    expect(replayed.error).toBe("OAUTH_STATE_INVALID");
    expect(replayed.session).toBeUndefined();

    // A callback URL carried to another browser (login CSRF): without the binding cookie it is refused.
    provider.signInAs(newIdentity(uniqueEmail("csrf")));
    const start = await t.app.request("/v1/auth/oauth/acme/start?redirectTo=/account");
    const callbackUrl = await throughProvider(start.headers.get("location") ?? "");
    const stolen = await finish(t, callbackUrl, "");
    expect(stolen.error).toBe("OAUTH_STATE_INVALID");
    expect(stolen.session).toBeUndefined();
    // And the state is spent: the right browser cannot use it afterwards either.
    const late = await finish(t, callbackUrl, cookiesOf(start)["__Host-oauth"] ?? "");
    expect(late.error).toBe("OAUTH_STATE_INVALID");
  });

  it.each([
    ["wrong-audience", "an ID token for another client"],
    ["wrong-nonce", "an ID token with another nonce"],
    ["expired", "an expired ID token"],
  ] as const)("refuses %s (%s), signed by the provider's own key", async (kind, _what) => {
    const t = oauthApp();
    const email = uniqueEmail(kind);
    provider.tamper(kind);
    const result = await signInWithProvider(t, newIdentity(email));
    provider.tamper(undefined);
    expect(result.error).toBe("OAUTH_TOKEN_INVALID");
    expect(result.session).toBeUndefined();
    const users = await queryOnce(database.url, "SELECT 1 FROM users WHERE email = $1", [email]);
    expect(users.rowCount).toBe(0);
    // The failure says nothing more than its code: no stack, no provider answer.
    expect(new URL(result.location).search).toBe(`?error=OAUTH_TOKEN_INVALID`);
  });

  it("a provider error (the user refused) comes back as OAUTH_PROVIDER_ERROR", async () => {
    const t = oauthApp();
    provider.tamper("provider-error");
    const result = await signInWithProvider(t, newIdentity(uniqueEmail("denied")));
    expect(result.error).toBe("OAUTH_PROVIDER_ERROR");
    expect(result.session).toBeUndefined();
  });

  it("an unreachable provider answers 503 PROVIDER_UNAVAILABLE with Retry-After, and the rest of the API keeps working", async () => {
    const t = makeApp({
      env: {
        OAUTH_DOWN_ISSUER: "http://127.0.0.1:9/",
        OAUTH_DOWN_CLIENT_ID: "client",
        OAUTH_DOWN_CLIENT_SECRET: "secret",
        ACCOUNT_ENCRYPTION_KEYS: `a:${randomBytes(32).toString("base64")}`,
      },
    });
    const first = await t.app.request("/v1/auth/oauth/down/start");
    expect(first.status).toBe(503);
    expect(((await first.json()) as { error: { code: string } }).error.code).toBe("PROVIDER_UNAVAILABLE");
    expect(Number(first.headers.get("retry-after"))).toBeGreaterThan(0);
    // Retried at most every 15 s, not on every request: the second request tries no discovery.
    expect((await t.app.request("/v1/auth/oauth/down/start")).status).toBe(503);
    expect((await t.app.request("/healthz")).status).toBe(200);
    expect(t.logs.filter((line) => line.msg === "provider discovery failed")).toHaveLength(1);
  });

  it("refuses a redirectTo outside the app (no open redirect), and an unknown provider", async () => {
    const t = oauthApp();
    const evil = await t.app.request("/v1/auth/oauth/acme/start?redirectTo=https://evil.example/x");
    expect(evil.status).toBe(400);
    expect(((await evil.json()) as { error: { code: string } }).error.code).toBe("VALIDATION_FAILED");
    expect((await t.app.request("/v1/auth/oauth/nope/start")).status).toBe(404);
  });
});

describe("linking rules (account pre-hijacking)", () => {
  it("pre-hijack: someone signs up with the victim's address and a password and never verifies; the victim signs in with the provider; the earlier password and sessions are dead", async () => {
    const t = makeApp({ env: { SIGN_IN_BEFORE_EMAIL_VERIFICATION: "true" } });
    const victim = uniqueEmail("victim");
    // The attacker's sign-up (password sign-in allowed before verification here, the riskiest setting).
    const attacker = await call(t, "POST", "/v1/auth/sign-up", {
      body: { email: victim, password: PASSWORD },
    });
    expect(attacker.status).toBe(201);
    const attackerToken = attacker.json.token as string;
    expect((await call(t, "GET", "/v1/auth/session", { bearer: attackerToken })).status).toBe(200);

    const o = oauthApp();
    const result = await signInWithProvider(o, newIdentity(victim));
    expect(result.error).toBeNull();
    const signed = await me(o, result.session);
    expect(signed.json.user.id).toBe(attacker.json.user.id);
    expect(signed.json.user.emailVerifiedAt).not.toBeNull();
    // Everything the attacker set up is gone: the session, the password.
    expect((await call(t, "GET", "/v1/auth/session", { bearer: attackerToken })).status).toBe(401);
    const withPassword = await call(t, "POST", "/v1/auth/sign-in", {
      body: { email: victim, password: PASSWORD },
    });
    expect(withPassword.status).toBe(401);
  });

  it("a verified account is linked to a provider identity with the same verified address", async () => {
    const t = oauthApp();
    const { email, user } = await signUp(t, uniqueEmail("verified"));
    const result = await signInWithProvider(t, newIdentity(email));
    expect((await me(t, result.session)).json.user.id).toBe(user.id);
    expect((await trailOf(user.id)).slice(-2)).toEqual([
      ["provider_linked", "user", user.id],
      ["sign_in", "user", user.id],
    ]);
    // Its password still works: a verified owner loses nothing.
    expect((await call(t, "POST", "/v1/auth/sign-in", { body: { email, password: PASSWORD } })).status).toBe(
      200,
    );
  });

  it("an address the provider did not verify never links to, or claims, an account", async () => {
    const t = oauthApp();
    const { email, user } = await signUp(t, uniqueEmail("unverified-claim"));
    const before = await queryOnce(database.url, "SELECT id, email, password_hash FROM users ORDER BY id");
    const result = await signInWithProvider(t, newIdentity(email, false));
    expect(result.error).toBe("OAUTH_EMAIL_UNVERIFIED");
    expect(result.session).toBeUndefined();
    // Nothing was created or linked; the owner keeps the account as it was.
    expect(
      (await queryOnce(database.url, "SELECT id, email, password_hash FROM users ORDER BY id")).rows,
    ).toEqual(before.rows);
    const linked = await queryOnce(database.url, "SELECT 1 FROM accounts WHERE user_id = $1", [user.id]);
    expect(linked.rowCount).toBe(0);
    // An identity without any address is refused the same way.
    const bare = await signInWithProvider(t, { sub: `acme-${randomBytes(6).toString("hex")}` });
    expect(bare.error).toBe("OAUTH_EMAIL_UNVERIFIED");
  });
});

describe("linked accounts", () => {
  it("links a provider to the signed-in user, lists it, and refuses to unlink the last way to sign in", async () => {
    const t = oauthApp();
    // A phone-only user without a password (made by the application): its one provider is its only way in.
    const phoneUser = await UsersService.create({ phoneNumber: `+1415555${String(Date.now()).slice(-4)}` });
    const { token } = await SessionsService.create({ userId: phoneUser.id, authMethod: "oauth:acme" });
    await AccountsService.link({
      userId: phoneUser.id,
      provider: "acme",
      providerAccountId: `lone-${randomBytes(4).toString("hex")}`,
    });
    const listed = await call(t, "GET", "/v1/auth/accounts", { bearer: token });
    expect(listed.json.accounts).toHaveLength(1);
    const refused = await call(t, "DELETE", `/v1/auth/accounts/${listed.json.accounts[0].id}`, {
      bearer: token,
    });
    expect(refused.status).toBe(409);
    expect(refused.json.error.code).toBe("LAST_SIGN_IN_METHOD");
    expect(await trailOf(phoneUser.id)).toEqual([]);

    // A verified user links a second identity through the link flow, then unlinks it.
    const { email, user } = await signUp(t, uniqueEmail("linker"));
    const signedIn = await call(t, "POST", "/v1/auth/sign-in", {
      body: { email, password: PASSWORD },
      browser: true,
    });
    const session = cookiesOf(new Response(null, { headers: signedIn.headers }))["__Host-session"];
    const userCookie = `__Host-session=${session}`;
    const linkStart = await call(t, "POST", "/v1/auth/oauth/acme/link?redirectTo=/account", {
      cookie: userCookie,
    });
    expect(linkStart.status).toBe(200);
    const binding = cookiesOf(new Response(null, { headers: linkStart.headers }))["__Host-oauth"] ?? "";
    provider.signInAs({
      sub: `acme-${randomBytes(6).toString("hex")}`,
      email: uniqueEmail("other"),
      email_verified: true,
    });
    const callbackUrl = await throughProvider(linkStart.json.authorizationUrl);
    const linked = await finish(t, callbackUrl, binding, userCookie);
    expect(linked.error).toBeNull();
    expect(new URL(linked.location).searchParams.get("linked")).toBe("acme");
    const accounts = await call(t, "GET", "/v1/auth/accounts", { cookie: userCookie });
    expect(accounts.json.accounts).toHaveLength(1);
    const unlinked = await call(t, "DELETE", `/v1/auth/accounts/${accounts.json.accounts[0].id}`, {
      cookie: userCookie,
    });
    expect(unlinked.status).toBe(204);
    expect((await trailOf(user.id)).slice(-2)).toEqual([
      ["provider_linked", "user", user.id],
      ["provider_unlinked", "user", user.id],
    ]);
  });

  it("refreshes an expired access token once when ten callers ask at the same time, and stores the rotated tokens", async () => {
    const t = oauthApp();
    const identity = newIdentity(uniqueEmail("refresh"));
    const result = await signInWithProvider(t, identity);
    const [account] = (
      await call(t, "GET", "/v1/auth/accounts", { cookie: `__Host-session=${result.session}` })
    ).json.accounts;
    const before = await AccountsService.getTokens(account.id);
    expect(before?.refreshToken).toBeTruthy();
    // Expire it.
    await queryOnce(
      database.url,
      "UPDATE accounts SET access_token_expires_at = now() - interval '1 minute' WHERE id = $1",
      [account.id],
    );
    const grantsBefore = provider.refreshGrants();
    const tokens = await Promise.all(
      Array.from({ length: 10 }, () => AccountsService.getFreshAccessToken(account.id)),
    );
    expect(provider.refreshGrants() - grantsBefore).toBe(1);
    expect(new Set(tokens).size).toBe(1);
    expect(tokens[0]).not.toBe(before?.accessToken);
    const after = await AccountsService.getTokens(account.id);
    expect(after?.accessToken).toBe(tokens[0]);
    expect(after?.accessTokenExpiresAt?.getTime()).toBeGreaterThan(Date.now());
    // Fresh now: asking again refreshes nothing.
    await AccountsService.getFreshAccessToken(account.id);
    expect(provider.refreshGrants() - grantsBefore).toBe(1);
  });
});
