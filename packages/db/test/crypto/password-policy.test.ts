import { createHash, randomBytes } from "node:crypto";
import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from "node:http";
import { createRequire } from "node:module";
import type { AddressInfo } from "node:net";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import {
  assertPasswordStrength,
  commonPasswordCount,
  isPasswordBreached,
  passwordWeakness,
} from "../../src/crypto/password-policy.ts";
import { DbError } from "../../src/errors.ts";
import { type RecordedLine, recordingLogger } from "../../src/testing/index.ts";

// Checked before any test touches the list: importing the module must not load (decompress) the package.
const require = createRequire(import.meta.url);
const listModule = require.resolve("@zxcvbn-ts/language-common");
const loadedAtImport = listModule in require.cache;

const COMMON = "is one of the most common passwords";
const LOCAL_PART = "must not contain the name of your email address";
const BREACHED_REASON = "appears in a known data breach; choose another";

async function rejection(promise: Promise<unknown>): Promise<DbError> {
  const error = await promise.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(DbError);
  return error as DbError;
}

async function expectTooWeak(promise: Promise<unknown>, reason: string): Promise<void> {
  const error = await rejection(promise);
  expect(error.code).toBe("PASSWORD_TOO_WEAK");
  expect(error.details).toEqual({ password: reason });
  expect(error.message).toContain(reason);
}

describe("common passwords", () => {
  it("loads the list on first use, not at import", () => {
    expect(loadedAtImport).toBe(false);
    expect(passwordWeakness("password123")).toBe(COMMON);
    expect(listModule in require.cache).toBe(true);
  });

  it("holds at least the 10,000 most common passwords", () => {
    expect(commonPasswordCount()).toBeGreaterThanOrEqual(10_000);
  });

  it.each([
    "password123",
    "qwertyuiop",
    "Password1",
    "PASSWORD123",
    "QwErTyUiOp",
    "iloveyou",
    "trustno1",
    "12345678",
  ])("rejects %s", async (password) => {
    expect(passwordWeakness(password)).toBe(COMMON);
    await expectTooWeak(assertPasswordStrength(password), COMMON);
  });

  it("accepts a strong passphrase", async () => {
    const passphrase = "Tangerine kayak 7 orbit slowly";
    expect(passwordWeakness(passphrase)).toBeNull();
    expect(passwordWeakness(passphrase, "ada.lovelace@example.com")).toBeNull();
    await expect(assertPasswordStrength(passphrase, { email: "ada.lovelace@example.com" })).resolves.toBe(
      undefined,
    );
  });

  it("matches whole passwords, not substrings of them", () => {
    // "password" is on the list; a long passphrase merely containing it is not.
    expect(passwordWeakness("password")).toBe(COMMON);
    expect(passwordWeakness("my password is a lighthouse at dusk")).toBeNull();
  });
});

describe("the email's local part", () => {
  const email = "ada.lovelace@example.com";

  it("rejects a password containing it, whatever the case", async () => {
    expect(passwordWeakness("my ada.lovelace pass", email)).toBe(LOCAL_PART);
    expect(passwordWeakness("MY ADA.LOVELACE PASS", email)).toBe(LOCAL_PART);
    expect(passwordWeakness("my ada.lovelace pass", "Ada.Lovelace@Example.com")).toBe(LOCAL_PART);
    await expectTooWeak(assertPasswordStrength("my ada.lovelace pass", { email }), LOCAL_PART);
  });

  it("does not reject a part of it, or the domain", () => {
    expect(passwordWeakness("my lovelace pass 42", email)).toBeNull();
    expect(passwordWeakness("example.com is my favourite", email)).toBeNull();
  });

  it("is not checked without an email", () => {
    expect(passwordWeakness("my ada.lovelace pass")).toBeNull();
    expect(passwordWeakness("my ada.lovelace pass", null)).toBeNull();
    expect(passwordWeakness("my ada.lovelace pass", "")).toBeNull();
  });

  it("is not checked when shorter than 3 characters, and is from 3", () => {
    // Every password containing an "al" would be refused otherwise.
    expect(passwordWeakness("pal sunrise over the hills", "al@example.com")).toBeNull();
    expect(passwordWeakness("granada sunrise over the hills", "ada@example.com")).toBe(LOCAL_PART);
  });

  it("checks the part before a +tag, and the whole local part", () => {
    expect(passwordWeakness("ada sunrise over the hills", "ada+news@example.com")).toBe(LOCAL_PART);
    expect(passwordWeakness("ADA+NEWS sunrise hills", "ada+news@example.com")).toBe(LOCAL_PART);
    expect(passwordWeakness("news sunrise over the hills", "ada+news@example.com")).toBeNull();
    // A short name before the tag is not checked on its own; the whole local part still is.
    expect(passwordWeakness("ab sunrise over the hills", "ab+newsletter@example.com")).toBeNull();
    expect(passwordWeakness("ab+newsletter sunrise", "ab+newsletter@example.com")).toBe(LOCAL_PART);
  });

  it("takes everything before the last @ as the local part", () => {
    // With the first @, the local part would be '"quoted', which this password contains.
    expect(passwordWeakness('"quoted" sunrise hills', '"quoted@name"@example.com')).toBeNull();
    expect(passwordWeakness('say "quoted@name" twice', '"quoted@name"@example.com')).toBe(LOCAL_PART);
  });

  it("reports the common list first", () => {
    expect(passwordWeakness("michael1", "michael@example.com")).toBe(COMMON);
  });
});

