// The contract every service function gets from defineService(), checked for each one in definedServices():
//  - bad input is refused with VALIDATION_FAILED before any query, and nothing is written;
//  - only DbError escapes (every failure anywhere in this file is checked);
//  - a valid call is counted in db_queries_total under the function's table;
//  - work done inside a caller's `{ tx }` that rolls back leaves every table as it was.
// Calls alternate between the two call shapes, `fn(...args, { tx, logger })` and `fn(...args, logger, { tx })`,
// so that every function is called both ways. A service function added without an entry in the tables below
// fails the first test (and does not type-check: the tables are keyed by SERVICE_NAMES).
import { randomBytes } from "node:crypto";
import { type Algorithm, hash } from "@node-rs/argon2";
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { manualClock, resetClock, setClock } from "../../src/clock.ts";
import { type DatabaseOrTransaction, db, transaction } from "../../src/connection.ts";
import { configureAccountEncryption, resetAccountEncryption } from "../../src/crypto/encryption.ts";
import { type PreparedPassword, preparedFromHash } from "../../src/crypto/passwords.ts";
import { DbError } from "../../src/errors.ts";
import type { Logger } from "../../src/logger.ts";
import { dbQueriesTotal } from "../../src/metrics.ts";
import * as AccountsService from "../../src/services/accounts.ts";
import * as AuditService from "../../src/services/audit.ts";
import * as CacheService from "../../src/services/cache.ts";
import { type DefinedService, definedServices } from "../../src/services/define.ts";
import * as OneTimeTokensService from "../../src/services/one-time-tokens.ts";
import * as RolesService from "../../src/services/roles.ts";
import * as SessionsService from "../../src/services/sessions.ts";
import * as UsersService from "../../src/services/users.ts";
import { recordingLogger, useTestDatabase } from "../../src/testing/index.ts";

useTestDatabase();

/** Every function made with defineService, by its spec name. Adding a service function means adding it here. */
const SERVICE_NAMES = [
  "users.setPassword",
  "users.verifyPassword",
  "users.signIn",
  "users.preparePassword",
  "users.hasPassword",
  "users.register",
  "users.sendVerification",
  "users.useEmailLink",
  "users.create",
  "users.findById",
  "users.findByEmail",
  "users.findByPhone",
  "users.list",
  "users.explainList",
  "users.search",
  "users.update",
  "users.softDelete",
  "users.restore",
  "users.purge",
  "sessions.create",
  "sessions.validate",
  "sessions.rotate",
  "sessions.revoke",
  "sessions.revokeAllForUser",
  "sessions.listForUser",
  "sessions.cleanupExpired",
  "oneTimeTokens.createCode",
  "oneTimeTokens.verifyCode",
  "oneTimeTokens.consume",
  "oneTimeTokens.peek",
  "oneTimeTokens.reserveLinkAttempt",
  "oneTimeTokens.create",
  "oneTimeTokens.invalidateForUser",
  "oneTimeTokens.cleanupExpired",
  "cache.get",
  "cache.set",
  "cache.delete",
  "cache.getMany",
  "cache.setMany",
  "cache.increment",
  "cache.take",
  "cache.cleanupExpired",
  "accounts.link",
  "accounts.unlink",
  "accounts.findByProvider",
  "accounts.listForUser",
  "accounts.getTokens",
  "accounts.reencrypt",
  "accounts.getFreshAccessToken",
  "accounts.signInWithProvider",
  "audit.record",
  "audit.verify",
  "audit.prune",
  "audit.list",
  "roles.grant",
  "roles.revoke",
  "roles.revokeAll",
  "roles.rolesOf",
  "audit.chain",
] as const;
type ServiceName = (typeof SERVICE_NAMES)[number];

const TABLES = [
  "users",
  "sessions",
  "one_time_tokens",
  "accounts",
  "cache",
  "audit_events",
  "audit_chain",
  "user_roles",
] as const;
type Table = (typeof TABLES)[number];

// ---------------------------------------------------------------------------------------------------------
// Helpers

