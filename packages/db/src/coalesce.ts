// Coalescing: calls that arrive together are gathered and answered by one query. At 16 concurrent requests
// that turns 16 round trips (and 16 pooled connections) into a few, which is how a single PostgreSQL
// connection can keep up with a pipelining Redis client on reads.

interface Waiter<O> {
  resolve(value: O): void;
  reject(error: unknown): void;
}

interface Batch<I, O> {
  entries: Map<string | number, { input: I; waiters: Waiter<O>[] }>;
  scheduled: boolean;
  flushed: boolean;
}

export interface CoalescerOptions<I, O> {
  /** Calls with equal keys share one entry of the batch (and its answer). Absent: every call is its own entry. */
  key?: (input: I) => string;
  /** Answers a batch of distinct inputs, one output per input in the same order. */
  run(inputs: I[]): Promise<O[]>;
  /** A batch this large is sent at once instead of waiting. Default 256. */
  maxBatch?: number;
  /**
   * Batches allowed to run at once. While that many are running, new calls gather in the next batch, which
   * is sent as soon as one of them finishes (group commit): under load each query answers more callers, and
   * an idle process still sends a lone call at the end of its tick. Default: unbounded (one batch per tick;
   * and while calls come one at a time, each is sent at once).
   */
  maxInFlight?: number;
}

/**
 * Wraps a batch function so that single calls made together share one batch. A failure of the batch rejects
 * every call in it; nothing is retried.
 * @example const load = coalescer({ key: (id) => id, run: (ids) => loadMany(ids), maxInFlight: 2 }); await load(id);
 */
export function coalescer<I, O>(options: CoalescerOptions<I, O>): (input: I) => Promise<O> {
  const maxBatch = options.maxBatch ?? 256;
  const maxInFlight = options.maxInFlight ?? Number.POSITIVE_INFINITY;
  let open: Batch<I, O> | undefined;
  let inFlight = 0;
  // True while callers come one at a time: the last batch had a single call, or a call was sent alone since.
  // Without maxInFlight such a caller is sent at once, skipping the gathering (its promise, entry and tick):
  // at concurrency 1 there is never anyone to wait for, and the gathering was about 5% of a cache write's
  // time. Calls made while it runs gather behind it and go once it is done, so calls still take effect in
  // the order they were made (a later set() of the same key wins); two calls in one batch turn it off, so
  // under load every call gathers as before. With maxInFlight every call gathers: a burst's first call sent
  // alone would make the rest wait for it where they could have shared its query.
  const soloAllowed = maxInFlight === Number.POSITIVE_INFINITY;
  let solo = false;
  let aloneRunning = false;

  // nextTick runs once the current microtask queue has drained: every caller resumed by the same completed
  // query (or the same incoming I/O) has had its turn to join.
  const schedule = (batch: Batch<I, O>): void => {
    if (batch.scheduled) return;
    batch.scheduled = true;
    process.nextTick(() => flush(batch));
  };

  // A batch that finished frees its slot. A batch that gathered while every slot was taken is sent at once:
  // before the finished batch's callers resume and build their answers, so the next query runs in PostgreSQL
  // while this process answers the last one's callers (nothing new could join in between: no I/O is read
  // then). A batch already scheduled for this tick keeps its turn, so later callers of the tick still join it.
  const settled = (): void => {
    inFlight--;
    aloneRunning = false;
    if (open !== undefined && !open.scheduled && inFlight < maxInFlight) flush(open);
  };

  const flush = (batch: Batch<I, O>): void => {
    if (batch.flushed) return;
    batch.flushed = true;
    if (open === batch) open = undefined;
    solo =
      soloAllowed &&
      batch.entries.size === 1 &&
      (batch.entries.values().next().value?.waiters.length ?? 0) === 1;
    inFlight++;
    const entries = [...batch.entries.values()];
    let running: Promise<O[]>;
    try {
      running = options.run(entries.map((entry) => entry.input));
    } catch (error) {
      running = Promise.reject(error);
    }
    running.then(
      (outputs) => {
        settled();
        entries.forEach((entry, index) => {
          for (const waiter of entry.waiters) waiter.resolve(outputs[index] as O);
        });
      },
      (error: unknown) => {
        settled();
        for (const entry of entries) for (const waiter of entry.waiters) waiter.reject(error);
      },
    );
  };

  // Nothing gathering, nothing running, callers one at a time: this call alone, now.
  const alone = async (input: I): Promise<O> => {
    inFlight++;
    aloneRunning = true;
    let outputs: O[];
    try {
      outputs = await options.run([input]);
    } finally {
      settled();
    }
    return outputs[0] as O;
  };

  return (input: I) => {
    if (solo && open === undefined && inFlight === 0) return alone(input);
    return new Promise<O>((resolve, reject) => {
      let batch = open;
      if (batch === undefined) {
        batch = { entries: new Map(), scheduled: false, flushed: false };
        open = batch;
        // Otherwise the batch waits for a running one (or a call sent alone) to finish: settled() sends it.
        if (inFlight < maxInFlight && !aloneRunning) schedule(batch);
      }
      // Without a key function a call's position in the batch is its key: no string is built per call.
      const key = options.key === undefined ? batch.entries.size : options.key(input);
      let entry = batch.entries.get(key);
      if (entry === undefined) {
        entry = { input, waiters: [] };
        batch.entries.set(key, entry);
      }
      entry.waiters.push({ resolve, reject });
      if (batch.entries.size >= maxBatch) flush(batch);
    });
  };
}
