// Copyright the sse authors. MIT license.
// The synchronous event-stream parser behind SSEParserStream and SSEClient.
// Spec: https://html.spec.whatwg.org/multipage/server-sent-events.html#parsing-an-event-stream
//
// How it works, and why it is fast:
// - Line ends (CR, LF) are ASCII, and UTF-8 never uses bytes below 0x80 inside
//   a multi-byte sequence, so lines can be cut at the byte level and decoded
//   independently with exactly the result of decoding the whole stream first
//   (an unfinished sequence before a line end is a maximal invalid subpart
//   either way, and becomes one U+FFFD).
// - Each chunk is split at its last line end: the complete part is decoded with
//   ONE `TextDecoder.decode` call and parsed as a string (native `indexOf`,
//   sliced strings, no per-byte JavaScript); the tail, an unfinished line, is
//   kept as bytes. A huge line spread over thousands of chunks is therefore
//   collected as bytes and decoded once: linear time, bounded memory.

import type { SSEEvent } from "./parser.ts";

/** Default for `maxEventSize`: 16 MiB. */
export const DEFAULT_MAX_EVENT_SIZE = 16 * 1024 * 1024;

const LF = 10;
const CR = 13;
const COLON = 58;
const SPACE = 32;

/** Options of {@linkcode EventParser}. */
export interface EventParserOptions {
  lastEventId?: string | undefined;
  onRetry?: ((ms: number) => void) | undefined;
  onComment?: ((text: string) => void) | undefined;
  maxEventSize?: number | undefined;
}

/**
 * Parses event-stream bytes and hands each dispatched event to `onEvent`,
 * synchronously, in order.
 */
export class EventParser {
  // Called for every dispatched event.
  #onEvent: (event: SSEEvent) => void;
  #onRetry: ((ms: number) => void) | undefined;
  #onComment: ((text: string) => void) | undefined;
  #max: number;
  #decoder = new TextDecoder("utf-8", { ignoreBOM: true });

  // The unfinished line, as bytes: #pending[0, #pendingLength).
  #pending: Uint8Array = new Uint8Array(0);
  #pendingLength = 0;
  // Nothing decoded yet: a BOM may still come (§9.2.5: one, at the start).
  #atStart = true;
  // The last chunk ended in CR: an LF starting the next one belongs to it.
  #skipLF = false;

  // §9.2.6 buffers. #hasData distinguishes "data buffer empty" from a data
  // buffer holding only the LF of one empty `data` line.
  #data = "";
  #hasData = false;
  #type = "";
  #idBuffer: string;
  #lastEventId: string;
  #retry: number | undefined = undefined;

  // Position of the next ":" in the region being parsed (a cache that keeps
  // the search for colons in unusual lines linear).
  #colon = -1;

  constructor(
    onEvent: (event: SSEEvent) => void,
    options: EventParserOptions = {},
  ) {
    this.#onEvent = onEvent;
    this.#onRetry = options.onRetry;
    this.#onComment = options.onComment;
    const max = options.maxEventSize ?? DEFAULT_MAX_EVENT_SIZE;
    if (!(max > 0)) {
      throw new RangeError(
        `Invalid maxEventSize: expected a positive number, got ${max}`,
      );
    }
    this.#max = max;
    const seed = options.lastEventId ?? "";
    if (typeof seed !== "string") {
      throw new TypeError(
        `Invalid lastEventId: expected a string, got ${typeof seed}`,
      );
    }
    // Browsers keep the last event ID across reconnections; seeding the buffer
    // too is what makes an id-less event after a reconnect carry it.
    this.#idBuffer = seed;
    this.#lastEventId = seed;
  }

  /** The last event ID committed at a blank line, or the seed. */
  get lastEventId(): string {
    return this.#lastEventId;
  }

  /** The last valid `retry` value, in milliseconds. */
  get retry(): number | undefined {
    return this.#retry;
  }

  /**
   * Forgets everything about the current stream except the last event ID and
   * the retry value: what a reconnection does. Called between connections.
   */
  reset(): void {
    this.#pendingLength = 0;
    this.#atStart = true;
    this.#skipLF = false;
    this.#data = "";
    this.#hasData = false;
    this.#type = "";
    this.#idBuffer = this.#lastEventId;
  }

  /** Parses one chunk of the stream. */
  push(chunk: Uint8Array): void {
    const length = chunk.length;
    let start = 0;
    if (this.#skipLF) {
      if (length === 0) return;
      this.#skipLF = false;
      if (chunk[0] === LF) start = 1;
    }
    // The end of the complete part: one past the last CR or LF. Usually the
    // last line end is close to the chunk's end, so look there in JavaScript
    // first and fall back to the native scans for long unfinished lines.
    let end = -1;
    const near = length - 256 > start ? length - 256 : start;
    for (let i = length - 1; i >= near; i--) {
      const byte = chunk[i];
      if (byte === LF || byte === CR) {
        end = i + 1;
        break;
      }
    }
    if (end === -1 && near > start) {
      const lf = chunk.lastIndexOf(LF, near - 1);
      const cr = chunk.lastIndexOf(CR, near - 1);
      const last = lf > cr ? lf : cr;
      if (last >= start) end = last + 1;
    }
    if (end === -1) {
      if (length > start) this.#append(chunk, start, length);
      return;
    }
    if (this.#pendingLength > 0) {
      // Join the unfinished line with the complete part, and decode once.
      this.#append(chunk, start, end);
      const n = this.#pendingLength;
      this.#pendingLength = 0;
      this.#decodeAndParse(this.#pending, 0, n);
    } else {
      this.#decodeAndParse(chunk, start, end);
    }
    if (end < length) this.#append(chunk, end, length);
  }

