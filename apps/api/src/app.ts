// createApp(deps): the Hono application, built from explicit dependencies so tests can drive it with
// app.request() against a real database.
import { registry as dbRegistry, getPool, isSchemaCurrent, type Logger } from "@repo/db";
import { Hono } from "hono";
import type { ApiConfig } from "./config.ts";

export interface AppDeps {
  config: ApiConfig;
  logger: Logger;
}

export function createApp(deps: AppDeps): Hono {
  const app = new Hono();

  // Liveness: the process answers. Never touches the database, so a database outage doesn't restart us.
  app.get("/healthz", (c) => c.json({ status: "ok" }));

  // Readiness: the database answers and has every migration this build expects.
  app.get("/readyz", async (c) => {
    try {
      const current = await isSchemaCurrent();
      if (!current) return c.json({ status: "not_ready", reason: "migrations pending" }, 503);
      const pool = getPool();
      return c.json({
        status: "ready",
        pool: { total: pool.totalCount, idle: pool.idleCount, waiting: pool.waitingCount },
      });
    } catch (error) {
      const code = (error as { code?: string }).code ?? "DATABASE_UNAVAILABLE";
      deps.logger.warn({ code }, "readiness check failed");
      return c.json({ status: "not_ready", reason: code }, 503);
    }
  });

  app.get("/metrics", async (c) => {
    return c.text(await dbRegistry.metrics(), 200, { "content-type": dbRegistry.contentType });
  });

  return app;
}
