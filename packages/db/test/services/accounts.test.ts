import { randomBytes } from "node:crypto";
import { eq } from "drizzle-orm";
import { uuidv7 } from "uuidv7";
import { beforeEach, describe, expect, it } from "vitest";
import { db } from "../../src/connection.ts";
import {
  configureAccountEncryption,
  currentEncryptionKeyId,
  loadAccountEncryptionFromEnv,
  resetAccountEncryption,
} from "../../src/crypto/encryption.ts";
import { DbError, isDbError } from "../../src/errors.ts";
import { dbQueriesTotal } from "../../src/metrics.ts";
import { accounts, users } from "../../src/schema/index.ts";
import {
  findByProvider,
  getTokens,
  link,
  listForUser,
  reencrypt,
  unlink,
} from "../../src/services/accounts.ts";
import { insertUser, useTestDatabase } from "../../src/testing/index.ts";

const database = useTestDatabase({ config: { poolMax: 20 } });

const keyA = randomBytes(32);
const keyB = randomBytes(32);

beforeEach(() => {
  configureAccountEncryption({ keys: { a: keyA }, currentKeyId: "a" });
});

const makeUser = () => insertUser("account-user");
let counter = 0;

/** A fresh provider identity, so tests never collide. */
function identity() {
  return { provider: "google", providerAccountId: `sub-${++counter}-${randomBytes(4).toString("hex")}` };
}

/** A realistic-looking provider token. */
function providerToken(prefix = "ya29"): string {
  return `${prefix}.${randomBytes(48).toString("base64url")}`;
}

interface StoredAccount {
  id: string;
  user_id: string;
  access_token_ciphertext: Buffer | null;
  access_token_iv: Buffer | null;
  access_token_tag: Buffer | null;
  refresh_token_ciphertext: Buffer | null;
  refresh_token_iv: Buffer | null;
  refresh_token_tag: Buffer | null;
  encryption_key_id: string | null;
  json: string;
}

async function storedRow(id: string): Promise<StoredAccount> {
  const result = await database.admin<StoredAccount>(
    "SELECT a.*, row_to_json(a)::text AS json FROM accounts a WHERE id = $1",
    [id],
  );
  const row = result.rows[0];
  if (!row) throw new Error(`no account ${id}`);
  return row;
}

async function accountCount(): Promise<number> {
  return (await database.admin<{ n: number }>("SELECT count(*)::int AS n FROM accounts")).rows[0]?.n ?? -1;
}

async function failure(promise: Promise<unknown>): Promise<DbError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(error instanceof DbError)) throw new Error(`expected a DbError, got ${String(error)}`);
  return error;
}

function thrown(fn: () => unknown): DbError {
  try {
    fn();
  } catch (error) {
    if (error instanceof DbError) return error;
    throw error;
  }
  throw new Error("expected a DbError, nothing was thrown");
}

