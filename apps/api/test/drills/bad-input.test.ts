// Fault drill: hostile input at the edge. Every field of every JSON endpoint gets malformed JSON, wrong
// types, huge strings, NUL bytes, invalid UTF-8, SQL metacharacters, LIKE wildcards, 10,000 levels of nested
// arrays and objects (which overflow recursive validators such as zod's z.json()) and huge arrays; so does
// the body as a whole. Each answer must be a 4xx with a stable, known code; the database must be unchanged
// (row counts and a checksum of every table); nothing may be logged as an error; and the app must keep
// answering.
import { SessionsService, UsersService } from "@repo/db";
import { useTestDatabase } from "@repo/db/testing";
import { describe, expect, it } from "vitest";
import { API_ERRORS } from "../../src/errors.ts";
import { call, makeApp, NO_RATE_LIMITS, type TestApp, uniqueEmail } from "../helpers.ts";

const database = useTestDatabase();

// Every limit out of the way: a 429 would hide what the input does.
const env = NO_RATE_LIMITS;

/** Not a common password and not the email's name: the account is created directly, not by sign-up. */
const PASSWORD = "quokka-lantern-harbour-7319";

/** A well-formed (43-character base64url) token that was never issued. */
const UNKNOWN_TOKEN = "A".repeat(43);

/** 10,000 levels in 20 KB (arrays) and 60 KB (objects): both fit the default 64 KB body limit. */
const DEEP_ARRAYS = `${"[".repeat(10_000)}${"]".repeat(10_000)}`;
const DEEP_OBJECTS = `${'{"a":'.repeat(10_000)}1${"}".repeat(10_000)}`;
/** A flat array of `items` zeros: 30,000 fit the default body limit, 100,000 do not (413). */
const hugeArray = (items: number) => `[${"0,".repeat(items - 1)}0]`;

/** Hostile values as JSON text: deep nesting is spliced in as text, never built and stringified. */
const HOSTILE: ReadonlyArray<{ name: string; json: string }> = [
  ...(
    [
      ["number", 12345],
      ["boolean", true],
      ["null", null],
      ["array", ["a@example.com"]],
      ["object", { $ne: "" }],
      ["huge string", "a".repeat(200_000)],
      ["long string", `${"b".repeat(5000)}@example.com`],
      ["long string within the body limit", "c".repeat(60_000)],
      ["NUL byte", "nul\u0000byte@example.com"],
      ["SQL quote", "' OR '1'='1' --"],
      ["SQL statement", "x'); DROP TABLE users; --"],
      ["LIKE wildcards", "%_%"],
      ["LIKE escape", "\\%\\_"],
      ["empty", ""],
    ] as const
  ).map(([name, value]) => ({ name, json: JSON.stringify(value) })),
  { name: "10,000 nested arrays", json: DEEP_ARRAYS },
  { name: "10,000 nested objects", json: DEEP_OBJECTS },
  { name: "huge array (30,000 items)", json: hugeArray(30_000) },
  { name: "huge array (100,000 items)", json: hugeArray(100_000) },
];

/** Bodies every endpoint gets as a whole. */
const RAW_BODIES: ReadonlyArray<readonly [string, string]> = [
  ["truncated JSON", '{"email": "a@'],
  ["not JSON", "email=a@example.com"],
  ["JSON array", "[]"],
  ["JSON string", '"hello"'],
  ["empty body", ""],
  ["10,000 nested arrays as the body", DEEP_ARRAYS],
  ["10,000 nested objects as the body", DEEP_OBJECTS],
  ["10,000 nested arrays and an unclosed end", "[".repeat(10_000)],
  ["huge array as the body (30,000 items)", hugeArray(30_000)],
  ["huge array as the body (100,000 items)", hugeArray(100_000)],
];

interface Endpoint {
  method?: "POST" | "PATCH" | "DELETE";
  path: string;
  /** Sent with the drill user's bearer token. */
  session?: boolean;
  /** A body that, left alone, is answered with a 4xx (a wrong password, a token never issued, ...). */
  base: (email: string) => Record<string, unknown>;
  fields: string[];
  /**
   * Sign-up, forgot-password and magic-link answer 202 to any well-formed address, by design: neither the
   * answer nor its timing says whether an address has an account. For them a 202 is allowed, and nothing
   * may be written (the base address already has a verified account).
   */
  accepts202?: boolean;
  /** More whole bodies, for where recursion really happens (inside metadata). */
  extraBodies?: ReadonlyArray<readonly [string, string]>;
}

