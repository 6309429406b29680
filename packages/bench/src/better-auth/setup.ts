// Prepares the Better Auth peer of section 4 in the bench database: creates Better Auth's tables (those of
// ./schema.ts) next to ours, and seeds users with one live session each through Better Auth's own sign-up, under
// a secret made for this run. ./server.ts, given that secret, accepts the returned cookies.
import { randomBytes } from "node:crypto";
import type pg from "pg";
import { type BetterAuth, createBetterAuth, createBetterAuthPool } from "./auth.ts";
import * as schema from "./schema.ts";

const TABLES = ["user", "session", "account", "verification"];
// Any fixed key: two prepares on one database take turns instead of racing to create the tables.
const LOCK_KEY = 0x62_61_75_74_68;
// Sign-ups hash with scrypt (node:crypto, off the JS thread): a few in flight keep every core busy. Also the
// setup pool's size, so no sign-up waits for a connection.
const SEED_CONCURRENCY = 8;
// The seed calls auth.api directly, so the host is unused; the scheme is not: http, like the server's
// http://127.0.0.1:<PORT>, keeps the cookie name `better-auth.session_token` (https would add `__Secure-`).
const SEED_BASE_URL = "http://127.0.0.1";

/**
 * Creates the tables the way Better Auth documents for its drizzle adapter (its CLI `generate`, then drizzle-kit):
 * drizzle-kit's SQL for ./schema.ts, from an empty snapshot. In one transaction, so the four tables exist or none
 * does. Then empties them: sessions of an earlier run are signed with another secret, useless to this one.
 */
async function createTables(pool: pg.Pool): Promise<void> {
  const client = await pool.connect();
  try {
    await client.query("BEGIN");
    await client.query("SELECT pg_advisory_xact_lock($1)", [LOCK_KEY]);
    const existing = await client.query<{ tablename: string }>(
      "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() AND tablename = ANY($1)",
      [TABLES],
    );
    if (existing.rowCount === 0) {
      // A 3 MB bundle: loaded only when the tables are missing, not whenever the bench imports this module.
      const { generateDrizzleJson, generateMigration } = await import("drizzle-kit/api");
      const statements = await generateMigration(generateDrizzleJson({}), generateDrizzleJson(schema));
      for (const statement of statements) await client.query(statement);
    } else if (existing.rowCount !== TABLES.length) {
      const found = existing.rows.map((row) => row.tablename).join(", ");
      throw new Error(`Better Auth tables partly present (${found}); drop them or use a fresh database`);
    }
    await client.query(`TRUNCATE ${TABLES.map((table) => `"${table}"`).join(", ")}`);
    await client.query("COMMIT");
  } catch (error) {
    await client.query("ROLLBACK").catch(() => {});
    throw error;
  } finally {
    client.release();
  }
}

/** One sign-up through Better Auth's API (autoSignIn is on by default); the session cookie it sets. */
async function signUp(
  auth: BetterAuth,
  cookieName: string,
  email: string,
  password: string,
): Promise<string> {
  const { headers } = await auth.api.signUpEmail({
    body: { name: email.slice(0, email.indexOf("@")), email, password },
    returnHeaders: true,
  });
  // What a browser sends back is the Set-Cookie's name=value as is: `<token>.<signature>`, still URL-encoded.
  const cookie = headers.getSetCookie().find((line) => line.startsWith(`${cookieName}=`));
  if (cookie === undefined) throw new Error(`sign-up of ${email} set no ${cookieName} cookie`);
  return cookie.split(";", 1)[0] ?? cookie;
}

export async function prepareBetterAuth(
  databaseUrl: string,
  sessions: number,
): Promise<{ secret: string; cookies: string[] }> {
  const secret = randomBytes(32).toString("base64url");
  const pool = createBetterAuthPool(databaseUrl, SEED_CONCURRENCY);
  try {
    await createTables(pool);
    const auth = createBetterAuth(pool, secret, SEED_BASE_URL);
    const cookieName = (await auth.$context).authCookies.sessionToken.name;
    const run = randomBytes(4).toString("hex");
    const password = randomBytes(12).toString("base64url");
    const cookies = new Array<string>(sessions);
    let next = 0;
    const worker = async () => {
      for (let index = next++; index < sessions; index = next++) {
        cookies[index] = await signUp(auth, cookieName, `bench-${run}-${index}@example.com`, password);
      }
    };
    await Promise.all(Array.from({ length: Math.min(SEED_CONCURRENCY, sessions) }, worker));
    return { secret, cookies };
  } finally {
    await pool.end();
  }
}
