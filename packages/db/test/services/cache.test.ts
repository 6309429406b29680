import { describe, expect, it } from "vitest";
import { getPool, transaction } from "../../src/connection.ts";
import { dbQueriesTotal, registry } from "../../src/metrics.ts";
import * as CacheService from "../../src/services/cache.ts";
import { expectDbError, useManualClock, useTestDatabase } from "../../src/testing/index.ts";

const database = useTestDatabase({ config: { poolMax: 60 } });

const clock = useManualClock(new Date("2030-01-01T00:00:00.000Z"));

async function rawCount(resourceType: string, key?: string): Promise<number> {
  const result =
    key === undefined
      ? await database.admin<{ n: string }>("SELECT count(*) AS n FROM cache WHERE resource_type = $1", [
          resourceType,
        ])
      : await database.admin<{ n: string }>(
          "SELECT count(*) AS n FROM cache WHERE resource_type = $1 AND key = $2",
          [resourceType, key],
        );
  return Number(result.rows[0]?.n);
}

describe("get / set / delete", () => {
  it("round-trips JSON values and overwrites", async () => {
    expect(await CacheService.get("t", "missing")).toBeNull();
    const value = { a: 1, b: [true, null, "x"], c: { d: 1.5 }, e: "ünïcødé 🎉" };
    await CacheService.set("t", "k", value);
    expect(await CacheService.get("t", "k")).toEqual(value);
    await CacheService.set("t", "k", 42);
    expect(await CacheService.get<number>("t", "k")).toBe(42);
    await CacheService.set("t", "k", "text");
    expect(await CacheService.get("t", "k")).toBe("text");
    await CacheService.set("other", "k", [1, 2]);
    expect(await CacheService.get("t", "k")).toBe("text");
    expect(await rawCount("t", "k")).toBe(1);
  });

  it("sets updated_at from the clock on overwrite (no trigger on this table)", async () => {
    await CacheService.set("stamp", "k", 1);
    clock.advance(5000);
    await CacheService.set("stamp", "k", 2);
    const row = await database.admin<{ created_at: Date; updated_at: Date }>(
      "SELECT created_at, updated_at FROM cache WHERE resource_type = 'stamp' AND key = 'k'",
    );
    expect(row.rows[0]?.updated_at.getTime()).toBe(clock.now().getTime());
    expect(row.rows[0]?.created_at.getTime()).toBe(clock.now().getTime() - 5000);
  });

  it("delete says whether a live entry was removed", async () => {
    await CacheService.set("del", "k", { x: 1 });
    expect(await CacheService.delete("del", "k")).toBe(true);
    expect(await CacheService.delete("del", "k")).toBe(false);
    expect(await CacheService.get("del", "k")).toBeNull();
    await CacheService.set("del", "short", 1, { ttlSeconds: 1 });
    clock.advance(1000);
    expect(await CacheService.delete("del", "short")).toBe(false);
    expect(await rawCount("del")).toBe(0);
  });

  it("expires by the clock; an expired get returns null and removes the row", async () => {
    await CacheService.set("ttl", "k", "v", { ttlSeconds: 60 });
    await CacheService.set("ttl", "forever", "v");
    clock.advance(59_999);
    expect(await CacheService.get("ttl", "k")).toBe("v");
    expect(await rawCount("ttl", "k")).toBe(1);
    clock.advance(1);
    expect(await CacheService.get("ttl", "k")).toBeNull();
    expect(await rawCount("ttl", "k")).toBe(0);
    clock.advance(10 * 365 * 24 * 3600 * 1000);
    expect(await CacheService.get("ttl", "forever")).toBe("v");
  });

  it("set with a TTL replaces a TTL-less entry and vice versa", async () => {
    await CacheService.set("ttl2", "k", 1);
    await CacheService.set("ttl2", "k", 2, { ttlSeconds: 1 });
    clock.advance(1000);
    expect(await CacheService.get("ttl2", "k")).toBeNull();
    await CacheService.set("ttl2", "k", 3, { ttlSeconds: 1 });
    await CacheService.set("ttl2", "k", 4);
    clock.advance(5000);
    expect(await CacheService.get("ttl2", "k")).toBe(4);
  });

  it("joins the caller's transaction", async () => {
    await expect(
      transaction(async (tx) => {
        await CacheService.set("tx", "k", 1, {}, { tx });
        expect(await CacheService.get("tx", "k", { tx })).toBe(1);
        throw new Error("roll back");
      }),
    ).rejects.toThrow("roll back");
    expect(await CacheService.get("tx", "k")).toBeNull();
  });
});