// ---------------------------------------------------------------------------------------------------------
// The breach check, against a local stand-in for the Pwned Passwords range API.

function sha1(value: string): string {
  return createHash("sha1").update(value, "utf8").digest("hex").toUpperCase();
}

const BREACHED = "Tr0ub4dor&3 river otter";
const CLEAN = "Tangerine kayak 7 orbit slowly";
// Its suffix is in the answer, but only as a padding line (count 0).
const PADDED = "quiet lantern meadow 42";

const corpus = new Map<string, number>([
  [sha1(BREACHED), 3861],
  [sha1(PADDED), 0],
]);

interface Seen {
  method: string | undefined;
  url: string | undefined;
  headers: IncomingHttpHeaders;
}

let mode: "ok" | "error" | "garbage" | "empty" = "ok";
const seen: Seen[] = [];

function randomSuffix(): string {
  return randomBytes(18).toString("hex").slice(0, 35).toUpperCase();
}

function answerRange(url: string | undefined, res: ServerResponse): void {
  const match = /^\/range\/([0-9A-F]{5})$/.exec(url ?? "");
  if (!match?.[1]) {
    res.writeHead(404).end("not found");
    return;
  }
  const prefix = match[1];
  const lines = [randomSuffix(), randomSuffix(), randomSuffix()].map((suffix) => `${suffix}:0`);
  for (const [hash, count] of corpus) {
    if (hash.startsWith(prefix)) lines.splice(1, 0, `${hash.slice(5)}:${count}`);
  }
  // The real API answers with CRLF line ends.
  res.writeHead(200, { "content-type": "text/plain" }).end(lines.join("\r\n"));
}

