// The user routes run their queries in the signed-in user's scope (row-level security, migration 0007): each
// request to them opens a transaction whose BEGIN round trip sets that user, and never another.
import { getPool } from "@repo/db";
import { useTestDatabase } from "@repo/db/testing";
import { afterAll, beforeAll, beforeEach, describe, expect, it, vi } from "vitest";
import { call, makeApp, PASSWORD, signUp, type TestApp } from "./helpers.ts";

useTestDatabase();

let t: TestApp;
beforeEach(() => {
  t = makeApp();
});

const sent: string[] = [];
beforeAll(async () => {
  // What every pooled client sends: node-postgres's Client.prototype.query, found from a client of the pool.
  const client = await getPool().connect();
  let proto: object | null = Object.getPrototypeOf(client);
  while (proto && !Object.hasOwn(proto, "query")) proto = Object.getPrototypeOf(proto);
  client.release();
  if (!proto) throw new Error("no query method on the pool's clients");
  const target = proto as { query: (...args: unknown[]) => unknown };
  const query = target.query;
  vi.spyOn(target, "query").mockImplementation(function (this: unknown, ...args: unknown[]) {
    const first = args[0] as string | { text?: string };
    sent.push(typeof first === "string" ? first : String(first?.text));
    return query.apply(this, args);
  });
});
afterAll(() => {
  vi.restoreAllMocks();
});

/** The user ids the request's scoped transactions were opened for. */
async function scopesOf(
  run: () => Promise<{ status: number }>,
): Promise<{ status: number; scopes: string[] }> {
  sent.length = 0;
  const { status } = await run();
  const scopes = sent
    .map((text) => /SET LOCAL app\.user_id = '([0-9a-f-]{36})'/.exec(text)?.[1])
    .filter((id): id is string => id !== undefined);
  return { status, scopes };
}

describe("the user routes run in the user's scope", () => {
  it("sessions, linked accounts, security events, profile and account deletion", async () => {
    const { token, user } = await signUp(t);
    const other = await call(t, "POST", "/v1/auth/sign-in", {
      body: { email: user.email, password: PASSWORD },
    });
    const routes: [string, string, unknown?][] = [
      ["GET", "/v1/auth/sessions"],
      ["DELETE", `/v1/auth/sessions/${other.json.session.id}`],
      ["POST", "/v1/auth/sessions/revoke-others"],
      ["GET", "/v1/auth/accounts"],
      ["GET", "/v1/users/me/security-events"],
      ["PATCH", "/v1/users/me", { firstName: "Scoped" }],
      ["DELETE", "/v1/users/me", { password: PASSWORD }],
    ];
    for (const [method, path, body] of routes) {
      const { status, scopes } = await scopesOf(() =>
        call(t, method, path, { bearer: token, ...(body === undefined ? {} : { body }) }),
      );
      expect(status, `${method} ${path}`).toBeLessThan(300);
      expect(scopes.length, `${method} ${path} opened a scoped transaction`).toBeGreaterThan(0);
      expect(new Set(scopes), `${method} ${path}`).toEqual(new Set([user.id]));
    }
  });
});
