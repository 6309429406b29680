/** @jsxImportSource hono/jsx */
// The pages behind the mailed links, at the paths the mails use (APP_URL + /verify-email, /reset-password,
// /magic-link): server-rendered HTML forms, no JavaScript. Opening a link (GET) only looks the token up
// (mail scanners and link previews fetch links); the button or form (POST) uses it, through the same functions
// as the JSON routes. Every page is no-store, no-referrer (the token is in the URL), unframeable, under a CSP
// that allows nothing but its own inline stylesheet, and every form carries a CSRF token (csrf.ts).
import { OneTimeTokensService, PASSWORD_MIN_LENGTH, SessionsService } from "@repo/db";
import { type Context, Hono, type MiddlewareHandler } from "hono";
import { html } from "hono/html";
import type { Child } from "hono/jsx";
import { NONCE, secureHeaders } from "hono/secure-headers";
import { z } from "zod";
import type { AppEnv } from "../context.ts";
import { toErrorAnswer } from "../errors.ts";
import { clearSessionCookie, presentedToken, setSessionCookie } from "../http.ts";
import { documented, type RouteDoc } from "../openapi.ts";
import { resetWithLink } from "../routes/auth/password.ts";
import { endSession } from "../routes/auth/sessions.ts";
import { limitLinkUse, requestLink, signInWithLink } from "../routes/auth/shared.ts";
import { formToken, formTokenMatches } from "./csrf.ts";
import { Form, Page, PasswordField, Problem } from "./layout.tsx";

const token = z.string().min(1).max(256);
const csrf = z.string().max(128);
const verifyForm = z.strictObject({ csrf, token, password: z.string().max(1024).optional() });
const magicForm = z.strictObject({ csrf, token });
const resetForm = z.strictObject({
  csrf,
  token,
  password: z.string().max(1024),
  confirm: z.string().max(1024),
});
const newLinkForm = z.strictObject({
  csrf,
  purpose: z.enum(["magic_link", "password_reset"]),
  email: z.string().trim().min(3).max(254),
});
const signOutForm = z.strictObject({ csrf });
const linkQuery = z.object({ token: token.optional() });

/** The token of the link a page was opened with, when it has a plausible one. */
function linkToken(c: Context<AppEnv>): string | undefined {
  const query = linkQuery.safeParse(c.req.query());
  return query.success ? query.data.token : undefined;
}

/** Security headers of every page: see the file comment. */
const pageHeaders: MiddlewareHandler<AppEnv> = async (c, next) => {
  c.header("Cache-Control", "no-store");
  await next();
};
const pageSecurity = secureHeaders({
  contentSecurityPolicy: {
    defaultSrc: ["'none'"],
    styleSrc: [NONCE],
    imgSrc: ["'self'"],
    formAction: ["'self'"],
    frameAncestors: ["'none'"],
    baseUri: ["'none'"],
  },
  referrerPolicy: "no-referrer",
  xFrameOptions: "DENY",
  crossOriginResourcePolicy: "same-origin",
  crossOriginOpenerPolicy: "same-origin",
});

type Status = 200 | 400 | 403 | 415 | 429 | 503;

function render(c: Context<AppEnv>, title: string, body: Child, status: Status = 200) {
  const page = (
    <Page title={title} nonce={c.get("secureHeadersNonce")}>
      {body}
    </Page>
  );
  return c.html(html`<!doctype html>${page}`, status);
}

/** Reads a submitted form strictly; anything else is a 400/403/415 page and changes nothing. */
async function readForm<S extends z.ZodType>(c: Context<AppEnv>, schema: S): Promise<z.output<S> | Response> {
  const type = c.req.header("content-type") ?? "";
  if (!/^application\/x-www-form-urlencoded\s*(;|$)/i.test(type)) {
    return render(c, "Unsupported form", <p>Submit the form on the page.</p>, 415);
  }
  const raw = await c.req.parseBody({ all: false });
  if (!formTokenMatches(c, raw.csrf)) {
    c.get("log").warn({ page: c.req.path }, "page form without its CSRF token");
    return render(
      c,
      "This form has expired",
      <p>For your safety this form can only be sent from its own page. Open the link from the mail again.</p>,
      403,
    );
  }
  const parsed = schema.safeParse(raw);
  if (!parsed.success) {
    return render(
      c,
      "Something is missing",
      <p>The form was incomplete. Open the link from the mail again.</p>,
      400,
    );
  }
  return parsed.data;
}

