// Sessions under concurrency: the per-user cap on live sessions, revoking only one's own session, and the
// lock order of coalesced validation batches. Real PostgreSQL and real concurrent connections; every loop is
// bounded.
import pg from "pg";
import { afterEach, describe, expect, it, vi } from "vitest";
import { transaction } from "../../src/connection.ts";
import { sha256 } from "../../src/crypto/secrets.ts";
import { DbError } from "../../src/errors.ts";
import type { LogFields, Logger } from "../../src/logger.ts";
import { dbQueriesTotal } from "../../src/metrics.ts";
import {
  configureSessions,
  create,
  DEFAULT_SESSION_CONFIG,
  listForUser,
  revoke,
  validate,
} from "../../src/services/sessions.ts";
import { definedStatements } from "../../src/statements.ts";
import { insertUser, manualClock, resetClock, setClock, useTestDatabase } from "../../src/testing/index.ts";

// 30 parallel creations each hold a pooled connection while they wait their turn on the user row.
const database = useTestDatabase({ config: { poolMax: 32 } });

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

/** A logger that keeps the audit lines. */
function auditLog() {
  const lines: Array<{ fields: LogFields; message: string }> = [];
  const noop = () => {};
  const logger: Logger = {
    audit: (fields, message) => lines.push({ fields, message }),
    error: noop,
    warn: noop,
    info: noop,
    debug: noop,
  };
  return { logger, lines };
}

async function failure(promise: Promise<unknown>): Promise<DbError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(error instanceof DbError)) throw new Error(`expected a DbError, got ${String(error)}`);
  return error;
}

interface Row {
  id: string;
  status: string;
  expires_at: Date;
  revoked_at: Date | null;
  created_at: Date;
}

/** All of a user's rows, newest first (the order the cap keeps them in). */
async function rowsOf(userId: string): Promise<Row[]> {
  const result = await database.admin<Row>(
    `SELECT id, status, expires_at, revoked_at, created_at FROM sessions WHERE user_id = $1
     ORDER BY created_at DESC, id DESC`,
    [userId],
  );
  return result.rows;
}

/** The user's live session ids (active, not expired at `at`), newest first. */
async function liveIds(userId: string, at: Date = new Date()): Promise<string[]> {
  return (await rowsOf(userId))
    .filter((row) => row.status === "active" && row.expires_at > at)
    .map((row) => row.id);
}

async function connect(): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: database.url, connectionTimeoutMillis: 5000 });
  client.on("error", () => {});
  await client.connect();
  return client;
}

function statement(name: string) {
  const found = definedStatements().find((s) => s.name === name);
  if (!found) throw new Error(`statement ${name} is not defined`);
  return found;
}

/** What validate() binds for these tokens at `at` under the default lifetimes. */
function validateParams(tokens: readonly string[], at: Date): Record<string, unknown> {
  const hashes = tokens.map((token) => sha256(token));
  return {
    hash: hashes[0],
    hashes,
    at,
    absoluteCutoff: new Date(at.getTime() - DEFAULT_SESSION_CONFIG.absoluteLifetimeMs),
    idleExpiry: new Date(at.getTime() + DEFAULT_SESSION_CONFIG.idleTimeoutMs),
    absoluteSeconds: DEFAULT_SESSION_CONFIG.absoluteLifetimeMs / 1000,
    refreshCutoff: new Date(at.getTime() - DEFAULT_SESSION_CONFIG.refreshIntervalMs),
  };
}

/** How many session refreshes (the conditional UPDATE) this process has run. */
async function refreshCount(): Promise<number> {
  const metric = await dbQueriesTotal.get();
  return metric.values
    .filter((v) => v.labels.operation === "refresh" && v.labels.table === "sessions")
    .reduce((sum, v) => sum + v.value, 0);
}

/** Resolves to "pending" if `promise` has not settled after `ms`. */
async function stillPending(promise: Promise<unknown>, ms: number): Promise<boolean> {
  const pending = Symbol("pending");
  const timer = new Promise<symbol>((resolve) => setTimeout(() => resolve(pending), ms).unref());
  const settled = promise.then(
    () => "settled",
    () => "settled",
  );
  return (await Promise.race([settled, timer])) === pending;
}

