// The two HTTP floors of section 4, as a Bun process like the real API: `constant` answers GET
// /v1/auth/session with a fixed JSON body; `raw-pg` reads the Bearer token and runs the session validation SQL
// through raw node-postgres on a pool as large as the API's. Usage: bun src/http-floor-server.ts constant|raw-pg
// with PORT, HOST and (for raw-pg) DATABASE_URL and DATABASE_POOL_MAX in the environment.
import { Hono } from "hono";
import pg from "pg";
import { rawValidate } from "./hot-paths.ts";

type Mode = "constant" | "raw-pg";

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

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
}

function main(): void {
  const mode = process.argv[2] as Mode | undefined;
  if (mode !== "constant" && mode !== "raw-pg") {
    throw new Error("usage: bun src/http-floor-server.ts constant|raw-pg");
  }
  let pool: pg.Pool | undefined;
  if (mode === "raw-pg") {
    pool = new pg.Pool({
      connectionString: required("DATABASE_URL"),
      max: Number(process.env.DATABASE_POOL_MAX ?? 10),
      connectionTimeoutMillis: 10_000,
    });
    // An idle client whose backend dies would otherwise crash the process; the pool drops it by itself.
    pool.on("error", () => {});
  }
  const app = pool ? rawPgApp(pool) : constantApp();
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
    process.exit(0);
  };
  process.on("SIGTERM", () => void shutdown());
  process.on("SIGINT", () => void shutdown());
}

main();
