// The API's own settings, read from the environment and validated at start with a message per bad variable.
// Database settings (DATABASE_*) are read by @repo/db.
import { availableParallelism } from "node:os";
import { z } from "zod";
import { type OAuthProviderSettings, oauthProviders } from "./oauth/config.ts";

const schema = z.object({
  NODE_ENV: z
    .enum(["development", "test", "production"], {
      error: "NODE_ENV must be development, test or production",
    })
    .default("development"),
  HOST: z.string().trim().min(1).default("127.0.0.1"),
  PORT: z.coerce
    .number({ error: "PORT must be a number" })
    .int()
    .min(0, { error: "PORT must be 0..65535" })
    .max(65535, { error: "PORT must be 0..65535" })
    .default(3000),
  /**
   * API processes `bun run start` runs on PORT (Bun's reusePort spreads connections across them), under one
   * supervisor that restarts a crashed one; `auto` is one per core. Default 1: a single process, no supervisor.
   */
  API_WORKERS: z
    .string()
    .trim()
    .default("1")
    .transform((value, ctx) => {
      if (value === "auto") return availableParallelism();
      const count = /^\d+$/.test(value) ? Number(value) : Number.NaN;
      if (!(count >= 1 && count <= 64)) {
        ctx.addIssue({ code: "custom", message: "API_WORKERS must be auto or a whole number from 1 to 64" });
        return z.NEVER;
      }
      return count;
    }),
  /**
   * How long a validated session may be answered from this process's memory (0: never). Every revocation is
   * announced to every process (LISTEN/NOTIFY), which forgets it at once; while that connection is down,
   * every check reads the database.
   */
  SESSION_CACHE_TTL_MS: z.coerce.number().int().min(0).max(60_000).default(2000),
  /** Where session checks read: `primary`, or `replica` (DATABASE_REPLICA_URLS; misses and changes read the primary). */
  SESSION_READS: z
    .enum(["primary", "replica"], { error: "SESSION_READS must be primary or replica" })
    .default("primary"),
  LOG_LEVEL: z
    .enum(["debug", "info", "warn", "error"], { error: "LOG_LEVEL must be debug, info, warn or error" })
    .default("info"),
  SHUTDOWN_TIMEOUT_MS: z.coerce
    .number({ error: "SHUTDOWN_TIMEOUT_MS must be a number" })
    .int()
    .min(0)
    .max(600_000)
    .default(10_000),
  /** Public origin of the web app: mail links point here, and its origin is allowed for cookie requests. */
  APP_URL: z
    .url({ protocol: /^https?$/, error: "APP_URL must be an http(s) URL" })
    .default("http://localhost:3000"),
  /** Comma-separated origins allowed to send cookie-authenticated unsafe requests; default APP_URL's origin. */
  ALLOWED_ORIGINS: z
    .string()
    .optional()
    .transform((value, ctx) => {
      if (value === undefined) return undefined;
      const origins: string[] = [];
      for (const part of value
        .split(",")
        .map((item) => item.trim())
        .filter(Boolean)) {
        try {
          origins.push(new URL(part).origin);
        } catch {
          ctx.addIssue({ code: "custom", message: `ALLOWED_ORIGINS: ${part} is not a URL` });
          return z.NEVER;
        }
      }
      return origins;
    }),
  /** Bearer key of /v1/admin; admin routes answer 404 when unset. */
  ADMIN_API_KEY: z.string().min(32, { error: "ADMIN_API_KEY must be at least 32 characters" }).optional(),
  /** smtp(s)://user:pass@host:port; without it mail is logged (development) or dropped with a warning. */
  SMTP_URL: z.url({ protocol: /^smtps?$/, error: "SMTP_URL must be an smtp:// or smtps:// URL" }).optional(),
  MAIL_FROM: z.string().trim().min(3).default("no-reply@localhost"),
  BODY_LIMIT_BYTES: z.coerce
    .number({ error: "BODY_LIMIT_BYTES must be a number" })
    .int()
    .min(64)
    .max(50_000_000)
    .default(64 * 1024),
  /** How many reverse proxies in front of us append to X-Forwarded-For; 0 means use the socket address. */
  TRUST_PROXY: z.coerce
    .number({ error: "TRUST_PROXY must be a number of proxy hops" })
    .int()
    .min(0)
    .max(10)
    .default(0),
  SESSION_COOKIE_NAME: z
    .string()
    .regex(/^[A-Za-z0-9_-]{1,64}$/, { error: "SESSION_COOKIE_NAME must be letters, digits, _ or -" })
    .default("session"),
  RATE_LIMIT_WINDOW_SECONDS: z.coerce.number().int().min(1).max(86_400).default(900),
  /** Failed sign-ins for one account from one client network (IPv4 address or IPv6 /64) per window. */
  RATE_LIMIT_SIGN_IN_FAILURES_PER_ACCOUNT_NETWORK: z.coerce.number().int().min(1).default(10),
  /** Failed sign-ins for one account from anywhere per window; past it, password sign-in needs a mailed link. */
  RATE_LIMIT_SIGN_IN_FAILURES_PER_ACCOUNT: z.coerce.number().int().min(1).default(100),
  /** Sign-in attempts from one client network per window, whatever the account. */
  RATE_LIMIT_SIGN_IN_PER_CLIENT: z.coerce.number().int().min(1).default(100),
  /** Wrong current passwords per session per window (password change, account deletion). */
  RATE_LIMIT_REAUTH_FAILURES_PER_SESSION: z.coerce.number().int().min(1).default(10),
  RATE_LIMIT_SIGN_UP_PER_CLIENT: z.coerce.number().int().min(1).default(20),
  /** Mails of one kind to one address requested from one client network per window. */
  RATE_LIMIT_EMAIL_PER_RECIPIENT: z.coerce.number().int().min(1).default(5),
  /** Mails of one kind to one address per window, whatever network asked. */
  RATE_LIMIT_EMAIL_PER_RECIPIENT_TOTAL: z.coerce.number().int().min(1).default(20),
  RATE_LIMIT_EMAIL_PER_CLIENT: z.coerce.number().int().min(1).default(50),
  /**
   * Sign-up gives a session at once and unverified accounts may sign in with their password. Off by default:
   * an unverified account grants nothing (account pre-hijacking); see the README's security model.
   */
  SIGN_IN_BEFORE_EMAIL_VERIFICATION: z
    .enum(["true", "false"], { error: "SIGN_IN_BEFORE_EMAIL_VERIFICATION must be true or false" })
    .default("false")
    .transform((value) => value === "true"),
  /**
   * This API's public URL, where providers send users back (`<API_URL>/v1/auth/oauth/<id>/callback`, the
   * redirect URI to register with them). Default: APP_URL (in development the API serves the app's links).
   */
  API_URL: z.url({ protocol: /^https?$/, error: "API_URL must be an http(s) URL" }).optional(),
  /** Serve /openapi.json and /docs (the API's description and its rendered reference). Default true. */
  API_DOCS: z
    .enum(["true", "false"], { error: "API_DOCS must be true or false" })
    .default("true")
    .transform((value) => value === "true"),
  /** Bearer token /metrics requires; unset: /metrics is open in development and test, 404 in production. */
  METRICS_TOKEN: z.string().min(16, { error: "METRICS_TOKEN must be at least 16 characters" }).optional(),
  /** A Pwned Passwords range API (k-anonymity): new passwords found in it are refused. Unset: no check. */
  PASSWORD_BREACH_CHECK_URL: z
    .url({ protocol: /^https?$/, error: "PASSWORD_BREACH_CHECK_URL must be an http(s) URL" })
    .optional(),
  PASSWORD_BREACH_CHECK_TIMEOUT_MS: z.coerce.number().int().min(100).max(30_000).default(2000),
  /** Live sessions per user; creating one more revokes the oldest. */
  SESSION_MAX_PER_USER: z.coerce.number().int().min(1).max(10_000).default(50),
  MAINTENANCE_INTERVAL_MS: z.coerce.number().int().min(1000).max(86_400_000).default(300_000),
  /** Audit events older than this are deleted by maintenance (the rest stays verifiable); 0 keeps them all. */
  AUDIT_RETENTION_DAYS: z.coerce.number().int().min(0).max(36_500).default(365),
  /** How often events written since are linked into the audit trail's hash chain (one process at a time). */
  AUDIT_CHAIN_INTERVAL_MS: z.coerce.number().int().min(100).max(60_000).default(1000),
});

