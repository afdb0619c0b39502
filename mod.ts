// Copyright the sse authors. MIT license.
/**
 * Server-Sent Events for Deno and every web-streams runtime, with no
 * dependencies:
 *
 * - {@linkcode SSEParserStream}: parse event streams exactly as the WHATWG
 *   HTML standard (§9.2) says, at any chunking, fast;
 * - {@linkcode encodeSSE} and {@linkcode SSEEncoderStream}: encode messages so
 *   that no input can break or inject a frame;
 * - {@linkcode SSEClient}: a resumable client over `fetch`, and
 *   {@linkcode EventSource} for runtimes that have none;
 * - {@linkcode sseResponse} for one-off streams, and {@linkcode SSEChannel}
 *   for broadcast with topics, replay on reconnect, keep-alive, hooks and
 *   slow-client protection, behind a pluggable {@linkcode SSEBroker}.
 *
 * The Redis Streams broker lives in `@sse/sse/redis` (it is the one module
 * with a dependency), and the `sse` command-line tool in `@sse/sse/cli`.
 *
 * @example Serve a stream and read it back
 * ```ts
 * import { SSEParserStream, sseResponse } from "@sse/sse";
 *
 * const response = sseResponse(ReadableStream.from([{ event: "greet", data: "hello" }]));
 * for await (const event of response.body!.pipeThrough(new SSEParserStream())) {
 *   console.log(event.type, event.data); // "greet" "hello"
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
