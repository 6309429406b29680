// /v1/users/me: the signed-in user's own profile.
import { UsersService } from "@repo/db";
import { Hono } from "hono";
import { z } from "zod";
import type { AppEnv } from "../context.ts";
import { clearSessionCookie, readJson, requireSession } from "../http.ts";
import { userView } from "./auth.ts";

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

export function userRoutes(): Hono<AppEnv> {
  const users = new Hono<AppEnv>();
  users.use("/me", requireSession);

  users.get("/me", (c) => c.json({ user: userView(c.var.user) }));

  users.patch("/me", async (c) => {
    const patch = await readJson(c, patchBody);
    const user = await UsersService.update({ id: c.var.user.id, patch }, c.var.log);
    return c.json({ user: userView(user) });
  });

  // Soft delete: the user's sessions and tokens end in the same transaction (UsersService.softDelete).
  users.delete("/me", async (c) => {
    await UsersService.softDelete(c.var.user.id, c.var.log);
    clearSessionCookie(c);
    return c.body(null, 204);
  });

  return users;
}
