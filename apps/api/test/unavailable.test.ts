// The database running out of connections answers 503 POOL_EXHAUSTED, with no internal detail.
import { transaction } from "@repo/db";
import { useTestDatabase } from "@repo/db/testing";
import { describe, expect, it } from "vitest";
import { call, makeApp, PASSWORD, uniqueEmail } from "./helpers.ts";

useTestDatabase({ config: { poolMax: 1, connectionTimeoutMs: 200 } });

describe("database unavailable", () => {
  it("maps POOL_EXHAUSTED to 503 and recovers once a connection is free", async () => {
    const t = makeApp();
    let release = () => {};
    const held = transaction(
      () =>
        new Promise<void>((resolve) => {
          release = resolve;
        }),
    );
    await new Promise((resolve) => setTimeout(resolve, 50));
    const res = await call(t, "POST", "/v1/auth/sign-in", {
      body: { email: uniqueEmail(), password: PASSWORD },
    });
    release();
    await held;
    expect(res.status).toBe(503);
    expect(res.json.error).toEqual({
      code: "POOL_EXHAUSTED",
      message: "All database connections are busy; retry later",
      requestId: expect.any(String),
    });
    const after = await call(t, "POST", "/v1/auth/sign-in", {
      body: { email: uniqueEmail(), password: PASSWORD },
    });
    expect(after.status).toBe(401);
  });
});
