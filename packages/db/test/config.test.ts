// config.ts: loadDatabaseConfig() (defaults, every DATABASE_* variable, SSL modes, the pooler setting, and
// CONFIG_INVALID naming the bad variable), databaseConfigFromUrl(), sslOption() and redactUrl().
// connection.test.ts already checks that several bad settings are named at once without the password, that the
// timeouts are positive by default and that ?pgbouncer=true turns the pooler mode on; this file does the rest.
import { afterEach, describe, expect, it, vi } from "vitest";
import {
  type DatabaseConfig,
  type DatabaseEnv,
  databaseConfigFromUrl,
  loadDatabaseConfig,
  redactUrl,
  SSL_MODES,
  sslOption,
} from "../src/config.ts";
import { DbError } from "../src/errors.ts";
import { queryOnce, useTestDatabase } from "../src/testing/index.ts";

// One test below connects for real, to show that node-postgres takes a password from the query string.
const database = useTestDatabase();

const URL_ = "postgres://app:s3cret@db.example.com:5432/app";

const DEFAULTS: DatabaseConfig = {
  url: URL_,
  directUrl: undefined,
  poolMax: 10,
  poolMin: 0,
  connectionTimeoutMs: 5_000,
  idleTimeoutMs: 30_000,
  statementTimeoutMs: 30_000,
  idleInTransactionTimeoutMs: 60_000,
  sslMode: undefined,
  applicationName: "repo-db",
  logQueries: false,
  transactionPooler: false,
  replicaUrls: [],
  replicaMaxLagMs: 1_000,
  replicaCheckIntervalMs: 1_000,
};

const load = (env: DatabaseEnv): DatabaseConfig => loadDatabaseConfig({ DATABASE_URL: URL_, ...env });

/** The DbError thrown by `attempt`; fails the test when it does not throw one. */
function configError(attempt: () => unknown): DbError {
  try {
    attempt();
  } catch (error) {
    expect(error).toBeInstanceOf(DbError);
    return error as DbError;
  }
  throw new Error("expected CONFIG_INVALID, nothing was thrown");
}

/** Asserts that `env` is rejected with CONFIG_INVALID whose details name exactly `variable`. */
function expectRejected(env: DatabaseEnv, variable: string): DbError {
  const error = configError(() => load(env));
  expect(error.code).toBe("CONFIG_INVALID");
  expect(Object.keys(error.details ?? {})).toEqual([variable]);
  expect(error.message).toContain("Invalid database configuration");
  return error;
}

describe("loadDatabaseConfig: defaults", () => {
  it("fills in the documented defaults around DATABASE_URL, which it keeps as given", () => {
    expect(loadDatabaseConfig({ DATABASE_URL: URL_ })).toEqual(DEFAULTS);
    const withQuery = "postgresql://app:p%40ss@db.example.com:6543/app?sslmode=require&application_name=x";
    expect(loadDatabaseConfig({ DATABASE_URL: withQuery }).url).toBe(withQuery);
  });

  it("treats empty strings as unset", () => {
    expect(
      load({
        DATABASE_DIRECT_URL: "",
        DATABASE_POOL_MAX: "",
        DATABASE_POOL_MIN: "",
        DATABASE_CONNECT_TIMEOUT_MS: "",
        DATABASE_IDLE_TIMEOUT_MS: "",
        DATABASE_STATEMENT_TIMEOUT_MS: "",
        DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: "",
        DATABASE_SSL_MODE: "",
        DATABASE_APPLICATION_NAME: "",
        DATABASE_LOG_QUERIES: "",
        DATABASE_POOLER: "",
      }),
    ).toEqual(DEFAULTS);
    expect(configError(() => loadDatabaseConfig({ DATABASE_URL: "" })).details).toEqual({
      DATABASE_URL: "DATABASE_URL is required",
    });
  });

  it("ignores variables outside DATABASE_* and unknown DATABASE_* ones", () => {
    expect(
      load({
        TEST_DATABASE_URL: "not a url",
        PGPASSWORD: "x",
        POOL_MAX: "lots",
        database_pool_max: "lots",
        DATABASE_SOMETHING_ELSE: "whatever",
      }),
    ).toEqual(DEFAULTS);
  });

  describe("without an argument", () => {
    afterEach(() => vi.unstubAllEnvs());

    it("reads process.env", () => {
      for (const name of [
        "DATABASE_DIRECT_URL",
        "DATABASE_POOL_MIN",
        "DATABASE_CONNECT_TIMEOUT_MS",
        "DATABASE_IDLE_TIMEOUT_MS",
        "DATABASE_STATEMENT_TIMEOUT_MS",
        "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS",
        "DATABASE_SSL_MODE",
        "DATABASE_APPLICATION_NAME",
        "DATABASE_LOG_QUERIES",
        "DATABASE_POOLER",
      ])
        vi.stubEnv(name, "");
      vi.stubEnv("DATABASE_URL", URL_);
      vi.stubEnv("DATABASE_POOL_MAX", "7");
      expect(loadDatabaseConfig()).toEqual({ ...DEFAULTS, poolMax: 7 });
    });
  });
});

