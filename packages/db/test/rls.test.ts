// Row-level security (migration 0007): inside a user-scoped transaction an unfiltered query sees and writes only
// that user's sessions, linked accounts, one-time tokens and audit events; the scope is set in the BEGIN round
// trip and dies with the transaction, so the pooled connection (and, through PgBouncer in transaction mode,
// the next client of the server connection) carries no user afterwards; system work keeps seeing every row.
import { randomBytes, randomUUID } from "node:crypto";
import { sql } from "drizzle-orm";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { databaseConfigFromUrl } from "../src/config.ts";
import { db, disconnectDB, getPool, initializeDB, transaction, withUser } from "../src/connection.ts";
import { isDbError } from "../src/errors.ts";
import { accounts, auditEvents, oneTimeTokens, sessions } from "../src/schema/index.ts";
import * as AccountsService from "../src/services/accounts.ts";
import * as AuditService from "../src/services/audit.ts";
import * as OneTimeTokensService from "../src/services/one-time-tokens.ts";
import * as SessionsService from "../src/services/sessions.ts";
import * as UsersService from "../src/services/users.ts";
import { useTestDatabase } from "../src/testing/index.ts";
import { describeWithPgBouncer, type PgBouncer, startPgBouncer } from "../src/testing/pgbouncer.ts";

const database = useTestDatabase({ config: { poolMax: 4 } });

const PROTECTED = [
  { table: sessions, name: "sessions", owner: sessions.userId },
  { table: accounts, name: "accounts", owner: accounts.userId },
  { table: oneTimeTokens, name: "one_time_tokens", owner: oneTimeTokens.userId },
  { table: auditEvents, name: "audit_events", owner: auditEvents.subjectUserId },
] as const;

/** The SQLSTATE somewhere in an error's cause chain (42501: refused by a row-level security policy). */
function sqlState(error: unknown): string | undefined {
  for (let e: unknown = error; e instanceof Error; e = e.cause) {
    const code = (e as { code?: unknown }).code;
    if (typeof code === "string" && /^[0-9A-Z]{5}$/.test(code)) return code;
  }
  return undefined;
}

/** A user with one row in every protected table. */
async function userWithRows(prefix: string) {
  const user = await UsersService.create({
    email: `${prefix}-${randomBytes(4).toString("hex")}@example.com`,
  });
  await SessionsService.create({ userId: user.id, authMethod: "password" });
  await AccountsService.link({
    userId: user.id,
    provider: "acme",
    providerAccountId: randomBytes(6).toString("hex"),
  });
  await OneTimeTokensService.create({ userId: user.id, purpose: "magic_link", sentTo: user.email ?? "" });
  await AuditService.record({
    action: "sign_in",
    actorType: "user",
    actorUserId: user.id,
    subjectUserId: user.id,
  });
  return user;
}