describe("getMany / setMany", () => {
  it("reads and writes several keys at once, last duplicate wins, expired skipped and removed", async () => {
    await CacheService.setMany("many", [
      { key: "a", value: 1 },
      { key: "b", value: { at: new Date("2020-02-02T00:00:00.000Z") } },
      { key: "a", value: 3 },
    ]);
    await CacheService.setMany("many", [{ key: "short", value: "s" }], { ttlSeconds: 10 });
    await CacheService.set("elsewhere", "a", "no");
    clock.advance(10_000);
    const found = await CacheService.getMany<unknown>("many", ["a", "b", "short", "missing", "a"]);
    expect(found).toBeInstanceOf(Map);
    expect([...found.keys()].sort()).toEqual(["a", "b"]);
    expect(found.get("a")).toBe(3);
    expect(found.get("b")).toEqual({ at: new Date("2020-02-02T00:00:00.000Z") });
    expect(await rawCount("many", "short")).toBe(0);
    expect((await CacheService.getMany("many", [])).size).toBe(0);
    await CacheService.setMany("many", []);
  });

  it("setMany rejects a bad entry and writes none of them", async () => {
    await expectDbError(
      CacheService.setMany("atomic", [
        { key: "ok", value: 1 },
        { key: "bad", value: () => 1 },
      ]),
      "VALIDATION_FAILED",
    );
    await expectDbError(
      CacheService.setMany(
        "atomic",
        Array.from({ length: 1001 }, (_, i) => ({ key: `k${i}`, value: i })),
      ),
      "VALIDATION_FAILED",
    );
    expect(await rawCount("atomic")).toBe(0);
  });
});

