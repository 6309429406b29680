// The API's own settings, read from the environment and validated at start with a message per bad variable.
// Database settings (DATABASE_*) are read by @repo/db.
import { z } from "zod";

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
  LOG_LEVEL: z
    .enum(["debug", "info", "warn", "error"], { error: "LOG_LEVEL must be debug, info, warn or error" })
    .default("info"),
  SHUTDOWN_TIMEOUT_MS: z.coerce
    .number({ error: "SHUTDOWN_TIMEOUT_MS must be a number" })
    .int()
    .min(0)
    .max(600_000)
    .default(10_000),
});

export type ApiConfig = z.infer<typeof schema>;

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
  if (!parsed.success) {
    const problems: Record<string, string> = {};
    for (const issue of parsed.error.issues) problems[String(issue.path[0])] = issue.message;
    throw new ConfigError(problems);
  }
  return parsed.data;
}
