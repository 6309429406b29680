// Sections 1-2 compare a service with its floor, both driven from this process against the embedded server.
// On a small machine the kernel moves the bench's event loop and the backends across the same few cores, and a
// variant that loses its core for a few milliseconds loses a window. In A/A probes (a floor against a copy of
// itself, 600 windows split into blocks of 120, a section's worth) at concurrency 16 the per-window ratio
// swung twofold either way and the blocks' medians ranged from 0.92x to 1.06x; with the bench on one core and
// the server on the other, from 0.98x to 1.02x, and the floor itself ran faster. So those sections run pinned
// when they can; the HTTP section (the product as users run it) does not.
import { execFileSync } from "node:child_process";

export interface Pinning {
  /** Where each side ran, or why nothing was pinned; for the report. */
  readonly description: string;
  /** Gives this process, the server and every one of its processes back the cores they had. Idempotent. */
  release(): void;
}

function run(command: string, args: string[]): string {
  return execFileSync(command, args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
}

/** `0-2,5` → [0, 1, 2, 5]. */
function parseCpuList(list: string): number[] {
  const cpus: number[] = [];
  for (const part of list.trim().split(",")) {
    const [from, to] = part.split("-").map(Number);
    if (from === undefined || !Number.isInteger(from)) throw new Error(`not a CPU list: ${list}`);
    for (let cpu = from; cpu <= (to ?? from); cpu++) cpus.push(cpu);
  }
  return cpus;
}

/** The CPUs `pid` may run on, from `taskset -p -c` ("pid 42's current affinity list: 0,1"). */
function affinity(pid: number): number[] {
  const out = run("taskset", ["-p", "-c", String(pid)]);
  const list = out.slice(out.lastIndexOf(":") + 1);
  return parseCpuList(list);
}

/** Every process under `pid` (for PostgreSQL: backends, checkpointer, walwriter, autovacuum...). */
function descendants(pid: number): number[] {
  let children: number[];
  try {
    children = run("pgrep", ["-P", String(pid)])
      .split("\n")
      .filter((line) => line.trim() !== "")
      .map(Number);
  } catch {
    return []; // pgrep exits 1 when there are none
  }
  return children.flatMap((child) => [child, ...descendants(child)]);
}

/** Sets the affinity of every thread of `pid`; false if the process is gone (a backend that just exited). */
function setAffinity(pid: number, cpus: number[]): boolean {
  try {
    run("taskset", ["-a", "-p", "-c", cpus.join(","), String(pid)]);
    return true;
  } catch {
    return false;
  }
}

const notPinned = (why: string): Pinning => ({
  description: `not pinned: ${why}`,
  release() {},
});

/**
 * Puts this process on its first allowed CPU and the server at `serverPid` (the postmaster, and every process
 * it has forked, so connections opened later inherit it) on the others. Nothing is pinned when the server is
 * not ours (an external BENCH_DATABASE_URL), when there are fewer than two CPUs, or without `taskset`.
 */
export function pinApart(serverPid: number | undefined): Pinning {
  if (process.platform !== "linux") return notPinned(`${process.platform} has no taskset`);
  if (serverPid === undefined) return notPinned("the server is not started by the bench");
  let allowed: number[];
  let serverOriginal: number[];
  try {
    allowed = affinity(process.pid);
    serverOriginal = affinity(serverPid);
  } catch (error) {
    return notPinned(`taskset failed (${error instanceof Error ? error.message.split("\n")[0] : error})`);
  }
  const [benchCpu, ...serverCpus] = allowed;
  if (benchCpu === undefined || serverCpus.length === 0) return notPinned("fewer than two CPUs");
  // The postmaster first: what it forks from now on inherits the new set.
  if (!setAffinity(serverPid, serverCpus)) return notPinned("the server's CPUs could not be set");
  for (const pid of descendants(serverPid)) setAffinity(pid, serverCpus);
  let released = false;
  const release = () => {
    if (released) return;
    released = true;
    setAffinity(serverPid, serverOriginal);
    for (const pid of descendants(serverPid)) setAffinity(pid, serverOriginal);
    setAffinity(process.pid, allowed);
  };
  if (!setAffinity(process.pid, [benchCpu])) {
    release();
    return notPinned("the bench's CPU could not be set");
  }
  return {
    description: `bench process on CPU ${benchCpu}, PostgreSQL on CPU ${serverCpus.join(",")}`,
    release,
  };
}
