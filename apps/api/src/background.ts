// Work finished after the response: mail, and the lookups behind answers that must not reveal (by timing)
// whether an account exists. Tracked so shutdown (and tests) can wait for it to settle.
import type { Logger } from "@repo/db";

export interface BackgroundTasks {
  /** Starts `task` now; its failure is logged, never thrown. */
  run(name: string, log: Logger, task: () => Promise<void>): void;
  /** Resolves when every task started so far has finished. */
  settle(): Promise<void>;
}

export function backgroundTasks(): BackgroundTasks {
  const pending = new Set<Promise<void>>();
  return {
    run(name, log, task) {
      const running = task()
        .catch((error: unknown) => {
          const code = (error as { code?: unknown }).code;
          log.error(
            { task: name, code: typeof code === "string" ? code : "UNKNOWN" },
            "background task failed",
          );
        })
        .finally(() => pending.delete(running));
      pending.add(running);
    },
    async settle() {
      while (pending.size > 0) await Promise.all([...pending]);
    },
  };
}
