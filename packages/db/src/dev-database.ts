// The database a process works on: DATABASE_URL when set, otherwise the embedded development database in
// <repo>/.data/postgres (started when it is not running, reused when another process already runs it). The
// db:* scripts and the API's boot (`bun run dev`) both resolve it here, so they always agree on where it is.

import { devDataDir, type EmbeddedPostgres, startEmbeddedPostgres } from "./embedded.ts";
import { consoleLogger, type Logger } from "./logger.ts";

export interface ResolvedDatabase {
  url: string;
  /** Set when this process started the embedded server; stop it before exiting. */
  embedded: EmbeddedPostgres | undefined;
  source: "DATABASE_URL" | "embedded";
}

export interface ResolveOptions {
  /** Where DATABASE_URL is read. Default: process.env. */
  env?: Record<string, string | undefined>;
  /** Says which database was chosen. Default: JSON lines on stderr. */
  logger?: Logger;
  /** The embedded server's own output, line by line (for a debug log). */
  onLog?: (line: string) => void;
}

/**
 * DATABASE_URL, or the embedded development database (started or reused).
 * @example const { url, embedded } = await resolveDatabase(); ... await embedded?.stop();
 */
export async function resolveDatabase(options: ResolveOptions = {}): Promise<ResolvedDatabase> {
  const fromEnv = (options.env ?? process.env).DATABASE_URL;
  if (fromEnv) return { url: fromEnv, embedded: undefined, source: "DATABASE_URL" };
  const logger = options.logger ?? consoleLogger();
  const dataDir = devDataDir();
  const server = await startEmbeddedPostgres({ dataDir, ...(options.onLog ? { onLog: options.onLog } : {}) });
  logger.info(
    { dataDir, port: server.port, reused: !server.owned },
    "using the embedded development database",
  );
  return { url: server.url, embedded: server.owned ? server : undefined, source: "embedded" };
}
