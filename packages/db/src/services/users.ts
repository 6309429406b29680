// UsersService: creating, finding, listing, searching, updating, soft-deleting, restoring and purging users,
// and their passwords. Callers never see password hashes: every function returns `PublicUser`.
import { and, asc, desc, eq, inArray, isNull, lt, type SQL, sql } from "drizzle-orm";
import type { PgUpdateSetSource } from "drizzle-orm/pg-core";
import { parsePhoneNumberFromString } from "libphonenumber-js";
import { z } from "zod";
import { now } from "../clock.ts";
import { type DatabaseOrTransaction, db, transaction } from "../connection.ts";
import {
  assertPasswordStrength,
  type BreachCheckOptions,
  passwordWeakness,
} from "../crypto/password-policy.ts";
import {
  candidatePasswordSchema,
  hashPassword,
  isPreparedPassword,
  needsRehash,
  type PreparedPassword,
  passwordSchema,
  preparedFromHash,
  preparedHash,
  verifyAgainstDummy,
  verifyPasswordHash,
} from "../crypto/passwords.ts";
import { DbError, isDbError } from "../errors.ts";
import { exceedsJsonDepth } from "../json-depth.ts";
import type { Logger } from "../logger.ts";
import { withMetrics } from "../metrics.ts";
import { accounts, users } from "../schema/index.ts";
import { defineStatement, param, type Statement, selectColumns } from "../statements.ts";
import {
  deleteInBatches,
  noNul,
  type PublicUser,
  publicUserColumns,
  type ReadOptions,
  type ServiceOptions,
  validate,
} from "./common.ts";
import { type Call, defineService } from "./define.ts";
import type { OneTimeTokenRecord } from "./one-time-tokens.ts";
import * as OneTimeTokensService from "./one-time-tokens.ts";
import * as SessionsService from "./sessions.ts";

export type { BreachCheckOptions } from "../crypto/password-policy.ts";
export type { PreparedPassword } from "../crypto/passwords.ts";
export type { PublicUser } from "./common.ts";

export const EMAIL_MAX_LENGTH = 254;
export const NAME_MAX_LENGTH = 200;
export const AVATAR_URL_MAX_LENGTH = 2048;
/** Serialized (UTF-8 JSON) size limit of `metadata`. */
export const METADATA_MAX_BYTES = 16 * 1024;
export const LIST_DEFAULT_LIMIT = 50;
export const LIST_MAX_LIMIT = 1000;
/** Patterns per filter of `list`. */
export const LIST_MAX_PATTERNS = 1000;
export const SEARCH_DEFAULT_LIMIT = 20;
export const SEARCH_MAX_LIMIT = 100;
export const PURGE_DEFAULT_BATCH_SIZE = 1000;
export const PURGE_DEFAULT_MAX_BATCHES = 100;

// ---------------------------------------------------------------------------------------------------------
// Input schemas. PostgreSQL text cannot hold NUL, so strings containing it are rejected here rather than
// failing later as a driver error.

const emailSchema = z
  .string()
  .max(EMAIL_MAX_LENGTH * 2)
  .trim()
  .toLowerCase()
  .pipe(z.email().max(EMAIL_MAX_LENGTH));

/** E.164 through libphonenumber-js; a leading + is required because we never guess a country. */
const phoneSchema = z
  .string()
  .max(64)
  .trim()
  .transform((value, ctx) => {
    const parsed = value.startsWith("+") ? parsePhoneNumberFromString(value) : undefined;
    if (!parsed?.isValid()) {
      ctx.addIssue({
        code: "custom",
        message: "must be a valid phone number in international format (+...)",
      });
      return z.NEVER;
    }
    return parsed.number;
  });

const nameSchema = z.string().trim().min(1).max(NAME_MAX_LENGTH).refine(noNul, "must not contain NUL");

const avatarUrlSchema = z
  .string()
  .trim()
  .max(AVATAR_URL_MAX_LENGTH)
  .pipe(z.url({ protocol: /^https?$/, message: "must be an http(s) URL" }))
  .refine(noNul, "must not contain NUL");

/** Deepest nesting of metadata: z.json() recurses, and a deep enough value overflows the stack. */
export const METADATA_MAX_DEPTH = 32;

const metadataSchema = z
  .custom<unknown>((value) => !exceedsJsonDepth(value, METADATA_MAX_DEPTH), {
    message: `must nest at most ${METADATA_MAX_DEPTH} levels deep`,
    abort: true,
  })
  .pipe(z.record(z.string(), z.json()))
  .superRefine((value, ctx) => {
    const serialized = JSON.stringify(value);
    if (Buffer.byteLength(serialized, "utf8") > METADATA_MAX_BYTES) {
      ctx.addIssue({ code: "custom", message: `must serialize to at most ${METADATA_MAX_BYTES} bytes` });
    }
    // jsonb rejects \u0000 in strings and keys.
    if (serialized.includes("\\u0000")) ctx.addIssue({ code: "custom", message: "must not contain NUL" });
  });

const idSchema = z.guid("must be a UUID").transform((value) => value.toLowerCase());

/** A password made by preparePassword (checked and hashed already). */
const preparedSchema = z.custom<PreparedPassword>(isPreparedPassword, "must be a password string");
/** A new password: a string (checked and hashed by the call) or a PreparedPassword (hashed beforehand). */
const newPasswordSchema = z.union([preparedSchema, passwordSchema]);

const createSchema = z
  .strictObject({
    email: emailSchema.optional(),
    phoneNumber: phoneSchema.optional(),
    password: newPasswordSchema.optional(),
    firstName: nameSchema.nullish(),
    lastName: nameSchema.nullish(),
    avatarUrl: avatarUrlSchema.nullish(),
    metadata: metadataSchema.optional(),
  })
  .refine((input) => input.email !== undefined || input.phoneNumber !== undefined, {
    message: "an email or a phone number is required",
    path: ["email"],
  });

const patchSchema = z
  .strictObject({
    email: emailSchema.nullish(),
    phoneNumber: phoneSchema.nullish(),
    firstName: nameSchema.nullish(),
    lastName: nameSchema.nullish(),
    avatarUrl: avatarUrlSchema.nullish(),
    metadata: metadataSchema.optional(),
    emailVerifiedAt: z.date().nullish(),
    phoneNumberVerifiedAt: z.date().nullish(),
    lastSignInAt: z.date().nullish(),
  })
  .refine((patch) => Object.values(patch).some((value) => value !== undefined), {
    message: "the patch changes nothing",
  });

const updateSchema = z.strictObject({ id: idSchema, patch: patchSchema });

const patternList = (map: (pattern: string) => string = (pattern) => pattern) =>
  z
    .array(
      z
        .string()
        .min(1)
        .max(EMAIL_MAX_LENGTH + 64)
        .refine(noNul, "must not contain NUL")
        .transform(map),
    )
    .max(LIST_MAX_PATTERNS);

const listSchema = z.strictObject({
  ids: patternList((pattern) => pattern.toLowerCase()).optional(),
  emails: patternList((pattern) => pattern.toLowerCase()).optional(),
  phoneNumbers: patternList().optional(),
  limit: z.number().int().min(1).max(LIST_MAX_LIMIT).default(LIST_DEFAULT_LIMIT),
  cursor: z.string().max(128).nullish(),
  includeDeleted: z.boolean().optional(),
});

