// The limits and input schemas of UsersService, and the input types derived from them.
import { parsePhoneNumberFromString } from "libphonenumber-js";
import { z } from "zod";
import {
  candidatePasswordSchema,
  isPreparedPassword,
  type PreparedPassword,
  passwordSchema,
} from "../../crypto/passwords.ts";
import { exceedsJsonDepth } from "../../json-depth.ts";
import { idSchema, noNul, type PublicUser } from "../common.ts";

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

export const emailSchema = z
  .string()
  .max(EMAIL_MAX_LENGTH * 2)
  .trim()
  .toLowerCase()
  .pipe(z.email().max(EMAIL_MAX_LENGTH));

/** E.164 through libphonenumber-js; a leading + is required because we never guess a country. */
export const phoneSchema = z
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

export { idSchema };

/** A password made by preparePassword (checked and hashed already). */
const preparedSchema = z.custom<PreparedPassword>(isPreparedPassword, "must be a password string");
/** A new password: a string (checked and hashed by the call) or a PreparedPassword (hashed beforehand). */
const newPasswordSchema = z.union([preparedSchema, passwordSchema]);

export const createSchema = z
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

export const updateSchema = z.strictObject({ id: idSchema, patch: patchSchema });

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

export const listSchema = z.strictObject({
  ids: patternList((pattern) => pattern.toLowerCase()).optional(),
  emails: patternList((pattern) => pattern.toLowerCase()).optional(),
  phoneNumbers: patternList().optional(),
  limit: z.number().int().min(1).max(LIST_MAX_LIMIT).default(LIST_DEFAULT_LIMIT),
  cursor: z.string().max(128).nullish(),
  includeDeleted: z.boolean().optional(),
});

/** explainList's payload: a list payload plus whether to run it (EXPLAIN ANALYZE). */
export const explainListSchema = listSchema.extend({ analyze: z.boolean().optional() });

export const searchSchema = z.strictObject({
  query: z.string().trim().min(1).max(256).refine(noNul, "must not contain NUL"),
  limit: z.number().int().min(1).max(SEARCH_MAX_LIMIT).default(SEARCH_DEFAULT_LIMIT),
  prefix: z.boolean().default(false),
});

export const purgeSchema = z.strictObject({
  retentionMs: z.number().int().min(0),
  batchSize: z.number().int().min(1).max(10_000).default(PURGE_DEFAULT_BATCH_SIZE),
  maxBatches: z.number().int().min(1).max(10_000).default(PURGE_DEFAULT_MAX_BATCHES),
});

export const setPasswordSchema = z.strictObject({ id: idSchema, password: newPasswordSchema });
export const verifyPasswordSchema = z.strictObject({ email: emailSchema, password: candidatePasswordSchema });
export const preparePasswordSchema = z.strictObject({
  password: passwordSchema,
  email: z.string().max(1024).nullish(),
});
export const registerSchema = z.strictObject({
  email: emailSchema,
  password: preparedSchema,
  firstName: nameSchema.nullish(),
  lastName: nameSchema.nullish(),
});
export const verificationTargetSchema = z.union([
  z.strictObject({ userId: idSchema }),
  z.strictObject({ email: emailSchema }),
]);
const linkPurposeSchema = z.enum(["email_verification", "magic_link", "password_reset"]);
export const useEmailLinkSchema = z.strictObject({
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