  #append(chunk: Uint8Array, from: number, to: number): void {
    const needed = this.#pendingLength + (to - from);
    if (needed > this.#max) this.#tooLarge();
    if (needed > this.#pending.length) {
      let size = this.#pending.length * 2;
      if (size < 1024) size = 1024;
      while (size < needed) size *= 2;
      const grown = new Uint8Array(size);
      grown.set(this.#pending.subarray(0, this.#pendingLength));
      this.#pending = grown;
    }
    this.#pending.set(chunk.subarray(from, to), this.#pendingLength);
    this.#pendingLength = needed;
  }

  #tooLarge(): never {
    throw new RangeError(
      `Event exceeds maxEventSize: more than ${this.#max} bytes are pending`,
    );
  }

  // bytes[from, to) ends with CR or LF.
  #decodeAndParse(bytes: Uint8Array, from: number, to: number): void {
    if (this.#atStart) {
      this.#atStart = false;
      // §9.2.5: one leading U+FEFF BOM is ignored; the decoder keeps it
      // (ignoreBOM) so that later U+FEFF survive whatever the chunking.
      if (
        bytes[from] === 0xef && bytes[from + 1] === 0xbb &&
        bytes[from + 2] === 0xbf
      ) {
        from += 3;
        if (from === to) return;
      }
    }
    const text = this.#decoder.decode(bytes.subarray(from, to));
    this.#parse(text);
  }

  // `text` ends with CR or LF. Hot path: keep it short.
  #parse(text: string): void {
    const n = text.length;
    let pos = 0;
    let lf = text.indexOf("\n");
    let cr = text.indexOf("\r");
    this.#colon = -1;
    while (pos < n) {
      if (lf !== -1 && lf < pos) lf = text.indexOf("\n", pos);
      if (cr !== -1 && cr < pos) cr = text.indexOf("\r", pos);
      let lineEnd: number;
      let next: number;
      if (cr === -1 || (lf !== -1 && lf < cr)) {
        lineEnd = lf;
        next = lf + 1;
      } else {
        lineEnd = cr;
        if (cr + 1 === n) {
          next = n;
          this.#skipLF = true; // the LF of this CRLF may begin the next chunk
        } else {
          next = text.charCodeAt(cr + 1) === LF ? cr + 2 : cr + 1;
        }
      }
      if (lineEnd === pos) this.#dispatch();
      else this.#line(text, pos, lineEnd);
      pos = next;
    }
  }

  // §9.2.6: one non-empty line text[start, end).
  #line(text: string, start: number, end: number): void {
    const first = text.charCodeAt(start);
    // Fast paths for the four field names followed by a colon.
    if (first === 100 /* d */) {
      if (
        start + 4 < end && text.charCodeAt(start + 4) === COLON &&
        text.charCodeAt(start + 1) === 97 &&
        text.charCodeAt(start + 2) === 116 &&
        text.charCodeAt(start + 3) === 97
      ) {
        this.#field(1, text, start + 5, end);
        return;
      }
    } else if (first === COLON) {
      // §9.2.6: a line starting with a colon is a comment.
      if (this.#onComment !== undefined) {
        let from = start + 1;
        if (from < end && text.charCodeAt(from) === SPACE) from++;
        this.#onComment(text.slice(from, end));
      }
      return;
    }
    let colon = this.#colon;
    if (colon < start) {
      colon = text.indexOf(":", start);
      if (colon === -1) colon = text.length;
      this.#colon = colon;
    }
    // No colon: the whole line is the field name, and the value is empty.
    const nameEnd = colon < end ? colon : end;
    const kind = fieldKind(text, start, nameEnd);
    if (kind !== 0) this.#field(kind, text, nameEnd + 1, end);
  }

  // `from` is just past the colon; §9.2.6 drops one leading space.
  #field(kind: number, text: string, from: number, end: number): void {
    if (from < end && text.charCodeAt(from) === SPACE) from++;
    const value = from < end ? text.slice(from, end) : "";
    switch (kind) {
      case 1: // data
        if (this.#hasData) {
          this.#data += "\n" + value;
        } else {
          this.#data = value;
          this.#hasData = true;
        }
        if (this.#data.length > this.#max) this.#tooLarge();
        break;
      case 2: // event
        this.#type = value;
        break;
      case 3: // id: ignored when it contains U+0000
        if (value.indexOf("\0") === -1) this.#idBuffer = value;
        break;
      case 4: // retry: only when all ASCII digits
        if (isDigits(value)) {
          const ms = Number(value);
          this.#retry = ms;
          this.#onRetry?.(ms);
        }
        break;
    }
  }

  // §9.2.6 "dispatch the event".
  #dispatch(): void {
    // Step 1: the ID is committed even when nothing is dispatched.
    this.#lastEventId = this.#idBuffer;
    if (!this.#hasData) {
      // Step 2: no data, no event; the type buffer is reset too.
      this.#type = "";
      return;
    }
    const event: SSEEvent = {
      type: this.#type === "" ? "message" : this.#type,
      data: this.#data,
      id: this.#lastEventId,
    };
    this.#data = "";
    this.#hasData = false;
    this.#type = "";
    this.#onEvent(event);
  }
}

// 1 data, 2 event, 3 id, 4 retry, 0 anything else (ignored).
function fieldKind(text: string, start: number, end: number): number {
  switch (end - start) {
    case 2:
      return text.startsWith("id", start) ? 3 : 0;
    case 4:
      return text.startsWith("data", start) ? 1 : 0;
    case 5:
      if (text.startsWith("event", start)) return 2;
      return text.startsWith("retry", start) ? 4 : 0;
    default:
      return 0;
  }
}

function isDigits(value: string): boolean {
  if (value.length === 0) return false;
  for (let i = 0; i < value.length; i++) {
    const c = value.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return true;
}
