// Vitest global setup: one PostgreSQL for the whole run (embedded, or TEST_DATABASE_URL), a template database
// migrated once with the real migrations, and the facts test files need to clone it. Everything it creates is
// dropped or stopped in teardown.
import { randomBytes } from "node:crypto";
import { chmod, mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import pg from "pg";
import type { TestProject } from "vitest/node";
import { type EmbeddedPostgres, startEmbeddedPostgres } from "../embedded.ts";
import { runMigrations } from "../migrate.ts";
import type { TestDatabaseContext } from "./context.ts";

async function adminQuery(adminUrl: string, text: string): Promise<void> {
  const client = new pg.Client({ connectionString: adminUrl });
  client.on("error", () => {});
  await client.connect();
  try {
    await client.query(text);
  } finally {
    await client.end();
  }
}

function withCredentials(serverUrl: string, user: string, password: string, database: string): string {
  const url = new URL(serverUrl);
  url.username = user;
  url.password = password;
  url.pathname = `/${database}`;
  return url.toString();
}

export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const runId = `t${Date.now().toString(36)}${randomBytes(3).toString("hex")}`;
  let server: EmbeddedPostgres | undefined;
  let dataRoot: string | undefined;
  let adminUrl: string;
  let appRole: string;
  let appPassword: string;
  const external = process.env.TEST_DATABASE_URL;

  if (external) {
    // An existing server: its role must be able to CREATE DATABASE. It is used as the application role too.
    adminUrl = external;
    const parsed = new URL(external);
    appRole = decodeURIComponent(parsed.username);
    appPassword = decodeURIComponent(parsed.password);
  } else {
    dataRoot = await mkdtemp(path.join(tmpdir(), "repo-db-test-"));
    // mkdtemp makes a 0700 folder; as root the server runs as the `postgres` user, which must reach it.
    await chmod(dataRoot, 0o755);
    appRole = `${runId}_app`;
    appPassword = randomBytes(12).toString("hex");
    server = await startEmbeddedPostgres({
      dataDir: path.join(dataRoot, "pg"),
      role: appRole,
      rolePassword: appPassword,
      database: `${runId}_scratch`,
      // A throwaway server: durability settings off for speed (fault drills start servers of their own).
      settings: { fsync: "off", synchronous_commit: "off", full_page_writes: "off" },
      removeOnStop: true,
    });
    adminUrl = server.adminUrl;
    // The application role may create databases so the conventions checker can make throwaway ones;
    // it stays a non-superuser, as on managed services.
    await adminQuery(adminUrl, `ALTER ROLE "${appRole}" CREATEDB`);
  }

  const template = `${runId}_template`;
  await adminQuery(adminUrl, `CREATE DATABASE "${template}"${external ? "" : ` OWNER "${appRole}"`}`);
  const templateUrl = withCredentials(adminUrl, appRole, appPassword, template);
  // Migrated as the application role: proves the migrations need no superuser.
  await runMigrations({ url: templateUrl });

  const context: TestDatabaseContext = { runId, adminUrl, appRole, appPassword, template, serverVersion: "" };
  const versionClient = new pg.Client({ connectionString: adminUrl });
  versionClient.on("error", () => {});
  await versionClient.connect();
  context.serverVersion =
    (await versionClient.query<{ server_version: string }>("SHOW server_version")).rows[0]?.server_version ??
    "";
  await versionClient.end();
  project.provide("repoDbTest", context);

  return async () => {
    try {
      const client = new pg.Client({ connectionString: adminUrl });
      client.on("error", () => {});
      await client.connect();
      const leftovers = await client.query<{ datname: string }>(
        "SELECT datname FROM pg_database WHERE datname LIKE $1",
        [`${runId}\\_%`],
      );
      for (const { datname } of leftovers.rows) {
        await client.query(`DROP DATABASE IF EXISTS "${datname}" WITH (FORCE)`).catch(() => {});
      }
      await client.end();
    } finally {
      await server?.stop();
      if (dataRoot) await rm(dataRoot, { recursive: true, force: true });
    }
  };
}