const searchSchema = z.strictObject({
  query: z.string().trim().min(1).max(256).refine(noNul, "must not contain NUL"),
  limit: z.number().int().min(1).max(SEARCH_MAX_LIMIT).default(SEARCH_DEFAULT_LIMIT),
  prefix: z.boolean().default(false),
});

const purgeSchema = z.strictObject({
  retentionMs: z.number().int().min(0),
  batchSize: z.number().int().min(1).max(10_000).default(PURGE_DEFAULT_BATCH_SIZE),
  maxBatches: z.number().int().min(1).max(10_000).default(PURGE_DEFAULT_MAX_BATCHES),
});

const setPasswordSchema = z.strictObject({ id: idSchema, password: newPasswordSchema });
const verifyPasswordSchema = z.strictObject({ email: emailSchema, password: candidatePasswordSchema });
const preparePasswordSchema = z.strictObject({
  password: passwordSchema,
  email: z.string().max(1024).nullish(),
});
const registerSchema = z.strictObject({
  email: emailSchema,
  password: preparedSchema,
  firstName: nameSchema.nullish(),
  lastName: nameSchema.nullish(),
});
const verificationTargetSchema = z.union([
  z.strictObject({ userId: idSchema }),
  z.strictObject({ email: emailSchema }),
]);
const linkPurposeSchema = z.enum(["email_verification", "magic_link", "password_reset"]);
const useEmailLinkSchema = z.strictObject({
  token: z.string().max(1024),
  purpose: linkPurposeSchema,
  newPassword: preparedSchema.optional(),
  /** For a sign-up's verification link: the password that sign-up chose. */
  password: z.string().optional(),
});

export type CreateUserInput = z.input<typeof createSchema>;
export type UserPatch = z.input<typeof patchSchema>;
export type UpdateUserInput = z.input<typeof updateSchema>;
export type ListUsersInput = z.input<typeof listSchema>;
export type SearchUsersInput = z.input<typeof searchSchema>;
export type PurgeUsersInput = z.input<typeof purgeSchema>;
export type SetPasswordInput = z.input<typeof setPasswordSchema>;
export type VerifyPasswordInput = z.input<typeof verifyPasswordSchema>;
export type PreparePasswordInput = z.input<typeof preparePasswordSchema>;
export type RegisterInput = z.input<typeof registerSchema>;
export type UseEmailLinkInput = z.input<typeof useEmailLinkSchema>;

export interface UserPage {
  users: PublicUser[];
  /** Pass back as `cursor` for the next page; null on the last page. */
  nextCursor: string | null;
}

// ---------------------------------------------------------------------------------------------------------
// Helpers

/** Turns the unique and check violations of `users` into the codes callers act on. */
function translateWriteError(error: unknown): unknown {
  if (isDbError(error, "UNIQUE_VIOLATION")) {
    if (error.constraint === "users_email_active_key") {
      return new DbError("EMAIL_TAKEN", "The email address is already in use", {
        cause: error,
        table: "users",
      });
    }
    if (error.constraint === "users_phone_number_active_key") {
      return new DbError("PHONE_TAKEN", "The phone number is already in use", {
        cause: error,
        table: "users",
      });
    }
  }
  if (isDbError(error, "CHECK_VIOLATION") && error.constraint === "users_email_or_phone_check") {
    return new DbError("VALIDATION_FAILED", "Invalid input: a user needs an email or a phone number", {
      cause: error,
      table: "users",
      details: { email: "an email or a phone number is required" },
    });
  }
  return error;
}

async function writing<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (error) {
    throw translateWriteError(error);
  }
}

/**
 * The PHC string a new password is stored as: a PreparedPassword's own hash, or a string checked against the
 * common-password list (and the email's local part, when known) and hashed here.
 */
async function hashOf(password: string | PreparedPassword, email?: string | null): Promise<string> {
  if (typeof password !== "string") return preparedHash(password);
  const weakness = passwordWeakness(password, email);
  if (weakness !== null) throw passwordTooWeak(weakness);
  return await hashPassword(password);
}

function passwordTooWeak(reason: string): DbError<"PASSWORD_TOO_WEAK"> {
  return new DbError("PASSWORD_TOO_WEAK", `Invalid input: password: ${reason}`, {
    details: { password: reason },
  });
}

function notFound(id: string): DbError<"NOT_FOUND"> {
  return new DbError("NOT_FOUND", `No user ${id}`, { table: "users" });
}

function encodeCursor(id: string): string {
  return Buffer.from(id, "utf8").toString("base64url");
}

const UUID_TEXT = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

function decodeCursor(cursor: string): string {
  const id = Buffer.from(cursor, "base64url").toString("utf8");
  // Re-encoding rejects the lenient decodings Buffer accepts (padding, stray characters).
  if (!UUID_TEXT.test(id) || encodeCursor(id) !== cursor) {
    throw new DbError("VALIDATION_FAILED", "Invalid input: cursor: is not a cursor returned by list()", {
      details: { cursor: "is not a cursor returned by list()" },
    });
  }
  return id;
}

const LIKE_WILDCARD = /[%_\\]/;

type ListInput = z.output<typeof listSchema>;

/** The parameters of a list statement; which of them a statement uses depends on its shape. */
interface ListParams extends Record<string, unknown> {
  exactIds: string[];
  idPatterns: string[];
  emails: string[] | undefined;
  /** A lone suffix pattern's text reversed (a prefix of reverse(email)), and the bound just past it. */
  emailReversedFrom: string | undefined;
  emailReversedTo: string | undefined;
  phoneNumbers: string[] | undefined;
  cursor: string | undefined;
  limit: number;
}

// One statement per shape of filter (at most 2 x 3 x 3 x 2 x 2 of them), compiled on first use.
const listStatements = new Map<number, Statement<PublicUser, ListParams>>();

/**
 * The statement and parameters `list` runs for this input. Keyset pagination on the primary key: UUIDv7 ids
 * sort in creation order, and `id > $cursor ORDER BY id` stays fast on any page, unlike OFFSET. One extra
 * row tells whether there is a next page. The planner picks between a bitmap scan of the trigram index then a
 * top-N sort (selective patterns) and walking the primary key while filtering (patterns most rows match);
 * both are right for their case, which is why statements with LIKE patterns are planned per call.
 */
