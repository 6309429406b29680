// The SMTP TLS rule (see SMTP_TLS_RULE in src/mailer.ts): the option decision as a pure function for hosts this
// machine must never contact, and real sends to smtp-server instances on 127.0.0.1 for the rest. A server that
// does not offer STARTTLS is exactly what a man in the middle who strips it from the EHLO answer presents.
import { execFile } from "node:child_process";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { SMTPServer } from "smtp-server";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { smtpMailer, smtpTransportOptions } from "../src/mailer.ts";

const PASSWORD = "hunter2-Secret";

describe("smtpTransportOptions (no connection made)", () => {
  it("requires STARTTLS for a non-loopback smtp:// host, with the existing auth and timeouts", () => {
    const options = smtpTransportOptions(`smtp://user:${PASSWORD}@mail.example.com:587`);
    expect(options).toMatchObject({
      host: "mail.example.com",
      port: 587,
      secure: false,
      requireTLS: true,
      auth: { user: "user", pass: PASSWORD },
      connectionTimeout: 10_000,
      greetingTimeout: 10_000,
      socketTimeout: 30_000,
    });
    expect(smtpTransportOptions("smtp://mail.example.com")).toMatchObject({ port: 587, requireTLS: true });
    // Never an override of certificate checks.
    expect(options.tls).toBeUndefined();
  });

  it("lets ?requireTLS=false opt out and ?requireTLS=true insist on loopback", () => {
    expect(smtpTransportOptions("smtp://mail.example.com:587?requireTLS=false").requireTLS).toBe(false);
    expect(smtpTransportOptions("smtp://mail.example.com:587?requireTLS=true").requireTLS).toBe(true);
    expect(smtpTransportOptions("smtp://127.0.0.1:2525?requireTLS=true").requireTLS).toBe(true);
    expect(smtpTransportOptions("smtp://localhost:2525?requireTLS=true").requireTLS).toBe(true);
  });

  it("exempts loopback hosts as written, and only those", () => {
    for (const [url, host] of [
      ["smtp://localhost:25", "localhost"],
      ["smtp://LocalHost:25", "LocalHost"],
      ["smtp://127.0.0.1:25", "127.0.0.1"],
      ["smtp://127.0.0.5:25", "127.0.0.5"],
      ["smtp://127.255.255.254:25", "127.255.255.254"],
      ["smtp://[::1]:25", "::1"],
      ["smtp://[0:0:0:0:0:0:0:1]:25", "::1"],
    ] as const) {
      expect(smtpTransportOptions(url), url).toMatchObject({ host, requireTLS: false });
    }
    // Names and spellings that only resolve to loopback (or look like it) keep the requirement: fail safe.
    for (const url of [
      "smtp://127.1:25",
      "smtp://localhost.example.com:25",
      "smtp://127.0.0.1.nip.io:25",
      "smtp://128.0.0.1:25",
      "smtp://10.0.0.1:25",
      "smtp://[::2]:25",
      "smtp://[::ffff:127.0.0.1]:25",
    ]) {
      expect(smtpTransportOptions(url).requireTLS, url).toBe(true);
    }
  });

  it("keeps smtps:// as implicit TLS", () => {
    const options = smtpTransportOptions(`smtps://user:${PASSWORD}@mail.example.com`);
    expect(options).toMatchObject({ host: "mail.example.com", port: 465, secure: true });
    expect(options.tls).toBeUndefined();
    expect(smtpTransportOptions("smtps://mail.example.com:2465?requireTLS=true")).toMatchObject({
      port: 2465,
      secure: true,
    });
  });

  it("refuses any other query at configuration time, naming SMTP_URL and not the password", () => {
    const base = `smtp://user:${PASSWORD}@mail.example.com:587`;
    for (const query of [
      "?requireTLS=yes",
      "?requireTLS=TRUE",
      "?requireTLS=1",
      "?requireTLS=",
      "?requireTLS",
      "?requiretls=false",
      "?ignoreTLS=true",
      "?requireTLS=false&secure=false",
      "?requireTLS=true&requireTLS=false",
    ]) {
      const url = `${base}${query}`;
      let error: unknown;
      try {
        smtpTransportOptions(url);
      } catch (caught) {
        error = caught;
      }
      expect(error, query).toBeInstanceOf(Error);
      const message = (error as Error).message;
      expect(message, query).toContain("SMTP_URL");
      expect(message, query).not.toContain(PASSWORD);
      // smtpMailer is where the server reads SMTP_URL: it refuses before any transport exists.
      expect(() => smtpMailer(url, "no-reply@example.com"), query).toThrow(/SMTP_URL/);
    }
    // TLS cannot be turned off on smtps://, so an URL saying so is refused rather than misleading.
    expect(() => smtpTransportOptions(`smtps://user:${PASSWORD}@mail.example.com?requireTLS=false`)).toThrow(
      /SMTP_URL.*smtps/,
    );
  });
});