describe("link and getTokens", () => {
  it("round-trips encrypted tokens and never returns ciphertext columns", async () => {
    const userId = await makeUser();
    const accessToken = providerToken();
    const refreshToken = providerToken("1//0g");
    const accessTokenExpiresAt = new Date("2031-01-01T10:00:00.000Z");
    const account = await link({
      userId,
      ...identity(),
      scope: "openid email",
      accessToken,
      accessTokenExpiresAt,
      refreshToken,
    });
    expect(account).toMatchObject({
      userId,
      provider: "google",
      scope: "openid email",
      accessTokenExpiresAt,
    });
    for (const key of Object.keys(account)) expect(key).not.toMatch(/Ciphertext|Iv$|Tag$|encryptionKeyId/);
    expect(await getTokens(account.id)).toEqual({
      accessToken,
      accessTokenExpiresAt,
      refreshToken,
      refreshTokenExpiresAt: null,
    });
    expect(await getTokens(uuidv7())).toBeNull();
  });

  it("stores no plaintext: no column holds the token as text or as bytes", async () => {
    const userId = await makeUser();
    const accessToken = providerToken();
    const refreshToken = providerToken("1//0g");
    const account = await link({ userId, ...identity(), accessToken, refreshToken });
    const row = await storedRow(account.id);
    expect(row.encryption_key_id).toBe("a");
    expect(row.access_token_iv).toHaveLength(12);
    expect(row.access_token_tag).toHaveLength(16);
    expect(row.refresh_token_iv).toHaveLength(12);
    expect(row.refresh_token_tag).toHaveLength(16);
    expect(row.access_token_ciphertext).toHaveLength(Buffer.byteLength(accessToken));
    for (const token of [accessToken, refreshToken]) {
      const bytes = Buffer.from(token, "utf8");
      expect(row.json).not.toContain(token);
      expect(row.json).not.toContain(bytes.toString("hex"));
      for (const value of Object.values(row)) {
        if (Buffer.isBuffer(value)) expect(value.includes(bytes)).toBe(false);
        if (typeof value === "string") expect(value.includes(token)).toBe(false);
      }
    }
  });

  it("uses a fresh IV for every value: the same token never encrypts the same way twice", async () => {
    const userId = await makeUser();
    const accessToken = providerToken();
    const first = await link({ userId, ...identity(), accessToken, refreshToken: accessToken });
    const second = await link({ userId, ...identity(), accessToken });
    const a = await storedRow(first.id);
    const b = await storedRow(second.id);
    const ciphertexts = [a.access_token_ciphertext, a.refresh_token_ciphertext, b.access_token_ciphertext];
    const ivs = [a.access_token_iv, a.refresh_token_iv, b.access_token_iv].map((iv) => iv?.toString("hex"));
    expect(new Set(ciphertexts.map((c) => c?.toString("hex"))).size).toBe(3);
    expect(new Set(ivs).size).toBe(3);
    // Relinking with the same token re-encrypts it with a new IV too.
    await link({ userId, provider: first.provider, providerAccountId: first.providerAccountId, accessToken });
    const again = await storedRow(first.id);
    expect(again.access_token_iv?.equals(a.access_token_iv ?? Buffer.alloc(0))).toBe(false);
    expect((await getTokens(first.id))?.accessToken).toBe(accessToken);
  });

  it("links without tokens, and without a key ring as long as no token is given", async () => {
    const userId = await makeUser();
    resetAccountEncryption();
    const account = await link({ userId, ...identity(), scope: "read:user" });
    expect(await getTokens(account.id)).toEqual({
      accessToken: null,
      accessTokenExpiresAt: null,
      refreshToken: null,
      refreshTokenExpiresAt: null,
    });
    const before = await accountCount();
    const error = await failure(link({ userId, ...identity(), accessToken: providerToken() }));
    expect(error.code).toBe("CONFIG_INVALID");
    expect(await accountCount()).toBe(before);
  });
});

describe("tampering", () => {
  async function linked() {
    const userId = await makeUser();
    const accessToken = providerToken();
    const refreshToken = providerToken("1//0g");
    const account = await link({ userId, ...identity(), accessToken, refreshToken });
    return { account, accessToken, refreshToken };
  }

  it.each([
    ["ciphertext", "access_token_ciphertext"],
    ["tag", "access_token_tag"],
    ["iv", "access_token_iv"],
    ["refresh ciphertext", "refresh_token_ciphertext"],
  ])("a flipped bit in the %s fails with DECRYPTION_FAILED", async (_name, column) => {
    const { account } = await linked();
    expect(await getTokens(account.id)).not.toBeNull();
    await database.admin(
      `UPDATE accounts SET ${column} = set_byte(${column}, 0, get_byte(${column}, 0) # 1) WHERE id = $1`,
      [account.id],
    );
    expect((await failure(getTokens(account.id))).code).toBe("DECRYPTION_FAILED");
  });

  it("a ciphertext moved to another account, or to the other column, fails with DECRYPTION_FAILED", async () => {
    const one = await linked();
    const two = await linked();
    await database.admin(
      `UPDATE accounts t SET access_token_ciphertext = s.access_token_ciphertext,
         access_token_iv = s.access_token_iv, access_token_tag = s.access_token_tag
       FROM accounts s WHERE s.id = $1 AND t.id = $2`,
      [one.account.id, two.account.id],
    );
    expect((await failure(getTokens(two.account.id))).code).toBe("DECRYPTION_FAILED");

    await database.admin(
      `UPDATE accounts SET access_token_ciphertext = refresh_token_ciphertext,
         access_token_iv = refresh_token_iv, access_token_tag = refresh_token_tag WHERE id = $1`,
      [one.account.id],
    );
    expect((await failure(getTokens(one.account.id))).code).toBe("DECRYPTION_FAILED");
  });

  it("a truncated tag or a missing IV fails with DECRYPTION_FAILED", async () => {
    const one = await linked();
    await database.admin(
      "UPDATE accounts SET access_token_tag = substring(access_token_tag from 1 for 8) WHERE id = $1",
      [one.account.id],
    );
    expect((await failure(getTokens(one.account.id))).code).toBe("DECRYPTION_FAILED");
    const two = await linked();
    await database.admin("UPDATE accounts SET refresh_token_iv = NULL WHERE id = $1", [two.account.id]);
    expect((await failure(getTokens(two.account.id))).code).toBe("DECRYPTION_FAILED");
  });

  it("an unknown key id fails with UNKNOWN_ENCRYPTION_KEY", async () => {
    const { account } = await linked();
    await database.admin("UPDATE accounts SET encryption_key_id = 'retired' WHERE id = $1", [account.id]);
    const error = await failure(getTokens(account.id));
    expect(error.code).toBe("UNKNOWN_ENCRYPTION_KEY");
    expect(error.message).toContain("retired");
  });
});

