// Fault drill: a crash (immediate shutdown) empties the UNLOGGED cache table and nothing else; a clean
// (fast) shutdown keeps it. Runs on a durable embedded server of its own, stopped in afterAll.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { databaseConfigFromUrl } from "../../src/config.ts";
import { disconnectDB, initializeDB } from "../../src/connection.ts";
import * as CacheService from "../../src/services/cache.ts";
import * as OneTimeTokensService from "../../src/services/one-time-tokens.ts";
import * as SessionsService from "../../src/services/sessions.ts";
import * as UsersService from "../../src/services/users.ts";
import { count, type DrillServer, query, startDrillServer } from "./helpers.ts";

let drill: DrillServer;

beforeAll(async () => {
  drill = await startDrillServer();
});

afterAll(async () => {
  await disconnectDB();
  await drill?.close();
});

interface Written {
  userIds: string[];
  sessionTokens: string[];
  resetTokens: string[];
  cacheKeys: string[];
}

/** Writes users, sessions, reset tokens and cache entries through the services. */
async function writeEverything(label: string, n: number): Promise<Written> {
  initializeDB(databaseConfigFromUrl(drill.server.url, { applicationName: `drill-crash-${label}` }));
  const written: Written = { userIds: [], sessionTokens: [], resetTokens: [], cacheKeys: [] };
  try {
    for (let i = 0; i < n; i++) {
      const email = `${label}-${i}@example.com`;
      const user = await UsersService.create({ email });
      written.userIds.push(user.id);
      const { token } = await SessionsService.create({ userId: user.id, authMethod: "password" });
      written.sessionTokens.push(token);
      const reset = await OneTimeTokensService.create({
        userId: user.id,
        purpose: "password_reset",
        sentTo: email,
      });
      written.resetTokens.push(reset.token);
      const key = `${label}-${i}`;
      await CacheService.set("drill", key, { i, label });
      written.cacheKeys.push(key);
    }
  } finally {
    await disconnectDB();
  }
  return written;
}

/** Reconnects and checks that every user, session and token written survived. */
async function expectDurableRowsIntact(label: string, written: Written): Promise<void> {
  for (const token of written.sessionTokens) {
    const found = await SessionsService.validate(token);
    expect(found?.user.email).toMatch(new RegExp(`^${label}-\\d+@example\\.com$`));
  }
  for (const id of written.userIds) expect(await UsersService.findById(id)).not.toBeNull();
  // peek does not use the token: the drill only needs to know it is still there and usable.
  for (const token of written.resetTokens) {
    expect(await OneTimeTokensService.peek(token, "password_reset")).not.toBeNull();
  }
}

describe("drill crash: an immediate shutdown wipes only the cache", () => {
  it("empties the UNLOGGED cache after stop('immediate') and keeps users, sessions and tokens", async () => {
    const url = drill.server.url;
    // Whatever ran before (the control leaves its entries behind): start from an empty cache.
    await query(url, "DELETE FROM cache");
    const written = await writeEverything("crash", 20);
    expect(await count(url, "cache")).toBe(20);

    await drill.server.stop("immediate");
    await drill.server.start();

    const cacheRows = await count(url, "cache");
    expect(cacheRows).toBe(0);
    initializeDB(databaseConfigFromUrl(url, { applicationName: "drill-crash-after" }));
    try {
      await expectDurableRowsIntact("crash", written);
      for (const key of written.cacheKeys) expect(await CacheService.get("drill", key)).toBeNull();
      // The emptied table still works.
      await CacheService.set("drill", "after-crash", { ok: true });
      expect(await CacheService.get("drill", "after-crash")).toEqual({ ok: true });
    } finally {
      await disconnectDB();
    }
    console.log(
      `drill crash: immediate shutdown left ${cacheRows} of ${written.cacheKeys.length} cache entries; ` +
        `${written.userIds.length} users, ${written.sessionTokens.length} sessions, ` +
        `${written.resetTokens.length} reset tokens intact`,
    );
  });

  it("control: a fast (clean) shutdown keeps the cache", async () => {
    const url = drill.server.url;
    await query(url, "DELETE FROM cache");
    const written = await writeEverything("fast", 10);

    await drill.server.stop("fast");
    await drill.server.start();

    initializeDB(databaseConfigFromUrl(url, { applicationName: "drill-crash-control" }));
    let kept = 0;
    try {
      await expectDurableRowsIntact("fast", written);
      for (const [i, key] of written.cacheKeys.entries()) {
        const value = await CacheService.get("drill", key);
        expect(value).toEqual({ i, label: "fast" });
        if (value !== null) kept += 1;
      }
    } finally {
      await disconnectDB();
    }
    console.log(
      `drill crash (control): fast shutdown kept ${kept} of ${written.cacheKeys.length} cache entries`,
    );
  });
});
