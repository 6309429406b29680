// The schema barrel: one file per table.
export * from "./accounts.ts";
export * from "./audit-chain.ts";
export * from "./audit-events.ts";
export * from "./cache.ts";
export * from "./one-time-tokens.ts";
export * from "./sessions.ts";
export * from "./user-roles.ts";
export * from "./users.ts";
