// Roles granted to users for the administration routes: `admin` (everything) and `support` (reads users and
// the audit trail, changes nothing). One row per (user, role); a grant inserts it, a revocation deletes it,
// and both are recorded in the audit trail with who did them.
import { sql } from "drizzle-orm";
import { check, index, pgTable, text, unique, uuid } from "drizzle-orm/pg-core";
import { id, timestamps } from "./columns.ts";
import { users } from "./users.ts";

export const ROLES = ["admin", "support"] as const;
export type Role = (typeof ROLES)[number];

export const userRoles = pgTable(
  "user_roles",
  {
    id: id(),
    userId: uuid("user_id")
      .notNull()
      .references(() => users.id, { onDelete: "cascade" }),
    role: text("role").$type<Role>().notNull(),
    /** The admin who granted it; null when granted with the admin key or from the command line. */
    grantedBy: uuid("granted_by").references(() => users.id, { onDelete: "set null" }),
    ...timestamps(),
  },
  (t) => [
    unique("user_roles_user_role_key").on(t.userId, t.role),
    index("user_roles_granted_by_idx").on(t.grantedBy),
    check("user_roles_role_check", sql`${t.role} IN (${sql.raw(ROLES.map((r) => `'${r}'`).join(", "))})`),
  ],
);

export type UserRole = typeof userRoles.$inferSelect;
