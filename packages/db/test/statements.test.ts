// Compiled hot-path statements: prepared under a name on each connection, unnamed behind a transaction-mode
// pooler (proved through a real PgBouncer when it is installed), and coalesced when issued in the same tick.
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { databaseConfigFromUrl } from "../src/config.ts";
import { disconnectDB, getPool, initializeDB, transaction } from "../src/connection.ts";
import { isDbError } from "../src/errors.ts";
import { dbQueriesTotal } from "../src/metrics.ts";
import * as CacheService from "../src/services/cache.ts";
import * as OneTimeTokensService from "../src/services/one-time-tokens.ts";
import * as SessionsService from "../src/services/sessions.ts";
import * as UsersService from "../src/services/users.ts";
import { definedStatements, defineStatement, param } from "../src/statements.ts";
import { insertUser, useManualClock, useTestDatabase } from "../src/testing/index.ts";
import { describeWithPgBouncer, type PgBouncer, startPgBouncer } from "../src/testing/pgbouncer.ts";

const database = useTestDatabase({ config: { poolMax: 1 } });

async function queriesOf(operation: string, table: string): Promise<number> {
  const metric = await dbQueriesTotal.get();
  return metric.values.find((v) => v.labels.operation === operation && v.labels.table === table)?.value ?? 0;
}

/** Runs every hot path once: validate, user lookups and list, cache get/set/increment/take, tokens. */
async function exerciseHotPaths(): Promise<void> {
  const userId = await insertUser("hot");
  const { token } = await SessionsService.create({ userId, authMethod: "password" });
  expect((await SessionsService.validate(token))?.user.id).toBe(userId);
  const user = await UsersService.findById(userId);
  expect(user?.id).toBe(userId);
  expect((await UsersService.findByEmail(user?.email ?? ""))?.id).toBe(userId);
  expect((await UsersService.list({ emails: ["hot-%"], limit: 1000 })).users.map((u) => u.id)).toContain(
    userId,
  );
  await CacheService.set("hot", "k", { n: 1 }, { ttlSeconds: 60 });
  expect(await CacheService.get("hot", "k")).toEqual({ n: 1 });
  expect((await CacheService.increment("hot", "counter", 2)).value).toBeGreaterThanOrEqual(2);
  expect(await CacheService.take("hot", "k")).toEqual({ n: 1 });
  const issued = await OneTimeTokensService.create({
    userId,
    purpose: "magic_link",
    sentTo: "hot@example.com",
  });
  expect((await OneTimeTokensService.consume(issued.token, "magic_link"))?.id).toBe(issued.record.id);
}

async function preparedOnConnection(): Promise<string[]> {
  // poolMax 1: this is the connection the services just used.
  const result = await getPool().query<{ name: string }>(
    "SELECT name FROM pg_prepared_statements WHERE name LIKE 'rdb\\_%' ORDER BY name",
  );
  return result.rows.map((row) => row.name);
}

