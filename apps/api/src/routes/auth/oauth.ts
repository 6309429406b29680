// /v1/auth/oauth and /v1/auth/accounts: sign-in with a provider (OpenID Connect or GitHub's OAuth 2.0),
// linking one to the signed-in user, listing and unlinking.
//
// The flow: start keeps state, nonce and a PKCE S256 verifier server-side (the cache, 10 minutes, taken once),
// bound to the browser by an HttpOnly cookie holding a random value whose hash is stored with them, and sends
// the browser to the provider. The callback takes that record (a replayed or forged state finds nothing),
// checks the cookie, lets openid-client exchange the code and validate the ID token (signature, issuer,
// audience, nonce, expiry), then signs in under AccountsService.signInWithProvider's linking rules and sends
// the browser to redirectTo. Every failure redirects there with `?error=<CODE>`: never a stack, never the
// provider's answer.
import { createHash, randomBytes, timingSafeEqual } from "node:crypto";
import {
  AccountsService,
  CacheService,
  isDbError,
  type LinkedAccount,
  onReplicaAs,
  SessionsService,
} from "@repo/db";
import type { Context } from "hono";
import { deleteCookie, getCookie, setCookie } from "hono/cookie";
import * as oidc from "openid-client";
import { z } from "zod";
import { audited, auditFor } from "../../audit.ts";
import { allowedOrigins } from "../../config.ts";
import type { AppEnv } from "../../context.ts";
import { ApiError } from "../../errors.ts";
import {
  clientNetwork,
  isSecure,
  presentedToken,
  rateLimit,
  readQuery,
  setSessionCookie,
  singleParam,
} from "../../http.ts";
import type { OAuthProvider } from "../../oauth/providers.ts";
import { endPresentedSession, sessionConfig, sessionFields } from "./shared.ts";

const FLOW_TYPE = "oauth-flow";
const FLOW_TTL_SECONDS = 600;
const PROVIDER_TIMEOUT_MS = 10_000;

/** What start keeps for the callback. */
const flowSchema = z.object({
  provider: z.string(),
  nonce: z.string(),
  verifier: z.string(),
  redirectTo: z.string(),
  binding: z.string(),
  /** The link flow: the user (and session) that asked to link. */
  linkUserId: z.string().optional(),
  linkSessionId: z.string().optional(),
});
type Flow = z.infer<typeof flowSchema>;

/** The stable codes a failed callback redirects with. */
export type OAuthFailure =
  | "OAUTH_STATE_INVALID"
  | "OAUTH_PROVIDER_ERROR"
  | "OAUTH_TOKEN_INVALID"
  | "OAUTH_PROVIDER_UNAVAILABLE"
  | "OAUTH_ACCOUNT_ALREADY_LINKED"
  | "OAUTH_SESSION_ENDED"
  | "OAUTH_EMAIL_UNVERIFIED"
  | "RATE_LIMITED";

export const startQuery = z.strictObject({ redirectTo: singleParam(z.string().min(1).max(2048)).optional() });
export const callbackQuery = z.object({
  state: singleParam(z.string().min(1).max(512)).optional(),
  code: singleParam(z.string().min(1).max(4096)).optional(),
  error: singleParam(z.string().max(256)).optional(),
});

const sha256 = (value: string) => createHash("sha256").update(value).digest("base64url");
const bindingCookie = (c: Context<AppEnv>) => (isSecure(c) ? "__Host-oauth" : "oauth");

function providerOf(c: Context<AppEnv>): OAuthProvider {
  const found = c.get("deps").oauth.get(c.req.param("provider") ?? "");
  if (!found) throw new ApiError("NOT_FOUND");
  return found;
}

/**
 * Where to send the browser afterwards: a URL under APP_URL or one of the allowed origins (a path is taken
 * relative to APP_URL). Anything else is refused, so the flow cannot be used as an open redirect.
 */
function safeRedirect(c: Context<AppEnv>, raw: string | undefined): string {
  const { config } = c.get("deps");
  if (raw === undefined) return config.APP_URL;
  let url: URL;
  try {
    url = new URL(raw, config.APP_URL);
  } catch {
    throw new ApiError("VALIDATION_FAILED", "Invalid input: redirectTo: must be a URL of this app", {
      details: { redirectTo: "must be a URL of this app" },
    });
  }
  const origins = new Set([new URL(config.APP_URL).origin, ...allowedOrigins(config)]);
  // Allowed origins are http(s) ones: a javascript: or data: URL (origin "null") never matches.
  if (!origins.has(url.origin)) {
    throw new ApiError(
      "VALIDATION_FAILED",
      "Invalid input: redirectTo: must be under APP_URL or an allowed origin",
      {
        details: { redirectTo: "must be under APP_URL or an allowed origin" },
      },
    );
  }
  return url.toString();
}

