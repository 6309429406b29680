// AccountsService.signInWithProvider under concurrency (the linking rules themselves are driven over HTTP
// against a real OpenID provider in apps/api/test/oauth.test.ts), and unlink's last-way-in check racing itself.
import { randomBytes } from "node:crypto";
import { beforeEach, describe, expect, it } from "vitest";
import { configureAccountEncryption } from "../../src/crypto/encryption.ts";
import { isDbError } from "../../src/errors.ts";
import { link, signInWithProvider, unlink } from "../../src/services/accounts.ts";
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
