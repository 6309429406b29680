// The OpenAPI description (/openapi.json), the rendered docs (/docs) and the generated client's files.
import { readFileSync } from "node:fs";
import { compileErrors, validate } from "@readme/openapi-parser";
import type { OpenAPIV3_1 } from "openapi-types";
import { describe, expect, it } from "vitest";
import { API_ERRORS } from "../src/errors.ts";
import { clientFiles } from "../src/openapi-client.ts";
import { makeApp } from "./helpers.ts";

const METHODS = ["get", "put", "post", "delete", "patch"] as const;

async function documentOf(t = makeApp()): Promise<OpenAPIV3_1.Document> {
  const response = await t.app.request("/openapi.json");
  expect(response.status).toBe(200);
  return (await response.json()) as OpenAPIV3_1.Document;
}

/** `/v1/auth/sessions/:id` as OpenAPI writes it. */
const openApiPath = (path: string) => path.replace(/:([A-Za-z0-9_]+)/g, "{$1}");

describe("/openapi.json", () => {
  it("passes a maintained OpenAPI validator (@readme/openapi-parser) as OpenAPI 3.1", async () => {
    const document = await documentOf();
    expect(document.openapi).toBe("3.1.0");
    const result = await validate(structuredClone(document) as never);
    if (!result.valid) throw new Error(compileErrors(result));
    expect(result.specification).toBe("OpenAPI");
  });

  it("describes every route the app registers, and only those", async () => {
    const t = makeApp({ env: { ADMIN_API_KEY: "admin-key-0123456789-abcdefghijklmnop" } });
    const document = await documentOf(t);
    const registered = new Set(
      t.app.routes
        .filter((route) => route.method !== "ALL")
        .map((route) => `${route.method.toLowerCase()} ${openApiPath(route.path)}`),
    );
    const described = new Set<string>();
    for (const [path, item] of Object.entries(document.paths ?? {})) {
      for (const method of METHODS) if (item?.[method]) described.add(`${method} ${path}`);
    }
    expect(registered.size).toBeGreaterThan(20);
    expect([...registered].filter((route) => !described.has(route))).toEqual([]);
    expect([...described].filter((route) => !registered.has(route))).toEqual([]);
  });

  it("gives every operation a summary, a success answer, its error codes and the auth it needs", async () => {
    const document = await documentOf();
    const schemes = Object.keys(document.components?.securitySchemes ?? {});
    expect(schemes.sort()).toEqual(["adminKey", "metricsToken", "sessionBearer", "sessionCookie"]);
    for (const [path, item] of Object.entries(document.paths ?? {})) {
      for (const method of METHODS) {
        const operation = item?.[method];
        if (!operation) continue;
        const where = `${method} ${path}`;
        expect(operation.summary, where).toBeTruthy();
        expect(operation.security, where).toBeDefined();
        const statuses = Object.keys(operation.responses ?? {});
        expect(
          statuses.some((status) => status.startsWith("2") || status.startsWith("3")),
          where,
        ).toBe(true);
        // Every error answer names the codes it can carry, each with its own status.
        for (const status of statuses.filter(
          (s) => Number(s) >= 400 && !(path === "/readyz" && s === "503"),
        )) {
          const response = operation.responses?.[status] as OpenAPIV3_1.ResponseObject;
          // The pages show what went wrong on a page; everything else answers an Error body.
          if (operation.tags?.includes("pages") && response.content?.["text/html"]) continue;
          const schema = response.content?.["application/json"]?.schema as OpenAPIV3_1.SchemaObject;
          const error = schema.properties?.error as OpenAPIV3_1.SchemaObject;
          const codes = ((error.properties?.code as OpenAPIV3_1.SchemaObject | undefined)?.enum ??
            []) as (keyof typeof API_ERRORS)[];
          expect(codes.length, `${where} ${status}`).toBeGreaterThan(0);
          for (const code of codes) expect(API_ERRORS[code].status, `${where} ${code}`).toBe(Number(status));
        }
      }
    }
  });

  it("lists the codes a route really answers with: a signed-in route its 401, an unsafe /v1 route its CSRF 403", async () => {
    const document = await documentOf();
    const codesOf = (path: string, method: (typeof METHODS)[number], status: string) => {
      const response = document.paths?.[path]?.[method]?.responses?.[status] as OpenAPIV3_1.ResponseObject;
      const schema = response?.content?.["application/json"]?.schema as OpenAPIV3_1.SchemaObject | undefined;
      const error = schema?.properties?.error as OpenAPIV3_1.SchemaObject | undefined;
      return (error?.properties?.code as OpenAPIV3_1.SchemaObject | undefined)?.enum ?? [];
    };
    expect(codesOf("/v1/auth/session", "get", "401")).toEqual(["UNAUTHENTICATED"]);
    expect(codesOf("/v1/auth/sign-in", "post", "401")).toEqual(["INVALID_CREDENTIALS"]);
    expect(codesOf("/v1/auth/sign-in", "post", "403")).toEqual(["CSRF_REJECTED"]);
    expect(codesOf("/v1/auth/sign-in", "post", "429")).toEqual(["RATE_LIMITED", "SIGN_IN_LINK_REQUIRED"]);
    expect(codesOf("/v1/auth/sign-up", "post", "400")).toEqual(
      expect.arrayContaining(["VALIDATION_FAILED", "INVALID_JSON", "PASSWORD_TOO_WEAK"]),
    );
    expect(codesOf("/v1/auth/session", "get", "403")).toEqual([]);
    expect(codesOf("/healthz", "get", "503")).toEqual([]);
    // The request body is the very schema the route validates with: strict, with its limits.
    const signIn = document.paths?.["/v1/auth/sign-in"]?.post?.requestBody as OpenAPIV3_1.RequestBodyObject;
    const body = signIn.content["application/json"]?.schema as OpenAPIV3_1.SchemaObject;
    expect(body.additionalProperties).toBe(false);
    expect(body.required).toEqual(["email", "password"]);
    expect((body.properties?.password as OpenAPIV3_1.SchemaObject | undefined)?.maxLength).toBe(1024);
  });

  it("is current in packages/client (regenerate with `bun run client:generate`)", async () => {
    const files = await clientFiles();
    const root = new URL("../../../packages/client/", import.meta.url);
    expect(readFileSync(new URL("openapi.json", root), "utf8")).toBe(files.document);
    expect(readFileSync(new URL("src/schema.ts", root), "utf8")).toBe(files.types);
  });
});