describe("increment", () => {
  /** Statements cache.increment has sent so far (alone and batched). */
  const incrementStatements = async () => {
    const metric = await registry.getSingleMetric("db_queries_total")?.get();
    return (metric?.values ?? [])
      .filter((v) => v.labels.table === "cache" && String(v.labels.operation).startsWith("increment"))
      .reduce((sum, v) => sum + v.value, 0);
  };

  it("100 concurrent increments give exactly 1..100, in a few statements", async () => {
    const before = await incrementStatements();
    const results = await Promise.all(
      Array.from({ length: 100 }, () => CacheService.increment("rate", "ip", 1, { ttlSeconds: 60 })),
    );
    // Made together, they share one statement, and each caller still gets a value of its own.
    expect(await incrementStatements()).toBe(before + 1);
    const values = results.map((r) => r.value).sort((a, b) => a - b);
    expect(values).toEqual(Array.from({ length: 100 }, (_, i) => i + 1));
    expect(await CacheService.get("rate", "ip")).toBe(100);
    // All share the window opened by the first one.
    const windows = new Set(results.map((r) => r.expiresAt?.getTime()));
    expect([...windows]).toEqual([clock.now().getTime() + 60_000]);
  });

  it("100 concurrent increments on 100 connections (no shared statement) give exactly 1..100", async () => {
    // Each in a transaction of its own: nothing is coalesced, so the row lock alone must keep them exact.
    const results = await Promise.all(
      Array.from({ length: 100 }, () =>
        transaction((tx) => CacheService.increment("rate-tx", "ip", 1, { ttlSeconds: 60 }, { tx })),
      ),
    );
    expect(results.map((r) => r.value).sort((a, b) => a - b)).toEqual(
      Array.from({ length: 100 }, (_, i) => i + 1),
    );
    expect(getPool().totalCount).toBeGreaterThan(10);
  });

  it("a shared statement answers each caller as if the increments ran in their order", async () => {
    clock.set(new Date("2030-01-01T00:00:00.000Z"));
    await CacheService.increment("seq", "live", 10, { ttlSeconds: 100 });
    await CacheService.increment("seq", "stale", 7, { ttlSeconds: 1 });
    clock.advance(5_000);
    const [a, b, c, d, e] = await Promise.all([
      CacheService.increment("seq", "live", 2, { ttlSeconds: 30 }),
      CacheService.increment("seq", "stale", 3, { ttlSeconds: 20 }),
      CacheService.increment("seq", "live", -1),
      CacheService.increment("seq", "fresh", 5),
      CacheService.increment("seq", "stale", 4, { ttlSeconds: 90 }),
    ]);
    const opened = new Date("2030-01-01T00:00:00.000Z");
    // A live counter keeps its window whatever the callers ask for.
    expect(a).toEqual({ value: 12, expiresAt: new Date(opened.getTime() + 100_000) });
    expect(c).toEqual({ value: 11, expiresAt: new Date(opened.getTime() + 100_000) });
    // An expired one restarts at the first caller's step, with the first caller's window.
    expect(b).toEqual({ value: 3, expiresAt: new Date(clock.now().getTime() + 20_000) });
    expect(e).toEqual({ value: 7, expiresAt: new Date(clock.now().getTime() + 20_000) });
    // A new one without TTL never expires.
    expect(d).toEqual({ value: 5, expiresAt: null });
  });

  it("in a shared statement, a value that is not a counter fails only its own callers", async () => {
    await CacheService.set("mixed", "text", "not a number");
    await CacheService.increment("mixed", "n", 1);
    const outcomes = await Promise.allSettled([
      CacheService.increment("mixed", "n", 1),
      CacheService.increment("mixed", "text", 1),
      CacheService.increment("mixed", "n", 1),
      CacheService.increment("mixed", "new", 1),
    ]);
    expect(outcomes.map((o) => o.status)).toEqual(["fulfilled", "rejected", "fulfilled", "fulfilled"]);
    const rejected = outcomes[1] as PromiseRejectedResult;
    expect(rejected.reason).toMatchObject({ code: "VALIDATION_FAILED" });
    const values = outcomes.map((o) => (o.status === "fulfilled" ? o.value.value : null));
    expect(values).toEqual([2, null, 3, 1]);
    expect(await CacheService.get("mixed", "text")).toBe("not a number");
    expect(await CacheService.get("mixed", "n")).toBe(3);
  });

  it("in a shared statement, steps whose sum leaves the exact integer range are applied one by one", async () => {
    const max = Number.MAX_SAFE_INTEGER;
    const [up, down] = await Promise.all([
      CacheService.increment("huge", "k", max),
      CacheService.increment("huge", "k", -max),
    ]);
    expect(up.value).toBe(max);
    expect(down.value).toBe(0);
    const [first, second] = await Promise.all([
      CacheService.increment("huge", "j", max),
      CacheService.increment("huge", "j", max),
    ]);
    expect(first.value).toBe(max);
    // 2 * MAX_SAFE_INTEGER fits in bigint; it comes back as the nearest double, as it would alone.
    expect(second.value).toBe(2 * max);
  });

  it("keeps its window, then restarts it after expiry", async () => {
    const first = await CacheService.increment("window", "k", 1, { ttlSeconds: 10 });
    expect(first).toEqual({ value: 1, expiresAt: new Date(clock.now().getTime() + 10_000) });
    clock.advance(9_999);
    const second = await CacheService.increment("window", "k", 2, { ttlSeconds: 10 });
    expect(second).toEqual({ value: 3, expiresAt: first.expiresAt });
    clock.advance(1);
    const third = await CacheService.increment("window", "k", 1, { ttlSeconds: 10 });
    expect(third).toEqual({ value: 1, expiresAt: new Date(clock.now().getTime() + 10_000) });
    expect(await CacheService.increment("window", "k", -5, { ttlSeconds: 10 })).toMatchObject({ value: -4 });
  });

  it("without a TTL the counter never expires", async () => {
    expect(await CacheService.increment("plain", "k")).toEqual({ value: 1, expiresAt: null });
    clock.advance(1e12);
    expect(await CacheService.increment("plain", "k")).toEqual({ value: 2, expiresAt: null });
  });

  it("refuses to increment a value that is not an integer, and leaves it alone", async () => {
    await CacheService.set("notnum", "s", "12");
    await CacheService.set("notnum", "f", 1.5);
    await CacheService.set("notnum", "o", { n: 1 });
    for (const key of ["s", "f", "o"]) {
      await expectDbError(CacheService.increment("notnum", key), "VALIDATION_FAILED");
    }
    expect(await CacheService.get("notnum", "s")).toBe("12");
    await CacheService.set("notnum", "big", Number.MAX_SAFE_INTEGER);
    await CacheService.increment("notnum", "big", Number.MAX_SAFE_INTEGER);
    await expectDbError(CacheService.increment("notnum", "big", 0.5), "VALIDATION_FAILED");
    // An expired non-numeric value is simply replaced by a new window.
    await CacheService.set("notnum", "old", "text", { ttlSeconds: 1 });
    clock.advance(1000);
    expect((await CacheService.increment("notnum", "old")).value).toBe(1);
  });
});

