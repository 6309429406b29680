// Several API processes on one port (API_WORKERS > 1). The supervisor starts them, restarts one that exits on
// its own (with a growing delay while it keeps failing), and stops them all on SIGTERM/SIGINT. Each worker is
// the ordinary API process with Bun's reusePort, told its index by API_WORKER_INDEX; it stops by itself when
// the supervisor's IPC channel closes, so a killed supervisor never leaves workers behind. /metrics answers for
// every worker whichever one is asked: the supervisor gathers each worker's series over IPC and prom-client's
// AggregatorRegistry sums them.
import type { Subprocess } from "bun";
import { AggregatorRegistry, type Registry } from "prom-client";

/** Set by the supervisor in each worker's environment: the worker's position, from 0. */
export const WORKER_INDEX_VARIABLE = "API_WORKER_INDEX";

/** This process's worker index, or undefined when it is not a supervised worker. */
export function workerIndex(env: Record<string, string | undefined> = process.env): number | undefined {
  const value = env[WORKER_INDEX_VARIABLE];
  return value === undefined || value === "" ? undefined : Number(value);
}

type MetricsJson = Awaited<ReturnType<Registry["getMetricsAsJSON"]>>;

/** What travels over the IPC channel between the supervisor and a worker. */
type Message =
  | { type: "metrics-request"; id: number }
  | { type: "collect"; id: number }
  | { type: "collected"; id: number; metrics: MetricsJson }
  | { type: "metrics"; id: number; all: MetricsJson[] };

const isMessage = (value: unknown): value is Message =>
  typeof value === "object" && value !== null && typeof (value as { type?: unknown }).type === "string";

/** The supervisor's log lines (a pino logger fits). */
export interface SupervisorLogger {
  info(fields: Record<string, unknown>, message: string): void;
  error(fields: Record<string, unknown>, message: string): void;
}

export interface SupervisorOptions {
  count: number;
  /** The script each worker runs (the API's entry point). */
  entry: string;
  /** Each worker's environment (API_WORKER_INDEX is added). */
  env: Record<string, string | undefined>;
  logger: SupervisorLogger;
  /** How long stop() waits for workers to finish before killing them. */
  stopTimeoutMs: number;
  /** Delay before restarting a worker that exited: doubles per quick failure, from min to max. */
  restartDelayMs?: { min: number; max: number };
  /** A worker that ran this long before exiting counts as healthy: its restart delay starts over. */
  healthyAfterMs?: number;
  /** How long a /metrics gathering waits for the other workers. */
  gatherTimeoutMs?: number;
  /**
   * A worker that failed this many times in a row, each before healthyAfterMs, makes the supervisor give up
   * (stop every worker and call onGiveUp): a configuration or database that keeps every start failing must
   * fail the service, not leave a supervisor serving nothing. Default 8.
   */
  maxQuickFailures?: number;
  /** Called once after giving up and stopping the workers. */
  onGiveUp?: () => void;
}

export interface Supervisor {
  /** The live workers' process ids, by index (undefined while one is being restarted). */
  pids(): Array<number | undefined>;
  /** SIGTERM to every worker, SIGKILL to those still running after stopTimeoutMs; resolves when all exited. */
  stop(): Promise<void>;
}

interface Slot {
  index: number;
  child: Subprocess | undefined;
  startedAt: number;
  failures: number;
  restart: ReturnType<typeof setTimeout> | undefined;
}

interface Gathering {
  /** The process that asked (not its slot: a worker restarted meanwhile must not get the old one's answer). */
  requester: Subprocess;
  requestId: number;
  waiting: Set<Slot>;
  results: MetricsJson[];
  timer: ReturnType<typeof setTimeout>;
}