function listQuery(input: ListInput, options: ReadOptions) {
  const includeDeleted = input.includeDeleted ?? options.includeDeleted ?? false;
  // Patterns without wildcards are plain ids: `id = ANY` uses the primary key, whereas `id::text LIKE` can
  // only scan. Only real wildcard patterns go through LIKE. An empty list matches nothing (`= ANY('{}')`).
  const exactIds =
    input.ids?.filter((pattern) => !LIKE_WILDCARD.test(pattern) && UUID_TEXT.test(pattern)) ?? [];
  const idPatterns = input.ids?.filter((pattern) => !exactIds.includes(pattern)) ?? [];
  // One pattern that is a wildcard then plain ASCII text (`%@example.com`) is a suffix: reversed, it is a
  // prefix, i.e. the byte range [prefix, prefix with its last byte + 1) of reverse(email), which
  // users_email_reversed_idx serves as a range scan, far faster than the trigram index for domains.
  const only = input.emails?.length === 1 ? input.emails[0] : undefined;
  const suffix =
    only !== undefined && /^%[\x20-\x7e]+$/.test(only) && !/[%_\\]/.test(only.slice(1))
      ? [...only.slice(1)].reverse().join("")
      : undefined;
  const params: ListParams = {
    exactIds,
    idPatterns,
    emails: input.emails,
    emailReversedFrom: suffix,
    emailReversedTo:
      suffix === undefined
        ? undefined
        : suffix.slice(0, -1) + String.fromCharCode(suffix.charCodeAt(suffix.length - 1) + 1),
    phoneNumbers: input.phoneNumbers,
    cursor: input.cursor ? decodeCursor(input.cursor) : undefined,
    limit: input.limit + 1,
  };
  const shape = {
    deleted: includeDeleted,
    exact: input.ids !== undefined && (exactIds.length > 0 || idPatterns.length === 0),
    patterns: idPatterns.length > 0,
    emails: input.emails !== undefined && suffix === undefined,
    emailSuffix: suffix !== undefined,
    phones: input.phoneNumbers !== undefined,
    cursor: params.cursor !== undefined,
  };
  // The shape as a bit set: looked up on every call, so no string is built until a shape is first seen.
  let bits = 0;
  for (const on of Object.values(shape)) bits = (bits << 1) | (on ? 1 : 0);
  let statement = listStatements.get(bits);
  if (statement === undefined) {
    const key = Object.entries(shape)
      .filter(([, on]) => on)
      .map(([name]) => name)
      .join("_");
    const filters: SQL[] = [];
    if (!shape.deleted) filters.push(sql`${users.deletedAt} IS NULL`);
    const ids: SQL[] = [];
    if (shape.exact) ids.push(sql`${users.id} = ANY (${param("exactIds")}::uuid[])`);
    if (shape.patterns) ids.push(sql`${users.id}::text LIKE ANY (${param("idPatterns")}::text[])`);
    if (ids.length > 0) filters.push(sql`(${sql.join(ids, sql` OR `)})`);
    // One array parameter each: a bitmap index scan runs the trigram index once per pattern and ORs the
    // results, so `LIKE ANY` is served by users_email_trgm_idx / users_phone_number_trgm_idx.
    if (shape.emails) filters.push(sql`${users.email} LIKE ANY (${param("emails")}::text[])`);
    if (shape.emailSuffix) {
      // ~>=~ and ~<~ compare bytes, as the index's text_pattern_ops does.
      filters.push(sql`reverse(${users.email}) ~>=~ ${param("emailReversedFrom")}`);
      filters.push(sql`reverse(${users.email}) ~<~ ${param("emailReversedTo")}`);
    }
    if (shape.phones) filters.push(sql`${users.phoneNumber} LIKE ANY (${param("phoneNumbers")}::text[])`);
    if (shape.cursor) filters.push(sql`${users.id} > ${param("cursor")}::uuid`);
    const where = filters.length > 0 ? sql` WHERE ${sql.join(filters, sql` AND `)}` : sql``;
    statement = defineStatement<PublicUser, ListParams>(
      `users_list_${key || "all"}`,
      sql`SELECT ${selectColumns("users", publicUserColumns)} FROM users${where}
          ORDER BY ${users.id} LIMIT ${param("limit")}`,
      // Pattern filters are planned per call: a generic plan cannot know how many rows a pattern matches,
      // and walking the primary key for a rare domain reads the whole table (seen on 20,000 users). Ids
      // and the cursor alone plan well generic.
      { prepare: !(shape.patterns || shape.emails || shape.emailSuffix || shape.phones) },
    );
    listStatements.set(bits, statement);
  }
  return { statement, params };
}

/** Point lookups by a unique column, active users only or any (then the active one first). */
function lookupStatement(column: "id" | "email" | "phone_number", includeDeleted: boolean) {
  const cast = column === "id" ? sql`::uuid` : sql``;
  const match = sql`${sql.identifier(column)} = ${param("value")}${cast}`;
  return defineStatement<PublicUser, { value: string }>(
    `users_by_${column}${includeDeleted ? "_any" : ""}`,
    includeDeleted
      ? sql`SELECT ${selectColumns("users", publicUserColumns)} FROM users WHERE ${match}
            ORDER BY deleted_at DESC NULLS FIRST, id DESC LIMIT 1`
      : sql`SELECT ${selectColumns("users", publicUserColumns)} FROM users WHERE ${match} AND deleted_at IS NULL
            LIMIT 1`,
  );
}

const lookups = {
  id: [lookupStatement("id", false), lookupStatement("id", true)],
  email: [lookupStatement("email", false), lookupStatement("email", true)],
  phone_number: [lookupStatement("phone_number", false), lookupStatement("phone_number", true)],
} as const;

/** The user whose `column` equals `value`; soft-deleted ones only with includeDeleted. */
async function findOneBy(
  column: keyof typeof lookups,
  value: string,
  options: ReadOptions,
): Promise<PublicUser | null> {
  const statement = lookups[column][options.includeDeleted ? 1 : 0];
  const result = await withMetrics("select", "users", () => statement.run(options.tx, { value }));
  return result.rows[0] ?? null;
}

// ---------------------------------------------------------------------------------------------------------
// Service functions

/**
 * Creates a user from an email and/or a phone number, hashing the password if one is given.
 * @throws DbError VALIDATION_FAILED, EMAIL_TAKEN, PHONE_TAKEN.
 * @example const user = await create({ email: "Ada@Example.com", password: "correct horse" });
 */
export const create = defineService(
  { name: "users.create", table: "users", arity: 1 },
  async ({ logger, options }: Call<ServiceOptions>, payload: CreateUserInput): Promise<PublicUser> => {
    const { password, ...input } = validate(createSchema, payload);
    const passwordHash = password === undefined ? null : await hashOf(password, input.email);
    const at = now();
    const handle = options.tx ?? db;
    // No read-then-write duplicate check: the partial unique indexes decide, so concurrent sign-ups of one
    // address cannot both succeed, and the violated constraint names which field was taken.
    const [user] = await writing(() =>
      withMetrics("insert", "users", () =>
        handle
          .insert(users)
          .values({ ...input, passwordHash, createdAt: at, updatedAt: at })
          .returning(publicUserColumns),
      ),
    );
    if (!user) throw new DbError("DATABASE_ERROR", "INSERT returned no row", { table: "users" });
    logger.audit({ userId: user.id, withPassword: passwordHash !== null }, "user created");
    return user;
  },
);

/**
 * The user with this id, or null. Soft-deleted users only with `{ includeDeleted: true }`.
 * @throws DbError VALIDATION_FAILED when `id` is not a UUID.
 * @example const user = await findById(id);
 */
export const findById = defineService(
  { name: "users.findById", table: "users", arity: 1, logFields: ([id]) => ({ userId: id }) },
  async ({ options }: Call<ReadOptions>, id: string): Promise<PublicUser | null> => {
    return await findOneBy("id", validate(idSchema, id), options);
  },
);

