// Prometheus series counted in plain numbers on the hot path and read when scraped. prom-client hashes and
// validates the labels on every inc() and observe(), even through a cached child: a measurable share of a
// primary-key read and of a cached session check. Here a call finds its tally through one nested map per
// label (no key string built) and adds to it; the registry reads the tallies when it is collected.
import { Counter, type Histogram, type Registry } from "prom-client";

/** Tallies by label values, one nested map per label. */
class TallyTree<T> {
  private readonly root = new Map<string, unknown>();

  constructor(
    private readonly labelNames: readonly string[],
    private readonly make: (labels: Record<string, string>) => T,
  ) {}

  /** The tally for these label values (in labelNames order), made on first use. */
  get(values: readonly string[]): T {
    let level = this.root;
    const last = values.length - 1;
    for (let i = 0; i < last; i++) {
      const key = values[i] as string;
      let next = level.get(key) as Map<string, unknown> | undefined;
      if (next === undefined) {
        next = new Map();
        level.set(key, next);
      }
      level = next;
    }
    const key = values[last] as string;
    let tally = level.get(key) as T | undefined;
    if (tally === undefined) {
      const labels: Record<string, string> = {};
      this.labelNames.forEach((name, index) => {
        labels[name] = values[index] as string;
      });
      tally = this.make(labels);
      level.set(key, tally);
    }
    return tally;
  }

  *all(): Generator<T> {
    const walk = function* (level: Map<string, unknown>, depth: number): Generator<T> {
      for (const value of level.values()) {
        if (depth === 0) yield value as T;
        else yield* walk(value as Map<string, unknown>, depth - 1);
      }
    };
    yield* walk(this.root, this.labelNames.length - 1);
  }
}

export interface HistogramTally {
  readonly labels: Record<string, string>;
  count: number;
  /** How many of `count` a counter derived from this histogram (countsOf) has handed over. */
  reported: number;
  sum: number;
  /** Per-bucket (not cumulative) counts. */
  readonly buckets: Float64Array;
}

/**
 * A histogram exposed exactly as prom-client's Histogram with the same buckets would be (cumulative `_bucket`
 * series with `le`, then `_sum` and `_count`), aggregated by sum across processes.
 * @example const t = histogram.tally("GET", "/v1/auth/session"); histogram.observe(t, seconds);
 */
export class TalliedHistogram {
  readonly type = "histogram";
  readonly aggregator = "sum";
  readonly name: string;
  readonly help: string;
  readonly labelNames: readonly string[];
  private readonly bounds: readonly number[];
  private readonly tree: TallyTree<HistogramTally>;

  constructor(config: {
    name: string;
    help: string;
    labelNames: readonly string[];
    buckets: readonly number[];
    registers: Registry[];
  }) {
    this.name = config.name;
    this.help = config.help;
    this.labelNames = config.labelNames;
    this.bounds = config.buckets;
    this.tree = new TallyTree(config.labelNames, (labels) => ({
      labels,
      count: 0,
      reported: 0,
      sum: 0,
      buckets: new Float64Array(config.buckets.length),
    }));
    // The registry formats any metric object with get(); prom-client's types list only its own classes.
    for (const registry of config.registers) registry.registerMetric(this as unknown as Histogram);
  }

  /** The tally for these label values, in labelNames order (keep it when the labels do not change). */
  tally(...values: string[]): HistogramTally {
    return this.tree.get(values);
  }

  /** Records one value. */
  observe(tally: HistogramTally, value: number): void {
    tally.count++;
    tally.sum += value;
    const bounds = this.bounds;
    for (let i = 0; i < bounds.length; i++) {
      if (value <= (bounds[i] as number)) {
        (tally.buckets as Float64Array)[i] = (tally.buckets[i] ?? 0) + 1;
        return;
      }
    }
  }

  tallies(): Iterable<HistogramTally> {
    return this.tree.all();
  }

  async get() {
    const values: Array<{ value: number; labels: Record<string, string | number>; metricName: string }> = [];
    for (const tally of this.tree.all()) {
      if (tally.count === 0) continue;
      let cumulative = 0;
      this.bounds.forEach((le, index) => {
        cumulative += tally.buckets[index] ?? 0;
        values.push({
          value: cumulative,
          labels: { le, ...tally.labels },
          metricName: `${this.name}_bucket`,
        });
      });
      values.push(
        { value: tally.count, labels: { le: "+Inf", ...tally.labels }, metricName: `${this.name}_bucket` },
        { value: tally.sum, labels: { ...tally.labels }, metricName: `${this.name}_sum` },
        { value: tally.count, labels: { ...tally.labels }, metricName: `${this.name}_count` },
      );
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  reset(): void {
    for (const tally of this.tree.all()) {
      tally.count = 0;
      tally.reported = 0;
      tally.sum = 0;
      tally.buckets.fill(0);
    }
  }
}

/** A prom-client Counter handed, at each collection, what `pending` counted since the previous one. */
function handOver<T extends { labels: Record<string, string> }>(
  config: { name: string; help: string; labelNames: readonly string[]; registers: Registry[] },
  tallies: () => Iterable<T>,
  pending: (tally: T) => number,
): Counter<string> {
  const counter = new Counter({
    ...config,
    labelNames: [...config.labelNames],
    collect() {
      for (const tally of tallies()) {
        const n = pending(tally);
        if (n > 0) this.inc(tally.labels, n);
      }
    },
  });
  // A reset also drops what was counted since the last collection, as prom-client's own counters would.
  const reset = counter.reset.bind(counter);
  counter.reset = () => {
    for (const tally of tallies()) pending(tally);
    reset();
  };
  return counter;
}

/**
 * A counter of how many values a TalliedHistogram recorded, by the same labels (db_queries_total beside
 * db_query_duration_seconds): counting costs nothing more than the observation.
 */
export function countsOf(
  histogram: TalliedHistogram,
  config: { name: string; help: string; registers: Registry[] },
): Counter<string> {
  return handOver(
    { ...config, labelNames: histogram.labelNames },
    histogram.tallies.bind(histogram),
    (tally) => {
      const n = tally.count - tally.reported;
      tally.reported = tally.count;
      return n;
    },
  );
}

export interface CounterTally {
  n: number;
  reported: number;
  readonly labels: Record<string, string>;
}

/**
 * A counter counted in plain numbers: `counter.tally(...values).n++` on the hot path.
 * @example const ok = requests.tally("GET", "/v1/auth/session", "200"); ok.n++;
 */
export class TalliedCounter {
  readonly counter: Counter<string>;
  private readonly tree: TallyTree<CounterTally>;

  constructor(config: { name: string; help: string; labelNames: readonly string[]; registers: Registry[] }) {
    this.tree = new TallyTree(config.labelNames, (labels) => ({ labels, n: 0, reported: 0 }));
    this.counter = handOver(
      config,
      () => this.tree.all(),
      (tally) => {
        const n = tally.n - tally.reported;
        tally.reported = tally.n;
        return n;
      },
    );
  }

  /** The tally for these label values, in labelNames order. */
  tally(...values: string[]): CounterTally {
    return this.tree.get(values);
  }
}
