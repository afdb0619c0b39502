// Copyright the sse authors. MIT license.
/**
 * {@linkcode SSEParserStream} turns the bytes of an event stream into events,
 * exactly as the WHATWG HTML standard (§9.2.5–9.2.6) says, whatever the
 * chunking.
 *
 * @example Parse a response body
 * ```ts
 * import { SSEParserStream } from "@sse/sse/parser";
 *
 * const body = new Response("event: greet\ndata: hello\n\n").body!;
 * for await (const event of body.pipeThrough(new SSEParserStream())) {
 *   console.log(event.type, event.data); // "greet" "hello"
 * }
 * ```
 *
 * @module
 */

import { DEFAULT_MAX_EVENT_SIZE, EventParser } from "./_event_parser.ts";

// A readable-side high-water mark of 1 instead of 0 spares the stream a
// backpressure flip, and a promise, per event: about 20 % of the cost of small
// events. The parser still stops reading input while events wait unread.
const READABLE_STRATEGY: QueuingStrategy<SSEEvent> = { highWaterMark: 1 };

/** One dispatched event. */
export interface SSEEvent {
  /** The `event` field, or `"message"` when there was none. */
  type: string;
  /** The `data` lines, joined with `"\n"`. */
  data: string;
  /**
   * The last event ID in effect when the event was dispatched (`""` if none):
   * what a client sends as `Last-Event-ID` to resume after it.
   */
  id: string;
}

/** Options of {@linkcode SSEParserStream}. */
export interface SSEParserOptions {
  /**
   * The last event ID to start from, for a reconnecting client: events without
   * an `id` field carry it until the stream commits another.
   *
   * @default {""}
   */
  lastEventId?: string;
  /**
   * Called with each valid `retry` field (all ASCII digits), in milliseconds,
   * in stream order.
   *
   * @default {undefined}
   */
  onRetry?: (ms: number) => void;
  /**
   * Called with each comment line: the text after the `:`, with one leading
   * space removed. Servers send comments as keep-alives.
   *
   * @default {undefined}
   */
  onComment?: (text: string) => void;
  /**
   * The most bytes (UTF-8, as the stream sends text) that one unfinished line
   * (its field name included), or the data of one event being assembled, may
   * hold. Beyond it the stream errors with a `RangeError`, so a hostile or
   * broken server cannot exhaust memory. `Infinity` turns the limit off.
   *
   * @default {16777216} (16 MiB)
   */
  maxEventSize?: number;
}

/**
 * A `TransformStream` from the bytes of an event stream to {@linkcode SSEEvent}s.
 *
 * It follows the HTML standard to the letter at any chunking: CRLF split across
 * chunks is one line end, one BOM at the very start is dropped, invalid UTF-8
 * becomes U+FFFD, an `id` containing U+0000 is ignored, `retry` counts only
 * when all digits, and an event cut off by the end of the stream is discarded.
 * It never errors on malformed input; only `maxEventSize` errors it.
 *
 * @example Parse a stream and follow its last event ID
 * ```ts
 * import { SSEParserStream } from "@sse/sse/parser";
 * import assert from "node:assert/strict";
 *
 * const parser = new SSEParserStream({ lastEventId: "41" });
 * const body = new Response("data: a\n\nid: 42\ndata: b\n\n").body!;
 * const events = await Array.fromAsync(body.pipeThrough(parser));
 * assert.deepEqual(events, [
 *   { type: "message", data: "a", id: "41" },
 *   { type: "message", data: "b", id: "42" },
 * ]);
 * assert.equal(parser.lastEventId, "42");
 * ```
 */
export class SSEParserStream extends TransformStream<Uint8Array, SSEEvent> {
  #parser: EventParser;

  /**
   * Creates a parser.
   *
   * @param options Seed ID, callbacks and size limit.
   * @throws {RangeError} When `maxEventSize` is not a positive number.
   * @throws {TypeError} When `lastEventId` is not a string.
   */
  constructor(options: SSEParserOptions = {}) {
    const parser = new EventParser({
      lastEventId: options.lastEventId,
      onRetry: options.onRetry,
      onComment: options.onComment,
      maxEventSize: options.maxEventSize ?? DEFAULT_MAX_EVENT_SIZE,
    });
    super(
      {
        transform(chunk, controller) {
          if (!(chunk instanceof Uint8Array)) {
            throw new TypeError(
              `SSEParserStream expects Uint8Array chunks: received ${
                describe(chunk)
              }`,
            );
          }
          parser.push(chunk);
          for (let event = parser.next(); event !== undefined;) {
            controller.enqueue(event);
            event = parser.next();
          }
        },
        // §9.2.5: at the end of the stream, pending data is discarded.
      },
      undefined,
      READABLE_STRATEGY,
    );
    this.#parser = parser;
  }

  /**
   * The last event ID: the seed at first, then the ID committed at each blank
   * line (§9.2.6 dispatch step 1). An `id` inside an event cut off by the end
   * of the stream is never committed.
   *
   * @returns The last event ID, `""` if none.
   */
  get lastEventId(): string {
    return this.#parser.lastEventId;
  }

  /**
   * The reconnection time the stream asked for with its last valid `retry`
   * field.
   *
   * @returns Milliseconds, or `undefined` if the stream sent none.
   */
  get retry(): number | undefined {
    return this.#parser.retry;
  }
}

function describe(value: unknown): string {
  if (value === null) return "null";
  if (typeof value === "object") return value.constructor?.name ?? "object";
  return typeof value;
}
