// The session change feed and the in-process session cache (sessions/feed.ts, migration 0008): cached checks
// answer without a query; a revocation through the services is refused at once, one typed by hand in SQL as
// soon as its notification arrives (well before the cache's TTL); a deleted user's sessions go with it; a
// cached answer never outlives the session or skips its refresh; while the listening connection is down,
// checks read the database, and the cache starts empty when it is back.
import { uuidv7 } from "uuidv7";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { noopLogger } from "../../src/logger.ts";
import { dbQueriesTotal } from "../../src/metrics.ts";
import {
  sessionFeed,
  sessionFeedStatus,
  startSessionFeed,
  stopSessionFeed,
} from "../../src/services/sessions/feed.ts";
import { create, revoke, revokeAllForUser, validate } from "../../src/services/sessions.ts";
import { softDelete } from "../../src/services/users.ts";
import { insertUser, manualClock, resetClock, setClock, useTestDatabase } from "../../src/testing/index.ts";

const database = useTestDatabase();

/** A TTL far longer than any wait below: an entry that goes away was evicted, not expired. */
const LONG_TTL_MS = 60_000;

beforeEach(async () => {
  startSessionFeed({ url: database.url, cacheTtlMs: LONG_TTL_MS, logger: noopLogger, heartbeatMs: 60_000 });
  await until(() => sessionFeedStatus()?.live === true, "the feed to be live");
});

afterEach(async () => {
  await stopSessionFeed();
  resetClock();
});

