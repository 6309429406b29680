// UsersService against a real PostgreSQL: normalization, uniqueness races, soft delete and its cascade to
// sessions and tokens, keyset pagination and index use on 100,000 users, search, purge and passwords.
import { randomBytes } from "node:crypto";
import { hash } from "@node-rs/argon2";
import { count, eq, sql } from "drizzle-orm";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { db, transaction } from "../../src/connection.ts";
import { type PASSWORD_HASH_POLICY, passwordVerificationsTotal } from "../../src/crypto/passwords.ts";
import type { ErrorCode } from "../../src/errors.ts";
import { dbQueriesTotal } from "../../src/metrics.ts";
import { oneTimeTokens, sessions, users } from "../../src/schema/index.ts";
import * as UsersService from "../../src/services/users.ts";
import {
  manualClock,
  recordingLogger,
  resetClock,
  setClock,
  useTestDatabase,
} from "../../src/testing/index.ts";

useTestDatabase({ config: { poolMax: 20 } });

afterEach(() => {
  resetClock();
});

let sequence = 0;
/** A fresh address on a domain of the test's own, so tests never see each other's users. */
const email = (domain: string, local = "user") => `${local}${++sequence}@${domain}.test`;

async function rejectsWith(promise: Promise<unknown>, code: ErrorCode): Promise<Error> {
  const error = await promise.then(
    () => undefined,
    (caught: unknown) => caught,
  );
  expect(error, `expected ${code}`).toMatchObject({ name: "DbError", code });
  return error as Error;
}

async function userCount(): Promise<number> {
  const [row] = await db.select({ n: count() }).from(users);
  return row?.n ?? -1;
}

async function storedHash(id: string): Promise<string | null> {
  const [row] = await db.select({ hash: users.passwordHash }).from(users).where(eq(users.id, id));
  return row?.hash ?? null;
}

async function usersQueries(): Promise<number> {
  const metric = await dbQueriesTotal.get();
  return metric.values.filter((v) => v.labels.table === "users").reduce((sum, v) => sum + v.value, 0);
}

const DAY = 24 * 60 * 60 * 1000;

describe("create", () => {
  it("normalizes email and phone, uses the clock, stores no hash without a password and hides secrets", async () => {
    const at = new Date("2031-05-06T07:08:09.000Z");
    setClock(() => at);
    const user = await UsersService.create({
      email: "  Ada.Lovelace+Test@Create.TEST ",
      phoneNumber: "+44 20 7183 8750",
      firstName: "  Ada ",
      lastName: "Lovelace",
      avatarUrl: "https://cdn.example.com/ada.png",
      metadata: { plan: "pro", tags: ["a", "b"], nested: { n: 1 } },
    });
    expect(user).toMatchObject({
      email: "ada.lovelace+test@create.test",
      phoneNumber: "+442071838750",
      firstName: "Ada",
      lastName: "Lovelace",
      avatarUrl: "https://cdn.example.com/ada.png",
      metadata: { plan: "pro", tags: ["a", "b"], nested: { n: 1 } },
      deletedAt: null,
      emailVerifiedAt: null,
    });
    expect(user.createdAt).toEqual(at);
    expect(user.id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7/);
    expect(Object.keys(user)).not.toContain("passwordHash");
    expect(Object.keys(user)).not.toContain("searchVector");
    expect(await storedHash(user.id)).toBeNull();
  });

  it("accepts a phone-only user and an email-only user", async () => {
    const phoneOnly = await UsersService.create({ phoneNumber: "+1 (415) 555-2671" });
    expect(phoneOnly).toMatchObject({ email: null, phoneNumber: "+14155552671" });
    const emailOnly = await UsersService.create({ email: email("create") });
    expect(emailOnly.phoneNumber).toBeNull();
  });

  it("raises EMAIL_TAKEN and PHONE_TAKEN for duplicates among active users, whatever their spelling", async () => {
    const address = email("dup");
    await UsersService.create({ email: address, phoneNumber: "+33 6 12 34 56 78" });
    const before = await userCount();
    const emailError = await rejectsWith(
      UsersService.create({ email: ` ${address.toUpperCase()} ` }),
      "EMAIL_TAKEN",
    );
    expect(emailError.message).not.toContain(address);
    await rejectsWith(UsersService.create({ phoneNumber: "+33612345678" }), "PHONE_TAKEN");
    expect(await userCount()).toBe(before);
  });

  it("is race-safe: 20 concurrent sign-ups of one address give exactly one user and 19 EMAIL_TAKEN", async () => {
    const address = email("race");
    const results = await Promise.allSettled(
      Array.from({ length: 20 }, () => UsersService.create({ email: address })),
    );
    const fulfilled = results.filter((r) => r.status === "fulfilled");
    const codes = results.flatMap((r) =>
      r.status === "rejected" ? [(r.reason as { code?: string }).code] : [],
    );
    expect(fulfilled).toHaveLength(1);
    expect(codes).toEqual(Array(19).fill("EMAIL_TAKEN"));
    const rows = await db.select({ id: users.id }).from(users).where(eq(users.email, address));
    expect(rows).toHaveLength(1);
  });

  it("rejects bad input with VALIDATION_FAILED and writes nothing", async () => {
    const ok = email("bad");
    const cases: [string, unknown][] = [
      ["no email and no phone", { firstName: "Nobody" }],
      ["invalid email", { email: "not-an-email" }],
      ["email over 254 characters", { email: `${"a".repeat(64)}@${"b".repeat(190)}.test` }],
      ["phone without +", { phoneNumber: "4155552671" }],
      ["impossible phone", { phoneNumber: "+1415" }],
      ["empty password", { email: ok, password: "" }],
      ["7-character password", { email: ok, password: "1234567" }],
      ["1025-character password", { email: ok, password: "a".repeat(1025) }],
      ["first name over 200", { email: ok, firstName: "x".repeat(201) }],
      ["last name with NUL", { email: ok, lastName: "a\u0000b" }],
      ["avatar not http(s)", { email: ok, avatarUrl: "javascript:alert(1)" }],
      ["avatar over 2048", { email: ok, avatarUrl: `https://example.com/${"a".repeat(2048)}` }],
      ["metadata array", { email: ok, metadata: [1, 2] }],
      ["metadata string", { email: ok, metadata: "{}" }],
      ["metadata null", { email: ok, metadata: null }],
      ["metadata over 16 KiB", { email: ok, metadata: { blob: "x".repeat(16 * 1024) } }],
      ["unknown field", { email: ok, role: "admin" }],
      ["not an object", "ada@example.com"],
    ];
    const before = await userCount();
    for (const [label, payload] of cases) {
      const error = await rejectsWith(
        UsersService.create(payload as UsersService.CreateUserInput),
        "VALIDATION_FAILED",
      );
      expect(error, label).toHaveProperty("details");
    }
    expect(await userCount()).toBe(before);
  });

  it("rejects malformed ids with VALIDATION_FAILED, never a raw PostgreSQL error", async () => {
    await rejectsWith(UsersService.findById("not-a-uuid"), "VALIDATION_FAILED");
    await rejectsWith(UsersService.softDelete("1"), "VALIDATION_FAILED");
    await rejectsWith(UsersService.restore("'; DROP TABLE users; --"), "VALIDATION_FAILED");
    await rejectsWith(UsersService.update({ id: "zzz", patch: { firstName: "x" } }), "VALIDATION_FAILED");
    await rejectsWith(
      UsersService.setPassword({ id: "zzz", password: "long enough password" }),
      "VALIDATION_FAILED",
    );
  });
});