/** Prepares a flow and answers the provider's authorization URL (the browser is sent there). */
async function beginFlow(
  c: Context<AppEnv>,
  provider: OAuthProvider,
  redirectTo: string,
  link?: { userId: string; sessionId: string },
): Promise<URL> {
  const configuration = await provider.configuration();
  const state = oidc.randomState();
  const nonce = oidc.randomNonce();
  const verifier = oidc.randomPKCECodeVerifier();
  const binding = randomBytes(32).toString("base64url");
  const flow: Flow = {
    provider: provider.settings.id,
    nonce,
    verifier,
    redirectTo,
    binding: sha256(binding),
    ...(link ? { linkUserId: link.userId, linkSessionId: link.sessionId } : {}),
  };
  await CacheService.set(FLOW_TYPE, sha256(state), flow, { ttlSeconds: FLOW_TTL_SECONDS }, c.get("log"));
  // Lax: the provider sends the browser back with a top-level GET, which carries Lax cookies.
  setCookie(c, bindingCookie(c), binding, {
    httpOnly: true,
    secure: isSecure(c),
    sameSite: "Lax",
    path: "/",
    maxAge: FLOW_TTL_SECONDS,
  });
  const parameters: Record<string, string> = {
    redirect_uri: provider.redirectUri,
    scope: provider.settings.scopes,
    state,
    code_challenge: await oidc.calculatePKCECodeChallenge(verifier),
    code_challenge_method: "S256",
  };
  if (provider.settings.kind === "oidc") parameters.nonce = nonce;
  return oidc.buildAuthorizationUrl(configuration, parameters);
}

/** What both starts check first: the provider, the start limit of the client's network, and redirectTo. */
async function startOf(c: Context<AppEnv>): Promise<{ provider: OAuthProvider; redirectTo: string }> {
  const provider = providerOf(c);
  const query = readQuery(c, startQuery);
  const { config } = c.get("deps");
  await rateLimit(c, "oauth:start:client", clientNetwork(c), config.RATE_LIMIT_SIGN_IN_PER_CLIENT);
  return { provider, redirectTo: safeRedirect(c, query.redirectTo) };
}

/** GET /oauth/:provider/start: a new flow, and 302 to the provider. */
export async function startSignIn(c: Context<AppEnv>) {
  const { provider, redirectTo } = await startOf(c);
  const url = await beginFlow(c, provider, redirectTo);
  return c.redirect(url.toString(), 302);
}

/** POST /oauth/:provider/link (signed in): a flow that links the provider to this user; answers its URL. */
export async function startLink(c: Context<AppEnv>) {
  const { provider, redirectTo } = await startOf(c);
  const url = await beginFlow(c, provider, redirectTo, {
    userId: c.get("user").id,
    sessionId: c.get("session").id,
  });
  return c.json({ authorizationUrl: url.toString() });
}

/** The identity a validated answer gives: from the ID token's claims, or GitHub's user API. */
async function identityOf(
  provider: OAuthProvider,
  configuration: oidc.Configuration,
  tokens: oidc.TokenEndpointResponse & oidc.TokenEndpointResponseHelpers,
): Promise<AccountsService.ProviderIdentityInput> {
  const expiresIn = tokens.expiresIn();
  const common = {
    provider: provider.settings.id,
    scope: tokens.scope ?? null,
    accessToken: tokens.access_token,
    accessTokenExpiresAt: expiresIn === undefined ? null : new Date(Date.now() + expiresIn * 1000),
    ...(tokens.refresh_token ? { refreshToken: tokens.refresh_token } : {}),
  };
  if (provider.settings.kind === "github")
    return { ...common, ...(await githubIdentity(tokens.access_token)) };
  const idToken = tokens.claims();
  if (!idToken) throw new Error("no ID token");
  // Providers may keep the address out of the ID token: it then comes from the UserInfo endpoint, for the
  // same subject (openid-client checks that). The address and its verified flag always come from one source.
  let info: Record<string, unknown> | undefined;
  if (idToken.email === undefined && configuration.serverMetadata().userinfo_endpoint) {
    info = await oidc.fetchUserInfo(configuration, tokens.access_token, idToken.sub);
  }
  const address = info ?? idToken;
  const claims: Record<string, unknown> = {
    ...info,
    ...idToken,
    email: address.email,
    email_verified: address.email_verified,
  };
  const text = (value: unknown) => (typeof value === "string" && value.length > 0 ? value : null);
  return {
    ...common,
    providerAccountId: idToken.sub,
    email: text(claims.email),
    emailVerified: claims.email_verified === true,
    firstName: text(claims.given_name)?.slice(0, 200) ?? null,
    lastName: text(claims.family_name)?.slice(0, 200) ?? null,
    avatarUrl: text(claims.picture)?.startsWith("https://") ? text(claims.picture) : null,
  };
}