describe("maxPerUser", () => {
  it("revokes the oldest live sessions so that exactly maxPerUser remain, the new one included", async () => {
    const clock = useManualClock();
    const { logger, lines } = auditLog();
    const userId = await insertUser("capped");
    const bystander = await insertUser("bystander");
    const config = { maxPerUser: 3 };
    for (let i = 0; i < 5; i++)
      await create({ userId: bystander, authMethod: "password" }, logger, { config });

    const made = [];
    for (let i = 0; i < 3; i++) {
      made.push(await create({ userId, authMethod: "password" }, logger, { config }));
      clock.advance(MINUTE);
    }
    const [s1, s2, s3] = made;
    if (!s1 || !s2 || !s3) throw new Error("sessions not created");
    expect(lines.at(-1)?.fields).toMatchObject({ sessionId: s3.session.id, revokedForCap: 0 });

    // A revoked session does not count: the fourth fits without revoking anything.
    await revoke(s2.session.id);
    clock.advance(MINUTE);
    const s4 = await create({ userId, authMethod: "password" }, logger, { config });
    expect(lines.at(-1)?.fields).toMatchObject({ revokedForCap: 0 });
    expect(await liveIds(userId, clock.now())).toEqual([s4.session.id, s3.session.id, s1.session.id]);

    // The fifth pushes out the oldest live one, revoked exactly as revoke() does.
    clock.advance(MINUTE);
    const at = clock.now();
    const s5 = await create({ userId, authMethod: "password" }, logger, { config });
    expect(lines.at(-1)).toMatchObject({
      message: "session created",
      fields: { sessionId: s5.session.id, userId, revokedForCap: 1, revokedSessionIds: [s1.session.id] },
    });
    expect(await liveIds(userId, at)).toEqual([s5.session.id, s4.session.id, s3.session.id]);
    const pushedOut = (await rowsOf(userId)).find((row) => row.id === s1.session.id);
    expect(pushedOut).toMatchObject({ status: "revoked", revoked_at: at, expires_at: at });
    expect(await validate(s1.token)).toBeNull();
    expect(await validate(s3.token)).not.toBeNull();

    // Lowering the cap revokes as many as needed in one go.
    const only = await create({ userId, authMethod: "password" }, logger, { config: { maxPerUser: 1 } });
    expect(lines.at(-1)?.fields).toMatchObject({ revokedForCap: 3 });
    expect(await liveIds(userId, clock.now())).toEqual([only.session.id]);
    // Nobody else's sessions were touched.
    expect(await liveIds(bystander, clock.now())).toHaveLength(3);
  });

  it("does not count (or revoke) sessions that are already expired", async () => {
    const clock = useManualClock();
    const userId = await insertUser("expired");
    const config = { maxPerUser: 2 };
    const old = await create({ userId, authMethod: "password" }, { config });
    clock.advance(7 * DAY);
    const b = await create({ userId, authMethod: "password" }, { config });
    const c = await create({ userId, authMethod: "password" }, { config });
    expect(await liveIds(userId, clock.now())).toEqual([c.session.id, b.session.id]);
    // Idle-expired, not revoked: it is left for cleanupExpired().
    expect((await rowsOf(userId)).find((row) => row.id === old.session.id)?.status).toBe("active");
  });

  it("holds under concurrency: 30 parallel creations with maxPerUser 5 leave exactly the 5 newest live", async () => {
    configureSessions({ maxPerUser: 5 });
    const { logger, lines } = auditLog();
    const userId = await insertUser("parallel");
    // Without the lock on the user row each creation's statement sees only the sessions committed before
    // it started, and this ends with up to 30 live sessions (checked once by removing the lock).
    for (let round = 0; round < 3; round++) {
      lines.length = 0;
      const before = await rowsOf(userId);
      const outcomes = await Promise.allSettled(
        Array.from({ length: 30 }, () => create({ userId, authMethod: "password" }, logger)),
      );
      expect(outcomes.filter((o) => o.status === "rejected")).toEqual([]);
      const rows = await rowsOf(userId);
      expect(rows).toHaveLength(before.length + 30);
      const live = await liveIds(userId);
      expect(live).toHaveLength(5);
      // The survivors are the newest five rows; every older one is revoked.
      expect(live).toEqual(rows.slice(0, 5).map((row) => row.id));
      expect(rows.slice(5).every((row) => row.status === "revoked")).toBe(true);
      // Each revocation was audited by the creation that made it, once.
      const revokedNow = lines.reduce((sum, line) => sum + Number(line.fields.revokedForCap), 0);
      expect(revokedNow).toBe(round === 0 ? 25 : 30);
    }
  });

  it("runs inside a caller's transaction: revocations roll back with it, and other creations wait for it", async () => {
    const userId = await insertUser("in-tx");
    const config = { maxPerUser: 2 };
    const a = await create({ userId, authMethod: "password" }, { config });
    const b = await create({ userId, authMethod: "password" }, { config });

    await expect(
      transaction(async (tx) => {
        const c = await create({ userId, authMethod: "password" }, { config, tx });
        expect((await listForUser(userId, { tx })).map((s) => s.id)).toEqual([c.session.id, b.session.id]);
        throw new Error("undo");
      }),
    ).rejects.toThrow("undo");
    expect(await liveIds(userId)).toEqual([b.session.id, a.session.id]);

    // A creation outside waits for the transaction holding the user row, then counts its session too.
    let outside: Promise<unknown> = Promise.resolve();
    const inside = await transaction(async (tx) => {
      const c = await create({ userId, authMethod: "password" }, { config, tx });
      outside = create({ userId, authMethod: "password" }, { config });
      expect(await stillPending(outside, 300)).toBe(true);
      return c;
    });
    const d = (await outside) as Awaited<ReturnType<typeof create>>;
    expect(await liveIds(userId)).toEqual([d.session.id, inside.session.id]);
  });

  it("waits for a soft delete in progress and then refuses: no session survives the user's deletion", async () => {
    const userId = await insertUser("deleting");
    const deleter = await connect();
    try {
      await deleter.query("BEGIN");
      await deleter.query("UPDATE users SET deleted_at = now() WHERE id = $1", [userId]);
      await deleter.query("UPDATE sessions SET status = 'revoked' WHERE user_id = $1", [userId]);
      const creating = failure(create({ userId, authMethod: "password" }));
      // Before the lock, the INSERT ... SELECT read the user as not deleted (its snapshot) and did not wait:
      // the session was created after the deletion's revocation and stayed live.
      expect(await stillPending(creating, 300)).toBe(true);
      await deleter.query("COMMIT");
      expect((await creating).code).toBe("NOT_FOUND");
    } finally {
      await deleter.end();
    }
    expect(await rowsOf(userId)).toEqual([]);
  });
});

