import { sql } from "drizzle-orm";
import { describe, expect, it } from "vitest";
import { db, transaction } from "../src/connection.ts";
import { isDbError } from "../src/errors.ts";
import { advisoryLockKey, tryWithAdvisoryLock, withAdvisoryLock } from "../src/locks.ts";
import { useTestDatabase } from "../src/testing/index.ts";

useTestDatabase({ config: { poolMax: 6 } });

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe("advisory locks", () => {
  it("derives stable 64-bit keys from names", () => {
    expect(advisoryLockKey("maintenance")).toBe(advisoryLockKey("maintenance"));
    expect(advisoryLockKey("maintenance")).not.toBe(advisoryLockKey("maintenance2"));
    expect(BigInt(advisoryLockKey("x"))).toBeLessThan(2n ** 63n);
  });

  it("runs one holder at a time when waiting", async () => {
    let inside = 0;
    let maxInside = 0;
    await Promise.all(
      Array.from({ length: 5 }, () =>
        withAdvisoryLock("serial-job", async () => {
          inside++;
          maxInside = Math.max(maxInside, inside);
          await pause(30);
          inside--;
        }),
      ),
    );
    expect(maxInside).toBe(1);
  });

  it("lets exactly one of several concurrent try-lockers run; the rest are told it is busy", async () => {
    const outcomes = await Promise.all(
      Array.from({ length: 5 }, () => tryWithAdvisoryLock("round", async () => pause(200).then(() => "ran"))),
    );
    expect(outcomes.filter((o) => o.acquired)).toHaveLength(1);
    const busy = await withAdvisoryLock("round", async () => "x", { wait: false }).catch((e: unknown) => e);
    expect(busy).toBe("x");
  });

  it("throws LOCK_NOT_ACQUIRED without waiting when asked not to wait, and frees the lock when the transaction ends", async () => {
    let release: () => void = () => {};
    const held = withAdvisoryLock("held", () => new Promise<void>((resolve) => (release = resolve)));
    await pause(50);
    const error = await withAdvisoryLock("held", async () => "never", { wait: false }).catch(
      (e: unknown) => e,
    );
    expect(isDbError(error, "LOCK_NOT_ACQUIRED")).toBe(true);
    release();
    await held;
    expect(await withAdvisoryLock("held", async () => "free", { wait: false })).toBe("free");
  });

  it("is released when the holder's transaction fails", async () => {
    await expect(withAdvisoryLock("failing", async () => Promise.reject(new Error("boom")))).rejects.toThrow(
      "boom",
    );
    expect((await tryWithAdvisoryLock("failing", async () => 1)).acquired).toBe(true);
    // pg_locks is cluster-wide: other test files' databases may hold advisory locks of their own right now.
    const locks = await db.execute<{ n: number }>(
      sql`SELECT count(*)::int AS n FROM pg_locks
          WHERE locktype = 'advisory' AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
    );
    expect(locks.rows[0]?.n).toBe(0);
  });

  it("joins a caller's transaction with { tx }", async () => {
    await transaction(async (tx) => {
      await withAdvisoryLock("joined", async () => {}, { tx });
      const mine = await tx.execute<{ n: number }>(
        sql`SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()`,
      );
      // Still held: a transaction-scoped lock lasts until the caller's transaction ends.
      expect(mine.rows[0]?.n).toBe(1);
    });
  });
});