describe("find", () => {
  it("finds by id, email and phone; null when absent; deleted users only with includeDeleted", async () => {
    const user = await UsersService.create({ email: email("find"), phoneNumber: "+81 3-1234-5678" });
    expect((await UsersService.findById(user.id))?.id).toBe(user.id);
    expect((await UsersService.findByEmail(` ${user.email?.toUpperCase()}`))?.id).toBe(user.id);
    expect((await UsersService.findByPhone("+81312345678"))?.id).toBe(user.id);
    expect(await UsersService.findById("0190a0a0-0000-7000-8000-000000000000")).toBeNull();
    expect(await UsersService.findByEmail(email("find"))).toBeNull();
    expect(await UsersService.findByPhone("+14155550100")).toBeNull();

    await UsersService.softDelete(user.id);
    expect(await UsersService.findById(user.id)).toBeNull();
    expect(await UsersService.findByEmail(user.email ?? "")).toBeNull();
    expect(await UsersService.findByPhone("+81312345678")).toBeNull();
    const deleted = await UsersService.findById(user.id, { includeDeleted: true });
    expect(deleted?.deletedAt).toBeInstanceOf(Date);
    expect((await UsersService.findByPhone("+81312345678", { includeDeleted: true }))?.id).toBe(user.id);

    // The address is free again; with includeDeleted the active owner wins over the deleted one.
    const again = await UsersService.create({ email: user.email ?? "" });
    expect((await UsersService.findByEmail(user.email ?? "", { includeDeleted: true }))?.id).toBe(again.id);
  });

  it("rejects a malformed email or phone in lookups", async () => {
    await rejectsWith(UsersService.findByEmail("nope"), "VALIDATION_FAILED");
    await rejectsWith(UsersService.findByPhone("555-1234"), "VALIDATION_FAILED");
  });
});