describe("named statements", () => {
  it("prepares each hot path once per connection, under its own name", async () => {
    await exerciseHotPaths();
    await exerciseHotPaths();
    const names = await preparedOnConnection();
    for (const expected of [
      "rdb_sessions_validate",
      "rdb_users_by_id",
      "rdb_users_by_email",
      "rdb_cache_get",
      "rdb_cache_set",
      "rdb_cache_increment",
      "rdb_cache_take",
      "rdb_one_time_tokens_lock",
      "rdb_one_time_tokens_issue_user",
      "rdb_one_time_tokens_consume",
    ]) {
      expect(names).toContain(expected);
    }
    // list is planned per call (its best plan depends on the patterns), so it is never prepared by name.
    expect(names.some((name) => name.startsWith("rdb_users_list"))).toBe(false);
    expect(new Set(definedStatements().map((s) => s.name)).size).toBe(definedStatements().length);
  });

  it("runs coalesced session checks from a generic plan, not planning each batch", async () => {
    const userId = await insertUser("batch-plan");
    const tokens: string[] = [];
    for (let i = 0; i < 5; i++)
      tokens.push((await SessionsService.create({ userId, authMethod: "password" })).token);
    // Ten rounds of five checks issued together: each round is one batch (padded to the 8-token statement).
    for (let round = 0; round < 10; round++) {
      const checked = await Promise.all([
        ...tokens.map((t) => SessionsService.validate(t)),
        SessionsService.validate("x".repeat(43)),
      ]);
      expect(checked.slice(0, 5).map((auth) => auth?.user.id)).toEqual(tokens.map(() => userId));
      expect(checked[5]).toBeNull();
    }
    // poolMax 1: the statistics of the connection the checks used. PostgreSQL plans the first five runs for
    // their values; after that a statement whose generic plan is no dearer runs from it.
    const { rows } = await getPool().query<{ generic_plans: string; custom_plans: string }>(
      "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = 'rdb_sessions_validate_8'",
    );
    expect(rows).toHaveLength(1);
    expect(Number(rows[0]?.custom_plans)).toBeLessThanOrEqual(5);
    expect(Number(rows[0]?.generic_plans)).toBeGreaterThanOrEqual(5);
  });

  it("sends no named statement at all with the transaction-pooler setting", async () => {
    await disconnectDB();
    initializeDB(databaseConfigFromUrl(`${database.url}?pgbouncer=true`, { poolMax: 1 }));
    try {
      await exerciseHotPaths();
      expect(await preparedOnConnection()).toEqual([]);
    } finally {
      await disconnectDB();
      initializeDB(database.config);
    }
  });

  it("runs on the transaction's own connection when given { tx }", async () => {
    const userId = await insertUser("tx");
    await disconnectDB();
    initializeDB({ ...database.config, poolMax: 2 });
    try {
      const seen = await transaction(async (tx) => {
        const { token } = await SessionsService.create({ userId, authMethod: "password" }, { tx });
        await CacheService.set("tx", "k", 1, {}, { tx });
        // Uncommitted rows are visible only on the transaction's connection.
        return {
          inside: await SessionsService.validate(token, { tx }),
          outside: await SessionsService.validate(token),
          cacheInside: await CacheService.get("tx", "k", { tx }),
          cacheOutside: await CacheService.get("tx", "k"),
        };
      });
      expect(seen.inside?.user.id).toBe(userId);
      expect(seen.outside).toBeNull();
      expect(seen.cacheInside).toBe(1);
      expect(seen.cacheOutside).toBeNull();
    } finally {
      await disconnectDB();
      initializeDB(database.config);
    }
  });
});

describe("defineStatement", () => {
  it("runs an application's own statement on the pool and inside a transaction", async () => {
    const lastSignIn = defineStatement<{ lastSignInAt: Date | null }, { id: string }>(
      "test_last_sign_in",
      sql`SELECT last_sign_in_at AS "lastSignInAt" FROM users WHERE id = ${param("id")}::uuid`,
    );
    const id = await insertUser("own");
    await database.admin("UPDATE users SET last_sign_in_at = '2030-01-02T03:04:05Z' WHERE id = $1", [id]);
    expect((await lastSignIn.run(undefined, { id })).rows).toEqual([
      { lastSignInAt: new Date("2030-01-02T03:04:05Z") },
    ]);
    const inside = await transaction(async (tx) => (await lastSignIn.run(tx, { id })).rowCount);
    expect(inside).toBe(1);
  });

  it("refuses a reused key with another text, a literal value, and a name PostgreSQL would cut", () => {
    const text = sql`SELECT ${param("n")}::int AS n`;
    defineStatement("test_twice", text);
    expect(() => defineStatement("test_twice", text)).not.toThrow();
    const refused = (fn: () => unknown) => {
      try {
        fn();
      } catch (error) {
        return isDbError(error, "CONFIG_INVALID");
      }
      return false;
    };
    expect(refused(() => defineStatement("test_twice", sql`SELECT ${param("n")}::bigint AS n`))).toBe(true);
    expect(refused(() => defineStatement("test_literal", sql`SELECT ${42}::int AS n`))).toBe(true);
    expect(refused(() => defineStatement("x".repeat(60), text))).toBe(true);
    expect(definedStatements().some((s) => s.name === "rdb_test_literal")).toBe(false);
  });
});

