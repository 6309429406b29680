// RolesService: the administration roles of users (schema/user-roles.ts). `admin` may do everything under
// /v1/admin, `support` may read users and the audit trail and change nothing. Roles of a soft-deleted user
// grant nothing (rolesOf joins the live user). Whoever grants or revokes records it in the audit trail, in the
// same transaction (pass `tx`).
import { and, eq, isNull, sql } from "drizzle-orm";
import { z } from "zod";
import { type DatabaseOrTransaction, transaction } from "../connection.ts";
import { DbError } from "../errors.ts";
import { acquireAdvisoryLock } from "../locks.ts";
import { withMetrics } from "../metrics.ts";
import { ROLES, type Role, userRoles } from "../schema/user-roles.ts";
import { users } from "../schema/users.ts";
import { idSchema, notFound, type ServiceOptions, validate } from "./common.ts";
import { type Call, defineService } from "./define.ts";

export { ROLES, type Role } from "../schema/user-roles.ts";

const TABLE = "user_roles";
/** Every change of who holds `admin` takes this lock, so the last-admin check cannot race. */
const ADMIN_LOCK = "user_roles:admin";

const grantInput = z.strictObject({
  userId: idSchema,
  role: z.enum(ROLES),
  /** The admin granting it; absent for the admin key and the command line. */
  grantedBy: idSchema.nullish(),
});
const revokeInput = z.strictObject({
  userId: idSchema,
  role: z.enum(ROLES),
  /**
   * The user revoking it, when a user does (not the admin key or the command line): such a revocation may not
   * leave no live admin (an admin cannot revoke their own role when they are the last one).
   */
  revokedBy: idSchema.nullish(),
});

/**
 * Grants `role` to a live user. Returns false when the user already holds it (nothing changes).
 * @throws DbError VALIDATION_FAILED, NOT_FOUND (no such live user).
 * @example await RolesService.grant({ userId, role: "support", grantedBy: admin.id }, log, { tx });
 */
export const grant = defineService(
  {
    name: "roles.grant",
    table: TABLE,
    arity: 1,
    logFields: ([payload]) => ({ userId: payload?.userId, role: payload?.role }),
  },
  async (
    { logger, options }: Call<ServiceOptions>,
    payload: z.input<typeof grantInput>,
  ): Promise<boolean> => {
    const input = validate(grantInput, payload);
    const granted = await transaction(
      async (tx) => {
        if (input.role === "admin") await acquireAdvisoryLock(tx, ADMIN_LOCK);
        // The user's row lock: a grant and a soft delete of the same user cannot interleave.
        const [user] = await withMetrics("select", "users", () =>
          tx
            .select({ id: users.id })
            .from(users)
            .where(and(eq(users.id, input.userId), isNull(users.deletedAt)))
            .for("share"),
        );
        if (!user) throw notFound("users");
        const inserted = await withMetrics("insert", TABLE, () =>
          tx
            .insert(userRoles)
            .values({ userId: input.userId, role: input.role, grantedBy: input.grantedBy ?? null })
            .onConflictDoNothing({ target: [userRoles.userId, userRoles.role] })
            .returning({ id: userRoles.id }),
        );
        return inserted.length > 0;
      },
      { tx: options.tx },
    );
    if (granted) logger.audit({ userId: input.userId, role: input.role }, "role granted");
    return granted;
  },
);

/**
 * Revokes `role` from a user. Returns false when the user did not hold it. A revocation by a user
 * (`revokedBy`) of the admin role that would leave no live admin is refused, under a lock, so two admins
 * revoking each other at once cannot both succeed.
 * @throws DbError VALIDATION_FAILED, LAST_ADMIN.
 * @example await RolesService.revoke({ userId, role: "admin", revokedBy: admin.id }, log, { tx });
 */
