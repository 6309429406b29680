// The pages behind the mailed links and the docs page, in a real headless Chromium (Debian's `chromium`, driven
// by playwright-core) against the real server process, with mail captured over SMTP. Each flow is done as a
// person would: open the link from the mail, fill the form, press the button. Screenshots go to docs/screens/.
import { existsSync, mkdirSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { createApiClient } from "@repo/client";
import { createTestDatabase, queryOnce, type TestDatabase } from "@repo/db/testing";
import { type Browser, type BrowserContext, chromium, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { type ApiProcess, startApiProcess } from "./process.ts";
import { linkIn, type MailCatcher, startMailCatcher } from "./smtp.ts";

const CHROMIUM = process.env.CHROMIUM_PATH ?? "/usr/bin/chromium";
// CI installs Chromium (.ci/run): there a missing browser fails the run instead of skipping these tests.
const available = existsSync(CHROMIUM);
if (!available && process.env.CI) throw new Error(`no Chromium at ${CHROMIUM}: .ci/run installs it`);

const screens = fileURLToPath(new URL("../../../docs/screens/", import.meta.url));
const PASSWORD = "a long and unusual passphrase 42";

let mail: MailCatcher;
let database: TestDatabase;
let server: ApiProcess;
let browser: Browser;
let base = "";

/** Everything a GET of a link could have changed: tokens (use, attempts, deletion), sessions, users. */
async function snapshot(): Promise<string> {
  const tokens = await queryOnce(
    database.url,
    "SELECT id, used_at, deleted_at, attempts, expires_at FROM one_time_tokens ORDER BY id",
  );
  const sessions = await queryOnce(
    database.url,
    "SELECT id, status, last_accessed_at FROM sessions ORDER BY id",
  );
  const users = await queryOnce(
    database.url,
    "SELECT id, email_verified_at, password_hash, updated_at FROM users ORDER BY id",
  );
  return JSON.stringify([tokens.rows, sessions.rows, users.rows]);
}

/** A fresh browser (no cookies) whose every request must go to the server under test. */
async function freshPage(viewport = { width: 900, height: 700 }): Promise<{
  context: BrowserContext;
  page: Page;
  foreign: string[];
  cspErrors: string[];
}> {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const foreign: string[] = [];
  const cspErrors: string[] = [];
  page.on("request", (request) => {
    if (!request.url().startsWith(base) && !request.url().startsWith("data:")) foreign.push(request.url());
  });
  page.on("console", (message) => {
    if (message.type() === "error" && /Content Security Policy|Refused to/i.test(message.text())) {
      cspErrors.push(message.text());
    }
  });
  return { context, page, foreign, cspErrors };
}

const shot = (page: Page, name: string, fullPage = true) =>
  page.screenshot({ path: `${screens}${name}.png`, fullPage });
const bearerClient = () => createApiClient({ baseUrl: base, auth: "bearer" });

beforeAll(async () => {
  if (!available) return;
  mkdirSync(screens, { recursive: true });
  mail = await startMailCatcher();
  database = await createTestDatabase({ empty: true });
  server = await startApiProcess((url) => ({
    DATABASE_URL: database.url,
    APP_URL: url,
    SMTP_URL: mail.url,
    MAIL_FROM: "no-reply@pages.test",
  }));
  base = server.base;
  await server.ready(30_000);
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true });
}, 90_000);

afterAll(async () => {
  await browser?.close();
  await server?.stop();
  await mail?.close();
  await database?.drop();
});

const waitForMail = (to: string, count: number) => mail.waitFor(to, count, () => server.output());