describe("list", () => {
  const created: Record<string, string> = {};
  beforeAll(async () => {
    for (const local of ["alice", "abc", "axc", "a_c", "bob"]) {
      created[local] = (await UsersService.create({ email: `${local}@wild.test` })).id;
    }
    created.phone = (
      await UsersService.create({ email: "phone@wild.test", phoneNumber: "+49 30 123456" })
    ).id;
  });
  const emailsOf = (page: UsersService.UserPage) => page.users.map((u) => u.email).sort();

  it("matches LIKE patterns with % and _, lower-cases email patterns, and honours \\ escapes", async () => {
    expect(emailsOf(await UsersService.list({ emails: ["A%@WILD.TEST"] }))).toEqual([
      "a_c@wild.test",
      "abc@wild.test",
      "alice@wild.test",
      "axc@wild.test",
    ]);
    expect(emailsOf(await UsersService.list({ emails: ["a_c@wild.test"] }))).toEqual([
      "a_c@wild.test",
      "abc@wild.test",
      "axc@wild.test",
    ]);
    expect(emailsOf(await UsersService.list({ emails: ["a\\_c@wild.test"] }))).toEqual(["a_c@wild.test"]);
    expect(emailsOf(await UsersService.list({ emails: ["bob@%", "alice@%"] }))).toEqual([
      "alice@wild.test",
      "bob@wild.test",
    ]);
    expect(emailsOf(await UsersService.list({ emails: [] }))).toEqual([]);
  });

  it("filters by phone patterns and id patterns, and combines filters with AND", async () => {
    expect(emailsOf(await UsersService.list({ phoneNumbers: ["+4930%"] }))).toEqual(["phone@wild.test"]);
    const alice = created.alice ?? "";
    const bob = created.bob ?? "";
    expect(emailsOf(await UsersService.list({ ids: [alice.toUpperCase(), bob] }))).toEqual([
      "alice@wild.test",
      "bob@wild.test",
    ]);
    expect(emailsOf(await UsersService.list({ ids: [`${alice.slice(0, 30)}%`] }))).toEqual([
      "alice@wild.test",
    ]);
    expect(emailsOf(await UsersService.list({ ids: [alice, bob], emails: ["b%"] }))).toEqual([
      "bob@wild.test",
    ]);
  });

  it("pages through every user exactly once in id order, and the last page has no cursor", async () => {
    const ids: string[] = [];
    for (let i = 0; i < 23; i++) ids.push((await UsersService.create({ email: email("page") })).id);
    const seen: string[] = [];
    const sizes: number[] = [];
    let cursor: string | null = null;
    do {
      const page: UsersService.UserPage = await UsersService.list({
        emails: ["%@page.test"],
        limit: 5,
        cursor,
      });
      sizes.push(page.users.length);
      seen.push(...page.users.map((u) => u.id));
      cursor = page.nextCursor;
    } while (cursor !== null);
    expect(sizes).toEqual([5, 5, 5, 5, 3]);
    expect(seen).toEqual([...ids].sort());
    expect(new Set(seen).size).toBe(23);
    // A page that ends exactly at the last row says so.
    const whole = await UsersService.list({ emails: ["%@page.test"], limit: 23 });
    expect(whole.users).toHaveLength(23);
    expect(whole.nextCursor).toBeNull();
  });

  it("hides deleted users unless includeDeleted", async () => {
    const gone = await UsersService.create({ email: email("listdel") });
    const kept = await UsersService.create({ email: email("listdel") });
    await UsersService.softDelete(gone.id);
    expect((await UsersService.list({ emails: ["%@listdel.test"] })).users.map((u) => u.id)).toEqual([
      kept.id,
    ]);
    const all = await UsersService.list({ emails: ["%@listdel.test"] }, { includeDeleted: true });
    expect(all.users.map((u) => u.id)).toEqual([gone.id, kept.id]);
    const viaPayload = await UsersService.list({ emails: ["%@listdel.test"], includeDeleted: true });
    expect(viaPayload.users).toHaveLength(2);
  });

  it("rejects a bad cursor, limit or pattern with VALIDATION_FAILED", async () => {
    await rejectsWith(UsersService.list({ cursor: "garbage!" }), "VALIDATION_FAILED");
    await rejectsWith(
      UsersService.list({ cursor: Buffer.from("not-a-uuid").toString("base64url") }),
      "VALIDATION_FAILED",
    );
    await rejectsWith(UsersService.list({ limit: 0 }), "VALIDATION_FAILED");
    await rejectsWith(UsersService.list({ limit: 1001 }), "VALIDATION_FAILED");
    await rejectsWith(UsersService.list({ emails: [""] }), "VALIDATION_FAILED");
    await rejectsWith(UsersService.list({ emails: Array(1001).fill("%@x.test") }), "VALIDATION_FAILED");
  });
});

