// Boots the API: validate configuration, start the embedded PostgreSQL in .data/ when DATABASE_URL is unset
// (development only), migrate under the advisory lock, serve, run maintenance rounds, and shut down
// gracefully on SIGTERM/SIGINT.
import {
  DbError,
  disconnectDB,
  initializeDB,
  loadAccountEncryptionFromEnv,
  loadDatabaseConfig,
  loadOneTimeCodeKeyFromEnv,
  redactUrl,
  runMigrations,
  withAudit,
} from "@repo/db";
import { resolveDatabase } from "@repo/db/dev-database";
import { getConnInfo } from "hono/bun";
import { createApp } from "./app.ts";
import { backgroundTasks } from "./background.ts";
import { ConfigError, loadApiConfig } from "./config.ts";
import { createLogger } from "./logger.ts";
import { droppingMailer, logMailer, type Mailer, smtpMailer } from "./mailer.ts";
import { scheduleMaintenance } from "./maintenance.ts";
import { oauthProviders } from "./oauth/providers.ts";

async function main(): Promise<void> {
  const config = loadApiConfig();
  const pinoLogger = createLogger(config.LOG_LEVEL);
  const logger = withAudit(pinoLogger);
  if (config.SIGN_IN_BEFORE_EMAIL_VERIFICATION) {
    logger.warn(
      {},
      "SIGN_IN_BEFORE_EMAIL_VERIFICATION=true: sign-up answers 201 for a new address and 202 for a taken one, which tells anyone which addresses have accounts",
    );
  }
  if (process.env.ACCOUNT_ENCRYPTION_KEYS) loadAccountEncryptionFromEnv();
  loadOneTimeCodeKeyFromEnv();

  if (!process.env.DATABASE_URL && config.NODE_ENV === "production") {
    throw new ConfigError({ DATABASE_URL: "is required in production (bun run start)" });
  }
  // DATABASE_URL, or the embedded development database the db:* scripts use too.
  const database = await resolveDatabase({
    logger,
    onLog: (line) => logger.debug({ postgres: line }, "postgres"),
  });
  const embedded = database.embedded;
  const env = { ...process.env, DATABASE_URL: database.url };
  const dbConfig = loadDatabaseConfig(env);
  await runMigrations({ config: dbConfig, logger });
  initializeDB(dbConfig, { logger });

  let mailer: Mailer;
  let closeMailer = () => {};
  if (config.SMTP_URL) {
    const smtp = smtpMailer(config.SMTP_URL, config.MAIL_FROM);
    mailer = smtp;
    closeMailer = () => smtp.close();
  } else if (config.NODE_ENV === "development") {
    mailer = logMailer();
  } else {
    mailer = droppingMailer((fields, message) => logger.warn(fields, message));
  }

  const tasks = backgroundTasks();
  // Discovery starts now, in the background: an unreachable provider never delays or stops the start.
  const oauth = oauthProviders(config.OAUTH_PROVIDERS, config.API_URL ?? config.APP_URL, (fields, message) =>
    pinoLogger.warn(fields, message),
  );
  oauth.warmUp();
  if (config.OAUTH_PROVIDERS.length > 0) {
    pinoLogger.info(
      {
        providers: oauth
          .all()
          .map((provider) => ({ id: provider.settings.id, redirectUri: provider.redirectUri })),
      },
      "sign-in providers",
    );
  }
  const app = createApp({
    tasks,
    oauth,
    config,
    logger: pinoLogger,
    mailer,
    getClientAddress: (c) => {
      try {
        return getConnInfo(c).remote.address;
      } catch {
        return undefined;
      }
    },
  });
  const server = Bun.serve({ hostname: config.HOST, port: config.PORT, fetch: app.fetch });
  logger.info(
    { url: `http://${config.HOST}:${server.port}`, database: redactUrl(dbConfig.url) },
    "API listening",
  );

  const maintenance = scheduleMaintenance(
    {
      intervalMs: config.MAINTENANCE_INTERVAL_MS,
      auditChainIntervalMs: config.AUDIT_CHAIN_INTERVAL_MS,
      auditRetentionDays: config.AUDIT_RETENTION_DAYS,
    },
    logger,
  );

  shutdown = async (signal: string) => {
    logger.info({ signal }, "shutting down");
    // One bound for the whole sequence: every step gets what is left of SHUTDOWN_TIMEOUT_MS.
    const deadline = Date.now() + config.SHUTDOWN_TIMEOUT_MS;
    const within = async (step: Promise<unknown>): Promise<boolean> => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const bound = new Promise<false>((resolve) => {
        timer = setTimeout(() => resolve(false), Math.max(0, deadline - Date.now()));
      });
      try {
        return await Promise.race([step.then(() => true), bound]);
      } finally {
        clearTimeout(timer);
      }
    };
    try {
      // Stop accepting; let in-flight requests finish, but not forever.
      if (!(await within(server.stop(false)))) {
        logger.warn(
          { timeoutMs: config.SHUTDOWN_TIMEOUT_MS },
          "in-flight requests cut off at the shutdown bound",
        );
        await server.stop(true);
      }
      // Background work (mail, events written after the answer) first, then the last chaining pass.
      await within(tasks.settle());
      await within(maintenance.stop());
      closeMailer();
      await within(disconnectDB());
    } catch (error) {
      logger.error({ error: error instanceof Error ? error.message : String(error) }, "shutdown step failed");
    } finally {
      await embedded?.stop();
      logger.info({}, "stopped");
      process.exit(0);
    }
  };
}

let shutdown: ((signal: string) => Promise<void>) | undefined;
let signals = 0;
function onSignal(signal: string): void {
  signals++;
  // During start-up, or at a second signal: exit now. The embedded server (if any) is stopped by its exit
  // hook, so a Ctrl-C during migrations or a stuck shutdown never leaves a postmaster behind.
  if (!shutdown || signals > 1) process.exit(130);
  void shutdown(signal);
}
process.on("SIGTERM", () => onSignal("SIGTERM"));
process.on("SIGINT", () => onSignal("SIGINT"));

main().catch((error: unknown) => {
  if (error instanceof ConfigError || (error instanceof DbError && error.code === "CONFIG_INVALID")) {
    process.stderr.write(`${error.message}\n`);
  } else {
    process.stderr.write(`API failed to start: ${error instanceof Error ? error.message : String(error)}\n`);
  }
  process.exit(1);
});
