// A real SMTP server on 127.0.0.1 that keeps every mail it receives, for tests that run the API process with
// SMTP_URL pointing at it; and the helpers that read links out of those mails.
import type { AddressInfo } from "node:net";
import { SMTPServer } from "smtp-server";

export interface CapturedMail {
  to: string[];
  raw: string;
}

export interface MailCatcher {
  url: string;
  mails: CapturedMail[];
  /** The `count`-th mail to `to` (1-based), waiting up to 15 s for it. */
  waitFor(to: string, count: number, describe?: () => string): Promise<CapturedMail>;
  close(): Promise<void>;
}

/** Quoted-printable soft breaks and escapes, enough to read a link out of a text/plain mail. */
export function decodeQuotedPrintable(text: string): string {
  return text
    .replace(/=\r?\n/g, "")
    .replace(/=([0-9A-F]{2})/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)));
}

/** The first `<origin><path>?token=...` link in the mail, whole. */
export function linkIn(mail: CapturedMail, origin: string, path: string): string {
  const body = decodeQuotedPrintable(mail.raw);
  const escaped = `${origin}${path}`.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const match = new RegExp(`${escaped}\\?token=[A-Za-z0-9_-]+`).exec(body);
  if (!match) throw new Error(`no ${origin}${path} link in:\n${body}`);
  return match[0];
}

export async function startMailCatcher(): Promise<MailCatcher> {
  const mails: CapturedMail[] = [];
  const smtp = new SMTPServer({
    authOptional: true,
    disabledCommands: ["STARTTLS", "AUTH"],
    logger: false,
    onData(stream, session, callback) {
      const chunks: Buffer[] = [];
      stream.on("data", (chunk: Buffer) => chunks.push(chunk));
      stream.on("end", () => {
        mails.push({
          to: session.envelope.rcptTo.map((rcpt) => rcpt.address),
          raw: Buffer.concat(chunks).toString("utf8"),
        });
        callback();
      });
    },
  });
  await new Promise<void>((resolve) => smtp.listen(0, "127.0.0.1", () => resolve()));
  const port = (smtp.server.address() as AddressInfo).port;
  return {
    url: `smtp://127.0.0.1:${port}`,
    mails,
    async waitFor(to, count, describe) {
      const deadline = Date.now() + 15_000;
      for (;;) {
        const found = mails.filter((mail) => mail.to.includes(to))[count - 1];
        if (found) return found;
        if (Date.now() > deadline)
          throw new Error(`mail #${count} to ${to} not received\n${describe?.() ?? ""}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    },
    close: () => new Promise<void>((resolve) => smtp.close(() => resolve())),
  };
}