/** Row count and md5 of every row of each table (minus `ignore`d columns), read on `handle`, in one statement. */
async function checksums(
  handle: DatabaseOrTransaction = db,
  ignore: Partial<Record<Table, readonly string[]>> = {},
): Promise<Record<Table, string>> {
  const parts = TABLES.map((table) => {
    const left = ignore[table] ?? [];
    const row =
      left.length === 0
        ? "to_jsonb(x)::text"
        : `(to_jsonb(x) - ARRAY[${left.map((column) => `'${column}'`).join(", ")}]::text[])::text`;
    return `SELECT '${table}' AS name, count(*)::int AS n,
      md5(coalesce(string_agg(${row}, ',' ORDER BY ${row}), '')) AS sum FROM ${table} x`;
  });
  const result = await handle.execute<{ name: Table; n: number; sum: string }>(
    sql.raw(parts.join("\nUNION ALL\n")),
  );
  const out = {} as Record<Table, string>;
  for (const row of result.rows) out[row.name] = `${row.n}:${row.sum}`;
  return out;
}

/** db_queries_total summed over every operation on `table` (all tables without one). */
async function queriesOn(table?: string): Promise<number> {
  const metric = await dbQueriesTotal.get();
  return metric.values
    .filter((value) => table === undefined || value.labels.table === table)
    .reduce((sum, value) => sum + value.value, 0);
}

type Outcome = { ok: true; value: unknown } | { ok: false; error: DbError };

/** Awaits a call; whatever it throws must be a DbError ("only DbError escapes"). */
async function settle(promise: Promise<unknown>): Promise<Outcome> {
  try {
    return { ok: true, value: await promise };
  } catch (error) {
    expect(error, `a non-DbError escaped: ${String(error)}`).toBeInstanceOf(DbError);
    return { ok: false, error: error as DbError };
  }
}

/** The two call shapes; `turn` shifts which one a function gets, so each is called both ways across tests. */
type Shape = "options" | "logger";

function shapeFor(name: ServiceName, turn: number): Shape {
  return (SERVICE_NAMES.indexOf(name) + turn) % 2 === 0 ? "options" : "logger";
}

/**
 * Calls `service` with `args` (padded with undefined up to its arity, so the tail lands where it belongs),
 * then `{ ...options, logger }` or `logger, options`.
 */
function invoke(
  name: ServiceName,
  args: readonly unknown[],
  shape: Shape,
  logger: Logger,
  options: Record<string, unknown> = {},
): Promise<unknown> {
  const service = serviceNamed(name);
  if (args.length > service.arity)
    throw new Error(`${name}: ${args.length} arguments, arity ${service.arity}`);
  const positional = [...args, ...new Array<undefined>(service.arity - args.length).fill(undefined)];
  return shape === "options"
    ? service.fn(...positional, { ...options, logger })
    : service.fn(...positional, logger, options);
}

const registry = new Map<string, DefinedService>(definedServices().map((service) => [service.name, service]));

function serviceNamed(name: ServiceName): DefinedService {
  const service = registry.get(name);
  if (!service) throw new Error(`${name} is not in definedServices()`);
  return service;
}

let seq = 0;
const unique = (prefix: string) => `${prefix}-${++seq}-${randomBytes(3).toString("hex")}`;
const freshEmail = (prefix = "contract") => `${unique(prefix)}@example.com`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

const PASSWORD = `Contract-${randomBytes(6).toString("hex")}-pass`;
const PHONE = "+14155552671";
const CACHE_TYPE = "contract";
const keyA = randomBytes(32);
const keyB = randomBytes(32);
let prepared: PreparedPassword;
/** PASSWORD hashed with weaker parameters than the policy: verifyPassword replaces it (a write). */
let weakHash: string;

beforeAll(async () => {
  configureAccountEncryption({ keys: { a: keyA, b: keyB }, currentKeyId: "a" });
  OneTimeTokensService.configureOneTimeCodes({ key: randomBytes(32) });
  prepared = await UsersService.preparePassword({ password: PASSWORD });
  weakHash = await hash(PASSWORD, {
    algorithm: 2 as Algorithm,
    memoryCost: 8192,
    timeCost: 1,
    parallelism: 1,
  });
  // findByPhone finds this one.
  await UsersService.create({ phoneNumber: PHONE, firstName: "Contract" });
});

afterAll(() => {
  resetAccountEncryption();
  OneTimeTokensService.configureOneTimeCodes(null);
  resetClock();
});

async function makeUser(password?: PreparedPassword) {
  const email = freshEmail();
  const user = await UsersService.create({ email, firstName: "Contract", ...(password ? { password } : {}) });
  return { id: user.id, email };
}