/** GitHub has no ID token: the user and its primary verified address come from its API. */
async function githubIdentity(accessToken: string) {
  const get = async (path: string) => {
    const response = await fetch(`https://api.github.com${path}`, {
      headers: {
        authorization: `Bearer ${accessToken}`,
        accept: "application/vnd.github+json",
        "user-agent": "repo-api",
      },
      signal: AbortSignal.timeout(PROVIDER_TIMEOUT_MS),
    });
    if (!response.ok) throw new Error(`GitHub ${path} answered ${response.status}`);
    return (await response.json()) as unknown;
  };
  const user = z
    .object({ id: z.number(), name: z.string().nullish(), avatar_url: z.string().nullish() })
    .parse(await get("/user"));
  const emails = z
    .array(z.object({ email: z.string(), primary: z.boolean(), verified: z.boolean() }))
    .parse(await get("/user/emails"));
  const primary = emails.find((entry) => entry.primary && entry.verified);
  const [first, ...rest] = (user.name ?? "").trim().split(/\s+/);
  return {
    providerAccountId: String(user.id),
    email: primary?.email ?? null,
    emailVerified: primary !== undefined,
    firstName: first ? first.slice(0, 200) : null,
    lastName: rest.length > 0 ? rest.join(" ").slice(0, 200) : null,
    avatarUrl: user.avatar_url?.startsWith("https://") ? user.avatar_url : null,
  };
}

/** GET /oauth/:provider/callback: see the file comment. Always a redirect. */
export async function callback(c: Context<AppEnv>) {
  const log = c.get("log");
  const { config } = c.get("deps");
  let redirectTo = config.APP_URL;
  const fail = (code: OAuthFailure, detail?: unknown) => {
    log.warn(
      {
        provider: c.req.param("provider"),
        code,
        ...(detail instanceof Error ? { errName: detail.name } : {}),
      },
      "provider sign-in failed",
    );
    const target = new URL(redirectTo);
    target.searchParams.set("error", code);
    return c.redirect(target.toString(), 302);
  };
  const provider = providerOf(c);
  const parsed = callbackQuery.safeParse(c.req.queries());
  const query = parsed.success ? parsed.data : {};
  const presentedBinding = getCookie(c, bindingCookie(c));
  deleteCookie(c, bindingCookie(c), { path: "/", secure: isSecure(c) });
  if (!query.state) return fail("OAUTH_STATE_INVALID");
  // Taken once: a replayed state (or a second callback racing this one) finds nothing.
  const stored = await CacheService.take(FLOW_TYPE, sha256(query.state), log);
  const flow = flowSchema.safeParse(stored);
  if (!flow.success) return fail("OAUTH_STATE_INVALID");
  redirectTo = flow.data.redirectTo;
  const bound =
    presentedBinding !== undefined &&
    timingSafeEqual(Buffer.from(sha256(presentedBinding)), Buffer.from(flow.data.binding));
  if (flow.data.provider !== provider.settings.id || !bound) return fail("OAUTH_STATE_INVALID");
  if (query.error !== undefined || query.code === undefined) return fail("OAUTH_PROVIDER_ERROR");
  try {
    await rateLimit(c, "sign-in:client", clientNetwork(c), config.RATE_LIMIT_SIGN_IN_PER_CLIENT);
  } catch {
    return fail("RATE_LIMITED");
  }

  let configuration: oidc.Configuration;
  try {
    configuration = await provider.configuration();
  } catch (error) {
    return fail("OAUTH_PROVIDER_UNAVAILABLE", error);
  }
  let identity: AccountsService.ProviderIdentityInput;
  try {
    // The URL the provider redirected to, rebuilt from the registered redirect URI (a proxy may have changed
    // the host the API sees) and this request's query.
    const current = new URL(provider.redirectUri);
    current.search = new URL(c.req.url).search;
    const tokens = await oidc.authorizationCodeGrant(configuration, current, {
      pkceCodeVerifier: flow.data.verifier,
      expectedState: query.state,
      ...(provider.settings.kind === "oidc" ? { expectedNonce: flow.data.nonce, idTokenExpected: true } : {}),
    });
    identity = await identityOf(provider, configuration, tokens);
  } catch (error) {
    return fail("OAUTH_TOKEN_INVALID", error);
  }

  if (flow.data.linkUserId) {
    // Linking: the session that asked must still be live and the same user's.
    const session = await currentSessionUser(c);
    if (
      !session ||
      session.userId !== flow.data.linkUserId ||
      session.sessionId !== flow.data.linkSessionId
    ) {
      return fail("OAUTH_SESSION_ENDED");
    }
    try {
      const userId = flow.data.linkUserId;
      await audited(c, async (tx, record) => {
        const account = await AccountsService.link({ userId, ...withoutProfile(identity) }, log, { tx });
        await record("provider_linked", {
          subject: userId,
          actor: "subject",
          details: { provider: account.provider, accountId: account.id },
        });
      });
    } catch (error) {
      if (isDbError(error, "ACCOUNT_ALREADY_LINKED")) return fail("OAUTH_ACCOUNT_ALREADY_LINKED", error);
      throw error;
    }
    const target = new URL(redirectTo);
    target.searchParams.set("linked", provider.settings.id);
    return c.redirect(target.toString(), 302);
  }

  let signed: AccountsService.ProviderSignInResult;
  try {
    signed = await AccountsService.signInWithProvider(identity, log, {
      session: sessionFields(c, `oauth:${provider.settings.id}`),
      sessionConfig: sessionConfig(c),
      audit: auditFor(c, ({ user, account, outcome, revokedSessions }) => {
        const subject = { subject: user.id, actor: "subject" } as const;
        const about = { provider: account.provider, accountId: account.id };
        return [
          outcome === "created" && ["sign_up", { ...subject, details: { ...about, outcome } }],
          outcome === "linked_first_proof" && [
            "email_verified",
            { ...subject, details: { method: "provider", ...about, revokedSessions } },
          ],
          outcome !== "signed_in" && ["provider_linked", { ...subject, details: { ...about, outcome } }],
          ["sign_in", { ...subject, details: { method: "provider", ...about } }],
        ];
      }),
    });
  } catch (error) {
    // An identity this package refuses (an id or a name out of bounds) is an unusable answer.
    if (isDbError(error, "VALIDATION_FAILED")) return fail("OAUTH_TOKEN_INVALID", error);
    if (isDbError(error, "ACCOUNT_ALREADY_LINKED")) return fail("OAUTH_ACCOUNT_ALREADY_LINKED", error);
    if (isDbError(error, "EMAIL_NOT_VERIFIED")) return fail("OAUTH_EMAIL_UNVERIFIED", error);
    throw error;
  }
  // Only once the new session exists: a refused sign-in leaves the browser as it was.
  await endPresentedSession(c, signed.session.session.id);
  setSessionCookie(c, signed.session.token, signed.session.session.expiresAt);
  return c.redirect(redirectTo, 302);
}

