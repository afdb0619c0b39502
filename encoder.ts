// Copyright the sse authors. MIT license.
/**
 * {@linkcode encodeSSE} and {@linkcode SSEEncoderStream} write
 * {@linkcode SSEMessage}s in the WHATWG event-stream format so that no input
 * can break the framing: data is split into `data:` lines at every CRLF, CR and
 * LF, and a field that cannot be framed safely is refused with an error, never
 * rewritten.
 *
 * @example Encode one message
 * ```ts
 * import { encodeSSE } from "@sse/sse/encoder";
 * import assert from "node:assert/strict";
 *
 * assert.equal(
 *   encodeSSE({ event: "greet", id: 1, data: "hello\nworld" }),
 *   "event: greet\nid: 1\ndata: hello\ndata: world\n\n",
 * );
 * ```
 *
 * @module
 */

import { describe, json } from "./_json.ts";
import { codePoint } from "./_refusal.ts";

/**
 * One message to send. Every field is optional, but a message must have at
 * least one. Properties with other names are ignored, and so is a field whose
 * value is `undefined`.
 *
 * What a client sees (an `SSEEvent` from the parser):
 * - with `data`: one event, of type `event` (or `"message"`), whose data is
 *   `data` with its line breaks normalised to LF;
 * - with `id`: the client's last event ID becomes `id`, also when the message
 *   has no `data` (the ID is committed, nothing is dispatched);
 * - `retry` sets the client's reconnection delay; `comment` is never
 *   dispatched (servers send comments as keep-alives).
 */
export interface SSEMessage {
  /**
   * The payload. A string is sent verbatim, one `data:` line per line (CRLF,
   * CR and LF all break lines); `""` dispatches an event with empty data.
   * Anything else is sent as `JSON.stringify(data)`, which is always one line;
   * values JSON cannot represent (functions, symbols, `BigInt`, cycles) are
   * refused with a `TypeError`.
   */
  data?: unknown;
  /**
   * The event type, for `addEventListener(type, …)` on the client. It must
   * contain no CR or LF, and needs `data`: an event type alone dispatches
   * nothing. Otherwise `TypeError`. `""` is written as `event: `, which
   * clients read as `"message"`, as when the field is left out.
   */
  event?: string | undefined;
  /**
   * The event ID a reconnecting client sends back as `Last-Event-ID`. It must
   * not contain CR, LF or NUL, which the event stream cannot carry, nor any
   * other control character but tab (U+0001–U+001F, DEL), nor begin or end
   * with a space or tab, which the header cannot carry (a header value loses
   * them: `" 5 "` would come back as `"5"`): otherwise `TypeError`. A number must be finite
   * (`RangeError`). `""` resets the client's last event ID.
   */
  id?: string | number | undefined;
  /**
   * The client's reconnection delay in milliseconds: an integer from 0 to
   * 2^31 - 1 (about 24.8 days, the longest wait a timer holds), otherwise
   * `RangeError`.
   */
  retry?: number | undefined;
  /**
   * A comment, which clients do not dispatch. It may span lines: each line
   * (split at CRLF, CR and LF) becomes one `: …` line.
   */
  comment?: string | undefined;
}

// The control characters a header value cannot hold, but for NUL, CR and LF
// (refused first, with their names): U+0001–U+0008, U+000B–U+001F, DEL.
// deno-lint-ignore no-control-regex
const CONTROL = /[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]/;

// The longest reconnection time a client can wait: a timer's longest delay.
const MAX_RETRY = 2 ** 31 - 1;

function isSpaceOrTab(code: number): boolean {
  return code === 0x20 || code === 0x09;
}

// Line breaks as §9.2.5 defines them: CRLF, then a lone CR or LF.
const LINE_BREAK = /\r\n|\r|\n/g;

// Two native scans beat a /[\r\n]/ test on long strings, and tie on short ones.
function hasLineBreak(text: string): boolean {
  return text.indexOf("\n") !== -1 || text.indexOf("\r") !== -1;
}

