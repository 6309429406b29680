import { describe, expect, it } from "vitest";
import { db } from "../src/connection.ts";
import { withMetrics } from "../src/metrics.ts";
import { users } from "../src/schema/index.ts";
import { recordingLogger, useTestDatabase } from "../src/testing/index.ts";

const { logger, lines } = recordingLogger();

useTestDatabase({ config: { logQueries: true }, logger });

describe("DATABASE_LOG_QUERIES", () => {
  it("logs every query with its operation, table and duration, and failures with their code", async () => {
    lines.length = 0;
    await withMetrics("select", "users", () => db.select().from(users));
    await withMetrics("insert", "users", () =>
      db.insert(users).values({ email: "Not Normalized@example.com" }),
    ).catch(() => {});
    const queries = lines.filter((l) => l.message === "query");
    expect(queries.map((q) => [q.fields.operation, q.fields.table])).toEqual([
      ["select", "users"],
      ["insert", "users"],
    ]);
    for (const q of queries) expect(typeof q.fields.durationMs).toBe("number");
    const failed = lines.find((l) => l.message === "query failed");
    expect(failed?.fields).toMatchObject({ operation: "insert", table: "users", code: "CHECK_VIOLATION" });
    // Parameters (which may hold secrets) are never logged.
    expect(JSON.stringify(lines)).not.toContain("Not Normalized");
  });
});