describe("loadDatabaseConfig: every variable", () => {
  it("reads each documented DATABASE_* variable", () => {
    expect(
      loadDatabaseConfig({
        DATABASE_URL: "postgresql://app:pw@pooler.example.com:6432/app",
        DATABASE_DIRECT_URL: "postgres://app:pw@primary.example.com:5432/app",
        DATABASE_POOL_MAX: "25",
        DATABASE_POOL_MIN: "5",
        DATABASE_CONNECT_TIMEOUT_MS: "1500",
        DATABASE_IDLE_TIMEOUT_MS: "0",
        DATABASE_STATEMENT_TIMEOUT_MS: "120000",
        DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: "15000",
        DATABASE_SSL_MODE: "verify-full",
        DATABASE_APPLICATION_NAME: "  billing-worker  ",
        DATABASE_LOG_QUERIES: "yes",
        DATABASE_POOLER: "transaction",
        DATABASE_REPLICA_URLS:
          " postgres://app:pw@replica-1.example.com/app, postgres://app:pw@replica-2.example.com/app?pgbouncer=true ,",
        DATABASE_REPLICA_MAX_LAG_MS: "250",
        DATABASE_REPLICA_CHECK_INTERVAL_MS: "500",
      }),
    ).toEqual({
      url: "postgresql://app:pw@pooler.example.com:6432/app",
      directUrl: "postgres://app:pw@primary.example.com:5432/app",
      poolMax: 25,
      poolMin: 5,
      connectionTimeoutMs: 1500,
      idleTimeoutMs: 0,
      statementTimeoutMs: 120_000,
      idleInTransactionTimeoutMs: 15_000,
      sslMode: "verify-full",
      applicationName: "billing-worker",
      logQueries: true,
      transactionPooler: true,
      replicaUrls: [
        "postgres://app:pw@replica-1.example.com/app",
        "postgres://app:pw@replica-2.example.com/app",
      ],
      replicaMaxLagMs: 250,
      replicaCheckIntervalMs: 500,
    } satisfies DatabaseConfig);
  });

  const integers = [
    ["DATABASE_POOL_MAX", "poolMax", 1, 1000],
    ["DATABASE_POOL_MIN", "poolMin", 0, 1000],
    ["DATABASE_CONNECT_TIMEOUT_MS", "connectionTimeoutMs", 100, 600_000],
    ["DATABASE_IDLE_TIMEOUT_MS", "idleTimeoutMs", 0, 3_600_000],
    ["DATABASE_STATEMENT_TIMEOUT_MS", "statementTimeoutMs", 0, 86_400_000],
    ["DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS", "idleInTransactionTimeoutMs", 0, 86_400_000],
    ["DATABASE_REPLICA_MAX_LAG_MS", "replicaMaxLagMs", 0, 3_600_000],
    ["DATABASE_REPLICA_CHECK_INTERVAL_MS", "replicaCheckIntervalMs", 50, 60_000],
  ] as const;

  it.each(integers)("%s accepts whole numbers from its minimum to its maximum", (name, key, min, max) => {
    // DATABASE_POOL_MIN may not exceed DATABASE_POOL_MAX, so raise the latter to test the former's range.
    const room = name === "DATABASE_POOL_MIN" ? { DATABASE_POOL_MAX: "1000" } : {};
    expect(load({ ...room, [name]: String(min) })[key]).toBe(min);
    expect(load({ ...room, [name]: String(max) })[key]).toBe(max);
    expect(load({ ...room, [name]: ` ${min + 1} ` })[key]).toBe(min + 1);
  });

  it.each(integers)(
    "%s rejects values out of range or not whole numbers, naming itself",
    (name, _key, min, max) => {
      const room = name === "DATABASE_POOL_MIN" ? { DATABASE_POOL_MAX: "1000" } : {};
      expect(expectRejected({ ...room, [name]: String(min - 1) }, name).details?.[name]).toBe(
        `${name} must be at least ${min}`,
      );
      expect(expectRejected({ ...room, [name]: String(max + 1) }, name).details?.[name]).toBe(
        `${name} must be at most ${max}`,
      );
      for (const bad of ["lots", "1.5", "NaN", "Infinity", "12ms", "-"]) {
        const error = expectRejected({ ...room, [name]: bad }, name);
        expect(error.details?.[name], bad).toBe(`${name} must be a whole number`);
        expect(error.message).toContain(name);
      }
    },
  );

  // Found by this test and fixed: a whitespace-only value is not "" (so it is not treated as unset) but z.coerce.number() turns it into
  // Number("  ") === 0, which passes every check. DATABASE_STATEMENT_TIMEOUT_MS="  " therefore silently
  // disables the statement timeout (0 = none on the server), and the same for the idle-in-transaction timeout,
  // instead of being rejected as "must be a whole number" or falling back to the default.
  it("a whitespace-only timeout is rejected or left at its default, never read as 0", () => {
    for (const name of [
      "DATABASE_STATEMENT_TIMEOUT_MS",
      "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS",
    ] as const) {
      let config: DatabaseConfig | undefined;
      try {
        config = load({ [name]: "  " });
      } catch (error) {
        expect((error as DbError).details).toHaveProperty(name);
      }
      if (config) {
        expect(config.statementTimeoutMs).toBe(DEFAULTS.statementTimeoutMs);
        expect(config.idleInTransactionTimeoutMs).toBe(DEFAULTS.idleInTransactionTimeoutMs);
      }
    }
  });

  it("lets DATABASE_POOL_MIN equal DATABASE_POOL_MAX but not exceed it (nor the default maximum)", () => {
    expect(load({ DATABASE_POOL_MIN: "4", DATABASE_POOL_MAX: "4" })).toMatchObject({
      poolMin: 4,
      poolMax: 4,
    });
    expect(
      expectRejected({ DATABASE_POOL_MIN: "5", DATABASE_POOL_MAX: "4" }, "DATABASE_POOL_MIN").message,
    ).toBe("Invalid database configuration: DATABASE_POOL_MIN must not exceed DATABASE_POOL_MAX");
    expectRejected({ DATABASE_POOL_MIN: "11" }, "DATABASE_POOL_MIN");
  });

  it("DATABASE_LOG_QUERIES takes true/1/yes and false/0/no, nothing else", () => {
    for (const on of ["true", "1", "yes"]) expect(load({ DATABASE_LOG_QUERIES: on }).logQueries).toBe(true);
    for (const off of ["false", "0", "no"])
      expect(load({ DATABASE_LOG_QUERIES: off }).logQueries).toBe(false);
    for (const bad of ["TRUE", "on", "off", "y", "2", " true"]) {
      expect(expectRejected({ DATABASE_LOG_QUERIES: bad }, "DATABASE_LOG_QUERIES").details).toEqual({
        DATABASE_LOG_QUERIES: "DATABASE_LOG_QUERIES must be true or false",
      });
    }
  });

  it("DATABASE_APPLICATION_NAME is trimmed and limited to 63 characters", () => {
    expect(load({ DATABASE_APPLICATION_NAME: " api " }).applicationName).toBe("api");
    const longest = "a".repeat(63);
    expect(load({ DATABASE_APPLICATION_NAME: longest }).applicationName).toBe(longest);
    expect(load({ DATABASE_APPLICATION_NAME: ` ${longest} ` }).applicationName).toBe(longest);
    expect(
      expectRejected({ DATABASE_APPLICATION_NAME: "a".repeat(64) }, "DATABASE_APPLICATION_NAME").details,
    ).toEqual({ DATABASE_APPLICATION_NAME: "DATABASE_APPLICATION_NAME is limited to 63 characters" });
    // Whitespace only: rejected, and the details name the variable.
    expectRejected({ DATABASE_APPLICATION_NAME: "   " }, "DATABASE_APPLICATION_NAME");
  });

  // Found by this test and fixed: the module promises that messages name the bad setting, and every other rejection does; a
  // whitespace-only DATABASE_APPLICATION_NAME falls through to zod's generic message ("Too small: expected
  // string to have >=1 characters"), so the error message (what ends up in logs) does not say which setting.
  it("a whitespace-only DATABASE_APPLICATION_NAME is named in the message", () => {
    const error = expectRejected({ DATABASE_APPLICATION_NAME: "   " }, "DATABASE_APPLICATION_NAME");
    expect(error.message).toContain("DATABASE_APPLICATION_NAME");
  });

  it("DATABASE_URL must be a postgres:// or postgresql:// URL, is trimmed, and is never echoed", () => {
    expect(load({ DATABASE_URL: `  ${URL_}\n` }).url).toBe(URL_);
    expect(load({ DATABASE_URL: "postgresql://localhost/app" }).url).toBe("postgresql://localhost/app");
    for (const bad of [
      "mysql://app:s3cret@db/app",
      "http://app:s3cret@db/app",
      "app:s3cret@db.example.com:5432/app",
      "//app:s3cret@db/app",
      "host=db user=app password=s3cret",
      "postgres://app:s3cret@db:notaport/app",
      "   ",
    ]) {
      const error = expectRejected({ DATABASE_URL: bad }, "DATABASE_URL");
      expect(JSON.stringify([error.message, error.details]), bad).not.toContain("s3cret");
    }
  });

  it("DATABASE_DIRECT_URL is optional, checked like DATABASE_URL, and never echoed", () => {
    expect(load({}).directUrl).toBeUndefined();
    expect(load({ DATABASE_DIRECT_URL: "postgresql://app:pw@primary/app" }).directUrl).toBe(
      "postgresql://app:pw@primary/app",
    );
    for (const bad of ["http://app:hunter2@primary/app", "primary:5432", "not a url"]) {
      const error = expectRejected({ DATABASE_DIRECT_URL: bad }, "DATABASE_DIRECT_URL");
      expect(error.details?.DATABASE_DIRECT_URL).toBe(
        "DATABASE_DIRECT_URL must be a postgres:// or postgresql:// URL (value not shown)",
      );
      expect(JSON.stringify([error.message, error.details])).not.toContain("hunter2");
    }
  });

  it("DATABASE_REPLICA_URLS is a comma-separated list of postgres URLs, never echoed", () => {
    expect(load({}).replicaUrls).toEqual([]);
    expect(load({ DATABASE_REPLICA_URLS: " , " }).replicaUrls).toEqual([]);
    for (const bad of [
      "postgres://app:pw@r1/app,http://app:hunter2@r2/app",
      "r1:5432",
      "postgres://ok/app,,nope",
    ]) {
      const error = expectRejected({ DATABASE_REPLICA_URLS: bad }, "DATABASE_REPLICA_URLS");
      expect(error.details?.DATABASE_REPLICA_URLS).toBe(
        "DATABASE_REPLICA_URLS must be postgres:// URLs separated by commas (value not shown)",
      );
      expect(JSON.stringify([error.message, error.details])).not.toContain("hunter2");
    }
  });

  it("reports every bad variable at once, as a non-retryable internal error", () => {
    const error = configError(() =>
      loadDatabaseConfig({
        DATABASE_URL: "nope",
        DATABASE_DIRECT_URL: "nope",
        DATABASE_POOL_MAX: "0",
        DATABASE_POOL_MIN: "-1",
        DATABASE_CONNECT_TIMEOUT_MS: "1",
        DATABASE_IDLE_TIMEOUT_MS: "x",
        DATABASE_STATEMENT_TIMEOUT_MS: "-5",
        DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS: "0.5",
        DATABASE_SSL_MODE: "on",
        DATABASE_APPLICATION_NAME: "x".repeat(100),
        DATABASE_LOG_QUERIES: "maybe",
        DATABASE_POOLER: "session",
      }),
    );
    expect(error).toMatchObject({ code: "CONFIG_INVALID", kind: "internal", retryable: false });
    expect(Object.keys(error.details ?? {}).sort()).toEqual([
      "DATABASE_APPLICATION_NAME",
      "DATABASE_CONNECT_TIMEOUT_MS",
      "DATABASE_DIRECT_URL",
      "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT_MS",
      "DATABASE_IDLE_TIMEOUT_MS",
      "DATABASE_LOG_QUERIES",
      "DATABASE_POOLER",
      "DATABASE_POOL_MAX",
      "DATABASE_POOL_MIN",
      "DATABASE_SSL_MODE",
      "DATABASE_STATEMENT_TIMEOUT_MS",
      "DATABASE_URL",
    ]);
    for (const message of Object.values(error.details ?? {})) expect(error.message).toContain(message);
  });
});