export const revoke = defineService(
  {
    name: "roles.revoke",
    table: TABLE,
    arity: 1,
    logFields: ([payload]) => ({ userId: payload?.userId, role: payload?.role }),
  },
  async (
    { logger, options }: Call<ServiceOptions>,
    payload: z.input<typeof revokeInput>,
  ): Promise<boolean> => {
    const input = validate(revokeInput, payload);
    const revoked = await transaction(
      async (tx) => {
        if (input.role === "admin") await acquireAdvisoryLock(tx, ADMIN_LOCK);
        if (input.role === "admin" && input.revokedBy) await assertAnotherAdmin(tx, input.userId);
        const deleted = await withMetrics("delete", TABLE, () =>
          tx
            .delete(userRoles)
            .where(and(eq(userRoles.userId, input.userId), eq(userRoles.role, input.role)))
            .returning({ id: userRoles.id }),
        );
        return deleted.length > 0;
      },
      { tx: options.tx },
    );
    if (revoked) logger.audit({ userId: input.userId, role: input.role }, "role revoked");
    return revoked;
  },
);

/**
 * Revokes every role of a user (before deleting them: UsersService.softDelete drops roles too, but without
 * this check). Returns the roles revoked. With `revokedBy` (a user deletes an account, maybe their own), it
 * refuses (LAST_ADMIN), under the admin lock, to remove the last live admin.
 * @throws DbError VALIDATION_FAILED, LAST_ADMIN.
 * @example const dropped = await RolesService.revokeAll({ userId, revokedBy: actor.id }, log, { tx });
 */
export const revokeAll = defineService(
  {
    name: "roles.revokeAll",
    table: TABLE,
    arity: 1,
    logFields: ([payload]) => ({ userId: payload?.userId }),
  },
  async (
    { logger, options }: Call<ServiceOptions>,
    payload: { userId: string; revokedBy?: string | null | undefined },
  ): Promise<Role[]> => {
    const input = validate(z.strictObject({ userId: idSchema, revokedBy: idSchema.nullish() }), payload);
    const revoked = await transaction(
      async (tx) => {
        await acquireAdvisoryLock(tx, ADMIN_LOCK);
        if (input.revokedBy) await assertAnotherAdmin(tx, input.userId);
        const deleted = await withMetrics("delete", TABLE, () =>
          tx.delete(userRoles).where(eq(userRoles.userId, input.userId)).returning({ role: userRoles.role }),
        );
        return deleted.map((row) => row.role).sort();
      },
      { tx: options.tx },
    );
    if (revoked.length > 0) logger.audit({ userId: input.userId, roles: revoked }, "roles revoked");
    return revoked;
  },
);

/**
 * LAST_ADMIN unless a live admin other than `userId` remains, or `userId` is no admin (then nothing is lost).
 * Call under ADMIN_LOCK.
 */
async function assertAnotherAdmin(tx: DatabaseOrTransaction, userId: string): Promise<void> {
  const [counts] = await withMetrics("select", TABLE, () =>
    tx
      .select({
        others: sql<number>`count(*) FILTER (WHERE ${userRoles.userId} <> ${userId})::int`,
        self: sql<number>`count(*) FILTER (WHERE ${userRoles.userId} = ${userId})::int`,
      })
      .from(userRoles)
      .innerJoin(users, and(eq(users.id, userRoles.userId), isNull(users.deletedAt)))
      .where(eq(userRoles.role, "admin")),
  );
  if ((counts?.self ?? 0) > 0 && (counts?.others ?? 0) === 0) {
    throw new DbError("LAST_ADMIN", "This is the last admin: grant the role to someone else first", {
      table: TABLE,
    });
  }
}

/**
 * The roles a live user holds (none for a soft-deleted or unknown user).
 * @throws DbError VALIDATION_FAILED.
 * @example if ((await RolesService.rolesOf(user.id)).includes("admin")) ...
 */
export const rolesOf = defineService(
  { name: "roles.rolesOf", table: TABLE, arity: 1 },
  async ({ handle }: Call<ServiceOptions>, userId: string): Promise<Role[]> => {
    const id = validate(idSchema, userId);
    const rows = await withMetrics("select", TABLE, () =>
      handle
        .select({ role: userRoles.role })
        .from(userRoles)
        .innerJoin(users, and(eq(users.id, userRoles.userId), isNull(users.deletedAt)))
        .where(eq(userRoles.userId, id))
        .orderBy(userRoles.role),
    );
    return rows.map((row) => row.role);
  },
);
