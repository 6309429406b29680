// Database configuration read from the environment and validated up front. Messages name the bad setting
// and never echo a connection string, so a password can't end up in a log.
import { z } from "zod";
import { DbError } from "./errors.ts";

export const SSL_MODES = ["disable", "require", "verify-ca", "verify-full"] as const;
export type SslMode = (typeof SSL_MODES)[number];

export interface DatabaseConfig {
  /** Where queries go; may be a connection pooler. */
  url: string;
  /** A direct (non-pooler) URL for migrations and session-level advisory locks; defaults to `url`. */
  directUrl: string | undefined;
  poolMax: number;
  poolMin: number;
  connectionTimeoutMs: number;
  idleTimeoutMs: number;
  statementTimeoutMs: number;
  idleInTransactionTimeoutMs: number;
  sslMode: SslMode | undefined;
  applicationName: string;
  logQueries: boolean;
  /**
   * `url` points at a transaction-mode pooler (PgBouncer < 1.21 and the like): no startup parameters
   * (set timeouts with ALTER ROLE ... SET instead) and no named prepared statements.
   * Turned on by DATABASE_POOLER=transaction or `?pgbouncer=true` on the URL.
   */
  transactionPooler: boolean;
  /**
   * Streaming replicas that reads tolerant of lag may use (DATABASE_REPLICA_URLS, comma-separated); empty:
   * every read goes to `url`. See replicas.ts.
   */
  replicaUrls: string[];
  /** A replica further behind than this is skipped until it catches up (DATABASE_REPLICA_MAX_LAG_MS). */
  replicaMaxLagMs: number;
  /** How often each replica's health and lag are checked (DATABASE_REPLICA_CHECK_INTERVAL_MS). */
  replicaCheckIntervalMs: number;
}

const postgresUrl = (name: string) =>
  z
    .string({ error: `${name} is required` })
    .trim()
    .min(1, { error: `${name} is required` })
    .refine(
      (value) => {
        try {
          const url = new URL(value);
          return url.protocol === "postgres:" || url.protocol === "postgresql:";
        } catch {
          return false;
        }
      },
      { error: `${name} must be a postgres:// or postgresql:// URL (value not shown)` },
    );

// A blank value means unset (its default), never 0: z.coerce would read "  " as 0 and turn a timeout off.
const blankIsUnset = (value: unknown) =>
  typeof value === "string" && value.trim() === "" ? undefined : value;

const integer = (name: string, min: number, max: number, fallback: number) =>
  z.preprocess(
    blankIsUnset,
    z.coerce
      .number({ error: `${name} must be a whole number` })
      .int({ error: `${name} must be a whole number` })
      .min(min, { error: `${name} must be at least ${min}` })
      .max(max, { error: `${name} must be at most ${max}` })
      .default(fallback),
  );

const bool = (name: string) =>
  z
    .enum(["true", "false", "1", "0", "yes", "no", ""], { error: `${name} must be true or false` })
    .default("false")
    .transform((value) => value === "true" || value === "1" || value === "yes");

const envSchema = z.object({
  DATABASE_URL: postgresUrl("DATABASE_URL"),
  DATABASE_DIRECT_URL: postgresUrl("DATABASE_DIRECT_URL").optional(),
  DATABASE_POOL_MAX: integer("DATABASE_POOL_MAX", 1, 1000, 10),
  DATABASE_POOL_MIN: integer("DATABASE_POOL_MIN", 0, 1000, 0),
  DATABASE_CONNECT_TIMEOUT_MS: integer("DATABASE_CONNECT_TIMEOUT_MS", 100, 600_000, 5_000),
  DATABASE_IDLE_TIMEOUT_MS: integer("DATABASE_IDLE_TIMEOUT_MS", 0, 3_600_000, 30_000),
  DATABASE_STATEMENT_TIMEOUT_MS: integer("DATABASE_STATEMENT_TIMEOUT_MS", 0, 86_400_000, 30_000),
  DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: integer(
    "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS",
    0,
    86_400_000,
    60_000,
  ),
  DATABASE_SSL_MODE: z
    .enum(SSL_MODES, { error: `DATABASE_SSL_MODE must be one of ${SSL_MODES.join(", ")}` })
    .optional(),
  DATABASE_APPLICATION_NAME: z
    .string()
    .trim()
    .min(1, { error: "DATABASE_APPLICATION_NAME must not be blank" })
    .max(63, { error: "DATABASE_APPLICATION_NAME is limited to 63 characters" })
    .default("repo-db"),
  DATABASE_LOG_QUERIES: bool("DATABASE_LOG_QUERIES"),
  DATABASE_POOLER: z
    .enum(["none", "transaction", ""], { error: "DATABASE_POOLER must be none or transaction" })
    .default("none"),
  DATABASE_REPLICA_URLS: z
    .string()
    .optional()
    .transform((value, ctx) => {
      const urls = (value ?? "")
        .split(",")
        .map((part) => part.trim())
        .filter(Boolean);
      for (const url of urls) {
        if (!postgresUrl("DATABASE_REPLICA_URLS").safeParse(url).success) {
          ctx.addIssue({
            code: "custom",
            message: "DATABASE_REPLICA_URLS must be postgres:// URLs separated by commas (value not shown)",
          });
          return z.NEVER;
        }
      }
      return urls;
    }),
  DATABASE_REPLICA_MAX_LAG_MS: integer("DATABASE_REPLICA_MAX_LAG_MS", 0, 3_600_000, 1_000),
  DATABASE_REPLICA_CHECK_INTERVAL_MS: integer("DATABASE_REPLICA_CHECK_INTERVAL_MS", 50, 60_000, 1_000),
});

