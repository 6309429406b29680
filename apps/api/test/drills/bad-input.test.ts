// Fault drill: hostile input at the edge. Every field of every JSON endpoint gets malformed JSON, wrong
// types, huge strings, NUL bytes, invalid UTF-8, SQL metacharacters and LIKE wildcards. Each answer must be
// a 4xx with a stable, known code; the database must be unchanged (row counts and a checksum of every table);
// and the app must keep answering.
import { useTestDatabase } from "@repo/db/testing";
import { describe, expect, it } from "vitest";
import { API_ERRORS } from "../../src/errors.ts";
import { call, makeApp, PASSWORD, uniqueEmail } from "../helpers.ts";

const database = useTestDatabase();

const env = {
  RATE_LIMIT_SIGN_UP_PER_CLIENT: "100000",
  RATE_LIMIT_SIGN_IN_PER_CLIENT: "100000",
  RATE_LIMIT_SIGN_IN_PER_ACCOUNT: "100000",
  RATE_LIMIT_EMAIL_PER_CLIENT: "100000",
};

/** A well-formed (43-character base64url) token that was never issued. */
const UNKNOWN_TOKEN = "A".repeat(43);

const HOSTILE: ReadonlyArray<{ name: string; value: unknown }> = [
  { name: "number", value: 12345 },
  { name: "boolean", value: true },
  { name: "null", value: null },
  { name: "array", value: ["a@example.com"] },
  { name: "object", value: { $ne: "" } },
  { name: "huge string", value: "a".repeat(200_000) },
  { name: "long string", value: `${"b".repeat(5000)}@example.com` },
  { name: "NUL byte", value: "nul\u0000byte@example.com" },
  { name: "SQL quote", value: "' OR '1'='1' --" },
  { name: "SQL statement", value: "x'); DROP TABLE users; --" },
  { name: "LIKE wildcards", value: "%_%" },
  { name: "LIKE escape", value: "\\%\\_" },
  { name: "empty", value: "" },
];

interface Endpoint {
  path: string;
  /** A body that, left alone, is answered with a 4xx (an address already taken, a token never issued). */
  base: (email: string) => Record<string, unknown>;
  fields: string[];
  /**
   * Forgot-password and magic-link answer 202 to any string, by design: neither the answer nor its timing
   * says whether an address has an account. For them a 202 is allowed, and nothing may be written.
   */
  accepts202?: boolean;
}

const ENDPOINTS: Endpoint[] = [
  {
    path: "/v1/auth/sign-up",
    base: (email) => ({ email, password: PASSWORD, firstName: "Ada", lastName: "Lovelace" }),
    fields: ["email", "password", "firstName", "lastName"],
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
];

/** Row count and checksum of every public table. The cache is left out: rate-limit counters write to it. */
async function snapshot(): Promise<Record<string, string>> {
  const tables = await database.admin<{ tablename: string }>(
    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename <> 'cache' ORDER BY tablename",
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

describe("drill bad input", () => {
  it("answers every hostile value in every field with a known 4xx code and changes nothing", async () => {
    const t = makeApp({ env });
    const email = uniqueEmail("taken");
    expect((await call(t, "POST", "/v1/auth/sign-up", { body: { email, password: PASSWORD } })).status).toBe(
      201,
    );
    const known = new Set(Object.keys(API_ERRORS));
    const before = await snapshot();
    const codes = new Map<string, number>();
    let requests = 0;
    let accepted = 0;

    const check = async (
      label: string,
      send: () => Promise<{ status: number; code: unknown }>,
      accepts202 = false,
    ) => {
      const first = await send();
      const again = await send();
      requests += 2;
      // Stable: the same input gets the same answer.
      expect(again, label).toEqual(first);
      if (accepts202 && first.status === 202) {
        accepted += 1;
        return;
      }
      expect(first.status, label).toBeGreaterThanOrEqual(400);
      expect(first.status, label).toBeLessThan(500);
      expect(known.has(String(first.code)), `${label}: code ${String(first.code)}`).toBe(true);
      codes.set(String(first.code), (codes.get(String(first.code)) ?? 0) + 1);
    };

    for (const endpoint of ENDPOINTS) {
      for (const field of endpoint.fields) {
        for (const { name, value } of HOSTILE) {
          await check(
            `${endpoint.path} ${field}=${name}`,
            async () => {
              const res = await call(t, "POST", endpoint.path, {
                body: { ...endpoint.base(email), [field]: value },
              });
              return { status: res.status, code: res.json?.error?.code };
            },
            endpoint.accepts202,
          );
        }
        // Invalid UTF-8 inside the field's string.
        await check(
          `${endpoint.path} ${field}=invalid UTF-8`,
          async () => {
            const body = JSON.stringify({ ...endpoint.base(email), [field]: "@@INVALID@@" });
            const [head, tail] = body.split('"@@INVALID@@"');
            const bytes = Buffer.concat([
              Buffer.from(`${head}"`),
              Buffer.from([0xff, 0xfe, 0xc3, 0x28, 0x80]),
              Buffer.from(`"${tail}`),
            ]);
            const res = await t.app.request(endpoint.path, {
              method: "POST",
              headers: { "content-type": "application/json" },
              body: bytes,
            });
            await t.tasks.settle();
            const json = (await res.json().catch(() => undefined)) as
              | { error?: { code?: string } }
              | undefined;
            return { status: res.status, code: json?.error?.code };
          },
          endpoint.accepts202,
        );
      }
      for (const [name, rawBody] of [
        ["truncated JSON", '{"email": "a@'],
        ["not JSON", "email=a@example.com"],
        ["JSON array", "[]"],
        ["JSON string", '"hello"'],
        ["empty body", ""],
        ["extra field", JSON.stringify({ ...endpoint.base(email), isAdmin: true })],
      ] as const) {
        await check(`${endpoint.path} ${name}`, async () => {
          const res = await call(t, "POST", endpoint.path, { rawBody });
          return { status: res.status, code: res.json?.error?.code };
        });
      }
    }

    expect(await snapshot()).toEqual(before);
    // Nothing was an unexpected error, not even in the after-the-response work of the 202 endpoints.
    const errors = t.logs.filter((line) => Number(line.level) >= 50);
    expect(errors.map((line) => line.msg)).toEqual([]);
    // Still answering, and the account is intact.
    expect((await call(t, "GET", "/healthz")).status).toBe(200);
    expect((await call(t, "POST", "/v1/auth/sign-in", { body: { email, password: PASSWORD } })).status).toBe(
      200,
    );
    const tables = Object.keys(before).length;
    console.log(
      `drill bad input: ${requests} hostile requests: 4xx by code ${[...codes].map(([c, n]) => `${c} ${n}`).join(", ")}; ` +
        `${accepted} answered 202 by design (forgot-password / magic-link); ` +
        `${tables} tables unchanged (row counts and md5 checksums)`,
    );
  });
});
