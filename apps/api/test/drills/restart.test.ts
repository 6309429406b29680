// Fault drill: the real API process (bun src/index.ts) under concurrent load while its database restarts
// (fast shutdown) and, separately, while the app's backends are terminated. The process must stay up,
// answer 503 quickly during the outage (never hang, never 500), recover within seconds, and every sign-up
// it acknowledged must be in the database afterwards. Runs on a durable embedded server of its own.
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";

import { runMigrations } from "@repo/db";
import { type EmbeddedPostgres, startEmbeddedPostgres } from "@repo/db/embedded";
import { queryOnce } from "@repo/db/testing";

import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ApiProcess, startApiProcess } from "../process.ts";

const APPLICATION_NAME = "drill-restart-api";
const WORKERS = 8;
const REQUEST_TIMEOUT_MS = 5000;
const PASSWORD = "correct horse battery staple";

let root: string;
let server: EmbeddedPostgres | undefined;
let api: ApiProcess;

async function adminQuery<R extends Record<string, unknown>>(text: string, values: unknown[] = []) {
  if (!server) throw new Error("no server");
  return await queryOnce<R>(server.url, text, values);
}

async function superQuery<R extends Record<string, unknown>>(text: string, values: unknown[] = []) {
  if (!server) throw new Error("no server");
  return await queryOnce<R>(server.adminUrl, text, values);
}

beforeAll(async () => {
  root = await mkdtemp(path.join(tmpdir(), "repo-api-drill-"));
  // mkdtemp makes a 0700 folder; as root the server runs as the `postgres` user, which must reach it.
  await chmod(root, 0o755);
  // Durable settings (no fsync=off): the drill is about what survives. Not removeOnStop: restart() stops.
  server = await startEmbeddedPostgres({ dataDir: path.join(root, "pg") });
  await runMigrations({ url: server.url });
  api = await startApiProcess({
    DATABASE_URL: server.url,
    DATABASE_APPLICATION_NAME: APPLICATION_NAME,
    DATABASE_CONNECT_TIMEOUT_MS: "1000",
    DATABASE_POOL_MAX: "10",
    APP_URL: "http://app.drill.test",
    RATE_LIMIT_SIGN_UP_PER_CLIENT: "1000000",
    RATE_LIMIT_SIGN_IN_PER_CLIENT: "1000000",
  });
  await api.ready();
});

afterAll(async () => {
  await api?.stop();
  await server?.stop("fast");
  if (root) await rm(root, { recursive: true, force: true });
});

interface Outcome {
  kind: "sign-up" | "session";
  startedAt: number;
  endedAt: number;
  status: number;
  code?: string;
  email?: string;
  failure?: string;
}

let seq = 0;

async function request(kind: Outcome["kind"], bearer: string): Promise<Outcome> {
  const startedAt = Date.now();
  const email = kind === "sign-up" ? `drill-${++seq}-${startedAt}@example.com` : undefined;
  try {
    const response =
      kind === "sign-up"
        ? await fetch(`${api.base}/v1/auth/sign-up`, {
            method: "POST",
            headers: { "content-type": "application/json" },
            body: JSON.stringify({ email, password: PASSWORD }),
            signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
          })
        : await fetch(`${api.base}/v1/auth/session`, {
            headers: { authorization: `Bearer ${bearer}` },
            signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
          });
    const text = await response.text();
    let code: string | undefined;
    try {
      code = (JSON.parse(text) as { error?: { code?: string } }).error?.code;
    } catch {
      code = undefined;
    }
    const outcome: Outcome = { kind, startedAt, endedAt: Date.now(), status: response.status };
    if (code !== undefined) outcome.code = code;
    if (email !== undefined) outcome.email = email;
    return outcome;
  } catch (error) {
    const outcome: Outcome = { kind, startedAt, endedAt: Date.now(), status: 0, failure: String(error) };
    if (email !== undefined) outcome.email = email;
    return outcome;
  }
}

