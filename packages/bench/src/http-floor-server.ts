// The HTTP floors of section 4, each a Bun process like the real API: `constant` answers GET
// /v1/auth/session with a fixed JSON body; `raw-pg` reads the Bearer token and runs the read-only validation
// statement through raw node-postgres (the API's driver); `bun-sql` does the least work for the same answer with
// Bun's built-in PostgreSQL client: SHA-256 of the token, one prepared SELECT of the session joined with its
// user, JSON. Both database floors have a pool as large as the API's.
// Usage: bun src/http-floor-server.ts constant|raw-pg|bun-sql with PORT, HOST and (for the database floors)
// DATABASE_URL and DATABASE_POOL_MAX in the environment.
import { createHash } from "node:crypto";
import { resultTypes, SessionsService } from "@repo/db";
import { SQL } from "bun";
import { Hono } from "hono";
import pg from "pg";
import { rawValidate } from "./hot-paths.ts";

const MODES = ["constant", "raw-pg", "bun-sql"] as const;
type Mode = (typeof MODES)[number];

const BEARER = /^Bearer\s+(\S+)$/i;

function constantApp(): Hono {
  const app = new Hono();
  const body = { user: { id: "00000000-0000-7000-8000-000000000000" }, session: { status: "active" } };
  app.get("/v1/auth/session", (c) => c.json(body));
  return app;
}

function rawPgApp(pool: pg.Pool): Hono {
  const app = new Hono();
  app.get("/v1/auth/session", async (c) => {
    const token = BEARER.exec(c.req.header("authorization") ?? "")?.[1];
    const row = token === undefined ? null : await rawValidate(pool, token);
    return row === null ? c.json({ error: "UNAUTHORIZED" }, 401) : c.json(row);
  });
  return app;
}

/**
 * The live session of a token with its user, by Bun.sql (which prepares and names each distinct query text
 * itself): the same rows and conditions as the service's read under the default lifetimes, written by hand.
 */
function bunSqlApp(sql: SQL): Hono {
  const absoluteMs = SessionsService.DEFAULT_SESSION_CONFIG.absoluteLifetimeMs;
  const app = new Hono();
  app.get("/v1/auth/session", async (c) => {
    const token = BEARER.exec(c.req.header("authorization") ?? "")?.[1];
    if (token === undefined) return c.json({ error: "UNAUTHORIZED" }, 401);
    const hash = createHash("sha256").update(token, "utf8").digest();
    const now = Date.now();
    const rows = await sql`
      SELECT s.id, s.user_id, s.status, s.auth_method, s.ip_address, s.user_agent, s.expires_at,
             s.last_accessed_at, s.revoked_at, s.metadata, s.created_at, s.updated_at,
             u.email, u.email_verified_at, u.phone_number, u.phone_number_verified_at, u.first_name, u.last_name,
             u.avatar_url, u.metadata AS user_metadata, u.last_sign_in_at, u.created_at AS user_created_at,
             u.updated_at AS user_updated_at
      FROM sessions s JOIN users u ON u.id = s.user_id
      WHERE s.token_hash = ${hash} AND s.status = 'active' AND s.expires_at > ${new Date(now)}
        AND s.created_at > ${new Date(now - absoluteMs)} AND u.deleted_at IS NULL`;
    const row = rows[0];
    return row === undefined ? c.json({ error: "UNAUTHORIZED" }, 401) : c.json(row);
  });
  return app;
}

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
}

function main(): void {
  const mode = process.argv[2] as Mode | undefined;
  if (mode === undefined || !MODES.includes(mode)) {
    throw new Error(`usage: bun src/http-floor-server.ts ${MODES.join("|")}`);
  }
  const poolMax = Number(process.env.DATABASE_POOL_MAX ?? 10);
  const bunSql =
    mode === "bun-sql"
      ? new SQL({ url: required("DATABASE_URL"), max: poolMax, connectionTimeout: 10 })
      : undefined;
  let pool: pg.Pool | undefined;
  if (mode === "raw-pg") {
    pool = new pg.Pool({
      connectionString: required("DATABASE_URL"),
      max: poolMax,
      connectionTimeoutMillis: 10_000,
      // The driver configured as the API's pool is: the same type parsers.
      types: resultTypes,
    });
    // An idle client whose backend dies would otherwise crash the process; the pool drops it by itself.
    pool.on("error", () => {});
  }
  const app = pool ? rawPgApp(pool) : bunSql ? bunSqlApp(bunSql) : constantApp();
  const server = Bun.serve({
    hostname: process.env.HOST ?? "127.0.0.1",
    port: Number(required("PORT")),
    fetch: app.fetch,
  });
  // Ready line for humans; the bench polls the route itself.
  console.log(`${mode} floor listening on ${server.url}`);

  const shutdown = async () => {
    await server.stop(true);
    await pool?.end();
    await bunSql?.close();
    process.exit(0);
  };
  process.on("SIGTERM", () => void shutdown());
  process.on("SIGINT", () => void shutdown());
}

main();