describe("list on 100,000 users", () => {
  beforeAll(async () => {
    // One INSERT ... SELECT: 100,000 users in a couple of seconds. One in 1,000 is on a rare domain (and has a
    // phone number), so the rare pattern is selective and the plan choice is stable.
    await db.execute(sql`
      INSERT INTO users (id, email, phone_number, created_at, updated_at)
      SELECT gen_random_uuid(),
             CASE WHEN g % 1000 = 0 THEN 'rare' || g || '@bulk-rare.test' ELSE 'bulk' || g || '@bulk.test' END,
             CASE WHEN g % 1000 = 0 THEN '+4420' || lpad(g::text, 8, '0') END,
             now(), now()
      FROM generate_series(1, 100000) AS g`);
    await db.execute(sql`ANALYZE users`);
  }, 60_000);
  afterAll(async () => {
    await db.execute(sql`DELETE FROM users WHERE email LIKE '%@bulk%.test'`);
  });

  it("serves a domain filter (one suffix pattern) from users_email_reversed_idx as a range scan", async () => {
    const plan = await UsersService.explainList({ emails: ["%@bulk-rare.test"], analyze: true });
    console.log(`list({ emails: ["%@bulk-rare.test"] }) plan:\n${plan.join("\n")}`);
    expect(plan.join("\n")).toMatch(/(Index Scan using|Bitmap Index Scan on) users_email_reversed_idx/);
    expect(plan.join("\n")).not.toMatch(/Seq Scan/);

    const first = await UsersService.list({ emails: ["%@bulk-rare.test"] });
    expect(first.users).toHaveLength(50);
    const second = await UsersService.list({ emails: ["%@bulk-rare.test"], cursor: first.nextCursor });
    expect(second.users).toHaveLength(50);
    expect(second.nextCursor).toBeNull();
  });

  it("serves several patterns, or patterns with inner wildcards, from users_email_trgm_idx", async () => {
    for (const emails of [["%@bulk-rare.test", "rare1000@%"], ["%@bulk-rare.t_st"], ["%@bülk-rare.test"]]) {
      const plan = await UsersService.explainList({ emails });
      expect(plan.join("\n")).toMatch(/Bitmap Index Scan on users_email_trgm_idx/);
      expect(plan.join("\n")).not.toMatch(/users_email_reversed_idx/);
    }
  });

  it("finds the same users through the reversed index as through the trigram index", async () => {
    const all = async (emails: string[]) =>
      (await UsersService.list({ emails, limit: 1000 })).users.map((u) => u.id);
    const bySuffix = await all(["%@bulk-rare.test"]);
    expect(bySuffix).toHaveLength(100);
    // The same pattern twice is not a lone suffix: it goes through LIKE ANY and the trigram index.
    expect(await all(["%@bulk-rare.test", "%@bulk-rare.test"])).toEqual(bySuffix);
    expect(await all(["%0@bulk-rare.test"])).toEqual(await all(["%0@bulk-rare.test", "%0@bulk-rare.test"]));
    // A suffix most users match: the first 1,000 in id order, both ways.
    const common = await all(["%k.test"]);
    expect(common).toHaveLength(1000);
    expect(await all(["%k.test", "%k.test"])).toEqual(common);
  });

  it("serves a selective phone pattern from users_phone_number_trgm_idx", async () => {
    const plan = await UsersService.explainList({ phoneNumbers: ["+44200005%"] });
    console.log(`list({ phoneNumbers: ["+44200005%"] }) plan:\n${plan.join("\n")}`);
    expect(plan.join("\n")).toMatch(/Bitmap Index Scan on users_phone_number_trgm_idx/);
    const found = await UsersService.list({ phoneNumbers: ["+44200005%"] });
    expect(found.users.map((u) => u.phoneNumber).sort()).toEqual(
      Array.from({ length: 10 }, (_, i) => `+4420000${50 + i}000`),
    );
  });

  it("walks the primary key for a pattern most users match, and pages with the default limit of 50", async () => {
    const plan = await UsersService.explainList({ emails: ["%@bulk.test"] });
    expect(plan.join("\n")).toMatch(/Index Scan using users_pkey/);
    const page = await UsersService.list({ emails: ["%@bulk.test"] });
    expect(page.users).toHaveLength(50);
    expect(page.nextCursor).not.toBeNull();
  });
});

describe("search", () => {
  it("ranks name and email matches above metadata matches and excludes deleted users", async () => {
    const byName = await UsersService.create({
      email: email("srch"),
      firstName: "Zephyrine",
      lastName: "Quill",
    });
    const byEmail = await UsersService.create({ email: "zephyrine@srch.test" });
    const byMetadata = await UsersService.create({
      email: email("srch"),
      metadata: { bio: "a zephyrine admirer" },
    });
    const deleted = await UsersService.create({ email: email("srch"), firstName: "Zephyrine" });
    await UsersService.softDelete(deleted.id);

    const found = (await UsersService.search({ query: "zephyrine" })).map((u) => u.id);
    expect(found).toHaveLength(3);
    expect(found.slice(0, 2).sort()).toEqual([byName.id, byEmail.id].sort());
    expect(found[2]).toBe(byMetadata.id);
    expect(found).not.toContain(deleted.id);

    // Web-search syntax: exclusion and phrases.
    expect((await UsersService.search({ query: "zephyrine -quill" })).map((u) => u.id).sort()).toEqual(
      [byEmail.id, byMetadata.id].sort(),
    );
    expect((await UsersService.search({ query: '"zephyrine quill"' })).map((u) => u.id)).toEqual([byName.id]);
    expect((await UsersService.search({ query: "zephyrine", limit: 1 })).length).toBe(1);
  });

  it("matches word prefixes only in prefix mode, and treats operators as text there", async () => {
    const user = await UsersService.create({
      email: email("pfx"),
      firstName: "Bartholomew",
      lastName: "Xanadu",
    });
    expect(await UsersService.search({ query: "barthol" })).toEqual([]);
    expect((await UsersService.search({ query: "barthol xana", prefix: true })).map((u) => u.id)).toEqual([
      user.id,
    ]);
    // tsquery operators in the input are only word separators: "barthol" and "x" both match as prefixes.
    expect(
      (await UsersService.search({ query: "barthol:* | !x & (", prefix: true })).map((u) => u.id),
    ).toEqual([user.id]);
    expect(await UsersService.search({ query: "barthol zzz", prefix: true })).toEqual([]);
    await rejectsWith(UsersService.search({ query: "   " }), "VALIDATION_FAILED");
  });
});

