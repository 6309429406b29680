// The point lookups of UsersService (findById, findByEmail, findByPhone): one named statement per unique
// column, for active users only or any.
import { sql } from "drizzle-orm";
import { withMetrics } from "../../metrics.ts";
import { defineStatement, param, selectColumns } from "../../statements.ts";
import { type PublicUser, publicUserColumns, type ReadOptions } from "../common.ts";

/** Point lookups by a unique column, active users only or any (then the active one first). */
function lookupStatement(column: "id" | "email" | "phone_number", includeDeleted: boolean) {
  const cast = column === "id" ? sql`::uuid` : sql``;
  const match = sql`${sql.identifier(column)} = ${param("value")}${cast}`;
  return defineStatement<PublicUser, { value: string }>(
    `users_by_${column}${includeDeleted ? "_any" : ""}`,
    includeDeleted
      ? sql`SELECT ${selectColumns("users", publicUserColumns)} FROM users WHERE ${match}
            ORDER BY deleted_at DESC NULLS FIRST, id DESC LIMIT 1`
      : sql`SELECT ${selectColumns("users", publicUserColumns)} FROM users WHERE ${match} AND deleted_at IS NULL
            LIMIT 1`,
  );
}

const lookups = {
  id: [lookupStatement("id", false), lookupStatement("id", true)],
  email: [lookupStatement("email", false), lookupStatement("email", true)],
  phone_number: [lookupStatement("phone_number", false), lookupStatement("phone_number", true)],
} as const;

/** The user whose `column` equals `value`; soft-deleted ones only with includeDeleted. */
export async function findOneBy(
  column: keyof typeof lookups,
  value: string,
  options: ReadOptions,
): Promise<PublicUser | null> {
  const statement = lookups[column][options.includeDeleted ? 1 : 0];
  const result = await withMetrics("select", "users", () => statement.run(options.tx, { value }));
  return result.rows[0] ?? null;
}