const ENDPOINTS: Endpoint[] = [
  {
    path: "/v1/auth/sign-up",
    base: (email) => ({ email, password: PASSWORD, firstName: "Ada", lastName: "Lovelace" }),
    fields: ["email", "password", "firstName", "lastName"],
    accepts202: true,
  },
  {
    path: "/v1/auth/sign-in",
    base: (email) => ({ email, password: "not the password" }),
    fields: ["email", "password"],
  },
  {
    path: "/v1/auth/password/forgot",
    base: () => ({ email: "nobody@example.com" }),
    fields: ["email"],
    accepts202: true,
  },
  {
    path: "/v1/auth/magic-link",
    base: () => ({ email: "nobody@example.com" }),
    fields: ["email"],
    accepts202: true,
  },
  {
    path: "/v1/auth/password/reset",
    base: () => ({ token: UNKNOWN_TOKEN, password: "a new password 1" }),
    fields: ["token", "password"],
  },
  { path: "/v1/auth/magic-link/verify", base: () => ({ token: UNKNOWN_TOKEN }), fields: ["token"] },
  { path: "/v1/auth/email/verify", base: () => ({ token: UNKNOWN_TOKEN }), fields: ["token"] },
  {
    path: "/v1/auth/password/change",
    session: true,
    base: () => ({ currentPassword: "not the password", newPassword: "another passphrase 42" }),
    fields: ["currentPassword", "newPassword"],
  },
  {
    method: "PATCH",
    path: "/v1/users/me",
    session: true,
    // A patch is refused only when some field is invalid, so two fields are poisoned (a NUL in a name, a
    // javascript: URL): whichever field the hostile value replaces, the other still makes it a 400, and the
    // hostile value still goes through every parser and schema on the way.
    base: () => ({ firstName: "nul\u0000", avatarUrl: "javascript:alert(1)" }),
    fields: ["firstName", "lastName", "avatarUrl", "metadata"],
    extraBodies: [
      ["metadata value: 10,000 nested arrays", `{"metadata":{"x":${DEEP_ARRAYS}}}`],
      ["metadata value: 10,000 nested objects", `{"metadata":{"x":${DEEP_OBJECTS}}}`],
      ["metadata value: huge array (30,000 items)", `{"metadata":{"items":${hugeArray(30_000)}}}`],
      ["metadata value: huge array (100,000 items)", `{"metadata":{"items":${hugeArray(100_000)}}}`],
    ],
  },
];

/** Account deletion takes `{ password }`: a wrong or hostile one must delete nothing. */
const DELETE_ME: Endpoint = {
  method: "DELETE",
  path: "/v1/users/me",
  session: true,
  base: () => ({ password: "not the password" }),
  fields: ["password"],
};

const PLACEHOLDER = "@@HOSTILE@@";

/** The endpoint's base body with `field` set to the JSON text `json`, spliced in as text. */
function bodyWith(endpoint: Endpoint, email: string, field: string, json: string): string {
  const [head, tail] = JSON.stringify({ ...endpoint.base(email), [field]: PLACEHOLDER }).split(
    `"${PLACEHOLDER}"`,
  );
  return `${head}${json}${tail}`;
}

async function send(t: TestApp, endpoint: Endpoint, bearer: string, body: string | Buffer) {
  const headers: Record<string, string> = { "content-type": "application/json" };
  if (endpoint.session) headers.authorization = `Bearer ${bearer}`;
  const res = await t.app.request(endpoint.path, { method: endpoint.method ?? "POST", headers, body });
  // After-the-response work (mail, link requests) lands before the next request and the snapshot.
  await t.tasks.settle();
  const text = await res.text();
  let code: unknown;
  try {
    code = (JSON.parse(text) as { error?: { code?: unknown } }).error?.code;
  } catch {
    code = undefined;
  }
  return { status: res.status, code };
}

/**
 * Row count and checksum of every public table. The cache is left out (rate-limit counters write to it), and
 * so is the audit trail, which records failed sign-in attempts by design: trailSince() checks it.
 */
async function snapshot(): Promise<Record<string, string>> {
  const tables = await database.admin<{ tablename: string }>(
    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename NOT IN ('cache', 'audit_events', 'audit_chain') ORDER BY tablename",
  );
  const result: Record<string, string> = {};
  for (const { tablename } of tables.rows) {
    const row = await database.admin<{ n: number; sum: string | null }>(
      `SELECT count(*)::int AS n, md5(string_agg(t::text, ',' ORDER BY t::text)) AS sum FROM "${tablename}" t`,
    );
    result[tablename] = `${row.rows[0]?.n}:${row.rows[0]?.sum ?? "-"}`;
  }
  return result;
}

/** The newest event's seq: the drill's events are the ones after it. */
async function trailHead(): Promise<number> {
  const { rows } = await database.admin<{ seq: string }>("SELECT seq FROM audit_chain");
  return Number(rows[0]?.seq ?? 0);
}

