// HTTP metrics in a registry of their own (one per app), merged with @repo/db's registry for /metrics.
// Labelled by the route pattern (/v1/admin/users/:id), never the raw path, so ids cannot explode the series.
// Tallied in plain numbers per request and read when scraped (prom-client's inc() and observe() hash the
// labels on every call: about 4% of the cached session check's CPU, bun --cpu-prof).
import { registry as dbRegistry, TalliedCounter, TalliedHistogram } from "@repo/db";
import { Registry } from "prom-client";

export interface HttpMetrics {
  /** http_requests_total by method, route pattern and status: `requests.tally(method, route, status).n++`. */
  requests: TalliedCounter;
  /** http_request_duration_seconds by method and route pattern. */
  duration: TalliedHistogram;
  /** The db_* and http_* series together. */
  merged: Registry;
}

export function createHttpMetrics(): HttpMetrics {
  const registry = new Registry();
  const requests = new TalliedCounter({
    name: "http_requests_total",
    help: "HTTP requests answered, by method, route pattern and status",
    labelNames: ["method", "route", "status"],
    registers: [registry],
  });
  const duration = new TalliedHistogram({
    name: "http_request_duration_seconds",
    help: "HTTP request duration in seconds, by method and route pattern",
    labelNames: ["method", "route"],
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
    registers: [registry],
  });
  return { requests, duration, merged: Registry.merge([dbRegistry, registry]) };
}