describe("loadDatabaseConfig: SSL modes", () => {
  it("leaves the mode to the URL when DATABASE_SSL_MODE is unset", () => {
    expect(load({}).sslMode).toBeUndefined();
    expect(sslOption(undefined)).toBeUndefined();
  });

  it.each(SSL_MODES)("accepts %s", (mode) => {
    expect(load({ DATABASE_SSL_MODE: mode }).sslMode).toBe(mode);
  });

  it("maps each mode to node-postgres' ssl option", () => {
    expect(SSL_MODES).toEqual(["disable", "require", "verify-ca", "verify-full"]);
    expect(sslOption("disable")).toBe(false);
    expect(sslOption("require")).toEqual({ rejectUnauthorized: false });
    expect(sslOption("verify-ca")).toEqual({ rejectUnauthorized: true });
    expect(sslOption("verify-full")).toEqual({ rejectUnauthorized: true });
  });

  it("rejects any other mode, libpq's own included, naming DATABASE_SSL_MODE", () => {
    for (const bad of ["prefer", "allow", "REQUIRE", "true", "verify_full", " require"]) {
      expect(expectRejected({ DATABASE_SSL_MODE: bad }, "DATABASE_SSL_MODE").details).toEqual({
        DATABASE_SSL_MODE: "DATABASE_SSL_MODE must be one of disable, require, verify-ca, verify-full",
      });
    }
  });
});

