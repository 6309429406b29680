// The OS user the server runs as: PostgreSQL refuses to run as root, so as root it runs as `postgres`.
import { execFileSync } from "node:child_process";
import { userInfo } from "node:os";
import path from "node:path";

export interface RunAs {
  uid?: number;
  gid?: number;
}

/** PostgreSQL (and PgBouncer) will not run as root: use (and if needed create) the `postgres` OS user. */
export function runAs(): RunAs {
  if (userInfo().uid !== 0) return {};
  const lookup = () => {
    try {
      const uid = Number(execFileSync("id", ["-u", "postgres"], { encoding: "utf8" }).trim());
      const gid = Number(execFileSync("id", ["-g", "postgres"], { encoding: "utf8" }).trim());
      return { uid, gid };
    } catch {
      return undefined;
    }
  };
  const found = lookup();
  if (found) return found;
  try {
    execFileSync("groupadd", ["--system", "postgres"], { stdio: "ignore" });
  } catch {
    // The group may exist without the user.
  }
  execFileSync("useradd", ["--system", "--gid", "postgres", "--no-create-home", "postgres"], {
    stdio: "ignore",
  });
  const created = lookup();
  if (!created) throw new Error("Could not create the OS user `postgres` to run the embedded server");
  return created;
}

/** As root, the server runs as `postgres`: fail clearly if that user cannot reach the data folder. */
export function assertReachable(dir: string, owner: RunAs): void {
  if (owner.uid === undefined) return;
  try {
    execFileSync("test", ["-x", path.dirname(dir)], { ...owner, stdio: "ignore" });
  } catch {
    throw new Error(
      `The OS user "postgres" (which runs the embedded server when you are root) cannot reach ${path.dirname(dir)}. ` +
        "Put the repository (or the data folder) under a path every user can traverse, e.g. /srv or /tmp, or chmod o+x its parents.",
    );
  }
}
