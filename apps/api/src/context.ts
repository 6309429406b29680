// The dependencies createApp() is built from and the typed context variables every handler can read.
import type { Logger, PublicSession, Role, SessionUser } from "@repo/db";
import type { Context } from "hono";
import type { BackgroundTasks } from "./background.ts";
import type { ApiConfig } from "./config.ts";
import type { SessionCookie } from "./http.ts";
import type { HttpMetrics } from "./http-metrics.ts";
import type { PinoLogger } from "./logger.ts";
import type { Mailer } from "./mailer.ts";
import type { OAuthProviders } from "./oauth/providers.ts";

export interface AppDeps {
  config: ApiConfig;
  /** A pino logger; each request logs through a RequestLogger that adds its request id to every line. */
  logger: PinoLogger;
  mailer: Mailer;
  /** The API's clock (Retry-After, timestamps it writes). Default: the system clock. */
  clock?: () => Date;
  /**
   * The socket's peer address. Production passes hono/bun's getConnInfo; tests inject one. Consulted only
   * when TRUST_PROXY is 0 or X-Forwarded-For has too few entries.
   */
  getClientAddress?: (c: Context) => string | undefined;
  /** Where after-the-response work runs; pass one to wait for it (shutdown, tests). Default: a new one. */
  tasks?: BackgroundTasks;
  /** The sign-in providers (the boot passes them warmed up). Default: built from config.OAUTH_PROVIDERS. */
  oauth?: OAuthProviders;
  /** The HTTP metrics and the registry /metrics shows. Default: new ones. */
  metrics?: HttpMetrics;
  /** What /metrics answers. Default: this process's registry; a supervised worker sums every worker's. */
  metricsText?: () => Promise<string>;
}

/** The deps with defaults filled in, plus what createApp builds once. */
export interface ResolvedDeps
  extends Required<Omit<AppDeps, "getClientAddress" | "tasks" | "oauth" | "metrics" | "metricsText">> {
  tasks: BackgroundTasks;
  getClientAddress: (c: Context) => string | undefined;
  metrics: HttpMetrics;
  metricsText: () => Promise<string>;
  /** The session cookie's name and Secure flag, from the configuration. */
  cookie: SessionCookie;
  /** The configured sign-in providers (OAUTH_*). */
  oauth: OAuthProviders;
}

export interface AppVariables {
  requestId: string;
  /** The request's logger: every line carries requestId. Fits @repo/db's Logger (audit included). */
  log: Logger;
  deps: ResolvedDeps;
  /** Set by requireSession. */
  session: PublicSession;
  user: SessionUser;
  /** The token the session was presented with, and how. */
  sessionToken: string;
  authVia: "cookie" | "bearer";
  /** Set by the admin guard: the admin key, or a signed-in user's roles. */
  admin?: { via: "key" } | { via: "role"; roles: Role[] };
  /** Set by hono's secureHeaders on pages whose CSP carries a nonce. */
  secureHeadersNonce?: string;
}

/**
 * Read the variables with `c.get("log")`, not `c.var.log`: Hono builds a new object from all of them on every
 * `c.var` access (Object.fromEntries), several times per request on the hot path.
 */
export interface AppEnv {
  Variables: AppVariables;
}
