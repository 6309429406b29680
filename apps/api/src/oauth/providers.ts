// The configured sign-in providers at run time: each one's openid-client Configuration, found by discovery
// for OpenID Connect providers (retried: an unreachable provider never stops the API from starting, its
// routes answer 503 PROVIDER_UNAVAILABLE until discovery succeeds) or built from GitHub's fixed endpoints.
import { AccountsService } from "@repo/db";
import * as oidc from "openid-client";
import { ApiError } from "../errors.ts";
import type { OAuthProviderSettings } from "./config.ts";

/** After a failed discovery, the next request may try again this much later. */
const RETRY_AFTER_MS = 15_000;

const GITHUB = {
  issuer: "https://github.com",
  authorization_endpoint: "https://github.com/login/oauth/authorize",
  token_endpoint: "https://github.com/login/oauth/access_token",
};

export interface OAuthProvider {
  readonly settings: OAuthProviderSettings;
  /** `<API_URL>/v1/auth/oauth/<id>/callback`: the redirect URI registered with the provider. */
  readonly redirectUri: string;
  /** The provider's configuration; throws ApiError PROVIDER_UNAVAILABLE while discovery fails. */
  configuration(): Promise<oidc.Configuration>;
}

function provider(
  settings: OAuthProviderSettings,
  apiUrl: string,
  warn: (fields: Record<string, unknown>, message: string) => void,
): OAuthProvider {
  const redirectUri = `${apiUrl.replace(/\/+$/, "")}/v1/auth/oauth/${settings.id}/callback`;
  let found: Promise<oidc.Configuration> | undefined;
  let failedAt = 0;
  const discover = async (): Promise<oidc.Configuration> => {
    if (settings.kind === "github") {
      return new oidc.Configuration(GITHUB, settings.clientId, settings.clientSecret);
    }
    const issuer = new URL(settings.issuer ?? "");
    // config.ts accepts an http issuer on loopback only (the tests' provider).
    const options = issuer.protocol === "http:" ? { execute: [oidc.allowInsecureRequests] } : {};
    return await oidc.discovery(issuer, settings.clientId, settings.clientSecret, undefined, {
      ...options,
      timeout: 10,
    });
  };
  return {
    settings,
    redirectUri,
    async configuration() {
      if (!found) {
        if (Date.now() - failedAt < RETRY_AFTER_MS) {
          throw new ApiError("PROVIDER_UNAVAILABLE", undefined, {
            retryAfter: Math.ceil((RETRY_AFTER_MS - (Date.now() - failedAt)) / 1000),
          });
        }
        found = discover();
        found.catch((error: unknown) => {
          found = undefined;
          failedAt = Date.now();
          warn(
            { provider: settings.id, errName: (error as Error)?.name, errMessage: (error as Error)?.message },
            "provider discovery failed",
          );
        });
      }
      try {
        return await found;
      } catch (error) {
        throw new ApiError("PROVIDER_UNAVAILABLE", undefined, { cause: error, retryAfter: 15 });
      }
    },
  };
}

export interface OAuthProviders {
  get(id: string): OAuthProvider | undefined;
  all(): OAuthProvider[];
  /** Starts discovery of every provider in the background (failures are logged and retried on use). */
  warmUp(): void;
}

/**
 * The providers of `settings`. Each one's refresh grant is registered with AccountsService, so
 * `AccountsService.getFreshAccessToken(accountId)` can refresh its accounts' tokens.
 */
export function oauthProviders(
  settings: OAuthProviderSettings[],
  apiUrl: string,
  warn: (fields: Record<string, unknown>, message: string) => void,
): OAuthProviders {
  const byId = new Map(settings.map((entry) => [entry.id, provider(entry, apiUrl, warn)]));
  for (const entry of byId.values()) {
    AccountsService.registerTokenRefresher(entry.settings.id, async (refreshToken) => {
      const tokens = await oidc.refreshTokenGrant(await entry.configuration(), refreshToken);
      const expiresIn = tokens.expiresIn();
      return {
        accessToken: tokens.access_token,
        accessTokenExpiresAt: expiresIn === undefined ? null : new Date(Date.now() + expiresIn * 1000),
        refreshToken: tokens.refresh_token ?? null,
        ...(tokens.scope === undefined ? {} : { scope: tokens.scope }),
      };
    });
  }
  return {
    get: (id) => byId.get(id),
    all: () => [...byId.values()],
    warmUp() {
      for (const entry of byId.values()) entry.configuration().catch(() => {});
    },
  };
}