describe("key rotation", () => {
  it("keeps old rows readable, encrypts new ones with the current key, and re-encrypts on demand", async () => {
    // Rows tampered with by earlier tests would (rightly) be reported as failures.
    await db.delete(accounts);
    const userId = await makeUser();
    const oldToken = providerToken();
    const old = await link({ userId, ...identity(), accessToken: oldToken });
    expect((await storedRow(old.id)).encryption_key_id).toBe("a");
    for (let i = 0; i < 4; i++) await link({ userId, ...identity(), refreshToken: providerToken() });

    configureAccountEncryption({ keys: { a: keyA, b: keyB.toString("base64") }, currentKeyId: "b" });
    expect((await getTokens(old.id))?.accessToken).toBe(oldToken);
    const newToken = providerToken();
    const fresh = await link({ userId, ...identity(), accessToken: newToken });
    expect((await storedRow(fresh.id)).encryption_key_id).toBe("b");

    // Without key a, the old row cannot be read; the new one can.
    configureAccountEncryption({ keys: { b: keyB }, currentKeyId: "b" });
    expect((await failure(getTokens(old.id))).code).toBe("UNKNOWN_ENCRYPTION_KEY");
    expect((await getTokens(fresh.id))?.accessToken).toBe(newToken);

    // With both keys, reencrypt() moves every row to b; then key a can go.
    configureAccountEncryption({ keys: { a: keyA, b: keyB }, currentKeyId: "b" });
    const { reencrypted, failedIds } = await reencrypt({ batchSize: 2 });
    expect(reencrypted).toBe(5);
    expect(failedIds).toEqual([]);
    expect((await storedRow(old.id)).encryption_key_id).toBe("b");
    configureAccountEncryption({ keys: { b: keyB }, currentKeyId: "b" });
    expect((await getTokens(old.id))?.accessToken).toBe(oldToken);
    expect(await reencrypt()).toEqual({ reencrypted: 0, failedIds: [] });
  });

  it("reencrypt skips and reports rows it cannot decrypt", async () => {
    const userId = await makeUser();
    const bad = await link({ userId, ...identity(), accessToken: providerToken() });
    await database.admin(
      "UPDATE accounts SET access_token_tag = set_byte(access_token_tag, 3, get_byte(access_token_tag, 3) # 8) WHERE id = $1",
      [bad.id],
    );
    configureAccountEncryption({ keys: { a: keyA, b: keyB }, currentKeyId: "b" });
    const result = await reencrypt({ batchSize: 1 });
    expect(result.failedIds).toContain(bad.id);
    expect((await storedRow(bad.id)).encryption_key_id).toBe("a");
  });

  it("a relink after rotation keeps the stored refresh token, re-encrypted under the current key", async () => {
    const userId = await makeUser();
    const who = identity();
    const refreshToken = providerToken("1//0g");
    const account = await link({ userId, ...who, accessToken: providerToken(), refreshToken });
    configureAccountEncryption({ keys: { a: keyA, b: keyB }, currentKeyId: "b" });
    const accessToken = providerToken();
    const relinked = await link({ userId, ...who, accessToken });
    expect(relinked.id).toBe(account.id);
    expect((await storedRow(account.id)).encryption_key_id).toBe("b");
    configureAccountEncryption({ keys: { b: keyB }, currentKeyId: "b" });
    expect(await getTokens(account.id)).toMatchObject({ accessToken, refreshToken });
  });
});