/**
 * The user with this email (normalized first), or null. With `{ includeDeleted: true }` a deleted user can
 * match; when several have used the address, the active one wins, then the most recently deleted.
 * @throws DbError VALIDATION_FAILED when the email is malformed.
 * @example const user = await findByEmail("ada@example.com");
 */
export const findByEmail = defineService(
  { name: "users.findByEmail", table: "users", arity: 1 },
  async ({ options }: Call<ReadOptions>, email: string): Promise<PublicUser | null> => {
    const normalized = validate(emailSchema, email);
    return await findOneBy("email", normalized, options);
  },
);

/**
 * The user with this phone number (normalized to E.164 first), or null; deleted users as in findByEmail.
 * @throws DbError VALIDATION_FAILED when the number is not a valid international number.
 * @example const user = await findByPhone("+1 415 555 2671");
 */
export const findByPhone = defineService(
  { name: "users.findByPhone", table: "users", arity: 1 },
  async ({ options }: Call<ReadOptions>, phoneNumber: string): Promise<PublicUser | null> => {
    const normalized = validate(phoneSchema, phoneNumber);
    return await findOneBy("phone_number", normalized, options);
  },
);

/**
 * One page of users in creation (id) order. Each filter is a list of LIKE patterns (`%` any run, `_` one
 * character, `\` escapes) of which any may match; filters combine with AND; an empty list matches nothing.
 * Email patterns are lower-cased. Deleted users only with `includeDeleted` (in the payload or the options).
 * @throws DbError VALIDATION_FAILED for a bad limit (1..1000, default 50), pattern or cursor.
 * @example const { users, nextCursor } = await list({ emails: ["%@example.com"], limit: 100 });
 */
export const list = defineService(
  { name: "users.list", table: "users", arity: 1 },
  async ({ options }: Call<ReadOptions>, payload: ListUsersInput = {}): Promise<UserPage> => {
    const input = validate(listSchema, payload);
    const { statement, params } = listQuery(input, options);
    const { rows } = await withMetrics("select", "users", () => statement.run(options.tx, params));
    const page = rows.slice(0, input.limit);
    const last = page.at(-1);
    return { users: page, nextCursor: rows.length > input.limit && last ? encodeCursor(last.id) : null };
  },
);

/**
 * The PostgreSQL plan of the query `list` would run for this payload, one line per element (diagnostics:
 * checks that the trigram indexes serve the patterns). With `analyze: true` the query is run too.
 * @throws DbError VALIDATION_FAILED as list does.
 * @example console.log((await explainList({ emails: ["%@example.com"] })).join("\n"));
 */
export const explainList = defineService(
  { name: "users.explainList", table: "users", arity: 1 },
  async (
    { options }: Call<ReadOptions>,
    payload: ListUsersInput & { analyze?: boolean } = {},
  ): Promise<string[]> => {
    const { analyze, ...rest } = payload;
    const input = validate(listSchema, rest);
    const { statement, params } = listQuery(input, options);
    return await withMetrics("explain", "users", () => statement.explain(options.tx, params, analyze));
  },
);

/**
 * Full-text search over names, email words and metadata strings, best match first (ts_rank), active users
 * only. The query uses web-search syntax (`"exact phrase"`, `or`, `-exclude`); with `prefix: true` it is
 * taken as plain words that each match as a prefix instead (search as you type).
 * @throws DbError VALIDATION_FAILED for an empty query or a bad limit (1..100, default 20).
 * @example const found = await search({ query: "ada lovelace" });
 */
export const search = defineService(
  { name: "users.search", table: "users", arity: 1 },
  async ({ options }: Call<ServiceOptions>, payload: SearchUsersInput): Promise<PublicUser[]> => {
    const input = validate(searchSchema, payload);
    const handle = options.tx ?? db;
    // Prefix mode builds the tsquery text itself from letters and digits only, so no user input can carry
    // tsquery operators; each word becomes `word:*`.
    const words = input.query
      .toLowerCase()
      .split(/[^\p{L}\p{N}]+/u)
      .filter((word) => word.length > 0);
    const tsquery = input.prefix
      ? sql`to_tsquery('simple', ${words.map((word) => `${word}:*`).join(" & ")})`
      : sql`websearch_to_tsquery('simple', ${input.query})`;
    const rank = sql`ts_rank(${users.searchVector}, ${tsquery})`;
    // `search_vector @@ tsquery` is the condition users_search_vector_idx (GIN) serves; ranking happens only
    // on the rows it returns.
    return await withMetrics("select", "users", () =>
      handle
        .select(publicUserColumns)
        .from(users)
        .where(and(sql`${users.searchVector} @@ ${tsquery}`, isNull(users.deletedAt)))
        .orderBy(desc(rank), asc(users.id))
        .limit(input.limit),
    );
  },
);

/**
 * Changes some fields of an active user; `null` clears a nullable field and `metadata` is replaced whole.
 * Changing the email (or phone number) clears its verification time unless the patch sets one; changing the
 * email also retires every pending one-time token of the user (links went to the old address).
 * @throws DbError VALIDATION_FAILED (also for an empty patch), NOT_FOUND, EMAIL_TAKEN, PHONE_TAKEN.
 * @example await update({ id, patch: { firstName: "Ada", metadata: { plan: "pro" } } });
 */
export const update = defineService(
  { name: "users.update", table: "users", arity: 1, logFields: ([payload]) => ({ userId: payload?.id }) },
  async ({ logger, options }: Call<ServiceOptions>, payload: UpdateUserInput): Promise<PublicUser> => {
    const { id, patch } = validate(updateSchema, payload);
    const set: PgUpdateSetSource<typeof users> = {};
    for (const [key, value] of Object.entries(patch)) {
      if (value !== undefined) Object.assign(set, { [key]: value });
    }
    // A new address is unverified. Decided in the UPDATE itself (SET sees the old row), so no prior read.
    if (patch.email !== undefined && patch.emailVerifiedAt === undefined) {
      set.emailVerifiedAt = sql`CASE WHEN ${users.email} IS DISTINCT FROM ${patch.email}::text THEN NULL ELSE ${users.emailVerifiedAt} END`;
    }
    if (patch.phoneNumber !== undefined && patch.phoneNumberVerifiedAt === undefined) {
      set.phoneNumberVerifiedAt = sql`CASE WHEN ${users.phoneNumber} IS DISTINCT FROM ${patch.phoneNumber}::text THEN NULL ELSE ${users.phoneNumberVerifiedAt} END`;
    }
    // One conditional UPDATE: a user deleted concurrently is simply not found. updated_at is set by trigger.
    const apply = async (handle: DatabaseOrTransaction) => {
      const [user] = await writing(() =>
        withMetrics("update", "users", () =>
          handle
            .update(users)
            .set(set)
            .where(and(eq(users.id, id), isNull(users.deletedAt)))
            .returning(publicUserColumns),
        ),
      );
      if (!user) throw notFound(id);
      return user;
    };
    let retiredTokens = 0;
    const user =
      patch.email === undefined
        ? await apply(options.tx ?? db)
        : // A new address: every link sent to the old one (reset, magic link, verification) dies with the
          // change, in the same transaction. The row lock orders this against a link being used right now.
          await transaction(
            async (tx) => {
              const [before] = await withMetrics("select", "users", () =>
                tx
                  .select({ email: users.email })
                  .from(users)
                  .where(and(eq(users.id, id), isNull(users.deletedAt)))
                  .for("update"),
              );
              if (!before) throw notFound(id);
              const updated = await apply(tx);
              if (before.email !== updated.email) {
                retiredTokens = await OneTimeTokensService.invalidateForUser(id, {}, logger, { tx });
              }
              return updated;
            },
            { tx: options.tx },
          );
    logger.audit({ userId: id, fields: Object.keys(set), retiredTokens }, "user updated");
    return user;
  },
);