export type ApiConfig = z.infer<typeof schema> & {
  /** Sign-in providers from OAUTH_* variables (oauth/config.ts). */
  OAUTH_PROVIDERS: OAuthProviderSettings[];
};

/** The origins allowed to send cookie-authenticated unsafe requests. */
export function allowedOrigins(config: ApiConfig): string[] {
  return config.ALLOWED_ORIGINS ?? [new URL(config.APP_URL).origin];
}

export class ConfigError extends Error {
  override readonly name = "ConfigError";
  readonly code = "CONFIG_INVALID";
  constructor(readonly problems: Record<string, string>) {
    super(
      `Invalid configuration:\n${Object.entries(problems)
        .map(([key, message]) => `  ${key}: ${message}`)
        .join("\n")}`,
    );
  }
}

export function loadApiConfig(env: Record<string, string | undefined> = process.env): ApiConfig {
  const cleaned = Object.fromEntries(Object.entries(env).filter(([, value]) => value !== ""));
  const parsed = schema.safeParse(cleaned);
  const problems: Record<string, string> = {};
  if (!parsed.success) {
    for (const issue of parsed.error.issues) problems[String(issue.path[0])] = issue.message;
  }
  // Mailed links and the CSRF origin come from APP_URL: in production a default of localhost would mail links
  // nobody can open and refuse the real site's requests, so it must be said.
  if (cleaned.NODE_ENV === "production" && cleaned.APP_URL === undefined) {
    problems.APP_URL = "is required in production (the public URL mailed links point at)";
  }
  if (cleaned.SESSION_READS === "replica" && !cleaned.DATABASE_REPLICA_URLS) {
    problems.SESSION_READS = "replica needs DATABASE_REPLICA_URLS";
  }
  const providers = oauthProviders(cleaned, problems);
  if (providers.length > 0 && !cleaned.ACCOUNT_ENCRYPTION_KEYS) {
    problems.ACCOUNT_ENCRYPTION_KEYS =
      "is required with sign-in providers (their tokens are stored encrypted)";
  }
  if (!parsed.success || Object.keys(problems).length > 0) throw new ConfigError(problems);
  return { ...parsed.data, OAUTH_PROVIDERS: providers };
}
