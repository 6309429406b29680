// Helpers of UsersService that both the user records and the credentials functions use.
import { passwordWeakness } from "../../crypto/password-policy.ts";
import { hashPassword, type PreparedPassword, preparedHash } from "../../crypto/passwords.ts";
import { DbError } from "../../errors.ts";

/**
 * The PHC string a new password is stored as: a PreparedPassword's own hash, or a string checked against the
 * common-password list (and the email's local part, when known) and hashed here.
 */
export async function hashOf(password: string | PreparedPassword, email?: string | null): Promise<string> {
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
