import { randomBytes } from "node:crypto";
import { eq } from "drizzle-orm";
import pg from "pg";
import { uuidv7 } from "uuidv7";
import { afterEach, describe, expect, it, vi } from "vitest";
import { db, transaction } from "../../src/connection.ts";
import { sha256 } from "../../src/crypto/secrets.ts";
import { DbError, isDbError } from "../../src/errors.ts";
import { dbQueriesTotal } from "../../src/metrics.ts";
import { sessions, users } from "../../src/schema/index.ts";
import {
  cleanupExpired,
  configureSessions,
  create,
  DEFAULT_SESSION_CONFIG,
  listForUser,
  revoke,
  revokeAllForUser,
  rotate,
  sessionConfig,
  validate,
} from "../../src/services/sessions.ts";
import { insertUser, manualClock, resetClock, setClock, useTestDatabase } from "../../src/testing/index.ts";

const database = useTestDatabase({ config: { poolMax: 20 } });

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const START = new Date("2031-03-01T12:00:00.000Z");

afterEach(() => {
  resetClock();
  configureSessions(DEFAULT_SESSION_CONFIG);
});

/** Moves the data layer's clock instead of sleeping. */
function useManualClock(start: Date = START) {
  const clock = manualClock(start);
  setClock(clock.now);
  return clock;
}

const makeUser = () => insertUser("session-user");

/** The stored row, read outside the services (node-postgres defaults: Date and Buffer). */
async function storedRow(id: string) {
  const result = await database.admin<{
    token_hash: Buffer;
    status: string;
    expires_at: Date;
    last_accessed_at: Date | null;
    updated_at: Date;
    created_at: Date;
    user_agent: string | null;
  }>("SELECT * FROM sessions WHERE id = $1", [id]);
  return result.rows[0];
}

async function sessionCount(): Promise<number> {
  const result = await database.admin<{ n: number }>("SELECT count(*)::int AS n FROM sessions");
  return result.rows[0]?.n ?? -1;
}

/** db_queries_total summed over every operation on the sessions table. */
async function sessionQueries(): Promise<number> {
  const metric = await dbQueriesTotal.get();
  return metric.values.filter((v) => v.labels.table === "sessions").reduce((sum, v) => sum + v.value, 0);
}

/** Counts the statements sent to PostgreSQL by any node-postgres client (pooled or not) while `fn` runs. */
async function countStatements<T>(fn: () => Promise<T>): Promise<{ result: T; statements: number }> {
  const spy = vi.spyOn(pg.Client.prototype, "query");
  try {
    const result = await fn();
    return { result, statements: spy.mock.calls.length };
  } finally {
    spy.mockRestore();
  }
}

async function failure(promise: Promise<unknown>): Promise<DbError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(error instanceof DbError)) throw new Error(`expected a DbError, got ${String(error)}`);
  return error;
}

describe("tokens", () => {
  it("issues 256-bit base64url tokens, all distinct, and stores only their SHA-256", async () => {
    const userId = await makeUser();
    const tokens: string[] = [];
    for (let round = 0; round < 50; round++) {
      const created = await Promise.all(
        Array.from({ length: 20 }, () => create({ userId, authMethod: "password" })),
      );
      tokens.push(...created.map((c) => c.token));
    }
    expect(tokens).toHaveLength(1000);
    expect(new Set(tokens).size).toBe(1000);
    for (const token of tokens) {
      expect(token).toMatch(/^[A-Za-z0-9_-]{43}$/);
      expect(Buffer.from(token, "base64url")).toHaveLength(32);
    }

    const { session, token } = await create({
      userId,
      authMethod: "password",
      ipAddress: "203.0.113.7",
      userAgent: "Mozilla/5.0",
      metadata: { device: "laptop" },
    });
    expect(session).not.toHaveProperty("tokenHash");
    const row = await storedRow(session.id);
    expect(row?.token_hash.equals(sha256(token))).toBe(true);
    // No column holds the token, in text or as its raw bytes (bytea renders as hex in JSON).
    const json = await database.admin<{ j: string }>(
      "SELECT row_to_json(s)::text AS j FROM sessions s WHERE id = $1",
      [session.id],
    );
    const text = json.rows[0]?.j ?? "";
    expect(text).toContain(session.id);
    expect(text).not.toContain(token);
    expect(text).not.toContain(Buffer.from(token, "base64url").toString("hex"));
    const everything = await database.admin<{ j: string }>(
      "SELECT coalesce(string_agg(row_to_json(s)::text, ''), '') AS j FROM sessions s",
    );
    for (const t of tokens.slice(0, 50)) expect(everything.rows[0]?.j).not.toContain(t);
  });
});