describe("loadDatabaseConfig: pooler", () => {
  it("DATABASE_POOLER=transaction turns the transaction-pooler mode on; none and unset leave it off", () => {
    expect(load({ DATABASE_POOLER: "transaction" }).transactionPooler).toBe(true);
    expect(load({ DATABASE_POOLER: "none" }).transactionPooler).toBe(false);
    expect(load({}).transactionPooler).toBe(false);
    for (const bad of ["session", "TRANSACTION", "pgbouncer", "true"]) {
      expect(expectRejected({ DATABASE_POOLER: bad }, "DATABASE_POOLER").details).toEqual({
        DATABASE_POOLER: "DATABASE_POOLER must be none or transaction",
      });
    }
  });

  it("?pgbouncer=1 turns it on too; ?pgbouncer=false does not; the flag is removed either way", () => {
    const one = load({ DATABASE_URL: "postgres://app:pw@pooler:6432/app?pgbouncer=1" });
    expect(one.transactionPooler).toBe(true);
    expect(one.url).not.toContain("pgbouncer");
    const off = load({ DATABASE_URL: "postgres://app:pw@pooler:6432/app?pgbouncer=false" });
    expect(off.transactionPooler).toBe(false);
    expect(off.url).not.toContain("pgbouncer");
    // The URL flag wins over DATABASE_POOLER=none.
    expect(
      load({ DATABASE_URL: "postgres://app:pw@pooler:6432/app?pgbouncer=true", DATABASE_POOLER: "none" })
        .transactionPooler,
    ).toBe(true);
  });

  it("removing the flag keeps the credentials, host, database and other parameters as node-postgres reads them", () => {
    const { url } = load({
      DATABASE_URL:
        "postgres://ap%40p:p%40ss%2Fw%3Ard@pooler.example.com:6432/app?sslmode=require&pgbouncer=true&application_name=my%20app",
    });
    const parsed = new URL(url);
    expect(decodeURIComponent(parsed.username)).toBe("ap@p");
    expect(decodeURIComponent(parsed.password)).toBe("p@ss/w:rd");
    expect(parsed.host).toBe("pooler.example.com:6432");
    expect(parsed.pathname).toBe("/app");
    expect(Object.fromEntries(parsed.searchParams)).toEqual({
      sslmode: "require",
      application_name: "my app",
    });
  });

  it("strips the flag from DATABASE_DIRECT_URL without turning the pooler mode on", () => {
    const config = load({ DATABASE_DIRECT_URL: "postgres://app:pw@primary:5432/app?pgbouncer=true" });
    expect(config.directUrl).toBe("postgres://app:pw@primary:5432/app");
    expect(config.transactionPooler).toBe(false);
  });
});