describe("update", () => {
  it("changes only the given fields, replaces metadata, clears with null and moves updated_at", async () => {
    const user = await UsersService.create({
      email: email("upd"),
      firstName: "Old",
      lastName: "Name",
      metadata: { a: 1, b: 2 },
    });
    await new Promise((resolve) => setTimeout(resolve, 5));
    const updated = await UsersService.update({
      id: user.id,
      patch: { firstName: " New ", lastName: null, metadata: { c: 3 }, lastSignInAt: new Date("2030-01-01") },
    });
    expect(updated).toMatchObject({
      firstName: "New",
      lastName: null,
      metadata: { c: 3 },
      email: user.email,
    });
    expect(updated.lastSignInAt).toEqual(new Date("2030-01-01"));
    expect(updated.updatedAt.getTime()).toBeGreaterThan(user.updatedAt.getTime());
    expect(updated.createdAt).toEqual(user.createdAt);
  });

  it("re-normalizes a new email, clears its verification time, and raises EMAIL_TAKEN on conflict", async () => {
    const verifiedAt = new Date("2030-02-02T00:00:00Z");
    const user = await UsersService.create({ email: email("upd2"), phoneNumber: "+1 415 555 0123" });
    await UsersService.update({
      id: user.id,
      patch: { emailVerifiedAt: verifiedAt, phoneNumberVerifiedAt: verifiedAt },
    });
    const other = await UsersService.create({ email: email("upd2") });

    const same = await UsersService.update({ id: user.id, patch: { email: user.email?.toUpperCase() } });
    expect(same.emailVerifiedAt).toEqual(verifiedAt);
    const moved = await UsersService.update({ id: user.id, patch: { email: " New.Address@UPD2.test " } });
    expect(moved.email).toBe("new.address@upd2.test");
    expect(moved.emailVerifiedAt).toBeNull();
    expect(moved.phoneNumberVerifiedAt).toEqual(verifiedAt);
    const phone = await UsersService.update({ id: user.id, patch: { phoneNumber: "+1 (415) 555-2672" } });
    expect(phone).toMatchObject({ phoneNumber: "+14155552672", phoneNumberVerifiedAt: null });

    await rejectsWith(UsersService.update({ id: other.id, patch: { email: moved.email } }), "EMAIL_TAKEN");
    await rejectsWith(
      UsersService.update({ id: other.id, patch: { phoneNumber: "+14155552672" } }),
      "PHONE_TAKEN",
    );
  });

  it("refuses an empty patch, bad values, and removing both email and phone, changing nothing", async () => {
    const user = await UsersService.create({ email: email("upd3") });
    await rejectsWith(UsersService.update({ id: user.id, patch: {} }), "VALIDATION_FAILED");
    await rejectsWith(
      UsersService.update({ id: user.id, patch: { firstName: undefined } }),
      "VALIDATION_FAILED",
    );
    await rejectsWith(
      UsersService.update({ id: user.id, patch: { metadata: [] as unknown as Record<string, never> } }),
      "VALIDATION_FAILED",
    );
    await rejectsWith(
      UsersService.update({ id: user.id, patch: { avatarUrl: "ftp://x" } }),
      "VALIDATION_FAILED",
    );
    await rejectsWith(UsersService.update({ id: user.id, patch: { email: null } }), "VALIDATION_FAILED");
    expect(await UsersService.findById(user.id)).toEqual(user);
  });

  it("raises NOT_FOUND for a missing or deleted user", async () => {
    await rejectsWith(
      UsersService.update({ id: "0190a0a0-0000-7000-8000-000000000001", patch: { firstName: "x" } }),
      "NOT_FOUND",
    );
    const user = await UsersService.create({ email: email("upd4") });
    await UsersService.softDelete(user.id);
    await rejectsWith(UsersService.update({ id: user.id, patch: { firstName: "x" } }), "NOT_FOUND");
  });
});