describe("create", () => {
  it("stores the request facts and computes the expiry from the clock", async () => {
    useManualClock();
    const userId = await makeUser();
    const { session } = await create({
      userId,
      authMethod: "oauth:google",
      ipAddress: "2001:db8::1",
      userAgent: "Mozilla/5.0 (X11; Linux x86_64)",
      metadata: { device: "phone" },
    });
    expect(session).toMatchObject({
      userId,
      status: "active",
      authMethod: "oauth:google",
      ipAddress: "2001:db8::1",
      userAgent: "Mozilla/5.0 (X11; Linux x86_64)",
      metadata: { device: "phone" },
      revokedAt: null,
    });
    expect(session.createdAt).toEqual(START);
    expect(session.lastAccessedAt).toEqual(START);
    expect(session.expiresAt).toEqual(new Date(START.getTime() + 7 * DAY));
  });

  it("cuts user agents to 512 characters and rejects absurd ones", async () => {
    const userId = await makeUser();
    const { session } = await create({ userId, authMethod: "password", userAgent: "a".repeat(600) });
    expect(session.userAgent).toBe("a".repeat(512));
    expect((await storedRow(session.id))?.user_agent).toHaveLength(512);
  });

  it("rejects bad input and unknown users, writing nothing", async () => {
    const userId = await makeUser();
    const before = await sessionCount();
    const bad = [
      { userId, authMethod: "password", ipAddress: "999.1.1.1" },
      { userId, authMethod: "password", ipAddress: "fe80::1%eth0" },
      { userId, authMethod: "password", userAgent: "x".repeat(1025) },
      { userId, authMethod: "Pass Word" },
      { userId: "not-a-uuid", authMethod: "password" },
    ];
    for (const payload of bad) {
      expect((await failure(create(payload))).code).toBe("VALIDATION_FAILED");
    }
    const unknown = await failure(create({ userId: uuidv7(), authMethod: "password" }));
    expect(unknown.code).toBe("NOT_FOUND");

    await db.update(users).set({ deletedAt: new Date() }).where(eq(users.id, userId));
    expect((await failure(create({ userId, authMethod: "password" }))).code).toBe("NOT_FOUND");
    expect(await sessionCount()).toBe(before);
  });
});

