// The cache's size and time limits, in a module of their own so that the codec, the statements and the
// service functions (and cache.ts, which re-exports them) share one definition without importing each other.

/** Largest serialized value accepted (1 MiB). */
export const MAX_VALUE_BYTES = 1024 * 1024;
/** Largest total payload of one setMany (16 MiB). */
export const MAX_BATCH_BYTES = 16 * 1024 * 1024;
/** Most keys one getMany or setMany may name. */
export const MAX_BATCH_KEYS = 1000;
/** Longest TTL accepted (one year). */
export const MAX_TTL_SECONDS = 365 * 24 * 60 * 60;
