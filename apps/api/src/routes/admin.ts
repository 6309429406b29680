// /v1/admin: user administration behind ADMIN_API_KEY (Authorization: Bearer <key>). Without a key
// configured the routes do not exist (404).
import { SessionsService, UsersService } from "@repo/db";
import { Hono, type MiddlewareHandler } from "hono";
import { z } from "zod";
import type { AppEnv } from "../context.ts";
import { ApiError } from "../errors.ts";
import { bearerMatches, readQuery, singleParam } from "../http.ts";
import { adminUserSchema, documented } from "../openapi.ts";
import { userView } from "../views.ts";

const adminKey: MiddlewareHandler<AppEnv> = async (c, next) => {
  const expected = c.get("deps").config.ADMIN_API_KEY;
  if (!expected) throw new ApiError("NOT_FOUND");
  if (!bearerMatches(c, expected)) throw new ApiError("UNAUTHENTICATED");
  await next();
};

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

export function adminRoutes(): Hono<AppEnv> {
  const admin = new Hono<AppEnv>();
  admin.use("*", adminKey);
  const route = documented(admin, "/v1/admin");
  const userAnswer = {
    description: "The user (deleted ones too)",
    schema: z.object({ user: adminUserSchema }),
  };
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
      const page = await UsersService.list(
        {
          ...(query.email ? { emails: query.email.map(pattern) } : {}),
          ...(query.id ? { ids: query.id.map(pattern) } : {}),
          ...(query.phone ? { phoneNumbers: query.phone.map(pattern) } : {}),
          ...(query.limit === undefined ? {} : { limit: query.limit }),
          ...(query.cursor === undefined ? {} : { cursor: query.cursor }),
          includeDeleted: query.includeDeleted === "true",
        },
        c.get("log"),
      );
      return c.json({
        users: page.users.map((user) => ({ ...userView(user), deletedAt: user.deletedAt })),
        nextCursor: page.nextCursor,
      });
    },
  );

  route.get(
    "/users/:id",
    { summary: "One user", tag: "admin", access: "admin", params: userId, answers: { 200: userAnswer } },
    async (c) => {
      const user = await UsersService.findById(parseUserId(c.req.param("id") ?? ""), c.get("log"), {
        includeDeleted: true,
      });
      if (!user) throw new ApiError("NOT_FOUND");
      return c.json({ user: { ...userView(user), deletedAt: user.deletedAt } });
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
      const revoked = await SessionsService.revokeAllForUser({ userId: id }, c.get("log"));
      return c.json({ revoked });
    },
  );

  route.delete(
    "/users/:id",
    {
      summary: "Delete a user (soft)",
      tag: "admin",
      access: "admin",
      params: userId,
      answers: { 204: { description: "Deleted" } },
    },
    async (c) => {
      await UsersService.softDelete(parseUserId(c.req.param("id") ?? ""), c.get("log"));
      return c.body(null, 204);
    },
  );

  return admin;
}
