// Fault drill over HTTP against the real API process (bun src/index.ts, production mode): bodies built to
// break parsers and validators rather than to pass them. 10,000 levels of nested arrays and objects fit in
// 20-60 KB, under the default 64 KB body limit, and overflow recursive validators (zod's z.json() behind the
// users' metadata); huge arrays; strings longer than any field allows. Every answer must be a 400
// (VALIDATION_FAILED or INVALID_JSON) or a 413, never a 5xx; the process must log no error and no stack
// overflow; the users, sessions and one-time tokens must be untouched; and /readyz must still answer 200.
import { SessionsService, UsersService } from "@repo/db";
import { useTestDatabase } from "@repo/db/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NO_RATE_LIMITS } from "../helpers.ts";
import { type ApiProcess, startApiProcess } from "../process.ts";

const database = useTestDatabase();

const REQUEST_TIMEOUT_MS = 10_000;
/** Not a common password and not the email's name: the account is created directly, not by sign-up. */
const PASSWORD = "quokka-lantern-harbour-7319";
const EMAIL = "hostile-bodies@example.com";
/** A well-formed (43-character base64url) token that was never issued. */
const UNKNOWN_TOKEN = "A".repeat(43);

const DEEP_ARRAYS = `${"[".repeat(10_000)}${"]".repeat(10_000)}`;
const DEEP_OBJECTS = `${'{"a":'.repeat(10_000)}1${"}".repeat(10_000)}`;
const hugeArray = (items: number) => `[${"0,".repeat(items - 1)}0]`;
/** Under the default 64 KB body limit with room for the rest of the body, and longer than any field allows. */
const LONG_STRING = JSON.stringify("x".repeat(60_000));

interface Endpoint {
  method: "POST" | "PATCH" | "DELETE";
  path: string;
  session?: boolean;
  /** Valid-looking values: with any one field replaced by a hostile value, the body must be refused. */
  base: Record<string, unknown>;
}

const ENDPOINTS: Endpoint[] = [
  {
    method: "POST",
    path: "/v1/auth/sign-up",
    base: { email: EMAIL, password: PASSWORD, firstName: "Ada", lastName: "Lovelace" },
  },
  { method: "POST", path: "/v1/auth/sign-in", base: { email: EMAIL, password: "not the password" } },
  { method: "POST", path: "/v1/auth/password/forgot", base: { email: EMAIL } },
  { method: "POST", path: "/v1/auth/magic-link", base: { email: EMAIL } },
  { method: "POST", path: "/v1/auth/email/verify", base: { token: UNKNOWN_TOKEN } },
  {
    method: "POST",
    path: "/v1/auth/password/reset",
    base: { token: UNKNOWN_TOKEN, password: "a new password 1" },
  },
  { method: "POST", path: "/v1/auth/magic-link/verify", base: { token: UNKNOWN_TOKEN } },
  {
    method: "POST",
    path: "/v1/auth/password/change",
    session: true,
    base: { currentPassword: "not the password", newPassword: "another passphrase 42" },
  },
  {
    method: "PATCH",
    path: "/v1/users/me",
    session: true,
    base: { firstName: "Ada", lastName: "Lovelace", avatarUrl: "https://example.com/a.png", metadata: {} },
  },
  // Last: if a hostile body ever deleted the account, every case before it still ran with a live session.
  { method: "DELETE", path: "/v1/users/me", session: true, base: { password: "not the password" } },
];

/** Whole bodies every endpoint gets. */
const WHOLE_BODIES: ReadonlyArray<readonly [string, string]> = [
  ["10,000 nested arrays", DEEP_ARRAYS],
  ["10,000 nested objects", DEEP_OBJECTS],
  ["10,000 unclosed arrays", "[".repeat(10_000)],
  ["huge array (30,000 items)", hugeArray(30_000)],
  ["huge array (100,000 items, over the body limit)", hugeArray(100_000)],
];

/** Values every field of every endpoint gets, as JSON text. */
const FIELD_VALUES: ReadonlyArray<readonly [string, string]> = [
  ["long string", LONG_STRING],
  ["10,000 nested arrays", DEEP_ARRAYS],
  ["10,000 nested objects", DEEP_OBJECTS],
];

