// Coalescing: calls issued in the same tick are gathered and answered by one query. At 16 concurrent
// requests that turns 16 round trips (and 16 pooled connections) into one, which is how a single PostgreSQL
// connection can keep up with a pipelining Redis client on reads.

interface Waiter<O> {
  resolve(value: O): void;
  reject(error: unknown): void;
}

interface Batch<I, O> {
  entries: Map<string, { input: I; waiters: Waiter<O>[] }>;
  flushed: boolean;
}

export interface CoalescerOptions<I, O> {
  /** Calls with equal keys share one entry of the batch (and its answer). */
  key(input: I): string;
  /** Answers a batch of distinct inputs, one output per input in the same order. */
  run(inputs: I[]): Promise<O[]>;
  /** A batch this large is sent at once instead of waiting for the end of the tick. Default 256. */
  maxBatch?: number;
}

/**
 * Wraps a batch function so that single calls made in the same tick share one batch. A failure of the batch
 * rejects every call in it; nothing is retried.
 * @example const load = coalescer({ key: (id) => id, run: (ids) => loadMany(ids) }); await load(id);
 */
export function coalescer<I, O>(options: CoalescerOptions<I, O>): (input: I) => Promise<O> {
  const maxBatch = options.maxBatch ?? 256;
  let open: Batch<I, O> | undefined;

  const flush = (batch: Batch<I, O>): void => {
    if (batch.flushed) return;
    batch.flushed = true;
    if (open === batch) open = undefined;
    const entries = [...batch.entries.values()];
    let running: Promise<O[]>;
    try {
      running = options.run(entries.map((entry) => entry.input));
    } catch (error) {
      running = Promise.reject(error);
    }
    running.then(
      (outputs) => {
        entries.forEach((entry, index) => {
          for (const waiter of entry.waiters) waiter.resolve(outputs[index] as O);
        });
      },
      (error: unknown) => {
        for (const entry of entries) for (const waiter of entry.waiters) waiter.reject(error);
      },
    );
  };

  return (input: I) =>
    new Promise<O>((resolve, reject) => {
      let batch = open;
      if (batch === undefined) {
        const created: Batch<I, O> = { entries: new Map(), flushed: false };
        open = batch = created;
        // nextTick runs once the current microtask queue has drained: every caller resumed by the same
        // completed query (or the same incoming I/O) has had its turn to join.
        process.nextTick(() => flush(created));
      }
      const key = options.key(input);
      let entry = batch.entries.get(key);
      if (entry === undefined) {
        entry = { input, waiters: [] };
        batch.entries.set(key, entry);
      }
      entry.waiters.push({ resolve, reject });
      if (batch.entries.size >= maxBatch) flush(batch);
    });
}
