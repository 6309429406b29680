// The list query planner of UsersService: the statement `list` (and `explainList`) runs for a filter, and
// the cursors of its pages.
import { type SQL, sql } from "drizzle-orm";
import type { z } from "zod";
import { DbError } from "../../errors.ts";
import { users } from "../../schema/index.ts";
import { defineStatement, param, type Statement, selectColumns } from "../../statements.ts";
import { type PublicUser, publicUserColumns, type ReadOptions } from "../common.ts";
import type { listSchema } from "./schemas.ts";

export function encodeCursor(id: string): string {
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
export function listQuery(input: ListInput, options: ReadOptions) {
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
