import { Writable } from "node:stream";
import { describe, expect, it, vi } from "vitest";
import { createLogger, RequestLogger, redactSecrets } from "../src/logger.ts";

/** A logger writing into an array of parsed lines (synchronously, so lines are there when the call returns). */
function capture(level = "debug") {
  const lines: Record<string, unknown>[] = [];
  const sink = new Writable({
    write(chunk, _encoding, callback) {
      for (const line of String(chunk).split("\n")) if (line.trim()) lines.push(JSON.parse(line));
      callback();
    },
  });
  return { logger: createLogger(level, sink), lines };
}

describe("log redaction", () => {
  it("blanks secret-named fields at the top level and one level down, and leaves the caller's object alone", () => {
    const { logger, lines } = capture();
    const fields = {
      password: "hunter2",
      sessionToken: "tok",
      headers: { cookie: "sid=abc", "set-cookie": "sid=def", authorization: "Bearer xyz", accept: "json" },
      body: { newPassword: "n", currentPassword: "c", email: "a@example.com" },
      list: ["token"],
      count: 3,
    };
    const before = structuredClone(fields);
    logger.info(fields, "with secrets");
    expect(fields).toEqual(before);
    const line = lines.at(-1);
    expect(line).toMatchObject({
      password: "[redacted]",
      sessionToken: "[redacted]",
      headers: {
        cookie: "[redacted]",
        "set-cookie": "[redacted]",
        authorization: "[redacted]",
        accept: "json",
      },
      body: { newPassword: "[redacted]", currentPassword: "[redacted]", email: "a@example.com" },
      list: ["token"],
      count: 3,
    });
    expect(JSON.stringify(line)).not.toMatch(/hunter2|tok"|sid=|xyz/);
  });

  it("returns a line without secrets as it is (no copy)", () => {
    const fields = { method: "GET", route: "/v1/auth/session", status: 200, nested: { ok: true } };
    expect(redactSecrets(fields)).toBe(fields);
  });

  it("blanks bindings of child loggers too", () => {
    const { logger, lines } = capture();
    logger
      .child({ token: "abc" })
      .child({ headers: { cookie: "sid" } })
      .info({}, "grandchild");
    expect(lines.at(-1)).toMatchObject({
      token: "[redacted]",
      headers: { cookie: "[redacted]" },
      msg: "grandchild",
    });
  });
});

describe("RequestLogger", () => {
  it("puts the request id on every line, marks audit lines, and respects the level", () => {
    const { logger, lines } = capture("info");
    const log = new RequestLogger(logger, "req-1");
    log.debug({ a: 1 }, "hidden");
    log.info({ a: 2 }, "shown");
    log.audit({ userId: "u", password: "p" }, "changed");
    log.error({ code: "X" }, "failed");
    expect(lines.map((line) => [line.msg, line.requestId, line.level])).toEqual([
      ["shown", "req-1", 30],
      ["changed", "req-1", 30],
      ["failed", "req-1", 50],
    ]);
    expect(lines[1]).toMatchObject({ audit: true, userId: "u", password: "[redacted]" });
  });

  it("writes the access line exactly as pino writes the same fields, and not below its level", () => {
    const raw: string[] = [];
    const sink = new Writable({
      write(chunk, _encoding, callback) {
        raw.push(String(chunk));
        callback();
      },
    });
    const root = createLogger("info", sink);
    const fields = { method: "GET", route: "/v1/users/:id", status: 404, durationMs: 1.25 };
    const parsed = (line: string | undefined) => {
      expect(line?.endsWith("}\n")).toBe(true);
      const { time, ...rest } = JSON.parse(line ?? "") as Record<string, unknown>;
      expect(Number.isNaN(Date.parse(String(time)))).toBe(false);
      return Object.entries(rest);
    };
    // The root logger of createLogger() takes the hand-built path (pino's info() is not called); a child of it
    // (other bindings) takes pino's. Either way the line is pino's, field for field and in the same order.
    for (const base of [root, root.child({ worker: 'a"b' })]) {
      raw.length = 0;
      const log = new RequestLogger(base, 'req-"1');
      const info = vi.spyOn(base, "info");
      log.request(fields);
      expect(info).toHaveBeenCalledTimes(base === root ? 0 : 1);
      base.info({ requestId: 'req-"1', ...fields }, "request");
      info.mockRestore();
      expect(raw).toHaveLength(2);
      expect(parsed(raw[0])).toEqual(parsed(raw[1]));
      expect(Object.fromEntries(parsed(raw[0]))).toMatchObject({
        level: 30,
        service: "api",
        requestId: 'req-"1',
      });
    }

    const quiet = capture("warn");
    new RequestLogger(quiet.logger, "req-2").request(fields);
    expect(quiet.lines).toEqual([]);
  });
});
