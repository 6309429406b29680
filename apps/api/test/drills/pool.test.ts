// Fault drill: every pooled connection held busy (pg_sleep). New requests must answer 503 within the
// configured connection timeout instead of hanging; afterwards nobody is left waiting and the server never
// saw more connections from the app than the pool size. (A failed BEGIN not leaking a client is covered in
// packages/db/test/connection.test.ts.)
import { getPool } from "@repo/db";
import { useTestDatabase } from "@repo/db/testing";
import { describe, expect, it } from "vitest";
import { call, makeApp, PASSWORD, signUp, uniqueEmail } from "../helpers.ts";

const POOL_MAX = 4;
const CONNECT_TIMEOUT_MS = 500;
const APPLICATION_NAME = "drill-pool";

const database = useTestDatabase({
  config: { poolMax: POOL_MAX, connectionTimeoutMs: CONNECT_TIMEOUT_MS, applicationName: APPLICATION_NAME },
});

async function serverConnections(): Promise<number> {
  const result = await database.admin<{ n: number }>(
    "SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = $1",
    [APPLICATION_NAME],
  );
  return result.rows[0]?.n ?? 0;
}

describe("drill pool: every connection busy", () => {
  it("answers 503 within the connection timeout, leaves no waiter and never exceeds the pool size", async () => {
    const t = makeApp({ env: { RATE_LIMIT_SIGN_IN_PER_CLIENT: "1000" } });
    const { token } = await signUp(t);
    const pool = getPool();

    // Sample the server's view of our connections every 50 ms for the whole drill.
    let peak = 0;
    let sampling = true;
    const sampler = (async () => {
      while (sampling) {
        peak = Math.max(peak, await serverConnections());
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    })();

    const hold = Array.from({ length: POOL_MAX }, () => pool.query("SELECT pg_sleep(3)"));
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(pool.totalCount).toBe(POOL_MAX);

    const started = Date.now();
    const answers = await Promise.all([
      ...Array.from({ length: 6 }, () =>
        call(t, "POST", "/v1/auth/sign-in", { body: { email: uniqueEmail(), password: PASSWORD } }),
      ),
      ...Array.from({ length: 6 }, () => call(t, "GET", "/v1/auth/session", { bearer: token })),
    ]);
    const slowest = Date.now() - started;
    for (const answer of answers) {
      expect(answer.status).toBe(503);
      expect(answer.json.error.code).toBe("POOL_EXHAUSTED");
    }
    // Each request waits at most the connection timeout (plus scheduling slack on a 2-core machine).
    expect(slowest).toBeLessThan(CONNECT_TIMEOUT_MS + 1500);

    await Promise.all(hold);
    sampling = false;
    await sampler;
    expect(pool.waitingCount).toBe(0);
    expect(peak).toBeLessThanOrEqual(POOL_MAX);
    const after = await call(t, "GET", "/v1/auth/session", { bearer: token });
    expect(after.status).toBe(200);
    console.log(
      `drill pool: ${answers.length} requests answered 503 in at most ${slowest} ms ` +
        `(connect timeout ${CONNECT_TIMEOUT_MS} ms); waiting afterwards ${pool.waitingCount}; ` +
        `peak server connections ${peak} of pool max ${POOL_MAX}`,
    );
  });
});