/**
 * Encodes one message as an event-stream frame.
 *
 * Fields are written as `name: value` with one space, so values that begin
 * with a space survive, in this order: comment lines, `event`, `id`, `retry`,
 * `data` lines, then the blank line that ends the frame. Every string must be
 * well-formed UTF-16 (no lone surrogate, which UTF-8 cannot carry).
 *
 * @example An LLM token, a named event and a resumable ID
 * ```ts
 * import { encodeSSE } from "@sse/sse/encoder";
 * import assert from "node:assert/strict";
 *
 * assert.equal(encodeSSE({ data: { token: "Hi" } }), 'data: {"token":"Hi"}\n\n');
 * assert.equal(
 *   encodeSSE({ event: "done", id: "42", data: "" }),
 *   "event: done\nid: 42\ndata: \n\n",
 * );
 * assert.throws(() => encodeSSE({ event: "a\nb", data: "x" }), TypeError);
 * ```
 *
 * @param message The message.
 * @returns The frame, ending with a blank line.
 * @throws {TypeError} When the message is not an object, has no field, or a
 * field has the wrong type, a forbidden character (CR or LF in `event` or
 * `id`; NUL or another control character but tab in `id`, or a space or tab
 * at either end of it) or cannot be JSON-encoded.
 * @throws {RangeError} When `retry` is not an integer from 0 to 2^31 - 1, or
 * a numeric `id` is not finite.
 */
export function encodeSSE(message: SSEMessage): string {
  if (typeof message !== "object" || message === null) {
    throw new TypeError(
      `Invalid SSE message: expected an object, got ${describe(message)}`,
    );
  }
  const { data, event, id, retry, comment } = message;
  let frame = "";

  if (comment !== undefined) {
    if (typeof comment !== "string") {
      throw new TypeError(
        `Invalid comment: expected a string, got ${describe(comment)}`,
      );
    }
    wellFormed("comment", comment);
    frame = hasLineBreak(comment)
      ? ": " + comment.replace(LINE_BREAK, "\n: ") + "\n"
      : ": " + comment + "\n";
  }

  if (event !== undefined) {
    if (typeof event !== "string") {
      throw new TypeError(
        `Invalid event: expected a string, got ${describe(event)}`,
      );
    }
    forbid("event", event, "\r", "CR");
    forbid("event", event, "\n", "LF");
    wellFormed("event", event);
    if (data === undefined) {
      // §9.2.6 dispatch step 2: no data, no event, and the type is reset.
      throw new TypeError(
        'Invalid SSE message: event without data dispatches nothing: add data ("" for an empty payload)',
      );
    }
    frame += "event: " + event + "\n";
  }

  if (id !== undefined) {
    let text: string;
    if (typeof id === "string") {
      forbid("id", id, "\r", "CR");
      forbid("id", id, "\n", "LF");
      // §9.2.6: a client ignores an `id` field containing U+0000.
      forbid("id", id, "\0", "NUL");
      // A client sends the ID back as `Last-Event-ID`, and a header value
      // holds no other control character but tab (fetch refuses the request).
      const control = CONTROL.exec(id);
      if (control !== null) {
        throw new TypeError(
          `Invalid id: must not contain ${
            codePoint(control[0])
          }, which Last-Event-ID cannot carry: found at index ${control.index}`,
        );
      }
      // Nor a leading or trailing space or tab: a header value loses them,
      // and the server would read another ID (" 5 " as "5").
      const edge = isSpaceOrTab(id.charCodeAt(0))
        ? 0
        : isSpaceOrTab(id.charCodeAt(id.length - 1))
        ? id.length - 1
        : -1;
      if (edge !== -1) {
        throw new TypeError(
          `Invalid id: must not begin or end with a space or tab, which Last-Event-ID cannot carry: found ${
            codePoint(id[edge]!)
          } at index ${edge}`,
        );
      }
      wellFormed("id", id);
      text = id;
    } else if (typeof id === "number") {
      if (!Number.isFinite(id)) {
        throw new RangeError(
          `Invalid id: expected a finite number, got ${id}`,
        );
      }
      text = String(id);
    } else {
      throw new TypeError(
        `Invalid id: expected a string or a number, got ${describe(id)}`,
      );
    }
    frame += "id: " + text + "\n";
  }

  if (retry !== undefined) {
    if (typeof retry !== "number") {
      throw new TypeError(
        `Invalid retry: expected a number of milliseconds, got ${
          describe(retry)
        }`,
      );
    }
    // §9.2.6: a client takes `retry` only when it is all ASCII digits, which
    // String() gives for exactly the non-negative safe integers.
    if (!Number.isSafeInteger(retry) || retry < 0) {
      throw new RangeError(
        `Invalid retry: expected a non-negative integer of milliseconds, got ${retry}`,
      );
    }
    if (retry > MAX_RETRY) {
      // Clients arm a timer, which holds at most 2^31 - 1 ms; ours wait that
      // long, others reconnect after 1 ms.
      throw new RangeError(
        `Invalid retry: ${retry} ms is more than a client can wait (${MAX_RETRY} ms, about 24.8 days)`,
      );
    }
    frame += "retry: " + retry + "\n";
  }

  if (data !== undefined) {
    if (typeof data === "string") {
      // Hot path: one native scan decides; most payloads are one line.
      if (hasLineBreak(data)) {
        wellFormed("data", data);
        return frame + "data: " + data.replace(LINE_BREAK, "\ndata: ") +
          "\n\n";
      }
      wellFormed("data", data);
      return frame + "data: " + data + "\n\n";
    }
    // JSON.stringify escapes CR, LF and lone surrogates: always one safe line.
    return frame + "data: " + json(data) + "\n\n";
  }

  if (frame === "") {
    if (Array.isArray(message)) {
      throw new TypeError("Invalid SSE message: expected an object, got array");
    }
    throw new TypeError(
      "Invalid SSE message: no field to write: expected at least one of data, event, id, retry or comment",
    );
  }
  return frame + "\n";
}

