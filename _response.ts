// Copyright the sse authors. MIT license.
// Telling a Response apart from any other value, by its shape: shared by the
// clients (what an injected fetch resolved to) and SSEChannel (what
// onConnect returned). Private: never exported from mod.ts or deno.json.
//
// Never `instanceof Response`: a response made by another realm or another
// library (npm undici's on Node, a polyfill, a worker's) is a response all
// the same, and `instanceof` says no to it. For SSEChannel that mistake
// would take a refusal (401) for the connection's context and serve the
// stream.

/**
 * Whether a value is a Response by its shape: an object with a numeric
 * `status`, `headers` that have a `get` method, and a `body` that is `null`
 * or a stream (it has `getReader`). Getters that throw make it `false`.
 *
 * @param value Anything.
 * @returns `true` for a Response of this runtime or of any other realm or
 * library.
 */
export function isResponse(value: unknown): value is Response {
  if (value instanceof Response) return true;
  if (typeof value !== "object" || value === null) return false;
  try {
    const candidate = value as Partial<Response>;
    const body = candidate.body as { getReader?: unknown } | null | undefined;
    return typeof candidate.status === "number" &&
      typeof candidate.headers?.get === "function" &&
      (body === null || typeof body?.getReader === "function");
  } catch {
    return false;
  }
}