describe("databaseConfigFromUrl", () => {
  it("gives the environment's defaults for a URL", () => {
    expect(databaseConfigFromUrl(URL_)).toEqual(DEFAULTS);
  });

  it("applies overrides on top, over what the URL implies", () => {
    expect(databaseConfigFromUrl(URL_, { poolMax: 3, applicationName: "job", logQueries: true })).toEqual({
      ...DEFAULTS,
      poolMax: 3,
      applicationName: "job",
      logQueries: true,
    });
    const pooled = databaseConfigFromUrl("postgres://app:pw@pooler:6432/app?pgbouncer=true");
    expect(pooled).toMatchObject({ url: "postgres://app:pw@pooler:6432/app", transactionPooler: true });
    expect(
      databaseConfigFromUrl("postgres://app:pw@pooler:6432/app?pgbouncer=true", { transactionPooler: false })
        .transactionPooler,
    ).toBe(false);
  });

  it("checks the URL like DATABASE_URL and never echoes it", () => {
    for (const bad of ["", "mysql://app:s3cret@db/app", "not a url"]) {
      const error = configError(() => databaseConfigFromUrl(bad));
      expect(error.code).toBe("CONFIG_INVALID");
      expect(Object.keys(error.details ?? {})).toEqual(["DATABASE_URL"]);
      expect(error.message).not.toContain("s3cret");
    }
  });

  it("ignores the process environment", () => {
    vi.stubEnv("DATABASE_POOL_MAX", "lots");
    vi.stubEnv("DATABASE_URL", "not a url");
    try {
      expect(databaseConfigFromUrl(URL_)).toEqual(DEFAULTS);
    } finally {
      vi.unstubAllEnvs();
    }
  });
});