export function superviseWorkers(options: SupervisorOptions): Supervisor {
  const { min, max } = options.restartDelayMs ?? { min: 250, max: 30_000 };
  const healthyAfterMs = options.healthyAfterMs ?? 30_000;
  const gatherTimeoutMs = options.gatherTimeoutMs ?? 2000;
  const maxQuickFailures = options.maxQuickFailures ?? 8;
  const slots: Slot[] = Array.from({ length: options.count }, (_, index) => ({
    index,
    child: undefined,
    startedAt: 0,
    failures: 0,
    restart: undefined,
  }));
  const gatherings = new Map<number, Gathering>();
  let nextGathering = 0;
  let stopping = false;

  const send = (child: Subprocess | undefined, message: Message): void => {
    try {
      if (child?.exitCode === null) child.send(message);
    } catch {
      // The worker is exiting: its exit handler settles what it was part of, and nobody waits for an answer.
    }
  };

  const finish = (id: number): void => {
    const gathering = gatherings.get(id);
    if (!gathering) return;
    gatherings.delete(id);
    clearTimeout(gathering.timer);
    send(gathering.requester, { type: "metrics", id: gathering.requestId, all: gathering.results });
  };

  const gather = (requester: Subprocess, requestId: number): void => {
    const id = ++nextGathering;
    const live = slots.filter((slot) => slot.child !== undefined);
    const timer = setTimeout(() => finish(id), gatherTimeoutMs);
    gatherings.set(id, { requester, requestId, waiting: new Set(live), results: [], timer });
    for (const slot of live) send(slot.child, { type: "collect", id });
  };

  const received = (slot: Slot, message: unknown): void => {
    if (!isMessage(message)) return;
    if (message.type === "metrics-request") {
      if (slot.child) gather(slot.child, message.id);
    } else if (message.type === "collected") {
      const gathering = gatherings.get(message.id);
      if (!gathering?.waiting.delete(slot)) return;
      gathering.results.push(message.metrics);
      if (gathering.waiting.size === 0) finish(message.id);
    }
  };

  const exited = (slot: Slot, child: Subprocess, code: number | null): void => {
    if (slot.child !== child) return;
    slot.child = undefined;
    // A gathering never waits for a worker that is gone.
    for (const [id, gathering] of gatherings) {
      if (gathering.waiting.delete(slot) && gathering.waiting.size === 0) finish(id);
    }
    if (stopping) return;
    slot.failures = Date.now() - slot.startedAt >= healthyAfterMs ? 1 : slot.failures + 1;
    if (slot.failures >= maxQuickFailures) {
      options.logger.error(
        { worker: slot.index, failures: slot.failures, exitCode: code },
        "API worker keeps failing at start; stopping every worker",
      );
      void supervisor.stop().then(() => options.onGiveUp?.());
      return;
    }
    const delay = Math.min(max, min * 2 ** (slot.failures - 1));
    options.logger.error(
      { worker: slot.index, pid: child.pid, exitCode: code, signal: child.signalCode, restartInMs: delay },
      "API worker exited; restarting it",
    );
    slot.restart = setTimeout(() => {
      slot.restart = undefined;
      if (!stopping) start(slot);
    }, delay);
  };

  const start = (slot: Slot): void => {
    const child = Bun.spawn([process.execPath, options.entry], {
      env: { ...options.env, [WORKER_INDEX_VARIABLE]: String(slot.index) },
      stdio: ["ignore", "inherit", "inherit"],
      ipc: (message) => received(slot, message),
      serialization: "json",
    });
    slot.child = child;
    slot.startedAt = Date.now();
    void child.exited.then((code) => exited(slot, child, code));
  };

  for (const slot of slots) start(slot);

  const supervisor: Supervisor = {
    pids: () => slots.map((slot) => slot.child?.pid),
    async stop() {
      stopping = true;
      for (const slot of slots) clearTimeout(slot.restart);
      const children = slots.flatMap((slot) => (slot.child ? [slot.child] : []));
      for (const child of children) child.kill("SIGTERM");
      const all = Promise.all(children.map((child) => child.exited));
      let timer: ReturnType<typeof setTimeout> | undefined;
      const bound = new Promise<"late">((resolve) => {
        timer = setTimeout(() => resolve("late"), options.stopTimeoutMs);
      });
      if ((await Promise.race([all, bound])) === "late") {
        options.logger.error({ timeoutMs: options.stopTimeoutMs }, "API workers killed at the stop bound");
        for (const child of children) if (child.exitCode === null) child.kill("SIGKILL");
        await all;
      }
      clearTimeout(timer);
    },
  };
  return supervisor;
}

/**
 * In a worker: answers the supervisor's collections with this process's series, and gives /metrics the sum
 * over every worker. When the supervisor does not answer in time, /metrics says so instead of passing one
 * worker's numbers off as the whole.
 */
export function workerMetrics(registry: Registry, timeoutMs = 5000): () => Promise<string> {
  const waiting = new Map<number, (all: MetricsJson[]) => void>();
  let nextRequest = 0;
  process.on("message", (message: unknown) => {
    if (!isMessage(message)) return;
    if (message.type === "collect") {
      // A collection that fails (a gauge read during shutdown) answers with nothing rather than crash.
      void registry
        .getMetricsAsJSON()
        .catch(() => [] as MetricsJson)
        .then((metrics) => {
          process.send?.({ type: "collected", id: message.id, metrics } satisfies Message);
        });
    } else if (message.type === "metrics") {
      waiting.get(message.id)?.(message.all);
      waiting.delete(message.id);
    }
  });
  return async () => {
    const id = ++nextRequest;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const all = await new Promise<MetricsJson[]>((resolve, reject) => {
      waiting.set(id, resolve);
      timer = setTimeout(() => {
        waiting.delete(id);
        reject(new Error("the supervisor did not gather the workers' metrics in time"));
      }, timeoutMs);
      process.send?.({ type: "metrics-request", id } satisfies Message);
    }).finally(() => clearTimeout(timer));
    return await AggregatorRegistry.aggregate(all).metrics();
  };
}
