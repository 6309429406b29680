// @repo/client: a typed client of the API, made with openapi-fetch from the types openapi-typescript derives
// from the API's OpenAPI description (src/schema.ts, written by `bun run client:generate`). Every path, body,
// answer and error code is checked by the compiler.
import createClient, { type Client, type ClientOptions, type Middleware } from "openapi-fetch";
import type { components, operations, paths } from "./schema.ts";

export type { components, operations, paths };
export type User = components["schemas"]["User"];
export type Session = components["schemas"]["Session"];
export type SignedIn = components["schemas"]["SignedIn"];
export type ApiErrorBody = components["schemas"]["Error"];
export type ApiErrorCode = ApiErrorBody["error"]["code"];

export interface ApiClientOptions extends Omit<ClientOptions, "baseUrl"> {
  /** Where the API is, e.g. https://api.example.com (no trailing path needed). */
  baseUrl: string;
  /**
   * "cookie" (browsers): sign-in sets the HttpOnly session cookie; send requests with `credentials: "include"`
   * across origins. "bearer" (servers, scripts, mobile): sign-in answers carry the token instead; give it to
   * setToken() and it is sent as `Authorization: Bearer` from then on. Default "cookie".
   */
  auth?: "cookie" | "bearer";
  /** A session token to start with (bearer mode). */
  token?: string;
}

export interface ApiClient extends Client<paths> {
  /** The session token sent from now on (bearer mode); undefined stops sending one. */
  setToken(token: string | undefined): void;
}

/**
 * @example
 * const api = createApiClient({ baseUrl: "http://localhost:3000", auth: "bearer" });
 * const { data, error } = await api.POST("/v1/auth/sign-in", { body: { email, password } });
 * if (error) throw new Error(error.error.code);
 * api.setToken(data.token);
 * const { data: me } = await api.GET("/v1/auth/session");
 */
export function createApiClient(options: ApiClientOptions): ApiClient {
  const { auth = "cookie", token: initial, ...rest } = options;
  let token = initial;
  const client = createClient<paths>(rest);
  const authorize: Middleware = {
    onRequest({ request }) {
      if (auth === "bearer") request.headers.set("X-Auth-Mode", "bearer");
      if (token !== undefined && !request.headers.has("authorization")) {
        request.headers.set("Authorization", `Bearer ${token}`);
      }
      return request;
    },
  };
  client.use(authorize);
  return Object.assign(client, {
    setToken(next: string | undefined) {
      token = next;
    },
  });
}