describe("coalescing", () => {
  const clock = useManualClock(new Date("2032-01-01T00:00:00.000Z"));

  it("answers 40 validations issued in one tick with one statement, each with its own session", async () => {
    const userIds = await Promise.all(Array.from({ length: 40 }, () => insertUser("co")));
    const tokens = await Promise.all(
      userIds.map(async (userId) => (await SessionsService.create({ userId, authMethod: "password" })).token),
    );
    // One session expires before the batch runs and one is revoked: the batch must treat them as alone.
    const expiring = await SessionsService.create({ userId: userIds[0] as string, authMethod: "password" });
    const revoked = await SessionsService.create({ userId: userIds[1] as string, authMethod: "password" });
    await SessionsService.revoke(revoked.session.id);
    await database.admin("UPDATE sessions SET expires_at = $1 WHERE id = $2", [
      new Date(clock.now().getTime() - 1000),
      expiring.session.id,
    ]);
    const unknown = "A".repeat(43);
    const before = await queriesOf("validate", "sessions");
    const results = await Promise.all([
      ...tokens.map((token) => SessionsService.validate(token)),
      SessionsService.validate(tokens[5] as string), // the same token twice in one batch
      SessionsService.validate(expiring.token),
      SessionsService.validate(revoked.token),
      SessionsService.validate(unknown),
      SessionsService.validate("not a token"),
    ]);
    expect(await queriesOf("validate", "sessions")).toBe(before + 1);
    expect(results.slice(0, 40).map((result) => result?.user.id)).toEqual(userIds);
    expect(results[40]?.session.id).toBe(results[5]?.session.id);
    expect(results.slice(41)).toEqual([null, null, null, null]);
    // Validation writes nothing for them: both rows are left for cleanupExpired().
    const left = await database.admin<{ id: string }>("SELECT id FROM sessions WHERE id = ANY($1::uuid[])", [
      [expiring.session.id, revoked.session.id],
    ]);
    expect(left.rows).toHaveLength(2);
  });

  it("answers 30 cache reads issued in one tick with one statement; callers get their own objects", async () => {
    await CacheService.setMany(
      "co",
      Array.from({ length: 30 }, (_, i) => ({ key: `k${i}`, value: { i, at: new Date(0) } })),
      { ttlSeconds: 60 },
    );
    await CacheService.set("co-other", "k0", "other type, same key");
    await CacheService.set("co", "short", "gone soon", { ttlSeconds: 1 });
    clock.advance(1000);
    const before = await queriesOf("get_many", "cache");
    const reads = await Promise.all([
      ...Array.from({ length: 30 }, (_, i) => CacheService.get<{ i: number; at: Date }>("co", `k${i}`)),
      CacheService.get<{ i: number; at: Date }>("co", "k3"),
      CacheService.get("co-other", "k0"),
      CacheService.get("co", "short"),
      CacheService.get("co", "missing"),
    ]);
    expect(await queriesOf("get_many", "cache")).toBe(before + 1);
    expect(reads.slice(0, 30)).toEqual(Array.from({ length: 30 }, (_, i) => ({ i, at: new Date(0) })));
    expect(reads[30]).toEqual(reads[3]);
    expect(reads[30]).not.toBe(reads[3]);
    expect(reads.slice(31)).toEqual(["other type, same key", null, null]);
    const expired = await database.admin("SELECT 1 FROM cache WHERE resource_type = 'co' AND key = 'short'");
    expect(expired.rowCount).toBe(0);
  });

  it("stores 20 writes issued in one tick with one statement; of two writes to one key the last wins", async () => {
    const before = await queriesOf("set_many", "cache");
    await Promise.all([
      ...Array.from({ length: 20 }, (_, i) => CacheService.set("co-set", `k${i}`, { i }, { ttlSeconds: 60 })),
      CacheService.set("co-set", "k3", "second write", { ttlSeconds: 5 }),
    ]);
    expect(await queriesOf("set_many", "cache")).toBe(before + 1);
    const stored = await database.admin<{ key: string; value: unknown; ttl: number }>(
      `SELECT key, value, extract(epoch FROM expires_at - updated_at)::int AS ttl
       FROM cache WHERE resource_type = 'co-set' ORDER BY key`,
    );
    expect(stored.rows).toHaveLength(20);
    expect(stored.rows.find((row) => row.key === "k3")).toEqual({ key: "k3", value: "second write", ttl: 5 });
    expect(stored.rows.find((row) => row.key === "k7")).toEqual({ key: "k7", value: { i: 7 }, ttl: 60 });
  });
});

