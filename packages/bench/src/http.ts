// Section 4: the session check over HTTP. The real API (bun src/index.ts, as users start it) beside three Bun
// floors (a constant answer; the read through raw node-postgres; the least work through Bun.sql) and the peer,
// Better Auth's default get-session. Each runs in a child process on loopback and is loaded in turn by autocannon
// with its own credentials for seeded sessions; runs are interleaved and repeated, and medians reported.
import { randomBytes } from "node:crypto";
import { rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { freePort } from "@repo/db/embedded";
import autocannon from "autocannon";
import { prepareBetterAuth } from "./better-auth/setup.ts";
import { msText, opsText, ratioText, table } from "./format.ts";
import { median, pairedRatio, quantile } from "./harness.ts";
import { type Child, startChild, waitForHttp } from "./processes.ts";
import type { Resources } from "./resources.ts";

const ROUTE = "/v1/auth/session";
const BETTER_AUTH_ROUTE = "/api/auth/get-session";
/** Pool size of the API, the database floors and the peer, the same for all. */
export const HTTP_POOL_SIZE = 16;
/** Sessions the load cycles over: enough distinct rows that no single one is the hot spot. */
const TOKENS_IN_LOAD = 256;

const apiRoot = fileURLToPath(new URL("../../../apps/api", import.meta.url));
const benchRoot = fileURLToPath(new URL("..", import.meta.url));
const floorScript = fileURLToPath(new URL("./http-floor-server.ts", import.meta.url));
const betterAuthScript = fileURLToPath(new URL("./better-auth/server.ts", import.meta.url));

/** In the order the tables show them. */
export const SERVER_NAMES = [
  "api",
  "api, no session cache",
  "bun-sql floor",
  "raw-pg floor",
  "better-auth",
  "constant floor",
] as const;
export type ServerName = (typeof SERVER_NAMES)[number];

type Request = { method: "GET"; path: string; headers: Record<string, string> };

interface Server {
  name: ServerName;
  base: string;
  child: Child;
  /** One request per seeded session, cycled by the load. */
  requests: Request[];
  /** Checks that a valid credential is accepted and a made-up one refused. */
  verify(): Promise<void>;
}

export interface HttpMeasurement {
  server: ServerName;
  connections: number;
  /** Medians over the repeats. */
  requestsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  /** Every repeat's requests/s, in run order. */
  runs: number[];
}

export interface HttpRow {
  connections: number;
  /** One per server, in SERVER_NAMES order. */
  servers: HttpMeasurement[];
  /** The API's requests/s over each server's (target against the minimal floor: at least 0.8). */
  apiThroughputRatio: Partial<Record<ServerName, number>>;
  /** The API's p99 over each server's (target against the minimal floor: at most 1.5). */
  apiP99Ratio: Partial<Record<ServerName, number>>;
  /** The same two for the API without its session cache. */
  uncachedThroughputRatio: Partial<Record<ServerName, number>>;
  uncachedP99Ratio: Partial<Record<ServerName, number>>;
}

export interface HttpOptions {
  connections: number[];
  durationSec: number;
  warmupSec: number;
  /** Interleaved repeats per connection count; medians are reported. */
  repeats: number;
}

async function spawnServer(
  name: ServerName,
  args: string[],
  cwd: string,
  env: Record<string, string>,
  ready: { path: string; status: number },
  resources: Resources,
  stdoutFile?: string,
): Promise<{ base: string; child: Child }> {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const child = startChild(name, "bun", args, {
    cwd,
    env: { ...env, PORT: String(port), HOST: "127.0.0.1" },
    ...(stdoutFile === undefined ? {} : { stdoutFile }),
  });
  resources.defer(name, () => child.stop());
  await waitForHttp(child, `${base}${ready.path}`, ready.status);
  return { base, child };
}

async function get(url: string, headers: Record<string, string>): Promise<{ status: number; body: string }> {
  const response = await fetch(url, { headers, signal: AbortSignal.timeout(10_000) });
  return { status: response.status, body: await response.text() };
}

/** A server answering ROUTE for Bearer tokens: 200 for a seeded session, 401 for an unknown token. */
function bearerServer(name: ServerName, started: { base: string; child: Child }, tokens: string[]): Server {
  const requests = tokens.map((token) => ({
    method: "GET" as const,
    path: ROUTE,
    headers: { authorization: `Bearer ${token}` },
  }));
  return {
    name,
    ...started,
    requests,
    async verify() {
      const ok = await get(`${started.base}${ROUTE}`, requests[0]?.headers ?? {});
      if (ok.status !== 200) throw new Error(`${name}: a valid session token answered ${ok.status}, not 200`);
      if (name === "constant floor") return;
      const unknown = { authorization: `Bearer ${randomBytes(32).toString("base64url")}` };
      const bad = await get(`${started.base}${ROUTE}`, unknown);
      if (bad.status !== 401)
        throw new Error(`${name}: an unknown session token answered ${bad.status}, not 401`);
    },
  };
}

/**
 * Better Auth answers get-session with 200 either way: the session and its user, or `null`. Its load uses the
 * signed session cookies of sessions made by its own sign-up.
 */
function betterAuthServer(started: { base: string; child: Child }, cookies: string[]): Server {
  const requests = cookies.map((cookie) => ({
    method: "GET" as const,
    path: BETTER_AUTH_ROUTE,
    headers: { cookie },
  }));
  return {
    name: "better-auth",
    ...started,
    requests,
    async verify() {
      const ok = await get(`${started.base}${BETTER_AUTH_ROUTE}`, requests[0]?.headers ?? {});
      if (ok.status !== 200 || !ok.body.includes('"user"')) {
        throw new Error(`better-auth: a valid session cookie answered ${ok.status} ${ok.body.slice(0, 200)}`);
      }
      const forged = { cookie: `better-auth.session_token=${randomBytes(24).toString("base64url")}.forged` };
      const bad = await get(`${started.base}${BETTER_AUTH_ROUTE}`, forged);
      if (bad.status !== 200 || bad.body.trim() !== "null") {
        throw new Error(`better-auth: a forged cookie answered ${bad.status} ${bad.body.slice(0, 200)}`);
      }
    },
  };
}

/** Starts the six servers; each is registered with `resources` as soon as it is spawned. */
async function startServers(databaseUrl: string, tokens: string[], resources: Resources): Promise<Server[]> {
  const apiLogFile = path.join(tmpdir(), `repo-bench-api-${process.pid}.log`);
  resources.defer("api log", async () => rmSync(apiLogFile, { force: true }));
  const dbEnv = { DATABASE_URL: databaseUrl, DATABASE_POOL_MAX: String(HTTP_POOL_SIZE) };
  const api = await spawnServer(
    "api",
    ["src/index.ts"],
    apiRoot,
    // As users start it (`bun run start`): production defaults, the access log on at info, to a file.
    { ...dbEnv, NODE_ENV: "production", APP_URL: "http://127.0.0.1" },
    { path: "/readyz", status: 200 },
    resources,
    apiLogFile,
  );
  // Without a token the database floors answer 401 and the constant one 200: either way, listening.
  const floor = (mode: string, env: Record<string, string>, status: number) =>
    spawnServer(
      `${mode} floor` as ServerName,
      [floorScript, mode],
      benchRoot,
      env,
      { path: ROUTE, status },
      resources,
    );
  // The same API with its in-process session cache off: every check reads PostgreSQL, as each floor does.
  const uncached = await spawnServer(
    "api, no session cache",
    ["src/index.ts"],
    apiRoot,
    { ...dbEnv, NODE_ENV: "production", APP_URL: "http://127.0.0.1", SESSION_CACHE_TTL_MS: "0" },
    { path: "/readyz", status: 200 },
    resources,
    `${apiLogFile}.uncached`,
  );
  resources.defer("api log (no cache)", async () => rmSync(`${apiLogFile}.uncached`, { force: true }));
  const started = [
    bearerServer("api", api, tokens),
    bearerServer("api, no session cache", uncached, tokens),
    bearerServer("bun-sql floor", await floor("bun-sql", dbEnv, 401), tokens),
    bearerServer("raw-pg floor", await floor("raw-pg", dbEnv, 401), tokens),
  ];
  const betterAuth = await prepareBetterAuth(databaseUrl, tokens.length);
  const peer = await spawnServer(
    "better-auth",
    [betterAuthScript],
    benchRoot,
    { ...dbEnv, BETTER_AUTH_SECRET: betterAuth.secret },
    // Without a cookie, get-session answers 200 with null.
    { path: BETTER_AUTH_ROUTE, status: 200 },
    resources,
  );
  started.push(betterAuthServer(peer, betterAuth.cookies));
  started.push(bearerServer("constant floor", await floor("constant", {}, 200), tokens));
  return started;
}

/** One autocannon run; latency percentiles come from the per-response times (autocannon's own are whole ms). */
async function load(server: Server, connections: number, seconds: number) {
  const latencies: number[] = [];
  const instance = autocannon(
    {
      url: `${server.base}${server.requests[0]?.path ?? ROUTE}`,
      connections,
      duration: seconds,
      requests: server.requests,
    },
    () => {},
  );
  instance.on("response", (_client, statusCode, _bytes, responseTime) => {
    if (statusCode >= 200 && statusCode < 300) latencies.push(responseTime);
  });
  const result = await new Promise<autocannon.Result>((resolve, reject) => {
    instance.on("done", resolve);
    instance.on("error", reject);
  });
  if (result.errors > 0 || result.non2xx > 0) {
    throw new Error(
      `${server.name}: ${result.non2xx} non-2xx answers and ${result.errors} connection errors under load ` +
        `(status counts ${JSON.stringify(result.statusCodeStats ?? {})})`,
    );
  }
  const sorted = Float64Array.from(latencies).sort();
  return {
    requestsPerSec: result.duration > 0 ? result["2xx"] / result.duration : 0,
    p50Ms: quantile(sorted, 0.5),
    p99Ms: quantile(sorted, 0.99),
  };
}

type Run = Awaited<ReturnType<typeof load>>;

export const HTTP_HEADERS = [
  "connections",
  "server",
  "requests/s",
  "p50 ms",
  "p99 ms",
  "API req/s / this",
  "API p99 / this",
  "no-cache API req/s / this",
  "no-cache API p99 / this",
  "runs (req/s)",
];

export function httpCells(row: HttpRow): string[][] {
  return row.servers.map((m) => [
    String(row.connections),
    m.server,
    opsText(m.requestsPerSec),
    msText(m.p50Ms),
    msText(m.p99Ms),
    ratioText(row.apiThroughputRatio[m.server] ?? Number.NaN),
    ratioText(row.apiP99Ratio[m.server] ?? Number.NaN),
    ratioText(row.uncachedThroughputRatio[m.server] ?? Number.NaN),
    ratioText(row.uncachedP99Ratio[m.server] ?? Number.NaN),
    m.runs.map(opsText).join(" · "),
  ]);
}

/**
 * Starts the servers, checks their answers, then for each connection count loads every server in turn
 * (`repeats` rounds, the order rotated each round so no server always follows the same one), and stops them.
 * The load generator shares the machine with the server, as it does for every one of them.
 */
export async function httpSection(
  databaseUrl: string,
  sessionTokens: string[],
  options: HttpOptions,
  resources: Resources,
  print: (text: string) => void,
): Promise<HttpRow[]> {
  const tokens = sessionTokens.slice(0, TOKENS_IN_LOAD);
  if (tokens.length === 0) throw new Error("no session tokens were seeded");
  const servers = await startServers(databaseUrl, tokens, resources);
  for (const server of servers) await server.verify();

  const rows: HttpRow[] = [];
  let turn = 0;
  for (const connections of options.connections) {
    const runs = new Map<ServerName, Run[]>();
    for (let round = 0; round < options.repeats; round++) {
      turn++;
      for (let k = 0; k < servers.length; k++) {
        const server = servers[(turn + k) % servers.length] as Server;
        if (options.warmupSec > 0) await load(server, connections, options.warmupSec);
        const run = await load(server, connections, options.durationSec);
        server.child.assertRunning();
        runs.set(server.name, [...(runs.get(server.name) ?? []), run]);
      }
    }
    const measured = SERVER_NAMES.map((name): HttpMeasurement => {
      const list = runs.get(name) ?? [];
      return {
        server: name,
        connections,
        requestsPerSec: median(list.map((r) => r.requestsPerSec)),
        p50Ms: median(list.map((r) => r.p50Ms)),
        p99Ms: median(list.map((r) => r.p99Ms)),
        runs: list.map((r) => r.requestsPerSec),
      };
    });
    // Ratios pair each round's API run with the same round's run of the other server (measured within one
    // round, not minutes apart), then take the median over rounds.
    const ratios = (of: ServerName, value: (run: Run) => number) =>
      Object.fromEntries(
        SERVER_NAMES.map((name) => [name, pairedRatio(runs.get(of) ?? [], runs.get(name) ?? [], value)]),
      );
    const throughput = (run: Run) => run.requestsPerSec;
    const p99 = (run: Run) => run.p99Ms;
    const row: HttpRow = {
      connections,
      servers: measured,
      apiThroughputRatio: ratios("api", throughput),
      apiP99Ratio: ratios("api", p99),
      uncachedThroughputRatio: ratios("api, no session cache", throughput),
      uncachedP99Ratio: ratios("api, no session cache", p99),
    };
    print(table(HTTP_HEADERS, httpCells(row)));
    rows.push(row);
  }
  await Promise.all(servers.map((server) => server.child.stop()));
  return rows;
}
