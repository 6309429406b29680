// Sign-in providers from the environment: any number of OpenID Connect providers found by discovery
// (OAUTH_<ID>_ISSUER, _CLIENT_ID, _CLIENT_SECRET, _SCOPES), and two presets: Google (OpenID Connect, issuer
// implied) and GitHub (OAuth 2.0: no ID token; the address comes from its API, verified ones only). <ID> names
// the provider in the routes, lower-cased: OAUTH_ACME_ISSUER serves /v1/auth/oauth/acme/...

export interface OAuthProviderSettings {
  /** The provider's name in the routes and in linked accounts (`acme`, `google`, `github`). */
  id: string;
  kind: "oidc" | "github";
  /** The issuer to discover (OpenID Connect). */
  issuer?: string;
  clientId: string;
  clientSecret: string;
  /** Space-separated. */
  scopes: string;
}

const PRESETS: Record<string, { kind: "oidc" | "github"; issuer?: string; scopes: string }> = {
  GOOGLE: { kind: "oidc", issuer: "https://accounts.google.com", scopes: "openid email profile" },
  GITHUB: { kind: "github", scopes: "read:user user:email" },
};

const VARIABLE = /^OAUTH_([A-Z0-9][A-Z0-9_]*?)_(ISSUER|CLIENT_ID|CLIENT_SECRET|SCOPES)$/;

/**
 * The configured providers; malformed ones are reported in `problems` under their variable's name.
 * A provider is configured by its CLIENT_ID (and, for one that is no preset, its ISSUER).
 */
export function oauthProviders(
  env: Record<string, string | undefined>,
  problems: Record<string, string>,
): OAuthProviderSettings[] {
  const byId = new Map<
    string,
    Partial<Record<"ISSUER" | "CLIENT_ID" | "CLIENT_SECRET" | "SCOPES", string>>
  >();
  for (const [name, value] of Object.entries(env)) {
    const match = VARIABLE.exec(name);
    if (!match || value === undefined || value === "") continue;
    const [, id = "", part = ""] = match;
    const entry = byId.get(id) ?? {};
    entry[part as "ISSUER"] = value;
    byId.set(id, entry);
  }
  const providers: OAuthProviderSettings[] = [];
  for (const [id, entry] of [...byId].sort(([a], [b]) => (a < b ? -1 : 1))) {
    const preset = PRESETS[id];
    const prefix = `OAUTH_${id}`;
    if (!entry.CLIENT_ID) {
      problems[`${prefix}_CLIENT_ID`] = `is required when any other OAUTH_${id}_* variable is set`;
      continue;
    }
    if (!entry.CLIENT_SECRET) {
      problems[`${prefix}_CLIENT_SECRET`] = "is required with its CLIENT_ID";
      continue;
    }
    const kind = preset?.kind ?? "oidc";
    const issuer = entry.ISSUER ?? preset?.issuer;
    if (kind === "oidc") {
      if (!issuer) {
        problems[`${prefix}_ISSUER`] = "is required (the provider's issuer URL, found by discovery)";
        continue;
      }
      let url: URL;
      try {
        url = new URL(issuer);
      } catch {
        problems[`${prefix}_ISSUER`] = "must be a URL";
        continue;
      }
      const loopback =
        url.hostname === "127.0.0.1" || url.hostname === "localhost" || url.hostname === "[::1]";
      if (url.protocol !== "https:" && !(url.protocol === "http:" && loopback)) {
        problems[`${prefix}_ISSUER`] = "must be https (http only on loopback, for tests)";
        continue;
      }
    } else if (entry.ISSUER) {
      problems[`${prefix}_ISSUER`] = `is not used by the ${id.toLowerCase()} preset`;
      continue;
    }
    const scopes = entry.SCOPES ?? preset?.scopes ?? "openid email profile";
    if (kind === "oidc" && !scopes.split(/\s+/).includes("openid")) {
      problems[`${prefix}_SCOPES`] = "must include openid";
      continue;
    }
    providers.push({
      id: id.toLowerCase().replace(/_/g, "-"),
      kind,
      ...(kind === "oidc" && issuer ? { issuer } : {}),
      clientId: entry.CLIENT_ID,
      clientSecret: entry.CLIENT_SECRET,
      scopes,
    });
  }
  return providers;
}
