// Copyright the sse authors. MIT license.
/**
 * Server-Sent Events for Deno and every web-streams runtime: an exact, fast
 * parser of the WHATWG event-stream format.
 *
 * @example Parse an event stream
 * ```ts
 * import { SSEParserStream } from "@sse/sse";
 *
 * const body = new Response("data: hello\n\n").body!;
 * for await (const event of body.pipeThrough(new SSEParserStream())) {
 *   console.log(event.data); // "hello"
 * }
 * ```
 *
 * @module
 */

export * from "./parser.ts";
export * from "./encoder.ts";
export * from "./client.ts";
export * from "./event_source.ts";
export * from "./server.ts";
