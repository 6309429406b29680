// Section 4: GET /v1/auth/session over HTTP. The real API (bun src/index.ts) beside two Bun floors (a constant
// answer, and the validation SQL through raw node-postgres), each in a child process on loopback, loaded by
// autocannon with Bearer tokens of seeded sessions.
import { randomBytes } from "node:crypto";
import { rmSync } from "node:fs";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { freePort } from "@repo/db/embedded";
import autocannon from "autocannon";
import { msText, opsText, ratio, ratioText, table } from "./format.ts";
import { quantile } from "./harness.ts";
import { type Child, startChild, waitForHttp } from "./processes.ts";
import type { Resources } from "./resources.ts";

const ROUTE = "/v1/auth/session";
/** Pool size of the API and of the raw-pg floor, the same for both. */
export const HTTP_POOL_SIZE = 16;
/** Sessions the load cycles over: enough distinct rows that no single one is the hot spot. */
const TOKENS_IN_LOAD = 256;

const apiRoot = fileURLToPath(new URL("../../../apps/api", import.meta.url));
const benchRoot = fileURLToPath(new URL("..", import.meta.url));
const floorScript = fileURLToPath(new URL("./http-floor-server.ts", import.meta.url));

export type ServerName = "api" | "raw-pg floor" | "constant floor";

interface Server {
  name: ServerName;
  base: string;
  child: Child;
}

export interface HttpMeasurement {
  server: ServerName;
  connections: number;
  requestsPerSec: number;
  p50Ms: number;
  p99Ms: number;
  requests: number;
}

export interface HttpRow {
  connections: number;
  api: HttpMeasurement;
  rawPg: HttpMeasurement;
  constant: HttpMeasurement;
  /** API throughput over the raw-pg floor's (target: at least 0.8). */
  apiToRawPg: number;
  apiToConstant: number;
}

export interface HttpOptions {
  connections: number[];
  durationSec: number;
  warmupSec: number;
}

async function startServer(
  name: ServerName,
  args: string[],
  cwd: string,
  env: Record<string, string>,
  ready: { path: string; status: number },
  resources: Resources,
  stdoutFile?: string,
): Promise<Server> {
  const port = await freePort();
  const child = startChild(name, "bun", args, {
    cwd,
    env: { ...env, PORT: String(port), HOST: "127.0.0.1" },
    ...(stdoutFile === undefined ? {} : { stdoutFile }),
  });
  resources.defer(name, () => child.stop());
  const base = `http://127.0.0.1:${port}`;
  await waitForHttp(child, `${base}${ready.path}`, ready.status);
  return { name, base, child };
}

/** Starts the three servers; each is registered with `resources` as soon as it is spawned. */
async function startServers(databaseUrl: string, resources: Resources): Promise<Server[]> {
  const apiLogFile = path.join(tmpdir(), `repo-bench-api-${process.pid}.log`);
  resources.defer("api log", async () => rmSync(apiLogFile, { force: true }));
  const dbEnv = { DATABASE_URL: databaseUrl, DATABASE_POOL_MAX: String(HTTP_POOL_SIZE) };
  const api = await startServer(
    "api",
    ["src/index.ts"],
    apiRoot,
    // As users start it (`bun run start`): production defaults, the access log on at info, to a file.
    { ...dbEnv, NODE_ENV: "production", APP_URL: "http://127.0.0.1" },
    { path: "/readyz", status: 200 },
    resources,
    apiLogFile,
  );
  // Without a token the floors' route answers 401 (raw-pg) or 200 (constant): either way, it is listening.
  const noToken = { path: ROUTE, status: 401 };
  const rawPg = await startServer(
    "raw-pg floor",
    [floorScript, "raw-pg"],
    benchRoot,
    dbEnv,
    noToken,
    resources,
  );
  const constant = await startServer(
    "constant floor",
    [floorScript, "constant"],
    benchRoot,
    {},
    { path: ROUTE, status: 200 },
    resources,
  );
  return [api, rawPg, constant];
}