describe("configuration", () => {
  const secret = randomBytes(16).toString("base64");

  it("refuses keys that are not 32 bytes, without printing key material, and keeps the previous ring", () => {
    const cases: Array<() => unknown> = [
      () => configureAccountEncryption({ keys: { a: secret }, currentKeyId: "a" }),
      () => configureAccountEncryption({ keys: { a: randomBytes(31) }, currentKeyId: "a" }),
      () => configureAccountEncryption({ keys: { a: `${keyA.toString("base64")}!!` }, currentKeyId: "a" }),
      () => configureAccountEncryption({ keys: { a: keyA }, currentKeyId: "b" }),
      () => configureAccountEncryption({ keys: {}, currentKeyId: "a" }),
      () => configureAccountEncryption({ keys: { "bad id": keyA }, currentKeyId: "bad id" }),
      () => loadAccountEncryptionFromEnv({ ACCOUNT_ENCRYPTION_KEYS: `a:${secret}` }),
      () => loadAccountEncryptionFromEnv({ ACCOUNT_ENCRYPTION_KEYS: secret }),
      () => loadAccountEncryptionFromEnv({}),
      () =>
        loadAccountEncryptionFromEnv({
          ACCOUNT_ENCRYPTION_KEYS: `a:${keyA.toString("base64")}`,
          ACCOUNT_ENCRYPTION_KEY_ID: "z",
        }),
    ];
    for (const attempt of cases) {
      const error = thrown(attempt);
      expect(error.code).toBe("CONFIG_INVALID");
      expect(error.message).not.toContain(secret);
      expect(error.message).not.toContain(keyA.toString("base64"));
      expect(JSON.stringify(error.details ?? {})).not.toContain(secret);
    }
    expect(currentEncryptionKeyId()).toBe("a");
  });

  it("reads ACCOUNT_ENCRYPTION_KEYS and ACCOUNT_ENCRYPTION_KEY_ID (default: the first key)", async () => {
    const env = {
      ACCOUNT_ENCRYPTION_KEYS: ` k1:${keyA.toString("base64")} , k2:${keyB.toString("base64url")}`,
    };
    expect(loadAccountEncryptionFromEnv(env)).toEqual({ keyIds: ["k1", "k2"], currentKeyId: "k1" });
    expect(loadAccountEncryptionFromEnv({ ...env, ACCOUNT_ENCRYPTION_KEY_ID: "k2" }).currentKeyId).toBe("k2");
    const userId = await makeUser();
    const accessToken = providerToken();
    const account = await link({ userId, ...identity(), accessToken });
    expect((await storedRow(account.id)).encryption_key_id).toBe("k2");
    expect((await getTokens(account.id))?.accessToken).toBe(accessToken);
  });
});