describe("validate", () => {
  it("returns the session and its user in exactly one statement, and does not write inside the refresh interval", async () => {
    const clock = useManualClock();
    const userId = await makeUser();
    const { session, token } = await create({ userId, authMethod: "password" });
    const before = await storedRow(session.id);
    clock.advance(59 * MINUTE);

    const queries = await sessionQueries();
    const { result, statements } = await countStatements(() => validate(token));
    expect(statements).toBe(1);
    expect(await sessionQueries()).toBe(queries + 1);

    expect(result?.session.id).toBe(session.id);
    expect(result?.session).not.toHaveProperty("tokenHash");
    expect(result?.session.expiresAt).toEqual(session.expiresAt);
    expect(result?.user.id).toBe(userId);
    expect(result?.user.email).toMatch(/@example\.com$/);
    expect(result?.user).not.toHaveProperty("passwordHash");

    const after = await storedRow(session.id);
    expect(after?.updated_at).toEqual(before?.updated_at);
    expect(after?.last_accessed_at).toEqual(START);
    expect(after?.expires_at).toEqual(before?.expires_at);
  });

  it("gives each caller its own answer without the session cache: a change to one never reaches the next", async () => {
    const userId = await makeUser();
    const { token } = await create({ userId, authMethod: "password" });
    const first = await validate(token);
    if (first === null) throw new Error("the session did not validate");
    // Not shared, so not frozen (the cache freezes what it keeps: session-feed.test.ts).
    expect(Object.isFrozen(first)).toBe(false);
    const email = first.user.email;
    (first.user as { email: string }).email = "changed@example.com";
    first.session.expiresAt.setTime(0);
    const second = await validate(token);
    expect(second).not.toBe(first);
    expect(second?.user).not.toBe(first.user);
    expect(second?.user.email).toBe(email);
    expect(second?.session.expiresAt.getTime()).toBeGreaterThan(0);
  });

  it("gives concurrent checks of one token, which share one read, answers that share nothing mutable", async () => {
    const userId = await makeUser();
    const { token } = await create({ userId, authMethod: "password", metadata: { device: { tags: ["a"] } } });
    const { result, statements } = await countStatements(() =>
      Promise.all([validate(token), validate(token)]),
    );
    expect(statements).toBe(1);
    const [a, b] = result;
    if (!a || !b) throw new Error("the session did not validate");
    (a.session.metadata as { device: { tags: string[] } }).device.tags.push("changed");
    a.session.createdAt.setTime(0);
    expect((b.session.metadata as { device: { tags: string[] } }).device.tags).toEqual(["a"]);
    expect(b.session.createdAt.getTime()).toBeGreaterThan(0);
  });

  it("slides the expiry once the refresh interval has passed, and the absolute lifetime caps it", async () => {
    const clock = useManualClock();
    const userId = await makeUser();
    const { session, token } = await create({ userId, authMethod: "password" });
    const before = await storedRow(session.id);

    clock.advance(HOUR + MINUTE);
    const at = new Date(START.getTime() + HOUR + MINUTE);
    const { result, statements } = await countStatements(() => validate(token));
    // The read, then (the refresh being due) the conditional refresh.
    expect(statements).toBe(2);
    // The answer reflects the refresh.
    expect(result?.session.lastAccessedAt).toEqual(at);
    expect(result?.session.expiresAt).toEqual(new Date(at.getTime() + 7 * DAY));
    const after = await storedRow(session.id);
    expect(after?.last_accessed_at).toEqual(at);
    expect(after?.expires_at).toEqual(new Date(at.getTime() + 7 * DAY));
    expect(after?.updated_at.getTime()).toBeGreaterThan(before?.updated_at.getTime() ?? 0);
    expect(result?.session.updatedAt).toEqual(after?.updated_at);

    // Keep using it every 6 days: it lives on until 30 days after creation, never beyond.
    const absoluteEnd = new Date(START.getTime() + 30 * DAY);
    for (let step = 1; step <= 4; step++) {
      clock.advance(6 * DAY);
      const again = await validate(token);
      expect(again?.session.id).toBe(session.id);
      expect(again?.session.expiresAt.getTime()).toBeLessThanOrEqual(absoluteEnd.getTime());
    }
    expect((await storedRow(session.id))?.expires_at).toEqual(absoluteEnd);
    clock.set(new Date(absoluteEnd.getTime() - 1));
    expect(await validate(token)).not.toBeNull();
    clock.set(absoluteEnd);
    expect(await validate(token)).toBeNull();
    // Left for cleanupExpired(): a check of a dead token writes nothing.
    expect(await storedRow(session.id)).toBeDefined();
    expect(await cleanupExpired()).toBeGreaterThanOrEqual(1);
    expect(await storedRow(session.id)).toBeUndefined();
  });

  it("returns null for an idle-expired session in one statement that writes nothing", async () => {
    const clock = useManualClock();
    const userId = await makeUser();
    const { session, token } = await create({ userId, authMethod: "password" });
    clock.advance(7 * DAY - 1);
    expect(await validate(token)).not.toBeNull();

    const other = await create({ userId, authMethod: "password" });
    clock.advance(7 * DAY);
    const before = await storedRow(other.session.id);
    const { result, statements } = await countStatements(() => validate(other.token));
    expect(result).toBeNull();
    expect(statements).toBe(1);
    expect(await storedRow(other.session.id)).toEqual(before);
    // cleanupExpired() removes it.
    expect(await cleanupExpired()).toBeGreaterThanOrEqual(1);
    expect(await storedRow(other.session.id)).toBeUndefined();
    expect(session.id).not.toBe(other.session.id);
  });

  it("returns null for revoked sessions and sessions of soft-deleted users", async () => {
    const userId = await makeUser();
    const revoked = await create({ userId, authMethod: "password" });
    const revokedSession = await revoke(revoked.session.id);
    expect(revokedSession.status).toBe("revoked");
    expect(revokedSession.revokedAt).toBeInstanceOf(Date);
    expect(await validate(revoked.token)).toBeNull();

    const live = await create({ userId, authMethod: "password" });
    expect(await validate(live.token)).not.toBeNull();
    await db.update(users).set({ deletedAt: new Date() }).where(eq(users.id, userId));
    expect(await validate(live.token)).toBeNull();
    // Not expired, so not deleted: restoring the user would bring the session back.
    expect((await storedRow(live.session.id))?.status).toBe("active");
    expect((await failure(rotate(live.token))).code).toBe("TOKEN_INVALID");
  });

  it("answers null for malformed and unknown tokens; a malformed one sends no query", async () => {
    const queries = await sessionQueries();
    for (const token of ["", "short", `${"a".repeat(43)}=`, "a".repeat(44), 42 as unknown as string]) {
      const { result, statements } = await countStatements(() => validate(token));
      expect(result).toBeNull();
      expect(statements).toBe(0);
    }
    expect(await sessionQueries()).toBe(queries);
    expect(await validate(randomBytes(32).toString("base64url"))).toBeNull();
  });
});

