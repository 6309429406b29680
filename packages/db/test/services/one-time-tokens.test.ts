import { createHmac } from "node:crypto";
import { eq, sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { db, getPool, transaction } from "../../src/connection.ts";
import { sha256 } from "../../src/crypto/secrets.ts";
import type { Logger } from "../../src/logger.ts";
import { registry } from "../../src/metrics.ts";
import { oneTimeTokens, users } from "../../src/schema/index.ts";
import {
  CODE_KEY_MIN_BYTES,
  cleanupExpired,
  configureOneTimeCodes,
  consume,
  create,
  createCode,
  invalidateForUser,
  peek,
  verifyCode,
} from "../../src/services/one-time-tokens.ts";
import { expectDbError, insertUser, useManualClock, useTestDatabase } from "../../src/testing/index.ts";

const database = useTestDatabase({ config: { poolMax: 60 } });

const clock = useManualClock(new Date("2030-01-01T00:00:00.000Z"));

const makeUser = () => insertUser("token-user");

async function rowCount(): Promise<number> {
  const result = await database.admin<{ n: string }>("SELECT count(*) AS n FROM one_time_tokens");
  return Number(result.rows[0]?.n);
}

function rawRow(id: string) {
  return db.select().from(oneTimeTokens).where(eq(oneTimeTokens.id, id));
}

describe("create / consume", () => {
  it("stores only the digest and returns a record without it", async () => {
    const userId = await makeUser();
    const { token, record } = await create({ userId, purpose: "password_reset", sentTo: " A@Example.com " });
    expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(record).not.toHaveProperty("tokenHash");
    expect(record.sentTo).toBe("a@example.com");
    expect(record.userId).toBe(userId);
    // Default TTL for password_reset: 1 hour, from the (manual) clock.
    expect(record.expiresAt.getTime()).toBe(clock.now().getTime() + 3_600_000);
    const [row] = await rawRow(record.id);
    expect(row?.tokenHash.equals(sha256(token))).toBe(true);
    // No column, seen as text, contains the raw token.
    const text = await database.admin<{ t: string }>(
      "SELECT t::text AS t FROM one_time_tokens t WHERE id = $1",
      [record.id],
    );
    expect(text.rows[0]?.t).not.toContain(token);
    expect(text.rows[0]?.t).not.toContain(Buffer.from(token).toString("hex"));
  });

  it("consumes once; peek does not consume", async () => {
    const { token, record } = await create({ purpose: "magic_link", sentTo: "peek@example.com" });
    expect((await peek(token, "magic_link"))?.id).toBe(record.id);
    expect((await peek(token, "magic_link"))?.id).toBe(record.id);
    const used = await consume(token, "magic_link");
    expect(used?.id).toBe(record.id);
    expect(used?.usedAt?.getTime()).toBe(clock.now().getTime());
    expect(await consume(token, "magic_link")).toBeNull();
    expect(await peek(token, "magic_link")).toBeNull();
  });

  it("50 parallel consumes of one token: exactly one wins", async () => {
    const { token, record } = await create({ purpose: "magic_link", sentTo: "race@example.com" });
    const results = await Promise.all(Array.from({ length: 50 }, () => consume(token, "magic_link")));
    const winners = results.filter((r) => r !== null);
    expect(winners).toHaveLength(1);
    expect(winners[0]?.id).toBe(record.id);
    // They really ran on separate connections at once.
    expect(getPool().totalCount).toBeGreaterThan(10);
  });

  it("a consume inside a rolled-back transaction leaves the token usable", async () => {
    const { token, record } = await create({ purpose: "password_reset", sentTo: "tx@example.com" });
    await expect(
      transaction(async (tx) => {
        const used = await consume(token, "password_reset", { tx });
        expect(used?.id).toBe(record.id);
        // Inside the transaction it is already used.
        expect(await consume(token, "password_reset", { tx })).toBeNull();
        throw new Error("abort the flow");
      }),
    ).rejects.toThrow("abort the flow");
    expect((await consume(token, "password_reset"))?.id).toBe(record.id);
  });

  it("expires exactly at expires_at, by the clock", async () => {
    const { token } = await create({ purpose: "magic_link", sentTo: "clock@example.com", ttlMs: 60_000 });
    clock.advance(59_999);
    expect(await peek(token, "magic_link")).not.toBeNull();
    clock.advance(1);
    // expires_at = now: no longer valid.
    expect(await peek(token, "magic_link")).toBeNull();
    expect(await consume(token, "magic_link")).toBeNull();
  });

  it("wrong purpose, deleted and malformed tokens give null", async () => {
    const userId = await makeUser();
    const { token } = await create({ userId, purpose: "email_verification", sentTo: "p@example.com" });
    expect(await consume(token, "password_reset")).toBeNull();
    expect(await invalidateForUser(userId)).toBe(1);
    expect(await consume(token, "email_verification")).toBeNull();
    expect(await consume("not-a-token", "email_verification")).toBeNull();
    expect(await consume(`${token.slice(0, 42)}!`, "email_verification")).toBeNull();
    expect(await peek("", "email_verification")).toBeNull();
  });

  it("a new token retires older live ones of the same user and purpose only", async () => {
    const userId = await makeUser();
    const other = await makeUser();
    const first = await create({ userId, purpose: "password_reset", sentTo: "u@example.com" });
    const otherPurpose = await create({ userId, purpose: "email_verification", sentTo: "u@example.com" });
    const otherUser = await create({ userId: other, purpose: "password_reset", sentTo: "o@example.com" });
    const second = await create({ userId, purpose: "password_reset", sentTo: "u@example.com" });
    expect(await peek(first.token, "password_reset")).toBeNull();
    expect(await consume(first.token, "password_reset")).toBeNull();
    expect((await rawRow(first.record.id))[0]?.deletedAt).not.toBeNull();
    expect(await peek(second.token, "password_reset")).not.toBeNull();
    expect(await peek(otherPurpose.token, "email_verification")).not.toBeNull();
    expect(await peek(otherUser.token, "password_reset")).not.toBeNull();
  });

  it("without a user, a new token retires older ones sent to the same address", async () => {
    const a = await create({ purpose: "invite", sentTo: "guest@example.com" });
    const other = await create({ purpose: "invite", sentTo: "else@example.com" });
    const b = await create({ purpose: "invite", sentTo: "GUEST@example.com" });
    expect(await peek(a.token, "invite")).toBeNull();
    expect(await peek(other.token, "invite")).not.toBeNull();
    expect(b.record.expiresAt.getTime()).toBe(clock.now().getTime() + 7 * 24 * 3_600_000);
  });

  it("concurrent creates for one target leave exactly one live token", async () => {
    const userId = await makeUser();
    const issued = await Promise.all(
      Array.from({ length: 10 }, () => create({ userId, purpose: "magic_link", sentTo: "many@example.com" })),
    );
    const live = await Promise.all(issued.map(({ token }) => peek(token, "magic_link")));
    expect(live.filter((r) => r !== null)).toHaveLength(1);
  });

  it("rejects bad input with VALIDATION_FAILED and writes nothing", async () => {
    const before = await rowCount();
    await expectDbError(create({ purpose: "bogus" as never, sentTo: "x@example.com" }), "VALIDATION_FAILED");
    await expectDbError(create({ purpose: "invite", sentTo: "x".repeat(321) }), "VALIDATION_FAILED");
    await expectDbError(create({ purpose: "invite", sentTo: "  " }), "VALIDATION_FAILED");
    await expectDbError(
      create({ userId: "nope", purpose: "invite", sentTo: "x@example.com" }),
      "VALIDATION_FAILED",
    );
    await expectDbError(
      create({ purpose: "invite", sentTo: "x@example.com", ttlMs: 31 * 24 * 3_600_000 }),
      "VALIDATION_FAILED",
    );
    await expectDbError(
      createCode({ purpose: "invite", sentTo: "x@example.com", digits: 3 }),
      "VALIDATION_FAILED",
    );
    await expectDbError(consume("a".repeat(43), "bogus" as never), "VALIDATION_FAILED");
    await expectDbError(
      verifyCode({ sentTo: "x@example.com", purpose: "nope" as never, code: "123456" }),
      "VALIDATION_FAILED",
    );
    await expectDbError(invalidateForUser("not-a-uuid"), "VALIDATION_FAILED");
    await expectDbError(cleanupExpired({ batchSize: 0 }), "VALIDATION_FAILED");
    expect(await rowCount()).toBe(before);
  });

  it("rejects unknown fields instead of silently ignoring them (a `ttl` typo must not give the default lifetime)", async () => {
    const before = await rowCount();
    await expectDbError(
      create({ purpose: "invite", sentTo: "typo@example.com", ttl: 1000 } as never),
      "VALIDATION_FAILED",
    );
    expect(await rowCount()).toBe(before);
  });

  it("reports an unknown user as NOT_FOUND", async () => {
    await expectDbError(
      create({ userId: "0190a0a0-0000-7000-8000-000000000000", purpose: "invite", sentTo: "fk@example.com" }),
      "NOT_FOUND",
    );
  });

  it("neither issues nor honours tokens of a soft-deleted user", async () => {
    const userId = await makeUser();
    const { token } = await create({ userId, purpose: "password_reset", sentTo: "gone@example.com" });
    await db.update(users).set({ deletedAt: new Date() }).where(eq(users.id, userId));
    expect(await peek(token, "password_reset")).toBeNull();
    expect(await consume(token, "password_reset")).toBeNull();
    await expectDbError(
      create({ userId, purpose: "password_reset", sentTo: "gone@example.com" }),
      "NOT_FOUND",
    );
  });

  it("never logs the token", async () => {
    const lines: string[] = [];
    const capture = (fields: Record<string, unknown>, message: string) => {
      lines.push(JSON.stringify({ fields, message }));
    };
    const logger: Logger = { audit: capture, error: capture, warn: capture, info: capture, debug: capture };
    const { token } = await create({ purpose: "magic_link", sentTo: "log@example.com" }, logger);
    await consume(token, "magic_link", logger);
    expect(lines.some((l) => l.includes("one-time token issued"))).toBe(true);
    expect(lines.some((l) => l.includes("one-time token used"))).toBe(true);
    for (const line of lines) {
      expect(line).not.toContain(token);
      expect(line).not.toContain("log@example.com");
    }
  });
});

describe("codes", () => {
  const KEY = "code-key-for-tests-0123456789abcdefghij";
  beforeAll(() => configureOneTimeCodes({ key: KEY }));
  afterAll(() => configureOneTimeCodes(null));

  it("stores HMAC-SHA-256(key, id:code), not the code, and verifies once", async () => {
    const { code, record } = await createCode({ purpose: "phone_verification", sentTo: "+14155550123" });
    expect(code).toMatch(/^\d{6}$/);
    expect(record.expiresAt.getTime()).toBe(clock.now().getTime() + 10 * 60_000);
    const [row] = await rawRow(record.id);
    const hmac = createHmac("sha256", KEY).update(`${record.id}:${code}`).digest();
    expect(row?.tokenHash.equals(hmac)).toBe(true);
    expect(row?.tokenHash.equals(sha256(`${record.id}:${code}`))).toBe(false);
    expect(row?.tokenHash.equals(sha256(code))).toBe(false);
    const text = await database.admin<{ t: string }>(
      "SELECT t::text AS t FROM one_time_tokens t WHERE id = $1",
      [record.id],
    );
    expect(text.rows[0]?.t.replace(record.id, "")).not.toContain(code);
    const used = await verifyCode({ sentTo: "+14155550123", purpose: "phone_verification", code });
    expect(used?.id).toBe(record.id);
    expect(used?.attempts).toBe(0);
    expect(await verifyCode({ sentTo: "+14155550123", purpose: "phone_verification", code })).toBeNull();
  });

  it("counts wrong attempts and keeps the right code working below the limit", async () => {
    const { code, record } = await createCode({ purpose: "email_verification", sentTo: "c@example.com" });
    const wrong = code === "000000" ? "000001" : "000000";
    for (let i = 0; i < 3; i++) {
      expect(
        await verifyCode({ sentTo: "c@example.com", purpose: "email_verification", code: wrong }),
      ).toBeNull();
    }
    expect((await rawRow(record.id))[0]?.attempts).toBe(3);
    // A malformed guess costs nothing.
    expect(
      await verifyCode({ sentTo: "c@example.com", purpose: "email_verification", code: "12ab" }),
    ).toBeNull();
    expect((await rawRow(record.id))[0]?.attempts).toBe(3);
    const used = await verifyCode({ sentTo: "C@example.com ", purpose: "email_verification", code });
    expect(used?.id).toBe(record.id);
    expect(used?.attempts).toBe(3);
  });

  it("dies after 5 wrong attempts, even with the right code", async () => {
    const { code, record } = await createCode({ purpose: "phone_verification", sentTo: "+15550000001" });
    const wrong = code === "999999" ? "999998" : "999999";
    for (let i = 0; i < 5; i++) {
      await verifyCode({ sentTo: "+15550000001", purpose: "phone_verification", code: wrong });
    }
    expect(await verifyCode({ sentTo: "+15550000001", purpose: "phone_verification", code })).toBeNull();
    const [row] = await rawRow(record.id);
    expect(row?.attempts).toBe(5);
    expect(row?.usedAt).toBeNull();
  });

  it("honours maxAttempts", async () => {
    const { code } = await createCode({ purpose: "phone_verification", sentTo: "+15550000002" });
    const wrong = code === "111111" ? "111112" : "111111";
    await verifyCode(
      { sentTo: "+15550000002", purpose: "phone_verification", code: wrong },
      {
        maxAttempts: 1,
      },
    );
    expect(
      await verifyCode(
        { sentTo: "+15550000002", purpose: "phone_verification", code },
        {
          maxAttempts: 1,
        },
      ),
    ).toBeNull();
  });

  it("50 parallel verifications with the right code: exactly one wins", async () => {
    const { code, record } = await createCode({ purpose: "phone_verification", sentTo: "+15550000003" });
    const results = await Promise.all(
      Array.from({ length: 50 }, () =>
        verifyCode({ sentTo: "+15550000003", purpose: "phone_verification", code }),
      ),
    );
    const winners = results.filter((r) => r !== null);
    expect(winners).toHaveLength(1);
    expect(winners[0]?.id).toBe(record.id);
  });

  it("parallel wrong guesses cannot exceed maxAttempts in total", async () => {
    const { code, record } = await createCode({ purpose: "phone_verification", sentTo: "+15550000004" });
    // 40 distinct wrong guesses plus the right one, all at once: at most 5 are ever compared, so the right
    // one only wins if it happened to be among them, and the attempt counter never passes 5.
    const guesses = Array.from({ length: 40 }, (_, i) =>
      String((Number(code) + 1 + i) % 1_000_000).padStart(6, "0"),
    );
    const results = await Promise.all(
      [...guesses, code].map((guess) =>
        verifyCode({ sentTo: "+15550000004", purpose: "phone_verification", code: guess }),
      ),
    );
    const [row] = await rawRow(record.id);
    expect(row?.attempts).toBeLessThanOrEqual(5);
    expect(results.filter((r) => r !== null).length).toBeLessThanOrEqual(1);
    // Every comparison of a wrong guess was counted: 5 reservations, minus one given back on success.
    expect(row?.attempts).toBe(row?.usedAt ? 4 : 5);
  });

  it("a new code retires the old one; expired codes fail", async () => {
    const first = await createCode({ purpose: "phone_verification", sentTo: "+15550000005" });
    const second = await createCode({ purpose: "phone_verification", sentTo: "+15550000005" });
    expect((await rawRow(first.record.id))[0]?.deletedAt).not.toBeNull();
    if (first.code !== second.code) {
      expect(
        await verifyCode({ sentTo: "+15550000005", purpose: "phone_verification", code: first.code }),
      ).toBeNull();
      // The old code was compared against the live (new) one and counted as a wrong guess there.
      expect((await rawRow(second.record.id))[0]?.attempts).toBe(1);
    }
    const attempts = (await rawRow(second.record.id))[0]?.attempts;
    clock.advance(10 * 60_000);
    expect(
      await verifyCode({ sentTo: "+15550000005", purpose: "phone_verification", code: second.code }),
    ).toBeNull();
    // An expired code is not even looked at: no attempt is counted.
    expect((await rawRow(second.record.id))[0]?.attempts).toBe(attempts);
  });

  it("rejects a code lifetime over an hour", async () => {
    await expectDbError(
      createCode({ purpose: "phone_verification", sentTo: "+15550000006", ttlMs: 2 * 3_600_000 }),
      "VALIDATION_FAILED",
    );
  });
});

describe("invalidateForUser", () => {
  it("retires live tokens, optionally of one purpose, and counts them", async () => {
    const userId = await makeUser();
    const reset = await create({ userId, purpose: "password_reset", sentTo: "i@example.com" });
    const verify = await create({ userId, purpose: "email_verification", sentTo: "i@example.com" });
    expect(await invalidateForUser(userId, { purpose: "password_reset" })).toBe(1);
    expect(await peek(reset.token, "password_reset")).toBeNull();
    expect(await peek(verify.token, "email_verification")).not.toBeNull();
    expect(await invalidateForUser(userId)).toBe(1);
    expect(await invalidateForUser(userId)).toBe(0);
  });
});

describe("cleanupExpired", () => {
  it("hard-deletes expired, used and retired tokens and keeps live ones", async () => {
    await db.delete(oneTimeTokens);
    const live = await create({ purpose: "invite", sentTo: "live@example.com" });
    const used = await create({ purpose: "magic_link", sentTo: "used@example.com" });
    await consume(used.token, "magic_link");
    const retired = await create({ purpose: "magic_link", sentTo: "retired@example.com" });
    await create({ purpose: "magic_link", sentTo: "retired@example.com" });
    const expiring = await create({
      purpose: "phone_verification",
      sentTo: "exp@example.com",
      ttlMs: 60_000,
    });
    clock.advance(60_000);
    expect(await cleanupExpired({ batchSize: 1 })).toBe(3);
    const left = await db.select({ id: oneTimeTokens.id }).from(oneTimeTokens);
    expect(left.map((r) => r.id)).not.toContain(used.record.id);
    expect(left.map((r) => r.id)).not.toContain(retired.record.id);
    expect(left.map((r) => r.id)).not.toContain(expiring.record.id);
    expect(left.map((r) => r.id)).toContain(live.record.id);
    expect(left).toHaveLength(2);
    expect(await cleanupExpired()).toBe(0);
  });

  it("three concurrent cleaners delete each row once in total", async () => {
    await db.delete(oneTimeTokens);
    const at = clock.now();
    // 3,000 expired rows, written directly.
    await db.execute(sql`
      INSERT INTO one_time_tokens (id, purpose, token_hash, sent_to, expires_at)
      SELECT gen_random_uuid(), 'magic_link', sha256(convert_to(g::text, 'UTF8')), 'bulk' || g, ${at}::timestamptz
      FROM generate_series(1, 3000) AS g`);
    clock.advance(1);
    const counts = await Promise.all([0, 1, 2].map(() => cleanupExpired({ batchSize: 100 })));
    expect(counts.reduce((a, b) => a + b, 0)).toBe(3000);
    expect(await rowCount()).toBe(0);
  });
});

describe("metrics", () => {
  it("counts queries on one_time_tokens", async () => {
    const read = async () => {
      const metric = await registry.getSingleMetric("db_queries_total")?.get();
      return (metric?.values ?? [])
        .filter((v) => v.labels.table === "one_time_tokens")
        .reduce((sum, v) => sum + v.value, 0);
    };
    const before = await read();
    const { token } = await create({ purpose: "magic_link", sentTo: "m@example.com" });
    await consume(token, "magic_link");
    // create: the lock, then one statement that retires and inserts; consume: one update.
    expect(await read()).toBe(before + 3);
  });
});

describe("code keys", () => {
  it("someone who reads the table cannot recover a code without the server-side key", async () => {
    configureOneTimeCodes({ key: "the-real-server-side-key-0123456789abcdef" });
    try {
      const { code, record } = await createCode({
        purpose: "phone_verification",
        sentTo: "+14155550199",
        digits: 6,
      });
      const [row] = await rawRow(record.id);
      // The attack on a plain or salted digest: try every 6-digit code against the stored hash (the salt, the
      // row id, sits in the same row). It finds the code at once for sha256; it finds nothing for the HMAC.
      let found: string | undefined;
      for (let guess = 0; guess < 1_000_000 && found === undefined; guess++) {
        const candidate = String(guess).padStart(6, "0");
        if (sha256(`${record.id}:${candidate}`).equals(row?.tokenHash ?? Buffer.alloc(0))) found = candidate;
      }
      expect(found).toBeUndefined();
      // With a wrong key the same search finds nothing either; with the real one the code verifies.
      configureOneTimeCodes({ key: "a-guessed-key-that-is-long-enough-000000" });
      expect(await verifyCode({ sentTo: "+14155550199", purpose: "phone_verification", code })).toBeNull();
      configureOneTimeCodes({ key: "the-real-server-side-key-0123456789abcdef" });
      const used = await verifyCode({ sentTo: "+14155550199", purpose: "phone_verification", code });
      // The wrong-key guess cost one attempt, the right code still works below the limit.
      expect(used?.id).toBe(record.id);
      expect(code).toHaveLength(6);
    } finally {
      configureOneTimeCodes(null);
    }
  });

  it("refuses to issue or check codes without a key, and refuses a short key", async () => {
    configureOneTimeCodes(null);
    const before = await rowCount();
    await expectDbError(
      createCode({ purpose: "phone_verification", sentTo: "+14155550100" }),
      "CONFIG_INVALID",
    );
    await expectDbError(
      verifyCode({ sentTo: "+14155550100", purpose: "phone_verification", code: "123456" }),
      "CONFIG_INVALID",
    );
    expect(await rowCount()).toBe(before);
    expect(() => configureOneTimeCodes({ key: "x".repeat(CODE_KEY_MIN_BYTES - 1) })).toThrow(/at least 32/);
  });
});
