// What the command-line tools that use the services share: the database (DATABASE_URL or the embedded
// development one), a small pool on it, a refusal to run before pending migrations, one line on stderr for any
// failure, everything closed, and the exit code.

import { databaseConfigFromUrl, redactUrl } from "../config.ts";
import { disconnectDB, initializeDB } from "../connection.ts";
import { resolveDatabase } from "../dev-database.ts";
import { isSchemaCurrent } from "../migrate.ts";

/**
 * Runs `work` with the services initialized on a migrated database, then exits with its code (1 when it
 * throws, after printing the error's message).
 * @example await runOnMigratedDatabase(async (where) => { ...; return 0; });
 */
export async function runOnMigratedDatabase(work: (where: string) => Promise<number>): Promise<never> {
  const database = await resolveDatabase();
  let exitCode = 1;
  try {
    initializeDB(databaseConfigFromUrl(database.url, { poolMax: 2 }));
    if (!(await isSchemaCurrent())) throw new Error("Migrations are pending: run `bun run db:migrate` first");
    exitCode = await work(redactUrl(database.url));
  } catch (error) {
    console.error(error instanceof Error ? error.message : String(error));
  } finally {
    await disconnectDB().catch(() => {});
    await database.embedded?.stop();
  }
  process.exit(exitCode);
}