/** WORKERS clients alternating sign-ups and session checks until `stop()`; bounded by `maxMs`. */
function load(bearer: string, maxMs: number) {
  const outcomes: Outcome[] = [];
  let running = true;
  const deadline = Date.now() + maxMs;
  const done = Promise.all(
    Array.from({ length: WORKERS }, async (_, worker) => {
      let i = worker;
      while (running && Date.now() < deadline) {
        outcomes.push(await request(i % 2 === 0 ? "sign-up" : "session", bearer));
        i += 1;
      }
    }),
  );
  return {
    outcomes,
    async stop() {
      running = false;
      await done;
    },
  };
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Checks the figures every fault must meet and returns them. */
async function judge(label: string, outcomes: Outcome[], faultStart: number, faultEnd: number) {
  expect(api.child.exitCode).toBeNull();
  const bad = outcomes.filter((o) => !(o.status >= 200 && o.status < 300) && o.status !== 503);
  expect(bad, `${label}: answers other than 2xx/503: ${JSON.stringify(bad.slice(0, 5))}`).toEqual([]);
  const unavailable = outcomes.filter((o) => o.status === 503);
  // The database is away (refused or dropped connections), or every pooled connection is waiting on it.
  for (const o of unavailable) expect(["DATABASE_UNAVAILABLE", "POOL_EXHAUSTED"]).toContain(o.code);
  const slowest503 = Math.max(0, ...unavailable.map((o) => o.endedAt - o.startedAt));
  // Fail fast: a 503 comes within the connect timeout (1 s) plus slack, far below the client timeout.
  expect(slowest503).toBeLessThan(REQUEST_TIMEOUT_MS - 1000);
  // Recovery: every request started 3 s after the database was back succeeded.
  const late = outcomes.filter((o) => o.startedAt > faultEnd + 3000);
  expect(late.length).toBeGreaterThan(0);
  for (const o of late) expect(o.status, JSON.stringify(o)).toBeLessThan(300);
  const lastFailure = Math.max(faultStart, ...unavailable.map((o) => o.endedAt));
  // Nothing acknowledged is lost.
  const acknowledged = outcomes.filter((o) => o.kind === "sign-up" && o.status === 202).map((o) => o.email);
  const found = await adminQuery<{ n: number }>(
    "SELECT count(*)::int AS n FROM users WHERE email = ANY($1)",
    [acknowledged],
  );
  const lost = acknowledged.length - (found.rows[0]?.n ?? 0);
  expect(lost).toBe(0);
  return {
    requests: outcomes.length,
    unavailable: unavailable.length,
    slowest503,
    recoveredMs: Math.max(0, lastFailure - faultEnd),
    acknowledged: acknowledged.length,
    lost,
  };
}

describe("drill restart: the API under load while the database restarts", () => {
  let bearer: string;

  // The signed-in user whose session every drill's load checks: set up here, so each drill can run alone.
  beforeAll(async () => {
    const first = await request("sign-up", "");
    expect(first.status).toBe(202);
    // Sign-up grants nothing until the address is proven; the drill proves it directly.
    await adminQuery(
      "UPDATE users SET email_verified_at = now(), password_hash = t.password_hash FROM one_time_tokens t WHERE t.user_id = users.id AND users.email = $1",
      [first.email],
    );
    const signIn = await fetch(`${api.base}/v1/auth/sign-in`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-auth-mode": "bearer" },
      body: JSON.stringify({ email: first.email, password: PASSWORD }),
      signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
    });
    expect(signIn.status).toBe(200);
    bearer = ((await signIn.json()) as { token: string }).token;
  });

  it("a fast restart: 503s during the outage, full recovery, nothing acknowledged lost", async () => {
    const running = load(bearer, 20_000);
    await sleep(1500);
    const faultStart = Date.now();
    if (!server) throw new Error("no server");
    await server.restart("fast");
    const faultEnd = Date.now();
    await sleep(4500);
    await running.stop();
    const figures = await judge("restart", running.outcomes, faultStart, faultEnd);
    console.log(
      `drill restart: outage ${((faultEnd - faultStart) / 1000).toFixed(1)} s, ${figures.unavailable} of ` +
        `${figures.requests} requests answered 503 (slowest ${figures.slowest503} ms), last failure ` +
        `${(figures.recoveredMs / 1000).toFixed(1)} s after the database was back, ${figures.lost} lost of ` +
        `${figures.acknowledged} acknowledged sign-ups`,
    );
  });

  it("down for 2 s (fast stop, start later): 503s fail fast on refused connections, then full recovery", async () => {
    if (!server) throw new Error("no server");
    const running = load(bearer, 20_000);
    await sleep(1000);
    const faultStart = Date.now();
    await server.stop("fast");
    await sleep(2000);
    await server.start();
    const faultEnd = Date.now();
    await sleep(4000);
    await running.stop();
    const figures = await judge("down", running.outcomes, faultStart, faultEnd);
    // While the server was down, requests kept coming back: the clients were never stuck.
    expect(figures.unavailable).toBeGreaterThan(0);
    console.log(
      `drill restart (down 2 s): outage ${((faultEnd - faultStart) / 1000).toFixed(1)} s, ${figures.unavailable} of ` +
        `${figures.requests} requests answered 503 (slowest ${figures.slowest503} ms), ${figures.lost} lost of ` +
        `${figures.acknowledged} acknowledged sign-ups`,
    );
  });

  it("terminated backends: the pool replaces them, nothing acknowledged lost", async () => {
    const running = load(bearer, 20_000);
    await sleep(1500);
    const faultStart = Date.now();
    const killed = await superQuery<{ n: number }>(
      "SELECT count(*)::int AS n FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1) t",
      [APPLICATION_NAME],
    );
    const faultEnd = Date.now();
    // A drill that killed nothing proves nothing: the API's pool must have had backends to lose.
    expect(killed.rows[0]?.n ?? 0).toBeGreaterThan(0);
    await sleep(4000);
    await running.stop();
    const figures = await judge("terminate", running.outcomes, faultStart, faultEnd);
    console.log(
      `drill restart (terminate): ${killed.rows[0]?.n ?? 0} backends terminated, ${figures.unavailable} of ` +
        `${figures.requests} requests answered 503, ${figures.lost} lost of ${figures.acknowledged} ` +
        "acknowledged sign-ups",
    );
  });
});
