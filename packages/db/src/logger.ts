// The optional logger every service takes. A pino logger fits it as is (`logger.audit` is the one method
// pino lacks: `withAudit(pino())` adds it). Nothing here ever receives secrets, tokens or password hashes.

export type LogFields = Record<string, unknown>;

export interface Logger {
  /** A state change worth keeping: who did what to which ids. */
  audit(fields: LogFields, message: string): void;
  error(fields: LogFields, message: string): void;
  warn(fields: LogFields, message: string): void;
  info(fields: LogFields, message: string): void;
  debug(fields: LogFields, message: string): void;
}

const noop = (): void => {};

/** The default: says nothing. */
export const noopLogger: Logger = { audit: noop, error: noop, warn: noop, info: noop, debug: noop };

/** A pino-shaped logger (`info(obj, msg)`, ...) plus `audit`, which goes to `info` with `audit: true`. */
export interface PinoLike {
  error(fields: LogFields, message: string): void;
  warn(fields: LogFields, message: string): void;
  info(fields: LogFields, message: string): void;
  debug(fields: LogFields, message: string): void;
}

export function withAudit(base: PinoLike): Logger {
  return {
    audit: (fields, message) => base.info({ ...fields, audit: true }, message),
    error: (fields, message) => base.error(fields, message),
    warn: (fields, message) => base.warn(fields, message),
    info: (fields, message) => base.info(fields, message),
    debug: (fields, message) => base.debug(fields, message),
  };
}

/** One JSON object per line on stderr: enough for scripts and development without a logging dependency. */
export function consoleLogger(minLevel: "debug" | "info" | "warn" | "error" = "info"): Logger {
  const order = { debug: 10, info: 20, audit: 25, warn: 30, error: 40 } as const;
  const write = (level: keyof typeof order) => (fields: LogFields, message: string) => {
    if (order[level] < order[minLevel]) return;
    process.stderr.write(
      `${JSON.stringify({ level, time: new Date().toISOString(), msg: message, ...fields })}\n`,
    );
  };
  return {
    audit: write("audit"),
    error: write("error"),
    warn: write("warn"),
    info: write("info"),
    debug: write("debug"),
  };
}
