// RolesService: grants and revocations, roles of deleted users grant nothing, and no revocation by a user can
// leave no live admin, even when admins revoke each other at the same moment.
import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { isDbError } from "../../src/errors.ts";
import * as RolesService from "../../src/services/roles.ts";
import * as UsersService from "../../src/services/users.ts";
import { useTestDatabase } from "../../src/testing/index.ts";

const database = useTestDatabase({ config: { poolMax: 10 } });

const makeUser = () => UsersService.create({ email: `roles-${randomBytes(5).toString("hex")}@example.com` });

/** Every live admin is removed first: the tests of this file share one database, in any order. */
async function noAdmins(): Promise<void> {
  await database.admin("DELETE FROM user_roles WHERE role = 'admin'");
}

describe("roles", () => {
  it("grants once, reads back, revokes once; a soft-deleted user's roles grant nothing", async () => {
    const user = await makeUser();
    const admin = await makeUser();
    expect(await RolesService.grant({ userId: user.id, role: "support", grantedBy: admin.id })).toBe(true);
    expect(await RolesService.grant({ userId: user.id, role: "support" })).toBe(false);
    expect(await RolesService.rolesOf(user.id)).toEqual(["support"]);
    const row = await database.admin<{ granted_by: string }>(
      "SELECT granted_by FROM user_roles WHERE user_id = $1",
      [user.id],
    );
    expect(row.rows[0]?.granted_by).toBe(admin.id);
    expect(await RolesService.revoke({ userId: user.id, role: "support" })).toBe(true);
    expect(await RolesService.revoke({ userId: user.id, role: "support" })).toBe(false);
    expect(await RolesService.rolesOf(user.id)).toEqual([]);

    await RolesService.grant({ userId: user.id, role: "admin" });
    await UsersService.softDelete(user.id);
    expect(await RolesService.rolesOf(user.id)).toEqual([]);
    const refused = await RolesService.grant({ userId: user.id, role: "support" }).catch((e: unknown) => e);
    expect(isDbError(refused, "NOT_FOUND")).toBe(true);
  });

  it("the last admin cannot revoke their own role; the admin key (no revokedBy) can", async () => {
    await noAdmins();
    const only = await makeUser();
    await RolesService.grant({ userId: only.id, role: "admin" });
    const refused = await RolesService.revoke({ userId: only.id, role: "admin", revokedBy: only.id }).catch(
      (e: unknown) => e,
    );
    expect(isDbError(refused, "LAST_ADMIN")).toBe(true);
    expect(await RolesService.rolesOf(only.id)).toEqual(["admin"]);
    // A deleted admin does not count as another one.
    const gone = await makeUser();
    await RolesService.grant({ userId: gone.id, role: "admin" });
    await UsersService.softDelete(gone.id);
    const still = await RolesService.revoke({ userId: only.id, role: "admin", revokedBy: only.id }).catch(
      (e: unknown) => e,
    );
    expect(isDbError(still, "LAST_ADMIN")).toBe(true);
    expect(await RolesService.revoke({ userId: only.id, role: "admin" })).toBe(true);
  });

  it("an account's roles go with it: revokeAll keeps the last admin, a soft delete drops roles, a restore has none", async () => {
    await noAdmins();
    const only = await makeUser();
    await RolesService.grant({ userId: only.id, role: "admin" });
    await RolesService.grant({ userId: only.id, role: "support" });
    const refused = await RolesService.revokeAll({ userId: only.id, revokedBy: only.id }).catch(
      (e: unknown) => e,
    );
    expect(isDbError(refused, "LAST_ADMIN")).toBe(true);
    const other = await makeUser();
    await RolesService.grant({ userId: other.id, role: "admin" });
    expect(await RolesService.revokeAll({ userId: only.id, revokedBy: other.id })).toEqual([
      "admin",
      "support",
    ]);
    // A user without the admin role can always go; the admin key (no revokedBy) can remove the last admin.
    expect(await RolesService.revokeAll({ userId: only.id, revokedBy: other.id })).toEqual([]);
    expect(await RolesService.revokeAll({ userId: other.id })).toEqual(["admin"]);

    const deleted = await makeUser();
    await RolesService.grant({ userId: deleted.id, role: "support" });
    await UsersService.softDelete(deleted.id);
    await UsersService.restore(deleted.id);
    expect(await RolesService.rolesOf(deleted.id)).toEqual([]);
  });

  it("two admins revoking each other (and themselves) at once leave one admin", async () => {
    for (let round = 0; round < 5; round++) {
      await noAdmins();
      const a = await makeUser();
      const b = await makeUser();
      await RolesService.grant({ userId: a.id, role: "admin" });
      await RolesService.grant({ userId: b.id, role: "admin" });
      const outcomes = await Promise.allSettled([
        RolesService.revoke({ userId: b.id, role: "admin", revokedBy: a.id }),
        RolesService.revoke({ userId: a.id, role: "admin", revokedBy: b.id }),
        RolesService.revoke({ userId: a.id, role: "admin", revokedBy: a.id }),
        RolesService.revoke({ userId: b.id, role: "admin", revokedBy: b.id }),
      ]);
      for (const outcome of outcomes) {
        if (outcome.status === "rejected") expect(isDbError(outcome.reason, "LAST_ADMIN")).toBe(true);
      }
      const left = await database.admin<{ n: number }>(
        "SELECT count(*)::int AS n FROM user_roles WHERE role = 'admin'",
      );
      expect(left.rows[0]?.n).toBe(1);
    }
  });
});