describe("getOrSet", () => {
  it("50 concurrent callers run the loader once", async () => {
    let calls = 0;
    const loader = async () => {
      calls += 1;
      await new Promise((resolve) => setTimeout(resolve, 50));
      return { loaded: calls, at: new Date("2021-01-01T00:00:00.000Z") };
    };
    const results = await Promise.all(
      Array.from({ length: 50 }, () => CacheService.getOrSet("gos", "k", loader, { ttlSeconds: 60 })),
    );
    expect(calls).toBe(1);
    for (const result of results)
      expect(result).toEqual({ loaded: 1, at: new Date("2021-01-01T00:00:00.000Z") });
    // Later callers read the stored value.
    expect(await CacheService.getOrSet("gos", "k", loader)).toEqual(results[0]);
    expect(calls).toBe(1);
    clock.advance(60_000);
    await CacheService.getOrSet("gos", "k", loader);
    expect(calls).toBe(2);
  });

  it("a failing loader rejects every waiter and caches nothing", async () => {
    let calls = 0;
    class LoadFailed extends Error {}
    const failing = async (): Promise<number> => {
      calls += 1;
      await new Promise((resolve) => setTimeout(resolve, 20));
      throw new LoadFailed("upstream down");
    };
    const settled = await Promise.allSettled(
      Array.from({ length: 10 }, () => CacheService.getOrSet("gos-fail", "k", failing)),
    );
    expect(calls).toBe(1);
    for (const outcome of settled) {
      expect(outcome.status).toBe("rejected");
      if (outcome.status === "rejected") expect(outcome.reason).toBeInstanceOf(LoadFailed);
    }
    expect(await rawCount("gos-fail")).toBe(0);
    // The failure is not remembered either: the next call loads again.
    expect(await CacheService.getOrSet("gos-fail", "k", async () => 7)).toBe(7);
    expect(await CacheService.get("gos-fail", "k")).toBe(7);
  });
});

/** How many statements of this operation on the cache were counted so far. */
async function statementsOf(operation: string): Promise<number> {
  const metric = await dbQueriesTotal.get();
  return (
    metric.values.find((v) => v.labels.operation === operation && v.labels.table === "cache")?.value ?? 0
  );
}

