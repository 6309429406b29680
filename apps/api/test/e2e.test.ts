// End to end: the real server process (bun src/index.ts) on a real database, sending real mail over SMTP to
// an smtp-server on 127.0.0.1 that captures it.
import { createApiClient } from "@repo/client";
import { createTestDatabase, type TestDatabase } from "@repo/db/testing";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { errorSchema, sessionSchema, signedInSchema, userSchema } from "../src/openapi.ts";
import { type ApiProcess, scrapeMetrics, startApiProcess } from "./process.ts";
import { type CapturedMail, linkIn, type MailCatcher, startMailCatcher } from "./smtp.ts";

let mail: MailCatcher;
let database: TestDatabase;
let server: ApiProcess | undefined;
let base = "";

const waitForMail = (to: string, count: number) => mail.waitFor(to, count, () => server?.output() ?? "");
const tokenIn = (captured: CapturedMail, path: string) =>
  new URL(linkIn(captured, "http://app.e2e.test", path)).searchParams.get("token") ?? "";

async function api(method: string, path: string, options: { body?: unknown; bearer?: string } = {}) {
  const headers: Record<string, string> = {};
  if (options.body !== undefined) headers["content-type"] = "application/json";
  if (options.bearer) headers.authorization = `Bearer ${options.bearer}`;
  headers["x-auth-mode"] = "bearer";
  const response = await fetch(`${base}${path}`, {
    method,
    headers,
    ...(options.body === undefined ? {} : { body: JSON.stringify(options.body) }),
  });
  const text = await response.text();
  // biome-ignore lint/suspicious/noExplicitAny: reading JSON answers in a test
  const json: any = text ? JSON.parse(text) : undefined;
  return {
    status: response.status,
    json,
    headers: response.headers,
  };
}

beforeAll(async () => {
  mail = await startMailCatcher();
  database = await createTestDatabase({ empty: true });
  server = await startApiProcess({
    DATABASE_URL: database.url,
    APP_URL: "http://app.e2e.test",
    SMTP_URL: mail.url,
    MAIL_FROM: "no-reply@e2e.test",
  });
  base = server.base;
  await server.ready(30_000);
});

afterAll(async () => {
  await server?.stop();
  await mail?.close();
  await database?.drop();
});

describe("end to end over HTTP and SMTP", () => {
  it("sign-up → verify mail → verify → sign-out → sign-in → forgot → reset → old sessions dead", async () => {
    const email = "e2e-user@example.com";
    const signUp = await api("POST", "/v1/auth/sign-up", { body: { email, password: "first password 123" } });
    // No session before the address is proven; the mailed link signs in.
    expect(signUp.status).toBe(202);
    expect(signUp.headers.get("set-cookie")).toBeNull();

    const verifyMail = await waitForMail(email, 1);
    expect(verifyMail.raw).toContain("no-reply@e2e.test");
    const verify = await api("POST", "/v1/auth/email/verify", {
      body: { token: tokenIn(verifyMail, "/verify-email"), password: "first password 123" },
    });
    expect(verify.status).toBe(200);
    expect(verify.json.user.emailVerifiedAt).not.toBeNull();
    const firstToken = verify.json.token as string;

    expect((await api("POST", "/v1/auth/sign-out", { bearer: firstToken })).status).toBe(204);
    expect((await api("GET", "/v1/auth/session", { bearer: firstToken })).status).toBe(401);

    const signIn = await api("POST", "/v1/auth/sign-in", { body: { email, password: "first password 123" } });
    expect(signIn.status).toBe(200);
    const secondToken = signIn.json.token as string;
    expect((await api("GET", "/v1/users/me", { bearer: secondToken })).json.user.email).toBe(email);
    // The session cache is on by default: a repeated check is answered from memory (the same JSON text, built
    // once per entry), and a profile edit shows in the very next check.
    const checked = await api("GET", "/v1/auth/session", { bearer: secondToken });
    const again = await api("GET", "/v1/auth/session", { bearer: secondToken });
    expect(again.json).toEqual(checked.json);
    const edited = await api("PATCH", "/v1/users/me", { bearer: secondToken, body: { firstName: "Grace" } });
    expect(edited.status).toBe(200);
    expect((await api("GET", "/v1/auth/session", { bearer: secondToken })).json.user.firstName).toBe("Grace");

    expect((await api("POST", "/v1/auth/password/forgot", { body: { email } })).status).toBe(202);
    const resetMail = await waitForMail(email, 2);
    const reset = await api("POST", "/v1/auth/password/reset", {
      body: { token: tokenIn(resetMail, "/reset-password"), password: "second password 456" },
    });
    expect(reset.status).toBe(200);

    expect((await api("GET", "/v1/auth/session", { bearer: secondToken })).status).toBe(401);
    expect(
      (await api("POST", "/v1/auth/sign-in", { body: { email, password: "first password 123" } })).status,
    ).toBe(401);
    const fresh = await api("POST", "/v1/auth/sign-in", { body: { email, password: "second password 456" } });
    expect(fresh.status).toBe(200);

    const metrics = await scrapeMetrics(base);
    expect(metrics).toContain(
      'http_requests_total{method="POST",route="/v1/auth/password/reset",status="200"} 1',
    );
    expect(metrics).toMatch(/^db_session_cache_lookups_total\{result="hit"\} [1-9]/m);
    expect(server?.output()).not.toContain("second password");
  });
});

describe("the typed client (@repo/client) against the real server", () => {
  it("signs up, confirms the mailed link, reads the session, lists sessions and signs out; answers match the description", async () => {
    const client = createApiClient({ baseUrl: base, auth: "bearer" });
    const email = "e2e-client@example.com";
    const password = "client password 789";

    const signUp = await client.POST("/v1/auth/sign-up", { body: { email, password } });
    expect(signUp.response.status).toBe(202);
    expect(signUp.data).toEqual({ status: "check_email" });

    const verify = await client.POST("/v1/auth/email/verify", {
      body: { token: tokenIn(await waitForMail(email, 1), "/verify-email"), password },
    });
    if (!verify.data) throw new Error(`verify failed: ${JSON.stringify(verify.error)}`);
    const signedIn = signedInSchema.parse(verify.data);
    expect(signedIn.user.email).toBe(email);
    client.setToken(verify.data.token);

    const session = await client.GET("/v1/auth/session");
    if (!session.data) throw new Error(`session failed: ${JSON.stringify(session.error)}`);
    expect(userSchema.parse(session.data.user).id).toBe(signedIn.user.id);
    expect(sessionSchema.parse(session.data.session).id).toBe(signedIn.session.id);

    const sessions = await client.GET("/v1/auth/sessions");
    expect(sessions.data?.sessions.map((s) => sessionSchema.parse(s).current)).toEqual([true]);

    const signOut = await client.POST("/v1/auth/sign-out");
    expect(signOut.response.status).toBe(204);

    // The same token is dead now; the error answer is typed and carries a documented code.
    const after = await client.GET("/v1/auth/session");
    expect(after.response.status).toBe(401);
    expect(errorSchema.parse(after.error).error.code).toBe("UNAUTHENTICATED");

    const wrong = await client.POST("/v1/auth/sign-in", { body: { email, password: "not the password" } });
    expect(wrong.error?.error.code).toBe("INVALID_CREDENTIALS");
  });
});