/** What the trail recorded after `seq`: each action with its reason, counted. */
async function trailSince(seq: number): Promise<Record<string, number>> {
  const { rows } = await database.admin<{ what: string; n: number }>(
    "SELECT action || coalesce(':' || coalesce(details->>'reason', details->>'outcome'), '') AS what, count(*)::int AS n FROM audit_events WHERE seq > $1 GROUP BY 1",
    [seq],
  );
  return Object.fromEntries(rows.map((row) => [row.what, row.n]));
}

/** A verified account with a password and a live session, made directly: sign-up no longer signs in. */
async function drillUser(prefix: string) {
  const email = uniqueEmail(prefix);
  const user = await UsersService.create({ email, password: PASSWORD, firstName: "Ada" });
  await UsersService.update({ id: user.id, patch: { emailVerifiedAt: new Date() } });
  const { token } = await SessionsService.create({ userId: user.id, authMethod: "password" });
  return { email, id: user.id, bearer: token };
}

/**
 * Sends every hostile value in every field of `endpoints` (twice each), then every whole body. Collects
 * every answer that is not a stable, known 4xx (or an allowed 202) instead of stopping at the first.
 */
async function drive(t: TestApp, endpoints: Endpoint[], email: string, bearer: string) {
  const known = new Set(Object.keys(API_ERRORS));
  const problems: string[] = [];
  const codes = new Map<string, number>();
  let requests = 0;
  let accepted = 0;

  const check = async (
    label: string,
    sendOnce: () => Promise<{ status: number; code: unknown }>,
    accepts202 = false,
  ) => {
    const first = await sendOnce();
    const again = await sendOnce();
    requests += 2;
    // Stable: the same input gets the same answer.
    if (again.status !== first.status || again.code !== first.code) {
      problems.push(
        `${label}: unstable, ${first.status} ${String(first.code)} then ${again.status} ${String(again.code)}`,
      );
    }
    if (accepts202 && first.status === 202) {
      accepted += 1;
      return;
    }
    if (first.status < 400 || first.status >= 500 || !known.has(String(first.code))) {
      problems.push(`${label}: ${first.status} ${String(first.code)}`);
      return;
    }
    codes.set(String(first.code), (codes.get(String(first.code)) ?? 0) + 1);
  };

  for (const endpoint of endpoints) {
    const name = `${endpoint.method ?? "POST"} ${endpoint.path}`;
    for (const field of endpoint.fields) {
      for (const hostile of HOSTILE) {
        const body = bodyWith(endpoint, email, field, hostile.json);
        await check(
          `${name} ${field}=${hostile.name}`,
          () => send(t, endpoint, bearer, body),
          endpoint.accepts202,
        );
      }
      // Invalid UTF-8 inside the field's string.
      const [head, tail] = bodyWith(endpoint, email, field, `"${PLACEHOLDER}"`).split(PLACEHOLDER);
      const bytes = Buffer.concat([
        Buffer.from(head ?? ""),
        Buffer.from([0xff, 0xfe, 0xc3, 0x28, 0x80]),
        Buffer.from(tail ?? ""),
      ]);
      await check(
        `${name} ${field}=invalid UTF-8`,
        () => send(t, endpoint, bearer, bytes),
        endpoint.accepts202,
      );
    }
    const extraField = JSON.stringify({ ...endpoint.base(email), isAdmin: true });
    for (const [label, rawBody] of [
      ...RAW_BODIES,
      ["extra field", extraField] as const,
      ...(endpoint.extraBodies ?? []),
    ]) {
      await check(`${name} ${label}`, () => send(t, endpoint, bearer, rawBody));
    }
  }
  return { problems, codes, requests, accepted };
}

