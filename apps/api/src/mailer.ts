// Outgoing mail. One small interface; SMTP (nodemailer) in production, a log mailer in development and an
// in-memory mailer in tests (a real implementation that keeps what it is given).
import nodemailer from "nodemailer";

export interface MailMessage {
  to: string;
  subject: string;
  text: string;
}

export interface Mailer {
  send(message: MailMessage): Promise<void>;
}

/** Sends through the SMTP server of `url` (smtp://user:pass@host:port or smtps://...). */
export function smtpMailer(url: string, from: string): Mailer & { close(): void } {
  // Bounded waits: nodemailer's defaults (minutes) would hold a shutdown hostage to a stuck SMTP server.
  const parsed = new URL(url);
  const transport = nodemailer.createTransport({
    host: parsed.hostname,
    port: parsed.port ? Number(parsed.port) : parsed.protocol === "smtps:" ? 465 : 587,
    secure: parsed.protocol === "smtps:",
    ...(parsed.username
      ? { auth: { user: decodeURIComponent(parsed.username), pass: decodeURIComponent(parsed.password) } }
      : {}),
    connectionTimeout: 10_000,
    greetingTimeout: 10_000,
    socketTimeout: 30_000,
  });
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