describe("a user-scoped transaction", () => {
  it("sees only the user's rows in every protected table, and cannot change or add another user's", async () => {
    const alice = await userWithRows("alice");
    const bob = await userWithRows("bob");
    for (const { table, name, owner } of PROTECTED) {
      const seen = await withUser(alice.id, (tx) => tx.select({ owner }).from(table));
      expect(seen.length, name).toBeGreaterThan(0);
      expect(new Set(seen.map((row) => row.owner)), name).toEqual(new Set([alice.id]));
      // An UPDATE and a DELETE that forgot their WHERE: only the user's own rows (here: none changed, since
      // the update sets what is there), never Bob's.
      const touched = await withUser(alice.id, (tx) =>
        tx.execute(
          sql`UPDATE ${table} SET ${sql.identifier(owner.name)} = ${sql.identifier(owner.name)} WHERE ${owner} = ${bob.id}`,
        ),
      );
      expect(touched.rowCount, name).toBe(0);
      const deleted = await withUser(alice.id, (tx) =>
        tx.execute(sql`DELETE FROM ${table} WHERE ${owner} = ${bob.id}`),
      );
      expect(deleted.rowCount, name).toBe(0);
      // Moving one of Alice's rows to Bob is refused by the policy's check.
      const moved = await withUser(alice.id, (tx) =>
        tx.execute(
          sql`UPDATE ${table} SET ${sql.identifier(owner.name)} = ${bob.id} WHERE ${owner} = ${alice.id}`,
        ),
      ).catch((error: unknown) => error);
      expect(sqlState(moved), name).toBe("42501");
      // Outside a scope (the system's): Bob's rows are all still there.
      const all = await db.select({ owner }).from(table).where(sql`${owner} = ${bob.id}`);
      expect(all.length, name).toBeGreaterThan(0);
    }
    // users: writes are scoped (an UPDATE that forgot its WHERE changes the user's own row only, a sign-up
    // cannot happen inside a scope); reads are not (see the migration: the search indexes need that).
    const renamed = await withUser(alice.id, (tx) => tx.execute(sql`UPDATE users SET first_name = 'Scoped'`));
    expect(renamed.rowCount).toBe(1);
    const names = await database.admin<{ id: string; first_name: string | null }>(
      "SELECT id, first_name FROM users WHERE id = ANY($1::uuid[])",
      [[alice.id, bob.id]],
    );
    expect(Object.fromEntries(names.rows.map((row) => [row.id, row.first_name]))).toEqual({
      [alice.id]: "Scoped",
      [bob.id]: null,
    });
    const removed = await withUser(alice.id, (tx) => tx.execute(sql`DELETE FROM users WHERE id = ${bob.id}`));
    expect(removed.rowCount).toBe(0);
    const signUp = await withUser(alice.id, (tx) =>
      tx.execute(sql`INSERT INTO users (id, email) VALUES (${randomUUID()}, 'in-scope@example.com')`),
    ).catch((error: unknown) => error);
    expect(sqlState(signUp)).toBe("42501");

    // The services work in the scope as they do outside it.
    const mine = await withUser(alice.id, (tx) => SessionsService.listForUser(alice.id, { tx }));
    expect(mine).toHaveLength(1);
    const theirs = await withUser(alice.id, (tx) => SessionsService.listForUser(bob.id, { tx }));
    expect(theirs).toEqual([]);
    const bobsSession = (await SessionsService.listForUser(bob.id))[0];
    const notMine = await withUser(alice.id, (tx) =>
      SessionsService.revoke(bobsSession?.id ?? "", { tx }),
    ).catch((error: unknown) => error);
    expect(isDbError(notMine, "NOT_FOUND")).toBe(true);
    expect((await SessionsService.listForUser(bob.id)).map((s) => s.status)).toEqual(["active"]);
  });

  it("leaves nothing on the connection: the next unscoped query sees every user, in one BEGIN round trip", async () => {
    const alice = await userWithRows("carol");
    await userWithRows("dave");
    await disconnectDB();
    initializeDB({ ...database.config, poolMax: 1 });
    try {
      const client = await getPool().connect();
      const sent: string[] = [];
      const query = client.query.bind(client);
      // biome-ignore lint/suspicious/noExplicitAny: counting what goes over the wire
      (client as any).query = (...args: any[]) => {
        const first = args[0];
        sent.push(typeof first === "string" ? first : String(first?.text));
        // biome-ignore lint/suspicious/noExplicitAny: forwarding
        return (query as any)(...args);
      };
      client.release();
      await withUser(alice.id, (tx) => tx.select().from(sessions));
      expect(sent[0]).toMatch(/^BEGIN; SET LOCAL app.user_id = '[0-9a-f-]{36}'$/);
      expect(sent).toHaveLength(3); // BEGIN + scope, the SELECT, COMMIT
      const after = await db.execute<{ scope: string | null }>(
        sql`SELECT current_setting('app.user_id', true) AS scope`,
      );
      expect(after.rows[0]?.scope ?? "").toBe("");
      const every = await db.execute<{ n: number }>(
        sql`SELECT count(DISTINCT user_id)::int AS n FROM sessions`,
      );
      expect(every.rows[0]?.n).toBeGreaterThanOrEqual(2);
      // A scope that failed (rolled back) leaves nothing either.
      await withUser(alice.id, async () => {
        throw new Error("the change failed");
      }).catch(() => {});
      const again = await db.execute<{ scope: string | null }>(
        sql`SELECT current_setting('app.user_id', true) AS scope`,
      );
      expect(again.rows[0]?.scope ?? "").toBe("");
    } finally {
      await disconnectDB();
      initializeDB(database.config);
    }
  });

  it("refuses a scope that is not a UUID, and a scope chosen for a transaction already open", async () => {
    const bad = await withUser("x'); DROP TABLE users; --", async () => 1).catch((error: unknown) => error);
    expect(isDbError(bad, "VALIDATION_FAILED")).toBe(true);
    const nested = await transaction((tx) =>
      transaction(async () => 1, { tx, userId: "0190a1b2-c3d4-7e5f-8a9b-000000000001" }),
    ).catch((error: unknown) => error);
    expect(isDbError(nested, "CONFIG_INVALID")).toBe(true);
  });

  it("maintenance still deletes every user's expired rows (system scope)", async () => {
    const users = [await userWithRows("erin"), await userWithRows("frank")];
    await database.admin(
      "UPDATE sessions SET expires_at = now() - interval '1 day' WHERE user_id = ANY($1::uuid[])",
      [users.map((u) => u.id)],
    );
    await SessionsService.cleanupExpired({});
    const left = await database.admin<{ n: number }>(
      "SELECT count(*)::int AS n FROM sessions WHERE user_id = ANY($1::uuid[])",
      [users.map((u) => u.id)],
    );
    expect(left.rows[0]?.n).toBe(0);
  });
});

describeWithPgBouncer("behind PgBouncer in transaction mode", () => {
  let bouncer: PgBouncer;
  beforeAll(async () => {
    bouncer = await startPgBouncer(database.url, { poolSize: 3 });
  });
  afterAll(async () => {
    await bouncer?.stop();
  });

  it("50 users interleaved over 3 server connections each see only their own rows; unscoped reads see all", async () => {
    const people = [];
    for (let i = 0; i < 50; i++) people.push(await userWithRows(`pool${i}`));
    const url = new URL(bouncer.url);
    url.searchParams.set("pgbouncer", "true");
    await disconnectDB();
    initializeDB(databaseConfigFromUrl(url.toString(), { poolMax: 12 }));
    try {
      const problems: string[] = [];
      for (let round = 0; round < 3; round++) {
        await Promise.all([
          ...people.map(async (person) => {
            const seen = await withUser(person.id, (tx) =>
              tx.select({ owner: sessions.userId }).from(sessions),
            );
            if (seen.length === 0 || seen.some((row) => row.owner !== person.id)) {
              problems.push(`${person.id} saw ${seen.length} rows, not only its own`);
            }
          }),
          // Unscoped statements between them, on server connections the scoped ones used: they see everyone.
          ...Array.from({ length: 10 }, async () => {
            const every = await db.execute<{ n: number }>(
              sql`SELECT count(DISTINCT user_id)::int AS n, current_setting('app.user_id', true) AS scope FROM sessions`,
            );
            if ((every.rows[0]?.n ?? 0) < 50) problems.push(`an unscoped read saw ${every.rows[0]?.n} users`);
          }),
        ]);
      }
      expect(problems).toEqual([]);
    } finally {
      await disconnectDB();
      initializeDB(database.config);
    }
  });
});
