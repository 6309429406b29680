// The database the scripts work on: DATABASE_URL when set, otherwise the embedded development database in
// <repo>/.data/postgres (started when it is not running, reused when `bun run dev` already runs it).

import { devDataDir, type EmbeddedPostgres, startEmbeddedPostgres } from "../embedded.ts";
import { consoleLogger } from "../logger.ts";

export interface ResolvedDatabase {
  url: string;
  /** Set when this process started the embedded server; stop it before exiting. */
  embedded: EmbeddedPostgres | undefined;
  source: "DATABASE_URL" | "embedded";
}

export async function resolveDatabase(): Promise<ResolvedDatabase> {
  const fromEnv = process.env.DATABASE_URL;
  if (fromEnv) return { url: fromEnv, embedded: undefined, source: "DATABASE_URL" };
  const logger = consoleLogger();
  const dataDir = devDataDir();
  const server = await startEmbeddedPostgres({ dataDir });
  logger.info(
    { dataDir, port: server.port, reused: !server.owned },
    "using the embedded development database",
  );
  return { url: server.url, embedded: server.owned ? server : undefined, source: "embedded" };
}
