// AES-256-GCM for secrets the data layer must be able to read back (OAuth provider tokens), and the key ring
// that encrypts them. Several keys can be configured at once: new values use the current key, older rows
// name the key that encrypted them (accounts.encryption_key_id) and stay readable after a rotation.
import { createCipheriv, createDecipheriv, createSecretKey, type KeyObject, randomBytes } from "node:crypto";
import { DbError } from "../errors.ts";

/** What `configureAccountEncryption` takes: keys by id (32 raw bytes, or their base64), and the current id. */
export interface AccountEncryptionConfig {
  keys: Record<string, Buffer | Uint8Array | string>;
  /** The key new values are encrypted with; must be one of `keys`. */
  currentKeyId: string;
}

/** One encrypted value, as stored: ciphertext, its 12-byte IV and 16-byte GCM tag, and the key's id. */
export interface EncryptedValue {
  keyId: string;
  ciphertext: Buffer;
  iv: Buffer;
  tag: Buffer;
}

const ALGORITHM = "aes-256-gcm";
const KEY_BYTES = 32;
const IV_BYTES = 12;
const TAG_BYTES = 16;
// Key ids are stored in every row and named in error messages, so they are short and harmless.
const KEY_ID = /^[A-Za-z0-9_.-]{1,64}$/;
// Standard or URL-safe base64, padding optional.
const BASE64 = /^[A-Za-z0-9+/_-]+={0,2}$/;

interface KeyRing {
  // KeyObjects never print their material (util.inspect shows only the type and size).
  keys: Map<string, KeyObject>;
  currentKeyId: string;
}

let ring: KeyRing | undefined;

function configError(message: string, details: Record<string, string>): DbError<"CONFIG_INVALID"> {
  return new DbError("CONFIG_INVALID", message, { details });
}

/** Decodes one key; the messages name the key id and what is wrong, never the key itself. */
function decodeKey(keyId: string, value: unknown): Buffer {
  let bytes: Buffer;
  if (typeof value === "string") {
    const trimmed = value.trim();
    if (!BASE64.test(trimmed)) {
      throw configError(`Encryption key "${keyId}" is not valid base64`, { [keyId]: "not base64" });
    }
    bytes = Buffer.from(trimmed.replaceAll("-", "+").replaceAll("_", "/"), "base64");
  } else if (value instanceof Uint8Array) {
    bytes = Buffer.from(value);
  } else {
    throw configError(`Encryption key "${keyId}" must be a Buffer or a base64 string`, {
      [keyId]: "wrong type",
    });
  }
  if (bytes.length !== KEY_BYTES) {
    throw configError(`Encryption key "${keyId}" must be exactly ${KEY_BYTES} bytes, got ${bytes.length}`, {
      [keyId]: `must be ${KEY_BYTES} bytes`,
    });
  }
  return bytes;
}

/**
 * Sets the key ring used for account tokens, replacing any previous one. Validates everything first, so a
 * bad configuration leaves the previous ring in place.
 * @throws DbError CONFIG_INVALID for a key that is not 32 bytes, a bad key id, or an unknown current id.
 * @example configureAccountEncryption({ keys: { k2: process.env.K2!, k1: oldKey }, currentKeyId: "k2" });
 */
export function configureAccountEncryption(config: AccountEncryptionConfig): void {
  const entries = Object.entries(config?.keys ?? {});
  if (entries.length === 0) throw configError("No account encryption key is configured", { keys: "empty" });
  const keys = new Map<string, KeyObject>();
  for (const [keyId, value] of entries) {
    if (!KEY_ID.test(keyId)) {
      throw configError("An encryption key id must be 1-64 characters of [A-Za-z0-9_.-]", {
        keys: "bad key id",
      });
    }
    keys.set(keyId, createSecretKey(decodeKey(keyId, value)));
  }
  if (typeof config.currentKeyId !== "string" || !keys.has(config.currentKeyId)) {
    throw configError("The current encryption key id is not one of the configured keys", {
      currentKeyId: "unknown key id",
    });
  }
  ring = { keys, currentKeyId: config.currentKeyId };
}

/**
 * Configures the key ring from `ACCOUNT_ENCRYPTION_KEYS` ("id1:base64,id2:base64") and
 * `ACCOUNT_ENCRYPTION_KEY_ID` (the current key; default the first listed). Returns the configured key ids.
 * @throws DbError CONFIG_INVALID when a variable is missing or malformed (the message never holds key material).
 * @example loadAccountEncryptionFromEnv(process.env); // at start-up, next to initializeDB()
 */
