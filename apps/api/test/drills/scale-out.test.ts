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
import { type ApiProcess, scrapeMetrics, startApiProcess } from "../process.ts";

let pair: StreamingPair;
let bouncer: PgBouncer;
const apis: ApiProcess[] = [];
let counter = 0;

describeWithPgBouncer("scale-out: replica, PgBouncer, two API processes, session cache", () => {
  beforeAll(async () => {
    pair = await startStreamingPair();
    // As docs/scaling.md advises for a primary that may restart: PgBouncer retries a failed server login after
    // 1 s (not its default 15 s, which holds every query for that long) and gives up on a query that waited
    // 5 s for a server (the API then answers 503).
    bouncer = await startPgBouncer(pair.primary.url, {
      poolSize: 4,
      settings: { server_login_retry: "1", query_wait_timeout: "5" },
    });
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
    await pair.pauseReplay();
    try {
      const fresh = await signUp(b());
      expect(await check(a(), fresh)).toBe(200);
      expect(await check(b(), fresh)).toBe(200);
      await signOut(b(), old);
      await refusedWithin(a(), old, 1000);
      expect(await check(b(), old)).toBe(401);
    } finally {
      await pair.resumeReplay();
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

  it("the replica stopped under load: every session check and session list still answers 200", async () => {
    const token = await signUp(a());
    await pair.caughtUp();
    const statuses = new Map<number, number>();
    let stop = false;
    const worker = async (api: ApiProcess, path: string) => {
      while (!stop) {
        let status = -1;
        try {
          const response = await fetch(`${api.base}${path}`, {
            headers: { authorization: `Bearer ${token}` },
            signal: AbortSignal.timeout(15_000),
          });
          await response.arrayBuffer();
          status = response.status;
        } catch {
          // counted as -1
        }
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
      }
    };
    const workers = [
      worker(a(), "/v1/auth/session"),
      worker(b(), "/v1/auth/session"),
      worker(a(), "/v1/auth/sessions"),
      worker(b(), "/v1/auth/sessions"),
    ];
    try {
      await new Promise((resolve) => setTimeout(resolve, 300));
      await pair.replica.stop("fast");
      await new Promise((resolve) => setTimeout(resolve, 1500));
    } finally {
      stop = true;
      await Promise.all(workers);
      await pair.replica.start();
    }
    expect([...statuses.keys()]).toEqual([200]);
    // The replica did serve before it stopped, and reads failed over to the primary after.
    const text = (await scrapeMetrics(a().base)) + (await scrapeMetrics(b().base));
    const reads = (ranOn: string) =>
      [
        ...text.matchAll(
          new RegExp(`^db_replica_reads_total\\{[^}]*ran_on="${ranOn}"[^}]*\\} (\\d+)$`, "gm"),
        ),
      ].reduce((sum, match) => sum + Number(match[1]), 0);
    expect(reads("replica")).toBeGreaterThan(0);
    expect(reads("fallback") + reads("primary")).toBeGreaterThan(0);
    await pair.caughtUp();
    process.stderr.write(
      `scale-out drill: replica stopped under load: ${statuses.get(200)} answers, all 200\n`,
    );
  });

  it("the primary restarted fast under load: no answer but 201 or 503, every acknowledged sign-up kept, on the replica too", async () => {
    const acknowledged: string[] = [];
    const statuses = new Map<number, number>();
    let stop = false;
    const worker = async (api: ApiProcess) => {
      while (!stop) {
        const email = `restart-${++counter}-${Date.now()}@example.com`;
        let status = 0;
        try {
          const response = await fetch(`${api.base}/v1/auth/sign-up`, {
            method: "POST",
            headers: { "content-type": "application/json", "x-auth-mode": "bearer" },
            body: JSON.stringify({ email, password: "a long enough password" }),
            signal: AbortSignal.timeout(15_000),
          });
          await response.arrayBuffer();
          status = response.status;
        } catch {
          status = -1;
        }
        statuses.set(status, (statuses.get(status) ?? 0) + 1);
        if (status === 201) acknowledged.push(email);
        if (status !== 201) await new Promise((resolve) => setTimeout(resolve, 50));
      }
    };
    const workers = [a(), b(), a(), b()].map(worker);
    try {
      await new Promise((resolve) => setTimeout(resolve, 500));
      await pair.primary.restart("fast");
      // Both processes answer again (through PgBouncer, and their feeds reconnect).
      const deadline = Date.now() + 30_000;
      while (Date.now() < deadline && (await fetch(`${a().base}/readyz`)).status !== 200) {
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      const before = acknowledged.length;
      await new Promise((resolve) => setTimeout(resolve, 1000));
      expect(acknowledged.length).toBeGreaterThan(before);
    } finally {
      stop = true;
      await Promise.all(workers);
    }
    const seen = [...statuses.keys()].sort((x, y) => x - y);
    expect(seen.filter((status) => status !== 201 && status !== 503)).toEqual([]);
    const list = acknowledged.map((email) => `'${email}'`).join(",");
    const onPrimary = await pair.onPrimary(
      `SELECT count(*)::int AS n FROM users WHERE email IN (${list})`,
      "app",
    );
    expect(onPrimary.rows[0]?.n).toBe(acknowledged.length);
    await pair.caughtUp();
    const onReplica = await pair.onReplica(
      `SELECT count(*)::int AS n FROM users WHERE email IN (${list})`,
      "app",
    );
    expect(onReplica.rows[0]?.n).toBe(acknowledged.length);
    process.stderr.write(
      `scale-out drill: primary restarted under load: ${acknowledged.length} sign-ups acknowledged and kept; answers ${JSON.stringify(Object.fromEntries(statuses))}\n`,
    );
  });
});