describe("ownership", () => {
  it("refuses an identity linked to another user, leaving it untouched", async () => {
    const alice = await makeUser();
    const bob = await makeUser();
    const who = identity();
    const accessToken = providerToken();
    const account = await link({ userId: alice, ...who, accessToken });
    const before = await storedRow(account.id);
    const error = await failure(link({ userId: bob, ...who, accessToken: providerToken() }));
    expect(error.code).toBe("ACCOUNT_ALREADY_LINKED");
    const after = await storedRow(account.id);
    expect(after.json).toBe(before.json);
    expect(await listForUser(bob)).toEqual([]);
  });

  it("exactly one of two users racing to link the same identity wins", async () => {
    for (let round = 0; round < 5; round++) {
      const users2 = [await makeUser(), await makeUser()];
      const who = identity();
      const outcomes = await Promise.allSettled(
        users2.map((userId) => link({ userId, ...who, accessToken: providerToken() })),
      );
      expect(outcomes.filter((o) => o.status === "fulfilled")).toHaveLength(1);
      const lost = outcomes.find((o) => o.status === "rejected");
      expect(isDbError(lost?.status === "rejected" ? lost.reason : undefined, "ACCOUNT_ALREADY_LINKED")).toBe(
        true,
      );
    }
  });

  it("a relink by the same user updates the tokens: undefined keeps, null clears", async () => {
    const userId = await makeUser();
    const who = identity();
    const refreshToken = providerToken("1//0g");
    const first = await link({
      userId,
      ...who,
      scope: "openid",
      accessToken: providerToken(),
      accessTokenExpiresAt: new Date("2031-01-01T00:00:00Z"),
      refreshToken,
    });
    const accessToken = providerToken();
    const second = await link({ userId, ...who, accessToken, scope: "openid email" });
    expect(second.id).toBe(first.id);
    expect(second.scope).toBe("openid email");
    expect(second.accessTokenExpiresAt).toBeNull();
    expect(await getTokens(first.id)).toEqual({
      accessToken,
      accessTokenExpiresAt: null,
      refreshToken,
      refreshTokenExpiresAt: null,
    });
    await link({ userId, ...who, refreshToken: null });
    expect(await getTokens(first.id)).toMatchObject({ accessToken, refreshToken: null });
    expect(await listForUser(userId)).toHaveLength(1);
  });

  it("refuses unknown and soft-deleted users and bad input, writing nothing", async () => {
    const before = await accountCount();
    expect((await failure(link({ userId: uuidv7(), ...identity(), accessToken: "x" }))).code).toBe(
      "NOT_FOUND",
    );
    const userId = await makeUser();
    await db.update(users).set({ deletedAt: new Date() }).where(eq(users.id, userId));
    expect((await failure(link({ userId, ...identity() }))).code).toBe("NOT_FOUND");
    const live = await makeUser();
    for (const payload of [
      { userId: live, provider: "Google!", providerAccountId: "1" },
      { userId: live, provider: "google", providerAccountId: "" },
      { userId: live, provider: "google", providerAccountId: "a\u0000b" },
      { userId: live, ...identity(), accessToken: "" },
      { userId: live, ...identity(), accessTokenExpiresAt: new Date("nope") },
      { userId: "nope", ...identity() },
    ]) {
      expect((await failure(link(payload))).code).toBe("VALIDATION_FAILED");
    }
    expect(await accountCount()).toBe(before);
  });
});

describe("lookups and unlink", () => {
  it("findByProvider returns the account and its user, and hides soft-deleted users", async () => {
    const userId = await makeUser();
    const who = identity();
    const account = await link({ userId, ...who, accessToken: providerToken() });
    const found = await findByProvider(who);
    expect(found?.account).toEqual(account);
    expect(found?.user.id).toBe(userId);
    expect(found?.user).not.toHaveProperty("passwordHash");
    expect(found?.account).not.toHaveProperty("accessTokenCiphertext");
    expect(await findByProvider({ provider: "github", providerAccountId: who.providerAccountId })).toBeNull();

    await db.update(users).set({ deletedAt: new Date() }).where(eq(users.id, userId));
    expect(await findByProvider(who)).toBeNull();
    expect((await failure(findByProvider({ provider: "", providerAccountId: "1" }))).code).toBe(
      "VALIDATION_FAILED",
    );
  });

  it("listForUser lists a user's identities oldest first", async () => {
    const userId = await makeUser();
    const first = await link({ userId, ...identity() });
    const second = await link({ userId, provider: "github", providerAccountId: "42" });
    expect((await listForUser(userId)).map((a) => a.id)).toEqual([first.id, second.id]);
    expect(await listForUser(await makeUser())).toEqual([]);
  });

  it("unlink removes an identity, scoped to its user when given, and is NOT_FOUND otherwise", async () => {
    const alice = await makeUser();
    const bob = await makeUser();
    const who = identity();
    const account = await link({ userId: alice, ...who, accessToken: providerToken() });
    expect((await failure(unlink({ accountId: account.id, userId: bob }))).code).toBe("NOT_FOUND");
    const removed = await unlink({ accountId: account.id, userId: alice });
    expect(removed.id).toBe(account.id);
    expect(await findByProvider(who)).toBeNull();
    expect(await getTokens(account.id)).toBeNull();
    expect((await failure(unlink({ accountId: account.id }))).code).toBe("NOT_FOUND");
    // Once unlinked, another user may link it.
    expect((await link({ userId: bob, ...who })).userId).toBe(bob);
  });

  it("every call is counted in db_queries_total for accounts", async () => {
    const read = async () =>
      (await dbQueriesTotal.get()).values
        .filter((v) => v.labels.table === "accounts")
        .reduce((sum, v) => sum + v.value, 0);
    const userId = await makeUser();
    const before = await read();
    const account = await link({ userId, ...identity(), accessToken: providerToken() });
    await getTokens(account.id);
    await listForUser(userId);
    await unlink({ accountId: account.id });
    expect(await read()).toBe(before + 4);
  });
});
