// Structured JSON logs (pino). Secrets never reach a log line: request bodies are not logged, and any field
// named like a password, token or cookie, at the top level of a line or one level down (headers.cookie,
// body.password), is blanked should one slip in.
import type { Logger } from "@repo/db";
import pino, { type DestinationStream, type Logger as PinoLogger } from "pino";

export type { PinoLogger };

/** Field names whose values are replaced by "[redacted]" wherever a log line carries them. */
export const SECRET_FIELDS: ReadonlySet<string> = new Set([
  "password",
  "currentPassword",
  "newPassword",
  "token",
  "sessionToken",
  "authorization",
  "cookie",
  "set-cookie",
]);

const CENSOR = "[redacted]";

const isPlainObject = (value: unknown): value is Record<string, unknown> =>
  typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof Error);

/**
 * The fields with every secret-named value blanked, at the top level and one level down. Copy on write: a line
 * without secrets (all of them, normally) is returned as is, so the check costs a key scan, not a clone. pino's
 * own `redact` clones the object and re-parses its paths on every line, which cost the access log about 4% of
 * the API's CPU under load (bun --cpu-prof).
 */
export function redactSecrets(fields: Record<string, unknown>): Record<string, unknown> {
  let out: Record<string, unknown> | undefined;
  for (const key in fields) {
    const value = fields[key];
    let replacement: unknown = value;
    if (SECRET_FIELDS.has(key)) replacement = CENSOR;
    else if (isPlainObject(value)) {
      for (const inner in value) {
        if (SECRET_FIELDS.has(inner)) {
          replacement = { ...value };
          for (const name in value)
            if (SECRET_FIELDS.has(name)) (replacement as Record<string, unknown>)[name] = CENSOR;
          break;
        }
      }
    }
    if (replacement !== value) {
      out ??= { ...fields };
      out[key] = replacement;
    }
  }
  return out ?? fields;
}

/** How long a log line may wait to share a write with later ones. */
const LOG_BATCH_MS = 10;
/** Pending lines past this size are written at once. */
const LOG_BATCH_BYTES = 64 * 1024;

/** Linux writes up to this many bytes to a pipe at once, never interleaved with another process's write. */
const PIPE_BUF = 4096;

/**
 * Standard output for log lines: asynchronous (sonic-boom), and batched, so the lines of up to LOG_BATCH_MS
 * go out in one write. Blocking writes were 40% of the API's CPU samples under load with the access log on;
 * asynchronous writes of one line each still cost a thread-pool hop and a wake-up per line (strace: about one
 * write(2) per request, since Bun answers most requests in event-loop turns of their own). Pending lines are
 * written out when the process exits.
 *
 * `shared`: other processes write to the same stdout (API workers). A write to a pipe is kept whole only up to
 * PIPE_BUF bytes, and sonic-boom joins queued chunks into bigger writes, cut anywhere; so batches stop at
 * PIPE_BUF and each goes out in one synchronous write of whole lines, and no line is ever split by another
 * worker's (a single line over PIPE_BUF excepted).
 */
export function batchedStdout(options: { shared?: boolean } = {}): DestinationStream {
  const shared = options.shared ?? false;
  const stdout = pino.destination({ dest: 1, sync: shared });
  const maxBytes = shared ? PIPE_BUF : LOG_BATCH_BYTES;
  let pending: string[] = [];
  let bytes = 0;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const flush = (): void => {
    if (timer !== undefined) clearTimeout(timer);
    timer = undefined;
    if (pending.length === 0) return;
    const chunk = pending.join("");
    pending = [];
    bytes = 0;
    stdout.write(chunk);
  };
  process.on("exit", () => {
    flush();
    try {
      stdout.flushSync();
    } catch {
      // stdout already gone (closed pipe): nothing left to save.
    }
  });
  return {
    write(line: string): void {
      // Bytes matter only against PIPE_BUF; otherwise the length bounds the batch well enough, for less.
      const size = shared ? Buffer.byteLength(line) : line.length;
      if (shared && bytes + size > maxBytes) flush();
      pending.push(line);
      bytes += size;
      if (bytes >= maxBytes) flush();
      else if (timer === undefined) {
        timer = setTimeout(flush, LOG_BATCH_MS);
        // A pending line never keeps the process alive; exit writes it.
        timer.unref();
      }
    },
  };
}

