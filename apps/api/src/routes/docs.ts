// /openapi.json (the API's OpenAPI 3.1 description, generated from the described routes) and /docs (Scalar's
// rendered reference). Nothing is fetched from a CDN: the page loads Scalar's bundle from /docs/scalar.js,
// read from the installed @scalar/api-reference package, and its CSP lets it reach this origin only.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import path from "node:path";
import { gzipSync } from "node:zlib";
import { Scalar } from "@scalar/hono-api-reference";
import { type Context, Hono, type MiddlewareHandler } from "hono";
import { NONCE, secureHeaders } from "hono/secure-headers";
import { z } from "zod";
import type { AppEnv } from "../context.ts";
import { ApiError } from "../errors.ts";
import { documented, openApiDocument } from "../openapi.ts";

const require = createRequire(import.meta.url);

/** A fixed response body, kept with its gzip form and an ETag, served with revalidation and compression. */
interface Asset {
  body: Uint8Array<ArrayBuffer>;
  gzip: Uint8Array<ArrayBuffer>;
  etag: string;
}

function asset(body: Uint8Array): Asset {
  return {
    body: new Uint8Array(body),
    gzip: new Uint8Array(gzipSync(body, { level: 9 })),
    etag: `"${createHash("sha256").update(body).digest("base64url").slice(0, 27)}"`,
  };
}

function serve(c: Context<AppEnv>, file: Asset, contentType: string, cacheControl: string) {
  const headers: Record<string, string> = {
    "content-type": contentType,
    "cache-control": cacheControl,
    etag: file.etag,
    vary: "Accept-Encoding",
    "x-content-type-options": "nosniff",
  };
  if (c.req.header("if-none-match") === file.etag) return c.body(null, 304, headers);
  if (/\bgzip\b/.test(c.req.header("accept-encoding") ?? "")) {
    return c.body(file.gzip, 200, { ...headers, "content-encoding": "gzip" });
  }
  return c.body(file.body, 200, headers);
}

let scalarBundle: Asset | undefined;
/** Scalar's standalone browser bundle (4.3 MB, 1.2 MB gzipped), read and compressed on first use. */
function scalarScript(): Asset {
  // The package exports no path to it: it sits beside the package's entry point, in dist/browser/.
  scalarBundle ??= asset(
    readFileSync(path.join(path.dirname(require.resolve("@scalar/api-reference")), "browser/standalone.js")),
  );
  return scalarBundle;
}

/** With API_DOCS=false the description and the docs are not served. */
const docsEnabled: MiddlewareHandler<AppEnv> = async (c, next) => {
  if (!c.get("deps").config.API_DOCS) throw new ApiError("NOT_FOUND");
  await next();
};

/** `app` is the whole application (the description covers every route it has when first asked). */
export function docsRoutes(app: () => Hono<AppEnv>, cookieName: string): Hono<AppEnv> {
  const docs = new Hono<AppEnv>();
  const route = documented(docs, "");
  // Generated once, on first request (every route is registered by then); a failed attempt is not kept.
  let document: Promise<Asset> | undefined;
  const describedApi = () => {
    document ??= openApiDocument(app(), { cookieName }).then(
      (spec) => asset(Buffer.from(JSON.stringify(spec))),
      (error: unknown) => {
        document = undefined;
        throw error;
      },
    );
    return document;
  };

  route.get(
    "/openapi.json",
    {
      summary: "This API's OpenAPI 3.1 description",
      tag: "docs",
      access: "public",
      database: false,
      answers: { 200: { description: "The description", schema: z.record(z.string(), z.unknown()) } },
      errors: ["NOT_FOUND"],
    },
    docsEnabled,
    async (c) => serve(c, await describedApi(), "application/json", "no-cache"),
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
      errors: ["NOT_FOUND"],
    },
    docsEnabled,
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
      errors: ["NOT_FOUND"],
    },
    docsEnabled,
    (c) => serve(c, scalarScript(), "text/javascript; charset=utf-8", "public, max-age=86400"),
  );

  return docs;
}
