// The hot paths of section 1 and 2, each in three variants:
//  - service: the @repo/db service call, as an application makes it (validation, metrics, logging included);
//  - floor: the same SQL text the service sends (read from the statement registry), sent by raw node-postgres
//    as a named prepared statement, with only the parameter computation a hand-written handler needs too;
//  - naive: the same operation written the obvious Drizzle way (query builder per call, relational queries).
import { createHash } from "node:crypto";
import {
  advisoryLockKey,
  and,
  CacheService,
  definedStatements,
  eq,
  gt,
  isNull,
  OneTimeTokensService,
  SessionsService,
  sql,
  UsersService,
} from "@repo/db";
import type * as schema from "@repo/db/schema";
import { cache, oneTimeTokens, sessions, users } from "@repo/db/schema";
import { asc, like } from "drizzle-orm";
import type { NodePgDatabase } from "drizzle-orm/node-postgres";
import type pg from "pg";
import { uuidv7 } from "uuidv7";
import type { Fixture } from "./seed.ts";

export interface HotPath {
  name: string;
  service: (i: number) => Promise<unknown>;
  floor: (i: number) => Promise<unknown>;
  naive: (i: number) => Promise<unknown>;
}

export interface HotPathContext {
  fixture: Fixture;
  floorPool: pg.Pool;
  naiveDb: NodePgDatabase<typeof schema>;
}

const pick = <T>(items: readonly T[], i: number): T => items[i % items.length] as T;
const DEFAULT_SESSION_CONFIG = SessionsService.DEFAULT_SESSION_CONFIG;
const sha256 = (value: string) => createHash("sha256").update(value, "utf8").digest();

type Defined = ReturnType<typeof definedStatements>[number];
const byName = new Map<string, Defined>();

/** A statement the services defined, by name; `warm` runs the service once if it defines it lazily. */
async function statement(name: string, warm?: () => Promise<unknown>): Promise<Defined> {
  const cached = byName.get(name);
  if (cached) return cached;
  let found = definedStatements().find((s) => s.name === name);
  if (!found && warm) {
    await warm();
    found = definedStatements().find((s) => s.name === name);
  }
  if (!found) throw new Error(`no statement ${name}: the services no longer define it`);
  byName.set(name, found);
  return found;
}

/**
 * Runs the service's SQL as a raw named prepared statement (the floor's name is its own), or unnamed where the
 * service plans it per call (`prepare: false`: its best plan depends on the values, so a generic plan cached
 * for one value would be wrong for others; a floor that skipped that planning would not be correct work).
 */
async function runFloor(pool: pg.Pool | pg.PoolClient, name: string, params: Record<string, unknown>) {
  const s = await statement(name);
  const values = s.values(params);
  // A parameter left out would go as NULL and could switch part of the statement off (a floor doing less
  // than the service): every one must be given, null where the service sends null.
  const missing = values.indexOf(undefined);
  if (missing !== -1) throw new Error(`floor of ${name}: no value for $${missing + 1}`);
  return await pool.query(
    s.prepared ? { name: `floor_${s.name}`, text: s.text, values } : { text: s.text, values },
  );
}

/** The parameters of the validation statement under the default session lifetimes, now. */
function validateParams(token: string) {
  const t = Date.now();
  const cfg = DEFAULT_SESSION_CONFIG;
  const hash = sha256(token);
  return {
    hash,
    hashes: [hash],
    at: new Date(t),
    absoluteCutoff: new Date(t - cfg.absoluteLifetimeMs),
    idleExpiry: new Date(t + cfg.idleTimeoutMs),
    absoluteSeconds: cfg.absoluteLifetimeMs / 1000,
    refreshCutoff: new Date(t - cfg.refreshIntervalMs),
  };
}

/**
 * SessionsService.validate's read through raw node-postgres: the live session's row, or null (unknown,
 * expired, revoked, or its user deleted; the statement keeps only live rows). The HTTP floor runs this. The
 * sliding refresh (at most once an hour per session) is left out: the seeded sessions are not due.
 */
export async function rawValidate(pool: pg.Pool, token: string): Promise<Record<string, unknown> | null> {
  const result = await runFloor(pool, "rdb_sessions_validate", validateParams(token));
  return result.rows[0] ?? null;
}