export function loadAccountEncryptionFromEnv(env: Record<string, string | undefined> = process.env): {
  keyIds: string[];
  currentKeyId: string;
} {
  const raw = env.ACCOUNT_ENCRYPTION_KEYS?.trim();
  if (!raw) {
    throw configError("ACCOUNT_ENCRYPTION_KEYS is required", { ACCOUNT_ENCRYPTION_KEYS: "missing" });
  }
  const keys: Record<string, string> = {};
  for (const [index, part] of raw.split(",").entries()) {
    const separator = part.indexOf(":");
    const keyId = separator > 0 ? part.slice(0, separator).trim() : "";
    const value = separator > 0 ? part.slice(separator + 1).trim() : "";
    if (!keyId || !value) {
      throw configError(`ACCOUNT_ENCRYPTION_KEYS entry ${index + 1} is not "id:base64key"`, {
        ACCOUNT_ENCRYPTION_KEYS: "expected id:base64key[,id:base64key...]",
      });
    }
    if (Object.hasOwn(keys, keyId)) {
      throw configError(`ACCOUNT_ENCRYPTION_KEYS lists the key id "${keyId}" twice`, {
        ACCOUNT_ENCRYPTION_KEYS: "duplicate key id",
      });
    }
    keys[keyId] = value;
  }
  const currentKeyId = env.ACCOUNT_ENCRYPTION_KEY_ID?.trim() || Object.keys(keys)[0] || "";
  configureAccountEncryption({ keys, currentKeyId });
  return { keyIds: Object.keys(keys), currentKeyId };
}

/**
 * Forgets the key ring (tests, shutdown); encrypting or decrypting then throws CONFIG_INVALID.
 * @example afterAll(() => resetAccountEncryption());
 */
export function resetAccountEncryption(): void {
  ring = undefined;
}

/**
 * True once a key ring is configured.
 * @example if (!isAccountEncryptionConfigured()) loadAccountEncryptionFromEnv();
 */
export function isAccountEncryptionConfigured(): boolean {
  return ring !== undefined;
}

function currentRing(): KeyRing {
  if (!ring) {
    throw new DbError(
      "CONFIG_INVALID",
      "Account encryption is not configured: call configureAccountEncryption() or loadAccountEncryptionFromEnv()",
    );
  }
  return ring;
}

/**
 * The id of the key new values are encrypted with.
 * @throws DbError CONFIG_INVALID when no key ring is configured.
 * @example logger.info({ keyId: currentEncryptionKeyId() }, "account encryption ready");
 */
export function currentEncryptionKeyId(): string {
  return currentRing().currentKeyId;
}

/**
 * The additional authenticated data binding a ciphertext to its row and column: decrypting it anywhere else
 * (another account, the other token column) fails authentication. NUL separators keep the parts unambiguous;
 * callers must reject NUL inside the parts.
 * @example tokenAad("google", "1234", "refresh_token");
 */
export function tokenAad(provider: string, providerAccountId: string, column: string): Buffer {
  return Buffer.from(`accounts.v1\0${provider}\0${providerAccountId}\0${column}`, "utf8");
}

/**
 * Encrypts `plaintext` with the current key (or `keyId`) and a fresh random 96-bit IV.
 * @throws DbError CONFIG_INVALID when not configured; UNKNOWN_ENCRYPTION_KEY for an unknown `keyId`.
 * @example const value = encrypt("ya29.token", tokenAad("google", "1234", "access_token"));
 */
export function encrypt(plaintext: string, aad: Buffer, keyId?: string): EncryptedValue {
  const keys = currentRing();
  const id = keyId ?? keys.currentKeyId;
  const key = keys.keys.get(id);
  if (!key) throw new DbError("UNKNOWN_ENCRYPTION_KEY", `No encryption key "${id}" is configured`);
  // A GCM IV must never repeat under one key: 12 random bytes per value (safe far beyond 2^32 values/key).
  const iv = randomBytes(IV_BYTES);
  const cipher = createCipheriv(ALGORITHM, key, iv, { authTagLength: TAG_BYTES });
  cipher.setAAD(aad);
  const ciphertext = Buffer.concat([cipher.update(plaintext, "utf8"), cipher.final()]);
  return { keyId: id, ciphertext, iv, tag: cipher.getAuthTag() };
}

/**
 * Decrypts and authenticates one value. Anything that does not authenticate (tampered ciphertext, IV or tag,
 * a value moved from another row or column) fails: garbage is never returned.
 * @throws DbError DECRYPTION_FAILED, UNKNOWN_ENCRYPTION_KEY (key id not configured), CONFIG_INVALID.
 * @example const token = decrypt(value, tokenAad("google", "1234", "access_token"));
 */
export function decrypt(value: EncryptedValue, aad: Buffer): string {
  const key = currentRing().keys.get(value.keyId);
  if (!key) {
    throw new DbError("UNKNOWN_ENCRYPTION_KEY", `No encryption key "${value.keyId}" is configured`);
  }
  if (value.iv.length !== IV_BYTES || value.tag.length !== TAG_BYTES) {
    throw new DbError("DECRYPTION_FAILED", "The encrypted value is malformed");
  }
  try {
    const decipher = createDecipheriv(ALGORITHM, key, value.iv, { authTagLength: TAG_BYTES });
    decipher.setAAD(aad);
    decipher.setAuthTag(value.tag);
    return Buffer.concat([decipher.update(value.ciphertext), decipher.final()]).toString("utf8");
  } catch (error) {
    throw new DbError("DECRYPTION_FAILED", "The encrypted value failed authentication", { cause: error });
  }
}
