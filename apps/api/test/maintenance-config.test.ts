import { AuditService, CacheService, noopLogger, withAdvisoryLock } from "@repo/db";
import { resetClock, setClock, useTestDatabase } from "@repo/db/testing";
import { describe, expect, it } from "vitest";
import { allowedOrigins, ConfigError, loadApiConfig } from "../src/config.ts";
import { maintenanceRound } from "../src/maintenance.ts";

const database = useTestDatabase();

describe("maintenance", () => {
  it("deletes expired rows, and skips the round while another process holds the lock", async () => {
    await CacheService.set("test", "short", 1, { ttlSeconds: 0.001 });
    await new Promise((resolve) => setTimeout(resolve, 20));
    const skipped = await withAdvisoryLock("maintenance", () => maintenanceRound(noopLogger));
    expect(skipped).toEqual({ ran: false });
    const { rows: before } = await database.admin("SELECT count(*)::int AS n FROM cache WHERE key = 'short'");
    expect(before[0]?.n).toBe(1);
    const round = await maintenanceRound(noopLogger);
    expect(round).toMatchObject({ ran: true, cache: 1 });
    const { rows: after } = await database.admin("SELECT count(*)::int AS n FROM cache WHERE key = 'short'");
    expect(after[0]?.n).toBe(0);
  });

  it("deletes audit events past AUDIT_RETENTION_DAYS and leaves the rest verifiable; 0 keeps them", async () => {
    const event = { action: "sign_out", actorType: "system" } as const;
    try {
      setClock(() => new Date(Date.now() - 400 * 86_400_000));
      for (let i = 0; i < 3; i++) await AuditService.record(event);
    } finally {
      resetClock();
    }
    for (let i = 0; i < 2; i++) await AuditService.record(event);
    const count = async () =>
      (await database.admin<{ n: number }>("SELECT count(*)::int AS n FROM audit_events")).rows[0]?.n;
    const before = await count();
    expect(await maintenanceRound(noopLogger, { auditRetentionDays: 0 })).toMatchObject({ auditEvents: 0 });
    expect(await maintenanceRound(noopLogger, { auditRetentionDays: 365 })).toMatchObject({
      ran: true,
      auditEvents: 3,
    });
    expect(await count()).toBe((before ?? 0) - 3);
    expect(await AuditService.verify()).toMatchObject({ ok: true });
  });

  it("runs one round per interval across processes: a round just done elsewhere is not repeated", async () => {
    expect(await maintenanceRound(noopLogger, { minGapMs: 0 })).toMatchObject({ ran: true });
    // Another process's timer firing moments later finds the stamp and skips.
    expect(await maintenanceRound(noopLogger, { minGapMs: 60_000 })).toEqual({ ran: false });
    expect(await maintenanceRound(noopLogger, { minGapMs: 0 })).toMatchObject({ ran: true });
  });
});

describe("config", () => {
  it("has safe defaults and derives allowed origins from APP_URL", () => {
    const config = loadApiConfig({ APP_URL: "https://app.example.com/base" });
    expect(allowedOrigins(config)).toEqual(["https://app.example.com"]);
    expect(config.ADMIN_API_KEY).toBeUndefined();
    expect(config.BODY_LIMIT_BYTES).toBe(65536);
    expect(config.TRUST_PROXY).toBe(0);
    const listed = loadApiConfig({ ALLOWED_ORIGINS: "https://a.example, https://b.example:8443/x" });
    expect(allowedOrigins(listed)).toEqual(["https://a.example", "https://b.example:8443"]);
  });

  it("names every bad variable", () => {
    try {
      loadApiConfig({ ADMIN_API_KEY: "short", SMTP_URL: "http://mail", APP_URL: "nope", TRUST_PROXY: "x" });
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(ConfigError);
      expect(Object.keys((error as ConfigError).problems).sort()).toEqual(
        ["ADMIN_API_KEY", "APP_URL", "SMTP_URL", "TRUST_PROXY"].sort(),
      );
    }
  });
});