describe("rotate", () => {
  it("replaces the token: the old one dies, the session lives on", async () => {
    const userId = await makeUser();
    const { session, token } = await create({ userId, authMethod: "password" });
    const rotated = await rotate(token);
    expect(rotated.token).not.toBe(token);
    expect(rotated.token).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(rotated.session.id).toBe(session.id);
    expect(await validate(token)).toBeNull();
    expect((await validate(rotated.token))?.session.id).toBe(session.id);
    expect((await storedRow(session.id))?.token_hash.equals(sha256(rotated.token))).toBe(true);
    expect((await failure(rotate(token))).code).toBe("TOKEN_INVALID");
    expect((await failure(rotate("garbage"))).code).toBe("TOKEN_INVALID");
  });

  it("lets exactly one of two concurrent rotations win", async () => {
    const userId = await makeUser();
    for (let i = 0; i < 5; i++) {
      const { token } = await create({ userId, authMethod: "password" });
      const outcomes = await Promise.allSettled([rotate(token), rotate(token), rotate(token)]);
      const won = outcomes.filter((o) => o.status === "fulfilled");
      expect(won).toHaveLength(1);
      for (const o of outcomes) {
        if (o.status === "rejected") expect(isDbError(o.reason, "TOKEN_INVALID")).toBe(true);
      }
    }
  });

  it("refuses an expired session", async () => {
    const clock = useManualClock();
    const userId = await makeUser();
    const { token } = await create({ userId, authMethod: "password" });
    clock.advance(7 * DAY);
    expect((await failure(rotate(token))).code).toBe("TOKEN_INVALID");
  });
});