async function makeSession(userId?: string) {
  const owner = userId ?? (await makeUser()).id;
  const { session, token } = await SessionsService.create({ userId: owner, authMethod: "password" });
  return { userId: owner, sessionId: session.id, token };
}

async function makeLink(purpose: "magic_link" | "password_reset" = "password_reset") {
  const user = await makeUser();
  const { token } = await OneTimeTokensService.create({ userId: user.id, purpose, sentTo: user.email });
  return { ...user, token, purpose };
}

async function makeAccount() {
  const user = await makeUser();
  const identity = { provider: "google", providerAccountId: unique("sub") };
  const account = await AccountsService.link({
    userId: user.id,
    ...identity,
    accessToken: `ya29.${randomBytes(24).toString("base64url")}`,
    refreshToken: `1//${randomBytes(24).toString("base64url")}`,
  });
  return { userId: user.id, accountId: account.id, ...identity };
}

/** A cache entry that has expired by the time this resolves. */
async function expiredEntry(): Promise<string> {
  const key = unique("expired");
  await CacheService.set(CACHE_TYPE, key, { stale: true }, { ttlSeconds: 0.001 });
  await sleep(5);
  return key;
}

// ---------------------------------------------------------------------------------------------------------
// Bad input: for each function, every positional argument replaced by a value of the wrong type (or a
// value its schema must refuse). Expected: VALIDATION_FAILED, unless `expect` says otherwise and why.

interface BadInput {
  args: unknown[];
  options?: Record<string, unknown>;
  /** What the function answers instead of VALIDATION_FAILED, by design. */
  expect?: { resolves: unknown; why: string } | { code: string; why: string };
}

const BAD_INPUT: Record<ServiceName, BadInput> = {
  "users.setPassword": { args: [{ nope: 1 }] },
  "users.verifyPassword": { args: [null] },
  "users.signIn": { args: [{ nope: 1 }], options: { session: { authMethod: "password" } } },
  "users.preparePassword": { args: [42] },
  "users.hasPassword": { args: [{ nope: 1 }] },
  "users.register": { args: [{ nope: 1 }] },
  "users.sendVerification": { args: [42] },
  "users.useEmailLink": { args: [null] },
  "users.create": { args: [{ nope: 1 }] },
  "users.findById": { args: [42] },
  "users.findByEmail": { args: [{ nope: 1 }] },
  "users.findByPhone": { args: [42] },
  "users.list": { args: [{ nope: 1 }] },
  "users.explainList": { args: [{ nope: 1 }] },
  "users.search": { args: [null] },
  "users.update": { args: [{ nope: 1 }] },
  "users.softDelete": { args: [42] },
  "users.restore": { args: [null] },
  "users.purge": { args: [42] },
  "sessions.create": { args: [{ nope: 1 }] },
  "sessions.validate": {
    args: [{ nope: 1 }],
    expect: {
      resolves: null,
      why: "a malformed token is not a session: null, without touching the database",
    },
  },
  "sessions.rotate": {
    args: [{ nope: 1 }],
    expect: { code: "TOKEN_INVALID", why: "a malformed token is refused like an unknown one (documented)" },
  },
  "sessions.revoke": { args: [42] },
  "sessions.revokeAllForUser": { args: [null] },
  "sessions.listForUser": { args: [{ nope: 1 }] },
  "sessions.cleanupExpired": { args: [42] },
  "oneTimeTokens.createCode": { args: [{ nope: 1 }] },
  "oneTimeTokens.verifyCode": { args: [42] },
  "oneTimeTokens.consume": { args: [42, 42] },
  "oneTimeTokens.peek": { args: [null, null] },
  "oneTimeTokens.reserveLinkAttempt": { args: [{ nope: 1 }, { nope: 1 }] },
  "oneTimeTokens.create": { args: [null] },
  "oneTimeTokens.invalidateForUser": { args: [42, 42] },
  "oneTimeTokens.cleanupExpired": { args: [{ nope: 1 }] },
  "cache.get": { args: [42, 42] },
  "cache.set": { args: [null, null, null, null] },
  "cache.delete": { args: [{ nope: 1 }, { nope: 1 }] },
  "cache.getMany": { args: [42, 42] },
  "cache.setMany": { args: [42, 42, 42] },
  "cache.increment": { args: [null, null, null, null] },
  "cache.take": { args: [42, 42] },
  "cache.cleanupExpired": { args: [null] },
  "accounts.link": { args: [{ nope: 1 }] },
  "accounts.unlink": { args: [42] },
  "accounts.findByProvider": { args: [null] },
  "accounts.listForUser": { args: [{ nope: 1 }] },
  "accounts.getTokens": { args: [42] },
  "accounts.reencrypt": { args: [{ nope: 1 }] },
  "accounts.getFreshAccessToken": { args: [42] },
  "accounts.signInWithProvider": { args: [{ nope: 1 }], options: { session: { authMethod: "oauth:acme" } } },
  "audit.record": { args: [{ action: "launch", actorType: "user" }] },
  "audit.verify": { args: [{ batchSize: 0 }] },
  "audit.prune": { args: [{ before: "yesterday" }] },
  "audit.list": { args: [{ limit: 0 }] },
  "roles.grant": { args: [{ userId: "not-a-uuid", role: "admin" }] },
  "roles.revoke": { args: [{ userId: "0190a1b2-c3d4-7e5f-8a9b-000000000001", role: "owner" }] },
  "roles.rolesOf": { args: [42] },
  "roles.revokeAll": { args: [{ userId: 7 }] },
  "audit.chain": { args: [{ batchSize: -1 }] },
};

