// /v1/admin: user administration and the audit trail, for the admin key (Authorization: Bearer
// ADMIN_API_KEY, when one is configured) or a signed-in user holding a role: `admin` may do everything,
// `support` may only read (GET). Every use of the key is recorded in the audit trail (admin_key_used), and
// every change with the actor who made it.
import {
  AUDIT_ACTIONS,
  AuditService,
  onReplica,
  RolesService,
  SessionsService,
  UsersService,
} from "@repo/db";
import { Hono, type MiddlewareHandler } from "hono";
import { z } from "zod";
import { audited, recordLater } from "../audit.ts";
import type { AppEnv } from "../context.ts";
import { ApiError } from "../errors.ts";
import type { Guards } from "../guards.ts";
import { bearerMatches, readQuery, singleParam } from "../http.ts";
import { adminUserSchema, auditEventSchema, documented, roleSchema } from "../openapi.ts";
import { auditEventView, userView } from "../views.ts";
import { deleteAccount } from "./users.ts";

const READS = new Set(["GET", "HEAD"]);

/**
 * The admin key, or a session whose user holds `admin` (or `support`, for reads). No credentials or a dead
 * session: 401; a live session without the role: 403.
 */
function adminAccess(requireSession: MiddlewareHandler<AppEnv>): MiddlewareHandler<AppEnv> {
  return async (c, next) => {
    const key = c.get("deps").config.ADMIN_API_KEY;
    if (key && bearerMatches(c, key)) {
      c.set("admin", { via: "key" });
      recordLater(c, "admin_key_used", { details: { method: c.req.method, path: c.req.path.slice(0, 256) } });
      await next();
      return;
    }
    await requireSession(c, async () => {
      const roles = await RolesService.rolesOf(c.get("user").id, c.get("log"));
      const allowed = roles.includes("admin") || (roles.includes("support") && READS.has(c.req.method));
      if (!allowed) throw new ApiError("FORBIDDEN");
      c.set("admin", { via: "role", roles });
      await next();
    });
  };
}

/** The acting admin user's id; null for the admin key. */
function actingUser(c: Parameters<MiddlewareHandler<AppEnv>>[0]): string | null {
  return c.get("admin")?.via === "role" ? c.get("user").id : null;
}

/** `*` is the wildcard; LIKE's own %, _ and \ are taken literally. */
const pattern = (value: string) => value.replace(/[\\%_]/g, (ch) => `\\${ch}`).replace(/\*/g, "%");

const listQuery = z.strictObject({
  email: z.array(z.string().min(1).max(318)).max(100).optional(),
  id: z.array(z.string().min(1).max(64)).max(100).optional(),
  phone: z.array(z.string().min(1).max(64)).max(100).optional(),
  limit: singleParam(z.coerce.number().int().min(1).max(1000)).optional(),
  cursor: singleParam(z.string().max(128)).optional(),
  includeDeleted: singleParam(z.enum(["true", "false"])).optional(),
});

const idParam = z.guid();

function parseUserId(raw: string): string {
  const parsed = idParam.safeParse(raw);
  if (!parsed.success) throw new ApiError("NOT_FOUND");
  return parsed.data.toLowerCase();
}

const auditQuery = z.strictObject({
  userId: singleParam(z.guid()).optional(),
  action: z.array(z.enum(AUDIT_ACTIONS)).max(AUDIT_ACTIONS.length).optional(),
  from: singleParam(z.iso.datetime({ offset: true })).optional(),
  to: singleParam(z.iso.datetime({ offset: true })).optional(),
  limit: singleParam(z.coerce.number().int().min(1).max(1000)).optional(),
  cursor: singleParam(z.guid()).optional(),
});

/** How many events an NDJSON export reads per query. */
const EXPORT_BATCH = 1000;

