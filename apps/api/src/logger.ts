// Structured JSON logs (pino). Secrets never reach a log line: request bodies are not logged, and the
// redact paths below blank any field that could hold a password, token or cookie should one slip in.
import pino, { type DestinationStream, type Logger as PinoLogger } from "pino";

export type { PinoLogger };

export const REDACT_PATHS = [
  "password",
  "currentPassword",
  "newPassword",
  "token",
  "sessionToken",
  "authorization",
  "cookie",
  "*.password",
  "*.currentPassword",
  "*.newPassword",
  "*.token",
  "*.authorization",
  "*.cookie",
  "headers.authorization",
  "headers.cookie",
  'headers["set-cookie"]',
];

export function createLogger(level: string, destination?: DestinationStream): PinoLogger {
  const options = {
    level,
    base: { service: "api" },
    redact: { paths: REDACT_PATHS, censor: "[redacted]" },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  return destination ? pino(options, destination) : pino(options);
}