// ---------------------------------------------------------------------------------------------------------
// Valid calls: each setup makes (and commits, through the services) the rows its call needs, fresh for each
// test, and returns the call. `writes`: the call changes a table with this input, so the rolled-back
// transaction is checked to have seen the change before undoing it.

interface Invocation {
  args: unknown[];
  /** Options beside tx and logger (signIn's session, revoke's userId, ...). */
  options?: Record<string, unknown>;
  /** Columns a call commits on its own even inside a caller's transaction, by design (see its entry). */
  committedOnPurpose?: Partial<Record<Table, readonly string[]>>;
}

interface ValidCall {
  setup: () => Promise<Invocation>;
  writes: boolean;
  /** Why the metrics guarantee does not apply (the function runs no query). */
  noQuery?: string;
}

const VALID: Record<ServiceName, ValidCall> = {
  "users.setPassword": {
    writes: true,
    setup: async () => ({ args: [{ id: (await makeUser()).id, password: prepared }] }),
  },
  "users.verifyPassword": {
    // A hash weaker than the policy is replaced after the check: the write path.
    writes: true,
    setup: async () => {
      const user = await makeUser();
      await UsersService.setPassword({ id: user.id, password: preparedFromHash(weakHash) });
      return { args: [{ email: user.email, password: PASSWORD }] };
    },
  },
  "users.signIn": {
    writes: true,
    setup: async () => {
      const user = await makeUser(prepared);
      return {
        args: [{ email: user.email, password: PASSWORD }],
        options: { session: { authMethod: "password" } },
      };
    },
  },
  "users.preparePassword": {
    writes: false,
    noQuery: "checks the policy and hashes in memory: it never touches the database (nor its `tx`)",
    setup: async () => ({ args: [{ password: PASSWORD }] }),
  },
  "users.hasPassword": {
    writes: false,
    setup: async () => ({ args: [(await makeUser(prepared)).id] }),
  },
  "users.register": {
    writes: true,
    setup: async () => ({ args: [{ email: freshEmail("register"), password: prepared, firstName: "Ada" }] }),
  },
  "users.sendVerification": {
    writes: true,
    setup: async () => ({ args: [{ userId: (await makeUser()).id }] }),
  },
  "users.useEmailLink": {
    // A magic link: peeks outside the transaction (a read), then uses the link, proves the address, ends the
    // other sessions and signs in, all in the caller's transaction. (A sign-up's verification link with a
    // password would also reserve a guess outside it, on purpose: see oneTimeTokens.verifyCode below.)
    writes: true,
    setup: async () => {
      const link = await makeLink("magic_link");
      await makeSession(link.id);
      return {
        args: [{ token: link.token, purpose: "magic_link" }],
        options: { session: { authMethod: "magic_link" } },
      };
    },
  },
  "users.create": {
    writes: true,
    setup: async () => ({
      args: [{ email: freshEmail("create"), password: prepared, lastName: "Lovelace" }],
    }),
  },
  "users.findById": { writes: false, setup: async () => ({ args: [(await makeUser()).id] }) },
  "users.findByEmail": { writes: false, setup: async () => ({ args: [(await makeUser()).email] }) },
  "users.findByPhone": { writes: false, setup: async () => ({ args: [PHONE] }) },
  "users.list": { writes: false, setup: async () => ({ args: [{ emails: ["%@example.com"], limit: 5 }] }) },
  "users.explainList": { writes: false, setup: async () => ({ args: [{ limit: 5 }] }) },
  "users.search": { writes: false, setup: async () => ({ args: [{ query: "contract" }] }) },
  "users.update": {
    // A new email: the user row and, in the same transaction, the user's pending tokens.
    writes: true,
    setup: async () => {
      const link = await makeLink();
      return { args: [{ id: link.id, patch: { email: freshEmail("moved"), firstName: "Moved" } }] };
    },
  },
  "users.softDelete": {
    writes: true,
    setup: async () => {
      const { userId } = await makeSession();
      return { args: [userId] };
    },
  },
  "users.restore": {
    writes: true,
    setup: async () => {
      const user = await makeUser();
      await UsersService.softDelete(user.id);
      return { args: [user.id] };
    },
  },
  "users.purge": {
    writes: true,
    setup: async () => {
      const user = await makeUser();
      await UsersService.softDelete(user.id);
      await sleep(5);
      return { args: [{ retentionMs: 0, batchSize: 10 }] };
    },
  },
  "sessions.create": {
    writes: true,
    setup: async () => ({
      args: [{ userId: (await makeUser()).id, authMethod: "password", ipAddress: "203.0.113.7" }],
    }),
  },
  "sessions.validate": {
    // A session last touched two hours ago: its sliding refresh is due, so validate writes.
    writes: true,
    setup: async () => {
      setClock(manualClock(new Date(Date.now() - 2 * 60 * 60 * 1000)).now);
      try {
        return { args: [(await makeSession()).token] };
      } finally {
        resetClock();
      }
    },
  },
  "sessions.rotate": { writes: true, setup: async () => ({ args: [(await makeSession()).token] }) },
  "sessions.revoke": {
    writes: true,
    setup: async () => {
      const { sessionId, userId } = await makeSession();
      return { args: [sessionId], options: { userId } };
    },
  },
  "sessions.revokeAllForUser": {
    writes: true,
    setup: async () => ({ args: [{ userId: (await makeSession()).userId }] }),
  },
  "sessions.listForUser": { writes: false, setup: async () => ({ args: [(await makeSession()).userId] }) },
  "sessions.cleanupExpired": {
    // A revoked session has expires_at pulled back to now: cleanup has a row to delete.
    writes: true,
    setup: async () => {
      const { sessionId } = await makeSession();
      await SessionsService.revoke(sessionId);
      return { args: [{ batchSize: 100 }] };
    },
  },
  "oneTimeTokens.createCode": {
    writes: true,
    setup: async () => ({ args: [{ purpose: "phone_verification", sentTo: unique("+1415") }] }),
  },
  "oneTimeTokens.verifyCode": {
    // The right code. Its attempt is reserved on the pool, committed at once even inside the caller's
    // transaction, by design (a caller rolling back after a wrong guess must not get the guess back): after
    // the rollback the row's `attempts` is one higher (and its `updated_at`, by the trigger), the rest as it was.
    writes: true,
    setup: async () => {
      const sentTo = unique("+1415");
      const { code } = await OneTimeTokensService.createCode({ purpose: "phone_verification", sentTo });
      return {
        args: [{ sentTo, purpose: "phone_verification", code }],
        committedOnPurpose: { one_time_tokens: ["attempts", "updated_at"] },
      };
    },
  },
  "oneTimeTokens.consume": {
    writes: true,
    setup: async () => ({ args: [(await makeLink()).token, "password_reset"] }),
  },
  "oneTimeTokens.peek": {
    writes: false,
    setup: async () => ({ args: [(await makeLink()).token, "password_reset"] }),
  },
  "oneTimeTokens.reserveLinkAttempt": {
    writes: true,
    setup: async () => ({ args: [(await makeLink()).token, "password_reset"] }),
  },
  "oneTimeTokens.create": {
    writes: true,
    setup: async () => {
      const user = await makeUser();
      return { args: [{ userId: user.id, purpose: "password_reset", sentTo: user.email }] };
    },
  },
  "oneTimeTokens.invalidateForUser": {
    writes: true,
    setup: async () => ({ args: [(await makeLink()).id, { purpose: "password_reset" }] }),
  },
  "oneTimeTokens.cleanupExpired": {
    // A retired token (deleted_at set): cleanup has a row to delete.
    writes: true,
    setup: async () => {
      const { id } = await makeLink();
      await OneTimeTokensService.invalidateForUser(id);
      return { args: [{ batchSize: 100 }] };
    },
  },
  "cache.get": {
    // An expired entry: the read deletes it in the same statement.
    writes: true,
    setup: async () => ({ args: [CACHE_TYPE, await expiredEntry()] }),
  },
  "cache.set": {
    writes: true,
    setup: async () => ({ args: [CACHE_TYPE, unique("set"), { at: new Date(), n: 1 }, { ttlSeconds: 60 }] }),
  },
  "cache.delete": {
    writes: true,
    setup: async () => {
      const key = unique("delete");
      await CacheService.set(CACHE_TYPE, key, "value");
      return { args: [CACHE_TYPE, key] };
    },
  },
  "cache.getMany": {
    // One live entry and one expired (deleted by the read).
    writes: true,
    setup: async () => {
      const live = unique("live");
      await CacheService.set(CACHE_TYPE, live, [1, 2, 3]);
      return { args: [CACHE_TYPE, [live, await expiredEntry()]] };
    },
  },
  "cache.setMany": {
    writes: true,
    setup: async () => ({
      args: [
        CACHE_TYPE,
        [
          { key: unique("many"), value: { a: 1 } },
          { key: unique("many"), value: "b" },
        ],
        { ttlSeconds: 60 },
      ],
    }),
  },
  "cache.increment": {
    writes: true,
    setup: async () => ({ args: [CACHE_TYPE, unique("counter"), 2, { ttlSeconds: 60 }] }),
  },
  "cache.take": {
    writes: true,
    setup: async () => {
      const key = unique("take");
      await CacheService.set(CACHE_TYPE, key, { state: "x" });
      return { args: [CACHE_TYPE, key] };
    },
  },
  "cache.cleanupExpired": {
    writes: true,
    setup: async () => {
      await expiredEntry();
      return { args: [{ batchSize: 100 }] };
    },
  },
  "accounts.link": {
    writes: true,
    setup: async () => ({
      args: [
        {
          userId: (await makeUser()).id,
          provider: "github",
          providerAccountId: unique("gh"),
          accessToken: `gho_${randomBytes(18).toString("hex")}`,
          scope: "read:user",
        },
      ],
    }),
  },
  "accounts.unlink": {
    writes: true,
    setup: async () => {
      const { accountId, userId } = await makeAccount();
      return { args: [{ accountId, userId }] };
    },
  },
  "accounts.findByProvider": {
    writes: false,
    setup: async () => {
      const { provider, providerAccountId } = await makeAccount();
      return { args: [{ provider, providerAccountId }] };
    },
  },
  "accounts.listForUser": { writes: false, setup: async () => ({ args: [(await makeAccount()).userId] }) },
  "accounts.getTokens": { writes: false, setup: async () => ({ args: [(await makeAccount()).accountId] }) },
  // A stored access token without expiry is fresh: answered as it is (under the account's refresh lock).
  "accounts.getFreshAccessToken": {
    writes: false,
    setup: async () => ({ args: [(await makeAccount()).accountId] }),
  },
  "accounts.signInWithProvider": {
    writes: true,
    setup: async () => ({
      args: [
        {
          provider: "acme",
          providerAccountId: unique("acme"),
          email: `${unique("provider")}@example.com`,
          emailVerified: true,
        },
      ],
      options: { session: { authMethod: "oauth:acme" } },
    }),
  },
  "audit.record": {
    writes: true,
    setup: async () => ({
      args: [
        {
          action: "sign_in",
          actorType: "user",
          actorUserId: (await makeUser()).id,
          details: { via: "password" },
        },
      ],
    }),
  },
  "audit.verify": { writes: false, setup: async () => ({ args: [{ batchSize: 100 }] }) },
  "audit.prune": {
    // An event to delete: everything before a moment just ahead goes.
    writes: true,
    setup: async () => {
      await AuditService.record({ action: "sign_out", actorType: "system" });
      await AuditService.chain();
      return { args: [{ before: new Date(Date.now() + 1000), batchSize: 10 }] };
    },
  },
  "audit.list": {
    writes: false,
    setup: async () => ({ args: [{ actions: ["sign_in"], limit: 5 }] }),
  },
  "roles.grant": {
    writes: true,
    setup: async () => ({ args: [{ userId: (await makeUser()).id, role: "support" }] }),
  },
  "roles.revoke": {
    writes: true,
    setup: async () => {
      const user = await makeUser();
      await RolesService.grant({ userId: user.id, role: "support" });
      return { args: [{ userId: user.id, role: "support" }] };
    },
  },
  "roles.revokeAll": {
    writes: true,
    setup: async () => {
      const user = await makeUser();
      await RolesService.grant({ userId: user.id, role: "support" });
      return { args: [{ userId: user.id }] };
    },
  },
  "audit.chain": {
    writes: true,
    setup: async () => {
      await AuditService.record({ action: "sign_out", actorType: "system" });
      return { args: [{ batchSize: 10 }] };
    },
  },
  "roles.rolesOf": {
    writes: false,
    setup: async () => {
      const user = await makeUser();
      await RolesService.grant({ userId: user.id, role: "admin" });
      return { args: [user.id] };
    },
  },
  "accounts.reencrypt": {
    // An account sealed under key a, then b made current: reencrypt has a row to rewrite.
    writes: true,
    setup: async () => {
      configureAccountEncryption({ keys: { a: keyA, b: keyB }, currentKeyId: "a" });
      await makeAccount();
      configureAccountEncryption({ keys: { a: keyA, b: keyB }, currentKeyId: "b" });
      return { args: [{ batchSize: 50 }] };
    },
  },
};