describe("drill bad input", () => {
  it("answers every hostile value in every field with a known 4xx code and changes nothing", async () => {
    const t = makeApp({ env });
    const { email, bearer } = await drillUser("taken");
    // The session is used once before the snapshot, so nothing the first use may write is counted.
    expect((await call(t, "GET", "/v1/users/me", { bearer })).status).toBe(200);
    const before = await snapshot();
    const head = await trailHead();

    const { problems, codes, requests, accepted } = await drive(t, ENDPOINTS, email, bearer);

    expect(problems).toEqual([]);
    expect(await snapshot()).toEqual(before);
    // The trail holds the attempts (what it is for: failed sign-ins, sign-ups aimed at the verified
    // account's address) and nothing else: no hostile request changed anything it would record.
    for (const what of Object.keys(await trailSince(head))) {
      expect(what).toMatch(/^(sign_in_failed:(invalid_credentials|email_not_verified)|sign_up:verified)$/);
    }
    // Nothing was an unexpected error, not even in the after-the-response work of the 202 endpoints.
    const errors = t.logs.filter((line) => Number(line.level) >= 50);
    expect(errors.map((line) => `${String(line.msg)} ${String(line.errMessage ?? "")}`)).toEqual([]);
    // Still answering, and the account is intact: its password signs in, its session still works.
    expect((await call(t, "GET", "/healthz")).status).toBe(200);
    const me = await call(t, "GET", "/v1/users/me", { bearer });
    expect(me.status).toBe(200);
    expect(me.json.user).toMatchObject({ email, firstName: "Ada", lastName: null, avatarUrl: null });
    expect(me.json.user.metadata ?? {}).toEqual({});
    expect((await call(t, "POST", "/v1/auth/sign-in", { body: { email, password: PASSWORD } })).status).toBe(
      200,
    );
    const tables = Object.keys(before).length;
    console.log(
      `drill bad input: ${requests} hostile requests: 4xx by code ${[...codes].map(([c, n]) => `${c} ${n}`).join(", ")}; ` +
        `${accepted} answered 202 by design (sign-up / forgot-password / magic-link); ` +
        `${tables} tables unchanged (row counts and md5 checksums)`,
    );
  });

  it("deletes no account for a hostile or wrong password", async () => {
    const t = makeApp({ env });
    const { email, id, bearer } = await drillUser("keep");
    expect((await call(t, "GET", "/v1/users/me", { bearer })).status).toBe(200);
    const before = await snapshot();

    const { problems, codes, requests } = await drive(t, [DELETE_ME], email, bearer);

    expect(problems).toEqual([]);
    expect(await snapshot()).toEqual(before);
    expect(t.logs.filter((line) => Number(line.level) >= 50).map((line) => line.msg)).toEqual([]);
    expect(await UsersService.findById(id)).not.toBeNull();
    expect((await call(t, "GET", "/v1/users/me", { bearer })).status).toBe(200);
    console.log(
      `drill bad input (account deletion): ${requests} hostile requests: 4xx by code ${[...codes].map(([c, n]) => `${c} ${n}`).join(", ")}; account kept`,
    );
  });

  it("answers hostile provider callbacks with a redirect carrying a stable code, and hostile redirectTo values with a 400", async () => {
    // A configured provider that cannot be reached: nothing here may get as far as talking to it.
    const t = makeApp({
      env: {
        ...env,
        OAUTH_ACME_ISSUER: "http://127.0.0.1:9/",
        OAUTH_ACME_CLIENT_ID: "drill-client",
        OAUTH_ACME_CLIENT_SECRET: "drill-secret",
        ACCOUNT_ENCRYPTION_KEYS: `a:${Buffer.alloc(32, 7).toString("base64")}`,
      },
    });
    const before = await snapshot();
    const values = [
      "",
      "a".repeat(10_000),
      "%00",
      "%ff%fe%c3%28",
      "' OR '1'='1' --",
      "%_%",
      "<script>alert(1)</script>",
      encodeURIComponent("https://evil.example/"),
      "A".repeat(43),
    ];
    const problems: string[] = [];
    let requests = 0;
    for (const name of ["state", "code", "error", "iss"]) {
      for (const value of values) {
        for (const query of [
          `${name}=${value}`,
          `${name}=${value}&${name}=${value}`,
          `state=x&${name}=${value}`,
        ]) {
          const response = await t.app.request(`/v1/auth/oauth/acme/callback?${query}`);
          requests++;
          const location = response.headers.get("location") ?? "";
          const error = location ? new URL(location).searchParams.get("error") : null;
          if (
            response.status !== 302 ||
            !location.startsWith("http://app.test") ||
            error !== "OAUTH_STATE_INVALID"
          ) {
            problems.push(`callback ${query.slice(0, 60)}: ${response.status} ${location.slice(0, 80)}`);
          }
          if (response.headers.get("set-cookie")?.includes("session="))
            problems.push(`callback ${query}: a session`);
        }
      }
    }
    for (const value of [
      "https://evil.example/",
      "//evil.example/x",
      "javascript:alert(1)",
      "http://app.test.evil.example/",
      "a".repeat(5000),
    ]) {
      const response = await t.app.request(
        `/v1/auth/oauth/acme/start?redirectTo=${encodeURIComponent(value)}`,
      );
      requests++;
      const code = ((await response.json().catch(() => ({}))) as { error?: { code?: string } }).error?.code;
      if (response.status !== 400 || code !== "VALIDATION_FAILED")
        problems.push(`start ${value.slice(0, 40)}: ${response.status} ${code}`);
    }
    expect(problems).toEqual([]);
    expect(await snapshot()).toEqual(before);
    expect(t.logs.filter((line) => Number(line.level) >= 50).map((line) => line.msg)).toEqual([]);
    console.log(
      `drill bad input (provider callback): ${requests} hostile requests, every one refused, nothing stored`,
    );
  });
});
