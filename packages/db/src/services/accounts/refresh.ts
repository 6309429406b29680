// Fresh provider access tokens: getFreshAccessToken(accountId) answers the stored access token while it has
// a minute left, and otherwise refreshes it once with the refresh token, however many callers ask at the same
// time: callers in this process share one refresh, and across processes a lease (an atomic counter in the
// cache, 30 s) lets one refresh while the others wait for its result. The provider is called with no
// transaction open (a slow provider must not hold pooled connections), and the rotated tokens are written with
// an UPDATE of that row only: an account unlinked meanwhile stays unlinked (the new tokens are dropped).
// How to refresh is the application's: it registers a refresher per provider (the API does, with
// openid-client's refresh grant); this package never talks to providers.
import { eq } from "drizzle-orm";
import { now } from "../../clock.ts";
import { db } from "../../connection.ts";
import { DbError } from "../../errors.ts";
import { withMetrics } from "../../metrics.ts";
import { type Account, accounts } from "../../schema/accounts.ts";
import * as CacheService from "../cache.ts";
import { notFound, type ServiceOptions, validate } from "../common.ts";
import { type Call, defineService } from "../define.ts";
import { rewrite } from "./link-writes.ts";
import { uuid } from "./schemas.ts";
import { unseal } from "./sealing.ts";
/** New tokens from a refresh; a provider that does not rotate refresh tokens leaves refreshToken out. */
export interface RefreshedTokens {
  accessToken: string;
  accessTokenExpiresAt: Date | null;
  refreshToken?: string | null | undefined;
  refreshTokenExpiresAt?: Date | null | undefined;
  scope?: string | null | undefined;
}

/** Exchanges a refresh token with the provider (errors propagate to the callers of getFreshAccessToken). */
export type TokenRefresher = (refreshToken: string) => Promise<RefreshedTokens>;

const refreshers = new Map<string, TokenRefresher>();

/** Says how to refresh the tokens of `provider`'s accounts (replacing any refresher registered before). */
export function registerTokenRefresher(provider: string, refresher: TokenRefresher): void {
  refreshers.set(provider, refresher);
}

/** An access token with less than this left is refreshed. */
const MIN_REMAINING_MS = 60_000;

const inFlight = new Map<string, Promise<string>>();

const LEASE_TYPE = "accounts:refresh-lease";
/** Long enough for a provider's answer (the API's refresher times out well before). */
const LEASE_SECONDS = 30;
/** How long a caller waits for another process's refresh, and how often it looks. */
const WAIT_MS = 15_000;
const POLL_MS = 100;

/**
 * The account's access token, refreshed first when it has expired or has less than a minute left.
 * @throws DbError NOT_FOUND (no such account, or unlinked during the refresh), TOKEN_INVALID (expired and no
 *   refresh token stored), CONFIG_INVALID (no refresher registered for the provider, no key ring),
 *   LOCK_NOT_ACQUIRED (another process's refresh did not finish within 15 s), DECRYPTION_FAILED; a
 *   refresher's own error as it threw it (translated like any other failure).
 * @example const token = await getFreshAccessToken(account.id); await fetch(api, { headers: { authorization: `Bearer ${token}` } });
 */
export const getFreshAccessToken = defineService(
  {
    name: "accounts.getFreshAccessToken",
    table: "accounts",
    arity: 1,
    logFields: ([accountId]) => ({ accountId }),
  },
  async ({ logger }: Call<ServiceOptions>, accountId: string): Promise<string> => {
    const id = validate(uuid, accountId).toLowerCase();
    const running = inFlight.get(id);
    if (running !== undefined) return await running;
    const started = refreshIfDue(id, logger).finally(() => inFlight.delete(id));
    inFlight.set(id, started);
    return await started;
  },
);

type Logger = Call<ServiceOptions>["logger"];

async function readRow(id: string) {
  const [row] = await withMetrics("select", "accounts", () =>
    db.select().from(accounts).where(eq(accounts.id, id)),
  );
  if (!row) throw notFound("accounts");
  return row;
}

/** The stored access token when it has more than a minute left. */
function usable(row: Account): string | null {
  const access = unseal(row, "access_token");
  const expiresAt = row.accessTokenExpiresAt;
  return access && (expiresAt === null || expiresAt.getTime() - now().getTime() > MIN_REMAINING_MS)
    ? access
    : null;
}

async function refreshIfDue(id: string, logger: Logger): Promise<string> {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const row = await readRow(id);
    const current = usable(row);
    if (current) return current;
    if (!unseal(row, "refresh_token")) {
      throw new DbError("TOKEN_INVALID", "The access token expired and no refresh token is stored");
    }
    const refresher = refreshers.get(row.provider);
    if (!refresher) {
      throw new DbError("CONFIG_INVALID", `No token refresher is registered for provider ${row.provider}`);
    }
    const lease = await CacheService.increment(LEASE_TYPE, id, 1, { ttlSeconds: LEASE_SECONDS }, logger);
    if (lease.value === 1) {
      try {
        return await refreshHolding(id, refresher, logger);
      } finally {
        await CacheService.delete(LEASE_TYPE, id, logger).catch(() => {});
      }
    }
    if (Date.now() > deadline) {
      throw new DbError("LOCK_NOT_ACQUIRED", "Another process is refreshing this account's tokens");
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

/** With the lease: read again (the previous holder may have refreshed already), refresh, write. */
async function refreshHolding(id: string, refresher: TokenRefresher, logger: Logger): Promise<string> {
  const row = await readRow(id);
  const current = usable(row);
  if (current) return current;
  const refresh = unseal(row, "refresh_token");
  if (!refresh) throw new DbError("TOKEN_INVALID", "The access token expired and no refresh token is stored");
  const fresh = await refresher(refresh);
  // An UPDATE of this row only (rewrite() never inserts): unlinked meanwhile, it stays unlinked.
  await rewrite(db, row, {
    userId: row.userId,
    provider: row.provider,
    providerAccountId: row.providerAccountId,
    accessToken: fresh.accessToken,
    accessTokenExpiresAt: fresh.accessTokenExpiresAt,
    // Kept when the provider sent none (it does not rotate them).
    ...(fresh.refreshToken ? { refreshToken: fresh.refreshToken } : {}),
    ...(fresh.refreshToken ? { refreshTokenExpiresAt: fresh.refreshTokenExpiresAt ?? null } : {}),
    ...(fresh.scope === undefined ? {} : { scope: fresh.scope }),
  });
  logger.audit({ accountId: id, provider: row.provider }, "account tokens refreshed");
  return fresh.accessToken;
}
