// Input schemas of the accounts service (what each function validates its payload with).
import { z } from "zod";
import { idSchema, noNul } from "../common.ts";

// ---------------------------------------------------------------------------------------------------------
// Input

export const uuid = idSchema;
/** Provider ids are short lower-case identifiers: google, github, microsoft-entra, ... */
const provider = z.string().regex(/^[a-z0-9][a-z0-9_.-]{0,63}$/, "must be a short lower-case identifier");
// NUL is refused because it separates the parts of the additional authenticated data (and text rejects it).
const providerAccountId = z.string().min(1).max(255).refine(noNul, "must not contain NUL");
const providerToken = z.string().min(1).max(16_384).refine(noNul, "must not contain NUL");

export const linkInput = z.strictObject({
  userId: uuid,
  provider,
  providerAccountId,
  scope: z.string().max(4096).refine(noNul, "must not contain NUL").nullish(),
  accessToken: providerToken.nullish(),
  accessTokenExpiresAt: z.date().nullish(),
  refreshToken: providerToken.nullish(),
  refreshTokenExpiresAt: z.date().nullish(),
});
/**
 * What link() takes. On a relink, a field left `undefined` keeps its stored value and `null` clears it
 * (providers often send no new refresh token on re-consent: the stored one survives). A token's expiry
 * follows its token: sending a new token without an expiry clears the old expiry.
 */
export type LinkAccountInput = z.input<typeof linkInput>;

/** A provider identity as the API read it from a validated ID token (or a provider's user API). */
export const providerIdentityInput = z.strictObject({
  provider,
  providerAccountId,
  /** The address the provider gave; it counts only with emailVerified. */
  email: z.string().max(1024).nullish(),
  emailVerified: z.boolean().default(false),
  firstName: z.string().trim().max(200).refine(noNul, "must not contain NUL").nullish(),
  lastName: z.string().trim().max(200).refine(noNul, "must not contain NUL").nullish(),
  avatarUrl: z
    .url({ protocol: /^https?$/ })
    .max(2048)
    .nullish(),
  scope: linkInput.shape.scope,
  accessToken: providerToken.nullish(),
  accessTokenExpiresAt: z.date().nullish(),
  refreshToken: providerToken.nullish(),
  refreshTokenExpiresAt: z.date().nullish(),
});
export type ProviderIdentityInput = z.input<typeof providerIdentityInput>;

export const unlinkInput = z.strictObject({
  accountId: uuid,
  userId: uuid.optional(),
  /** With userId: refuse (LAST_SIGN_IN_METHOD) when it is the user's last way to sign in. */
  keepSignInMethod: z.boolean().optional(),
});
export const findInput = z.strictObject({ provider, providerAccountId });
export const reencryptInput = z.strictObject({
  batchSize: z.number().int().min(1).max(10_000).default(100),
  maxBatches: z.number().int().min(1).max(100_000).default(10_000),
});

/** What link() has after validation. */
export type LinkValues = z.output<typeof linkInput>;
