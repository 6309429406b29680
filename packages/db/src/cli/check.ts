// `bun run db:check`: can we reach the database, which server is it, which migrations are applied or pending.
import pg from "pg";
import { databaseConfigFromUrl, redactUrl } from "../config.ts";
import { clientOptions } from "../connection.ts";
import { resolveDatabase } from "../dev-database.ts";
import { toDbError } from "../errors.ts";
import { migrationStatus } from "../migrate.ts";

const database = await resolveDatabase();
let exitCode = 0;
try {
  const config = databaseConfigFromUrl(database.url, { connectionTimeoutMs: 5_000 });
  const client = new pg.Client({ ...clientOptions(config), application_name: "repo-db:check" });
  client.on("error", () => {});
  try {
    await client.connect();
  } catch (error) {
    const typed = toDbError(error);
    throw new Error(
      `Cannot reach the database at ${redactUrl(database.url)} (${typed.code}): ${typed.message}`,
    );
  }
  const info = await client.query<{ version: string; user: string; db: string; superuser: string }>(
    "SELECT current_setting('server_version') AS version, current_user AS user, current_database() AS db, current_setting('is_superuser') AS superuser",
  );
  await client.end();
  const row = info.rows[0];
  console.log(`database   ${redactUrl(database.url)} (${database.source})`);
  console.log(`server     PostgreSQL ${row?.version}`);
  console.log(`role       ${row?.user}${row?.superuser === "on" ? " (superuser)" : ""} on ${row?.db}`);
  const status = await migrationStatus({ url: process.env.DATABASE_DIRECT_URL ?? database.url });
  for (const m of status.applied) console.log(`applied    ${m.tag}`);
  for (const m of status.pending) console.log(`pending    ${m.tag}`);
  for (const m of status.unknown)
    console.log(
      `unknown    migration recorded at ${m.createdAt} has no file here (another branch or a newer release?)`,
    );
  if (status.pending.length > 0) console.log("run `bun run db:migrate` to apply the pending migrations");
} catch (error) {
  console.error(error instanceof Error ? error.message : String(error));
  exitCode = 1;
} finally {
  await database.embedded?.stop();
}
process.exit(exitCode);
