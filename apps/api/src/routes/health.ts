// Liveness, readiness and Prometheus metrics.
import { getPool, isSchemaCurrent } from "@repo/db";
import { Hono } from "hono";
import type { AppEnv } from "../context.ts";
import { ApiError } from "../errors.ts";
import { bearerMatches } from "../http.ts";

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
      c.get("log").warn({ code }, "readiness check failed");
      return c.json({ status: "not_ready", reason: code }, 503);
    }
  });

  // Metrics move with what requests did (a reset mailed, a password checked), so anyone who can read them
  // learns which addresses have accounts: with METRICS_TOKEN they need it; without, production hides them.
  health.get("/metrics", async (c) => {
    const { config } = c.get("deps");
    if (config.METRICS_TOKEN) {
      if (!bearerMatches(c, config.METRICS_TOKEN)) throw new ApiError("UNAUTHENTICATED");
    } else if (config.NODE_ENV === "production") {
      throw new ApiError("NOT_FOUND");
    }
    const registry = c.get("deps").metrics.merged;
    return c.text(await registry.metrics(), 200, { "content-type": registry.contentType });
  });

  return health;
}
