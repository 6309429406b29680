// Fault drill over HTTP against the real API process (bun src/index.ts, production mode): the two attacks of
// the auth review that only show under load or from many addresses.
//  - Pool starvation (item 5): argon2 takes tens of milliseconds. Hashed inside a transaction, a burst of
//    sign-ups holds every pooled connection for that long and every other request (session checks included)
//    waits, then gets 503 POOL_EXHAUSTED. With a pool of 4 and a 250 ms connect timeout, 40 concurrent
//    sign-ups next to a stream of session checks must cause no 503 at all.
//  - Targeted lockout (item 4): an attacker failing 30 times from 10 addresses must not stop the owner's
//    correct sign-in from another address; the tight per-(account, network) limit still stops one network.
import { SessionsService, UsersService } from "@repo/db";
import { useTestDatabase } from "@repo/db/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ApiProcess, startApiProcess } from "../process.ts";

const database = useTestDatabase();

const POOL_MAX = 4;
const CONNECT_TIMEOUT_MS = 250;
const BURST = 40;
const OWNER_EMAIL = "owner-of-the-drill@example.com";
const OWNER_PASSWORD = "kestrel-meridian-anvil-2204";

let api: ApiProcess;
let bearer: string;

beforeAll(async () => {
  const user = await UsersService.create({ email: OWNER_EMAIL, password: OWNER_PASSWORD });
  await UsersService.update({ id: user.id, patch: { emailVerifiedAt: new Date() } });
  bearer = (await SessionsService.create({ userId: user.id, authMethod: "password" })).token;
  api = await startApiProcess({
    DATABASE_URL: database.url,
    DATABASE_POOL_MAX: String(POOL_MAX),
    DATABASE_CONNECT_TIMEOUT_MS: String(CONNECT_TIMEOUT_MS),
    // One proxy hop, so the drill can speak from many client addresses on loopback.
    TRUST_PROXY: "1",
    RATE_LIMIT_SIGN_UP_PER_CLIENT: "1000",
    RATE_LIMIT_EMAIL_PER_CLIENT: "1000",
  });
  await api.ready();
}, 60_000);

afterAll(async () => {
  if (api) expect(await api.stop()).toBe(0);
});

async function send(path: string, body: unknown, from: string): Promise<Response> {
  return await fetch(`${api.base}${path}`, {
    method: "POST",
    headers: { "content-type": "application/json", "x-forwarded-for": from, "x-auth-mode": "bearer" },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(20_000),
  });
}

async function post(path: string, body: unknown, from = "192.0.2.1"): Promise<number> {
  const response = await send(path, body, from);
  await response.arrayBuffer();
  return response.status;
}

/** The status, with the error's code when it is not the expected one (a failed drill then says why). */
async function postExpecting(expected: number, path: string, body: unknown): Promise<number | string> {
  const response = await send(path, body, "192.0.2.1");
  const text = await response.text();
  if (response.status === expected) return response.status;
  let code: unknown;
  try {
    code = (JSON.parse(text) as { error?: { code?: unknown } }).error?.code;
  } catch {
    code = text.slice(0, 200);
  }
  return `${response.status} ${String(code)}`;
}

describe("drill: auth abuse against the real API process", () => {
  it(`${BURST} concurrent sign-ups next to a stream of session checks: no 503 (pool ${POOL_MAX}, connect timeout ${CONNECT_TIMEOUT_MS} ms)`, async () => {
    // A server that has been serving holds warm connections (idle timeout 30 s): open the pool's four first.
    // On a cold pool under a CPU-bound burst, opening a connection itself can outlast a 500 ms timeout.
    await Promise.all(
      Array.from({ length: POOL_MAX * 2 }, async () => {
        const response = await fetch(`${api.base}/readyz`);
        expect(response.status).toBe(200);
      }),
    );
    let burstDone = false;
    const checks: number[] = [];
    const latencies: number[] = [];
    // Session checks one after another for as long as the burst lasts (bounded at 2,000 requests).
    const stream = (async () => {
      while (!burstDone && checks.length < 2000) {
        const started = performance.now();
        const response = await fetch(`${api.base}/v1/auth/session`, {
          headers: { authorization: `Bearer ${bearer}` },
          signal: AbortSignal.timeout(20_000),
        });
        await response.arrayBuffer();
        latencies.push(performance.now() - started);
        checks.push(response.status);
      }
    })();
    const started = performance.now();
    const signUps = await Promise.all(
      Array.from({ length: BURST }, (_, i) =>
        postExpecting(202, "/v1/auth/sign-up", {
          email: `burst-${i}@example.com`,
          password: `burst passphrase ${i} xq`,
        }),
      ),
    );
    const burstMs = performance.now() - started;
    burstDone = true;
    await stream;

    expect(signUps.filter((status) => status !== 202)).toEqual([]);
    expect(checks.length).toBeGreaterThan(0);
    expect(checks.filter((status) => status !== 200)).toEqual([]);
    expect(api.output()).not.toContain("POOL_EXHAUSTED");
    const { rows } = await database.admin<{ n: number }>(
      "SELECT count(*)::int AS n FROM users WHERE email LIKE 'burst-%'",
    );
    expect(rows[0]?.n).toBe(BURST);
    latencies.sort((a, b) => a - b);
    console.log(
      `drill auth-abuse: ${BURST} sign-ups in ${Math.round(burstMs)} ms beside ${checks.length} session checks, ` +
        `all 200; check p50 ${Math.round(latencies[Math.floor(latencies.length / 2)] ?? 0)} ms, ` +
        `max ${Math.round(latencies.at(-1) ?? 0)} ms; no 503`,
    );
  });

  it("30 failed sign-ins from 10 addresses do not keep the owner out; one address alone is stopped", async () => {
    const body = { email: OWNER_EMAIL, password: "attacker's wrong guess" };
    const failures: number[] = [];
    for (let address = 0; address < 10; address++) {
      for (let attempt = 0; attempt < 3; attempt++) {
        failures.push(await post("/v1/auth/sign-in", body, `198.51.100.${10 + address}`));
      }
    }
    expect(failures.every((status) => status === 401)).toBe(true);
    expect(
      await post("/v1/auth/sign-in", { email: OWNER_EMAIL, password: OWNER_PASSWORD }, "203.0.113.50"),
    ).toBe(200);

    // The tight limit (10 failures per account and network) still stops a single network, and only it.
    const single: number[] = [];
    for (let attempt = 0; attempt < 11; attempt++)
      single.push(await post("/v1/auth/sign-in", body, "198.51.100.99"));
    expect(single.slice(0, 10).every((status) => status === 401)).toBe(true);
    expect(single[10]).toBe(429);
    expect(
      await post("/v1/auth/sign-in", { email: OWNER_EMAIL, password: OWNER_PASSWORD }, "198.51.100.99"),
    ).toBe(429);
    expect(
      await post("/v1/auth/sign-in", { email: OWNER_EMAIL, password: OWNER_PASSWORD }, "203.0.113.51"),
    ).toBe(200);
  });
});
