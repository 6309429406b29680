// The one Better Auth configuration of the bench peer, shared by ./setup.ts (which seeds sessions through it)
// and ./server.ts (which serves get-session), so both sign and read cookies identically: Better Auth's defaults
// on its drizzle adapter (no cookie cache, no secondary storage, no plugins), with the two exceptions below.
import { betterAuth } from "better-auth";
import { drizzleAdapter } from "better-auth/adapters/drizzle";
import { drizzle } from "drizzle-orm/node-postgres";
import pg from "pg";
import * as schema from "./schema.ts";

export function createBetterAuthPool(databaseUrl: string, max: number): pg.Pool {
  const pool = new pg.Pool({ connectionString: databaseUrl, max, connectionTimeoutMillis: 10_000 });
  // An idle client whose backend dies would otherwise crash the process; the pool drops it by itself.
  pool.on("error", () => {});
  return pool;
}

export function createBetterAuth(pool: pg.Pool, secret: string, baseURL: string) {
  return betterAuth({
    database: drizzleAdapter(drizzle(pool, { schema }), { provider: "pg", schema }),
    emailAndPassword: { enabled: true },
    secret,
    baseURL,
    // Off by default too (and a no-op without BETTER_AUTH_TELEMETRY_ENDPOINT); explicit so nothing dials out.
    telemetry: { enabled: false },
    // Its default is `NODE_ENV === "production"`: 100 requests per 10 s per client IP, and without a forwarded-IP
    // header every client shares one bucket, so a load run would measure 429s. Off whatever NODE_ENV says.
    rateLimit: { enabled: false },
  });
}

export type BetterAuth = ReturnType<typeof createBetterAuth>;
