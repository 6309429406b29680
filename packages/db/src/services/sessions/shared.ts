// Sessions, shared pieces: the row shape callers see, used by creation, validation and the lifecycle
// functions alike.
import { getTableColumns } from "drizzle-orm";
import { type Session, sessions } from "../../schema/sessions.ts";
import type { PublicUser } from "../common.ts";

// ---------------------------------------------------------------------------------------------------------
// Row shapes

/**
 * A session as returned to callers. token_hash is left out: it is a digest, not the token, but nothing
 * outside this module needs it and keeping it out of responses and logs costs nothing.
 */
export type PublicSession = Omit<Session, "tokenHash">;
/** The user behind a session: the password hash and the search vector are left out. */
export type SessionUser = PublicUser;

const { tokenHash: _tokenHash, ...columns } = getTableColumns(sessions);
/** The columns of a PublicSession: all but token_hash. */
export const publicSessionColumns = columns;
