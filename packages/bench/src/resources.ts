// Everything the bench starts registers its stop here, so one call (at the end, on an error or on Ctrl-C)
// stops it all, newest first, once.

export interface Resources {
  /** Registers a cleanup step, run before those registered earlier. */
  defer(name: string, stop: () => Promise<unknown>): void;
  /** Runs every step (each even if an earlier one failed); later calls wait for the same run. */
  closeAll(): Promise<void>;
}

export function createResources(log: (line: string) => void = console.error): Resources {
  const steps: { name: string; stop: () => Promise<unknown> }[] = [];
  let closing: Promise<void> | undefined;

  const run = async () => {
    for (let step = steps.pop(); step; step = steps.pop()) {
      try {
        await step.stop();
      } catch (error) {
        log(
          `cleanup: stopping ${step.name} failed: ${error instanceof Error ? error.message : String(error)}`,
        );
      }
    }
  };

  return {
    defer(name, stop) {
      steps.push({ name, stop });
    },
    async closeAll() {
      closing ??= run();
      await closing;
      closing = undefined;
    },
  };
}
