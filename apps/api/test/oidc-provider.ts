// A real OpenID provider for the tests (the `oidc-provider` package) on loopback, behind a small proxy that
// can tamper with what its token endpoint answers (an ID token for another audience, with another nonce, or
// expired, re-signed with the provider's own key so only the claim is wrong). Logins and consent are granted
// by the test: the interaction signs in as whoever the test named last (`signInAs`).
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { freePort } from "@repo/db/embedded";
import { decodeJwt, exportJWK, generateKeyPair, SignJWT } from "jose";
import Provider from "oidc-provider";

export interface TestIdentity {
  sub: string;
  email?: string;
  email_verified?: boolean;
  given_name?: string;
  family_name?: string;
}

export type Tamper = "wrong-audience" | "wrong-nonce" | "expired" | "provider-error" | undefined;

export interface TestProvider {
  issuer: string;
  clientId: string;
  clientSecret: string;
  /** The identity the next login interaction signs in as. */
  signInAs(identity: TestIdentity): void;
  /** What the next token answers (or the next authorization, for provider-error) are made wrong with. */
  tamper(kind: Tamper): void;
  /** Token endpoint calls with grant_type=refresh_token so far. */
  refreshGrants(): number;
  close(): Promise<void>;
}

function body(request: IncomingMessage): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    request.on("data", (chunk: Buffer) => chunks.push(chunk));
    request.on("end", () => resolve(Buffer.concat(chunks)));
    request.on("error", reject);
  });
}

export async function startTestProvider(redirectUri: string): Promise<TestProvider> {
  const port = await freePort();
  const issuer = `http://127.0.0.1:${port}`;
  const clientId = "test-client";
  const clientSecret = "test-client-secret-0123456789abcdef";
  const { privateKey } = await generateKeyPair("RS256", { extractable: true });
  const jwk = { ...(await exportJWK(privateKey)), kid: "test-key", alg: "RS256", use: "sig" };
  const identities = new Map<string, TestIdentity>();
  let current: TestIdentity | undefined;
  let tampering: Tamper;
  let refreshes = 0;

  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: clientId,
        client_secret: clientSecret,
        redirect_uris: [redirectUri],
        grant_types: ["authorization_code", "refresh_token"],
        response_types: ["code"],
      },
    ],
    jwks: { keys: [jwk as never] },
    async findAccount(_ctx, sub) {
      const identity = identities.get(sub);
      if (!identity) return undefined;
      return { accountId: sub, claims: async () => ({ ...identity }) };
    },
    claims: {
      openid: ["sub"],
      email: ["email", "email_verified"],
      profile: ["given_name", "family_name"],
    },
    features: { devInteractions: { enabled: false } },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    pkce: { required: () => true },
    // Refresh tokens for every code grant of a client allowed the refresh grant (as providers do for
    // offline access), so the tests can exercise refreshing.
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed("refresh_token"),
    ttl: {
      AccessToken: 3600,
      AuthorizationCode: 60,
      IdToken: 3600,
      RefreshToken: 86_400,
      Interaction: 600,
      Session: 600,
      Grant: 600,
    },
    cookies: { keys: ["test-provider-cookie-key"] },
  });
  provider.proxy = false;
  const handle = provider.callback();
  // The provider itself, reached only through the proxy below (which forwards token requests to it).
  const internal = createServer((req, res) => handle(req, res));
  await new Promise<void>((resolve) => internal.listen(0, "127.0.0.1", () => resolve()));
  const internalPort = (internal.address() as AddressInfo).port;

  const server: Server = createServer(async (request: IncomingMessage, response: ServerResponse) => {
    try {
      const url = new URL(request.url ?? "/", issuer);
      if (url.pathname.startsWith("/interaction/")) {
        const details = await provider.interactionDetails(request, response);
        if (tampering === "provider-error") {
          tampering = undefined;
          await provider.interactionFinished(request, response, {
            error: "access_denied",
            error_description: "the user said no",
          });
          return;
        }
        if (details.prompt.name === "login") {
          if (!current) throw new Error("signInAs() first");
          identities.set(current.sub, current);
          await provider.interactionFinished(request, response, { login: { accountId: current.sub } });
          return;
        }
        // Consent, granted by the test: every scope and claim the client asked for.
        const grant = new provider.Grant({
          accountId: details.session?.accountId ?? "",
          clientId: String(details.params.client_id),
        });
        grant.addOIDCScope(String(details.params.scope));
        const grantId = await grant.save();
        await provider.interactionFinished(
          request,
          response,
          { consent: { grantId } },
          { mergeWithLastSubmission: true },
        );
        return;
      }
      if (url.pathname === "/token" && request.method === "POST") {
        // Forwarded to the provider in-process, its answer read (and tampered with) before it goes out.
        const raw = await body(request);
        if (new URLSearchParams(raw.toString()).get("grant_type") === "refresh_token") refreshes++;
        const answer = await forward(internalPort, request, raw);
        const kind = tampering;
        if (kind && kind !== "provider-error" && answer.status === 200) {
          tampering = undefined;
          const json = JSON.parse(answer.body.toString()) as { id_token?: string };
          if (json.id_token) {
            const claims = decodeJwt(json.id_token);
            const changed = { ...claims };
            if (kind === "wrong-audience") changed.aud = "someone-else";
            if (kind === "wrong-nonce") changed.nonce = "not-the-nonce";
            if (kind === "expired") {
              changed.iat = Math.floor(Date.now() / 1000) - 7200;
              changed.exp = Math.floor(Date.now() / 1000) - 3600;
            }
            json.id_token = await new SignJWT(changed)
              .setProtectedHeader({ alg: "RS256", kid: "test-key" })
              .sign(privateKey);
          }
          answer.body = Buffer.from(JSON.stringify(json));
          answer.headers["content-length"] = String(answer.body.length);
        }
        response.writeHead(answer.status, answer.headers);
        response.end(answer.body);
        return;
      }
      handle(request, response);
    } catch (error) {
      response.writeHead(500, { "content-type": "text/plain" });
      response.end(String(error));
    }
  });
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", () => resolve()));

  return {
    issuer,
    clientId,
    clientSecret,
    signInAs(identity) {
      current = identity;
      identities.set(identity.sub, identity);
    },
    tamper(kind) {
      tampering = kind;
    },
    refreshGrants: () => refreshes,
    async close() {
      for (const each of [server, internal]) {
        each.closeAllConnections();
        await new Promise<void>((resolve) => each.close(() => resolve()));
      }
    },
  };
}

/** Sends a buffered token request to the provider and captures its answer. */
async function forward(
  port: number,
  request: IncomingMessage,
  raw: Buffer,
): Promise<{ status: number; headers: Record<string, string>; body: Buffer }> {
  const headers: Record<string, string> = {};
  for (const [name, value] of Object.entries(request.headers)) {
    if (typeof value === "string" && name !== "host" && name !== "content-length") headers[name] = value;
  }
  const answer = await fetch(`http://127.0.0.1:${port}/token`, { method: "POST", headers, body: raw });
  const out: Record<string, string> = {};
  answer.headers.forEach((value, name) => {
    if (name !== "content-encoding" && name !== "transfer-encoding") out[name] = value;
  });
  return { status: answer.status, headers: out, body: Buffer.from(await answer.arrayBuffer()) };
}