interface Recorder {
  port: number;
  connections: number;
  logins: string[];
  senders: string[];
  messages: { raw: string; secure: boolean }[];
}

const servers: SMTPServer[] = [];

afterEach(async () => {
  await Promise.all(servers.splice(0).map((server) => new Promise<void>((resolve) => server.close(resolve))));
});

/** An SMTP server on 127.0.0.1 recording every stage a client reaches; closed after each test. */
async function startSmtp(tls?: { key: Buffer; cert: Buffer }): Promise<Recorder> {
  const recorder: Recorder = { port: 0, connections: 0, logins: [], senders: [], messages: [] };
  const server = new SMTPServer({
    logger: false,
    authOptional: true,
    // Like a careless relay (or an attacker): it would take a password over plain text.
    allowInsecureAuth: true,
    ...(tls ? { key: tls.key, cert: tls.cert } : { disabledCommands: ["STARTTLS"] }),
    onConnect(_session, callback) {
      recorder.connections += 1;
      callback();
    },
    onAuth(auth, _session, callback) {
      recorder.logins.push(auth.username ?? "");
      callback(null, { user: auth.username });
    },
    onMailFrom(address, _session, callback) {
      recorder.senders.push(address.address);
      callback();
    },
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      stream.on("end", () => {
        recorder.messages.push({ raw: Buffer.concat(chunks).toString("utf8"), secure: session.secure });
        callback();
      });
    },
  });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", () => resolve()));
  recorder.port = (server.server.address() as AddressInfo).port;
  return recorder;
}

async function sendWith(url: string, subject: string): Promise<void> {
  const mailer = smtpMailer(url, "no-reply@mailer.test");
  try {
    await mailer.send({ to: "someone@mailer.test", subject, text: "a reset link would be here" });
  } finally {
    mailer.close();
  }
}

describe("smtpMailer against a loopback server without STARTTLS", () => {
  it("refuses to send when TLS is required and the server does not offer STARTTLS (the stripping attack)", async () => {
    const smtp = await startSmtp();
    await expect(
      sendWith(`smtp://user:${PASSWORD}@127.0.0.1:${smtp.port}?requireTLS=true`, "must not leak"),
    ).rejects.toThrow(/STARTTLS/);
    // It did reach the server (so the refusal is the TLS rule, not a dead port) and gave away nothing.
    expect(smtp.connections).toBe(1);
    expect(smtp.logins).toEqual([]);
    expect(smtp.senders).toEqual([]);
    expect(smtp.messages).toEqual([]);
  });

  it("delivers to a plain loopback relay by default", async () => {
    const smtp = await startSmtp();
    await sendWith(`smtp://127.0.0.1:${smtp.port}`, "loopback default");
    expect(smtp.messages).toHaveLength(1);
    expect(smtp.messages[0]?.raw).toContain("Subject: loopback default");
    expect(smtp.messages[0]?.secure).toBe(false);
  });

  it("delivers with ?requireTLS=false", async () => {
    const smtp = await startSmtp();
    await sendWith(`smtp://user:${PASSWORD}@127.0.0.1:${smtp.port}?requireTLS=false`, "explicit opt-out");
    expect(smtp.logins).toEqual(["user"]);
    expect(smtp.messages).toHaveLength(1);
    expect(smtp.messages[0]?.raw).toContain("Subject: explicit opt-out");
  });
});

