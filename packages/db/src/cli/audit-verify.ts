// `bun run audit:verify`: chains the events recorded since the last chaining pass (the API does that every
// second; it may not be running), then walks the audit trail's hash chain and reports the first row where it
// breaks (an edited, inserted or deleted row). Exit code 0 when the chain holds, 1 when it breaks or cannot
// be read.
import { chain, verify } from "../services/audit.ts";
import { runOnMigratedDatabase } from "./migrated-database.ts";

await runOnMigratedDatabase(async (where) => {
  const chained = await chain({ batchSize: 5000 });
  if (chained > 0) console.log(`chained ${chained} event(s) recorded since the last pass`);
  const result = await verify({ batchSize: 5000 });
  if (result.ok) {
    console.log(`audit trail at ${where}: ${result.checked} rows, the chain holds`);
    return 0;
  }
  console.log(
    `audit trail at ${where}: the chain breaks at seq ${result.broken?.seq}${result.broken?.id ? ` (id ${result.broken.id})` : ""}: ${result.broken?.reason}; ${result.checked} rows checked`,
  );
  return 1;
});