// ---------------------------------------------------------------------------------------------------------
// The tests

describe("the registry", () => {
  it("holds exactly the expected service functions, each exported by its namespace", () => {
    const names = definedServices().map((service) => service.name);
    expect(new Set(names).size).toBe(names.length);
    expect([...names].sort()).toEqual([...SERVICE_NAMES].sort());
    expect(names).toHaveLength(59);
    const exported = new Set<unknown>(
      [
        UsersService,
        SessionsService,
        OneTimeTokensService,
        CacheService,
        AccountsService,
        AuditService,
        RolesService,
      ].flatMap((ns) => Object.values(ns)),
    );
    for (const service of definedServices()) {
      expect(exported.has(service.fn), `${service.name} is exported`).toBe(true);
      expect(TABLES as readonly string[]).toContain(service.table);
      expect(service.arity).toBeGreaterThanOrEqual(1);
    }
  });
});

describe("bad input gives VALIDATION_FAILED, before any query, and writes nothing", () => {
  it.each(SERVICE_NAMES)("%s", async (name) => {
    const bad = BAD_INPUT[name];
    const { logger, lines } = recordingLogger();
    const before = await checksums();
    const queries = await queriesOn();
    const outcome = await settle(invoke(name, bad.args, shapeFor(name, 0), logger, bad.options));
    const expected = bad.expect;
    if (expected && "resolves" in expected) {
      expect(outcome).toEqual({ ok: true, value: expected.resolves });
    } else {
      expect(outcome.ok, `${name} accepted ${JSON.stringify(bad.args)}`).toBe(false);
      if (outcome.ok) return;
      expect(outcome.error.code).toBe(expected?.code ?? "VALIDATION_FAILED");
      // A rejection is the caller's business: logged at warn, never at error.
      expect(lines.filter((line) => line.level === "error")).toEqual([]);
      expect(lines.some((line) => line.level === "warn" && line.fields.operation === name)).toBe(true);
    }
    expect(await queriesOn(), "no query ran").toBe(queries);
    expect(await checksums()).toEqual(before);
  });
});