/**
 * Soft-deletes an active user and, in the same transaction, revokes all their active sessions, invalidates
 * all their unused one-time tokens and unlinks their OAuth identities. The email, phone number and provider
 * accounts become free for a new user.
 * @throws DbError VALIDATION_FAILED, NOT_FOUND (missing or already deleted).
 * @example await softDelete(user.id);
 */
export const softDelete = defineService(
  { name: "users.softDelete", table: "users", arity: 1, logFields: ([id]) => ({ userId: id }) },
  async ({ logger, options }: Call<ServiceOptions>, id: string): Promise<PublicUser> => {
    const userId = validate(idSchema, id);
    const at = now();
    const { user, revokedSessions, invalidatedTokens, unlinkedAccounts } = await transaction(
      async (tx) => {
        // The user row first: its row lock makes a concurrent softDelete of the same user wait, then find
        // nothing (deleted_at is no longer NULL) and report NOT_FOUND.
        const [deleted] = await withMetrics("update", "users", () =>
          tx
            .update(users)
            .set({ deletedAt: at })
            .where(and(eq(users.id, userId), isNull(users.deletedAt)))
            .returning(publicUserColumns),
        );
        if (!deleted) throw notFound(userId);
        // The same statements the sessions and tokens services use, joined to this transaction.
        const revoked = await SessionsService.revokeAllForUser({ userId }, logger, { tx });
        const invalidated = await OneTimeTokensService.invalidateForUser(userId, {}, logger, { tx });
        // Linked OAuth identities go with the user, so the same provider account can sign up again.
        const unlinked = await withMetrics("delete", "accounts", () =>
          tx.delete(accounts).where(eq(accounts.userId, userId)).returning({ id: accounts.id }),
        );
        return {
          user: deleted,
          revokedSessions: revoked,
          invalidatedTokens: invalidated,
          unlinkedAccounts: unlinked.length,
        };
      },
      { tx: options.tx },
    );
    logger.audit({ userId, revokedSessions, invalidatedTokens, unlinkedAccounts }, "user soft-deleted");
    return user;
  },
);

/**
 * Undoes a soft delete. Sessions and tokens revoked by the delete stay revoked.
 * @throws DbError VALIDATION_FAILED, NOT_FOUND (missing or not deleted), EMAIL_TAKEN / PHONE_TAKEN when
 *   another user took the address meanwhile.
 * @example await restore(user.id);
 */
export const restore = defineService(
  { name: "users.restore", table: "users", arity: 1, logFields: ([id]) => ({ userId: id }) },
  async ({ logger, options }: Call<ServiceOptions>, id: string): Promise<PublicUser> => {
    const userId = validate(idSchema, id);
    const handle = options.tx ?? db;
    // Re-entering the partial unique indexes is what detects an address taken meanwhile, atomically.
    const [user] = await writing(() =>
      withMetrics("update", "users", () =>
        handle
          .update(users)
          .set({ deletedAt: null })
          .where(and(eq(users.id, userId), sql`${users.deletedAt} IS NOT NULL`))
          .returning(publicUserColumns),
      ),
    );
    if (!user) throw notFound(userId);
    logger.audit({ userId }, "user restored");
    return user;
  },
);

/**
 * Hard-deletes users soft-deleted more than `retentionMs` ago (their sessions, tokens and accounts go with
 * them by ON DELETE CASCADE), in batches; returns how many were deleted. Stops after `maxBatches` batches
 * (default 100 of 1000), so call again while it returns `batchSize * maxBatches`.
 * @throws DbError VALIDATION_FAILED for a negative retention or bad batch settings.
 * @example const purged = await purge({ retentionMs: 30 * 24 * 3600_000 });
 */
export const purge = defineService(
  { name: "users.purge", table: "users", arity: 1 },
  async ({ logger, options }: Call<ServiceOptions>, payload: PurgeUsersInput): Promise<number> => {
    const input = validate(purgeSchema, payload);
    const cutoff = new Date(now().getTime() - input.retentionMs);
    const handle = options.tx ?? db;
    // Small batches keep each cascade short; SKIP LOCKED lets two purgers (or a purger and a restore in
    // progress) pass each other. users_deleted_at_idx serves the range scan (`deleted_at < $cutoff` implies
    // the index predicate `deleted_at IS NOT NULL`).
    const total = await deleteInBatches(input.batchSize, input.maxBatches, async () => {
      const victims = handle
        .select({ id: users.id })
        .from(users)
        .where(lt(users.deletedAt, cutoff))
        .orderBy(asc(users.deletedAt))
        .limit(input.batchSize)
        .for("update", { skipLocked: true });
      const deleted = await withMetrics("delete", "users", () =>
        handle.delete(users).where(inArray(users.id, victims)).returning({ id: users.id }),
      );
      return deleted.length;
    });
    if (total > 0) logger.audit({ count: total, cutoff: cutoff.toISOString() }, "deleted users purged");
    return total;
  },
);

/**
 * Sets (or replaces) the password of an active user. Pass a PreparedPassword (preparePassword) to keep the
 * argon2 work out of a transaction; a plain string is checked against the common-password list and hashed here.
 * @throws DbError VALIDATION_FAILED (password not 8..1024 characters after NFKC), PASSWORD_TOO_WEAK, NOT_FOUND.
 * @example await setPassword({ id: user.id, password: await preparePassword({ password, email }) });
 */
export const setPassword = defineService(
  {
    name: "users.setPassword",
    table: "users",
    arity: 1,
    logFields: ([payload]) => ({ userId: payload?.id }),
  },
  async ({ logger, options }: Call<ServiceOptions>, payload: SetPasswordInput): Promise<PublicUser> => {
    const { id, password } = validate(setPasswordSchema, payload);
    const passwordHash = await hashOf(password);
    const handle = options.tx ?? db;
    const [user] = await withMetrics("update", "users", () =>
      handle
        .update(users)
        .set({ passwordHash })
        .where(and(eq(users.id, id), isNull(users.deletedAt)))
        .returning(publicUserColumns),
    );
    if (!user) throw notFound(id);
    logger.audit({ userId: id }, "password set");
    return user;
  },
);

/**
 * A column of the user's newest live sign-up registration (see register), as a correlated subquery.
 * one_time_tokens_user_id_idx finds the user's few token rows. `users.id` is spelled out: Drizzle renders a
 * column of a single-table select unqualified ("id"), which inside this subquery would mean t.id.
 */
