// defineService(): the one wrapper every service function is made with. It owns what each function used to
// write out by hand: splitting the optional logger and options off the arguments (`fn(input, logger?, { tx })`
// or `fn(input, { tx, logger })`), bounded and redacted log fields, translation of every failure to DbError
// with a log line at the level its kind calls for, and the handle (`tx ?? db`) the body runs on.
import { type DatabaseOrTransaction, db } from "../connection.ts";
import { isWellFormedSecret } from "../crypto/secrets.ts";
import { toDbError } from "../errors.ts";
import { type LogFields, type Logger, noopLogger } from "../logger.ts";
import type { ServiceOptions } from "./common.ts";

/** The last argument of every service function (its own options extend it). */
type CallOptions = ServiceOptions;

/** What a service body is given besides its own arguments. */
export interface Call<O extends CallOptions> {
  logger: Logger;
  /** The caller's transaction, or the pool. */
  handle: DatabaseOrTransaction;
  /** The caller's options (tx and logger included, as passed). */
  options: O;
}

/** Either the logger or the options (with the logger inside): what may follow the positional arguments. */
export type LoggerOrOptions<O extends CallOptions> = Logger | O;

/** The optional arguments after a service function's own: the logger or the options, then the options. */
export type CallTail<O extends CallOptions = CallOptions> = [
  loggerOrOptions?: LoggerOrOptions<O>,
  options?: O,
];

export interface ServiceSpec<A extends unknown[], O extends CallOptions> {
  /** `<namespace>.<function>`, as it appears in logs. */
  name: string;
  /** The table its queries are counted under. */
  table: string;
  /** How many positional arguments come before the logger (optional ones included). */
  arity: A["length"];
  /** Ids worth logging with a failure; values are capped and secrets blanked. */
  logFields?: (args: A, options: O) => LogFields;
}

/** One service function as defineService made it: its spec's name, table and arity, and the function itself. */
export interface DefinedService {
  /** `<namespace>.<function>`, as in ServiceSpec. */
  readonly name: string;
  /** The table its queries are counted under. */
  readonly table: string;
  /** How many positional arguments come before the logger (optional ones included). */
  readonly arity: number;
  /** The function defineService returned (the very one the service module exports). */
  readonly fn: (...args: unknown[]) => Promise<unknown>;
}

const services: DefinedService[] = [];

/**
 * Every service function defined so far (each service module defines its functions when it is imported), in
 * definition order: for contract tests that run every function through the guarantees defineService gives.
 */
export function definedServices(): ReadonlyArray<DefinedService> {
  return [...services];
}

/** Longer strings in log fields are cut: an id never needs more, and a huge value must not flood the log. */
const LOG_VALUE_MAX = 64;

/** Ids only: a secret passed where an id belongs is blanked, long strings are cut, objects are left out. */
export function boundedLogFields(fields: LogFields): LogFields {
  const out: LogFields = {};
  for (const [key, value] of Object.entries(fields)) {
    if (value === undefined) continue;
    if (typeof value === "string") {
      // (a cast, so the type guard does not narrow `value` to never in the other branch)
      out[key] = isWellFormedSecret(value as unknown) ? "[redacted]" : value.slice(0, LOG_VALUE_MAX);
    } else if (typeof value === "number" || typeof value === "boolean" || value === null) {
      out[key] = value;
    }
  }
  return out;
}

const isLogger = (value: unknown): value is Logger =>
  typeof value === "object" && value !== null && typeof (value as Logger).info === "function";

/** Splits `[...positional, loggerOrOptions?, options?]` at `arity`. */
export function splitCallArguments<O extends CallOptions>(
  args: readonly unknown[],
  arity: number,
): { positional: unknown[]; logger: Logger; options: O } {
  // The rest array a service gets is its own: used as is when nothing follows the positional arguments.
  const positional = args.length <= arity ? (args as unknown[]) : args.slice(0, arity);
  const next = args[arity];
  const last = args[arity + 1];
  let logger: Logger = noopLogger;
  let options = {} as O;
  if (isLogger(next)) {
    logger = next;
    if (last !== undefined && last !== null) options = last as O;
  } else if (next !== undefined && next !== null) {
    options = next as O;
    if (options.logger) logger = options.logger;
  } else if (last !== undefined && last !== null) {
    options = last as O;
    if (options.logger) logger = options.logger;
  }
  return { positional, logger, options };
}

/** Calls a body with its call and positional arguments, listed for the arities services have. */
function bodyCaller<A extends unknown[], O extends CallOptions, R>(
  body: (call: Call<O>, ...args: A) => Promise<R>,
  arity: number,
): (call: Call<O>, positional: unknown[]) => Promise<R> {
  // The body checks its own arguments at run time (any may arrive), so they go as unknown.
  const fn = body as unknown as (call: Call<O>, ...args: unknown[]) => Promise<R>;
  switch (arity) {
    case 0:
      return (call) => fn(call);
    case 1:
      return (call, p) => fn(call, p[0]);
    case 2:
      return (call, p) => fn(call, p[0], p[1]);
    case 3:
      return (call, p) => fn(call, p[0], p[1], p[2]);
    case 4:
      return (call, p) => fn(call, p[0], p[1], p[2], p[3]);
    default:
      return (call, p) => fn(call, ...p);
  }
}

/**
 * Makes a service function: `(…positional, logger?, options?)` or `(…positional, { tx, logger, … })`. The body
 * runs on `call.handle`; anything it throws leaves as a DbError, logged at warn when its kind is `rejected`
 * (the caller's input or state) and at error otherwise.
 * @example export const findById = defineService({ name: "users.findById", table: "users", arity: 1 },
 *   async (call, id: string) => ...);
 */
export function defineService<A extends unknown[], R, O extends CallOptions = CallOptions>(
  spec: ServiceSpec<A, O>,
  body: (call: Call<O>, ...args: A) => Promise<R>,
): (...args: [...A, ...CallTail<O>]) => Promise<R> {
  // A call with nothing after its own arguments (the usual one) gets this shared call: nothing to split or
  // allocate. Frozen, so a body cannot change what the next call sees.
  const plain: Call<O> = Object.freeze({ logger: noopLogger, handle: db, options: Object.freeze({}) as O });
  // The body is called with its arguments listed, not spread: a spread call cost the common arities more than
  // the rest of this wrapper (bun packages/bench/src/js-cost.ts).
  const invoke = bodyCaller(body, spec.arity);
  const service = async (...args: [...A, ...CallTail<O>]): Promise<R> => {
    let call = plain;
    let positional: unknown[] = args;
    if (args.length > spec.arity) {
      const split = splitCallArguments<O>(args, spec.arity);
      positional = split.positional;
      call = { logger: split.logger, handle: split.options.tx ?? db, options: split.options };
    }
    const { logger, options } = call;
    try {
      return await invoke(call, positional);
    } catch (error) {
      const typed = toDbError(error);
      let fields: LogFields = {};
      try {
        fields = spec.logFields ? boundedLogFields(spec.logFields(positional as A, options)) : {};
      } catch {
        // Log fields from input that failed validation may not be computable: log without them.
      }
      const logged = { operation: spec.name, code: typed.code, ...fields };
      if (typed.kind === "rejected") logger.warn(logged, `${spec.name} rejected`);
      else logger.error(logged, `${spec.name} failed`);
      throw typed;
    }
  };
  // Recorded for definedServices(); any arguments are accepted at run time (the body validates them).
  services.push({
    name: spec.name,
    table: spec.table,
    arity: spec.arity,
    fn: service as unknown as DefinedService["fn"],
  });
  return service;
}
