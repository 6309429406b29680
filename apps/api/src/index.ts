// Boots the API: validate configuration, start the embedded PostgreSQL in .data/ when DATABASE_URL is unset
// (development only), migrate under the advisory lock, serve, run maintenance rounds, and shut down
// gracefully on SIGTERM/SIGINT.
import {
  DbError,
  disconnectDB,
  initializeDB,
  loadAccountEncryptionFromEnv,
  loadDatabaseConfig,
  redactUrl,
  runMigrations,
  withAudit,
} from "@repo/db";
import { devDataDir, type EmbeddedPostgres, startEmbeddedPostgres } from "@repo/db/embedded";
import { getConnInfo } from "hono/bun";
import { createApp } from "./app.ts";
import { backgroundTasks } from "./background.ts";
import { ConfigError, loadApiConfig } from "./config.ts";
import { createLogger } from "./logger.ts";
import { droppingMailer, logMailer, type Mailer, smtpMailer } from "./mailer.ts";
import { scheduleMaintenance } from "./maintenance.ts";

async function main(): Promise<void> {
  const config = loadApiConfig();
  const pinoLogger = createLogger(config.LOG_LEVEL);
  const logger = withAudit(pinoLogger);
  if (process.env.ACCOUNT_ENCRYPTION_KEYS) loadAccountEncryptionFromEnv();

  let embedded: EmbeddedPostgres | undefined;
  const env = { ...process.env };
  if (!env.DATABASE_URL) {
    if (config.NODE_ENV === "production") {
      throw new ConfigError({ DATABASE_URL: "is required in production (bun run start)" });
    }
    embedded = await startEmbeddedPostgres({
      dataDir: devDataDir(),
      onLog: (line) => logger.debug({ postgres: line }, "postgres"),
    });
    env.DATABASE_URL = embedded.url;
    logger.info(
      { dataDir: embedded.dataDir, port: embedded.port, reused: !embedded.owned },
      "embedded PostgreSQL ready",
    );
  }
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
  const app = createApp({
    tasks,
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

  const maintenance = scheduleMaintenance(config.MAINTENANCE_INTERVAL_MS, logger);

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "shutting down");
    // Stop accepting; let in-flight requests finish, but not forever.
    const drained = server.stop(false);
    const bound = new Promise<"timeout">((resolve) =>
      setTimeout(() => resolve("timeout"), config.SHUTDOWN_TIMEOUT_MS).unref(),
    );
    if ((await Promise.race([drained.then(() => "drained" as const), bound])) === "timeout") {
      logger.warn(
        { timeoutMs: config.SHUTDOWN_TIMEOUT_MS },
        "in-flight requests cut off at the shutdown bound",
      );
      await server.stop(true);
    }
    await maintenance.stop();
    await tasks.settle();
    closeMailer();
    await disconnectDB();
    await embedded?.stop();
    logger.info({}, "stopped");
    process.exit(0);
  };
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
  process.on("SIGINT", () => void shutdown("SIGINT"));
}

main().catch((error: unknown) => {
  if (error instanceof ConfigError || (error instanceof DbError && error.code === "CONFIG_INVALID")) {
    process.stderr.write(`${error.message}\n`);
  } else {
    process.stderr.write(`API failed to start: ${error instanceof Error ? error.message : String(error)}\n`);
  }
  process.exit(1);
});