async function statusFor(base: string, token: string): Promise<number> {
  const response = await fetch(`${base}${ROUTE}`, {
    headers: { authorization: `Bearer ${token}` },
    signal: AbortSignal.timeout(10_000),
  });
  await response.arrayBuffer();
  return response.status;
}

/** A valid token must answer 200; an unknown one 401 (except on the constant floor, which checks nothing). */
async function verify(server: Server, validToken: string): Promise<void> {
  const ok = await statusFor(server.base, validToken);
  if (ok !== 200) throw new Error(`${server.name}: a valid session token answered ${ok}, not 200`);
  if (server.name === "constant floor") return;
  const bad = await statusFor(server.base, randomBytes(32).toString("base64url"));
  if (bad !== 401) throw new Error(`${server.name}: an unknown session token answered ${bad}, not 401`);
}

/** One autocannon run; latency percentiles come from the per-response times (autocannon's own are whole ms). */
async function load(server: Server, tokens: string[], connections: number, seconds: number) {
  const latencies: number[] = [];
  const instance = autocannon(
    {
      url: `${server.base}${ROUTE}`,
      connections,
      duration: seconds,
      requests: tokens.map((token) => ({
        method: "GET" as const,
        path: ROUTE,
        headers: { authorization: `Bearer ${token}` },
      })),
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
  return { requests: result["2xx"], seconds: result.duration, sorted };
}

async function measureServer(
  server: Server,
  tokens: string[],
  connections: number,
  options: HttpOptions,
): Promise<HttpMeasurement> {
  if (options.warmupSec > 0) await load(server, tokens, connections, options.warmupSec);
  const run = await load(server, tokens, connections, options.durationSec);
  server.child.assertRunning();
  return {
    server: server.name,
    connections,
    requestsPerSec: run.seconds > 0 ? run.requests / run.seconds : 0,
    p50Ms: quantile(run.sorted, 0.5),
    p99Ms: quantile(run.sorted, 0.99),
    requests: run.requests,
  };
}

export const HTTP_HEADERS = ["connections", "server", "requests/s", "p50 ms", "p99 ms", "API / this"];

export function httpCells(row: HttpRow): string[][] {
  return [row.api, row.rawPg, row.constant].map((m) => [
    String(row.connections),
    m.server,
    opsText(m.requestsPerSec),
    msText(m.p50Ms),
    msText(m.p99Ms),
    ratioText(ratio(row.api.requestsPerSec, m.requestsPerSec)),
  ]);
}

/**
 * Starts the servers, checks their answers, then loads each in turn (order rotated per connection count) and
 * stops them. The load generator shares the machine with the server, as it would for any of the three.
 */
export async function httpSection(
  databaseUrl: string,
  sessionTokens: string[],
  options: HttpOptions,
  resources: Resources,
  print: (text: string) => void,
): Promise<HttpRow[]> {
  const servers = await startServers(databaseUrl, resources);
  const tokens = sessionTokens.slice(0, TOKENS_IN_LOAD);
  const first = tokens[0];
  if (first === undefined) throw new Error("no session tokens were seeded");
  for (const server of servers) await verify(server, first);

  const rows: HttpRow[] = [];
  for (const [round, connections] of options.connections.entries()) {
    const results = new Map<ServerName, HttpMeasurement>();
    for (let k = 0; k < servers.length; k++) {
      const server = servers[(round + k) % servers.length] as Server;
      results.set(server.name, await measureServer(server, tokens, connections, options));
    }
    const api = results.get("api") as HttpMeasurement;
    const rawPg = results.get("raw-pg floor") as HttpMeasurement;
    const constant = results.get("constant floor") as HttpMeasurement;
    const row: HttpRow = {
      connections,
      api,
      rawPg,
      constant,
      apiToRawPg: ratio(api.requestsPerSec, rawPg.requestsPerSec),
      apiToConstant: ratio(api.requestsPerSec, constant.requestsPerSec),
    };
    print(table(HTTP_HEADERS, httpCells(row)));
    rows.push(row);
  }
  await Promise.all(servers.map((server) => server.child.stop()));
  return rows;
}
