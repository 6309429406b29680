// UsersService records: creating, finding, listing, searching, updating, soft-deleting, restoring and
// purging users. Callers never see password hashes: every function returns `PublicUser`.
import { and, asc, desc, eq, inArray, isNull, lt, sql } from "drizzle-orm";
import type { PgUpdateSetSource } from "drizzle-orm/pg-core";
import { now } from "../../clock.ts";
import { type DatabaseOrTransaction, transaction } from "../../connection.ts";
import { DbError, isDbError } from "../../errors.ts";
import { withMetrics } from "../../metrics.ts";
import { accounts, userRoles, users } from "../../schema/index.ts";
import {
  deleteInBatches,
  notFound,
  type PublicUser,
  publicUserColumns,
  type ReadOptions,
  type ServiceOptions,
  validate,
} from "../common.ts";
import { type Call, defineService } from "../define.ts";
import * as OneTimeTokensService from "../one-time-tokens.ts";
import { sessionsChanged } from "../sessions/feed.ts";
import * as SessionsService from "../sessions.ts";
import { encodeCursor, listQuery } from "./list-query.ts";
import { findOneBy } from "./lookups.ts";
import {
  type CreateUserInput,
  createSchema,
  emailSchema,
  explainListSchema,
  idSchema,
  type ListUsersInput,
  listSchema,
  type PurgeUsersInput,
  phoneSchema,
  purgeSchema,
  type SearchUsersInput,
  searchSchema,
  type UpdateUserInput,
  type UserPage,
  updateSchema,
} from "./schemas.ts";
import { hashOf } from "./shared.ts";

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

// ---------------------------------------------------------------------------------------------------------
// Service functions

/**
 * Creates a user from an email and/or a phone number, hashing the password if one is given.
 * @throws DbError VALIDATION_FAILED, EMAIL_TAKEN, PHONE_TAKEN.
 * @example const user = await create({ email: "Ada@Example.com", password: "correct horse" });
 */
export const create = defineService(
  { name: "users.create", table: "users", arity: 1 },
  async ({ logger, handle }: Call<ServiceOptions>, payload: CreateUserInput): Promise<PublicUser> => {
    const { password, ...input } = validate(createSchema, payload);
    const passwordHash = password === undefined ? null : await hashOf(password, input.email);
    const at = now();
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
    const { analyze, ...input } = validate(explainListSchema, payload);
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
  async ({ handle }: Call<ServiceOptions>, payload: SearchUsersInput): Promise<PublicUser[]> => {
    const input = validate(searchSchema, payload);
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
  async (
    { logger, options, handle }: Call<ServiceOptions>,
    payload: UpdateUserInput,
  ): Promise<PublicUser> => {
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
      if (!user) throw notFound("users");
      return user;
    };
    let retiredTokens = 0;
    const user =
      patch.email === undefined
        ? await apply(handle)
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
              if (!before) throw notFound("users");
              const updated = await apply(tx);
              if (before.email !== updated.email) {
                retiredTokens = await OneTimeTokensService.invalidateForUser(id, {}, logger, { tx });
              }
              return updated;
            },
            { tx: options.tx },
          );
    // This process's cached session checks answer with the user: forgotten now, so the caller's next check
    // shows the change (other processes hear of it when it commits).
    sessionsChanged(undefined, id);
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
        if (!deleted) throw notFound("users");
        // The same statements the sessions and tokens services use, joined to this transaction.
        const revoked = await SessionsService.revokeAllForUser({ userId }, logger, { tx });
        const invalidated = await OneTimeTokensService.invalidateForUser(userId, {}, logger, { tx });
        // Linked OAuth identities go with the user, so the same provider account can sign up again.
        const unlinked = await withMetrics("delete", "accounts", () =>
          tx.delete(accounts).where(eq(accounts.userId, userId)).returning({ id: accounts.id }),
        );
        // So do administration roles: a restored user does not come back an admin. (Callers that must keep
        // an admin, like the API, revoke the roles first with RolesService.revokeAll under its checks.)
        await withMetrics("delete", "user_roles", () =>
          tx.delete(userRoles).where(eq(userRoles.userId, userId)),
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
    sessionsChanged(undefined, userId);
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
  async ({ logger, handle }: Call<ServiceOptions>, id: string): Promise<PublicUser> => {
    const userId = validate(idSchema, id);
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
    if (!user) throw notFound("users");
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
  async ({ logger, handle }: Call<ServiceOptions>, payload: PurgeUsersInput): Promise<number> => {
    const input = validate(purgeSchema, payload);
    const cutoff = new Date(now().getTime() - input.retentionMs);
    // Small batches keep each cascade short; SKIP LOCKED lets two purgers (or a purger and a restore in
    // progress) pass each other. users_deleted_at_idx serves the range scan (`deleted_at < $cutoff` implies
    // the index predicate `deleted_at IS NOT NULL`).
    const cleanup = {
      table: "users",
      ...input,
      logger,
      message: "deleted users purged",
      fields: { cutoff: cutoff.toISOString() },
    };
    return await deleteInBatches(cleanup, async () => {
      const victims = handle
        .select({ id: users.id })
        .from(users)
        .where(lt(users.deletedAt, cutoff))
        .orderBy(asc(users.deletedAt))
        .limit(input.batchSize)
        .for("update", { skipLocked: true });
      const deleted = await handle
        .delete(users)
        .where(inArray(users.id, victims))
        .returning({ id: users.id });
      return deleted.length;
    });
  },
);