describe("revoke with userId", () => {
  it("revokes only the user's own session, in one statement; someone else's is NOT_FOUND and untouched", async () => {
    const alice = await insertUser("alice");
    const bob = await insertUser("bob");
    const alices = await create({ userId: alice, authMethod: "password" });
    const bobs = await create({ userId: bob, authMethod: "password" });

    expect((await failure(revoke(bobs.session.id, { userId: alice }))).code).toBe("NOT_FOUND");
    expect((await validate(bobs.token))?.session.id).toBe(bobs.session.id);
    expect((await rowsOf(bob))[0]).toMatchObject({ status: "active", revoked_at: null });

    const spy = vi.spyOn(pg.Client.prototype, "query");
    let revoked: Awaited<ReturnType<typeof revoke>>;
    try {
      revoked = await revoke(alices.session.id, { userId: alice });
      expect(spy.mock.calls).toHaveLength(1);
    } finally {
      spy.mockRestore();
    }
    expect(revoked).toMatchObject({ id: alices.session.id, userId: alice, status: "revoked" });
    expect(await validate(alices.token)).toBeNull();

    expect((await failure(revoke(bobs.session.id, { userId: "nope" }))).code).toBe("VALIDATION_FAILED");
    // Without userId, revoke() still ends any session by id (sign-out of the current session, admin).
    expect((await revoke(bobs.session.id)).status).toBe("revoked");
  });
});

