// AuditService: the trail's chain holds under concurrent writers, a rolled-back change leaves no event,
// editing, deleting or inserting a row in SQL is found at that row, and details never carry a secret.
import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { transaction } from "../../src/connection.ts";
import { generateSecret } from "../../src/crypto/secrets.ts";
import { isDbError } from "../../src/errors.ts";
import * as AuditService from "../../src/services/audit.ts";
import { useTestDatabase } from "../../src/testing/index.ts";

const database = useTestDatabase({ config: { poolMax: 20 } });

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
  it("50 concurrent writers leave one valid chain, in seq order without gaps", async () => {
    await Promise.all(
      Array.from({ length: 50 }, (_, i) => AuditService.record(event({ n: i, nested: { b: 1, a: [i] } }))),
    );
    const result = await AuditService.verify({ batchSize: 7 });
    expect(result).toMatchObject({ ok: true });
    expect(result.checked).toBeGreaterThanOrEqual(50);
    const seqs = await database.admin<{ n: number; min: number; max: number }>(
      "SELECT count(*)::int AS n, min(seq)::int AS min, max(seq)::int AS max FROM audit_events",
    );
    const row = seqs.rows[0];
    expect(row && row.max - row.min + 1).toBe(row?.n);
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
    expect((await AuditService.verify()).ok).toBe(true);
    const [, second, third] = rows;
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

  it("refuses details that name or carry a secret, and unknown actions", async () => {
    for (const details of [
      { password: "hunter2" },
      { refreshToken: "x" },
      { nested: { apiKey: "x" } },
      { link: generateSecret() },
      { list: ["a", generateSecret()] },
    ]) {
      const refused = await AuditService.record(event(details)).catch((error: unknown) => error);
      expect(isDbError(refused, "VALIDATION_FAILED"), JSON.stringify(details)).toBe(true);
    }
    const unknown = await AuditService.record({ ...event(), action: "launch" as never }).catch(
      (error: unknown) => error,
    );
    expect(isDbError(unknown, "VALIDATION_FAILED")).toBe(true);
    // Ids are facts, not secrets.
    const kept = await AuditService.record(event({ tokenId: userId(), sessionId: userId() }));
    expect(kept.details).toHaveProperty("tokenId");
  });
});
