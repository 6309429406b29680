// Seeds the bench database in a few large statements: users, one live session each, some one-time tokens and
// cache entries. Ids are UUIDv7 made here (PostgreSQL < 18 has no uuidv7()); tokens are random secrets of
// which only the SHA-256 is stored, exactly as the services store them.
import { createHash, randomBytes } from "node:crypto";
import pg from "pg";
import { uuidv7 } from "uuidv7";

export interface Fixture {
  users: { id: string; email: string }[];
  /** Live session tokens (raw, not hashed), one per user, same order as users. */
  sessionTokens: string[];
  /** The list pattern is `%@${listDomain}`. */
  listDomain: string;
  cacheResourceType: string;
  /** Keys present in the cache. */
  cacheKeys: string[];
}

export interface SeedSizes {
  users: number;
  oneTimeTokens: number;
  cacheEntries: number;
}

export const FULL_SEED: SeedSizes = { users: 100_000, oneTimeTokens: 5_000, cacheEntries: 10_000 };
export const QUICK_SEED: SeedSizes = { users: 5_000, oneTimeTokens: 1_000, cacheEntries: 10_000 };

/** Emails fall into 1000 domains, so `%@d7.example` matches a thousandth of the users. */
const DOMAINS = 1000;
const CACHE_RESOURCE_TYPE = "bench";
// Rows per INSERT: big enough to be quick, small enough to keep each parameter array a few megabytes.
const CHUNK = 25_000;
const HOUR_MS = 60 * 60 * 1000;

/** A session secret as the services make it: base64url of 32 random bytes. */
function secret(): string {
  return randomBytes(32).toString("base64url");
}

/** What the database stores for a secret: its SHA-256, here as hex for a text[] parameter. */
function digestHex(token: string): string {
  return createHash("sha256").update(token, "utf8").digest("hex");
}

/** Runs `insert` on consecutive slices of `count` rows. */
async function inChunks(
  count: number,
  insert: (from: number, to: number) => Promise<unknown>,
): Promise<void> {
  for (let from = 0; from < count; from += CHUNK) await insert(from, Math.min(count, from + CHUNK));
}

async function seedUsers(client: pg.Client, users: Fixture["users"]): Promise<void> {
  await inChunks(users.length, (from, to) => {
    const slice = users.slice(from, to);
    return client.query(
      `INSERT INTO users (id, email, first_name, last_name)
       SELECT id, email, 'Bench', 'User ' || ord
       FROM unnest($1::uuid[], $2::text[]) WITH ORDINALITY AS u(id, email, ord)`,
      [slice.map((u) => u.id), slice.map((u) => u.email)],
    );
  });
}

async function seedSessions(client: pg.Client, users: Fixture["users"], tokens: string[]): Promise<void> {
  // last_accessed_at = now: inside the refresh interval, so validate() reads without writing, as it would
  // for a user clicking around. expires_at a week out, well past any bench run.
  const expiresAt = new Date(Date.now() + 7 * 24 * HOUR_MS);
  await inChunks(users.length, (from, to) => {
    const ids = Array.from({ length: to - from }, () => uuidv7());
    return client.query(
      `INSERT INTO sessions (id, user_id, token_hash, status, auth_method, user_agent, expires_at,
                             last_accessed_at, created_at)
       SELECT id, user_id, decode(hash, 'hex'), 'active', 'password', 'bench', $4::timestamptz, now(), now()
       FROM unnest($1::uuid[], $2::uuid[], $3::text[]) AS s(id, user_id, hash)`,
      [
        ids,
        users.slice(from, to).map((u) => u.id),
        tokens.slice(from, to).map(digestHex),
        expiresAt.toISOString(),
      ],
    );
  });
}

/** Unused email-verification tokens of the first users: rows for the one-time-token indexes to skip over. */
async function seedOneTimeTokens(client: pg.Client, users: Fixture["users"], count: number): Promise<void> {
  const owners = Array.from({ length: count }, (_, n) => users[n % users.length]);
  const expiresAt = new Date(Date.now() + 24 * HOUR_MS);
  await inChunks(count, (from, to) => {
    const slice = owners.slice(from, to);
    return client.query(
      `INSERT INTO one_time_tokens (id, user_id, purpose, token_hash, sent_to, expires_at)
       SELECT id, user_id, 'email_verification', decode(hash, 'hex'), sent_to, $5::timestamptz
       FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[]) AS t(id, user_id, hash, sent_to)`,
      [
        slice.map(() => uuidv7()),
        slice.map((u) => u?.id ?? null),
        slice.map(() => digestHex(secret())),
        slice.map((u) => u?.email ?? "nobody@bench.example"),
        expiresAt.toISOString(),
      ],
    );
  });
}

async function seedCache(client: pg.Client, keys: string[]): Promise<void> {
  // Small JSON objects without an expiry, like typical cached lookups.
  await client.query(
    `INSERT INTO cache (resource_type, key, value)
     SELECT $1, key, jsonb_build_object('n', ord, 'label', 'value ' || ord)
     FROM unnest($2::text[]) WITH ORDINALITY AS c(key, ord)`,
    [CACHE_RESOURCE_TYPE, keys],
  );
}

/** Fills the freshly migrated database at `url` and returns what the hot paths need to address the rows. */
export async function seed(url: string, sizes: SeedSizes): Promise<Fixture> {
  const users = Array.from({ length: sizes.users }, (_, n) => ({
    id: uuidv7(),
    email: `user${n}@d${n % DOMAINS}.example`,
  }));
  const sessionTokens = users.map(() => secret());
  const cacheKeys = Array.from({ length: sizes.cacheEntries }, (_, n) => `k${n}`);

  const client = new pg.Client({ connectionString: url });
  client.on("error", () => {
    // A broken connection surfaces as the failure of the query in flight.
  });
  await client.connect();
  try {
    await seedUsers(client, users);
    await seedSessions(client, users, sessionTokens);
    await seedOneTimeTokens(client, users, sizes.oneTimeTokens);
    await seedCache(client, cacheKeys);
    // Fresh statistics, so the planner sees the real row counts; the vacuum also sets hint bits and the
    // visibility map now, so whichever variant is measured first does not pay for them.
    await client.query("VACUUM (ANALYZE) users, sessions, one_time_tokens, cache");
  } finally {
    await client.end().catch(() => {});
  }
  return {
    users,
    sessionTokens,
    listDomain: `d7.example`,
    cacheResourceType: CACHE_RESOURCE_TYPE,
    cacheKeys,
  };
}