describe("validation locks and writes", () => {
  it("never deadlocks when two batches refresh the same two sessions named in opposite orders", async () => {
    const clock = useManualClock();
    const userId = await insertUser("drill");
    const created = [
      await create({ userId, authMethod: "password" }),
      await create({ userId, authMethod: "password" }),
    ];
    const ids = created.map((c) => c.session.id);
    // Production-shaped statistics: on a tiny, never analyzed table the planner scans sessions sequentially
    // and both statements would lock in heap order anyway; with a few thousand rows it uses the primary key.
    const filler = await insertUser("filler");
    await database.admin(
      `INSERT INTO sessions (id, user_id, token_hash, auth_method, expires_at)
       SELECT gen_random_uuid(), $1, sha256(g::text::bytea), 'password', $2
       FROM generate_series(1, 5000) g`,
      [filler, new Date(START.getTime() + 365 * DAY)],
    );
    await database.admin("ANALYZE sessions");

    // Before the read-only validation, the write CTEs joined the batch's input and locked in its order: this
    // drill failed with 40P01 in round 0 to 7, in 5 runs out of 5. The refresh walks the primary key, so the
    // order the ids are given in does not matter (validate() sorts them as well).
    const refresh = statement("rdb_sessions_refresh");
    const a = await connect();
    const b = await connect();
    const failures: string[] = [];
    try {
      for (let round = 0; round < 200 && failures.length === 0; round++) {
        // The refresh is due every round, so both statements want to write both rows.
        clock.advance(HOUR + MINUTE);
        const params = validateParams([], clock.now());
        const outcomes = await Promise.allSettled([
          a.query({ name: refresh.name, text: refresh.text, values: refresh.values({ ...params, ids }) }),
          b.query({
            name: refresh.name,
            text: refresh.text,
            values: refresh.values({ ...params, ids: [...ids].reverse() }),
          }),
        ]);
        let written = 0;
        for (const outcome of outcomes) {
          if (outcome.status === "rejected") {
            const code = (outcome.reason as { code?: string }).code;
            failures.push(`round ${round}: ${code} ${String(outcome.reason)}`);
          } else {
            written += outcome.value.rows.length;
          }
        }
        // Exactly one statement wrote each row; the other re-checked it after the lock and skipped it.
        if (failures.length === 0) expect(written).toBe(2);
      }
    } finally {
      await a.end();
      await b.end();
    }
    expect(failures).toEqual([]);
  }, 60_000);

  it("the validation read never writes or locks, even when the refresh is due, and keeps a generic plan", async () => {
    const clock = useManualClock();
    const userId = await insertUser("locks");
    const { token } = await create({ userId, authMethod: "password" });
    const one = statement("rdb_sessions_validate");
    const client = await connect();
    try {
      for (const advance of [MINUTE, 2 * HOUR, 8 * DAY]) {
        clock.advance(advance);
        await client.query("BEGIN");
        await client.query({ text: one.text, values: one.values(validateParams([token], clock.now())) });
        // Any write or row lock would assign a transaction id.
        const xid = await client.query("SELECT pg_current_xact_id_if_assigned() AS xid");
        expect(xid.rows[0]?.xid).toBeNull();
        await client.query("ROLLBACK");
      }
      // The one-token statement keeps a generic plan after PostgreSQL's five custom ones, so a validation is
      // not planned on every call.
      for (let i = 0; i < 10; i++) {
        await client.query({
          name: one.name,
          text: one.text,
          values: one.values(validateParams([token], new Date(clock.now().getTime() + i))),
        });
      }
      const plans = await client.query<{ generic_plans: string }>(
        "SELECT generic_plans FROM pg_prepared_statements WHERE name = $1",
        [one.name],
      );
      expect(Number(plans.rows[0]?.generic_plans)).toBeGreaterThan(0);
    } finally {
      await client.end();
    }
  });

  it("refreshes at most once per interval under 50 concurrent checks of one session, and never a revoked one", async () => {
    const clock = useManualClock();
    const userId = await insertUser("fifty");
    const { session, token } = await create({ userId, authMethod: "password" });
    clock.advance(HOUR + MINUTE);
    const refreshesBefore = await refreshCount();
    const results = await Promise.all(Array.from({ length: 50 }, () => validate(token)));
    expect(results.every((r) => r?.session.id === session.id)).toBe(true);
    expect(await refreshCount()).toBe(refreshesBefore + 1);
    // Inside the interval nothing more is written.
    await Promise.all(Array.from({ length: 50 }, () => validate(token)));
    expect(await refreshCount()).toBe(refreshesBefore + 1);
    // A revoked session is not extended when its refresh falls due.
    await revoke(session.id);
    const revokedRow = await rowsOf(userId);
    clock.advance(HOUR + MINUTE);
    expect(await validate(token)).toBeNull();
    expect(await rowsOf(userId)).toEqual(revokedRow);
  });

  it("a refresh waiting on another transaction's row lock stalls only its own callers", async () => {
    const clock = useManualClock();
    const lockedUser = await insertUser("locked-refresh");
    const locked = await create({ userId: lockedUser, authMethod: "password" });
    clock.advance(HOUR + MINUTE);
    // Created now: its refresh is not due, so checking it is the read alone.
    const other = await create({ userId: await insertUser("free-read"), authMethod: "password" });
    const holder = new pg.Client({ connectionString: database.url, connectionTimeoutMillis: 5000 });
    await holder.connect();
    try {
      await holder.query("BEGIN");
      await holder.query("SELECT 1 FROM sessions WHERE id = $1 FOR UPDATE", [locked.session.id]);
      let lockedSettled = false;
      const lockedCheck = validate(locked.token).finally(() => {
        lockedSettled = true;
      });
      // Its read answered and its refresh now waits for the row lock.
      await vi.waitFor(
        async () => {
          const waiting = await database.admin<{ n: number }>(
            "SELECT count(*)::int AS n FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE 'UPDATE sessions%'",
          );
          if ((waiting.rows[0]?.n ?? 0) === 0) throw new Error("the refresh is not waiting yet");
        },
        { timeout: 5000, interval: 20 },
      );
      // Reads are gated one at a time; the stuck refresh is outside that gate.
      const others = await Promise.race([
        Promise.all(Array.from({ length: 20 }, () => validate(other.token))),
        new Promise<"stalled">((resolve) => setTimeout(() => resolve("stalled"), 3000)),
      ]);
      expect(others).not.toBe("stalled");
      expect(Array.isArray(others) && others.every((r) => r?.session.id === other.session.id)).toBe(true);
      expect(lockedSettled).toBe(false);
      await holder.query("COMMIT");
      const result = await lockedCheck;
      expect(result?.session.lastAccessedAt).toEqual(clock.now());
    } finally {
      await holder.query("ROLLBACK").catch(() => {});
      await holder.end();
    }
  });
});