function pendingRegistration<T>(column: "password_hash" | "profile", at: Date): SQL<T | null> {
  return sql<T | null>`(SELECT t.${sql.identifier(column)} FROM one_time_tokens t
    WHERE t.user_id = users.id AND t.purpose = 'email_verification'
      AND t.used_at IS NULL AND t.deleted_at IS NULL AND t.expires_at > ${at}::timestamptz
    ORDER BY t.id DESC LIMIT 1)`;
}

type Credentials = PublicUser & {
  passwordHash: string | null;
  pendingHash: string | null;
  pendingProfile: OneTimeTokensService.RegistrationProfile | null;
};

/** A live user by email or id with the password hashes sign-in and verification mails need. */
async function credentialsOf(
  where: SQL,
  at: Date,
  handle: DatabaseOrTransaction,
  lock = false,
): Promise<Credentials | undefined> {
  const query = handle
    .select({
      ...publicUserColumns,
      passwordHash: users.passwordHash,
      pendingHash: pendingRegistration<string>("password_hash", at),
      pendingProfile: pendingRegistration<OneTimeTokensService.RegistrationProfile>("profile", at),
    })
    .from(users)
    .where(and(where, isNull(users.deletedAt)))
    .limit(1);
  const [row] = await withMetrics("select", "users", () =>
    lock ? query.for("update", { of: users }) : query,
  );
  return row;
}

export interface VerifyPasswordOptions extends ServiceOptions {
  /**
   * An account whose email address is not verified grants nothing: the right password for it raises
   * EMAIL_NOT_VERIFIED instead of returning the user. Default false (for compatibility); the API sets it.
   */
  requireVerifiedEmail?: boolean | undefined;
}

/**
 * The password check of verifyPassword and signIn: the user, and the hash that matched as it is stored now
 * (after a rehash, the new one).
 */
async function checkPassword(
  payload: VerifyPasswordInput,
  logger: Logger,
  options: VerifyPasswordOptions,
): Promise<{ user: PublicUser; stored: string }> {
  const { email, password } = validate(verifyPasswordSchema, payload);
  const handle = options.tx ?? db;
  const row = await credentialsOf(eq(users.email, email), now(), handle);
  const invalid = () => new DbError("INVALID_CREDENTIALS", "Invalid email or password");
  const unverified = row !== undefined && row.emailVerifiedAt === null;
  const stored =
    unverified && options.requireVerifiedEmail ? (row.pendingHash ?? row.passwordHash) : row?.passwordHash;
  const candidate = stored ?? (unverified ? row?.pendingHash : null);
  if (!row || !candidate) {
    await verifyAgainstDummy(password);
    throw invalid();
  }
  const { passwordHash, pendingHash: _hash, pendingProfile: _profile, ...user } = row;
  if (!(await verifyPasswordHash(candidate, password))) throw invalid();
  if (unverified && (options.requireVerifiedEmail || candidate !== passwordHash)) {
    throw new DbError("EMAIL_NOT_VERIFIED", "The email address is not verified yet", { table: "users" });
  }
  if (!needsRehash(candidate)) return { user, stored: candidate };
  const rehashed = await hashPassword(password);
  // Replaces the hash only if it is still the one just verified: a password changed concurrently (setPassword,
  // a reset) must not be overwritten by the old password's new hash.
  const replaced = await withMetrics("update", "users", () =>
    handle
      .update(users)
      .set({ passwordHash: rehashed })
      .where(and(eq(users.id, user.id), eq(users.passwordHash, candidate)))
      .returning({ id: users.id }),
  );
  if (replaced.length === 0) return { user, stored: candidate };
  logger.audit({ userId: user.id }, "password rehashed with current parameters");
  return { user, stored: rehashed };
}

/**
 * Checks an email and password; returns the user on success. Unknown email, deleted user, user without a
 * password and wrong password all raise the same error after the same argon2 work. A hash weaker than the
 * current policy is replaced after a successful check. For an unverified address, the password checked is the
 * newest pending sign-up's (see register), else the account's own; when it matches, EMAIL_NOT_VERIFIED is
 * raised if `requireVerifiedEmail` is set or the match was a pending sign-up's (which is not a password yet).
 * To start a session, use signIn: it also makes sure the password did not change meanwhile.
 * @throws DbError INVALID_CREDENTIALS, EMAIL_NOT_VERIFIED, VALIDATION_FAILED (malformed email, empty password).
 * @example const user = await verifyPassword({ email: "ada@example.com", password: "correct horse" });
 */
export const verifyPassword = defineService(
  { name: "users.verifyPassword", table: "users", arity: 1 },
  async (
    { logger, options }: Call<VerifyPasswordOptions>,
    payload: VerifyPasswordInput,
  ): Promise<PublicUser> => {
    return (await checkPassword(payload, logger, options)).user;
  },
);

export interface SignInOptions extends VerifyPasswordOptions {
  /** The session to create (its userId is filled in). */
  session: Omit<SessionsService.CreateSessionInput, "userId">;
  /** Per-call session configuration (maxPerUser, lifetimes). */
  sessionConfig?: Partial<SessionsService.SessionConfig> | undefined;
}

/**
 * Password sign-in: checks the password (argon2, outside any transaction), then in one transaction locks the
 * user, makes sure the password (and, with requireVerifiedEmail, the verification) is still the one checked,
 * records the sign-in and creates the session. A reset or first proof of the address that commits while the
 * password is being checked therefore wins: the sign-in fails instead of leaving a session it would not end.
 * @throws DbError INVALID_CREDENTIALS, EMAIL_NOT_VERIFIED, VALIDATION_FAILED.
 * @example const { user, token } = await signIn({ email, password }, log, { session: { authMethod: "password" } });
 */
export const signIn = defineService(
  { name: "users.signIn", table: "users", arity: 1 },
  async (
    { logger, options }: Call<SignInOptions>,
    payload: VerifyPasswordInput,
  ): Promise<{ user: PublicUser; session: SessionsService.PublicSession; token: string }> => {
    const { user, stored } = await checkPassword(payload, logger, { ...options, tx: undefined });
    const at = now();
    return await transaction(
      async (tx) => {
        const [current] = await withMetrics("update", "users", () =>
          tx
            .update(users)
            .set({ lastSignInAt: at })
            .where(
              and(
                eq(users.id, user.id),
                isNull(users.deletedAt),
                eq(users.passwordHash, stored),
                options.requireVerifiedEmail ? sql`${users.emailVerifiedAt} IS NOT NULL` : undefined,
              ),
            )
            .returning(publicUserColumns),
        );
        if (!current) throw new DbError("INVALID_CREDENTIALS", "Invalid email or password");
        const created = await SessionsService.create({ ...options.session, userId: user.id }, logger, {
          tx,
          config: options.sessionConfig,
        });
        return { user: current, ...created };
      },
      { tx: options.tx },
    );
  },
  // The session to create is required: the options are not optional here.
) as (
  payload: VerifyPasswordInput,
  loggerOrOptions: Logger | SignInOptions,
  options?: SignInOptions,
) => Promise<{ user: PublicUser; session: SessionsService.PublicSession; token: string }>;

