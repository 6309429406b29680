// @repo/db: the schema, the connection, migrations, metrics, typed errors and the services.
// Apps import from here (and from the explicit subpaths in package.json), never from deep paths or drizzle-orm.
export { and, asc, desc, eq, gt, gte, inArray, isNull, lt, lte, ne, or, sql } from "drizzle-orm";
export * from "./config.ts";
export * from "./connection.ts";
export * from "./errors.ts";
export * from "./locks.ts";
export * from "./logger.ts";
export * from "./metrics.ts";
export * from "./migrate.ts";
export * from "./schema/index.ts";