/** Where the recursion really is: z.json() walks metadata's values. */
const METADATA_BODIES: ReadonlyArray<readonly [string, string]> = [
  ["metadata value: 10,000 nested arrays", `{"metadata":{"x":${DEEP_ARRAYS}}}`],
  ["metadata value: 10,000 nested objects", `{"metadata":{"x":${DEEP_OBJECTS}}}`],
  ["metadata: 10,000 nested objects", `{"metadata":${DEEP_OBJECTS}}`],
  [
    "metadata value: 5,000 arrays then 5,000 objects",
    `{"metadata":{"x":${"[".repeat(5000)}${DEEP_OBJECTS.slice(0, 25_000)}1${"}".repeat(5000)}${"]".repeat(5000)}}}`,
  ],
  ["metadata value: huge array (30,000 items)", `{"metadata":{"items":${hugeArray(30_000)}}}`],
  ["metadata value: huge array (100,000 items)", `{"metadata":{"items":${hugeArray(100_000)}}}`],
  ["metadata value: long string", `{"metadata":{"note":${LONG_STRING}}}`],
  ["metadata key: long string", `{"metadata":{${LONG_STRING}:1}}`],
];

const PLACEHOLDER = "@@HOSTILE@@";

/** `base` with `field` set to the JSON text `json`, spliced in as text (deep values are never built). */
function bodyWith(base: Record<string, unknown>, field: string, json: string): string {
  const [head, tail] = JSON.stringify({ ...base, [field]: PLACEHOLDER }).split(`"${PLACEHOLDER}"`);
  return `${head}${json}${tail}`;
}

let api: ApiProcess | undefined;
let bearer = "";
let userId = "";
let before: Record<string, string> = {};

/** Row count and md5 of each table a hostile body could write to. */
async function checksum(): Promise<Record<string, string>> {
  const result: Record<string, string> = {};
  for (const table of ["users", "sessions", "one_time_tokens"]) {
    const row = await database.admin<{ n: number; sum: string | null }>(
      `SELECT count(*)::int AS n, md5(string_agg(t::text, ',' ORDER BY t::text)) AS sum FROM "${table}" t`,
    );
    result[table] = `${row.rows[0]?.n}:${row.rows[0]?.sum ?? "-"}`;
  }
  return result;
}