// The same, swept: each positional argument replaced by each of these at once.
const HOSTILE: ReadonlyArray<readonly [string, unknown]> = [
  ["null", null],
  ["42", 42],
  ["{ nope: 1 }", { nope: 1 }],
];

/**
 * Bugs the sweep found, left to the service's owner (this test does not fix services): the answers observed
 * today, so that a fix makes this test fail and the entry is deleted with it.
 */
const SWEEP_KNOWN_BUGS: Partial<Record<ServiceName, Record<string, string>>> = {};

/** An outcome as a short label: the code (with the cause's class for an internal error), or "resolves". */
function label(outcome: Outcome): string {
  if (outcome.ok) return outcome.value === null ? "resolves null" : "resolves";
  const { error } = outcome;
  if (error.kind !== "internal") return error.code;
  const cause = error.cause as { constructor?: { name?: string } } | undefined;
  return `${error.code} (${cause?.constructor?.name ?? "no cause"})`;
}

describe("hostile values in every position: only DbError escapes and nothing is written", () => {
  it.each(SERVICE_NAMES)("%s", async (name) => {
    const service = serviceNamed(name);
    const answers: Record<string, string> = {};
    for (const [hostile, value] of HOSTILE) {
      const { logger } = recordingLogger();
      const before = await checksums();
      const args = new Array<unknown>(service.arity).fill(value);
      const outcome = await settle(invoke(name, args, shapeFor(name, 1), logger, BAD_INPUT[name].options));
      answers[hostile] = label(outcome);
      expect(await checksums(), `${name}(${hostile}) wrote`).toEqual(before);
    }
    const expected = BAD_INPUT[name].expect;
    const answer = !expected
      ? "VALIDATION_FAILED"
      : "code" in expected
        ? expected.code
        : `resolves ${JSON.stringify(expected.resolves)}`;
    expect(answers).toEqual(
      SWEEP_KNOWN_BUGS[name] ?? Object.fromEntries(HOSTILE.map(([hostile]) => [hostile, answer])),
    );
  });
});

