// Section 5: argon2id cost with the configured parameters, through the users service's own password functions
// (setPassword hashes, verifyPassword verifies; each adds one indexed statement, noise beside argon2). One
// operation at a time, so the time is what a sign-in costs one core.
import { UsersService } from "@repo/db";
import type pg from "pg";
import { msText, table } from "./format.ts";
import { median, quantile } from "./harness.ts";

export interface PasswordTiming {
  operation: string;
  iterations: number;
  medianMs: number;
  p99Ms: number;
  /** 1000 / median: how many of these one core can do per second. */
  perCorePerSec: number;
}

export interface PasswordSection {
  /** The PHC parameters of the stored hash, e.g. "argon2id v=19 m=19456,t=2,p=1". */
  parameters: string;
  timings: PasswordTiming[];
  note: string;
}

const BENCH_PASSWORD = "correct horse battery staple";

async function time(iterations: number, fn: () => Promise<unknown>): Promise<number[]> {
  const samples: number[] = [];
  for (let n = 0; n < iterations; n++) {
    const began = performance.now();
    await fn();
    samples.push(performance.now() - began);
  }
  return samples;
}

function timing(operation: string, samples: number[]): PasswordTiming {
  const mid = median(samples);
  return {
    operation,
    iterations: samples.length,
    medianMs: mid,
    p99Ms: quantile(Float64Array.from(samples).sort(), 0.99),
    perCorePerSec: mid > 0 ? 1000 / mid : Number.NaN,
  };
}

/** The algorithm and cost parameters of a PHC string, as the service stored it. */
function phcParameters(hash: string): string {
  const match = /^\$(argon2\w*)\$v=(\d+)\$([^$]+)\$/.exec(hash);
  return match ? `${match[1]} v=${match[2]} ${match[3]}` : "unknown";
}

export async function passwordSection(
  user: { id: string; email: string },
  iterations: number,
  cores: number,
  pool: pg.Pool,
): Promise<PasswordSection> {
  // One untimed round each: the first call loads argon2's native module and warms its allocator.
  await UsersService.setPassword({ id: user.id, password: BENCH_PASSWORD });
  await UsersService.verifyPassword({ email: user.email, password: BENCH_PASSWORD });

  const hashes = await time(iterations, () =>
    UsersService.setPassword({ id: user.id, password: BENCH_PASSWORD }),
  );
  const verifies = await time(iterations, () =>
    UsersService.verifyPassword({ email: user.email, password: BENCH_PASSWORD }),
  );
  const stored = await pool.query<{ password_hash: string }>(
    "SELECT password_hash FROM users WHERE id = $1",
    [user.id],
  );
  const verify = timing("verify (UsersService.verifyPassword)", verifies);
  const perCore = Math.floor(verify.perCorePerSec);
  return {
    parameters: phcParameters(stored.rows[0]?.password_hash ?? ""),
    timings: [timing("hash (UsersService.setPassword)", hashes), verify],
    note:
      `Each password sign-in costs one argon2id verification (${msText(verify.medianMs)} ms median here), so ` +
      `password hashing bounds sign-in throughput at about ${perCore} sign-ins/s per core ` +
      `(about ${perCore * cores} on this machine's ${cores} cores), whatever the database does.`,
  };
}

export const PASSWORD_HEADERS = ["operation", "iterations", "median ms", "p99 ms", "per core /s"];

export function passwordCells(section: PasswordSection): string[][] {
  return section.timings.map((t) => [
    t.operation,
    String(t.iterations),
    msText(t.medianMs),
    msText(t.p99Ms),
    String(Math.floor(t.perCorePerSec)),
  ]);
}

export function printPasswords(section: PasswordSection, print: (text: string) => void): void {
  print(`argon2 parameters: ${section.parameters}`);
  print(table(PASSWORD_HEADERS, passwordCells(section)));
  print(section.note);
}
