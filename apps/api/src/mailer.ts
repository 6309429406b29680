// Outgoing mail. One small interface; SMTP (nodemailer) in production, a log mailer in development and an
// in-memory mailer in tests (a real implementation that keeps what it is given).
import { isIPv4 } from "node:net";
import nodemailer from "nodemailer";
import type { SMTPTransportOptions } from "nodemailer/lib/smtp-transport";

export interface MailMessage {
  to: string;
  subject: string;
  text: string;
}

export interface Mailer {
  send(message: MailMessage): Promise<void>;
}

/**
 * The TLS rule for SMTP_URL: `smtps://` is TLS from the first byte; `smtp://` must upgrade with STARTTLS or fail,
 * unless the host is a loopback relay (`localhost`, 127.0.0.0/8, `[::1]`) or the URL says `?requireTLS=false`;
 * `?requireTLS=true` insists even on loopback. No other query parameter is accepted.
 */
export const SMTP_TLS_RULE =
  "smtp:// requires STARTTLS except to a loopback host or with ?requireTLS=false; ?requireTLS=true forces it; smtps:// is implicit TLS";

/** Loopback only as written: a name or address that merely resolves to loopback gets no exemption (fail safe). */
function isLoopbackHost(host: string): boolean {
  const name = host.toLowerCase();
  if (name === "localhost" || name === "::1") return true;
  // isIPv4 accepts only dotted quads, so "127.1" or "0x7f.0.0.1" are not exempt: TLS stays required for them.
  return isIPv4(name) && name.startsWith("127.");
}

/**
 * The nodemailer transport options for `url` (smtp://user:pass@host:port or smtps://...), without connecting.
 * Throws an Error naming SMTP_URL (never its password) for a query it does not understand. See {@link SMTP_TLS_RULE}.
 */
export function smtpTransportOptions(url: string): SMTPTransportOptions {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    // The URL itself holds the password: say what is wrong, not what it was.
    throw new Error("SMTP_URL is not a valid URL");
  }
  if (parsed.protocol !== "smtp:" && parsed.protocol !== "smtps:") {
    throw new Error("SMTP_URL must be an smtp:// or smtps:// URL");
  }
  const implicitTls = parsed.protocol === "smtps:";

  // Only parameter names are echoed: a value could be a misplaced secret.
  const names = [...new Set(parsed.searchParams.keys())];
  const unknown = names.filter((name) => name !== "requireTLS");
  if (unknown.length > 0) {
    throw new Error(
      `SMTP_URL has unsupported query parameter(s) ${unknown.map((name) => JSON.stringify(name)).join(", ")}; only requireTLS=true or requireTLS=false is accepted`,
    );
  }
  const values = parsed.searchParams.getAll("requireTLS");
  if (values.length > 1) throw new Error("SMTP_URL gives requireTLS more than once; give it once");
  const requested = values[0];
  if (requested !== undefined && requested !== "true" && requested !== "false") {
    throw new Error('SMTP_URL requireTLS must be "true" or "false"');
  }
  if (implicitTls && requested === "false") {
    // Would read as "TLS off" but cannot turn implicit TLS off; refuse rather than let the URL mislead.
    throw new Error(
      "SMTP_URL requireTLS=false has no effect on smtps:// (TLS from the first byte); remove it",
    );
  }

  // URL keeps the brackets of an IPv6 literal; the socket wants the bare address.
  const host = parsed.hostname.replace(/^\[(.*)\]$/, "$1");
  const requireTLS = implicitTls ? undefined : requested ? requested === "true" : !isLoopbackHost(host);
  return {
    host,
    port: parsed.port ? Number(parsed.port) : implicitTls ? 465 : 587,
    secure: implicitTls,
    // Without requireTLS a man in the middle who strips STARTTLS from the EHLO answer gets the mail (and the
    // password) in clear text; with it nodemailer fails instead. Certificates are always verified (no tls override).
    ...(requireTLS === undefined ? {} : { requireTLS }),
    ...(parsed.username
      ? { auth: { user: decodeURIComponent(parsed.username), pass: decodeURIComponent(parsed.password) } }
      : {}),
    // Bounded waits: nodemailer's defaults (minutes) would hold a shutdown hostage to a stuck SMTP server.
    connectionTimeout: 10_000,
    greetingTimeout: 10_000,
    socketTimeout: 30_000,
  };
}

/** Sends through the SMTP server of `url` under {@link SMTP_TLS_RULE}; throws at once on a URL it refuses. */
export function smtpMailer(url: string, from: string): Mailer & { close(): void } {
  const transport = nodemailer.createTransport(smtpTransportOptions(url));
  return {
    async send(message) {
      await transport.sendMail({ from, to: message.to, subject: message.subject, text: message.text });
    },
    close: () => transport.close(),
  };
}

/** Development only: prints each message (links included) to stderr so you can click through. */
export function logMailer(write: (line: string) => void = (line) => process.stderr.write(line)): Mailer {
  return {
    async send(message) {
      write(`\n--- mail to ${message.to}: ${message.subject}\n${message.text}\n---\n`);
    },
  };
}

/** Keeps every message in `messages`; `last(to)` finds the newest one sent to an address. */
export function memoryMailer(): Mailer & {
  messages: MailMessage[];
  last(to: string): MailMessage | undefined;
} {
  const messages: MailMessage[] = [];
  return {
    messages,
    async send(message) {
      messages.push({ ...message });
    },
    last: (to) => messages.filter((message) => message.to === to).at(-1),
  };
}

/** Production without SMTP_URL: nothing can be sent; say so without the secret link. */
export function droppingMailer(warn: (fields: Record<string, unknown>, message: string) => void): Mailer {
  return {
    async send(message) {
      warn({ subject: message.subject }, "mail dropped: SMTP_URL is not set");
    },
  };
}

/** The first URL in a message body (for tests and the walk-through). */
export function linkIn(text: string): string | undefined {
  return /https?:\/\/\S+/.exec(text)?.[0];
}
