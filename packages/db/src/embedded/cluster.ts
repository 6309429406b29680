// The cluster: the data folder initialised by initdb on first use (and owned by the server's OS user), the
// server's command-line settings, and the application role and database created once it runs.
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync } from "node:fs";
import { chown, mkdir, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import pg from "pg";
import { assertReachable, type RunAs } from "./os-user.ts";

/**
 * Makes `dataDir` ready for the server: initialised with initdb when it holds no cluster yet, otherwise handed
 * to the server's OS user if someone else owns it.
 */
export async function prepareDataDir(
  dataDir: string,
  owner: RunAs,
  initdb: string,
  superuserPassword: string,
): Promise<void> {
  if (!existsSync(path.join(dataDir, "PG_VERSION"))) {
    await initCluster(dataDir, owner, initdb, superuserPassword);
  } else if (owner.uid !== undefined) {
    const info = await stat(dataDir);
    if (info.uid !== owner.uid && owner.gid !== undefined) await chown(dataDir, owner.uid, owner.gid);
  }
}

/** Runs initdb on a new data folder: superuser `postgres` with `superuserPassword`, SCRAM, UTF8, locale C. */
async function initCluster(
  dataDir: string,
  owner: RunAs,
  initdb: string,
  superuserPassword: string,
): Promise<void> {
  await mkdir(dataDir, { recursive: true });
  assertReachable(dataDir, owner);
  if (owner.uid !== undefined && owner.gid !== undefined) await chown(dataDir, owner.uid, owner.gid);
  const pwfile = path.join(tmpdir(), `pg-pw-${randomBytes(8).toString("hex")}`);
  await writeFile(pwfile, `${superuserPassword}\n`, { mode: 0o600 });
  if (owner.uid !== undefined && owner.gid !== undefined) await chown(pwfile, owner.uid, owner.gid);
  try {
    execFileSync(
      initdb,
      [
        `--pgdata=${dataDir}`,
        "--username=postgres",
        `--pwfile=${pwfile}`,
        "--auth=scram-sha-256",
        "--encoding=UTF8",
        "--locale=C",
        "--no-instructions",
      ],
      { ...owner, stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, LC_ALL: "C" } },
    );
  } catch (error) {
    const stderr = (error as { stderr?: Buffer }).stderr?.toString() ?? String(error);
    throw new Error(`initdb failed in ${dataDir}: ${stderr}`);
  } finally {
    await rm(pwfile, { force: true });
  }
}

/**
 * The postgres command line: the data folder, the port and each setting as `-c name=value` (loopback only, no
 * Unix socket, 200 connections, then the caller's `settings` over those).
 */
export function serverArgs(dataDir: string, port: number, extra: Record<string, string> = {}): string[] {
  const settings: Record<string, string> = {
    listen_addresses: "127.0.0.1",
    unix_socket_directories: "",
    max_connections: "200",
    ...extra,
  };
  const args = ["-D", dataDir, "-p", String(port)];
  for (const [name, value] of Object.entries(settings)) args.push("-c", `${name}=${value}`);
  return args;
}

function ident(name: string): string {
  if (!/^[a-z_][a-z0-9_]{0,62}$/.test(name)) throw new Error(`Invalid identifier: ${name}`);
  return `"${name}"`;
}

function literal(value: string): string {
  return `'${value.replaceAll("'", "''")}'`;
}

/** Creates the application role and database when missing (idempotent). */
export async function ensureRoleAndDatabase(
  adminUrl: string,
  role: string,
  password: string,
  database: string,
): Promise<void> {
  const client = new pg.Client({ connectionString: adminUrl });
  client.on("error", () => {});
  await client.connect();
  try {
    const roleRow = await client.query("SELECT 1 FROM pg_roles WHERE rolname = $1", [role]);
    if (roleRow.rowCount === 0) {
      // NOSUPERUSER and no CREATEROLE: the same rights as an application role on a managed service.
      await client.query(
        `CREATE ROLE ${ident(role)} LOGIN NOSUPERUSER NOCREATEROLE PASSWORD ${literal(password)}`,
      );
    }
    const dbRow = await client.query("SELECT 1 FROM pg_database WHERE datname = $1", [database]);
    if (dbRow.rowCount === 0) {
      await client.query(
        `CREATE DATABASE ${ident(database)} OWNER ${ident(role)} ENCODING 'UTF8' TEMPLATE template0`,
      );
    }
  } finally {
    await client.end();
  }
}
