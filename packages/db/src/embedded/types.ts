// The public shapes of the embedded server: its options, the handle startEmbeddedPostgres() returns and the
// shutdown modes. Re-exported by name from embedded.ts (@repo/db/embedded).

export type ShutdownMode = "smart" | "fast" | "immediate";

export interface EmbeddedPostgresOptions {
  /** Data folder; created and initialised on first use, kept across restarts unless `removeOnStop`. */
  dataDir: string;
  /** Loopback port; a free one is picked when omitted. */
  port?: number;
  /** The application's database, owned by `role` (created if missing). Default `app`. */
  database?: string;
  /** A non-superuser login role that owns `database`, as on managed services. Default `app`. */
  role?: string;
  /** Password of `role`. Default `app` (the server listens on loopback only). */
  rolePassword?: string;
  /** Superuser password, written at initdb time. Default `postgres`. */
  superuserPassword?: string;
  /** Extra server settings (`-c name=value`), e.g. `{ fsync: "off" }` for throwaway test servers. */
  settings?: Record<string, string>;
  /** Delete the data folder when stopped (test servers). */
  removeOnStop?: boolean;
  /** Receives the server's log lines. */
  onLog?: (line: string) => void;
  /** How long to wait for the server to accept connections. Default 60 s. */
  startTimeoutMs?: number;
}

export interface EmbeddedPostgres {
  /** URL for the application role on the application database. */
  readonly url: string;
  /** Superuser URL on the `postgres` database (for tests that create databases or kill backends). */
  readonly adminUrl: string;
  readonly port: number;
  readonly dataDir: string;
  /** False when an already running server on this data folder was reused; `stop()` leaves it alone. */
  readonly owned: boolean;
  /** The postmaster's process id. */
  readonly pid: number | undefined;
  /** Stops the server: `fast` (default) rolls back sessions and checkpoints; `immediate` is a crash. */
  stop(mode?: ShutdownMode): Promise<void>;
  /** Starts the server again on the same port after `stop()`. */
  start(): Promise<void>;
  /** Stops with `mode`, then starts again on the same port and data folder. */
  restart(mode?: ShutdownMode): Promise<void>;
}
