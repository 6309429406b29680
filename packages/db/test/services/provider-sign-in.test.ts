// AccountsService.signInWithProvider under concurrency (the linking rules themselves are driven over HTTP
// against a real OpenID provider in apps/api/test/oauth.test.ts), and unlink's last-way-in check racing itself.
import { randomBytes } from "node:crypto";
import { beforeEach, describe, expect, it } from "vitest";
import { getPool } from "../../src/connection.ts";
import { configureAccountEncryption } from "../../src/crypto/encryption.ts";
import { isDbError } from "../../src/errors.ts";
import {
  getFreshAccessToken,
  getTokens,
  link,
  type RefreshedTokens,
  registerTokenRefresher,
  signInWithProvider,
  unlink,
} from "../../src/services/accounts.ts";
import * as UsersService from "../../src/services/users.ts";
import { useTestDatabase } from "../../src/testing/index.ts";

const database = useTestDatabase({ config: { poolMax: 20 } });

beforeEach(() => {
  configureAccountEncryption({ keys: { a: randomBytes(32) }, currentKeyId: "a" });
});

const unique = () => randomBytes(6).toString("hex");
const session = { authMethod: "oauth:acme" };

describe("signInWithProvider under concurrency", () => {
  it("ten simultaneous first sign-ins of one new identity make one user and one account, and ten sessions", async () => {
    const email = `race-${unique()}@example.com`;
    const identity = { provider: "acme", providerAccountId: `sub-${unique()}`, email, emailVerified: true };
    const results = await Promise.all(
      Array.from({ length: 10 }, () => signInWithProvider({ ...identity, accessToken: "at" }, { session })),
    );
    expect(new Set(results.map((r) => r.user.id)).size).toBe(1);
    expect(new Set(results.map((r) => r.account.id)).size).toBe(1);
    expect(new Set(results.map((r) => r.session.token)).size).toBe(10);
    expect(results.filter((r) => r.outcome === "created")).toHaveLength(1);
    const rows = await database.admin<{ n: number }>(
      "SELECT (SELECT count(*) FROM users WHERE email = $1)::int AS n",
      [email],
    );
    expect(rows.rows[0]?.n).toBe(1);
  });

  it("ten simultaneous identities with one new verified address share one user", async () => {
    const email = `shared-${unique()}@example.com`;
    const results = await Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        signInWithProvider(
          { provider: "acme", providerAccountId: `sub-${i}-${unique()}`, email, emailVerified: true },
          { session },
        ),
      ),
    );
    expect(new Set(results.map((r) => r.user.id)).size).toBe(1);
    expect(new Set(results.map((r) => r.account.id)).size).toBe(10);
  });
});

describe("unlink keeping a way to sign in", () => {
  it("of two simultaneous unlinks of a phone-only user's last two providers, exactly one succeeds", async () => {
    for (let round = 0; round < 5; round++) {
      const user = await UsersService.create({ phoneNumber: `+1415555${2600 + round}` });
      const [a, b] = await Promise.all([
        link({ userId: user.id, provider: "acme", providerAccountId: `a-${unique()}` }),
        link({ userId: user.id, provider: "acme", providerAccountId: `b-${unique()}` }),
      ]);
      const outcomes = await Promise.allSettled(
        [a, b].map((account) => unlink({ accountId: account.id, userId: user.id, keepSignInMethod: true })),
      );
      expect(outcomes.filter((o) => o.status === "fulfilled")).toHaveLength(1);
      const refused = outcomes.find((o) => o.status === "rejected") as PromiseRejectedResult;
      expect(isDbError(refused.reason, "LAST_SIGN_IN_METHOD")).toBe(true);
    }
  });
});

describe("getFreshAccessToken", () => {
  async function expiredAccount(provider: string) {
    const user = await UsersService.create({ email: `refresh-${unique()}@example.com` });
    const account = await link({
      userId: user.id,
      provider,
      providerAccountId: `r-${unique()}`,
      accessToken: "old-access",
      accessTokenExpiresAt: new Date(Date.now() - 60_000),
      refreshToken: "old-refresh",
    });
    return { user, account };
  }

  it("holds no pooled connection while the provider answers, and an account unlinked meanwhile stays unlinked", async () => {
    const provider = `slow-${unique()}`;
    let release: (value: RefreshedTokens) => void = () => {};
    let called = 0;
    registerTokenRefresher(provider, () => {
      called++;
      return new Promise<RefreshedTokens>((resolve) => {
        release = resolve;
      });
    });
    const { user, account } = await expiredAccount(provider);
    const pending = getFreshAccessToken(account.id);
    while (called === 0) await new Promise((resolve) => setTimeout(resolve, 10));
    // The provider is slow: no connection is checked out meanwhile.
    const pool = getPool();
    expect(pool.totalCount - pool.idleCount).toBe(0);
    // The owner unlinks it while the refresh is under way.
    await unlink({ accountId: account.id, userId: user.id });
    release({
      accessToken: "new-access",
      accessTokenExpiresAt: new Date(Date.now() + 3_600_000),
      refreshToken: "new-refresh",
    });
    const outcome = await pending.then(
      () => "resolved",
      (error: unknown) => (isDbError(error, "NOT_FOUND") ? "NOT_FOUND" : String(error)),
    );
    expect(outcome).toBe("NOT_FOUND");
    const rows = await database.admin("SELECT 1 FROM accounts WHERE user_id = $1", [user.id]);
    expect(rows.rowCount).toBe(0);
  });

  it("keeps the stored refresh token when the provider does not rotate it, re-encrypted under the current key", async () => {
    const provider = `plain-${unique()}`;
    registerTokenRefresher(provider, async () => ({
      accessToken: "rotated-access",
      accessTokenExpiresAt: new Date(Date.now() + 3_600_000),
    }));
    const keyA = randomBytes(32);
    configureAccountEncryption({ keys: { a: keyA }, currentKeyId: "a" });
    const { account } = await expiredAccount(provider);
    configureAccountEncryption({ keys: { a: keyA, b: randomBytes(32) }, currentKeyId: "b" });
    expect(await getFreshAccessToken(account.id)).toBe("rotated-access");
    const tokens = await getTokens(account.id);
    expect(tokens).toMatchObject({ accessToken: "rotated-access", refreshToken: "old-refresh" });
    const row = await database.admin<{ encryption_key_id: string }>(
      "SELECT encryption_key_id FROM accounts WHERE id = $1",
      [account.id],
    );
    expect(row.rows[0]?.encryption_key_id).toBe("b");
  });
});

describe("signInWithProvider after a key rotation", () => {
  it("signs a returning identity in when its stored tokens are under the previous key and the provider sends no refresh token", async () => {
    const keyA = randomBytes(32);
    configureAccountEncryption({ keys: { a: keyA }, currentKeyId: "a" });
    const identity = {
      provider: "acme",
      providerAccountId: `rot-${unique()}`,
      email: `rot-${unique()}@example.com`,
      emailVerified: true,
    };
    const first = await signInWithProvider(
      { ...identity, accessToken: "at1", refreshToken: "rt1" },
      { session },
    );
    configureAccountEncryption({ keys: { a: keyA, b: randomBytes(32) }, currentKeyId: "b" });
    const again = await signInWithProvider({ ...identity, accessToken: "at2" }, { session });
    expect(again.outcome).toBe("signed_in");
    expect(again.user.id).toBe(first.user.id);
    expect(await getTokens(again.account.id)).toMatchObject({ accessToken: "at2", refreshToken: "rt1" });
  });
});
