// defineService(): the call shapes every service function accepts and what it logs on failure.
import { describe, expect, it } from "vitest";
import { transaction } from "../src/connection.ts";
import { DbError } from "../src/errors.ts";
import * as CacheService from "../src/services/cache.ts";
import { boundedLogFields, splitCallArguments } from "../src/services/define.ts";
import * as UsersService from "../src/services/users.ts";
import { insertUser, recordingLogger, useTestDatabase } from "../src/testing/index.ts";

useTestDatabase();

describe("call shapes", () => {
  it("splits positional arguments from the logger and the options in every accepted form", () => {
    const { logger } = recordingLogger();
    const tx = {} as never;
    expect(splitCallArguments(["a"], 1)).toMatchObject({ positional: ["a"], options: {} });
    expect(splitCallArguments(["a", logger], 1)).toMatchObject({ logger, options: {} });
    expect(splitCallArguments(["a", logger, { tx }], 1)).toMatchObject({ logger, options: { tx } });
    expect(splitCallArguments(["a", { tx, logger }], 1)).toMatchObject({ logger, options: { tx } });
    expect(splitCallArguments(["a", undefined, { tx }], 1)).toMatchObject({ options: { tx } });
    // Optional positional arguments left out still take their places.
    expect(splitCallArguments(["t", "k", 1, undefined, logger], 4)).toMatchObject({
      positional: ["t", "k", 1, undefined],
      logger,
    });
  });

  it("runs on the caller's transaction and logs through the logger given inside the options", async () => {
    const { logger, lines } = recordingLogger();
    const id = await insertUser("shapes");
    await expect(
      transaction(async (tx) => {
        await UsersService.softDelete(id, { tx, logger });
        expect(await UsersService.findById(id, { tx })).toBeNull();
        throw new Error("roll back");
      }),
    ).rejects.toThrow("roll back");
    expect(await UsersService.findById(id)).not.toBeNull();
    expect(lines.some((line) => line.level === "audit")).toBe(true);
    // Positional optional arguments before the options: set(type, key, value, ttl, { logger }).
    await CacheService.set("shapes", "k", 1, { ttlSeconds: 5 }, { logger });
    expect(await CacheService.get("shapes", "k", { logger })).toBe(1);
  });
});

describe("failure logging", () => {
  it("logs rejected calls at warn and the rest at error, with bounded and redacted ids", async () => {
    const { logger, lines } = recordingLogger();
    const long = "x".repeat(500);
    await expect(UsersService.findById(long, logger)).rejects.toMatchObject({ code: "VALIDATION_FAILED" });
    const secretLike = "A".repeat(43);
    await expect(UsersService.findById(secretLike, { logger })).rejects.toBeInstanceOf(DbError);
    expect(lines.map((line) => [line.level, line.message])).toEqual([
      ["warn", "users.findById rejected"],
      ["warn", "users.findById rejected"],
    ]);
    expect(lines[0]?.fields).toEqual({
      operation: "users.findById",
      code: "VALIDATION_FAILED",
      userId: "x".repeat(64),
    });
    expect(lines[1]?.fields.userId).toBe("[redacted]");
  });

  it("keeps only scalar fields", () => {
    expect(boundedLogFields({ id: "a", n: 1, ok: true, none: null, gone: undefined, obj: { a: 1 } })).toEqual(
      {
        id: "a",
        n: 1,
        ok: true,
        none: null,
      },
    );
  });
});