async function until(
  check: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 10_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** Validation reads sent so far. */
async function validationReads(): Promise<number> {
  const metric = await dbQueriesTotal.get();
  return metric.values
    .filter((v) => v.labels.operation === "validate" && v.labels.table === "sessions")
    .reduce((sum, v) => sum + v.value, 0);
}

async function signedIn() {
  const userId = await insertUser("feed");
  const { session, token } = await create({ userId, authMethod: "password" });
  return { userId, session, token };
}

describe("the session cache", () => {
  it("answers a repeated check from memory, with one frozen answer shared by every hit", async () => {
    const { token, session, userId } = await signedIn();
    const heard = sessionFeedStatus()?.heard ?? 0;
    await database.admin(`UPDATE users SET metadata = '{"plan": {"seats": [1, 2]}}' WHERE id = $1`, [userId]);
    await database.admin(`UPDATE sessions SET metadata = '{"device": {"tags": ["a"]}}' WHERE id = $1`, [
      session.id,
    ]);
    // Its notification is heard before the checks below, so it cannot evict their entry in between.
    await until(() => (sessionFeedStatus()?.heard ?? 0) > heard, "the update's notification");
    const before = await validationReads();
    const first = await validate(token);
    const second = await validate(token);
    if (first === null) throw new Error("the session did not validate");
    expect(await validationReads()).toBe(before + 1);
    expect(second?.session.id).toBe(session.id);
    expect(second).toBe(first);
    // Shared, so frozen to the leaves: a caller cannot change what the next check is answered.
    expect(Object.isFrozen(first) && Object.isFrozen(first.session) && Object.isFrozen(first.user)).toBe(
      true,
    );
    expect(() => {
      (first.user as { email: string }).email = "changed@example.com";
    }).toThrow(TypeError);
    // A Date's setters still work, but no caller can give it a toJSON that changes the next check's JSON.
    expect(() => {
      (first.session.createdAt as unknown as { toJSON: () => string }).toJSON = () => "forged";
    }).toThrow(TypeError);
    const seats = (first.user.metadata as { plan: { seats: number[] } }).plan.seats;
    expect(() => seats.push(3)).toThrow(TypeError);
    const tags = (first.session.metadata as { device: { tags: string[] } }).device.tags;
    expect(() => tags.push("b")).toThrow(TypeError);
    expect((await validate(token))?.user.email).toBe(second?.user.email);
  });

  it("a revocation through the services is refused at once, in this process", async () => {
    const { token, session, userId } = await signedIn();
    expect(await validate(token)).not.toBeNull();
    await revoke(session.id);
    expect(await validate(token)).toBeNull();

    const other = await create({ userId, authMethod: "password" });
    expect(await validate(other.token)).not.toBeNull();
    await revokeAllForUser({ userId });
    expect(await validate(other.token)).toBeNull();
  });

  it("a revocation typed by hand in SQL is refused once its notification arrives", async () => {
    const { token, session } = await signedIn();
    expect(await validate(token)).not.toBeNull();
    const heard = sessionFeedStatus()?.heard ?? 0;
    const started = Date.now();
    await database.admin("UPDATE sessions SET status = 'revoked' WHERE id = $1", [session.id]);
    await until(async () => (await validate(token)) === null, "the revoked session to be refused");
    // Long before the entry's own TTL ran out: the notification evicted it.
    expect(Date.now() - started).toBeLessThan(LONG_TTL_MS / 10);
    expect(sessionFeedStatus()?.heard).toBeGreaterThan(heard);
  });

  it("a user deleted (softly, or in SQL) takes its cached sessions along", async () => {
    const a = await signedIn();
    const b = await signedIn();
    expect(await validate(a.token)).not.toBeNull();
    expect(await validate(b.token)).not.toBeNull();
    await softDelete(a.userId);
    expect(await validate(a.token)).toBeNull();
    await database.admin("UPDATE users SET deleted_at = now() WHERE id = $1", [b.userId]);
    await until(async () => (await validate(b.token)) === null, "the deleted user's session to be refused");
  });

  it("a profile edit made elsewhere is not answered from memory once its notification arrives", async () => {
    const { token, userId } = await signedIn();
    expect((await validate(token))?.user.firstName).toBeNull();
    await database.admin("UPDATE users SET first_name = 'Ada' WHERE id = $1", [userId]);
    await until(async () => (await validate(token))?.user.firstName === "Ada", "the new first name");
  });

  it("a refresh of the session's expiry (the hot path's only write) sends no notification", async () => {
    const { session } = await signedIn();
    const heard = sessionFeedStatus()?.heard ?? 0;
    await database.admin("UPDATE sessions SET expires_at = expires_at + interval '1 hour' WHERE id = $1", [
      session.id,
    ]);
    await database.admin("UPDATE sessions SET status = 'revoked' WHERE id = $1", [session.id]);
    await until(() => (sessionFeedStatus()?.heard ?? 0) > heard, "the revocation's notification");
    // Only the revocation was announced.
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(sessionFeedStatus()?.heard).toBe(heard + 1);
  });

  it("cleanup of an expired session announces nothing; a truncated table empties the cache", async () => {
    const { session, token } = await signedIn();
    const heard = sessionFeedStatus()?.heard ?? 0;
    await database.admin("UPDATE sessions SET expires_at = now() - interval '1 minute' WHERE id = $1", [
      session.id,
    ]);
    await until(() => (sessionFeedStatus()?.heard ?? 0) === heard + 1, "the expiry cut's notification");
    await database.admin("DELETE FROM sessions WHERE id = $1", [session.id]);
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(sessionFeedStatus()?.heard).toBe(heard + 1);
    expect(await validate(token)).toBeNull();

    const other = await signedIn();
    expect(await validate(other.token)).not.toBeNull();
    expect(sessionFeedStatus()?.cached).toBeGreaterThan(0);
    await database.admin("TRUNCATE user_roles");
    await until(() => sessionFeedStatus()?.cached === 0, "the cache to empty");
  });

  it("users changed by one statement are announced one by one up to 100, and as '*' beyond", async () => {
    const kept = await signedIn();
    const few = await Promise.all([signedIn(), signedIn(), signedIn()]);
    for (const { token } of [kept, ...few]) expect(await validate(token)).not.toBeNull();
    const heard = sessionFeedStatus()?.heard ?? 0;
    // Three users in one statement: three notifications, and only their sessions leave the cache.
    await database.admin("UPDATE users SET first_name = 'Few' WHERE id = ANY($1::uuid[])", [
      few.map((f) => f.userId),
    ]);
    await until(() => (sessionFeedStatus()?.heard ?? 0) === heard + 3, "three notifications");
    const reads = await validationReads();
    expect(await validate(kept.token)).not.toBeNull();
    expect(await validationReads()).toBe(reads);
    expect((await validate(few[0]?.token ?? ""))?.user.firstName).toBe("Few");
    expect(await validationReads()).toBe(reads + 1);

    // 101 users and more in one statement: one '*', and every process forgets everything.
    const ids = Array.from({ length: 150 }, () => uuidv7());
    await database.admin(
      "INSERT INTO users (id, email) SELECT id, 'bulk-' || id || '@example.com' FROM unnest($1::uuid[]) AS id",
      [ids],
    );
    expect(sessionFeedStatus()?.cached).toBeGreaterThan(0);
    const before = sessionFeedStatus()?.heard ?? 0;
    await database.admin("UPDATE users SET first_name = 'Bulk' WHERE id = ANY($1::uuid[])", [ids]);
    await until(() => sessionFeedStatus()?.cached === 0, "the cache to empty");
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(sessionFeedStatus()?.heard).toBe(before + 1);
    // A statement that changes no user announces nothing.
    await database.admin("UPDATE users SET first_name = 'None' WHERE false");
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(sessionFeedStatus()?.heard).toBe(before + 1);
  });

  it("never answers past the session's expiry, and never skips a due refresh", async () => {
    const clock = manualClock(new Date());
    setClock(clock.now);
    const { token } = await signedIn();
    const first = await validate(token);
    expect(first).not.toBeNull();
    // Past the refresh interval (an hour by default): the check goes to the database, which slides the expiry.
    clock.advance(61 * 60_000);
    const before = await validationReads();
    const refreshed = await validate(token);
    expect(await validationReads()).toBe(before + 1);
    expect(refreshed?.session.expiresAt.getTime()).toBeGreaterThan(first?.session.expiresAt.getTime() ?? 0);
    // Past the idle expiry: not answered from memory.
    clock.advance(8 * 24 * 60 * 60_000);
    expect(await validate(token)).toBeNull();
  });

  it("while the listening connection is down every check reads the database; back, it starts empty", async () => {
    const { token, session } = await signedIn();
    expect(await validate(token)).not.toBeNull();
    await database.admin(
      "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    );
    await until(() => sessionFeedStatus()?.live === false, "the feed to notice");
    expect(sessionFeedStatus()?.cached).toBe(0);
    // Nothing is heard now; a revocation is still refused, since the check reads the database.
    await database.admin("UPDATE sessions SET status = 'revoked' WHERE id = $1", [session.id]);
    expect(await validate(token)).toBeNull();
    await until(() => sessionFeedStatus()?.live === true, "the feed to reconnect");
    const other = await signedIn();
    const before = await validationReads();
    await validate(other.token);
    await validate(other.token);
    expect(await validationReads()).toBe(before + 1);
    expect(sessionFeed()).toBeDefined();
  });
});
