// Scale-out drill with real components on loopback: a primary, a streaming replica of it, PgBouncer in
// transaction mode in front of the primary, and two API processes that send their queries through PgBouncer,
// LISTEN on the primary directly (DATABASE_DIRECT_URL), cache validated sessions (the default 2 s) and read
// session checks on the replica (SESSION_READS=replica). A sign-out on one process is refused by the other
// long before its cache entry would expire; with the replica's replay paused, a new session validates and a
// revocation is refused at once on both; with the listeners' backends terminated, revocations are still
// refused at once (the checks read the primary until the feed is back).
import { type StreamingPair, startStreamingPair } from "@repo/db/testing";
import { describeWithPgBouncer, type PgBouncer, startPgBouncer } from "@repo/db/testing/pgbouncer";
import { afterAll, beforeAll, expect, it } from "vitest";
import { type ApiProcess, startApiProcess } from "../process.ts";

let pair: StreamingPair;
let bouncer: PgBouncer;
const apis: ApiProcess[] = [];
let counter = 0;

describeWithPgBouncer("scale-out: replica, PgBouncer, two API processes, session cache", () => {
  beforeAll(async () => {
    pair = await startStreamingPair();
    bouncer = await startPgBouncer(pair.primary.url, { poolSize: 4 });
    const env = {
      DATABASE_URL: bouncer.url,
      DATABASE_POOLER: "transaction",
      DATABASE_DIRECT_URL: pair.primary.url,
      DATABASE_REPLICA_URLS: pair.replica.url,
      DATABASE_REPLICA_MAX_LAG_MS: "1000",
      DATABASE_REPLICA_CHECK_INTERVAL_MS: "200",
      SESSION_READS: "replica",
      SIGN_IN_BEFORE_EMAIL_VERIFICATION: "true",
      RATE_LIMIT_SIGN_UP_PER_CLIENT: "1000",
    };
    for (let i = 0; i < 2; i++) apis.push(await startApiProcess(env));
    await Promise.all(apis.map((api) => api.ready()));
  }, 120_000);

  afterAll(async () => {
    for (const api of apis) await api.stop();
    await bouncer?.stop();
    await pair?.close();
  });

  const [a, b] = [() => apis[0] as ApiProcess, () => apis[1] as ApiProcess];

  async function signUp(api: ApiProcess): Promise<string> {
    const response = await fetch(`${api.base}/v1/auth/sign-up`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-auth-mode": "bearer" },
      body: JSON.stringify({
        email: `scale-${++counter}-${Date.now()}@example.com`,
        password: "a long enough password",
      }),
    });
    expect(response.status).toBe(201);
    return ((await response.json()) as { token: string }).token;
  }

  async function check(api: ApiProcess, token: string): Promise<number> {
    const response = await fetch(`${api.base}/v1/auth/session`, {
      headers: { authorization: `Bearer ${token}` },
    });
    await response.arrayBuffer();
    return response.status;
  }

  async function signOut(api: ApiProcess, token: string): Promise<void> {
    const response = await fetch(`${api.base}/v1/auth/sign-out`, {
      method: "POST",
      headers: { authorization: `Bearer ${token}` },
    });
    expect(response.status).toBe(204);
  }

  /** Milliseconds until `api` refuses `token` (polling), failing past `timeoutMs`. */
  async function refusedWithin(api: ApiProcess, token: string, timeoutMs: number): Promise<number> {
    const started = performance.now();
    for (;;) {
      if ((await check(api, token)) === 401) return performance.now() - started;
      if (performance.now() - started > timeoutMs) throw new Error(`still accepted after ${timeoutMs} ms`);
    }
  }

  it("a sign-out on one process is refused by the other, which had the session cached", async () => {
    const latencies: number[] = [];
    for (let round = 0; round < 5; round++) {
      const token = await signUp(a());
      await pair.caughtUp();
      expect(await check(b(), token)).toBe(200);
      expect(await check(b(), token)).toBe(200);
      await signOut(a(), token);
      // The cache keeps an entry 2 s: refused well before that, the notification evicted it.
      latencies.push(await refusedWithin(b(), token, 1000));
    }
    latencies.sort((x, y) => x - y);
    process.stderr.write(
      `scale-out drill: sign-out on A refused by B after ${latencies.map((l) => l.toFixed(1)).join(", ")} ms\n`,
    );
  });

  it("replay paused: a new session validates on both, and a revocation is refused at once on both", async () => {
    const old = await signUp(a());
    await pair.caughtUp();
    expect(await check(a(), old)).toBe(200);
    expect(await check(b(), old)).toBe(200);
    await pair.onReplica("SELECT pg_wal_replay_pause()");
    try {
      const fresh = await signUp(b());
      expect(await check(a(), fresh)).toBe(200);
      expect(await check(b(), fresh)).toBe(200);
      await signOut(b(), old);
      await refusedWithin(a(), old, 1000);
      expect(await check(b(), old)).toBe(401);
    } finally {
      await pair.onReplica("SELECT pg_wal_replay_resume()");
    }
  });

  it("listeners' backends terminated: revocations are still refused at once, and the feed comes back", async () => {
    const token = await signUp(a());
    await pair.caughtUp();
    expect(await check(b(), token)).toBe(200);
    const killed = await pair.onPrimary(
      "SELECT count(pg_terminate_backend(pid))::int AS n FROM pg_stat_activity WHERE query LIKE 'LISTEN%' OR query = 'SELECT 1'",
    );
    expect(killed.rows[0]?.n).toBeGreaterThanOrEqual(2);
    await pair.onPrimary(
      `UPDATE sessions SET status = 'revoked' WHERE token_hash = sha256(convert_to('${token}', 'UTF8'))`,
      "app",
    );
    await refusedWithin(b(), token, 1000);
    expect(await check(a(), token)).toBe(401);
    // Back in a moment: a new session is cached again (two checks, both 200).
    const next = await signUp(b());
    expect(await check(a(), next)).toBe(200);
    expect(await check(a(), next)).toBe(200);
  });
});
