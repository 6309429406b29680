// AuditService: writers never wait for each other and the chain holds under concurrent writers and chainers,
// a rolled-back change leaves no event, editing, deleting or inserting a row in SQL is found at that row, and
// details never carry a secret.
import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { transaction } from "../../src/connection.ts";
import { generateSecret } from "../../src/crypto/secrets.ts";
import { isDbError } from "../../src/errors.ts";
import * as AuditService from "../../src/services/audit.ts";
import * as SessionsService from "../../src/services/sessions.ts";
import * as UsersService from "../../src/services/users.ts";
import { useTestDatabase } from "../../src/testing/index.ts";

const database = useTestDatabase({ config: { poolMax: 20 } });

/** The row as chained (seq and id). */
async function chained(id: string): Promise<{ id: string; seq: number }> {
  const { rows } = await database.admin<{ seq: string }>("SELECT seq FROM audit_events WHERE id = $1", [id]);
  const seq = rows[0]?.seq;
  if (!seq) throw new Error(`${id} is not chained`);
  return { id, seq: Number(seq) };
}

const userId = () => "0190a1b2-c3d4-7e5f-8a9b-" + randomBytes(6).toString("hex");
const event = (details: Record<string, unknown> = {}) => ({
  action: "sign_in" as const,
  actorType: "user" as const,
  actorUserId: userId(),
  subjectUserId: userId(),
  ipAddress: "203.0.113.7",
  userAgent: "test",
  requestId: randomBytes(8).toString("hex"),
  details,
});

