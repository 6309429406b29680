// `bun run client:generate`: rewrites packages/client/openapi.json and packages/client/src/schema.ts.
import { writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { clientFiles } from "../openapi-client.ts";

const root = (relative: string) => fileURLToPath(new URL(`../../../../${relative}`, import.meta.url));
const files = await clientFiles();
writeFileSync(root("packages/client/openapi.json"), files.document);
writeFileSync(root("packages/client/src/schema.ts"), files.types);
console.log("wrote packages/client/openapi.json and packages/client/src/schema.ts");
process.exit(0);