/**
 * A `TransformStream` from {@linkcode SSEMessage}s to the UTF-8 bytes of an
 * event stream: one chunk per message, encoded by {@linkcode encodeSSE}.
 *
 * A message that {@linkcode encodeSSE} refuses errors the stream with that
 * error, and no byte of its frame is written.
 *
 * @example Stream messages into a response body
 * ```ts
 * import { SSEEncoderStream } from "@sse/sse/encoder";
 * import { SSEParserStream } from "@sse/sse/parser";
 * import assert from "node:assert/strict";
 *
 * const body = ReadableStream.from([
 *   { data: "hello" },
 *   { event: "end", data: { ok: true } },
 * ]).pipeThrough(new SSEEncoderStream());
 * const events = await Array.fromAsync(
 *   body.pipeThrough(new SSEParserStream()),
 * );
 * assert.deepEqual(events, [
 *   { type: "message", data: "hello", id: "" },
 *   { type: "end", data: '{"ok":true}', id: "" },
 * ]);
 * ```
 */
export class SSEEncoderStream extends TransformStream<SSEMessage, Uint8Array> {
  /** Creates an encoder stream. */
  constructor() {
    const encoder = new TextEncoder();
    super({
      transform(message, controller) {
        controller.enqueue(encoder.encode(encodeSSE(message)));
      },
    });
  }
}

function forbid(
  field: string,
  value: string,
  char: string,
  name: string,
): void {
  const at = value.indexOf(char);
  if (at !== -1) {
    throw new TypeError(
      `Invalid ${field}: must not contain ${name}: found at index ${at}`,
    );
  }
}

// UTF-8 cannot encode a lone surrogate: TextEncoder would turn it into U+FFFD,
// a silent rewrite. Refuse it instead.
function wellFormed(field: string, value: string): void {
  if (value.isWellFormed()) return;
  let at = 0;
  for (; at < value.length; at++) {
    const c = value.charCodeAt(at);
    if (c >= 0xd800 && c <= 0xdbff) {
      const next = value.charCodeAt(at + 1);
      if (next >= 0xdc00 && next <= 0xdfff) at++;
      else break;
    } else if (c >= 0xdc00 && c <= 0xdfff) {
      break;
    }
  }
  throw new TypeError(
    `Invalid ${field}: contains a lone surrogate, which UTF-8 cannot encode: found at index ${at}`,
  );
}
