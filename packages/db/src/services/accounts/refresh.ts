// Fresh provider access tokens: getFreshAccessToken(accountId) answers the stored access token while it has
// a minute left, and otherwise refreshes it once with the refresh token, however many callers ask at the same
// time: callers in this process share one refresh, and processes take turns on an advisory lock, each
// re-reading the row once it holds the lock (the one before may have refreshed it already). Rotated tokens
// are stored encrypted, in the same transaction as the lock.
// How to refresh is the application's: it registers a refresher per provider (the API does, with
// openid-client's refresh grant); this package never talks to providers.
import { eq } from "drizzle-orm";
import { now } from "../../clock.ts";
import { DbError } from "../../errors.ts";
import { withAdvisoryLock } from "../../locks.ts";
import { withMetrics } from "../../metrics.ts";
import { accounts } from "../../schema/accounts.ts";
// A cycle (accounts.ts re-exports this module), used only at call time.
import * as AccountsService from "../accounts.ts";
import { notFound, type ServiceOptions, validate } from "../common.ts";
import { type Call, defineService } from "../define.ts";
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

/**
 * The account's access token, refreshed first when it has expired or has less than a minute left.
 * @throws DbError NOT_FOUND (no such account), TOKEN_INVALID (expired and no refresh token stored),
 *   CONFIG_INVALID (no refresher registered for the provider, no key ring), DECRYPTION_FAILED; a refresher's
 *   own error as it threw it (translated like any other failure).
 * @example const token = await getFreshAccessToken(account.id); await fetch(api, { headers: { authorization: `Bearer ${token}` } });
 */
export const getFreshAccessToken = defineService(
  {
    name: "accounts.getFreshAccessToken",
    table: "accounts",
    arity: 1,
    logFields: ([accountId]) => ({ accountId }),
  },
  async ({ logger, options }: Call<ServiceOptions>, accountId: string): Promise<string> => {
    const id = validate(uuid, accountId).toLowerCase();
    // Inside a caller's transaction the refresh is that transaction's; outside, one per account at a time.
    if (options.tx) return await refreshIfDue(id, logger, options.tx);
    const running = inFlight.get(id);
    if (running !== undefined) return await running;
    const started = refreshIfDue(id, logger).finally(() => inFlight.delete(id));
    inFlight.set(id, started);
    return await started;
  },
);

async function refreshIfDue(
  id: string,
  logger: Call<ServiceOptions>["logger"],
  tx?: ServiceOptions["tx"],
): Promise<string> {
  return await withAdvisoryLock(
    `accounts:refresh:${id}`,
    async (locked) => {
      const [row] = await withMetrics("select", "accounts", () =>
        locked.select().from(accounts).where(eq(accounts.id, id)),
      );
      if (!row) throw notFound("accounts");
      const access = unseal(row, "access_token");
      const expiresAt = row.accessTokenExpiresAt;
      if (access && (expiresAt === null || expiresAt.getTime() - now().getTime() > MIN_REMAINING_MS)) {
        return access;
      }
      const refresh = unseal(row, "refresh_token");
      if (!refresh)
        throw new DbError("TOKEN_INVALID", "The access token expired and no refresh token is stored");
      const refresher = refreshers.get(row.provider);
      if (!refresher) {
        throw new DbError("CONFIG_INVALID", `No token refresher is registered for provider ${row.provider}`);
      }
      const fresh = await refresher(refresh);
      // link() writes them (re-encrypting kept tokens when the key ring rotated since).
      await AccountsService.link(
        {
          userId: row.userId,
          provider: row.provider,
          providerAccountId: row.providerAccountId,
          accessToken: fresh.accessToken,
          accessTokenExpiresAt: fresh.accessTokenExpiresAt,
          // Kept when the provider sent none (it does not rotate them).
          ...(fresh.refreshToken ? { refreshToken: fresh.refreshToken } : {}),
          ...(fresh.refreshToken ? { refreshTokenExpiresAt: fresh.refreshTokenExpiresAt ?? null } : {}),
          ...(fresh.scope === undefined ? {} : { scope: fresh.scope }),
        },
        logger,
        { tx: locked },
      );
      logger.audit({ accountId: id, provider: row.provider }, "account tokens refreshed");
      return fresh.accessToken;
    },
    tx ? { tx } : {},
  );
}