describe("softDelete and restore", () => {
  async function addSession(userId: string, status: "active" | "expired" | "revoked" = "active") {
    const [row] = await db
      .insert(sessions)
      .values({
        userId,
        tokenHash: randomBytes(32),
        authMethod: "password",
        status,
        expiresAt: new Date(Date.now() + DAY),
      })
      .returning();
    return row?.id ?? "";
  }
  async function addToken(userId: string, used = false) {
    const [row] = await db
      .insert(oneTimeTokens)
      .values({
        userId,
        purpose: "magic_link",
        tokenHash: randomBytes(32),
        sentTo: "someone@tokens.test",
        expiresAt: new Date(Date.now() + DAY),
        usedAt: used ? new Date() : null,
      })
      .returning();
    return row?.id ?? "";
  }

  it("deletes the user and, at once, revokes every active session and every live token of that user only", async () => {
    const at = new Date("2032-03-04T05:06:07.000Z");
    const user = await UsersService.create({ email: email("del") });
    const bystander = await UsersService.create({ email: email("del") });
    const active = [await addSession(user.id), await addSession(user.id), await addSession(user.id)];
    const expired = await addSession(user.id, "expired");
    const live = [await addToken(user.id), await addToken(user.id)];
    const used = await addToken(user.id, true);
    const otherSession = await addSession(bystander.id);
    const otherToken = await addToken(bystander.id);

    setClock(() => at);
    const deleted = await UsersService.softDelete(user.id);
    expect(deleted.deletedAt).toEqual(at);

    const sessionRows = await db.select().from(sessions);
    const sessionById = new Map(sessionRows.map((s) => [s.id, s]));
    for (const id of active) expect(sessionById.get(id)).toMatchObject({ status: "revoked", revokedAt: at });
    expect(sessionById.get(expired)).toMatchObject({ status: "expired", revokedAt: null });
    expect(sessionById.get(otherSession)).toMatchObject({ status: "active", revokedAt: null });

    const tokenRows = await db.select().from(oneTimeTokens);
    const tokenById = new Map(tokenRows.map((t) => [t.id, t]));
    for (const id of live) expect(tokenById.get(id)?.deletedAt).toEqual(at);
    expect(tokenById.get(used)?.deletedAt).toBeNull();
    expect(tokenById.get(otherToken)?.deletedAt).toBeNull();

    // The address is free for a new sign-up; deleting twice is NOT_FOUND.
    const newcomer = await UsersService.create({ email: user.email ?? "" });
    expect(newcomer.id).not.toBe(user.id);
    await rejectsWith(UsersService.softDelete(user.id), "NOT_FOUND");
    await rejectsWith(UsersService.softDelete("0190a0a0-0000-7000-8000-000000000002"), "NOT_FOUND");
  });

  it("joins the caller's transaction: a rollback undoes the delete and the revocations", async () => {
    const user = await UsersService.create({ email: email("deltx") });
    const session = await addSession(user.id);
    await expect(
      transaction(async (tx) => {
        await UsersService.softDelete(user.id, { tx });
        throw new Error("roll back");
      }),
    ).rejects.toThrow("roll back");
    expect((await UsersService.findById(user.id))?.deletedAt).toBeNull();
    const [row] = await db.select().from(sessions).where(eq(sessions.id, session));
    expect(row?.status).toBe("active");
  });

  it("restores a deleted user, sessions stay revoked; refuses when the email was taken meanwhile", async () => {
    const user = await UsersService.create({ email: email("rst"), phoneNumber: "+1 415 555 0199" });
    const session = await addSession(user.id);
    await UsersService.softDelete(user.id);
    const restored = await UsersService.restore(user.id);
    expect(restored.deletedAt).toBeNull();
    const [row] = await db.select().from(sessions).where(eq(sessions.id, session));
    expect(row?.status).toBe("revoked");
    await rejectsWith(UsersService.restore(user.id), "NOT_FOUND");

    await UsersService.softDelete(user.id);
    const taker = await UsersService.create({ email: user.email ?? "" });
    await rejectsWith(UsersService.restore(user.id), "EMAIL_TAKEN");
    expect((await UsersService.findById(user.id, { includeDeleted: true }))?.deletedAt).not.toBeNull();

    await UsersService.softDelete(taker.id);
    await UsersService.create({ phoneNumber: "+14155550199" });
    await rejectsWith(UsersService.restore(user.id), "PHONE_TAKEN");
  });
});

describe("purge", () => {
  // A clock in the past: users deleted by other tests (at the real time) are never old enough to be purged.
  const start = new Date("2001-01-01T00:00:00.000Z");

  it("hard-deletes users deleted longer ago than the retention, cascading to their sessions", async () => {
    const clock = manualClock(start);
    setClock(clock.now);
    const old1 = await UsersService.create({ email: email("purge") });
    const old2 = await UsersService.create({ email: email("purge") });
    const recent = await UsersService.create({ email: email("purge") });
    const alive = await UsersService.create({ email: email("purge") });
    const [session] = await db
      .insert(sessions)
      .values({ userId: old1.id, tokenHash: randomBytes(32), authMethod: "password", expiresAt: start })
      .returning();
    await UsersService.softDelete(old1.id);
    await UsersService.softDelete(old2.id);
    clock.advance(10 * DAY);
    await UsersService.softDelete(recent.id);
    clock.advance(20 * DAY);

    expect(await UsersService.purge({ retentionMs: 25 * DAY })).toBe(2);
    expect(await UsersService.findById(old1.id, { includeDeleted: true })).toBeNull();
    expect(await UsersService.findById(old2.id, { includeDeleted: true })).toBeNull();
    expect(await UsersService.findById(recent.id, { includeDeleted: true })).not.toBeNull();
    expect(await UsersService.findById(alive.id)).not.toBeNull();
    expect(
      await db
        .select()
        .from(sessions)
        .where(eq(sessions.id, session?.id ?? "")),
    ).toEqual([]);
    expect(await UsersService.purge({ retentionMs: 25 * DAY })).toBe(0);

    clock.advance(20 * DAY);
    expect(await UsersService.purge({ retentionMs: 25 * DAY })).toBe(1);
  });

  it("works in bounded batches", async () => {
    const clock = manualClock(start);
    setClock(clock.now);
    for (let i = 0; i < 5; i++) {
      const user = await UsersService.create({ email: email("batch") });
      await UsersService.softDelete(user.id);
    }
    clock.advance(DAY);
    expect(await UsersService.purge({ retentionMs: 0, batchSize: 2, maxBatches: 2 })).toBe(4);
    expect(await UsersService.purge({ retentionMs: 0, batchSize: 2, maxBatches: 2 })).toBe(1);
    await rejectsWith(UsersService.purge({ retentionMs: -1 }), "VALIDATION_FAILED");
  });
});

