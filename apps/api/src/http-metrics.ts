// HTTP metrics in a registry of their own (one per app), merged with @repo/db's registry for /metrics.
// Labelled by the route pattern (/v1/admin/users/:id), never the raw path, so ids cannot explode the series.
import { registry as dbRegistry } from "@repo/db";
import { Counter, Histogram, Registry } from "prom-client";

export interface HttpMetrics {
  requests: Counter<"method" | "route" | "status">;
  duration: Histogram<"method" | "route">;
  /** The db_* and http_* series together. */
  merged: Registry;
}

export function createHttpMetrics(): HttpMetrics {
  const registry = new Registry();
  const requests = new Counter({
    name: "http_requests_total",
    help: "HTTP requests answered, by method, route pattern and status",
    labelNames: ["method", "route", "status"] as const,
    registers: [registry],
  });
  const duration = new Histogram({
    name: "http_request_duration_seconds",
    help: "HTTP request duration in seconds, by method and route pattern",
    labelNames: ["method", "route"] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry],
  });
  return { requests, duration, merged: Registry.merge([dbRegistry, registry]) };
}