function withoutProfile(identity: AccountsService.ProviderIdentityInput) {
  const { email: _e, emailVerified: _v, firstName: _f, lastName: _l, avatarUrl: _a, ...rest } = identity;
  return rest;
}

/** The session the request's cookie belongs to (the link callback arrives with the browser's cookie). */
async function currentSessionUser(c: Context<AppEnv>): Promise<{ userId: string; sessionId: string } | null> {
  const presented = presentedToken(c);
  if (!presented) return null;
  const auth = await SessionsService.validate(presented.token, c.get("log"));
  return auth ? { userId: auth.user.id, sessionId: auth.session.id } : null;
}

/** What a client sees of a linked provider account. */
export function accountView(account: LinkedAccount) {
  return {
    id: account.id,
    provider: account.provider,
    providerAccountId: account.providerAccountId,
    scope: account.scope,
    createdAt: account.createdAt,
    updatedAt: account.updatedAt,
  };
}

/** GET /accounts: the user's linked providers. */
export async function listAccounts(c: Context<AppEnv>) {
  const userId = c.get("user").id;
  // A list that may lag a moment: on a replica when there are any (DATABASE_REPLICA_URLS).
  const accounts = await onReplicaAs(userId, (tx) =>
    AccountsService.listForUser(userId, c.get("log"), { tx }),
  );
  return c.json({ accounts: accounts.map(accountView) });
}

/**
 * DELETE /accounts/:id: unlinks one of the user's providers, unless it is the user's last way to sign in
 * (no password, no proven address for mailed sign-in links, no other provider): 409 LAST_SIGN_IN_METHOD.
 */
export async function unlinkAccount(c: Context<AppEnv>) {
  const id = z.guid().safeParse(c.req.param("id"));
  if (!id.success) throw new ApiError("NOT_FOUND");
  const userId = c.get("user").id;
  await audited(
    c,
    async (tx, record) => {
      const account = await AccountsService.unlink(
        { accountId: id.data.toLowerCase(), userId, keepSignInMethod: true },
        c.get("log"),
        { tx },
      );
      await record("provider_unlinked", {
        subject: userId,
        details: { provider: account.provider, accountId: account.id },
      });
    },
    { userId },
  );
  return c.body(null, 204);
}