describe("revocation and listing", () => {
  it("revoke is NOT_FOUND for a missing session and VALIDATION_FAILED for a non-uuid", async () => {
    expect((await failure(revoke(uuidv7()))).code).toBe("NOT_FOUND");
    expect((await failure(revoke("nope"))).code).toBe("VALIDATION_FAILED");
  });

  it("revokeAllForUser revokes every live session but the one kept, and only the user's", async () => {
    const clock = useManualClock();
    const alice = await makeUser();
    const bob = await makeUser();
    const kept = await create({ userId: alice, authMethod: "password" });
    clock.advance(MINUTE);
    const others = [
      await create({ userId: alice, authMethod: "password" }),
      await create({ userId: alice, authMethod: "magic_link" }),
    ];
    const bobs = await create({ userId: bob, authMethod: "password" });

    expect(await revokeAllForUser({ userId: alice, except: kept.session.id })).toBe(2);
    expect((await listForUser(alice)).map((s) => s.id)).toEqual([kept.session.id]);
    for (const o of others) expect(await validate(o.token)).toBeNull();
    expect(await validate(kept.token)).not.toBeNull();
    expect(await validate(bobs.token)).not.toBeNull();
    expect(await revokeAllForUser({ userId: alice })).toBe(1);
    expect(await listForUser(alice)).toEqual([]);
    expect(await listForUser(bob)).toHaveLength(1);
  });

  it("listForUser returns live sessions newest first", async () => {
    const clock = useManualClock();
    const userId = await makeUser();
    const first = await create({ userId, authMethod: "password" });
    clock.advance(6 * DAY);
    const second = await create({ userId, authMethod: "password" });
    clock.advance(MINUTE);
    const third = await create({ userId, authMethod: "password" });
    await revoke(third.session.id);
    clock.advance(MINUTE);
    const fourth = await create({ userId, authMethod: "password" });
    expect((await listForUser(userId)).map((s) => s.id)).toEqual([
      fourth.session.id,
      second.session.id,
      first.session.id,
    ]);
    // The first one's idle timeout runs out: it drops off the list.
    clock.advance(DAY);
    const listed = await listForUser(userId);
    expect(listed.map((s) => s.id)).toEqual([fourth.session.id, second.session.id]);
    for (const s of listed) expect(s).not.toHaveProperty("tokenHash");
  });
});

describe("cleanupExpired", () => {
  it("deletes exactly the expired sessions when three cleanups run at once", async () => {
    await db.delete(sessions);
    const userId = await makeUser();
    const past = new Date(Date.now() - DAY);
    for (let chunk = 0; chunk < 5; chunk++) {
      await db.insert(sessions).values(
        Array.from({ length: 500 }, () => ({
          userId,
          tokenHash: randomBytes(32),
          authMethod: "password",
          expiresAt: past,
        })),
      );
    }
    const live = await Promise.all(
      Array.from({ length: 10 }, () => create({ userId, authMethod: "password" })),
    );
    const revoked = live[0];
    if (!revoked) throw new Error("no session");
    await revoke(revoked.session.id);
    expect(await sessionCount()).toBe(2510);

    const counts = await Promise.all([
      cleanupExpired({ batchSize: 150 }),
      cleanupExpired({ batchSize: 150 }),
      cleanupExpired({ batchSize: 150 }),
    ]);
    // The revoked session is expired as of its revocation, so it goes too.
    expect(counts.reduce((a, b) => a + b, 0)).toBe(2501);
    expect(await sessionCount()).toBe(9);
    expect(await cleanupExpired()).toBe(0);
  });

  it("skips rows another transaction holds instead of waiting for them", async () => {
    await db.delete(sessions);
    const userId = await makeUser();
    await db.insert(sessions).values(
      Array.from({ length: 40 }, () => ({
        userId,
        tokenHash: randomBytes(32),
        authMethod: "password",
        expiresAt: new Date(Date.now() - HOUR),
      })),
    );
    const holder = new pg.Client({ connectionString: database.url });
    await holder.connect();
    try {
      await holder.query("BEGIN");
      await holder.query("SELECT id FROM sessions ORDER BY id LIMIT 10 FOR UPDATE");
      const timeout = new Promise<never>((_, reject) => {
        setTimeout(() => reject(new Error("cleanupExpired waited for a locked row")), 2000).unref();
      });
      expect(await Promise.race([cleanupExpired({ batchSize: 7 }), timeout])).toBe(30);
      await holder.query("ROLLBACK");
    } finally {
      await holder.end();
    }
    expect(await cleanupExpired()).toBe(10);
  });

  it("stops after maxBatches and runs inside a caller's transaction", async () => {
    await db.delete(sessions);
    const userId = await makeUser();
    await db.insert(sessions).values(
      Array.from({ length: 30 }, () => ({
        userId,
        tokenHash: randomBytes(32),
        authMethod: "password",
        expiresAt: new Date(Date.now() - HOUR),
      })),
    );
    expect(await cleanupExpired({ batchSize: 10, maxBatches: 2 })).toBe(20);
    await expect(
      transaction(async (tx) => {
        expect(await cleanupExpired({ batchSize: 4 }, { tx })).toBe(10);
        throw new Error("roll back");
      }),
    ).rejects.toThrow("roll back");
    expect(await sessionCount()).toBe(10);
    expect((await failure(cleanupExpired({ batchSize: 0 }))).code).toBe("VALIDATION_FAILED");
  });
});

