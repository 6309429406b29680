// `bun run db:drift`: fails when the schema and the committed migrations disagree, i.e. when
// `drizzle-kit generate` would write a new migration. Runs generate against a scratch copy of drizzle/.
import { spawnSync } from "node:child_process";
import { cpSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const packageRoot = fileURLToPath(new URL("../..", import.meta.url));
const committed = path.join(packageRoot, "drizzle");
// drizzle-kit takes --out relative to the working directory, so the scratch copy lives in the package.
const scratch = mkdtempSync(path.join(packageRoot, ".drift-"));
try {
  cpSync(committed, scratch, { recursive: true });
  const result = spawnSync(
    path.join(packageRoot, "node_modules", ".bin", "drizzle-kit"),
    [
      "generate",
      "--dialect",
      "postgresql",
      "--schema",
      "./src/schema/index.ts",
      "--out",
      path.relative(packageRoot, scratch),
    ],
    { cwd: packageRoot, encoding: "utf8" },
  );
  const output = `${result.stdout}${result.stderr}`;
  // drizzle-kit can exit 0 after an error, so read what it said as well.
  if (result.status !== 0 || (!output.includes("No schema changes") && !output.includes("migration file"))) {
    console.error(output);
    throw new Error("drizzle-kit generate failed");
  }
  const before = new Set(readdirSync(committed));
  const added = readdirSync(scratch).filter((file) => !before.has(file));
  if (added.length > 0) {
    console.error(`Schema drift: drizzle-kit generate would add ${added.join(", ")}.`);
    console.error("Run `bun run db:generate`, review the new migration and commit it.");
    process.exitCode = 1;
  } else {
    console.log("No drift: the migrations match the schema.");
  }
} finally {
  rmSync(scratch, { recursive: true, force: true });
}
