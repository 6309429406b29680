// Liveness, readiness and Prometheus metrics.
import { getPool, isSchemaCurrent } from "@repo/db";
import { Hono } from "hono";
import { z } from "zod";
import type { AppEnv } from "../context.ts";
import { ApiError } from "../errors.ts";
import { bearerMatches } from "../http.ts";
import { documented, type RouteDoc, statusSchema } from "../openapi.ts";

export function healthRoutes(): Hono<AppEnv> {
  const health = new Hono<AppEnv>();

  // Liveness: the process answers. Never touches the database, so a database outage doesn't restart us.
  const route = documented(health, "");
  route.get(
    "/healthz",
    {
      summary: "Liveness",
      tag: "operations",
      access: "public",
      database: false,
      answers: { 200: { description: "The process answers", schema: statusSchema("ok") } },
    },
    (c) => c.json({ status: "ok" }),
  );

  // Readiness: the database answers and has every migration this build expects.
  const notReady = z.object({ status: z.literal("not_ready"), reason: z.string() });
  const readyDoc = {
    summary: "Readiness: the database answers and every migration is applied",
    tag: "operations",
    access: "public",
    database: false,
    answers: {
      200: {
        description: "Ready",
        schema: z.object({
          status: z.literal("ready"),
          pool: z.object({ total: z.number().int(), idle: z.number().int(), waiting: z.number().int() }),
        }),
      },
      503: { description: "Not ready (migrations pending, or the database's error code)", schema: notReady },
    },
  } satisfies RouteDoc;
  route.get("/readyz", readyDoc, async (c) => {
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
  const metricsDoc = {
    summary: "Prometheus metrics",
    description: "Needs METRICS_TOKEN when one is set; without one, answers 404 in production.",
    tag: "operations",
    access: "metrics",
    database: false,
    answers: {
      200: { description: "Prometheus text format", schema: z.string(), contentType: "text/plain" },
    },
  } satisfies RouteDoc;
  route.get("/metrics", metricsDoc, async (c) => {
    const deps = c.get("deps");
    const { config } = deps;
    if (config.METRICS_TOKEN) {
      if (!bearerMatches(c, config.METRICS_TOKEN)) throw new ApiError("UNAUTHENTICATED");
    } else if (config.NODE_ENV === "production") {
      throw new ApiError("NOT_FOUND");
    }
    return c.text(await deps.metricsText(), 200, { "content-type": deps.metrics.merged.contentType });
  });

  return health;
}
