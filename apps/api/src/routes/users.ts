// /v1/users/me: the signed-in user's own profile.
import { UsersService } from "@repo/db";
import { Hono } from "hono";
import { z } from "zod";
import type { AppEnv } from "../context.ts";
import { ApiError } from "../errors.ts";
import type { Guards } from "../guards.ts";
import { clearSessionCookie, readJson } from "../http.ts";
import { userView } from "../views.ts";
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

export function userRoutes({ requireSession }: Guards): Hono<AppEnv> {
  const users = new Hono<AppEnv>();
  users.use("/me", requireSession);

  users.get("/me", (c) => c.json({ user: userView(c.get("user")) }));

  users.patch("/me", async (c) => {
    const patch = await readJson(c, patchBody);
    const user = await UsersService.update({ id: c.get("user").id, patch }, c.get("log"));
    return c.json({ user: userView(user) });
  });

  // Soft delete: the user's sessions, tokens and linked provider accounts end in the same transaction
  // (UsersService.softDelete). A stolen session alone must not be enough: the current password is required,
  // or for an account without one, a sign-in within the last ten minutes.
  users.delete("/me", async (c) => {
    const hasBody = (c.req.header("content-length") ?? "0") !== "0" || c.req.header("content-type");
    const body = hasBody ? await readJson(c, deleteBody) : {};
    if (await UsersService.hasPassword(c.get("user").id, c.get("log"))) {
      if (body.password === undefined) throw new ApiError("REAUTHENTICATION_REQUIRED");
      await confirmPassword(c, body.password);
    } else if (!signedInRecently(c)) {
      throw new ApiError("REAUTHENTICATION_REQUIRED");
    }
    await UsersService.softDelete(c.get("user").id, c.get("log"));
    clearSessionCookie(c);
    return c.body(null, 204);
  });

  return users;
}
