// Boots the API: validate configuration, start the embedded PostgreSQL in .data/ when DATABASE_URL is unset
// (development only), migrate under the advisory lock, serve, and shut down gracefully on SIGTERM/SIGINT.
import {
  consoleLogger,
  DbError,
  disconnectDB,
  initializeDB,
  loadDatabaseConfig,
  redactUrl,
  runMigrations,
} from "@repo/db";
import { devDataDir, type EmbeddedPostgres, startEmbeddedPostgres } from "@repo/db/embedded";
import { createApp } from "./app.ts";
import { ConfigError, loadApiConfig } from "./config.ts";

async function main(): Promise<void> {
  const config = loadApiConfig();
  const logger = consoleLogger(config.LOG_LEVEL);

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

  const app = createApp({ config, logger });
  const server = Bun.serve({ hostname: config.HOST, port: config.PORT, fetch: app.fetch });
  logger.info(
    { url: `http://${config.HOST}:${server.port}`, database: redactUrl(dbConfig.url) },
    "API listening",
  );

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