export interface PreparePasswordOptions extends ServiceOptions {
  /** Also look the password up in a breach corpus (Pwned Passwords range API); fails open. */
  breachCheck?: BreachCheckOptions | undefined;
}

/**
 * Checks a new password against the policy (8..1024 characters after NFKC, not one of the most common
 * passwords, not containing the email's local part, optionally not in a breach corpus) and hashes it with
 * argon2id, outside any transaction. Pass the result to register, create or setPassword.
 * @throws DbError VALIDATION_FAILED (length), PASSWORD_TOO_WEAK (details.password says why).
 * @example const password = await preparePassword({ password: body.password, email: body.email });
 */
export const preparePassword = defineService(
  { name: "users.preparePassword", table: "users", arity: 1 },
  async (
    { logger, options }: Call<PreparePasswordOptions>,
    payload: PreparePasswordInput,
  ): Promise<PreparedPassword> => {
    const { password, email } = validate(preparePasswordSchema, payload);
    await assertPasswordStrength(password, { email, breachCheck: options.breachCheck }, logger);
    return preparedFromHash(await hashPassword(password));
  },
);

export interface RegisterOptions extends ServiceOptions {
  /**
   * Put the password on a new account at once, so it can sign in before its address is verified (the API's
   * SIGN_IN_BEFORE_EMAIL_VERIFICATION=true). Default false: a new account has no password until its link is
   * used.
   */
  passwordBeforeVerification?: boolean | undefined;
}

export interface Registration {
  /**
   * created: a new, unverified account. unverified: the address has an unverified account, which is left as
   * it is. verified: the address belongs to a verified account (nothing was written; tell its owner).
   */
  outcome: "created" | "unverified" | "verified";
  user: PublicUser;
  /** The verification link to mail, which carries this registration's password and names; null for `verified`. */
  verification: { token: string; record: OneTimeTokenRecord } | null;
}

/**
 * A sign-up that cannot pre-hijack an account. The password and names ride on the verification link (not on
 * the user) and become the account's only when that link is used with that password; a newer sign-up for a
 * still unverified address issues a newer link (retiring the older), so only the newest registration can
 * complete. An address with a verified account is left untouched. All in one transaction; hash the password
 * beforehand (preparePassword).
 * @throws DbError VALIDATION_FAILED, NOT_FOUND (the account was deleted meanwhile; retry).
 * @example const { outcome, verification } = await register({ email, password: await preparePassword({ password, email }) });
 */
export const register = defineService(
  { name: "users.register", table: "users", arity: 1 },
  async ({ logger, options }: Call<RegisterOptions>, payload: RegisterInput): Promise<Registration> => {
    const input = validate(registerSchema, payload);
    const at = now();
    const result = await transaction(
      async (tx) => {
        // ON CONFLICT against the partial unique index: no read-then-insert race between two sign-ups.
        const [created] = await withMetrics("insert", "users", () =>
          tx
            .insert(users)
            .values({
              email: input.email,
              // Unproven names stay on the link unless the account is usable before its proof.
              firstName: options.passwordBeforeVerification ? (input.firstName ?? null) : null,
              lastName: options.passwordBeforeVerification ? (input.lastName ?? null) : null,
              passwordHash: options.passwordBeforeVerification ? preparedHash(input.password) : null,
              createdAt: at,
              updatedAt: at,
            })
            .onConflictDoNothing({ target: users.email, where: sql`deleted_at IS NULL` })
            .returning(publicUserColumns),
        );
        // FOR UPDATE: the user row is always locked before its token rows (as in useEmailLink), so a sign-up
        // and a link used at the same moment queue instead of deadlocking.
        const user =
          created ??
          (
            await withMetrics("select", "users", () =>
              tx
                .select(publicUserColumns)
                .from(users)
                .where(and(eq(users.email, input.email), isNull(users.deletedAt)))
                .for("update"),
            )
          )[0];
        if (!user) {
          throw new DbError("NOT_FOUND", "The account was deleted meanwhile; retry", { table: "users" });
        }
        if (!created && user.emailVerifiedAt !== null) {
          return { outcome: "verified" as const, user, verification: null };
        }
        const verification = await OneTimeTokensService.create(
          {
            userId: user.id,
            purpose: "email_verification",
            sentTo: input.email,
            password: input.password,
            profile: { firstName: input.firstName ?? null, lastName: input.lastName ?? null },
          },
          logger,
          { tx },
        );
        return { outcome: created ? ("created" as const) : ("unverified" as const), user, verification };
      },
      { tx: options.tx },
    );
    logger.audit({ userId: result.user.id, outcome: result.outcome }, "sign-up registered");
    return result;
  },
);

/**
 * Issues a fresh email verification link for an unverified account. Older links stay: a link that carries a
 * password retires none (or anyone able to trigger a resend could kill the owner's link). It confirms the same
 * password the account would sign in with: the newest pending sign-up's (with its names), else the account's
 * own. Returns null when there is no such live account, it has no email, or the address is verified already.
 * @throws DbError VALIDATION_FAILED.
 * @example const link = await sendVerification({ userId: user.id });
 */
export const sendVerification = defineService(
  { name: "users.sendVerification", table: "users", arity: 1 },
  async (
    { logger, options }: Call<ServiceOptions>,
    payload: { userId: string } | { email: string },
  ): Promise<{ token: string; record: OneTimeTokenRecord } | null> => {
    const target = validate(verificationTargetSchema, payload);
    const where = "userId" in target ? eq(users.id, target.userId) : eq(users.email, target.email);
    // The user row first, then the token rows, like register and useEmailLink.
    return await transaction(
      async (tx) => {
        const row = await credentialsOf(where, now(), tx, true);
        if (!row?.email || row.emailVerifiedAt !== null) return null;
        const carried = row.pendingHash ?? row.passwordHash;
        return await OneTimeTokensService.create(
          {
            userId: row.id,
            purpose: "email_verification",
            sentTo: row.email,
            ...(carried ? { password: preparedFromHash(carried) } : {}),
            ...(row.pendingProfile ? { profile: row.pendingProfile } : {}),
          },
          logger,
          { tx },
        );
      },
      { tx: options.tx },
    );
  },
);

export interface EmailLinkOptions extends ServiceOptions {
  /** Sign in: create this session (its userId filled in) in the same transaction, after the proof. */
  session?: Omit<SessionsService.CreateSessionInput, "userId"> | undefined;
  /** Per-call session configuration (maxPerUser, lifetimes). */
  sessionConfig?: Partial<SessionsService.SessionConfig> | undefined;
}

export interface EmailLinkResult {
  user: PublicUser;
  /** With `options.session`: the session the link signed in, and its token. */
  session?: { session: SessionsService.PublicSession; token: string };
  /** The address had never been proven before this link: whatever was set up before it has ended. */
  firstProof: boolean;
  revokedSessions: number;
  retiredTokens: number;
}