describe("a valid call is counted in db_queries_total under its table", () => {
  it.each(SERVICE_NAMES)("%s", async (name) => {
    const valid = VALID[name];
    const { table } = serviceNamed(name);
    const call = await valid.setup();
    const { logger } = recordingLogger();
    const before = await queriesOn(table);
    const outcome = await settle(invoke(name, call.args, shapeFor(name, 1), logger, call.options));
    expect(outcome.ok ? "ok" : `${outcome.error.code}: ${outcome.error.message}`).toBe("ok");
    if (valid.noQuery) expect(await queriesOn(table)).toBe(before);
    else expect(await queriesOn(table)).toBeGreaterThan(before);
  });
});

describe("work inside a rolled-back { tx } leaves every table as it was", () => {
  it.each(SERVICE_NAMES)("%s", async (name) => {
    const valid = VALID[name];
    const call = await valid.setup();
    const { logger } = recordingLogger();
    const ignore = call.committedOnPurpose ?? {};
    const before = await checksums(db, ignore);
    const rollback = new Error("roll back");
    let inside: Record<Table, string> | undefined;
    await expect(
      transaction(async (tx) => {
        const outcome = await settle(
          invoke(name, call.args, shapeFor(name, 0), logger, { ...call.options, tx }),
        );
        expect(outcome.ok ? "ok" : `${outcome.error.code}: ${outcome.error.message}`).toBe("ok");
        inside = await checksums(tx, ignore);
        throw rollback;
      }),
    ).rejects.toBe(rollback);
    // The call did its writing in the transaction (so the check below means something), and it is gone.
    if (valid.writes) expect(inside).not.toEqual(before);
    else expect(inside).toEqual(before);
    expect(await checksums(db, ignore)).toEqual(before);
  });
});

describe("coverage", () => {
  // Independent of the order tests run in: which shape each call uses is fixed by shapeFor(), and every
  // failure is checked to be a DbError where it happens (settle()).
  it("calls every function in both call shapes, and covers the writers and the counted calls", () => {
    for (const name of SERVICE_NAMES) {
      // Bad input uses turn 0, the metrics check turn 1.
      expect(new Set([shapeFor(name, 0), shapeFor(name, 1)])).toEqual(new Set(["logger", "options"]));
    }
    const writers = SERVICE_NAMES.filter((name) => VALID[name].writes);
    const counted = SERVICE_NAMES.filter((name) => !VALID[name].noQuery);
    expect({ writers: writers.length, counted: counted.length }).toEqual({ writers: 42, counted: 58 });
  });
});