export function adminRoutes({ requireSession }: Guards): Hono<AppEnv> {
  const admin = new Hono<AppEnv>();
  admin.use("*", adminAccess(requireSession));
  const route = documented(admin, "/v1/admin");
  const userId = { id: "The user's id" };

  route.get(
    "/users",
    {
      summary: "List users",
      description:
        "Filters are lists (repeat the parameter); `*` is the wildcard. Pages in creation order; pass nextCursor as cursor for the next one.",
      tag: "admin",
      access: "admin",
      query: listQuery,
      answers: {
        200: {
          description: "One page",
          schema: z.object({ users: z.array(adminUserSchema), nextCursor: z.string().nullable() }),
        },
      },
    },
    async (c) => {
      const query = readQuery(c, listQuery);
      // Lists may lag a moment: on a replica when there are any (DATABASE_REPLICA_URLS).
      const page = await onReplica((tx) =>
        UsersService.list(
          {
            ...(query.email ? { emails: query.email.map(pattern) } : {}),
            ...(query.id ? { ids: query.id.map(pattern) } : {}),
            ...(query.phone ? { phoneNumbers: query.phone.map(pattern) } : {}),
            ...(query.limit === undefined ? {} : { limit: query.limit }),
            ...(query.cursor === undefined ? {} : { cursor: query.cursor }),
            includeDeleted: query.includeDeleted === "true",
          },
          c.get("log"),
          { tx },
        ),
      );
      return c.json({
        users: page.users.map((user) => ({ ...userView(user), deletedAt: user.deletedAt })),
        nextCursor: page.nextCursor,
      });
    },
  );

  route.get(
    "/users/:id",
    {
      summary: "One user, with their roles",
      tag: "admin",
      access: "admin",
      params: userId,
      answers: {
        200: {
          description: "The user (deleted ones too)",
          schema: z.object({ user: adminUserSchema, roles: z.array(roleSchema) }),
        },
      },
    },
    async (c) => {
      const id = parseUserId(c.req.param("id") ?? "");
      const user = await UsersService.findById(id, c.get("log"), { includeDeleted: true });
      if (!user) throw new ApiError("NOT_FOUND");
      const roles = await RolesService.rolesOf(id, c.get("log"));
      return c.json({ user: { ...userView(user), deletedAt: user.deletedAt }, roles });
    },
  );

  route.post(
    "/users/:id/sessions/revoke",
    {
      summary: "Sign a user out everywhere",
      tag: "admin",
      access: "admin",
      params: userId,
      answers: {
        200: {
          description: "How many sessions were revoked",
          schema: z.object({ revoked: z.number().int() }),
        },
      },
    },
    async (c) => {
      const id = parseUserId(c.req.param("id") ?? "");
      const user = await UsersService.findById(id, c.get("log"), { includeDeleted: true });
      if (!user) throw new ApiError("NOT_FOUND");
      const revoked = await audited(c, async (tx, record) => {
        const count = await SessionsService.revokeAllForUser({ userId: id }, c.get("log"), { tx });
        // Nothing ended, nothing to record (or every repeat would add a row).
        if (count > 0) await record("sessions_revoked", { subject: id, details: { revoked: count } });
        return count;
      });
      return c.json({ revoked });
    },
  );

  route.delete(
    "/users/:id",
    {
      summary: "Delete a user (soft)",
      description:
        "Their sessions, links, linked providers and roles end with it. A signed-in admin cannot delete the last admin (409 LAST_ADMIN).",
      errors: ["LAST_ADMIN"],
      tag: "admin",
      access: "admin",
      params: userId,
      answers: { 204: { description: "Deleted" } },
    },
    async (c) => {
      await deleteAccount(c, parseUserId(c.req.param("id") ?? ""));
      return c.body(null, 204);
    },
  );

  route.post(
    "/users/:id/restore",
    {
      summary: "Restore a soft-deleted user",
      description:
        "The user comes back without sessions, links, linked providers or roles (those ended with the delete). 409 when their address or phone number was taken meanwhile.",
      tag: "admin",
      access: "admin",
      params: userId,
      answers: { 200: { description: "The restored user", schema: z.object({ user: adminUserSchema }) } },
      errors: ["EMAIL_TAKEN", "PHONE_TAKEN"],
    },
    async (c) => {
      const id = parseUserId(c.req.param("id") ?? "");
      const user = await audited(c, async (tx, record) => {
        const restored = await UsersService.restore(id, c.get("log"), { tx });
        await record("user_restored", { subject: id });
        return restored;
      });
      return c.json({ user: { ...userView(user), deletedAt: user.deletedAt } });
    },
  );

  const roleParams = { id: "The user's id", role: "admin or support" };
  const rolesAnswer = {
    description: "The user's roles now",
    schema: z.object({ roles: z.array(roleSchema) }),
  };
  const parseRole = (raw: string | undefined) => {
    const parsed = roleSchema.safeParse(raw);
    if (!parsed.success) throw new ApiError("NOT_FOUND");
    return parsed.data;
  };

  route.put(
    "/users/:id/roles/:role",
    {
      summary: "Grant a role",
      description: "Idempotent: granting a role the user holds changes nothing and records nothing.",
      tag: "admin",
      access: "admin",
      params: roleParams,
      answers: { 200: rolesAnswer },
    },
    async (c) => {
      const id = parseUserId(c.req.param("id") ?? "");
      const role = parseRole(c.req.param("role"));
      const roles = await audited(c, async (tx, record) => {
        const granted = await RolesService.grant(
          { userId: id, role, grantedBy: actingUser(c) },
          c.get("log"),
          {
            tx,
          },
        );
        if (granted) await record("role_granted", { subject: id, details: { role } });
        return await RolesService.rolesOf(id, c.get("log"), { tx });
      });
      return c.json({ roles });
    },
  );

  route.delete(
    "/users/:id/roles/:role",
    {
      summary: "Revoke a role",
      description:
        "Idempotent. A signed-in admin cannot leave the API without an admin: revoking the last admin's role is 409 LAST_ADMIN (the admin key can).",
      tag: "admin",
      access: "admin",
      params: roleParams,
      answers: { 200: rolesAnswer },
      errors: ["LAST_ADMIN"],
    },
    async (c) => {
      const id = parseUserId(c.req.param("id") ?? "");
      const role = parseRole(c.req.param("role"));
      const roles = await audited(c, async (tx, record) => {
        const revoked = await RolesService.revoke(
          { userId: id, role, revokedBy: actingUser(c) },
          c.get("log"),
          { tx },
        );
        if (revoked) await record("role_revoked", { subject: id, details: { role } });
        return await RolesService.rolesOf(id, c.get("log"), { tx });
      });
      return c.json({ roles });
    },
  );

  route.get(
    "/audit",
    {
      summary: "The audit trail",
      description:
        "Newest first. `userId` matches events about the user or done by them; `action` repeats; `from`/`to` bound the time. Pages by `cursor` (the last event's seq, as nextCursor). With `Accept: application/x-ndjson` the answer streams every matching event (one JSON object per line) instead of a page.",
      tag: "admin",
      access: "admin",
      query: auditQuery,
      answers: {
        200: {
          description: "One page (or, for application/x-ndjson, every matching event)",
          schema: z.object({ events: z.array(auditEventSchema), nextCursor: z.string().nullable() }),
        },
      },
    },
    async (c) => {
      const query = readQuery(c, auditQuery);
      const filter = {
        ...(query.userId ? { userId: query.userId } : {}),
        ...(query.action ? { actions: query.action } : {}),
        ...(query.from ? { from: new Date(query.from) } : {}),
        ...(query.to ? { to: new Date(query.to) } : {}),
      };
      const log = c.get("log");
      if (wantsNdjson(c.req.header("accept"))) {
        // The first batch is read before the answer starts, so a database failure is a proper error answer.
        let page = await onReplica((tx) =>
          AuditService.list(
            { ...filter, limit: EXPORT_BATCH, ...(query.cursor ? { before: query.cursor } : {}) },
            log,
            { tx },
          ),
        );
        const encoder = new TextEncoder();
        const body = new ReadableStream<Uint8Array>({
          async pull(controller) {
            const lines = page.events.map((event) => `${JSON.stringify(auditEventView(event))}\n`).join("");
            if (lines) controller.enqueue(encoder.encode(lines));
            if (page.nextCursor === null) {
              controller.close();
              return;
            }
            try {
              const before = page.nextCursor;
              page = await onReplica((tx) =>
                AuditService.list({ ...filter, limit: EXPORT_BATCH, before }, log, { tx }),
              );
            } catch (error) {
              // The headers are sent: the export stops short (every line sent is whole) and the client sees it cut.
              log.error({ code: (error as { code?: string }).code ?? "UNKNOWN" }, "audit export failed");
              controller.error(error);
            }
          },
        });
        c.header("Cache-Control", "no-store");
        return c.body(body, 200, { "Content-Type": "application/x-ndjson; charset=utf-8" });
      }
      const page = await onReplica((tx) =>
        AuditService.list(
          {
            ...filter,
            ...(query.limit ? { limit: query.limit } : {}),
            ...(query.cursor ? { before: query.cursor } : {}),
          },
          log,
          { tx },
        ),
      );
      return c.json({
        events: page.events.map((event) => auditEventView(event)),
        nextCursor: page.nextCursor,
      });
    },
  );

  return admin;
}

/** Whether the client asked for NDJSON first (`Accept: application/x-ndjson`, before any other type). */
function wantsNdjson(accept: string | undefined): boolean {
  const first = (accept ?? "").split(",")[0]?.split(";")[0]?.trim().toLowerCase();
  return first === "application/x-ndjson";
}