/** Where each logger made by createLogger() writes, for the access line built by hand (RequestLogger.request). */
const destinations = new WeakMap<PinoLogger, DestinationStream>();

/** `fields` go on every line (a supervised worker's index, for one). */
export function createLogger(
  level: string,
  destination?: DestinationStream,
  fields: Record<string, string | number> = {},
): PinoLogger {
  const stream = destination ?? batchedStdout();
  const options = {
    level,
    base: { service: "api", ...fields },
    formatters: { log: redactSecrets },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  const logger = pino(options, stream);
  destinations.set(logger, stream);
  // pino skips the bindings formatter for children; children derive from this instance, so theirs is this too.
  const child = logger.child;
  logger.child = function redactedChild(this: PinoLogger, bindings, childOptions) {
    return child.call(this, redactSecrets(bindings), childOptions);
  } as PinoLogger["child"];
  return logger;
}

type Level = "error" | "warn" | "info" | "debug";

/** The fields of the access log line, one per answered request. */
export interface AccessFields {
  method: string;
  route: string;
  status: number;
  durationMs: number;
}

const { chindingsSym } = pino.symbols;
const isoTime = pino.stdTimeFunctions.isoTime;

/**
 * A request's logger: every line carries its request id. Cheaper than a pino child per request (no bindings
 * serialized, no logger object derived) and it skips building the line when the level is off.
 */
export class RequestLogger implements Logger {
  constructor(
    private readonly base: PinoLogger,
    readonly requestId: string,
  ) {}

  private write(level: Level, fields: Record<string, unknown>, message: string): void {
    if (this.base.isLevelEnabled(level)) this.base[level]({ requestId: this.requestId, ...fields }, message);
  }

  /**
   * The access log line: the JSON line `info({ method, route, status, durationMs }, "request")` writes, field for
   * field and in the same order, built by hand when the base logger came from createLogger(). It is written for
   * every request, and pino's general path (field scan, per-value serialization, tracing channel) was about 7%
   * of the session check's CPU (bun --cpu-prof); this line costs under half of that. None of its fields can hold
   * a secret (the route is the pattern, never the path). It skips pino's mixin, hooks and formatters: should
   * createLogger() gain one that changes lines, logger.test.ts (which compares this line with pino's) fails.
   */
  request(fields: AccessFields): void {
    const base = this.base;
    if (!base.isLevelEnabled("info")) return;
    const destination = destinations.get(base);
    if (destination === undefined) {
      this.write("info", { ...fields }, "request");
      return;
    }
    const bindings = (base as unknown as Record<symbol, string>)[chindingsSym] ?? "";
    destination.write(
      `{"level":${base.levels.values.info}${isoTime()}${bindings},"requestId":${JSON.stringify(this.requestId)}` +
        `,"method":${JSON.stringify(fields.method)},"route":${JSON.stringify(fields.route)}` +
        `,"status":${JSON.stringify(fields.status)},"durationMs":${JSON.stringify(fields.durationMs)},"msg":"request"}\n`,
    );
  }

  /** Who did what to which ids: an info line marked `audit: true`. */
  audit(fields: Record<string, unknown>, message: string): void {
    this.write("info", { ...fields, audit: true }, message);
  }
  error(fields: Record<string, unknown>, message: string): void {
    this.write("error", fields, message);
  }
  warn(fields: Record<string, unknown>, message: string): void {
    this.write("warn", fields, message);
  }
  info(fields: Record<string, unknown>, message: string): void {
    this.write("info", fields, message);
  }
  debug(fields: Record<string, unknown>, message: string): void {
    this.write("debug", fields, message);
  }
}
