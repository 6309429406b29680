// `bun run admin:grant -- <email> <role>`: grants a role (admin or support) to the live user with that email,
// recorded in the audit trail as the system's doing. How the first admin is made; after that, admins grant
// roles over HTTP (PUT /v1/admin/users/:id/roles/:role). Exit code 0 on success (or when the user already
// holds the role), 1 on a bad argument, an unknown address or an unreachable database.
import { transaction } from "../connection.ts";
import { record } from "../services/audit.ts";
import { grant, ROLES, type Role } from "../services/roles.ts";
import { findByEmail } from "../services/users.ts";
import { runOnMigratedDatabase } from "./migrated-database.ts";

const [email, role] = process.argv.slice(2).filter((arg) => arg !== "--");
if (!email || !role || !(ROLES as readonly string[]).includes(role)) {
  console.error(`usage: bun run admin:grant -- <email> <${ROLES.join("|")}>`);
  process.exit(1);
}

await runOnMigratedDatabase(async (where) => {
  const user = await findByEmail(email);
  if (!user) throw new Error(`No live user has the address ${email}`);
  const granted = await transaction(async (tx) => {
    const changed = await grant({ userId: user.id, role: role as Role }, { tx });
    if (changed) {
      await record(
        {
          action: "role_granted",
          actorType: "system",
          subjectUserId: user.id,
          details: { role, via: "command line" },
        },
        { tx },
      );
    }
    return changed;
  });
  console.log(
    granted
      ? `${email} (${user.id}) is now ${role} at ${where}`
      : `${email} (${user.id}) already was ${role} at ${where}`,
  );
  return 0;
});
