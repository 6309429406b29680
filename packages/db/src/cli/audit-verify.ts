// `bun run audit:verify`: chains the events recorded since the last chaining pass (the API does that every
// second; it may not be running), then walks the audit trail's hash chain and reports the first row where it
// breaks (an edited, inserted or deleted row). Exit code 0 when the chain holds, 1 when it breaks or cannot
// be read.
import { databaseConfigFromUrl, redactUrl } from "../config.ts";
import { disconnectDB, initializeDB } from "../connection.ts";
import { resolveDatabase } from "../dev-database.ts";
import { isSchemaCurrent } from "../migrate.ts";
import { chain, verify } from "../services/audit.ts";

const database = await resolveDatabase();
let exitCode = 0;
try {
  initializeDB(databaseConfigFromUrl(database.url, { poolMax: 2 }));
  if (!(await isSchemaCurrent())) throw new Error("Migrations are pending: run `bun run db:migrate` first");
  const chained = await chain({ batchSize: 5000 });
  if (chained > 0) console.log(`chained ${chained} event(s) recorded since the last pass`);
  const result = await verify({ batchSize: 5000 });
  if (result.ok) {
    console.log(`audit trail at ${redactUrl(database.url)}: ${result.checked} rows, the chain holds`);
  } else {
    console.log(
      `audit trail at ${redactUrl(database.url)}: the chain breaks at seq ${result.broken?.seq}${result.broken?.id ? ` (id ${result.broken.id})` : ""}: ${result.broken?.reason}; ${result.checked} rows checked`,
    );
    exitCode = 1;
  }
} catch (error) {
  console.error(error instanceof Error ? error.message : String(error));
  exitCode = 1;
} finally {
  await disconnectDB().catch(() => {});
  await database.embedded?.stop();
}
process.exit(exitCode);