describe("passwords", () => {
  function phcParams(stored: string | null) {
    const match = /^\$(argon2id|argon2i|argon2d)\$v=(\d+)\$m=(\d+),t=(\d+),p=(\d+)\$/.exec(stored ?? "");
    expect(match, `not an argon2 PHC string: ${stored?.slice(0, 30)}`).not.toBeNull();
    const [, variant, version, m, t, p] = match ?? [];
    return { variant, version: Number(version), m: Number(m), t: Number(t), p: Number(p) };
  }

  it("stores an argon2id hash with m >= 19456 and t >= 2, and verifies the password", async () => {
    const user = await UsersService.create({ email: email("pw"), password: "correct horse battery staple" });
    const params = phcParams(await storedHash(user.id));
    expect(params.variant).toBe("argon2id");
    expect(params.version).toBe(19);
    expect(params.m).toBeGreaterThanOrEqual(19_456);
    expect(params.t).toBeGreaterThanOrEqual(2);
    const verified = await UsersService.verifyPassword({
      email: ` ${user.email?.toUpperCase()}`,
      password: "correct horse battery staple",
    });
    expect(verified).toEqual(user);
    expect(Object.keys(verified)).not.toContain("passwordHash");
  });

  it("verifies 64-character and non-ASCII passwords, counts code points, and never truncates", async () => {
    const user = await UsersService.create({ email: email("pw2") });
    const cases = [`${"x".repeat(63)}!`, "pässwörd-ñ-日本語-🔑", "🔑".repeat(8)];
    for (const password of cases) {
      await UsersService.setPassword({ id: user.id, password });
      expect((await UsersService.verifyPassword({ email: user.email ?? "", password })).id).toBe(user.id);
    }
    // Seven emoji are 14 UTF-16 units but 7 characters: too short.
    await rejectsWith(
      UsersService.setPassword({ id: user.id, password: "🔑".repeat(7) }),
      "VALIDATION_FAILED",
    );
    // 1024 emoji (2048 UTF-16 units) are 1024 characters: allowed. Differing only at the end still fails.
    const long = `${"🔑".repeat(1023)}A`;
    await UsersService.setPassword({ id: user.id, password: long });
    expect((await UsersService.verifyPassword({ email: user.email ?? "", password: long })).id).toBe(user.id);
    await rejectsWith(
      UsersService.verifyPassword({ email: user.email ?? "", password: `${"🔑".repeat(1023)}B` }),
      "INVALID_CREDENTIALS",
    );
  });

  it("normalizes with NFKC: composed and decomposed é are the same password", async () => {
    const composed = "caf\u00e9-au-lait";
    const decomposed = "cafe\u0301-au-lait";
    expect(composed).not.toBe(decomposed);
    const user = await UsersService.create({ email: email("nfkc"), password: composed });
    expect((await UsersService.verifyPassword({ email: user.email ?? "", password: decomposed })).id).toBe(
      user.id,
    );
    // Compatibility forms too: full-width letters are their ASCII counterparts.
    await UsersService.setPassword({ id: user.id, password: "ｆｕｌｌｗｉｄｔｈ" });
    expect((await UsersService.verifyPassword({ email: user.email ?? "", password: "fullwidth" })).id).toBe(
      user.id,
    );
  });

  it("rehashes a weaker stored hash after a successful verify, and leaves a current one alone", async () => {
    const user = await UsersService.create({ email: email("rehash") });
    const password = "an old weak hash";
    for (const weak of [
      await hash(password, { memoryCost: 4096, timeCost: 1, parallelism: 1 }),
      await hash(password, { algorithm: 1 as typeof PASSWORD_HASH_POLICY.algorithm }),
    ]) {
      await db.update(users).set({ passwordHash: weak }).where(eq(users.id, user.id));
      await rejectsWith(
        UsersService.verifyPassword({ email: user.email ?? "", password: "wrong!!!" }),
        "INVALID_CREDENTIALS",
      );
      expect(await storedHash(user.id)).toBe(weak);
      await UsersService.verifyPassword({ email: user.email ?? "", password });
      const rehashed = await storedHash(user.id);
      expect(rehashed).not.toBe(weak);
      expect(phcParams(rehashed)).toMatchObject({ variant: "argon2id", version: 19, m: 19_456, t: 2, p: 1 });
      await UsersService.verifyPassword({ email: user.email ?? "", password });
      expect(await storedHash(user.id)).toBe(rehashed);
    }
  });

  it("gives one identical INVALID_CREDENTIALS for unknown email, wrong password, no password, deleted user", async () => {
    const withPassword = await UsersService.create({ email: email("cred"), password: "the right one" });
    const withoutPassword = await UsersService.create({ email: email("cred") });
    const deleted = await UsersService.create({ email: email("cred"), password: "the right one" });
    await UsersService.softDelete(deleted.id);
    const errors = [
      await rejectsWith(
        UsersService.verifyPassword({ email: email("cred"), password: "the right one" }),
        "INVALID_CREDENTIALS",
      ),
      await rejectsWith(
        UsersService.verifyPassword({ email: withPassword.email ?? "", password: "the wrong one" }),
        "INVALID_CREDENTIALS",
      ),
      await rejectsWith(
        UsersService.verifyPassword({ email: withoutPassword.email ?? "", password: "the right one" }),
        "INVALID_CREDENTIALS",
      ),
      await rejectsWith(
        UsersService.verifyPassword({ email: deleted.email ?? "", password: "the right one" }),
        "INVALID_CREDENTIALS",
      ),
    ];
    const shapes = errors.map((e) => JSON.stringify({ ...e, message: e.message, cause: e.cause }));
    expect(new Set(shapes).size).toBe(1);
    await rejectsWith(UsersService.verifyPassword({ email: "nope", password: "x" }), "VALIDATION_FAILED");
    await rejectsWith(
      UsersService.verifyPassword({ email: withPassword.email ?? "", password: "" }),
      "VALIDATION_FAILED",
    );
  });

  it("spends exactly one argon2 verification on every failed sign-in, whether or not the account exists", async () => {
    // Counted, not timed: the answer time is flat because every path runs one argon2 verification with the
    // same parameters (a wall-clock comparison would be flaky on a loaded machine; timings are benchmarked).
    const counts = async () => {
      const metric = await passwordVerificationsTotal.get();
      const of = (kind: string) => metric.values.find((v) => v.labels.kind === kind)?.value ?? 0;
      return { stored: of("stored"), dummy: of("dummy") };
    };
    const withPassword = await UsersService.create({ email: email("timing"), password: "timing password" });
    const withoutPassword = await UsersService.create({ email: email("timing") });
    const deleted = await UsersService.create({ email: email("timing"), password: "timing password" });
    await UsersService.softDelete(deleted.id);
    const attempts: [string, string, "stored" | "dummy"][] = [
      [withPassword.email ?? "", "nope nope", "stored"],
      [email("timing"), "nope nope", "dummy"],
      [withoutPassword.email ?? "", "nope nope", "dummy"],
      [deleted.email ?? "", "timing password", "dummy"],
    ];
    for (const [address, password, kind] of attempts) {
      const before = await counts();
      await rejectsWith(UsersService.verifyPassword({ email: address, password }), "INVALID_CREDENTIALS");
      const after = await counts();
      expect({ stored: after.stored - before.stored, dummy: after.dummy - before.dummy }).toEqual(
        kind === "stored" ? { stored: 1, dummy: 0 } : { stored: 0, dummy: 1 },
      );
    }
  });

  it("setPassword raises NOT_FOUND for a missing or deleted user and rejects bad passwords", async () => {
    await rejectsWith(
      UsersService.setPassword({ id: "0190a0a0-0000-7000-8000-000000000003", password: "long enough" }),
      "NOT_FOUND",
    );
    const user = await UsersService.create({ email: email("setpw") });
    await rejectsWith(UsersService.setPassword({ id: user.id, password: "" }), "VALIDATION_FAILED");
    await rejectsWith(UsersService.setPassword({ id: user.id, password: "1234567" }), "VALIDATION_FAILED");
    expect(await storedHash(user.id)).toBeNull();
    await UsersService.softDelete(user.id);
    await rejectsWith(UsersService.setPassword({ id: user.id, password: "long enough" }), "NOT_FOUND");
  });
});