describe("/docs", () => {
  it("serves Scalar's page with its script from this origin, under a CSP that allows no other origin", async () => {
    const t = makeApp();
    const page = await t.app.request("/docs");
    expect(page.status).toBe(200);
    const html = await page.text();
    const csp = page.headers.get("content-security-policy") ?? "";
    const nonce = /'nonce-([^']+)'/.exec(csp)?.[1];
    expect(nonce).toBeTruthy();
    expect(csp).toContain("default-src 'self'");
    expect(csp).toContain("connect-src 'self'");
    expect(csp).toContain("frame-ancestors 'none'");
    expect(page.headers.get("referrer-policy")).toBe("no-referrer");
    // Every script comes from here and carries the nonce; nothing names a CDN.
    const scripts = [...html.matchAll(/<script\b[^>]*>/g)].map((match) => match[0]);
    expect(scripts.length).toBeGreaterThan(0);
    for (const tag of scripts) expect(tag).toContain(`nonce="${nonce}"`);
    expect(html).toContain('src="/docs/scalar.js"');
    expect(html).not.toMatch(/https?:\/\/(cdn|fonts|unpkg|jsdelivr)/);
    expect(html).toContain("/openapi.json");

    const script = await t.app.request("/docs/scalar.js");
    expect(script.status).toBe(200);
    expect(script.headers.get("content-type")).toContain("javascript");
    expect((await script.arrayBuffer()).byteLength).toBeGreaterThan(100_000);
  });
});

describe("/openapi.json and /docs cost little and can be turned off", () => {
  it("answers 304 to a known ETag and gzips the 4 MB script for clients that accept it", async () => {
    const t = makeApp();
    const first = await t.app.request("/openapi.json");
    const etag = first.headers.get("etag") ?? "";
    expect(etag).toMatch(/^".+"$/);
    expect(first.headers.get("cache-control")).toBe("no-cache");
    const again = await t.app.request("/openapi.json", { headers: { "if-none-match": etag } });
    expect(again.status).toBe(304);
    expect(await again.text()).toBe("");

    const plain = await t.app.request("/docs/scalar.js");
    const zipped = await t.app.request("/docs/scalar.js", { headers: { "accept-encoding": "gzip, br" } });
    expect(zipped.headers.get("content-encoding")).toBe("gzip");
    expect(zipped.headers.get("vary")).toBe("Accept-Encoding");
    const plainBytes = (await plain.arrayBuffer()).byteLength;
    const zippedBytes = (await zipped.arrayBuffer()).byteLength;
    expect(zippedBytes).toBeLessThan(plainBytes / 2);
  });

  it("with API_DOCS=false answers 404 for the description, the page and its script", async () => {
    const t = makeApp({ env: { API_DOCS: "false" } });
    for (const path of ["/openapi.json", "/docs", "/docs/scalar.js"]) {
      const response = await t.app.request(path);
      expect(response.status, path).toBe(404);
      expect(((await response.json()) as { error: { code: string } }).error.code, path).toBe("NOT_FOUND");
    }
  });
});