/** The page for a link that cannot be used, offering a new one by mail. */
function deadLink(c: Context<AppEnv>, kind: "verify" | "reset" | "magic", status: Status = 400) {
  const purpose = kind === "reset" ? "password_reset" : "magic_link";
  return render(
    c,
    "This link has expired or was already used",
    <>
      <p>
        Each link works once and for a limited time. Enter your address and we will mail you a new{" "}
        {kind === "reset" ? "password reset link" : "sign-in link (it also confirms your address)"}.
      </p>
      <Form action="/links/new" csrf={formToken(c)}>
        <input type="hidden" name="purpose" value={purpose} />
        <label for="email">Email address</label>
        <input type="email" id="email" name="email" required autocomplete="email" maxlength={254} />
        <button type="submit">Send a new link</button>
      </Form>
    </>,
    status,
  );
}

/** A refused submission as the page shows it: the code's message and the per-field reasons. */
function problemOf(error: unknown): {
  status: Status;
  message: string;
  reasons: string[];
  code: string;
  retryAfter?: number;
} {
  const answer = toErrorAnswer(error);
  if (answer.unexpected) throw error;
  const reasons = Object.values(answer.details ?? {});
  const status = ([400, 403, 429, 503] as const).find((s) => s === answer.status) ?? 400;
  const message =
    answer.code === "RATE_LIMITED"
      ? `Too many attempts from your network. Try again in ${answer.retryAfter ?? 60} seconds.`
      : answer.code === "PASSWORD_TOO_WEAK"
        ? "This password cannot be used: it"
        : reasons.length > 0
          ? "Please check:"
          : answer.message;
  return {
    status,
    message,
    reasons,
    code: answer.code,
    ...(answer.retryAfter === undefined ? {} : { retryAfter: answer.retryAfter }),
  };
}

function rateLimitedPage(c: Context<AppEnv>, problem: ReturnType<typeof problemOf>) {
  if (problem.retryAfter !== undefined) c.header("Retry-After", String(problem.retryAfter));
  return render(c, "Please wait", <Problem message={problem.message} />, problem.status);
}

/** Signs the browser in with the cookie and sends it to the account page (POST, then redirect, then GET). */
function signedInRedirect(
  c: Context<AppEnv>,
  result: { session: { session: { expiresAt: Date }; token: string } },
) {
  setSessionCookie(c, result.session.token, result.session.session.expiresAt);
  return c.redirect("/account", 303);
}

const htmlAnswer = (description: string) => ({ description, schema: z.string(), contentType: "text/html" });
const pageAnswers = {
  200: htmlAnswer("The page"),
  400: htmlAnswer("The page, saying what is wrong (a used or expired link offers a new one)"),
  403: htmlAnswer("The form did not come from its own page (CSRF)"),
  429: htmlAnswer("Too many attempts from this network"),
};
const pageDoc = (summary: string, form?: z.ZodObject): RouteDoc => ({
  summary,
  tag: "pages",
  access: "public",
  page: true,
  ...(form ? { form } : {}),
  answers: form ? { ...pageAnswers, 303: { description: "Signed in: to /account" } } : pageAnswers,
});

