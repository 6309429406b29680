// The data layer's clock. Services compute every expiry from it and pass times to SQL as parameters (never
// SQL now()), so tests can move time instead of sleeping.
let source: () => Date = () => new Date();

/** The current time according to the data layer. */
export function now(): Date {
  return source();
}

/** Replaces the clock (tests). `resetClock()` restores the system clock. */
export function setClock(clock: () => Date): void {
  source = clock;
}

export function resetClock(): void {
  source = () => new Date();
}

/** A clock for tests: starts at `start` and moves only when told. */
export function manualClock(start: Date = new Date()): {
  now: () => Date;
  advance: (ms: number) => void;
  set: (at: Date) => void;
} {
  let current = start.getTime();
  return {
    now: () => new Date(current),
    advance: (ms) => {
      current += ms;
    },
    set: (at) => {
      current = at.getTime();
    },
  };
}