describe("redactUrl", () => {
  it("replaces the password with *** and keeps the rest", () => {
    expect(redactUrl("postgres://app:s3cret@db.example.com:5432/app?sslmode=require")).toBe(
      "postgres://app:***@db.example.com:5432/app?sslmode=require",
    );
    expect(redactUrl("postgresql://:s3cret@[::1]:5432/app")).toBe("postgresql://:***@[::1]:5432/app");
    expect(redactUrl("postgres://app:s3cret@%2Fvar%2Frun%2Fpostgresql/app")).toBe(
      "postgres://app:***@%2Fvar%2Frun%2Fpostgresql/app",
    );
  });

  it("leaves URLs without a password alone", () => {
    for (const url of ["postgres://app@db.example.com/app", "postgres://db.example.com:5432/app"])
      expect(redactUrl(url)).toBe(url);
    expect(redactUrl("postgres://app:@db/app")).not.toContain("***");
  });

  it("never returns the password, encoded or not, however unusual", () => {
    const passwords = [
      "s3cret",
      "p@ss:w/rd#?",
      "pässwörd🔑",
      "with space",
      `q"u'o;t=e&s`,
      "%zz%",
      "***real***",
      "a".repeat(500),
    ];
    for (const password of passwords) {
      const encoded = encodeURIComponent(password);
      const urls = [
        `postgres://app:${encoded}@db.example.com:5432/app`,
        `postgresql://app:${encoded}@[::1]/app?sslmode=require`,
      ];
      // Left unencoded, characters URLs allow in the user info still parse as the password.
      if (!/[#/?]/.test(password)) urls.push(`postgres://app:${password}@db.example.com:5432/app`);
      for (const url of urls) {
        const redacted = redactUrl(url);
        expect(redacted, url).not.toContain(encoded);
        expect(redacted, url).not.toContain(password);
        expect(redacted, url).not.toContain(new URL(url).password);
      }
    }
  });

  it("never returns the password of a URL with an unencoded # / ? in it (those do not parse)", () => {
    for (const url of [
      "postgres://app:pa#ss@db/app",
      "postgres://app:pa/ss@db/app",
      "postgres://app:pa?ss@db/app",
      "postgres://app:s3cret@host1:5432,host2:5432/app",
    ])
      expect(redactUrl(url), url).toBe("<invalid url>");
  });

  it("answers <invalid url> for strings that are not URLs, without echoing them", () => {
    for (const value of ["", "   ", "not a url", "//app:s3cret@db/app", "host=db user=app password=s3cret"])
      expect(redactUrl(value)).toBe("<invalid url>");
  });

  it("node-postgres takes a password from ?password= (so such a URL does carry a secret)", async () => {
    const url = new URL(database.url);
    const password = decodeURIComponent(url.password);
    url.password = "";
    url.searchParams.set("password", password);
    const result = await queryOnce<{ one: number }>(url.toString(), "SELECT 1 AS one");
    expect(result.rows).toEqual([{ one: 1 }]);
  });

  // Found by this test and fixed: libpq and node-postgres also read the password from the query string (see the test above), and
  // loadDatabaseConfig accepts such a URL, but redactUrl only blanks the user-info password: the secret is printed
  // as is, for instance by initializeDB()'s "database initialized" log line and the API's start-up line.
  it("hides a password given as ?password=", () => {
    const redacted = redactUrl("postgres://app@db.example.com:5432/app?sslmode=require&password=s3cret");
    expect(redacted).not.toContain("s3cret");
  });

  // Found by this test and fixed: a postgres URL whose unencoded password starts with digits and goes on with "/" or "?" parses (host
  // "app", port 123, the rest as path or query), passes loadDatabaseConfig, and comes back verbatim, so a
  // mistyped DATABASE_URL prints its password in initializeDB()'s "database initialized" line.
  it("never echoes an unencoded password that happens to parse as a port and a path", () => {
    for (const url of ["postgres://app:123/s3cret@db/app", "postgres://app:123?s3cret@db/app"])
      expect(redactUrl(url), url).not.toContain("s3cret");
  });

  // Found by this test and fixed (not reachable from callers, which only pass URLs loadDatabaseConfig accepted): a string without
  // a scheme that WHATWG URL still parses, the user name becoming the scheme "app:", is returned verbatim,
  // password included, although redactUrl promises a result that is safe to print.
  it("never echoes the password of a URL missing its scheme", () => {
    expect(redactUrl("app:s3cret@db.example.com:5432/app")).not.toContain("s3cret");
  });
});
