// createApp(deps): the Hono application, built from explicit dependencies so tests can drive it with
// app.request() against a real database. One file per resource under routes/, one error handler here.
import { randomUUID } from "node:crypto";
import { Hono } from "hono";
import { bodyLimit } from "hono/body-limit";
import { matchedRoutes, routePath } from "hono/route";
import { backgroundTasks } from "./background.ts";
import type { AppDeps, AppEnv, ResolvedDeps } from "./context.ts";
import { ApiError, toErrorAnswer } from "./errors.ts";
import { createGuards } from "./guards.ts";
import { noStore, sessionCookie } from "./http.ts";
import { createHttpMetrics } from "./http-metrics.ts";
import { RequestLogger } from "./logger.ts";
import { oauthProviders } from "./oauth/providers.ts";
import { pageRoutes } from "./pages/routes.tsx";
import { adminRoutes } from "./routes/admin.ts";
import { authRoutes } from "./routes/auth.ts";
import { docsRoutes } from "./routes/docs.ts";
import { healthRoutes } from "./routes/health.ts";
import { userRoutes } from "./routes/users.ts";

export type { AppDeps } from "./context.ts";

const REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

export function createApp(input: AppDeps): Hono<AppEnv> {
  const metrics = input.metrics ?? createHttpMetrics();
  const deps: ResolvedDeps = {
    config: input.config,
    logger: input.logger,
    mailer: input.mailer,
    clock: input.clock ?? (() => new Date()),
    getClientAddress: input.getClientAddress ?? (() => undefined),
    tasks: input.tasks ?? backgroundTasks(),
    metrics,
    metricsText: input.metricsText ?? (() => metrics.merged.metrics()),
    cookie: sessionCookie(input.config),
    oauth:
      input.oauth ??
      oauthProviders(
        input.config.OAUTH_PROVIDERS,
        input.config.API_URL ?? input.config.APP_URL,
        (fields, message) => input.logger.warn(fields, message),
      ),
  };
  const guards = createGuards(deps.config);
  const app = new Hono<AppEnv>();

  // Request id, per-request logger, access log and HTTP metrics: the outermost middleware.
  app.use("*", async (c, next) => {
    const started = performance.now();
    const incoming = c.req.header("x-request-id");
    const requestId = incoming && REQUEST_ID.test(incoming) ? incoming : randomUUID();
    const log = new RequestLogger(deps.logger, requestId);
    c.set("requestId", requestId);
    c.set("deps", deps);
    c.set("log", log);
    c.header("X-Request-Id", requestId);
    await next();
    // The pattern of the handler that answered; when only middleware matched (ALL), no route did.
    const last = matchedRoutes(c).at(-1);
    const route = !last || last.method === "ALL" ? "unmatched" : routePath(c, -1);
    const seconds = (performance.now() - started) / 1000;
    const method = c.req.method;
    deps.metrics.requests.tally(method, route, String(c.res.status)).n++;
    deps.metrics.duration.observe(deps.metrics.duration.tally(method, route), seconds);
    if (route !== "/metrics" && route !== "/healthz" && route !== "/readyz") {
      log.request({
        method: c.req.method,
        route,
        status: c.res.status,
        durationMs: Math.round(seconds * 1e5) / 100,
      });
    }
  });

  // Before the body limit, so its 413 is no-store like every other /v1 answer.
  app.use("/v1/*", noStore);
  app.use(
    "*",
    bodyLimit({
      maxSize: deps.config.BODY_LIMIT_BYTES,
      onError: () => {
        throw new ApiError("PAYLOAD_TOO_LARGE");
      },
    }),
  );
  app.use("/v1/*", guards.csrfGuard);

  app.route("/", healthRoutes());
  app.route(
    "/",
    docsRoutes(() => app, deps.cookie.name),
  );
  app.route("/", pageRoutes());
  app.route("/v1/auth", authRoutes(guards));
  app.route("/v1/users", userRoutes(guards));
  app.route("/v1/admin", adminRoutes(guards));

  app.notFound(() => {
    throw new ApiError("NOT_FOUND");
  });

  // The one place errors become responses.
  app.onError((error, c) => {
    const answer = toErrorAnswer(error);
    const requestId = c.get("requestId") ?? randomUUID();
    const log = c.get("log");
    const fields = { code: answer.code, status: answer.status };
    if (answer.unexpected) {
      const detail =
        error instanceof Error ? { errName: error.name, errMessage: error.message, stack: error.stack } : {};
      if (log) log.error({ ...fields, ...detail }, "request failed");
      else deps.logger.error({ requestId, ...fields, ...detail }, "request failed");
    }
    if (answer.retryAfter !== undefined) c.header("Retry-After", String(answer.retryAfter));
    c.header("X-Request-Id", requestId);
    return c.json(
      {
        error: {
          code: answer.code,
          message: answer.message,
          requestId,
          ...(answer.details ? { details: answer.details } : {}),
        },
      },
      answer.status,
    );
  });

  return app;
}
