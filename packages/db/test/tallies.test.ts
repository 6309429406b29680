// The tallied series (tallies.ts) must be indistinguishable from prom-client's own on a scrape: the same text
// exposition for the same observations, the same sums when several processes' metrics are aggregated, and a
// reset that starts them over.
import { AggregatorRegistry, Counter, Histogram, Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { countsOf, TalliedCounter, TalliedHistogram } from "../src/tallies.ts";

const BUCKETS = [0.001, 0.01, 0.1, 1];
const OBSERVATIONS: Array<[string, string, number]> = [
  ["GET", "/a", 0.0005],
  ["GET", "/a", 0.001],
  ["GET", "/a", 0.05],
  ["POST", "/a", 3],
  ["GET", "/b", 0.5],
  ["GET", "/a", 0.0099],
];

function both() {
  const ours = new Registry();
  const theirs = new Registry();
  // One configuration per series, given to ours and to prom-client's alike.
  const durations = { name: "t_seconds", help: "h", labelNames: ["method", "route"], buckets: BUCKETS };
  const totals = { name: "t_total", help: "c", labelNames: ["method", "route"] };
  const byStatus = { name: "s_total", help: "s", labelNames: ["method", "status"] };
  const histogram = new TalliedHistogram({ ...durations, registers: [ours] });
  countsOf(histogram, { ...totals, registers: [ours] });
  const statuses = new TalliedCounter({ ...byStatus, registers: [ours] });
  const reference = new Histogram({ ...durations, registers: [theirs] });
  const referenceTotal = new Counter({ ...totals, registers: [theirs] });
  const referenceStatuses = new Counter({ ...byStatus, registers: [theirs] });
  const record = () => {
    for (const [method, route, seconds] of OBSERVATIONS) {
      histogram.observe(histogram.tally(method, route), seconds);
      statuses.tally(method, seconds > 1 ? "500" : "200").n++;
      reference.observe({ method, route }, seconds);
      referenceTotal.inc({ method, route });
      referenceStatuses.inc({ method, status: seconds > 1 ? "500" : "200" });
    }
  };
  return { ours, theirs, record };
}

/** The exposition's lines in sorted order: series of one metric may come in any order. */
async function lines(registry: { metrics(): Promise<string> }): Promise<string[]> {
  return (await registry.metrics()).split("\n").sort();
}

describe("tallied metrics", () => {
  it("print the lines prom-client's Histogram and Counter print for the same observations", async () => {
    const { ours, theirs, record } = both();
    record();
    expect(await lines(ours)).toEqual(await lines(theirs));
    // Counted again after a scrape: the counters hand over only what is new.
    record();
    expect(await lines(ours)).toEqual(await lines(theirs));
  });

  it("sum across processes as prom-client's do (the API workers' /metrics)", async () => {
    const a = both();
    const b = both();
    a.record();
    b.record();
    b.record();
    const ours = AggregatorRegistry.aggregate([
      await a.ours.getMetricsAsJSON(),
      await b.ours.getMetricsAsJSON(),
    ]);
    const theirs = AggregatorRegistry.aggregate([
      await a.theirs.getMetricsAsJSON(),
      await b.theirs.getMetricsAsJSON(),
    ]);
    expect(await lines(ours)).toEqual(await lines(theirs));
  });

  it("start over after resetMetrics(), dropping what was counted since the last scrape", async () => {
    const { ours, theirs, record } = both();
    record();
    await ours.metrics();
    // Counted after a scrape and before the reset: gone with it.
    record();
    ours.resetMetrics();
    theirs.resetMetrics();
    record();
    expect(await lines(ours)).toEqual(await lines(theirs));
  });
});