export type DatabaseEnv = Record<string, string | undefined>;

/** Removes our own `pgbouncer` flag from a URL before node-postgres sees it. */
function stripPoolerFlag(url: string): { url: string; flagged: boolean } {
  const parsed = new URL(url);
  const flag = parsed.searchParams.get("pgbouncer");
  if (flag === null) return { url, flagged: false };
  parsed.searchParams.delete("pgbouncer");
  return { url: parsed.toString(), flagged: flag === "true" || flag === "1" };
}

/**
 * Reads database settings from environment variables (DATABASE_URL, DATABASE_POOL_MAX, ...).
 * @throws DbError CONFIG_INVALID naming every bad variable.
 */
export function loadDatabaseConfig(env: DatabaseEnv = process.env): DatabaseConfig {
  // Treat empty strings as unset, as shells and .env files commonly produce them.
  const cleaned = Object.fromEntries(
    Object.entries(env).filter(([key, value]) => key.startsWith("DATABASE_") && value !== ""),
  );
  const parsed = envSchema.safeParse(cleaned);
  if (!parsed.success) {
    const details: Record<string, string> = {};
    for (const issue of parsed.error.issues) details[String(issue.path[0] ?? "config")] = issue.message;
    throw new DbError(
      "CONFIG_INVALID",
      `Invalid database configuration: ${Object.values(details).join("; ")}`,
      { details },
    );
  }
  const e = parsed.data;
  if (e.DATABASE_POOL_MIN > e.DATABASE_POOL_MAX) {
    throw new DbError(
      "CONFIG_INVALID",
      "Invalid database configuration: DATABASE_POOL_MIN must not exceed DATABASE_POOL_MAX",
      {
        details: { DATABASE_POOL_MIN: "must not exceed DATABASE_POOL_MAX" },
      },
    );
  }
  const main = stripPoolerFlag(e.DATABASE_URL);
  return {
    url: main.url,
    directUrl: e.DATABASE_DIRECT_URL === undefined ? undefined : stripPoolerFlag(e.DATABASE_DIRECT_URL).url,
    poolMax: e.DATABASE_POOL_MAX,
    poolMin: e.DATABASE_POOL_MIN,
    connectionTimeoutMs: e.DATABASE_CONNECT_TIMEOUT_MS,
    idleTimeoutMs: e.DATABASE_IDLE_TIMEOUT_MS,
    statementTimeoutMs: e.DATABASE_STATEMENT_TIMEOUT_MS,
    idleInTransactionTimeoutMs: e.DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS,
    sslMode: e.DATABASE_SSL_MODE,
    applicationName: e.DATABASE_APPLICATION_NAME,
    logQueries: e.DATABASE_LOG_QUERIES,
    transactionPooler: main.flagged || e.DATABASE_POOLER === "transaction",
    replicaUrls: e.DATABASE_REPLICA_URLS.map((url) => stripPoolerFlag(url).url),
    replicaMaxLagMs: e.DATABASE_REPLICA_MAX_LAG_MS,
    replicaCheckIntervalMs: e.DATABASE_REPLICA_CHECK_INTERVAL_MS,
  };
}

/** Builds a full config from a URL plus overrides, with the same defaults and checks as the environment. */
export function databaseConfigFromUrl(url: string, overrides: Partial<DatabaseConfig> = {}): DatabaseConfig {
  return { ...loadDatabaseConfig({ DATABASE_URL: url }), ...overrides };
}

/** `postgres://user:***@host:port/db`: safe to print. */
export function redactUrl(url: string): string {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return "<invalid url>";
  }
  // Without its scheme, "user:password@host" parses with the user name as the scheme; and an unencoded password
  // such as "123/s3cret" parses as a port and a path, leaving an "@" behind the host. Neither can be told apart
  // from its secret, so neither is shown.
  if (parsed.protocol !== "postgres:" && parsed.protocol !== "postgresql:") return "<invalid url>";
  if ((parsed.pathname + parsed.search + parsed.hash).includes("@")) return "<invalid url>";
  if (parsed.password) parsed.password = "***";
  // node-postgres also takes the password (and a client key's) as query parameters.
  for (const key of [...parsed.searchParams.keys()]) {
    if (/^(password|sslpassword)$/i.test(key)) parsed.searchParams.set(key, "***");
  }
  return parsed.toString();
}

/** node-postgres `ssl` option for a mode; undefined leaves the URL's own `sslmode` in charge. */
export function sslOption(mode: SslMode | undefined): false | { rejectUnauthorized: boolean } | undefined {
  switch (mode) {
    case undefined:
      return undefined;
    case "disable":
      return false;
    case "require":
      return { rejectUnauthorized: false };
    case "verify-ca":
    case "verify-full":
      return { rejectUnauthorized: true };
  }
}
