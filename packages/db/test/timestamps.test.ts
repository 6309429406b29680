// The timestamptz parser of the pool gives exactly what node-postgres's default parser gives: checked on
// generated texts of every shape, and on what a real server sends under several time zones.
import pg from "pg";
import { describe, expect, it } from "vitest";
import { getPool } from "../src/connection.ts";
import { useTestDatabase } from "../src/testing/index.ts";
import { parseTimestamptz } from "../src/timestamps.ts";

const reference = pg.types.getTypeParser(1184, "text") as (text: string) => unknown;
const same = (text: string) => {
  const ours = parseTimestamptz(text);
  const theirs = reference(text);
  return ours instanceof Date && theirs instanceof Date
    ? ours.getTime() === theirs.getTime()
    : Object.is(ours, theirs);
};

const pad = (n: number, width = 2) => String(n).padStart(width, "0");
/** A deterministic generator, so a failure names a text that can be replayed. */
function* texts(count: number): Generator<string> {
  let seed = 12345;
  const next = (n: number) => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return seed % n;
  };
  for (let i = 0; i < count; i++) {
    const year = [next(9000) + 1000, next(1000), 1970, 9999, 1000][next(5)] ?? 2026;
    const fraction =
      next(4) === 0
        ? ""
        : `.${String(next(1_000_000))
            .padStart(6, "0")
            .slice(0, 1 + next(6))}`;
    const hours = next(15);
    const offset = [
      `${next(2) ? "+" : "-"}${pad(hours)}`,
      `${next(2) ? "+" : "-"}${pad(hours)}:${pad(next(4) * 15)}`,
      `+${pad(hours)}:${pad(next(60))}:${pad(next(60))}`,
    ][next(3)];
    const era = next(20) === 0 ? " BC" : "";
    yield `${pad(year, 4)}-${pad(next(12) + 1)}-${pad(next(28) + 1)} ${pad(next(24))}:${pad(next(60))}:${pad(next(60))}${fraction}${offset}${era}`;
  }
}

describe("parseTimestamptz", () => {
  it("agrees with node-postgres's parser on 20,000 generated texts of every shape", () => {
    const disagreements = [...texts(20_000)].filter((text) => !same(text));
    expect(disagreements).toEqual([]);
  });

  it("agrees on the special values", () => {
    const texts = [
      ...["infinity", "-infinity", "0001-01-01 00:00:00+00", "2026-11-30 01:58:46.999999+00"],
      // Leap days and the turns of centuries (2000 is a leap year, 1900 and 2100 are not).
      ...[
        "2024-02-29 23:59:59.999+00",
        "2000-02-29 12:00:00-12",
        "1900-03-01 00:00:00+14",
        "2100-03-01 00:00:00+05:45",
      ],
      ...["1000-01-01 00:00:00+00", "9999-12-31 23:59:59.999999-14", "1969-12-31 23:59:59.5+00"],
    ];
    for (const text of texts) {
      expect(same(text), text).toBe(true);
    }
  });
});

describe("the pool's timestamptz values", () => {
  useTestDatabase();

  it("are the instants the server holds, whatever the session's time zone", async () => {
    const pool = getPool();
    for (const zone of ["UTC", "Asia/Kolkata", "America/St_Johns", "Pacific/Chatham", "Europe/Amsterdam"]) {
      const client = await pool.connect();
      try {
        await client.query(`SET TIME ZONE '${zone}'`);
        const { rows } = await client.query<{ at: unknown; epoch: string }>(
          `SELECT t AS at, CASE WHEN isfinite(t) THEN (extract(epoch FROM t) * 1000)::text END AS epoch
           FROM (VALUES (now()), ('1900-06-01 12:00:00.5+00'::timestamptz), ('2038-01-19 03:14:07.999999+00'),
                        ('0099-03-01 00:00:00+00'), ('infinity'::timestamptz)) AS v(t)`,
        );
        for (const row of rows) {
          if (row.at === Number.POSITIVE_INFINITY) continue;
          expect(row.at, zone).toBeInstanceOf(Date);
          expect((row.at as Date).getTime(), `${zone} ${row.epoch}`).toBe(Math.floor(Number(row.epoch)));
        }
        expect(rows.at(-1)?.at).toBe(Number.POSITIVE_INFINITY);
      } finally {
        await client.query("RESET TIME ZONE");
        client.release();
      }
    }
  });
});
