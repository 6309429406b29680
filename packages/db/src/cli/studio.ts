// `bun run db:studio`: Drizzle Studio on DATABASE_URL, or on the embedded development database (started for
// as long as Studio runs). Studio serves on 127.0.0.1:4983; its UI opens in a browser at the address it prints.
import { spawn } from "node:child_process";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { resolveDatabase } from "../dev-database.ts";

const packageRoot = fileURLToPath(new URL("../..", import.meta.url));
const database = await resolveDatabase();
const studio = spawn(
  path.join(packageRoot, "node_modules", ".bin", "drizzle-kit"),
  ["studio", "--host", "127.0.0.1", "--port", process.env.DRIZZLE_STUDIO_PORT ?? "4983"],
  { cwd: packageRoot, stdio: "inherit", env: { ...process.env, DATABASE_URL: database.url } },
);

let stopping = false;
const shutdown = async (code: number) => {
  if (stopping) return;
  stopping = true;
  if (studio.exitCode === null) studio.kill("SIGTERM");
  await database.embedded?.stop();
  process.exit(code);
};
process.on("SIGINT", () => void shutdown(0));
process.on("SIGTERM", () => void shutdown(0));
studio.on("exit", (code) => void shutdown(code ?? 0));
