// The command-line tools of the audit trail, run as users run them: `admin:grant` makes the first admin (and
// records it as the system's doing), `audit:verify` exits 0 on an intact chain and 1 naming the row where an
// edit breaks it.
import { execFile } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import * as UsersService from "../src/services/users.ts";
import { useTestDatabase } from "../src/testing/index.ts";

const database = useTestDatabase();
const run = promisify(execFile);
const cli = (name: string) => fileURLToPath(new URL(`../src/cli/${name}.ts`, import.meta.url));

/** Runs a CLI on the test database; resolves with its exit code and output. */
async function bun(script: string, ...args: string[]) {
  try {
    const { stdout, stderr } = await run("bun", [cli(script), ...args], {
      env: { ...process.env, DATABASE_URL: database.url },
      timeout: 60_000,
    });
    return { code: 0, out: stdout + stderr };
  } catch (error) {
    const failed = error as { code: number; stdout: string; stderr: string };
    return { code: failed.code, out: failed.stdout + failed.stderr };
  }
}

describe("admin:grant and audit:verify", () => {
  it("grants a role by address once, records it, and the chain check passes, then fails at an edited row", async () => {
    const user = await UsersService.create({ email: "first-admin@example.com" });
    const granted = await bun("admin-grant", "--", "first-admin@example.com", "admin");
    expect(granted).toMatchObject({ code: 0 });
    expect(granted.out).toContain("is now admin");
    const again = await bun("admin-grant", "--", "first-admin@example.com", "admin");
    expect(again.out).toContain("already was admin");
    const roles = await database.admin<{ role: string }>("SELECT role FROM user_roles WHERE user_id = $1", [
      user.id,
    ]);
    expect(roles.rows).toEqual([{ role: "admin" }]);
    const events = await database.admin<{
      action: string;
      actor_type: string;
      details: unknown;
    }>("SELECT action, actor_type, details FROM audit_events WHERE subject_user_id = $1", [user.id]);
    expect(events.rows).toMatchObject([
      { action: "role_granted", actor_type: "system", details: { role: "admin", via: "command line" } },
    ]);

    expect(await bun("admin-grant", "--", "nobody@example.com", "admin")).toMatchObject({ code: 1 });
    expect(await bun("admin-grant", "--", "first-admin@example.com", "owner")).toMatchObject({ code: 1 });

    // The event is chained by the check itself (no API process runs here to do it every second).
    const intact = await bun("audit-verify");
    expect(intact.code).toBe(0);
    expect(intact.out).toContain("chained");
    expect(intact.out).toContain("the chain holds");
    const chained = await database.admin<{ seq: string }>(
      "SELECT seq FROM audit_events WHERE subject_user_id = $1",
      [user.id],
    );
    const seq = chained.rows[0]?.seq;
    expect(seq).toBeTruthy();
    await database.admin('UPDATE audit_events SET details = \'{"role": "support"}\' WHERE seq = $1', [seq]);
    const broken = await bun("audit-verify");
    expect(broken.code).toBe(1);
    expect(broken.out).toContain(`breaks at seq ${seq}`);
    expect(broken.out).toContain("content changed");
  });
});
