// /v1/admin: user administration behind ADMIN_API_KEY (Authorization: Bearer <key>). Without a key
// configured the routes do not exist (404).
import { SessionsService, UsersService } from "@repo/db";
import { Hono, type MiddlewareHandler } from "hono";
import { z } from "zod";
import type { AppEnv } from "../context.ts";
import { ApiError } from "../errors.ts";
import { bearerMatches, readQuery } from "../http.ts";
import { userView } from "../views.ts";

const adminKey: MiddlewareHandler<AppEnv> = async (c, next) => {
  const expected = c.get("deps").config.ADMIN_API_KEY;
  if (!expected) throw new ApiError("NOT_FOUND");
  if (!bearerMatches(c, expected)) throw new ApiError("UNAUTHENTICATED");
  await next();
};

/** `*` is the wildcard; LIKE's own %, _ and \ are taken literally. */
const pattern = (value: string) => value.replace(/[\\%_]/g, (ch) => `\\${ch}`).replace(/\*/g, "%");

/** A parameter given at most once (queries arrive as lists); a repeated one fails the inner schema. */
const one = <T extends z.ZodType>(schema: T) =>
  z.preprocess((value) => (Array.isArray(value) && value.length === 1 ? value[0] : value), schema);

const listQuery = z.strictObject({
  email: z.array(z.string().min(1).max(318)).max(100).optional(),
  id: z.array(z.string().min(1).max(64)).max(100).optional(),
  phone: z.array(z.string().min(1).max(64)).max(100).optional(),
  limit: one(z.coerce.number().int().min(1).max(1000)).optional(),
  cursor: one(z.string().max(128)).optional(),
  includeDeleted: one(z.enum(["true", "false"])).optional(),
});

const idParam = z.guid();

function userId(raw: string): string {
  const parsed = idParam.safeParse(raw);
  if (!parsed.success) throw new ApiError("NOT_FOUND");
  return parsed.data.toLowerCase();
}

export function adminRoutes(): Hono<AppEnv> {
  const admin = new Hono<AppEnv>();
  admin.use("*", adminKey);

  admin.get("/users", async (c) => {
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
  });

  admin.get("/users/:id", async (c) => {
    const user = await UsersService.findById(userId(c.req.param("id")), c.get("log"), {
      includeDeleted: true,
    });
    if (!user) throw new ApiError("NOT_FOUND");
    return c.json({ user: { ...userView(user), deletedAt: user.deletedAt } });
  });

  admin.post("/users/:id/sessions/revoke", async (c) => {
    const id = userId(c.req.param("id"));
    const user = await UsersService.findById(id, c.get("log"), { includeDeleted: true });
    if (!user) throw new ApiError("NOT_FOUND");
    const revoked = await SessionsService.revokeAllForUser({ userId: id }, c.get("log"));
    return c.json({ revoked });
  });

  admin.delete("/users/:id", async (c) => {
    await UsersService.softDelete(userId(c.req.param("id")), c.get("log"));
    return c.body(null, 204);
  });

  return admin;
}
