// Fault drill: races through the API. One password-reset token used by 50 parallel requests, one magic link
// verified by 50 parallel requests, and real serialization failures and deadlocks raised by PostgreSQL:
// exactly one winner, at most one session, and 503 (never 500) for the retryable conflicts.
import { db, sql, transaction } from "@repo/db";
import { useTestDatabase } from "@repo/db/testing";
import { describe, expect, it } from "vitest";
import { call, makeApp, NO_RATE_LIMITS, signUp, type TestApp, uniqueEmail } from "../helpers.ts";

const database = useTestDatabase({ config: { poolMax: 60, connectionTimeoutMs: 10_000 } });
const PARALLEL = 50;
const env = NO_RATE_LIMITS;

async function signedUp(t: TestApp, password = "original password 0") {
  const { email, user } = await signUp(t, uniqueEmail("race"), password);
  return { email, id: user.id as string };
}

describe("drill concurrency", () => {
  it(`${PARALLEL} parallel password resets with one token: exactly one wins, only its password works`, async () => {
    const t = makeApp({ env });
    const { email } = await signedUp(t);
    expect((await call(t, "POST", "/v1/auth/password/forgot", { body: { email } })).status).toBe(202);
    const token = t.tokenFromMail(email);

    const passwords = Array.from({ length: PARALLEL }, (_, i) => `parallel password ${i}`);
    const answers = await Promise.all(
      passwords.map((password) => call(t, "POST", "/v1/auth/password/reset", { body: { token, password } })),
    );
    const winners = answers.flatMap((answer, i) => (answer.status === 200 ? [i] : []));
    expect(winners).toHaveLength(1);
    for (const answer of answers) {
      if (answer.status !== 200) {
        expect(answer.status).toBe(400);
        expect(answer.json.error.code).toBe("TOKEN_INVALID");
      }
    }
    const winner = winners[0] ?? -1;
    const signIn = (password: string) => call(t, "POST", "/v1/auth/sign-in", { body: { email, password } });
    expect((await signIn(passwords[winner] ?? "")).status).toBe(200);
    expect((await signIn("original password 0")).status).toBe(401);
    // A few losers' passwords (each check costs an argon2 hash).
    const losers = passwords.filter((_, i) => i !== winner).slice(0, 5);
    for (const password of losers) expect((await signIn(password)).status).toBe(401);
    console.log(
      `drill concurrency (reset): ${winners.length} of ${PARALLEL} parallel resets succeeded, ` +
        `${answers.filter((a) => a.status === 400).length} answered TOKEN_INVALID; only the winner's password works`,
    );
  });

  it(`${PARALLEL} parallel magic-link verifications: at most one session`, async () => {
    const t = makeApp({ env });
    const { email, id } = await signedUp(t);
    const sessionsOf = async () => {
      const result = await database.admin<{ n: number }>(
        "SELECT count(*)::int AS n FROM sessions WHERE user_id = $1",
        [id],
      );
      return result.rows[0]?.n ?? 0;
    };
    const before = await sessionsOf();
    expect((await call(t, "POST", "/v1/auth/magic-link", { body: { email } })).status).toBe(202);
    const token = t.tokenFromMail(email);

    const answers = await Promise.all(
      Array.from({ length: PARALLEL }, () =>
        call(t, "POST", "/v1/auth/magic-link/verify", { body: { token } }),
      ),
    );
    const ok = answers.filter((answer) => answer.status === 200).length;
    expect(ok).toBe(1);
    for (const answer of answers) {
      if (answer.status !== 200) expect(answer.json.error.code).toBe("TOKEN_INVALID");
    }
    const created = (await sessionsOf()) - before;
    expect(created).toBe(1);
    console.log(
      `drill concurrency (magic link): ${ok} of ${PARALLEL} parallel verifications succeeded; ${created} session created`,
    );
  });

  it("serialization failures (40001) and deadlocks (40P01) raised by PostgreSQL answer 503, never 500", async () => {
    const t = makeApp({ env });
    // A drill-only route: PostgreSQL itself raises the SQLSTATE inside transaction(), the way routes run
    // their writes, through the real driver and the data layer's error translation; nothing is mocked.
    t.app.post("/drill/raise/:sqlstate", async (c) => {
      const state = c.req.param("sqlstate");
      if (!/^[0-9A-Z]{5}$/.test(state)) return c.text("bad", 400);
      await transaction((tx) =>
        tx.execute(sql.raw(`DO $$ BEGIN RAISE EXCEPTION 'drill' USING ERRCODE = '${state}'; END $$`)),
      );
      return c.json({ ok: true });
    });
    // The same statement run straight on the pool, outside transaction() and the services: the error
    // reaches the API untranslated and must still be a 503.
    t.app.post("/drill/raw/:sqlstate", async (c) => {
      const state = c.req.param("sqlstate");
      if (!/^[0-9A-Z]{5}$/.test(state)) return c.text("bad", 400);
      await db.execute(sql.raw(`DO $$ BEGIN RAISE EXCEPTION 'drill' USING ERRCODE = '${state}'; END $$`));
      return c.json({ ok: true });
    });
    const seen: string[] = [];
    for (const route of ["raise", "raw"]) {
      for (const state of ["40001", "40P01"]) {
        const res = await call(t, "POST", `/drill/${route}/${state}`);
        expect(res.status, `${route} ${state}`).toBe(503);
        expect(res.json.error.code).toBe(state === "40001" ? "SERIALIZATION_FAILURE" : "DEADLOCK_DETECTED");
        seen.push(`${state} (${route === "raw" ? "untranslated" : "in transaction()"}) → ${res.status}`);
      }
    }
    // Other database errors that escape untranslated stay 500 INTERNAL_ERROR (a bug to see, not hide).
    const other = await call(t, "POST", "/drill/raw/XX000");
    expect(other.status).toBe(500);
    // The app keeps answering.
    expect((await call(t, "GET", "/healthz")).status).toBe(200);
    console.log(`drill concurrency (conflicts): ${seen.join(", ")}`);
  });
});
