import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import {
  AccountsService,
  CacheService,
  configureAccountEncryption,
  type LogFields,
  type Logger,
  OneTimeTokensService,
  SessionsService,
  UsersService,
} from "../../src/index.ts";
import { resetAccountEncryption, useTestDatabase } from "../../src/testing/index.ts";

const logged: string[] = [];
const capture = (fields: LogFields, message: string) => {
  logged.push(`${message} ${JSON.stringify(fields)}`);
};
const logger: Logger = { audit: capture, error: capture, warn: capture, info: capture, debug: capture };

const database = useTestDatabase();

/** Every row of every table in public, as JSON text (bytea shows as \x-hex). */
async function everyRowAsText(): Promise<string> {
  const tables = await database.admin<{ relname: string }>(
    "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r'",
  );
  const parts: string[] = [];
  for (const { relname } of tables.rows) {
    const rows = await database.admin<{ row: string }>(
      `SELECT row_to_json(t)::text AS row FROM "${relname}" t`,
    );
    for (const { row } of rows.rows) parts.push(row);
  }
  return parts.join("\n");
}

/** The forms a secret could take in a row or a log line. */
function encodings(secret: string): string[] {
  const bytes = Buffer.from(secret, "utf8");
  return [secret, bytes.toString("hex"), bytes.toString("base64"), bytes.toString("base64url")];
}

describe("secrets at rest", () => {
  it("no column and no log line holds a password, session token, link token, code or provider token after a full flow", async () => {
    configureAccountEncryption({ keys: { k1: randomBytes(32) }, currentKeyId: "k1" });
    OneTimeTokensService.configureOneTimeCodes({ key: randomBytes(32) });
    try {
      const password = "correct horse battery staple 42";
      const user = await UsersService.create(
        { email: "flow@example.com", password, firstName: "Flow" },
        logger,
      );
      await UsersService.verifyPassword({ email: "flow@example.com", password }, logger);
      const { token: sessionToken } = await SessionsService.create(
        { userId: user.id, authMethod: "password" },
        logger,
      );
      expect(await SessionsService.validate(sessionToken, logger)).not.toBeNull();
      const { token: rotatedToken } = await SessionsService.rotate(sessionToken, logger);
      const { token: linkToken } = await OneTimeTokensService.create(
        { userId: user.id, purpose: "password_reset", sentTo: "flow@example.com" },
        logger,
      );
      const { token: usedLinkToken } = await OneTimeTokensService.create(
        { userId: user.id, purpose: "magic_link", sentTo: "flow@example.com" },
        logger,
      );
      expect(await OneTimeTokensService.consume(usedLinkToken, "magic_link", logger)).not.toBeNull();
      const { code } = await OneTimeTokensService.createCode(
        { purpose: "phone_verification", sentTo: "+14155550123", digits: 10 },
        logger,
      );
      const accessToken = `gho_${randomBytes(18).toString("hex")}`;
      const refreshToken = `ghr_${randomBytes(18).toString("hex")}`;
      await AccountsService.link(
        { userId: user.id, provider: "github", providerAccountId: "4242", accessToken, refreshToken },
        logger,
      );
      await CacheService.set("flow", "profile", { userId: user.id }, {}, logger);

      const secrets = {
        password,
        sessionToken,
        rotatedToken,
        linkToken,
        usedLinkToken,
        code,
        accessToken,
        refreshToken,
      };
      const rows = await everyRowAsText();
      expect(rows).toContain(user.id); // the scan does see the data
      const logs = logged.join("\n");
      expect(logs.length).toBeGreaterThan(0);
      for (const [name, secret] of Object.entries(secrets)) {
        for (const form of encodings(secret)) {
          expect(rows.includes(form), `${name} found in a row`).toBe(false);
          expect(logs.includes(form), `${name} found in a log line`).toBe(false);
        }
      }
      // Password hashes never reach a log line either.
      expect(logs).not.toContain("$argon2");
    } finally {
      resetAccountEncryption();
      OneTimeTokensService.configureOneTimeCodes(null);
    }
  });
});

describe("log fields", () => {
  it("blanks a secret passed where an id belongs instead of logging it", async () => {
    const user = await UsersService.create({ email: "mixup@example.com" });
    const { token } = await SessionsService.create({ userId: user.id, authMethod: "password" });
    logged.length = 0;
    await expect(SessionsService.revoke(token, logger)).rejects.toMatchObject({ code: "VALIDATION_FAILED" });
    expect(logged.join("\n")).not.toContain(token);
    expect(logged.join("\n")).toContain("[redacted]");
  });
});