async function request(method: string, path: string, options: { body?: string; bearer?: string } = {}) {
  if (!api) throw new Error("the API process is not running");
  const headers: Record<string, string> = {};
  if (options.body !== undefined) headers["content-type"] = "application/json";
  if (options.bearer) headers.authorization = `Bearer ${options.bearer}`;
  const response = await fetch(`${api.base}${path}`, {
    method,
    headers,
    ...(options.body === undefined ? {} : { body: options.body }),
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  const text = await response.text();
  let code: string | undefined;
  try {
    code = (JSON.parse(text) as { error?: { code?: string } }).error?.code;
  } catch {
    code = undefined;
  }
  return { status: response.status, code };
}

/** Sends each case once and returns every answer that is not a 400 VALIDATION_FAILED / INVALID_JSON or a 413. */
async function sendAll(cases: Array<{ label: string; endpoint: Endpoint; body: string }>) {
  const problems: string[] = [];
  const tally = new Map<string, number>();
  for (const { label, endpoint, body } of cases) {
    let answer: { status: number; code: string | undefined };
    try {
      answer = await request(endpoint.method, endpoint.path, {
        body,
        ...(endpoint.session ? { bearer } : {}),
      });
    } catch (error) {
      problems.push(`${label}: no answer (${String(error)})`);
      continue;
    }
    const key = `${answer.status} ${answer.code ?? "-"}`;
    tally.set(key, (tally.get(key) ?? 0) + 1);
    const ok =
      (answer.status === 400 && (answer.code === "VALIDATION_FAILED" || answer.code === "INVALID_JSON")) ||
      (answer.status === 413 && answer.code === "PAYLOAD_TOO_LARGE");
    if (!ok) problems.push(`${label}: ${key}`);
  }
  return { problems, tally };
}

function casesFor(endpoint: Endpoint) {
  const name = `${endpoint.method} ${endpoint.path}`;
  const cases: Array<{ label: string; endpoint: Endpoint; body: string }> = [];
  for (const [label, body] of WHOLE_BODIES) cases.push({ label: `${name} body=${label}`, endpoint, body });
  for (const field of Object.keys(endpoint.base)) {
    for (const [label, json] of FIELD_VALUES) {
      cases.push({
        label: `${name} ${field}=${label}`,
        endpoint,
        body: bodyWith(endpoint.base, field, json),
      });
    }
  }
  return cases;
}

beforeAll(async () => {
  // A verified account with a live session, made directly on the same database: no mail needed.
  const user = await UsersService.create({ email: EMAIL, password: PASSWORD, firstName: "Ada" });
  await UsersService.update({ id: user.id, patch: { emailVerifiedAt: new Date() } });
  userId = user.id;
  bearer = (await SessionsService.create({ userId: user.id, authMethod: "password", ipAddress: "127.0.0.1" }))
    .token;
  api = await startApiProcess({
    DATABASE_URL: database.url,
    APP_URL: "http://app.drill.test",
    // Info, not the default warn: every request leaves an access-log line, which proves the output is read.
    LOG_LEVEL: "info",
    // Limits out of the way: a 429 would hide what the body does.
    ...NO_RATE_LIMITS,
  });
  await api.ready();
  // The session's first use may write (a sliding expiry); it happens before the checksum.
  expect((await request("GET", "/v1/users/me", { bearer })).status).toBe(200);
  before = await checksum();
});

afterAll(async () => {
  await api?.stop();
});

/**
 * After a batch of hostile requests: the API still answers, logged no error or stack overflow, answered no 5xx,
 * and wrote nothing. Checked after each test, so no test relies on another having run first.
 */
async function expectUnharmed(sent: number): Promise<void> {
  if (!api) throw new Error("the API process is not running");
  // /readyz checks the database; the account and its session are intact.
  expect((await request("GET", "/readyz")).status).toBe(200);
  expect((await request("GET", "/v1/users/me", { bearer })).status).toBe(200);
  expect(await UsersService.findById(userId)).not.toBeNull();
  expect(await checksum()).toEqual(before);
  expect(api.child.exitCode).toBeNull();
  // Log lines are written in batches of up to 10 ms.
  await new Promise((resolve) => setTimeout(resolve, 100));
  const output = api.output();
  // The output really is captured: one access-log line per request, and none of them a 5xx.
  const access = output.split("\n").filter((line) => line.includes('"msg":"request"'));
  expect(access.length).toBeGreaterThanOrEqual(sent);
  const lines = output.split("\n");
  expect({
    serverErrors: access.filter((line) => /"status":5\d\d/.test(line)),
    errorLogs: lines.filter((line) => /"level":(50|60)/.test(line)),
    stackOverflows: lines.filter((line) => /RangeError|Maximum call stack/.test(line)),
  }).toEqual({ serverErrors: [], errorLogs: [], stackOverflows: [] });
}

describe("drill hostile bodies (real API process over HTTP)", () => {
  it("refuses deep nesting, huge arrays and long strings in the users' metadata with a 400 or 413", async () => {
    const patch = ENDPOINTS.find((endpoint) => endpoint.method === "PATCH");
    if (!patch) throw new Error("no PATCH endpoint");
    const cases = METADATA_BODIES.map(([label, body]) => ({
      label: `PATCH /v1/users/me ${label}`,
      endpoint: patch,
      body,
    }));
    const { problems, tally } = await sendAll(cases);
    expect(problems).toEqual([]);
    console.log(`drill hostile bodies (metadata): ${[...tally].map(([k, n]) => `${k} x${n}`).join(", ")}`);
    await expectUnharmed(cases.length);
  });

  it("refuses hostile whole bodies and hostile fields on every JSON endpoint with a 400 or 413", async () => {
    const cases = ENDPOINTS.flatMap(casesFor);
    const { problems, tally } = await sendAll(cases);
    expect(problems).toEqual([]);
    console.log(`drill hostile bodies (endpoints): ${[...tally].map(([k, n]) => `${k} x${n}`).join(", ")}`);
    // At least one access line per request sent (more when the other test ran first).
    expect(cases.length).toBeGreaterThan(ENDPOINTS.length * WHOLE_BODIES.length);
    await expectUnharmed(cases.length);
  });
});
