// Test helpers: an app on the test database with an in-memory mailer and captured JSON log lines.
import { Writable } from "node:stream";
import { createApp } from "../src/app.ts";
import { backgroundTasks } from "../src/background.ts";
import { type ApiConfig, loadApiConfig } from "../src/config.ts";
import { createLogger } from "../src/logger.ts";
import { linkIn, memoryMailer } from "../src/mailer.ts";

export const APP_URL = "http://app.test";
export const ORIGIN = "http://app.test";
export const ADMIN_KEY = "admin-key-0123456789-abcdefghijklmnop";

/** Every rate limit out of the way, for drills where a 429 would hide what the input does. */
export const NO_RATE_LIMITS: Readonly<Record<string, string>> = {
  RATE_LIMIT_SIGN_UP_PER_CLIENT: "1000000",
  RATE_LIMIT_SIGN_IN_PER_CLIENT: "1000000",
  RATE_LIMIT_SIGN_IN_FAILURES_PER_ACCOUNT_NETWORK: "1000000",
  RATE_LIMIT_SIGN_IN_FAILURES_PER_ACCOUNT: "1000000",
  RATE_LIMIT_REAUTH_FAILURES_PER_SESSION: "1000000",
  RATE_LIMIT_EMAIL_PER_CLIENT: "1000000",
  RATE_LIMIT_EMAIL_PER_RECIPIENT: "1000000",
};

export function testConfig(env: Record<string, string> = {}): ApiConfig {
  return loadApiConfig({
    NODE_ENV: "test",
    APP_URL,
    ADMIN_API_KEY: ADMIN_KEY,
    LOG_LEVEL: "debug",
    // Many sign-ups and sign-ins per test file share one client address; tests of a limit set it themselves.
    RATE_LIMIT_SIGN_UP_PER_CLIENT: "10000",
    RATE_LIMIT_SIGN_IN_PER_CLIENT: "10000",
    ...env,
  });
}

export function makeApp(options: { env?: Record<string, string>; address?: string } = {}) {
  const logs: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk, _encoding, callback) {
      for (const line of String(chunk).split("\n")) if (line.trim()) logs.push(JSON.parse(line));
      callback();
    },
  });
  const mailer = memoryMailer();
  const tasks = backgroundTasks();
  let address = options.address ?? "203.0.113.1";
  const app = createApp({
    config: testConfig(options.env),
    logger: createLogger("debug", sink),
    mailer,
    getClientAddress: () => address,
    tasks,
  });
  return {
    app,
    mailer,
    tasks,
    logs,
    setAddress: (next: string) => {
      address = next;
    },
    /** The token in the newest mail to `to`. */
    tokenFromMail(to: string): string {
      const message = mailer.last(to);
      const url = message && linkIn(message.text);
      const token = url ? new URL(url).searchParams.get("token") : null;
      if (!token) throw new Error(`no link mailed to ${to}`);
      return token;
    },
  };
}

export type TestApp = ReturnType<typeof makeApp>;

/** JSON request helper: bearer token or cookie, Origin set for cookie requests unless told otherwise. */
export async function call(
  t: TestApp,
  method: string,
  path: string,
  options: {
    body?: unknown;
    bearer?: string;
    cookie?: string;
    headers?: Record<string, string>;
    rawBody?: string;
    /** Act as a browser: no `X-Auth-Mode: bearer`, so session tokens come as a cookie, not in the body. */
    browser?: boolean;
  } = {},
) {
  const headers: Record<string, string> = {};
  if (!options.browser && !options.cookie) headers["x-auth-mode"] = "bearer";
  if (options.body !== undefined || options.rawBody !== undefined)
    headers["content-type"] = "application/json";
  if (options.bearer) headers.authorization = `Bearer ${options.bearer}`;
  if (options.cookie) {
    headers.cookie = options.cookie;
    headers.origin = ORIGIN;
  }
  Object.assign(headers, options.headers);
  const init: RequestInit = { method, headers };
  if (options.rawBody !== undefined) init.body = options.rawBody;
  else if (options.body !== undefined) init.body = JSON.stringify(options.body);
  const response = await t.app.request(path, init);
  // Mail and other after-the-response work lands before the test looks at it.
  await t.tasks.settle();
  const text = await response.text();
  let json: unknown;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  // biome-ignore lint/suspicious/noExplicitAny: test convenience for reading JSON answers
  return { status: response.status, headers: response.headers, json: json as any, text };
}

let counter = 0;
export function uniqueEmail(prefix = "user"): string {
  counter += 1;
  return `${prefix}${counter}-${Date.now().toString(36)}@example.com`;
}

export const PASSWORD = "correct horse battery staple";

/** Signs up, follows the mailed verification link, and returns the bearer token and user. */
export async function signUp(t: TestApp, email = uniqueEmail(), password = PASSWORD) {
  const res = await call(t, "POST", "/v1/auth/sign-up", { body: { email, password } });
  if (res.status !== 202) throw new Error(`sign-up failed: ${res.status} ${res.text}`);
  const verified = await call(t, "POST", "/v1/auth/email/verify", {
    body: { token: t.tokenFromMail(email.toLowerCase()), password },
  });
  if (verified.status !== 200) throw new Error(`verification failed: ${verified.status} ${verified.text}`);
  return { email, token: verified.json.token as string, user: verified.json.user, res: verified };
}
