// The error taxonomy and the translation of real PostgreSQL and driver failures into DbError codes.
import pg from "pg";
import { describe, expect, it } from "vitest";
import { codesOfKind, DbError, ERROR_CODES, type ErrorCode, errorKind, toDbError } from "../src/errors.ts";
import { useTestDatabase } from "../src/testing/index.ts";

const database = useTestDatabase();

/** What a statement run on a fresh connection throws, translated. */
async function failureOf(text: string, values: unknown[] = [], setup: string[] = []): Promise<DbError> {
  const client = new pg.Client({ connectionString: database.url, connectionTimeoutMillis: 5000 });
  await client.connect();
  try {
    for (const statement of setup) await client.query(statement);
    await client.query(text, values);
  } catch (error) {
    return toDbError(error);
  } finally {
    await client.end();
  }
  throw new Error(`${text} did not fail`);
}

describe("taxonomy", () => {
  it("gives every code one kind; only unavailable codes are retryable", () => {
    for (const code of Object.keys(ERROR_CODES) as ErrorCode[]) {
      const error = new DbError(code, "x");
      expect(["rejected", "unavailable", "internal"]).toContain(error.kind);
      expect(error.retryable).toBe(error.kind === "unavailable");
      expect(errorKind(code)).toBe(error.kind);
    }
    const all = [...codesOfKind("rejected"), ...codesOfKind("unavailable"), ...codesOfKind("internal")];
    expect(all.sort()).toEqual(Object.keys(ERROR_CODES).sort());
    expect(errorKind("SOMETHING_ELSE")).toBe("internal");
  });

  it("classes what the services refuse as rejected, what may pass as unavailable, the rest as internal", () => {
    expect(codesOfKind("rejected")).toEqual(
      expect.arrayContaining(["VALIDATION_FAILED", "NOT_FOUND", "INVALID_CREDENTIALS", "TOKEN_INVALID"]),
    );
    expect(codesOfKind("unavailable")).toEqual(
      expect.arrayContaining(["POOL_EXHAUSTED", "QUERY_TIMEOUT", "DEADLOCK_DETECTED", "LOCK_NOT_ACQUIRED"]),
    );
    expect(codesOfKind("internal")).toEqual(
      expect.arrayContaining(["UNIQUE_VIOLATION", "DATABASE_ERROR", "CONFIG_INVALID", "DECRYPTION_FAILED"]),
    );
  });
});

describe("toDbError on real failures", () => {
  const table = "errors_probe";
  const setup = [
    `CREATE TEMP TABLE ${table} (id int PRIMARY KEY, parent int REFERENCES ${table}(id), v int NOT NULL CHECK (v > 0))`,
    `INSERT INTO ${table} VALUES (1, NULL, 1)`,
  ];

  it("maps integrity violations with their constraint", async () => {
    const unique = await failureOf(`INSERT INTO ${table} VALUES (1, NULL, 1)`, [], setup);
    expect(unique).toMatchObject({ code: "UNIQUE_VIOLATION", kind: "internal", constraint: `${table}_pkey` });
    expect((await failureOf(`INSERT INTO ${table} VALUES (2, 9, 1)`, [], setup)).code).toBe(
      "FOREIGN_KEY_VIOLATION",
    );
    expect((await failureOf(`INSERT INTO ${table} VALUES (2, NULL, NULL)`, [], setup)).code).toBe(
      "NOT_NULL_VIOLATION",
    );
    expect((await failureOf(`INSERT INTO ${table} VALUES (2, NULL, 0)`, [], setup)).code).toBe(
      "CHECK_VIOLATION",
    );
  });

  it("maps bad values, timeouts and unknown SQL errors", async () => {
    expect((await failureOf("SELECT $1::uuid", ["not-a-uuid"])).code).toBe("INVALID_INPUT");
    expect((await failureOf("SELECT 1 / 0")).code).toBe("INVALID_INPUT");
    const timeout = await failureOf("SELECT pg_sleep(1)", [], ["SET statement_timeout = 50"]);
    expect(timeout).toMatchObject({ code: "QUERY_TIMEOUT", retryable: true });
    const unknown = await failureOf("SELECT * FROM no_such_table");
    expect(unknown).toMatchObject({ code: "DATABASE_ERROR", kind: "internal" });
    // SQLSTATE in the message, never the statement's values.
    expect(unknown.message).toBe("Database error (SQLSTATE 42P01)");
  });

  it("maps an unreachable server and an exhausted pool to unavailable codes", async () => {
    const closed = new URL(database.url);
    closed.port = "1";
    const refused = await new pg.Client({ connectionString: closed.toString() }).connect().then(
      () => undefined,
      (error: unknown) => toDbError(error),
    );
    expect(refused).toMatchObject({ code: "DATABASE_UNAVAILABLE", retryable: true });

    // The one connection is opened with time to spare (a loaded machine can take over 100 ms); only the wait
    // for it behind the holder is bounded short.
    const pool = new pg.Pool({ connectionString: database.url, max: 1, connectionTimeoutMillis: 10_000 });
    try {
      const held = await pool.connect();
      pool.options.connectionTimeoutMillis = 100;
      const exhausted = await pool.query("SELECT 1").then(
        () => undefined,
        (error: unknown) => toDbError(error, "users"),
      );
      held.release();
      expect(exhausted).toMatchObject({ code: "POOL_EXHAUSTED", table: "users", retryable: true });
    } finally {
      await pool.end();
    }
  });

  it("passes a DbError through unchanged and wraps anything else as DATABASE_ERROR", () => {
    const typed = new DbError("NOT_FOUND", "gone");
    expect(toDbError(typed)).toBe(typed);
    const other = toDbError(new TypeError("boom"));
    expect(other).toMatchObject({ code: "DATABASE_ERROR", kind: "internal" });
    expect(other.cause).toBeInstanceOf(TypeError);
  });
});