async function listen(server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function close(server: Server): Promise<void> {
  // Keep-alive and never-answered connections would otherwise hold close() open.
  server.closeAllConnections();
  await new Promise<void>((resolve, reject) => server.close((error) => (error ? reject(error) : resolve())));
}

const standIn = createServer((req, res) => {
  seen.push({ method: req.method, url: req.url, headers: req.headers });
  if (mode === "error") res.writeHead(500).end("internal error");
  else if (mode === "garbage") res.writeHead(200, { "content-type": "text/html" }).end("<html>hi</html>");
  else if (mode === "empty") res.writeHead(200).end("");
  else answerRange(req.url, res);
});
// Accepts the request and never answers.
const silent = createServer(() => {});
// Sends the head and the start of a line, then nothing: the timeout must cover reading the body too.
const stalling = createServer((_req, res) => {
  res.writeHead(200, { "content-type": "text/plain" });
  res.write("0018A45C4D1DEF81644B54AB7F969B88D65:1\r\n");
});

let url = "";
let silentUrl = "";
let stallingUrl = "";
let downUrl = "";

beforeAll(async () => {
  url = await listen(standIn);
  silentUrl = await listen(silent);
  stallingUrl = await listen(stalling);
  const down = createServer();
  downUrl = await listen(down);
  await close(down);
});

afterAll(async () => {
  await Promise.all([close(standIn), close(silent), close(stalling)]);
});

beforeEach(() => {
  mode = "ok";
  seen.length = 0;
});

/** Exactly one warn line, with a reason, naming neither the password nor any part of its hash. */
function expectOneUnavailableWarning(lines: RecordedLine[], password: string): void {
  expect(lines).toHaveLength(1);
  const [line] = lines;
  expect(line?.level).toBe("warn");
  expect(line?.message).toBe("password breach check unavailable");
  expect(Object.keys(line?.fields ?? {})).toEqual(["reason"]);
  expect(typeof line?.fields.reason).toBe("string");
  const logged = JSON.stringify(line).toUpperCase();
  const hash = sha1(password);
  for (const secret of [password.toUpperCase(), hash, hash.slice(5), hash.slice(0, 5)]) {
    expect(logged).not.toContain(secret);
  }
}

describe("breach check", () => {
  it("rejects a breached password", async () => {
    expect(passwordWeakness(BREACHED)).toBeNull();
    expect(await isPasswordBreached(BREACHED, { url })).toBe(true);
    await expectTooWeak(assertPasswordStrength(BREACHED, { breachCheck: { url } }), BREACHED_REASON);
  });

  it("accepts a password that is not in the corpus", async () => {
    const { logger, lines } = recordingLogger();
    expect(await isPasswordBreached(CLEAN, { url }, logger)).toBe(false);
    await expect(assertPasswordStrength(CLEAN, { breachCheck: { url } }, logger)).resolves.toBe(undefined);
    expect(lines).toEqual([]);
  });

  it("sends only the 5-character prefix of the SHA-1, asking for padding", async () => {
    await isPasswordBreached(BREACHED, { url });
    const hash = sha1(BREACHED);
    expect(seen).toHaveLength(1);
    const [request] = seen;
    expect(request?.method).toBe("GET");
    expect(request?.url).toBe(`/range/${hash.slice(0, 5)}`);
    expect(request?.headers["add-padding"]).toBe("true");
    const sent = JSON.stringify(request);
    for (const secret of [BREACHED, encodeURIComponent(BREACHED), hash, hash.toLowerCase(), hash.slice(5)]) {
      expect(sent).not.toContain(secret);
    }
  });

  it("does not count padding lines (count 0)", async () => {
    expect(await isPasswordBreached(PADDED, { url })).toBe(false);
    expect(seen).toHaveLength(1);
  });

  it("accepts a base URL with a trailing slash", async () => {
    expect(await isPasswordBreached(BREACHED, { url: `${url}/` })).toBe(true);
    expect(seen[0]?.url).toBe(`/range/${sha1(BREACHED).slice(0, 5)}`);
  });

  it("uses the fetch it is given", async () => {
    let calls = 0;
    const counting = (async (...args: Parameters<typeof fetch>) => {
      calls++;
      return await fetch(...args);
    }) as typeof fetch;
    expect(await isPasswordBreached(BREACHED, { url, fetch: counting })).toBe(true);
    expect(calls).toBe(1);
  });

  it("is not made when not configured, or when the offline checks already refuse", async () => {
    await expect(assertPasswordStrength(BREACHED)).resolves.toBe(undefined);
    await expectTooWeak(assertPasswordStrength("password123", { breachCheck: { url } }), COMMON);
    await expectTooWeak(
      assertPasswordStrength("my ada.lovelace pass", {
        email: "ada.lovelace@example.com",
        breachCheck: { url },
      }),
      LOCAL_PART,
    );
    expect(seen).toEqual([]);
  });

  describe("fails open, with one warn line", () => {
    it("when the server is down", async () => {
      const { logger, lines } = recordingLogger();
      expect(await isPasswordBreached(BREACHED, { url: downUrl }, logger)).toBeUndefined();
      expectOneUnavailableWarning(lines, BREACHED);
      expect(lines[0]?.fields.reason).toMatch(/unreachable/);
    });

    it("when the server does not answer in time", async () => {
      const { logger, lines } = recordingLogger();
      const started = performance.now();
      await expect(
        assertPasswordStrength(BREACHED, { breachCheck: { url: silentUrl, timeoutMs: 200 } }, logger),
      ).resolves.toBe(undefined);
      const elapsed = performance.now() - started;
      expect(elapsed).toBeGreaterThanOrEqual(150);
      expect(elapsed).toBeLessThan(1500);
      expectOneUnavailableWarning(lines, BREACHED);
      expect(lines[0]?.fields.reason).toMatch(/timed out/);
    });

    it("when the body stops arriving", async () => {
      const { logger, lines } = recordingLogger();
      const started = performance.now();
      expect(
        await isPasswordBreached(BREACHED, { url: stallingUrl, timeoutMs: 200 }, logger),
      ).toBeUndefined();
      expect(performance.now() - started).toBeLessThan(1500);
      expectOneUnavailableWarning(lines, BREACHED);
    });

    it("when a substitute fetch ignores the signal", async () => {
      const { logger, lines } = recordingLogger();
      const never = (() => new Promise<Response>(() => {})) as unknown as typeof fetch;
      expect(
        await isPasswordBreached(BREACHED, { url, timeoutMs: 100, fetch: never }, logger),
      ).toBeUndefined();
      expectOneUnavailableWarning(lines, BREACHED);
    });

    it("on a 500 answer", async () => {
      mode = "error";
      const { logger, lines } = recordingLogger();
      await expect(assertPasswordStrength(BREACHED, { breachCheck: { url } }, logger)).resolves.toBe(
        undefined,
      );
      expect(seen).toHaveLength(1);
      expectOneUnavailableWarning(lines, BREACHED);
      expect(lines[0]?.fields.reason).toBe("HTTP 500");
    });

    it.each(["garbage", "empty"] as const)("on an unparsable answer (%s)", async (answer) => {
      mode = answer;
      const { logger, lines } = recordingLogger();
      expect(await isPasswordBreached(BREACHED, { url }, logger)).toBeUndefined();
      expectOneUnavailableWarning(lines, BREACHED);
      expect(lines[0]?.fields.reason).toBe("unparsable response");
    });
  });
});