/**
 * Uses a mailed link (email verification, magic link or password reset) once, and records what it proves:
 * control of the address it was sent to, which must still be the user's address. In one transaction:
 *  - the first proof of an address ends everything set up on the account before it: every session, every
 *    other pending token, every linked provider account, the password (replaced by the one a sign-up's
 *    verification link carries, by the reset's new password, or removed for a magic link) and the names and
 *    avatar (replaced by the sign-up's names, or cleared). This is what defeats account pre-hijacking.
 *    `metadata` is application data and is kept: do not let users write it before their address is proven.
 *  - a sign-up's verification link completes only with the password that sign-up chose (`password`; each
 *    guess reserved first, LINK_MAX_ATTEMPTS in all): the mailbox owner clicking a link an attacker's later
 *    sign-up mailed them cannot adopt the attacker's password by mistake. Its names replace the account's.
 *  - a reset always sets `newPassword`, ends every session and retires every other token.
 *  - with `options.session`, last_sign_in_at is set and that session is created in the same transaction.
 * argon2 (checking `password`) runs before the transaction opens. Locks: the user row, then the token row,
 * the order every other writer of both follows.
 * @throws DbError TOKEN_INVALID (unknown, used, expired, wrong purpose, user gone, address changed since),
 *   INVALID_CREDENTIALS (not the password the link's sign-up chose), VALIDATION_FAILED (a reset without
 *   newPassword; a sign-up's link without password).
 * @example const { user, session } = await useEmailLink({ token, purpose: "magic_link" }, log, { session: { authMethod: "magic_link" } });
 */
export const useEmailLink = defineService(
  {
    name: "users.useEmailLink",
    table: "users",
    arity: 1,
    logFields: ([payload]) => ({ purpose: payload?.purpose }),
  },
  async (
    { logger, options }: Call<EmailLinkOptions>,
    payload: UseEmailLinkInput,
  ): Promise<EmailLinkResult> => {
    const input = validate(useEmailLinkSchema, payload);
    if ((input.purpose === "password_reset") !== (input.newPassword !== undefined)) {
      throw new DbError(
        "VALIDATION_FAILED",
        "Invalid input: newPassword: required for a reset, only for a reset",
        { details: { newPassword: "required for a reset, only for a reset" } },
      );
    }
    const at = now();
    const tokenInvalid = () => new DbError("TOKEN_INVALID", "The link is invalid or expired");
    // A look first, without using the link: whose it is (to lock that user before the token), and, for a
    // sign-up's link, the password to check before any transaction opens.
    const pending = await OneTimeTokensService.peekLink(input.token, input.purpose, logger);
    if (!pending?.record.userId) throw tokenInvalid();
    if (input.purpose === "email_verification" && pending.password) {
      if (input.password === undefined) {
        throw new DbError(
          "VALIDATION_FAILED",
          "Invalid input: password: enter the password chosen at sign-up",
          {
            details: { password: "enter the password chosen at sign-up" },
          },
        );
      }
      const candidate = validate(candidatePasswordSchema, input.password);
      // A guess is reserved before argon2 runs: a link allows LINK_MAX_ATTEMPTS guesses in all, parallel or not.
      if (!(await OneTimeTokensService.reserveLinkAttempt(input.token, input.purpose, logger))) {
        throw tokenInvalid();
      }
      if (!(await verifyPasswordHash(preparedHash(pending.password), candidate))) {
        throw new DbError("INVALID_CREDENTIALS", "Not the password of the sign-up this link confirms");
      }
    }
    const userId = pending.record.userId;
    const result = await transaction(
      async (tx) => {
        const [current] = await withMetrics("select", "users", () =>
          tx
            .select({ id: users.id, email: users.email, emailVerifiedAt: users.emailVerifiedAt })
            .from(users)
            .where(and(eq(users.id, userId), isNull(users.deletedAt)))
            .for("update"),
        );
        const used = await OneTimeTokensService.consumeLink(input.token, input.purpose, logger, { tx });
        // Used or retired meanwhile (then it is not the link that was peeked), or the address changed since
        // the link was sent: the link proves nothing about the user's address.
        if (!used || used.record.id !== pending.record.id) throw tokenInvalid();
        if (!current || current.email !== used.record.sentTo) throw tokenInvalid();
        const firstProof = current.emailVerifiedAt === null;
        const set: PgUpdateSetSource<typeof users> = { emailVerifiedAt: current.emailVerifiedAt ?? at };
        if (input.newPassword) set.passwordHash = preparedHash(input.newPassword);
        else if (firstProof && input.purpose === "email_verification" && used.password) {
          set.passwordHash = preparedHash(used.password);
        } else if (firstProof && input.purpose === "magic_link") set.passwordHash = null;
        if (firstProof && input.purpose === "email_verification" && used.profile) {
          set.firstName = used.profile.firstName ?? null;
          set.lastName = used.profile.lastName ?? null;
        } else if (firstProof && input.purpose !== "email_verification") {
          // Names and picture shown to people were set by whoever held the account before its proof.
          set.firstName = null;
          set.lastName = null;
          set.avatarUrl = null;
        }
        if (options.session) set.lastSignInAt = at;
        const [user] = await withMetrics("update", "users", () =>
          tx.update(users).set(set).where(eq(users.id, current.id)).returning(publicUserColumns),
        );
        if (!user) throw tokenInvalid();
        let revokedSessions = 0;
        let retiredTokens = 0;
        if (firstProof || input.purpose === "password_reset") {
          revokedSessions = await SessionsService.revokeAllForUser({ userId: user.id }, logger, { tx });
          retiredTokens = await OneTimeTokensService.invalidateForUser(user.id, {}, logger, { tx });
        }
        if (firstProof) {
          // Provider identities linked before the address was proven were linked by whoever held the account.
          await withMetrics("delete", "accounts", () =>
            tx.delete(accounts).where(eq(accounts.userId, user.id)),
          );
        }
        const session = options.session
          ? await SessionsService.create({ ...options.session, userId: user.id }, logger, {
              tx,
              config: options.sessionConfig,
            })
          : undefined;
        return { user, firstProof, revokedSessions, retiredTokens, ...(session ? { session } : {}) };
      },
      { tx: options.tx },
    );
    logger.audit(
      {
        userId: result.user.id,
        purpose: input.purpose,
        firstProof: result.firstProof,
        revokedSessions: result.revokedSessions,
        retiredTokens: result.retiredTokens,
      },
      result.firstProof ? "email address proven for the first time" : "email link used",
    );
    return result;
  },
);

/**
 * Whether a live user has a password (accounts made by a magic link or a provider have none), for deciding
 * how a sensitive action is confirmed.
 * @throws DbError VALIDATION_FAILED, NOT_FOUND.
 * @example if (await hasPassword(user.id)) await verifyPassword({ email, password });
 */
export const hasPassword = defineService(
  { name: "users.hasPassword", table: "users", arity: 1, logFields: ([id]) => ({ userId: id }) },
  async ({ options }: Call<ServiceOptions>, id: string): Promise<boolean> => {
    const userId = validate(idSchema, id);
    const [row] = await withMetrics("select", "users", () =>
      (options.tx ?? db)
        .select({ has: sql<boolean>`${users.passwordHash} IS NOT NULL` })
        .from(users)
        .where(and(eq(users.id, userId), isNull(users.deletedAt))),
    );
    if (!row) throw notFound(userId);
    return row.has;
  },
);
