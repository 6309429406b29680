// Liveness, readiness and Prometheus metrics.
import { getPool, isSchemaCurrent } from "@repo/db";
import { Hono } from "hono";
import type { AppEnv } from "../context.ts";

export function healthRoutes(): Hono<AppEnv> {
  const health = new Hono<AppEnv>();

  // Liveness: the process answers. Never touches the database, so a database outage doesn't restart us.
  health.get("/healthz", (c) => c.json({ status: "ok" }));

  // Readiness: the database answers and has every migration this build expects.
  health.get("/readyz", async (c) => {
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
      c.var.log.warn({ code }, "readiness check failed");
      return c.json({ status: "not_ready", reason: code }, 503);
    }
  });

  health.get("/metrics", async (c) => {
    const registry = c.var.deps.metrics.merged;
    return c.text(await registry.metrics(), 200, { "content-type": registry.contentType });
  });

  return health;
}
