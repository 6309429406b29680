// Boots the API: validate configuration, start the embedded PostgreSQL in .data/ when DATABASE_URL is unset
// (development only), migrate under the advisory lock, serve, run maintenance rounds, and shut down
// gracefully on SIGTERM/SIGINT. With API_WORKERS > 1 this process becomes the supervisor of that many API
// processes (this same file, run with API_WORKER_INDEX) sharing the port (workers.ts).

import { fileURLToPath } from "node:url";
import {
  DbError,
  disconnectDB,
  initializeDB,
  loadAccountEncryptionFromEnv,
  loadDatabaseConfig,
  loadOneTimeCodeKeyFromEnv,
  redactUrl,
  runMigrations,
  startSessionChecks,
  stopSessionFeed,
  withAudit,
} from "@repo/db";
import { resolveDatabase } from "@repo/db/dev-database";
import { freePort } from "@repo/db/embedded";
import { getConnInfo } from "hono/bun";
import { createApp } from "./app.ts";
import { backgroundTasks } from "./background.ts";
import { ConfigError, loadApiConfig } from "./config.ts";
import { createHttpMetrics } from "./http-metrics.ts";
import { batchedStdout, createLogger } from "./logger.ts";
import { droppingMailer, logMailer, type Mailer, smtpMailer } from "./mailer.ts";
import { scheduleMaintenance } from "./maintenance.ts";
import { oauthProviders } from "./oauth/providers.ts";
import { superviseWorkers, workerIndex, workerMetrics } from "./workers.ts";

/** This process's index when it is one of several workers (API_WORKERS > 1), else undefined. */
const worker = workerIndex();

async function main(): Promise<void> {
  const config = loadApiConfig();
  // The supervisor and its workers share one stdout: their lines must never split each other's.
  const shared = worker !== undefined || config.API_WORKERS > 1;
  const pinoLogger = createLogger(
    config.LOG_LEVEL,
    batchedStdout({ shared }),
    worker === undefined ? {} : { worker },
  );
  const logger = withAudit(pinoLogger);
  // Said once: by the supervisor or the single process, not by every worker.
  if (config.SIGN_IN_BEFORE_EMAIL_VERIFICATION && worker === undefined) {
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
  if (config.API_WORKERS > 1 && worker === undefined) {
    await supervise(config, logger, database);
    return;
  }
  initializeDB(dbConfig, { logger });
  // The session change feed: the session cache and session checks on replicas obey it (docs/scaling.md).
  if (config.SESSION_CACHE_TTL_MS > 0 || config.SESSION_READS === "replica") {
    startSessionChecks({
      cacheTtlMs: config.SESSION_CACHE_TTL_MS,
      replicaReads: config.SESSION_READS === "replica",
      logger,
    });
  }

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
  const metrics = createHttpMetrics();
  const app = createApp({
    metrics,
    metricsText: worker === undefined ? undefined : workerMetrics(metrics.merged),
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
  // A worker shares the port with its siblings: the kernel spreads new connections across them.
  const server = Bun.serve({
    hostname: config.HOST,
    port: config.PORT,
    fetch: app.fetch,
    reusePort: worker !== undefined,
  });
  logger.info(
    { url: `http://${config.HOST}:${server.port}`, database: redactUrl(dbConfig.url), pid: process.pid },
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
      await within(stopSessionFeed());
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

/**
 * The supervisor: runs `config.API_WORKERS` copies of this file on one port (chosen here when PORT is 0, so all
 * share it) on the database resolved and migrated above, until SIGTERM/SIGINT.
 */
async function supervise(
  config: ReturnType<typeof loadApiConfig>,
  logger: ReturnType<typeof withAudit>,
  database: Awaited<ReturnType<typeof resolveDatabase>>,
): Promise<void> {
  const port = config.PORT === 0 ? await freePort() : config.PORT;
  const supervisor = superviseWorkers({
    count: config.API_WORKERS,
    entry: fileURLToPath(import.meta.url),
    env: { ...process.env, DATABASE_URL: database.url, PORT: String(port) },
    logger,
    // Each worker bounds its own shutdown by SHUTDOWN_TIMEOUT_MS; past that and a margin, it is killed.
    stopTimeoutMs: config.SHUTDOWN_TIMEOUT_MS + 5000,
    onGiveUp: () => {
      void (async () => {
        await database.embedded?.stop();
        process.exit(1);
      })();
    },
  });
  logger.info(
    { workers: config.API_WORKERS, url: `http://${config.HOST}:${port}`, pids: supervisor.pids() },
    "API supervisor started",
  );
  shutdown = async (signal: string) => {
    logger.info({ signal }, "stopping the API workers");
    try {
      await supervisor.stop();
    } finally {
      await database.embedded?.stop();
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
if (worker === undefined) {
  process.on("SIGINT", () => onSignal("SIGINT"));
} else {
  // Ctrl-C reaches the whole process group: a worker leaves it to the supervisor, whose SIGTERM follows, so
  // the two signals do not count as a second one (which means: exit now).
  process.on("SIGINT", () => {});
  // The supervisor is gone (even killed): nobody would stop or restart this worker any more.
  process.on("disconnect", () => onSignal("supervisor exited"));
}

main().catch((error: unknown) => {
  if (error instanceof ConfigError || (error instanceof DbError && error.code === "CONFIG_INVALID")) {
    process.stderr.write(`${error.message}\n`);
  } else {
    process.stderr.write(`API failed to start: ${error instanceof Error ? error.message : String(error)}\n`);
  }
  process.exit(1);
});
