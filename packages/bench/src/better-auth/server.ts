// The Better Auth peer of section 4, as a Bun process like the floors: Hono on Bun with Better Auth's handler
// mounted as its Hono integration shows, so GET /api/auth/get-session is Better Auth's default get-session on
// its drizzle adapter over node-postgres. Usage: bun src/better-auth/server.ts with PORT, HOST, DATABASE_URL,
// DATABASE_POOL_MAX, BETTER_AUTH_SECRET (from prepareBetterAuth in ./setup.ts, which made the tables and
// sessions) and BETTER_AUTH_URL (default http://127.0.0.1:<PORT>) in the environment.
import { Hono } from "hono";
import { createBetterAuth, createBetterAuthPool } from "./auth.ts";

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is required`);
  return value;
}

async function main(): Promise<void> {
  const port = Number(required("PORT"));
  // Only the scheme reaches get-session (http: no `__Secure-` cookie prefix); the default spares the caller
  // from knowing the port before it picks one.
  const baseURL = process.env.BETTER_AUTH_URL || `http://127.0.0.1:${port}`;
  const pool = createBetterAuthPool(required("DATABASE_URL"), Number(process.env.DATABASE_POOL_MAX ?? 10));
  const auth = createBetterAuth(pool, required("BETTER_AUTH_SECRET"), baseURL);
  // Better Auth builds its context on first use; build it now so the first measured request does not.
  await auth.$context;

  const app = new Hono();
  app.on(["POST", "GET"], "/api/auth/*", (c) => auth.handler(c.req.raw));
  const server = Bun.serve({
    hostname: process.env.HOST ?? "127.0.0.1",
    port,
    fetch: app.fetch,
  });
  // Ready line for humans; the bench polls the route itself.
  console.log(`better-auth peer listening on ${server.url}`);

  const shutdown = async () => {
    await server.stop(true);
    await pool.end();
    process.exit(0);
  };
  process.on("SIGTERM", () => void shutdown());
  process.on("SIGINT", () => void shutdown());
}

await main();