// STARTTLS for real, with certificate verification left on: the test makes a CA and a certificate for
// 127.0.0.1, and the sending process trusts that CA the way an operator would, through NODE_EXTRA_CA_CERTS.
// That variable is read at process start, so the send runs in a child `bun` (the production runtime) that
// imports src/mailer.ts; the child is bounded by a timeout and has exited when each test ends.
describe("smtpMailer with STARTTLS and a certificate", () => {
  const mailerModule = fileURLToPath(new URL("../src/mailer.ts", import.meta.url));
  let dir = "";
  let caFile = "";
  let tls: { key: Buffer; cert: Buffer };

  function openssl(args: string[]): Promise<void> {
    return new Promise((resolve, reject) => {
      execFile("openssl", args, { cwd: dir, timeout: 20_000 }, (error, _stdout, stderr) =>
        error ? reject(new Error(`openssl ${args[0]} failed: ${error.message}\n${stderr}`)) : resolve(),
      );
    });
  }

  beforeAll(async () => {
    dir = await mkdtemp(path.join(tmpdir(), "mailer-test-"));
    const ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    const days = ["-days", "1"];
    await openssl([
      "req",
      "-x509",
      ...ec,
      ...days,
      "-subj",
      "/CN=mailer test CA",
      "-keyout",
      "ca.key",
      "-out",
      "ca.pem",
    ]);
    await openssl(["req", ...ec, "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr"]);
    await writeFile(
      path.join(dir, "server.ext"),
      "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    );
    const signer = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-extfile", "server.ext"];
    await openssl(["x509", "-req", "-in", "server.csr", ...signer, ...days, "-out", "server.pem"]);
    caFile = path.join(dir, "ca.pem");
    tls = {
      key: await readFile(path.join(dir, "server.key")),
      cert: await readFile(path.join(dir, "server.pem")),
    };
  });

  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  /** Runs smtpMailer(url).send() in `bun`; resolves to its exit code and stderr. */
  function sendInBun(url: string, trustCa: boolean): Promise<{ code: number; stderr: string }> {
    const script = [
      "const { smtpMailer } = await import(process.env.MAILER_MODULE);",
      'const mailer = smtpMailer(process.env.MAILER_URL, "no-reply@mailer.test");',
      'try { await mailer.send({ to: "someone@mailer.test", subject: "over tls", text: "secret link" }); }',
      "finally { mailer.close(); }",
    ].join("\n");
    const env: NodeJS.ProcessEnv = { ...process.env, MAILER_MODULE: mailerModule, MAILER_URL: url };
    delete env.NODE_EXTRA_CA_CERTS;
    if (trustCa) env.NODE_EXTRA_CA_CERTS = caFile;
    return new Promise((resolve) => {
      execFile("bun", ["--eval", script], { env, timeout: 30_000 }, (error, _stdout, stderr) => {
        const code = error ? (typeof error.code === "number" ? error.code : -1) : 0;
        resolve({ code, stderr });
      });
    });
  }

  it("delivers over TLS with ?requireTLS=true when the certificate is trusted", async () => {
    const smtp = await startSmtp(tls);
    const result = await sendInBun(`smtp://user:${PASSWORD}@127.0.0.1:${smtp.port}?requireTLS=true`, true);
    expect(result, result.stderr).toMatchObject({ code: 0 });
    expect(smtp.logins).toEqual(["user"]);
    expect(smtp.messages).toHaveLength(1);
    expect(smtp.messages[0]?.raw).toContain("Subject: over tls");
    expect(smtp.messages[0]?.secure).toBe(true);
  });

  it("refuses an untrusted certificate (verification is on) and sends nothing", async () => {
    const smtp = await startSmtp(tls);
    const result = await sendInBun(`smtp://user:${PASSWORD}@127.0.0.1:${smtp.port}?requireTLS=true`, false);
    expect(result.code).not.toBe(0);
    expect(result.stderr).toMatch(/verify|certificate/i);
    expect(smtp.connections).toBe(1);
    expect(smtp.logins).toEqual([]);
    expect(smtp.senders).toEqual([]);
    expect(smtp.messages).toEqual([]);
  });
});
