// `bun run db:migrate`: applies pending migrations under the advisory lock.
//   --print   print the SQL of pending migrations instead of applying it
//   --all     with --print: every migration, without connecting
import { redactUrl } from "../config.ts";
import { resolveDatabase } from "../dev-database.ts";
import { consoleLogger } from "../logger.ts";
import { pendingSql, runMigrations } from "../migrate.ts";

const args = new Set(process.argv.slice(2));
const logger = consoleLogger();

if (args.has("--print") && args.has("--all")) {
  process.stdout.write(await pendingSql({ all: true, url: "postgres://unused@localhost/unused" }));
  process.exit(0);
}

const database = await resolveDatabase();
let exitCode = 0;
try {
  const url = process.env.DATABASE_DIRECT_URL ?? database.url;
  if (args.has("--print")) {
    const text = await pendingSql({ url });
    process.stdout.write(text || "-- no pending migrations\n");
  } else {
    const { applied } = await runMigrations({ url, logger });
    logger.info(
      { database: redactUrl(url), applied },
      applied.length ? "migrations applied" : "nothing to migrate",
    );
  }
} catch (error) {
  logger.error({ error: error instanceof Error ? error.message : String(error) }, "migration failed");
  exitCode = 1;
} finally {
  await database.embedded?.stop();
}
process.exit(exitCode);
