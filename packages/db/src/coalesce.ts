// Coalescing: calls that arrive together are gathered and answered by one query. At 16 concurrent requests
// that turns 16 round trips (and 16 pooled connections) into a few, which is how a single PostgreSQL
// connection can keep up with a pipelining Redis client on reads.

interface Waiter<O> {
  resolve(value: O): void;
  reject(error: unknown): void;
}

/** One distinct input of a batch: the first caller's settle functions inline, any later ones in `more`. */
interface Entry<I, O> extends Waiter<O> {
  input: I;
  more: Waiter<O>[] | undefined;
}

interface Batch<I, O> {
  entries: Entry<I, O>[];
  /** The first entry's key (a coalescer with a key function): a lone call needs no map. */
  firstKey: string | undefined;
  /**
   * The other entries by key, made when a second one arrives (a coalescer with a key function; without one,
   * every call is an entry of its own).
   */
  byKey: Map<string, Entry<I, O>> | undefined;
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
   * an idle process still sends a lone call at the end of its tick. Default: unbounded (one batch per tick).
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

  // nextTick runs once the current microtask queue has drained: every caller resumed by the same completed
  // query (or the same incoming I/O) has had its turn to join.
  const schedule = (batch: Batch<I, O>): void => {
    if (batch.scheduled) return;
    batch.scheduled = true;
    process.nextTick(flush, batch);
  };

  // A batch that finished frees its slot. A batch that gathered while every slot was taken is sent at once:
  // before the finished batch's callers resume and build their answers, so the next query runs in PostgreSQL
  // while this process answers the last one's callers (nothing new could join in between: no I/O is read
  // then). A batch already scheduled for this tick keeps its turn, so later callers of the tick still join it.
  const settled = (): void => {
    inFlight--;
    if (open !== undefined && !open.scheduled && inFlight < maxInFlight) flush(open);
  };

  const flush = (batch: Batch<I, O>): void => {
    if (batch.flushed) return;
    batch.flushed = true;
    if (open === batch) open = undefined;
    inFlight++;
    const entries = batch.entries;
    const inputs = new Array<I>(entries.length);
    for (let i = 0; i < entries.length; i++) inputs[i] = (entries[i] as Entry<I, O>).input;
    let running: Promise<O[]>;
    try {
      running = options.run(inputs);
    } catch (error) {
      running = Promise.reject(error);
    }
    running.then(
      (outputs) => {
        settled();
        for (let i = 0; i < entries.length; i++) {
          const entry = entries[i] as Entry<I, O>;
          const output = outputs[i] as O;
          entry.resolve(output);
          if (entry.more) for (const waiter of entry.more) waiter.resolve(output);
        }
      },
      (error: unknown) => {
        settled();
        for (const entry of entries) {
          entry.reject(error);
          if (entry.more) for (const waiter of entry.more) waiter.reject(error);
        }
      },
    );
  };

  return (input: I) =>
    new Promise<O>((resolve, reject) => {
      let batch = open;
      if (batch === undefined) {
        batch = { entries: [], firstKey: undefined, byKey: undefined, scheduled: false, flushed: false };
        open = batch;
        // Otherwise the batch waits for a running one to finish (settled() schedules it).
        if (inFlight < maxInFlight) schedule(batch);
      }
      // Without a key function every call is an entry of its own: no key is built, no map kept.
      const key = options.key === undefined ? undefined : options.key(input);
      const entries = batch.entries;
      // firstKey is undefined while the batch is empty, so it matches no key then.
      const same =
        key === undefined ? undefined : batch.firstKey === key ? entries[0] : batch.byKey?.get(key);
      if (same !== undefined) {
        same.more ??= [];
        same.more.push({ resolve, reject });
        return;
      }
      const entry: Entry<I, O> = { input, resolve, reject, more: undefined };
      entries.push(entry);
      if (key !== undefined) {
        if (entries.length === 1) batch.firstKey = key;
        else {
          batch.byKey ??= new Map();
          batch.byKey.set(key, entry);
        }
      }
      if (batch.entries.length >= maxBatch) flush(batch);
    });
}
