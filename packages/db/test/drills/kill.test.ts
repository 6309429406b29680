// Fault drill: a process killed (SIGKILL) or frozen (SIGSTOP) between using a password-reset token and
// committing loses nothing: the token stays usable, the password unchanged, and once the server ends the
// frozen transaction exactly one later consumer wins. The child runs fixtures/consume-and-hang.ts.
import { type ChildProcess, spawn } from "node:child_process";
import path from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { databaseConfigFromUrl } from "../../src/config.ts";
import { disconnectDB, initializeDB } from "../../src/connection.ts";
import * as OneTimeTokensService from "../../src/services/one-time-tokens.ts";
import * as UsersService from "../../src/services/users.ts";
import { type DrillServer, query, startDrillServer } from "./helpers.ts";

const FIXTURE = path.join(import.meta.dirname, "fixtures", "consume-and-hang.ts");
const OLD_PASSWORD = "old password 123";
const NEW_PASSWORD = "new password 456";

let drill: DrillServer;
const children: ChildProcess[] = [];

beforeAll(async () => {
  drill = await startDrillServer();
  initializeDB(databaseConfigFromUrl(drill.server.url, { applicationName: "drill-kill" }));
});

afterAll(async () => {
  for (const child of children) {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGCONT");
      child.kill("SIGKILL");
    }
  }
  await disconnectDB();
  await drill?.close();
});

async function userWithResetToken(email: string): Promise<{ id: string; token: string }> {
  const user = await UsersService.create({ email, password: OLD_PASSWORD });
  const { token } = await OneTimeTokensService.create({
    userId: user.id,
    purpose: "password_reset",
    sentTo: email,
  });
  return { id: user.id, token };
}

/** Starts the child and resolves once it printed "consumed" (its transaction is open, not committed). */
async function startConsumer(
  user: { id: string; token: string },
  env: Record<string, string> = {},
): Promise<ChildProcess> {
  const child = spawn("bun", [FIXTURE], {
    env: {
      ...process.env,
      DATABASE_URL: drill.server.url,
      DATABASE_APPLICATION_NAME: "drill-kill-child",
      DRILL_TOKEN: user.token,
      DRILL_USER_ID: user.id,
      DRILL_PASSWORD: NEW_PASSWORD,
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  children.push(child);
  let stderr = "";
  child.stderr?.on("data", (chunk: Buffer) => {
    stderr += chunk.toString();
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the child did not consume in 20 s: ${stderr}`)), 20_000);
    child.stdout?.on("data", (chunk: Buffer) => {
      if (chunk.toString().includes("consumed")) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once("exit", (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`the child exited early (${code ?? signal}): ${stderr}`));
    });
  });
  return child;
}

async function waitForExit(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  await new Promise((resolve) => child.once("exit", resolve));
}

async function passwordWorks(email: string, password: string): Promise<boolean> {
  try {
    await UsersService.verifyPassword({ email, password });
    return true;
  } catch {
    return false;
  }
}

describe("drill kill: killed between consume and commit", () => {
  it("SIGKILL before commit: the token is still usable and the password unchanged", async () => {
    const email = "killed@example.com";
    const user = await userWithResetToken(email);
    const child = await startConsumer(user);
    // While the child holds its transaction open, nobody else sees the token as used.
    expect(await OneTimeTokensService.peek(user.token, "password_reset")).not.toBeNull();
    child.kill("SIGKILL");
    await waitForExit(child);

    expect(await passwordWorks(email, OLD_PASSWORD)).toBe(true);
    expect(await passwordWorks(email, NEW_PASSWORD)).toBe(false);
    const started = Date.now();
    // The server rolls back the dead connection's transaction; consume waits on its row lock until then.
    const record = await OneTimeTokensService.consume(user.token, "password_reset");
    expect(record?.userId).toBe(user.id);
    console.log(
      `drill kill (SIGKILL): token still usable (consumed ${Date.now() - started} ms after the kill), ` +
        "old password works, new one does not",
    );
  });

  it("SIGSTOP: idle_in_transaction_session_timeout frees the row and one later consumer wins", async () => {
    const email = "stopped@example.com";
    const user = await userWithResetToken(email);
    const child = await startConsumer(user, { DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: "1000" });
    child.kill("SIGSTOP");
    const stoppedAt = Date.now();
    try {
      // Ten consumers race for the token; they wait on the frozen transaction's row lock until the server
      // ends it (about 1 s), then exactly one wins.
      const results = await Promise.all(
        Array.from({ length: 10 }, () => OneTimeTokensService.consume(user.token, "password_reset")),
      );
      const winners = results.filter((record) => record !== null);
      const waited = Date.now() - stoppedAt;
      expect(winners).toHaveLength(1);
      expect(waited).toBeLessThan(15_000);
      expect(await passwordWorks(email, OLD_PASSWORD)).toBe(true);
      const leftover = await query<{ n: string }>(
        drill.server.adminUrl,
        "SELECT count(*) AS n FROM pg_stat_activity WHERE application_name = 'drill-kill-child' AND state LIKE 'idle in transaction%'",
      );
      expect(Number(leftover.rows[0]?.n)).toBe(0);
      console.log(
        `drill kill (SIGSTOP): the server ended the frozen transaction; ${winners.length} of ${results.length} ` +
          `consumers won after ${(waited / 1000).toFixed(1)} s`,
      );
    } finally {
      child.kill("SIGCONT");
      child.kill("SIGKILL");
      await waitForExit(child);
    }
  });
});
