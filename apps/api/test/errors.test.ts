// The one table from error codes to HTTP answers, derived from @repo/db's taxonomy.
import { codesOfKind, DbError } from "@repo/db";
import { HTTPException } from "hono/http-exception";
import { describe, expect, it } from "vitest";
import { API_ERRORS, ApiError, toErrorAnswer } from "../src/errors.ts";

describe("toErrorAnswer", () => {
  it("answers every rejected DbError code under its own name (or its alias), never as 500", () => {
    for (const code of codesOfKind("rejected")) {
      const answer = toErrorAnswer(new DbError(code, "why"));
      expect(answer.unexpected).toBe(false);
      expect(answer.status).toBeLessThan(500);
      if (code === "EMAIL_NOT_VERIFIED")
        expect(answer).toMatchObject({ code: "INVALID_CREDENTIALS", status: 401 });
      else expect(answer.code).toBe(code);
    }
  });

  it("answers every unavailable DbError code with 503 under its own name", () => {
    for (const code of codesOfKind("unavailable")) {
      expect(toErrorAnswer(new DbError(code, "busy"))).toMatchObject({
        code,
        status: 503,
        unexpected: false,
      });
      expect(API_ERRORS[code as keyof typeof API_ERRORS]).toBeDefined();
    }
  });

  it("hides every internal DbError code behind INTERNAL_ERROR, flagged for the error log", () => {
    for (const code of codesOfKind("internal")) {
      const answer = toErrorAnswer(new DbError(code, "SELECT secret FROM somewhere"));
      expect(answer).toMatchObject({ code: "INTERNAL_ERROR", status: 500, unexpected: true });
      expect(answer.message).toBe(API_ERRORS.INTERNAL_ERROR.message);
    }
  });

  it("shows messages and details only for validation and password policy", () => {
    const details = { email: "Invalid email address" };
    expect(toErrorAnswer(new DbError("VALIDATION_FAILED", "email: invalid", { details }))).toMatchObject({
      message: "email: invalid",
      details,
    });
    expect(toErrorAnswer(new DbError("NOT_FOUND", "User 42 not found")).message).toBe(
      API_ERRORS.NOT_FOUND.message,
    );
  });

  it("keeps ApiError codes, maps bare HTTP exceptions by status, and translates untyped database failures", () => {
    expect(toErrorAnswer(new ApiError("RATE_LIMITED", undefined, { retryAfter: 7 }))).toMatchObject({
      status: 429,
      retryAfter: 7,
    });
    expect(toErrorAnswer(new HTTPException(413))).toMatchObject({ code: "PAYLOAD_TOO_LARGE" });
    expect(toErrorAnswer(new HTTPException(418))).toMatchObject({ code: "INTERNAL_ERROR", unexpected: true });
    const refused = Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:1"), { code: "ECONNREFUSED" });
    expect(toErrorAnswer(refused)).toMatchObject({ code: "DATABASE_UNAVAILABLE", status: 503 });
    expect(toErrorAnswer(new Error("anything else"))).toMatchObject({
      code: "INTERNAL_ERROR",
      unexpected: true,
    });
  });
});