describe("configuration and metrics", () => {
  it("rejects nonsense configuration and keeps the previous one; per-call overrides apply", async () => {
    expect(sessionConfig()).toEqual({
      idleTimeoutMs: 7 * DAY,
      absoluteLifetimeMs: 30 * DAY,
      refreshIntervalMs: HOUR,
      maxPerUser: 50,
    });
    for (const bad of [
      { refreshIntervalMs: 7 * DAY },
      { idleTimeoutMs: 31 * DAY },
      { absoluteLifetimeMs: -1 },
      { refreshIntervalMs: 1.5 },
      { maxPerUser: 0 },
      { maxPerUser: 10_001 },
      { maxPerUser: 2.5 },
    ]) {
      const error = (() => {
        try {
          configureSessions(bad);
        } catch (e) {
          return e;
        }
      })();
      expect(isDbError(error, "CONFIG_INVALID")).toBe(true);
    }
    expect(sessionConfig()).toEqual(DEFAULT_SESSION_CONFIG);

    useManualClock();
    const userId = await makeUser();
    const { session, token } = await create(
      { userId, authMethod: "password" },
      {
        config: { idleTimeoutMs: 2 * HOUR, refreshIntervalMs: MINUTE },
      },
    );
    expect(session.expiresAt).toEqual(new Date(START.getTime() + 2 * HOUR));
    configureSessions({ idleTimeoutMs: HOUR, refreshIntervalMs: MINUTE });
    expect(sessionConfig().idleTimeoutMs).toBe(HOUR);
    // Past the new process-wide refresh interval, validate() slides the expiry with the new idle timeout.
    useManualClock(new Date(START.getTime() + 2 * MINUTE));
    const result = await validate(token);
    expect(result?.session.expiresAt).toEqual(new Date(START.getTime() + 2 * MINUTE + HOUR));
    await expect(
      create({ userId, authMethod: "password" }, { config: { refreshIntervalMs: 2 * HOUR } }),
    ).rejects.toMatchObject({ code: "CONFIG_INVALID" });
  });

  it("every call moves db_queries_total for the sessions table", async () => {
    const userId = await makeUser();
    const calls: Array<() => Promise<unknown>> = [];
    let token = "";
    let id = "";
    calls.push(async () => {
      const created = await create({ userId, authMethod: "password" });
      token = created.token;
      id = created.session.id;
    });
    calls.push(() => validate(token));
    calls.push(async () => {
      token = (await rotate(token)).token;
    });
    calls.push(() => listForUser(userId));
    calls.push(() => revoke(id));
    calls.push(() => revokeAllForUser({ userId }));
    calls.push(() => cleanupExpired());
    for (const call of calls) {
      const before = await sessionQueries();
      await call();
      expect(await sessionQueries()).toBeGreaterThan(before);
    }
  });

  it("runs inside a caller's transaction and rolls back with it", async () => {
    const userId = await makeUser();
    const before = await sessionCount();
    await expect(
      transaction(async (tx) => {
        const { token } = await create({ userId, authMethod: "password" }, { tx });
        expect(await validate(token, { tx })).not.toBeNull();
        throw new Error("undo");
      }),
    ).rejects.toThrow("undo");
    expect(await sessionCount()).toBe(before);
  });
});
