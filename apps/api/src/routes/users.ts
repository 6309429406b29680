// /v1/users/me: the signed-in user's own profile, and their security events from the audit trail.
import { AuditService, onReplicaAs, RolesService, UsersService, withUser } from "@repo/db";
import { type Context, Hono } from "hono";
import { z } from "zod";
import { audited } from "../audit.ts";
import type { AppEnv } from "../context.ts";
import { ApiError } from "../errors.ts";
import type { Guards } from "../guards.ts";
import { clearSessionCookie, readJson, readQuery, singleParam } from "../http.ts";
import { auditEventSchema, documented, type RouteDoc, userSchema } from "../openapi.ts";
import { ownAuditEventView, userView } from "../views.ts";
import { confirmPassword, signedInRecently } from "./auth.ts";

const patchBody = z
  .strictObject({
    firstName: z.string().max(200).nullish(),
    lastName: z.string().max(200).nullish(),
    avatarUrl: z.string().max(2048).nullish(),
    metadata: z.record(z.string(), z.json()).optional(),
  })
  .refine((patch) => Object.values(patch).some((value) => value !== undefined), {
    message: "the patch changes nothing",
  });

const deleteBody = z.strictObject({ password: z.string().min(1).max(1024).optional() });

/**
 * A soft delete, by the user or an admin: the account's roles go first (a signed-in actor cannot remove the
 * last admin: LAST_ADMIN), each recorded, then the account and everything that hangs on it, all in one
 * transaction.
 */
export async function deleteAccount(c: Context<AppEnv>, userId: string): Promise<void> {
  const admin = c.get("admin");
  const actor = admin?.via === "key" ? null : c.get("user").id;
  await audited(
    c,
    async (tx, record) => {
      const roles = await RolesService.revokeAll({ userId, revokedBy: actor }, c.get("log"), { tx });
      await UsersService.softDelete(userId, c.get("log"), { tx });
      for (const role of roles) await record("role_revoked", { subject: userId, details: { role } });
      await record("user_deleted", { subject: userId });
    },
    // The user deleting their own account does it in their scope; an administrator, in the system's.
    admin ? {} : { userId },
  );
}

export function userRoutes({ requireSession }: Guards): Hono<AppEnv> {
  const users = new Hono<AppEnv>();
  users.use("/me", requireSession);
  users.use("/me/*", requireSession);

  const route = documented(users, "/v1/users");
  const userAnswer = { description: "The user", schema: z.object({ user: userSchema }) };

  route.get(
    "/me",
    { summary: "The signed-in user", tag: "users", access: "session", answers: { 200: userAnswer } },
    (c) => c.json({ user: userView(c.get("user")) }),
  );

  route.patch(
    "/me",
    {
      summary: "Change the profile",
      tag: "users",
      access: "session",
      body: patchBody,
      answers: { 200: userAnswer },
    },
    async (c) => {
      const patch = await readJson(c, patchBody);
      const id = c.get("user").id;
      const user = await withUser(id, (tx) => UsersService.update({ id, patch }, c.get("log"), { tx }));
      return c.json({ user: userView(user) });
    },
  );

  // Soft delete: the user's sessions, tokens and linked provider accounts end in the same transaction
  // (UsersService.softDelete). A stolen session alone must not be enough: the current password is required,
  // or for an account without one, a sign-in within the last ten minutes.
  const deleteDoc = {
    summary: "Delete the account",
    description:
      "A soft delete: sessions, links and linked providers end with it. Requires the current password (in the body), or for an account without one a sign-in within the last ten minutes.",
    tag: "users",
    access: "session",
    body: deleteBody,
    answers: { 204: { description: "Deleted" } },
    errors: ["REAUTHENTICATION_REQUIRED", "INVALID_CREDENTIALS", "RATE_LIMITED"],
  } satisfies RouteDoc;
  route.delete("/me", deleteDoc, async (c) => {
    const hasBody = (c.req.header("content-length") ?? "0") !== "0" || c.req.header("content-type");
    const body = hasBody ? await readJson(c, deleteBody) : {};
    if (await UsersService.hasPassword(c.get("user").id, c.get("log"))) {
      if (body.password === undefined) throw new ApiError("REAUTHENTICATION_REQUIRED");
      await confirmPassword(c, body.password);
    } else if (!signedInRecently(c)) {
      throw new ApiError("REAUTHENTICATION_REQUIRED");
    }
    await deleteAccount(c, c.get("user").id);
    clearSessionCookie(c);
    return c.body(null, 204);
  });

  const eventsQuery = z.strictObject({
    limit: singleParam(z.coerce.number().int().min(1).max(100)).optional(),
    cursor: singleParam(z.guid()).optional(),
  });
  route.get(
    "/me/security-events",
    {
      summary: "The signed-in user's security events",
      description:
        "Sign-ins (and failed ones aimed at the account), sign-outs, password and address changes, linked providers, administrators' actions on the account: newest first, from the audit trail. Pass nextCursor as cursor for older ones.",
      tag: "users",
      access: "session",
      query: eventsQuery,
      answers: {
        200: {
          description: "One page",
          schema: z.object({ events: z.array(auditEventSchema), nextCursor: z.string().nullable() }),
        },
      },
    },
    async (c) => {
      const query = readQuery(c, eventsQuery);
      const me = c.get("user").id;
      const page = await onReplicaAs(me, (tx) =>
        AuditService.list(
          { subjectUserId: me, limit: query.limit ?? 20, ...(query.cursor ? { before: query.cursor } : {}) },
          c.get("log"),
          { tx },
        ),
      );
      const viewer = { id: me, emailVerified: c.get("user").emailVerifiedAt !== null };
      return c.json({
        events: page.events.map((event) => ownAuditEventView(event, viewer)),
        nextCursor: page.nextCursor,
      });
    },
  );

  return users;
}