export function pageRoutes(): Hono<AppEnv> {
  const pages = new Hono<AppEnv>();
  const documentedRoute = documented(pages, "");
  // Each page gets the headers (not `use("*")`: mounted at the root, that would cover every path of the app).
  const route = {
    get: (path: string, doc: RouteDoc, handler: (c: Context<AppEnv>) => Promise<Response>) =>
      documentedRoute.get(path, doc, pageHeaders, pageSecurity, handler),
    post: (path: string, doc: RouteDoc, handler: (c: Context<AppEnv>) => Promise<Response>) =>
      documentedRoute.post(path, doc, pageHeaders, pageSecurity, handler),
  };

  // --- email verification -------------------------------------------------------------------------------
  route.get(
    "/verify-email",
    pageDoc("The verification link's page (GET only looks the link up)"),
    async (c) => {
      const secret = linkToken(c);
      const pending = secret
        ? await OneTimeTokensService.peekLink(secret, "email_verification", c.get("log"))
        : null;
      if (!secret || !pending) return deadLink(c, "verify");
      return verifyPage(c, secret, pending.password !== null, pending.record.sentTo);
    },
  );

  function verifyPage(
    c: Context<AppEnv>,
    secret: string,
    needsPassword: boolean,
    email: string,
    problem?: Child,
  ) {
    return render(
      c,
      "Confirm your email address",
      <>
        {problem}
        <p>
          Confirm <strong>{email}</strong> and sign in.
        </p>
        <Form action="/verify-email" csrf={formToken(c)} token={secret}>
          {needsPassword ? (
            <PasswordField
              name="password"
              label="The password you chose when signing up"
              autocomplete="current-password"
            />
          ) : null}
          <button type="submit">Confirm and sign in</button>
        </Form>
      </>,
      problem === undefined ? 200 : 400,
    );
  }

  route.post(
    "/verify-email",
    pageDoc("Confirms the address and signs in (session cookie)", verifyForm),
    async (c) => {
      const form = await readForm(c, verifyForm);
      if (form instanceof Response) return form;
      try {
        return signedInRedirect(c, await signInWithLink(c, form.token, "email_verification", form.password));
      } catch (error) {
        const problem = problemOf(error);
        if (problem.code === "TOKEN_INVALID") return deadLink(c, "verify");
        if (problem.code === "RATE_LIMITED") return rateLimitedPage(c, problem);
        const pending = await OneTimeTokensService.peekLink(form.token, "email_verification", c.get("log"));
        if (!pending) return deadLink(c, "verify");
        return verifyPage(
          c,
          form.token,
          pending.password !== null,
          pending.record.sentTo,
          <Problem message={problem.message} reasons={problem.reasons} />,
        );
      }
    },
  );

  // --- magic link ---------------------------------------------------------------------------------------
  route.get("/magic-link", pageDoc("The sign-in link's page (GET only looks the link up)"), async (c) => {
    const secret = linkToken(c);
    const pending = secret ? await OneTimeTokensService.peek(secret, "magic_link", c.get("log")) : null;
    if (!secret || !pending) return deadLink(c, "magic");
    return render(
      c,
      "Sign in",
      <>
        <p>
          Sign in as <strong>{pending.sentTo}</strong>?
        </p>
        <Form action="/magic-link" csrf={formToken(c)} token={secret}>
          <button type="submit">Sign in</button>
        </Form>
      </>,
    );
  });

  route.post("/magic-link", pageDoc("Signs in with the link (session cookie)", magicForm), async (c) => {
    const form = await readForm(c, magicForm);
    if (form instanceof Response) return form;
    try {
      return signedInRedirect(c, await signInWithLink(c, form.token, "magic_link"));
    } catch (error) {
      const problem = problemOf(error);
      if (problem.code === "RATE_LIMITED") return rateLimitedPage(c, problem);
      if (problem.code === "TOKEN_INVALID") return deadLink(c, "magic");
      return render(c, "Sign in", <Problem message={problem.message} />, problem.status);
    }
  });

  // --- password reset -----------------------------------------------------------------------------------
  route.get("/reset-password", pageDoc("The reset link's page (GET only looks the link up)"), async (c) => {
    const secret = linkToken(c);
    const pending = secret ? await OneTimeTokensService.peek(secret, "password_reset", c.get("log")) : null;
    if (!secret || !pending) return deadLink(c, "reset");
    return resetPage(c, secret, pending.sentTo);
  });

  function resetPage(
    c: Context<AppEnv>,
    secret: string,
    email: string,
    problem?: Child,
    status: Status = 200,
  ) {
    return render(
      c,
      "Choose a new password",
      <>
        {problem}
        <p>
          For <strong>{email}</strong>. Every session of the account is signed out when it is set.
        </p>
        <Form action="/reset-password" csrf={formToken(c)} token={secret}>
          <PasswordField
            name="password"
            label="New password"
            autocomplete="new-password"
            hint={`At least ${PASSWORD_MIN_LENGTH} characters; a long phrase is best. Common passwords and ones containing your address are refused.`}
          />
          <PasswordField name="confirm" label="The new password again" autocomplete="new-password" />
          <button type="submit">Set the new password</button>
        </Form>
      </>,
      status,
    );
  }

  route.post("/reset-password", pageDoc("Sets the new password (typed twice)", resetForm), async (c) => {
    const form = await readForm(c, resetForm);
    if (form instanceof Response) return form;
    try {
      // Counted before anything is looked up, as the JSON route does.
      await limitLinkUse(c);
    } catch (error) {
      return rateLimitedPage(c, problemOf(error));
    }
    const pending = await OneTimeTokensService.peek(form.token, "password_reset", c.get("log"));
    if (!pending) return deadLink(c, "reset");
    if (form.password !== form.confirm) {
      return resetPage(c, form.token, pending.sentTo, <Problem message="The two passwords differ." />, 400);
    }
    try {
      await resetWithLink(c, form.token, form.password);
    } catch (error) {
      const problem = problemOf(error);
      if (problem.code === "TOKEN_INVALID") return deadLink(c, "reset");
      if (problem.code === "RATE_LIMITED") return rateLimitedPage(c, problem);
      const shown = <Problem message={problem.message} reasons={problem.reasons} />;
      return resetPage(c, form.token, pending.sentTo, shown, problem.status);
    }
    return render(
      c,
      "Your password is set",
      <p class="ok" role="status">
        Sign in with your new password. Every session of the account was signed out.
      </p>,
    );
  });

  // --- a new link, the account page, sign-out -----------------------------------------------------------
  route.post("/links/new", pageDoc("Mails a new sign-in or reset link", newLinkForm), async (c) => {
    const form = await readForm(c, newLinkForm);
    if (form instanceof Response) return form;
    try {
      await requestLink(c, form.purpose, form.email);
    } catch (error) {
      return rateLimitedPage(c, problemOf(error));
    }
    return render(
      c,
      "Check your mail",
      <p class="ok" role="status">
        If {form.email} has an account, a new link is on its way. It works once.
      </p>,
    );
  });

  route.get(
    "/account",
    pageDoc("Who is signed in (by the session cookie), with a sign-out button"),
    async (c) => {
      const presented = presentedToken(c);
      const auth = presented ? await SessionsService.validate(presented.token, c.get("log")) : null;
      if (!auth) {
        if (presented?.via === "cookie") clearSessionCookie(c);
        return render(c, "Signed out", <p>You are not signed in.</p>);
      }
      return render(
        c,
        "Signed in",
        <>
          <p class="ok" role="status">
            You are signed in as <strong>{auth.user.email}</strong>.
          </p>
          <Form action="/sign-out" csrf={formToken(c)}>
            <button type="submit" class="secondary">
              Sign out
            </button>
          </Form>
        </>,
      );
    },
  );

  route.post("/sign-out", pageDoc("Signs out (ends the cookie's session)", signOutForm), async (c) => {
    const form = await readForm(c, signOutForm);
    if (form instanceof Response) return form;
    const presented = presentedToken(c);
    const auth = presented ? await SessionsService.validate(presented.token, c.get("log")) : null;
    if (auth) await endSession(c, auth.session.id, auth.user.id);
    clearSessionCookie(c);
    return c.redirect("/account", 303);
  });

  return pages;
}
