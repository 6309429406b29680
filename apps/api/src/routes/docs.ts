// /openapi.json (the API's OpenAPI 3.1 description, generated from the described routes) and /docs (Scalar's
// rendered reference). Nothing is fetched from a CDN: the page loads Scalar's bundle from /docs/scalar.js,
// read from the installed @scalar/api-reference package, and its CSP lets it reach this origin only.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { Scalar } from "@scalar/hono-api-reference";
import { Hono } from "hono";
import { NONCE, secureHeaders } from "hono/secure-headers";
import type { OpenAPIV3_1 } from "openapi-types";
import { z } from "zod";
import type { AppEnv } from "../context.ts";
import { documented, openApiDocument } from "../openapi.ts";

const require = createRequire(import.meta.url);

let scalarBundle: Uint8Array | undefined;
/** Scalar's standalone browser bundle (4 MB), read on first use. */
function scalarScript(): Uint8Array {
  // The package exports no path to it: it sits beside the package's entry point, in dist/browser/.
  scalarBundle ??= readFileSync(
    path.join(path.dirname(require.resolve("@scalar/api-reference")), "browser/standalone.js"),
  );
  return scalarBundle;
}

/** `app` is the whole application (the description covers every route it has when first asked). */
export function docsRoutes(app: () => Hono<AppEnv>, cookieName: string): Hono<AppEnv> {
  const docs = new Hono<AppEnv>();
  const route = documented(docs, "");
  let document: Promise<OpenAPIV3_1.Document> | undefined;

  route.get(
    "/openapi.json",
    {
      summary: "This API's OpenAPI 3.1 description",
      tag: "docs",
      access: "public",
      database: false,
      answers: { 200: { description: "The description", schema: z.record(z.string(), z.unknown()) } },
    },
    async (c) => {
      document ??= openApiDocument(app(), { cookieName });
      return c.json(await document);
    },
  );

  // The reference page runs Scalar's script (nonce) and inline styles; it may talk to this origin only.
  docs.use(
    "/docs",
    secureHeaders({
      contentSecurityPolicy: {
        defaultSrc: ["'self'"],
        scriptSrc: ["'self'", NONCE],
        styleSrc: ["'self'", "'unsafe-inline'"],
        imgSrc: ["'self'", "data:"],
        fontSrc: ["'self'", "data:"],
        connectSrc: ["'self'"],
        frameAncestors: ["'none'"],
        baseUri: ["'none'"],
        formAction: ["'self'"],
      },
      referrerPolicy: "no-referrer",
    }),
  );
  route.get(
    "/docs",
    {
      summary: "The rendered API reference",
      tag: "docs",
      access: "public",
      database: false,
      answers: { 200: { description: "An HTML page", schema: z.string(), contentType: "text/html" } },
    },
    (c, next) =>
      Scalar<AppEnv>({
        url: "/openapi.json",
        cdn: "/docs/scalar.js",
        pageTitle: "API reference",
        nonce: c.get("secureHeadersNonce"),
        withDefaultFonts: false,
        telemetry: false,
        hideClientButton: true,
        proxyUrl: "",
        persistAuth: false,
        // Scalar's hosted features (AI agent, MCP generation, developer tools) call its servers: off.
        agent: { disabled: true },
        mcp: { disabled: true },
        showDeveloperTools: "never",
      } as Parameters<typeof Scalar<AppEnv>>[0])(c, next),
  );
  route.get(
    "/docs/scalar.js",
    {
      summary: "The reference page's script (Scalar's bundle, served from the installed package)",
      tag: "docs",
      access: "public",
      database: false,
      answers: { 200: { description: "JavaScript", schema: z.string(), contentType: "text/javascript" } },
    },
    (c) =>
      c.body(scalarScript() as Uint8Array<ArrayBuffer>, 200, {
        "content-type": "text/javascript; charset=utf-8",
        "cache-control": "public, max-age=3600",
        "x-content-type-options": "nosniff",
      }),
  );

  return docs;
}