describe("logging and metrics", () => {
  it("audits state changes with ids, never passwords or hashes", async () => {
    const { logger, lines } = recordingLogger();
    const password = "s3cret-never-logged";
    const user = await UsersService.create({ email: email("log"), password }, logger);
    await UsersService.verifyPassword({ email: user.email ?? "", password }, logger);
    await UsersService.verifyPassword({ email: user.email ?? "", password: "wrong password" }, logger).catch(
      () => undefined,
    );
    await UsersService.setPassword({ id: user.id, password: `${password}-2` }, logger);
    await UsersService.update({ id: user.id, patch: { firstName: "Logged" } }, logger);
    await UsersService.softDelete(user.id, logger);
    const audits = lines.filter((line) => line.level === "audit");
    expect(audits.map((line) => line.message)).toEqual([
      "user created",
      "password set",
      "user updated",
      // softDelete runs the sessions service's revoke in its transaction, which audits itself (the tokens
      // service audits only when it retired something, and this user has no tokens).
      "user sessions revoked",
      "user soft-deleted",
    ]);
    expect(audits.every((line) => line.fields.userId === user.id)).toBe(true);
    expect(lines.find((line) => line.level === "warn")?.fields).toMatchObject({
      code: "INVALID_CREDENTIALS",
    });
    const everything = JSON.stringify(lines);
    expect(everything).not.toContain(password);
    expect(everything).not.toContain("$argon2");
  });

  it('every service call counts in db_queries_total{table="users"}', async () => {
    const user = await UsersService.create({ email: email("metrics"), password: "metrics password" });
    const calls: [string, () => Promise<unknown>][] = [
      ["create", () => UsersService.create({ email: email("metrics") })],
      ["findById", () => UsersService.findById(user.id)],
      ["findByEmail", () => UsersService.findByEmail(user.email ?? "")],
      ["findByPhone", () => UsersService.findByPhone("+14155550111")],
      ["list", () => UsersService.list({ emails: ["%@metrics.test"] })],
      ["explainList", () => UsersService.explainList({ emails: ["%@metrics.test"] })],
      ["search", () => UsersService.search({ query: "metrics" })],
      ["update", () => UsersService.update({ id: user.id, patch: { firstName: "M" } })],
      ["setPassword", () => UsersService.setPassword({ id: user.id, password: "metrics password" })],
      [
        "verifyPassword",
        () => UsersService.verifyPassword({ email: user.email ?? "", password: "metrics password" }),
      ],
      ["softDelete", () => UsersService.softDelete(user.id)],
      ["restore", () => UsersService.restore(user.id)],
      ["purge", () => UsersService.purge({ retentionMs: 365 * DAY })],
    ];
    for (const [name, call] of calls) {
      const before = await usersQueries();
      await call();
      expect(await usersQueries(), name).toBeGreaterThan(before);
    }
  });
});
