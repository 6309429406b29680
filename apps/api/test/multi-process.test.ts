// Several real API processes (bun src/index.ts) on one database: concurrent start-up migrates once, and rate
// limits are shared through the cache table, whichever process a request hits.
import { adminQuery, createTestDatabase, type TestDatabase } from "@repo/db/testing";
import { afterAll, afterEach, describe, expect, it } from "vitest";
import { type ApiProcess, startApiProcess } from "./process.ts";

const databases: TestDatabase[] = [];
let running: ApiProcess[] = [];

async function startApi(database: TestDatabase, env: Record<string, string> = {}): Promise<ApiProcess> {
  const api = await startApiProcess({ DATABASE_URL: database.url, APP_URL: "http://app.multi.test", ...env });
  running.push(api);
  return api;
}

afterEach(async () => {
  for (const api of running) await api.stop();
  running = [];
});

afterAll(async () => {
  for (const database of databases) await database.drop();
});

describe("several API processes", () => {
  it("four processes started at once on an empty database all become ready; each migration is applied once", async () => {
    const database = await createTestDatabase({ empty: true });
    databases.push(database);
    const apis = await Promise.all([0, 1, 2, 3].map(() => startApi(database)));
    await Promise.all(apis.map((api) => api.ready()));

    const rows = await adminQuery<{ hash: string; n: number }>(
      "SELECT hash, count(*)::int AS n FROM drizzle.__drizzle_migrations GROUP BY hash",
      [],
      database.name,
    );
    expect(rows.rows.length).toBeGreaterThanOrEqual(3);
    for (const row of rows.rows) expect(row.n).toBe(1);
    for (const api of apis) expect(api.output()).not.toMatch(/failed|error/i);
  });

  it("two processes share rate-limit counters: the limit trips at the same total whichever process is hit", async () => {
    const database = await createTestDatabase();
    databases.push(database);
    const env = { RATE_LIMIT_SIGN_UP_PER_CLIENT: "4" };
    const [a, b] = await Promise.all([startApi(database, env), startApi(database, env)]);
    if (!a || !b) throw new Error("processes not started");
    await Promise.all([a.ready(), b.ready()]);

    const statuses: number[] = [];
    for (let i = 0; i < 6; i++) {
      // Alternate between the processes: requests 1..4 are allowed in total, then both refuse.
      const target = i % 2 === 0 ? a : b;
      const response = await fetch(`${target.base}/v1/auth/sign-up`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ email: `shared-limit-${i}@example.com`, password: "a long enough password" }),
      });
      statuses.push(response.status);
      if (response.status === 429) expect(Number(response.headers.get("retry-after"))).toBeGreaterThan(0);
    }
    expect(statuses).toEqual([202, 202, 202, 202, 429, 429]);
  });
});