describe("take", () => {
  it("50 takes of one key in one tick: one statement, and the first caller alone gets the value", async () => {
    await CacheService.set("take", "k", { secret: "state" });
    const before = await statementsOf("take_many");
    const results = await Promise.all(Array.from({ length: 50 }, () => CacheService.take("take", "k")));
    expect(await statementsOf("take_many")).toBe(before + 1);
    expect(results[0]).toEqual({ secret: "state" });
    expect(results.filter((r) => r !== null)).toHaveLength(1);
    expect(await rawCount("take", "k")).toBe(0);
  });

  it("50 takes of one key in 50 ticks race in PostgreSQL: exactly one gets the value", async () => {
    await CacheService.set("take", "race", { secret: "state" });
    const before = await statementsOf("take");
    const pending: Promise<unknown>[] = [];
    for (let i = 0; i < 50; i++) {
      pending.push(CacheService.take("take", "race"));
      // The next take joins a batch of its own, sent while this one may still be running.
      await new Promise((resolve) => setImmediate(resolve));
    }
    const results = await Promise.all(pending);
    expect(await statementsOf("take")).toBe(before + 50);
    expect(results.filter((r) => r !== null)).toEqual([{ secret: "state" }]);
    expect(await rawCount("take", "race")).toBe(0);
  });

  it("takes issued together: each caller gets its own entry, decoded for it alone; expired ones are removed", async () => {
    await CacheService.setMany(
      "take-many",
      Array.from({ length: 20 }, (_, i) => ({ key: `k${i}`, value: { i, at: new Date(0) } })),
    );
    await CacheService.set("take-other", "k0", "other type, same key");
    await CacheService.set("take-many", "short", "gone soon", { ttlSeconds: 1 });
    clock.advance(1000);
    const before = await statementsOf("take_many");
    const taken = await Promise.all([
      ...Array.from({ length: 20 }, (_, i) =>
        CacheService.take<{ i: number; at: Date }>("take-many", `k${i}`),
      ),
      CacheService.take("take-many", "short"),
      CacheService.take("take-many", "missing"),
    ]);
    expect(await statementsOf("take_many")).toBe(before + 1);
    expect(taken.slice(0, 20)).toEqual(Array.from({ length: 20 }, (_, i) => ({ i, at: new Date(0) })));
    expect(taken.slice(20)).toEqual([null, null]);
    expect(await rawCount("take-many")).toBe(0);
    expect(await CacheService.get("take-other", "k0")).toBe("other type, same key");
  });

  it("a batch that deadlocks with another transaction is taken again one entry at a time", async () => {
    await CacheService.setMany("take-dl", [
      { key: "k1", value: 1 },
      { key: "k2", value: 2 },
    ]);
    const other = await getPool().connect();
    try {
      await other.query("BEGIN");
      await other.query("SELECT 1 FROM cache WHERE resource_type = 'take-dl' AND key = 'k2' FOR UPDATE");
      const before = await statementsOf("take");
      // The batch deletes k1 (keys go in order), then waits for k2.
      const taking = Promise.all([CacheService.take("take-dl", "k1"), CacheService.take("take-dl", "k2")]);
      for (let i = 0; ; i++) {
        const waiting = await database.admin(
          `SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%unnest%'`,
        );
        if (waiting.rowCount === 1) break;
        if (i > 200) throw new Error("the batch never waited for k2");
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      // Now this transaction waits for k1: a cycle, and the batch (which waited first) is the one cancelled.
      const locking = other.query(
        "SELECT 1 FROM cache WHERE resource_type = 'take-dl' AND key = 'k1' FOR UPDATE",
      );
      await locking;
      await other.query("COMMIT");
      expect(await taking).toEqual([1, 2]);
      expect(await statementsOf("take")).toBe(before + 2);
    } finally {
      other.release();
    }
    expect(await rawCount("take-dl")).toBe(0);
  });

  it("an expired entry is not taken, but removed", async () => {
    await CacheService.set("take", "old", 1, { ttlSeconds: 1 });
    clock.advance(1000);
    expect(await CacheService.take("take", "old")).toBeNull();
    expect(await rawCount("take", "old")).toBe(0);
    expect(await CacheService.take("take", "never")).toBeNull();
  });
});

describe("value encoding", () => {
  it("round-trips Dates anywhere in the value", async () => {
    const d1 = new Date("2024-05-06T07:08:09.123Z");
    const d2 = new Date(0);
    const value = { at: d1, list: [d2, { deep: [d1] }], plain: "2024-05-06T07:08:09.123Z" };
    await CacheService.set("dates", "k", value);
    const back = await CacheService.get<typeof value>("dates", "k");
    expect(back).toEqual(value);
    expect(back?.at).toBeInstanceOf(Date);
    expect(back?.list[0]).toBeInstanceOf(Date);
    await CacheService.set("dates", "top", d1);
    expect(await CacheService.get("dates", "top")).toEqual(d1);
  });

  it("objects that look like tags round-trip unchanged", async () => {
    const lookalikes = [
      { $date: "2024-01-01T00:00:00.000Z" },
      { $date: 5 },
      { $escape: { $date: "x" } },
      { $escape: 1 },
      { nested: [{ $date: "not a date" }] },
      { $date: "2024-01-01T00:00:00.000Z", other: 1 },
    ];
    for (const [i, value] of lookalikes.entries()) {
      await CacheService.set("tags", `k${i}`, value);
      expect(await CacheService.get("tags", `k${i}`)).toEqual(value);
    }
  });

  it("drops undefined object properties like JSON does", async () => {
    await CacheService.set("undef", "k", { a: 1, b: undefined });
    expect(await CacheService.get("undef", "k")).toEqual({ a: 1 });
  });

  it("rejects what JSON cannot hold, and bad keys, with VALIDATION_FAILED", async () => {
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    const bad: unknown[] = [
      undefined,
      [1, undefined],
      () => 1,
      Symbol("s"),
      10n,
      { n: 10n },
      Number.NaN,
      { n: Number.POSITIVE_INFINITY },
      new Map([[1, 2]]),
      new Date("nope"),
      "nul\u0000byte",
      cyclic,
      "x".repeat(1024 * 1024 + 1),
    ];
    for (const value of bad) await expectDbError(CacheService.set("bad", "k", value), "VALIDATION_FAILED");
    await expectDbError(CacheService.set("", "k", 1), "VALIDATION_FAILED");
    await expectDbError(CacheService.set("bad", "", 1), "VALIDATION_FAILED");
    await expectDbError(CacheService.set("x".repeat(257), "k", 1), "VALIDATION_FAILED");
    await expectDbError(CacheService.set("bad", "x".repeat(1025), 1), "VALIDATION_FAILED");
    await expectDbError(CacheService.set("bad", "k\u0000", 1), "VALIDATION_FAILED");
    // An unpaired surrogate would reach PostgreSQL as U+FFFD: "k\uD800" would name the entry "k\uFFFD".
    await CacheService.set("bad-fffd", "k\uFFFD", "someone else's");
    await expectDbError(CacheService.set("bad", "k\uD800", 1), "VALIDATION_FAILED");
    await expectDbError(CacheService.get("bad-fffd", "k\uD800"), "VALIDATION_FAILED");
    await expectDbError(CacheService.take("bad-fffd", "k\uDC00"), "VALIDATION_FAILED");
    await expectDbError(CacheService.set("bad\uD800", "k", 1), "VALIDATION_FAILED");
    expect(await CacheService.get("bad-fffd", "k\uFFFD")).toBe("someone else's");
    await CacheService.set("bad", "pair \uD83D\uDE00", 1);
    expect(await CacheService.take("bad", "pair \uD83D\uDE00")).toBe(1);
    await expectDbError(CacheService.set("bad", "k", 1, { ttlSeconds: 0 }), "VALIDATION_FAILED");
    await expectDbError(CacheService.set("bad", "k", 1, { ttlSeconds: -1 }), "VALIDATION_FAILED");
    await expectDbError(CacheService.get("bad", "x".repeat(1025)), "VALIDATION_FAILED");
    await expectDbError(CacheService.increment("bad", "k", 1.5), "VALIDATION_FAILED");
    await expectDbError(CacheService.getMany("bad", ["ok", ""]), "VALIDATION_FAILED");
    expect(await rawCount("bad")).toBe(0);
    // The same size just under the limit is fine; a cycle-free shared reference is fine too.
    const shared = { s: 1 };
    await CacheService.set("bad", "shared", { a: shared, b: shared });
    expect(await CacheService.get("bad", "shared")).toEqual({ a: { s: 1 }, b: { s: 1 } });
    await CacheService.set("bad", "big", "x".repeat(1024 * 1024 - 2));
    expect(await CacheService.delete("bad", "big")).toBe(true);
  });
});

describe("cleanupExpired", () => {
  it("deletes only expired entries, in batches, once across concurrent cleaners", async () => {
    await database.admin("DELETE FROM cache");
    const at = clock.now();
    await database.admin(
      `INSERT INTO cache (resource_type, key, value, expires_at)
       SELECT 'bulk', g::text, to_jsonb(g), $1::timestamptz FROM generate_series(1, 3000) AS g`,
      [at],
    );
    await CacheService.set("keep", "forever", 1);
    await CacheService.set("keep", "later", 1, { ttlSeconds: 3600 });
    clock.advance(1);
    const counts = await Promise.all([0, 1, 2].map(() => CacheService.cleanupExpired({ batchSize: 100 })));
    expect(counts.reduce((a, b) => a + b, 0)).toBe(3000);
    expect(await rawCount("bulk")).toBe(0);
    expect(await rawCount("keep")).toBe(2);
    expect(await CacheService.cleanupExpired()).toBe(0);
    await expectDbError(CacheService.cleanupExpired({ batchSize: 0 }), "VALIDATION_FAILED");
  });
});

describe("table and metrics", () => {
  it("the cache table is UNLOGGED", async () => {
    const result = await database.admin<{ relpersistence: string }>(
      "SELECT relpersistence FROM pg_class WHERE oid = 'public.cache'::regclass",
    );
    expect(result.rows[0]?.relpersistence).toBe("u");
  });

  it("counts queries on cache", async () => {
    const read = async () => {
      const metric = await registry.getSingleMetric("db_queries_total")?.get();
      return (metric?.values ?? [])
        .filter((v) => v.labels.table === "cache")
        .reduce((s, v) => s + v.value, 0);
    };
    const before = await read();
    await CacheService.set("m", "k", 1);
    await CacheService.get("m", "k");
    await CacheService.increment("m", "n");
    await CacheService.take("m", "k");
    expect(await read()).toBe(before + 4);
  });
});