export function hotPaths(ctx: HotPathContext): HotPath[] {
  const { fixture, floorPool, naiveDb } = ctx;
  const type = fixture.cacheResourceType;
  const token = (i: number) => pick(fixture.sessionTokens, i);
  const user = (i: number) => pick(fixture.users, i);
  const cacheKey = (i: number) => pick(fixture.cacheKeys, i);
  const pattern = `%@${fixture.listDomain}`;
  const listInput = { emails: [pattern], limit: 50 };
  // Written keys live in their own resource types, so writers of one variant never touch another's rows.
  const writeType = (variant: string) => `${type}-${variant}`;
  // Each call takes a fresh key: take must find something to take, as GETDEL does in the Redis section.
  let takeCounter = 0;
  const takeKey = () => `t${++takeCounter}`;

  return [
    {
      name: "sessions.validate",
      service: async (i) => {
        if (!(await SessionsService.validate(token(i)))) throw new Error("seeded session did not validate");
      },
      floor: async (i) => {
        if (!(await rawValidate(floorPool, token(i)))) throw new Error("seeded session did not validate");
      },
      // The obvious way: read the session joined with its user, check it in JS, extend it when due.
      naive: async (i) => {
        const at = new Date();
        const [row] = await naiveDb
          .select()
          .from(sessions)
          .innerJoin(users, eq(users.id, sessions.userId))
          .where(eq(sessions.tokenHash, sha256(token(i))))
          .limit(1);
        const live =
          row?.sessions.status === "active" && row.sessions.expiresAt > at && row.users.deletedAt === null;
        if (!row || !live) throw new Error("seeded session did not validate");
        const due = at.getTime() - DEFAULT_SESSION_CONFIG.refreshIntervalMs;
        if (!row.sessions.lastAccessedAt || row.sessions.lastAccessedAt.getTime() <= due) {
          await naiveDb
            .update(sessions)
            .set({
              lastAccessedAt: at,
              expiresAt: new Date(at.getTime() + DEFAULT_SESSION_CONFIG.idleTimeoutMs),
            })
            .where(eq(sessions.id, row.sessions.id));
        }
      },
    },
    {
      name: "users.findById",
      service: (i) => UsersService.findById(user(i).id),
      floor: (i) => runFloor(floorPool, "rdb_users_by_id", { value: user(i).id }),
      naive: (i) =>
        naiveDb.query.users.findFirst({ where: and(eq(users.id, user(i).id), isNull(users.deletedAt)) }),
    },
    {
      name: "users.findByEmail",
      service: (i) => UsersService.findByEmail(user(i).email),
      floor: (i) => runFloor(floorPool, "rdb_users_by_email", { value: user(i).email }),
      naive: (i) =>
        naiveDb
          .select()
          .from(users)
          .where(and(eq(users.email, user(i).email), isNull(users.deletedAt)))
          .limit(1),
    },
    {
      name: "users.list %@domain",
      service: () => UsersService.list(listInput),
      // The service sends a lone `%suffix` pattern as a byte range of reverse(email); so does the floor.
      floor: async () => {
        await statement("rdb_users_list_emailSuffix", () => UsersService.list(listInput));
        const from = [...pattern.slice(1)].reverse().join("");
        const to = from.slice(0, -1) + String.fromCharCode(from.charCodeAt(from.length - 1) + 1);
        const params = { emailReversedFrom: from, emailReversedTo: to, limit: 51 };
        return await runFloor(floorPool, "rdb_users_list_emailSuffix", params);
      },
      naive: () =>
        naiveDb
          .select()
          .from(users)
          .where(and(isNull(users.deletedAt), like(users.email, pattern)))
          .orderBy(asc(users.id))
          .limit(51),
    },
    {
      name: "oneTimeTokens.create+consume",
      service: async (i) => {
        const { token: secret } = await OneTimeTokensService.create({
          userId: user(i).id,
          purpose: "magic_link",
          sentTo: user(i).email,
        });
        if (!(await OneTimeTokensService.consume(secret, "magic_link")))
          throw new Error("token not consumed");
      },
      floor: async (i) => {
        const { id: userId, email } = user(i);
        const secret = sha256(`${i}:${Math.random()}`);
        const at = new Date();
        const client = await floorPool.connect();
        try {
          await client.query("BEGIN");
          const key = advisoryLockKey(`one_time_tokens:user:${userId}:magic_link`);
          await runFloor(client, "rdb_one_time_tokens_lock", { key });
          await runFloor(client, "rdb_one_time_tokens_issue_user", {
            id: uuidv7(),
            userId,
            purpose: "magic_link",
            sentTo: email,
            tokenHash: secret,
            expiresAt: new Date(at.getTime() + 15 * 60_000),
            passwordHash: null,
            profile: null,
            at,
            // Like the service: a new link retires the target's older live ones of the purpose.
            retire: true,
          });
          await client.query("COMMIT");
        } catch (error) {
          await client.query("ROLLBACK");
          throw error;
        } finally {
          client.release();
        }
        const used = await runFloor(floorPool, "rdb_one_time_tokens_consume", {
          tokenHash: secret,
          purpose: "magic_link",
          at: new Date(),
        });
        if (used.rowCount !== 1) throw new Error("token not consumed");
      },
      // The obvious way: a Drizzle transaction with the same lock, check, retire and insert, then an update.
      naive: async (i) => {
        const { id: userId, email } = user(i);
        const secret = sha256(`${i}:${Math.random()}`);
        const at = new Date();
        await naiveDb.transaction(async (tx) => {
          const key = advisoryLockKey(`one_time_tokens:user:${userId}:magic_link`);
          await tx.execute(sql`SELECT pg_advisory_xact_lock(${key}::bigint)`);
          const owner = await tx.query.users.findFirst({
            where: and(eq(users.id, userId), isNull(users.deletedAt)),
          });
          if (!owner) throw new Error("no user");
          await tx
            .update(oneTimeTokens)
            .set({ deletedAt: at })
            .where(
              and(
                eq(oneTimeTokens.userId, userId),
                eq(oneTimeTokens.purpose, "magic_link"),
                isNull(oneTimeTokens.usedAt),
                isNull(oneTimeTokens.deletedAt),
              ),
            );
          await tx.insert(oneTimeTokens).values({
            userId,
            purpose: "magic_link",
            sentTo: email,
            tokenHash: secret,
            expiresAt: new Date(at.getTime() + 15 * 60_000),
          });
        });
        const used = await naiveDb
          .update(oneTimeTokens)
          .set({ usedAt: new Date() })
          .where(
            and(
              eq(oneTimeTokens.tokenHash, secret),
              eq(oneTimeTokens.purpose, "magic_link"),
              isNull(oneTimeTokens.usedAt),
              isNull(oneTimeTokens.deletedAt),
              gt(oneTimeTokens.expiresAt, new Date()),
            ),
          )
          .returning({ id: oneTimeTokens.id });
        if (used.length !== 1) throw new Error("token not consumed");
      },
    },
    {
      name: "cache.get",
      service: (i) => CacheService.get(type, cacheKey(i)),
      floor: (i) => runFloor(floorPool, "rdb_cache_get", { type, key: cacheKey(i), at: new Date() }),
      naive: (i) =>
        naiveDb
          .select({ value: cache.value, expiresAt: cache.expiresAt })
          .from(cache)
          .where(and(eq(cache.resourceType, type), eq(cache.key, cacheKey(i)))),
    },
    {
      name: "cache.set",
      service: (i) => CacheService.set(writeType("service"), cacheKey(i), { i }, { ttlSeconds: 300 }),
      floor: (i) => {
        const at = new Date();
        return runFloor(floorPool, "rdb_cache_set", {
          type: writeType("floor"),
          key: cacheKey(i),
          json: JSON.stringify({ i }),
          at,
          expiresAt: new Date(at.getTime() + 300_000),
        });
      },
      naive: (i) => {
        const at = new Date();
        const row = { value: { i }, expiresAt: new Date(at.getTime() + 300_000), updatedAt: at };
        return naiveDb
          .insert(cache)
          .values({ resourceType: writeType("naive"), key: cacheKey(i), ...row })
          .onConflictDoUpdate({ target: [cache.resourceType, cache.key], set: row });
      },
    },
    {
      name: "cache.increment",
      service: (i) => CacheService.increment(writeType("service"), `n${i % 1000}`, 1, { ttlSeconds: 60 }),
      floor: (i) => {
        const at = new Date();
        return runFloor(floorPool, "rdb_cache_increment", {
          type: writeType("floor"),
          key: `n${i % 1000}`,
          step: 1,
          at,
          expiresAt: new Date(at.getTime() + 60_000),
        });
      },
      naive: (i) => {
        const at = new Date();
        return naiveDb
          .insert(cache)
          .values({
            resourceType: writeType("naive"),
            key: `n${i % 1000}`,
            value: 1,
            expiresAt: new Date(at.getTime() + 60_000),
          })
          .onConflictDoUpdate({
            target: [cache.resourceType, cache.key],
            set: { value: sql`to_jsonb((${cache.value} #>> '{}')::bigint + 1)`, updatedAt: at },
          })
          .returning({ value: cache.value });
      },
    },
    {
      name: "cache.set+take",
      service: async () => {
        const key = takeKey();
        await CacheService.set(writeType("service"), key, { key });
        if ((await CacheService.take(writeType("service"), key)) === null) throw new Error("nothing taken");
      },
      floor: async () => {
        const key = takeKey();
        const at = new Date();
        const params = { type: writeType("floor"), key, json: JSON.stringify({ key }), at, expiresAt: null };
        await runFloor(floorPool, "rdb_cache_set", params);
        const taken = await runFloor(floorPool, "rdb_cache_take", { type: params.type, key, at: new Date() });
        if (taken.rowCount !== 1) throw new Error("nothing taken");
      },
      naive: async () => {
        const key = takeKey();
        const resourceType = writeType("naive");
        await naiveDb
          .insert(cache)
          .values({ resourceType, key, value: { key } })
          .onConflictDoUpdate({ target: [cache.resourceType, cache.key], set: { value: { key } } });
        const taken = await naiveDb
          .delete(cache)
          .where(and(eq(cache.resourceType, resourceType), eq(cache.key, key)))
          .returning({ value: cache.value });
        if (taken.length !== 1) throw new Error("nothing taken");
      },
    },
  ];
}