describe("the audit chain", () => {
  it("50 concurrent writers and 3 concurrent chainers leave one valid chain, in seq order without gaps", async () => {
    await Promise.all([
      ...Array.from({ length: 50 }, (_, i) => AuditService.record(event({ n: i, nested: { b: 1, a: [i] } }))),
      AuditService.chain({ batchSize: 4 }),
      AuditService.chain({ batchSize: 4 }),
    ]);
    await Promise.all([AuditService.chain({ batchSize: 7 }), AuditService.chain(), AuditService.chain()]);
    const result = await AuditService.verify({ batchSize: 7 });
    expect(result).toMatchObject({ ok: true, pending: 0, oldestPendingAt: null });
    expect(result.checked).toBeGreaterThanOrEqual(50);
    const seqs = await database.admin<{ n: number; min: number; max: number }>(
      "SELECT count(*)::int AS n, min(seq)::int AS min, max(seq)::int AS max FROM audit_events",
    );
    const row = seqs.rows[0];
    expect(row && row.max - row.min + 1).toBe(row?.n);
  });

  it("a writer never waits for another's uncommitted event; the chainer links only committed ones", async () => {
    let release: () => void = () => {};
    const held = new Promise<void>((resolve) => {
      release = resolve;
    });
    let inside: (value: unknown) => void = () => {};
    const recorded = new Promise((resolve) => {
      inside = resolve;
    });
    const slow = transaction(async (tx) => {
      inside(await AuditService.record(event({ slow: true }), { tx }));
      await held;
    });
    const first = (await recorded) as { id: string };
    // Another writer and a chainer finish while that transaction is still open.
    const quick = await AuditService.record(event({ quick: true }));
    await AuditService.chain();
    const state = await database.admin<{ id: string; seq: string | null }>(
      "SELECT id, seq FROM audit_events WHERE id = ANY($1::uuid[])",
      [[first.id, quick.id]],
    );
    expect(state.rows).toEqual([{ id: quick.id, seq: expect.any(String) }]);
    release();
    await slow;
    expect((await AuditService.verify()).pending).toBeGreaterThanOrEqual(1);
    await AuditService.chain();
    const after = await database.admin<{ id: string; seq: string }>(
      "SELECT id, seq FROM audit_events WHERE id = ANY($1::uuid[]) ORDER BY seq",
      [[first.id, quick.id]],
    );
    // Chained in the order they committed: the older id after the newer one.
    expect(after.rows.map((row) => row.id)).toEqual([quick.id, first.id]);
    expect(await AuditService.verify()).toMatchObject({ ok: true, pending: 0 });
  });

  it("a revocation records its event in the same statement, and only when a session was revoked", async () => {
    const user = await UsersService.create({ email: `revoke-${randomBytes(4).toString("hex")}@example.com` });
    const { session } = await SessionsService.create({ userId: user.id, authMethod: "password" });
    const signOut = {
      ...event({ sessionId: session.id }),
      action: "sign_out" as const,
      subjectUserId: user.id,
    };
    const count = async () =>
      (
        await database.admin<{ n: number }>(
          "SELECT count(*)::int AS n FROM audit_events WHERE subject_user_id = $1 AND action = 'sign_out'",
          [user.id],
        )
      ).rows[0]?.n;
    const revoked = await SessionsService.revoke(session.id, { audit: signOut, activeOnly: true });
    expect(revoked.status).toBe("revoked");
    expect(await count()).toBe(1);
    // Already ended: NOT_FOUND, and no second event.
    const again = await SessionsService.revoke(session.id, { audit: signOut, activeOnly: true }).catch(
      (error: unknown) => error,
    );
    expect(isDbError(again, "NOT_FOUND")).toBe(true);
    expect(await count()).toBe(1);
    // A secret in the event refuses the whole call before anything is written.
    const { session: other } = await SessionsService.create({ userId: user.id, authMethod: "password" });
    const refused = await SessionsService.revoke(other.id, {
      audit: { ...signOut, details: { token: "x" } },
    }).catch((error: unknown) => error);
    expect(isDbError(refused, "VALIDATION_FAILED")).toBe(true);
    expect((await SessionsService.listForUser(user.id)).map((s) => s.id)).toEqual([other.id]);
  });

  it("an event recorded in a transaction that rolls back leaves nothing", async () => {
    const before = await database.admin<{ n: number }>("SELECT count(*)::int AS n FROM audit_events");
    await transaction(async (tx) => {
      await AuditService.record(event({ rolled: true }), { tx });
      throw new Error("the change failed");
    }).catch(() => {});
    const after = await database.admin<{ n: number }>("SELECT count(*)::int AS n FROM audit_events");
    expect(after.rows[0]?.n).toBe(before.rows[0]?.n);
    expect((await AuditService.verify()).ok).toBe(true);
  });

  it("an edited, deleted or inserted row breaks verification at that row", async () => {
    const rows = [];
    for (let i = 0; i < 5; i++) rows.push(await AuditService.record(event({ step: i })));
    await AuditService.chain();
    expect((await AuditService.verify()).ok).toBe(true);
    const [, second, third] = await Promise.all(rows.map((row) => chained(row.id)));
    if (!second || !third) throw new Error("rows missing");

    // Edited content: the row itself no longer matches its hash.
    await database.admin("UPDATE audit_events SET details = '{\"step\": 99}' WHERE id = $1", [second.id]);
    expect((await AuditService.verify()).broken).toEqual({
      id: second.id,
      seq: second.seq,
      reason: "content changed",
    });
    await database.admin("UPDATE audit_events SET details = $2 WHERE id = $1", [
      second.id,
      JSON.stringify({ step: 1 }),
    ]);
    expect((await AuditService.verify()).ok).toBe(true);

    // A deleted row: the next one's previous hash no longer follows.
    const saved = await database.admin<{ row: string }>(
      "SELECT row_to_json(a)::text AS row FROM audit_events a WHERE id = $1",
      [second.id],
    );
    await database.admin("DELETE FROM audit_events WHERE id = $1", [second.id]);
    expect((await AuditService.verify()).broken).toEqual({
      id: third.id,
      seq: third.seq,
      reason: "previous row missing or changed",
    });
    // Put back exactly as it was (the other tests of this file verify the whole chain, in any order).
    await database.admin(
      "INSERT INTO audit_events SELECT * FROM json_populate_record(NULL::audit_events, $1::json)",
      [saved.rows[0]?.row],
    );
    expect((await AuditService.verify()).ok).toBe(true);
  });

  it("rows deleted at either end of the chain show: the newest against the head, the oldest against the pruned point", async () => {
    const rows = [];
    for (let i = 0; i < 3; i++) rows.push(await AuditService.record(event({ end: i })));
    await AuditService.chain();
    const newest = await chained((rows[2] as { id: string }).id);
    if (!newest) throw new Error("rows missing");
    const saved = await database.admin<{ row: string }>(
      "SELECT row_to_json(a)::text AS row FROM audit_events a WHERE id = $1",
      [newest.id],
    );
    await database.admin("DELETE FROM audit_events WHERE id = $1", [newest.id]);
    expect((await AuditService.verify()).broken).toEqual({ seq: newest.seq, reason: "newest rows missing" });
    await database.admin(
      "INSERT INTO audit_events SELECT * FROM json_populate_record(NULL::audit_events, $1::json)",
      [saved.rows[0]?.row],
    );
    expect((await AuditService.verify()).ok).toBe(true);

    const oldest = await database.admin<{ id: string; seq: string; row: string }>(
      "SELECT id, seq, row_to_json(a)::text AS row FROM audit_events a ORDER BY seq LIMIT 2",
    );
    const [first, next] = oldest.rows;
    if (!first || !next) throw new Error("rows missing");
    await database.admin("DELETE FROM audit_events WHERE id = $1", [first.id]);
    expect((await AuditService.verify()).broken).toEqual({
      id: next.id,
      seq: Number(next.seq),
      reason: "previous row missing or changed",
    });
    await database.admin(
      "INSERT INTO audit_events SELECT * FROM json_populate_record(NULL::audit_events, $1::json)",
      [first.row],
    );
    expect((await AuditService.verify()).ok).toBe(true);
  });

  it("retention deletes the oldest prefix in batches and the rest stays verifiable, with appends running", async () => {
    for (let i = 0; i < 12; i++) await AuditService.record(event({ retention: i }));
    await AuditService.chain();
    const cutoff = await database.admin<{ at: Date; seq: string }>(
      "SELECT occurred_at AS at, seq FROM audit_events ORDER BY seq DESC OFFSET 4 LIMIT 1",
    );
    const keepFrom = cutoff.rows[0];
    if (!keepFrom) throw new Error("rows missing");
    const [deleted] = await Promise.all([
      AuditService.prune({ before: keepFrom.at, batchSize: 3 }),
      ...Array.from({ length: 10 }, (_, i) => AuditService.record(event({ during: i }))),
      AuditService.chain({ batchSize: 2 }),
    ]);
    await AuditService.chain();
    expect(deleted).toBeGreaterThan(0);
    const left = await database.admin<{ min: string }>("SELECT min(seq) AS min FROM audit_events");
    expect(Number(left.rows[0]?.min)).toBeLessThanOrEqual(Number(keepFrom.seq));
    const older = await database.admin<{ n: number }>(
      "SELECT count(*)::int AS n FROM audit_events WHERE seq < (SELECT min(seq) FROM audit_events WHERE occurred_at >= $1)",
      [keepFrom.at],
    );
    expect(older.rows[0]?.n).toBe(0);
    expect(await AuditService.verify({ batchSize: 4 })).toMatchObject({ ok: true });
    // Nothing older than the cutoff is left: a second round deletes nothing.
    expect(await AuditService.prune({ before: keepFrom.at })).toBe(0);
  });

  it("lists newest first, by subject or by anyone involved, by action and time, one keyset page at a time", async () => {
    const subject = userId();
    const actor = userId();
    const written = [];
    for (let i = 0; i < 5; i++) {
      written.push(
        await AuditService.record({
          ...event({ page: i }),
          subjectUserId: subject,
          actorUserId: i === 4 ? actor : subject,
          action: i % 2 === 0 ? "sign_in" : "sign_out",
        }),
      );
    }
    const seen: string[] = [];
    let before: string | undefined;
    for (;;) {
      const page = await AuditService.list({
        subjectUserId: subject,
        limit: 2,
        ...(before ? { before } : {}),
      });
      seen.push(...page.events.map((e) => e.id));
      expect(page.events.every((e) => !("hash" in e) && !("prevHash" in e))).toBe(true);
      if (page.nextCursor === null) break;
      before = page.nextCursor;
    }
    expect(seen).toEqual(written.map((e) => e.id).reverse());
    const byActor = await AuditService.list({ userId: actor });
    expect(byActor.events.map((e) => e.id)).toEqual([written[4]?.id]);
    const signOuts = await AuditService.list({ subjectUserId: subject, actions: ["sign_out"] });
    expect(signOuts.events.map((e) => e.action)).toEqual(["sign_out", "sign_out"]);
    const none = await AuditService.list({ subjectUserId: subject, from: new Date(Date.now() + 60_000) });
    expect(none.events).toEqual([]);
  });

  it("refuses details that name or carry a secret, and unknown actions", async () => {
    for (const details of [
      { password: "hunter2" },
      { refreshToken: "x" },
      { nested: { apiKey: "x" } },
      { link: generateSecret() },
      { list: ["a", generateSecret()] },
      // Lone surrogates: PostgreSQL would store U+FFFD, and the stored row would no longer match its hash.
      { text: "half \ud83d" },
      { ["key \udc00"]: 1 },
      { nested: { nul: "a\u0000b" } },
    ]) {
      const refused = await AuditService.record(event(details)).catch((error: unknown) => error);
      expect(isDbError(refused, "VALIDATION_FAILED"), JSON.stringify(details)).toBe(true);
    }
    const agent = await AuditService.record({ ...event(), userAgent: "Mozilla \ud83d" }).catch(
      (e: unknown) => e,
    );
    expect(isDbError(agent, "VALIDATION_FAILED")).toBe(true);
    const unknown = await AuditService.record({ ...event(), action: "launch" as never }).catch(
      (error: unknown) => error,
    );
    expect(isDbError(unknown, "VALIDATION_FAILED")).toBe(true);
    // Ids are facts, not secrets.
    const kept = await AuditService.record(event({ tokenId: userId(), sessionId: userId() }));
    expect(kept.details).toHaveProperty("tokenId");
  });
});