// Without PgBouncer on the machine these tests skip, except under CI (describeWithPgBouncer).
describeWithPgBouncer("behind PgBouncer in transaction mode", () => {
  let bouncer: PgBouncer;

  beforeAll(async () => {
    bouncer = await startPgBouncer(database.url, { poolSize: 2 });
  });
  afterAll(async () => {
    await bouncer?.stop();
  });

  /** 8 clients over 2 server connections, 25 rounds of every hot path in parallel; errors collected. */
  async function hammer(url: string): Promise<unknown[]> {
    await disconnectDB();
    initializeDB(databaseConfigFromUrl(url, { poolMax: 8 }));
    const errors: unknown[] = [];
    try {
      const userId = await insertUser("bouncer");
      const { token } = await SessionsService.create({ userId, authMethod: "password" });
      await CacheService.set("bouncer", "k", 1);
      for (let round = 0; round < 25; round++) {
        const settled = await Promise.allSettled([
          SessionsService.validate(token, { config: {} }),
          UsersService.findById(userId),
          CacheService.get("bouncer", "k", { tx: undefined }),
          CacheService.increment("bouncer", "n"),
          CacheService.set("bouncer", `k${round}`, round),
          OneTimeTokensService.create({ userId, purpose: "magic_link", sentTo: "b@example.com" }).then((t) =>
            OneTimeTokensService.consume(t.token, "magic_link"),
          ),
          UsersService.findByEmail("nobody@example.com"),
          CacheService.take("bouncer", `k${round}`),
        ]);
        for (const s of settled) if (s.status === "rejected") errors.push(s.reason);
      }
    } finally {
      await disconnectDB();
      initializeDB(database.config);
    }
    return errors;
  }

  it("every hot path works through it with ?pgbouncer=true", async () => {
    const url = new URL(bouncer.url);
    url.searchParams.set("pgbouncer", "true");
    expect(await hammer(url.toString())).toEqual([]);
  });

  it("without the setting, named statements break there (which is what the setting is for)", async () => {
    // A lenient bouncer that lets the startup timeouts through, so the only difference is the statement names.
    const lenient = await startPgBouncer(database.url, {
      poolSize: 2,
      ignoreStartupParameters: ["statement_timeout", "idle_in_transaction_session_timeout"],
    });
    const errors = await hammer(lenient.url).finally(() => lenient.stop());
    expect(errors.length).toBeGreaterThan(0);
    // 26000: prepared statement does not exist (on the server connection the transaction landed on);
    // 42P05: already exists (prepared there by another client). Nothing else goes wrong.
    const states = new Set(
      errors.map((error) => (isDbError(error) ? (error.cause as { code?: string })?.code : error)),
    );
    expect([...states].every((state) => state === "26000" || state === "42P05")).toBe(true);
  });
});