describe.skipIf(!available)("the pages behind the mailed links, in Chromium", () => {
  it("sign-up → the verification mail's link → confirm with the password → signed in by cookie; GET alone changes nothing", async () => {
    const email = "page-verify@example.com";
    const signUp = await bearerClient().POST("/v1/auth/sign-up", { body: { email, password: PASSWORD } });
    expect(signUp.response.status).toBe(202);
    const link = linkIn(await waitForMail(email, 1), base, "/verify-email");

    const before = await snapshot();
    const { context, page, foreign, cspErrors } = await freshPage();
    const opened = await page.goto(link);
    expect(opened?.status()).toBe(200);
    expect(opened?.headers()["cache-control"]).toBe("no-store");
    expect(opened?.headers()["referrer-policy"]).toBe("no-referrer");
    expect(opened?.headers()["x-frame-options"]).toBe("DENY");
    expect(opened?.headers()["content-security-policy"]).toContain("frame-ancestors 'none'");
    await expect(page.title()).resolves.toBe("Confirm your email address");
    await shot(page, "verify-email");
    expect(await snapshot()).toBe(before);

    // The form is usable from the keyboard alone, with labels and a visible focus.
    await page.getByLabel("The password you chose when signing up").focus();
    // (A string: it runs in the page, whose DOM types this Node test does not compile against.)
    const outline = await page.evaluate<string>("getComputedStyle(document.activeElement).outlineStyle");
    expect(outline).toBe("solid");
    await page.keyboard.type(PASSWORD);
    await page.keyboard.press("Enter");
    await page.waitForURL(`${base}/account`);
    await expect(page.locator("main").textContent()).resolves.toContain(`You are signed in as ${email}`);
    await shot(page, "signed-in");
    const cookies = await context.cookies(base);
    expect(cookies.find((cookie) => cookie.name === "__Host-session")?.httpOnly).toBe(true);

    // The cookie is a real session: the API answers with it too.
    const session = await page.request.get(`${base}/v1/auth/session`);
    expect(session.status()).toBe(200);
    expect(
      ((await session.json()) as { user: { emailVerifiedAt: string | null } }).user.emailVerifiedAt,
    ).not.toBe(null);

    // Signing out from the page ends it.
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.waitForURL(`${base}/account`);
    await expect(page.title()).resolves.toBe("Signed out");
    expect((await page.request.get(`${base}/v1/auth/session`)).status()).toBe(401);
    expect(foreign).toEqual([]);
    expect(cspErrors).toEqual([]);
    await context.close();
  });

  it("forgot password → the reset link → a weak password refused inline → a strong one → sign in with it", async () => {
    const email = "page-reset@example.com";
    const client = bearerClient();
    await client.POST("/v1/auth/sign-up", { body: { email, password: PASSWORD } });
    const verify = linkIn(await waitForMail(email, 1), base, "/verify-email");
    const token = new URL(verify).searchParams.get("token") ?? "";
    expect(
      (await client.POST("/v1/auth/email/verify", { body: { token, password: PASSWORD } })).response.status,
    ).toBe(200);

    expect((await client.POST("/v1/auth/password/forgot", { body: { email } })).response.status).toBe(202);
    const link = linkIn(await waitForMail(email, 2), base, "/reset-password");
    const before = await snapshot();
    const { context, page, foreign, cspErrors } = await freshPage();
    await page.goto(link);
    await expect(page.title()).resolves.toBe("Choose a new password");
    await shot(page, "reset-password");
    expect(await snapshot()).toBe(before);

    // Typed differently: refused before anything is checked.
    await page.getByLabel("New password", { exact: true }).fill("first try phrase 1");
    await page.getByLabel("The new password again").fill("first try phrase 2");
    await page.getByRole("button", { name: "Set the new password" }).click();
    await expect(page.locator("#problem").textContent()).resolves.toContain("The two passwords differ");

    // A common password: refused, with the reason shown next to the form, and the link still usable.
    await page.getByLabel("New password", { exact: true }).fill("password1234");
    await page.getByLabel("The new password again").fill("password1234");
    await page.getByRole("button", { name: "Set the new password" }).click();
    const problem = await page.locator("#problem").textContent();
    expect(problem).toMatch(/common/i);
    await shot(page, "reset-password-refused");
    expect(await snapshot()).toBe(before);

    const strong = "an entirely new passphrase 77";
    await page.getByLabel("New password", { exact: true }).fill(strong);
    await page.getByLabel("The new password again").fill(strong);
    await page.getByRole("button", { name: "Set the new password" }).click();
    await expect(page.title()).resolves.toBe("Your password is set");
    await shot(page, "reset-password-done");

    const signIn = await bearerClient().POST("/v1/auth/sign-in", { body: { email, password: strong } });
    expect(signIn.response.status).toBe(200);
    const old = await bearerClient().POST("/v1/auth/sign-in", { body: { email, password: PASSWORD } });
    expect(old.error?.error.code).toBe("INVALID_CREDENTIALS");

    // The used link now says so plainly and offers a new one.
    await page.goto(link);
    await expect(page.title()).resolves.toBe("This link has expired or was already used");
    expect(foreign).toEqual([]);
    expect(cspErrors).toEqual([]);
    await context.close();
  });

  it("magic link → 'Sign in as …' → confirm → signed in by cookie; the used link shows the 'already used' page and mails a new one", async () => {
    const email = "page-magic@example.com";
    const client = bearerClient();
    await client.POST("/v1/auth/sign-up", { body: { email, password: PASSWORD } });
    await waitForMail(email, 1);
    expect((await client.POST("/v1/auth/magic-link", { body: { email } })).response.status).toBe(202);
    const link = linkIn(await waitForMail(email, 2), base, "/magic-link");

    const before = await snapshot();
    const { context, page, foreign, cspErrors } = await freshPage();
    await page.goto(link);
    await expect(page.locator("main").textContent()).resolves.toContain(`Sign in as ${email}?`);
    await shot(page, "magic-link");
    expect(await snapshot()).toBe(before);

    await page.getByRole("button", { name: "Sign in" }).click();
    await page.waitForURL(`${base}/account`);
    await expect(page.locator("main").textContent()).resolves.toContain(`You are signed in as ${email}`);
    expect((await page.request.get(`${base}/v1/auth/session`)).status()).toBe(200);

    // Used: the same link opened again (a second browser, as if from another device) says so.
    const second = await freshPage();
    await second.page.goto(link);
    await expect(second.page.title()).resolves.toBe("This link has expired or was already used");
    await shot(second.page, "link-used");
    await second.page.getByLabel("Email address").fill(email);
    await second.page.getByRole("button", { name: "Send a new link" }).click();
    await expect(second.page.title()).resolves.toBe("Check your mail");
    const fresh = linkIn(await waitForMail(email, 3), base, "/magic-link");
    expect(fresh).not.toBe(link);
    expect([...foreign, ...second.foreign]).toEqual([]);
    expect([...cspErrors, ...second.cspErrors]).toEqual([]);
    await second.context.close();
    await context.close();
  });

  it("a form posted from another site is refused and uses nothing (CSRF)", async () => {
    const email = "page-csrf@example.com";
    const client = bearerClient();
    await client.POST("/v1/auth/sign-up", { body: { email, password: PASSWORD } });
    await waitForMail(email, 1);
    await client.POST("/v1/auth/magic-link", { body: { email } });
    const link = linkIn(await waitForMail(email, 2), base, "/magic-link");
    const token = new URL(link).searchParams.get("token") ?? "";

    // The attacker's page on another origin (a data: URL is an opaque origin) submits the victim's browser
    // to the magic link's POST, after the victim opened the link page (so the browser holds a form cookie).
    const { context, page } = await freshPage();
    await page.goto(link);
    const before = await snapshot();
    const attack = `<form method="post" action="${base}/magic-link"><input name="token" value="${token}"><input name="csrf" value="guess"></form><script>document.forms[0].submit()</script>`;
    await page.goto(`data:text/html,${encodeURIComponent(attack)}`);
    await page.waitForURL(`${base}/magic-link`);
    await expect(page.title()).resolves.toBe("This form has expired");
    expect(await snapshot()).toBe(before);
    expect((await page.request.get(`${base}/v1/auth/session`)).status()).toBe(401);
    await context.close();
  });

  it("/docs renders the API reference from this origin alone", async () => {
    const { context, page, foreign, cspErrors } = await freshPage({ width: 1280, height: 800 });
    await page.goto(`${base}/docs`);
    await page.getByRole("heading", { name: "Auth and data API" }).waitFor({ timeout: 20_000 });
    await page.getByText("Sign in with email and password").first().waitFor();
    // Scalar's hosted features are off: nothing offers to call its servers.
    expect(await page.getByText("Ask AI").count()).toBe(0);
    expect(await page.getByText("Generate MCP").count()).toBe(0);
    await shot(page, "docs", false); // (the whole reference is many screens long)
    expect(foreign).toEqual([]);
    expect(cspErrors).toEqual([]);
    await context.close();
  });
});
