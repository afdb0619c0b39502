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

// Chunks shorter than this are scanned as bytes rather than decoded first.
const SMALL_CHUNK = 256;

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
    if (length - start < SMALL_CHUNK) this.#pushSmall(chunk, start);
    else this.#pushLarge(chunk, start);
  }

  // Large chunks: decode first, then find lines with the native string search
  // (much faster than scanning the bytes). Decoding is context-free after an
  // ASCII byte, so the text after the first line end is exactly what decoding
  // from there would give, even when the chunk starts inside a character.
  #pushLarge(chunk: Uint8Array, start: number): void {
    const bytes = start === 0 ? chunk : chunk.subarray(start);
    const text = this.#decoder.decode(bytes);
    const n = text.length;
    // One UTF-16 unit per byte means every byte decoded alone (ASCII or a
    // lone invalid byte), so string positions are byte positions.
    const aligned = n === bytes.length;
    // pos, and bytePos: the same place in bytes.
    let pos = 0;
    let bytePos = 0;
    if (this.#pendingLength > 0) {
      // The first line of this chunk finishes the pending one.
      const lf = text.indexOf("\n");
      const cr = text.indexOf("\r");
      const first = cr === -1 || (lf !== -1 && lf < cr) ? lf : cr;
      if (first === -1) {
        this.#append(bytes, 0, bytes.length);
        return;
      }
      const byteEnd = aligned ? first : firstLineEnd(bytes);
      this.#append(bytes, 0, byteEnd);
      this.#flushPending();
      pos = first + 1;
      if (first === cr) {
        if (pos === n) this.#skipLF = true;
        else if (text.charCodeAt(pos) === LF) pos++;
      }
      bytePos = byteEnd + (pos - first);
    } else if (this.#atStart) {
      this.#atStart = false;
      // §9.2.5: one leading U+FEFF BOM is ignored. The decoder keeps it
      // (ignoreBOM) so that a later U+FEFF survives whatever the chunking.
      if (text.charCodeAt(0) === 0xfeff) {
        pos = 1;
        bytePos = 3;
      }
    }
    const tail = this.#parse(text, pos);
    if (tail === pos) {
      // No further line ends here: keep the rest as the pending line.
      if (pos < n) this.#append(bytes, bytePos, bytes.length);
    } else if (tail < n) {
      this.#append(bytes, aligned ? tail : lastLineEnd(bytes), bytes.length);
    }
  }

  // Small chunks: find the last line end in the bytes, parse what precedes it
  // and keep the rest as bytes. Cheaper than a decoder call per tiny chunk.
  #pushSmall(chunk: Uint8Array, start: number): void {
    const length = chunk.length;
    let end = length;
    while (end > start) {
      const byte = chunk[end - 1];
      if (byte === LF || byte === CR) break;
      end--;
    }
    if (end === start) {
      if (length > start) this.#append(chunk, start, length);
      return;
    }
    this.#append(chunk, start, end);
    this.#flushPending();
    if (end < length) {
      // A CR that ended the complete part was not the chunk's last byte.
      this.#skipLF = false;
      this.#append(chunk, end, length);
    }
  }

  // Decodes and parses the pending bytes, which hold complete lines only
  // (the last may lack its line end: it ends where the caller found one).
  #flushPending(): void {
    let from = 0;
    const to = this.#pendingLength;
    const buffer = this.#pending;
    this.#pendingLength = 0;
    if (this.#atStart) {
      this.#atStart = false;
      if (buffer[0] === 0xef && buffer[1] === 0xbb && buffer[2] === 0xbf) {
        from = 3;
      }
    }
    const text = this.#decoder.decode(buffer.subarray(from, to));
    const last = text.charCodeAt(text.length - 1);
    if (last === LF || last === CR) {
      this.#parse(text, 0);
    } else {
      // A line whose end the caller consumed: parse it as one line.
      this.#colon = -1;
      if (text.length === 0) this.#dispatch();
      else this.#line(text, 0, text.length);
    }
    // Let a buffer that grew for a huge event go.
    if (buffer.length > 65536) this.#pending = new Uint8Array(0);
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

  // Parses the complete lines of text[pos, …) and returns where the
  // unfinished last line starts (text.length when there is none). Hot path.
  #parse(text: string, pos: number): number {
    const n = text.length;
    let lf = text.indexOf("\n", pos);
    let cr = text.indexOf("\r", pos);
    this.#colon = -1;
    while (true) {
      if (lf !== -1 && lf < pos) lf = text.indexOf("\n", pos);
      if (cr !== -1 && cr < pos) cr = text.indexOf("\r", pos);
      let lineEnd: number;
      let next: number;
      if (cr === -1 || (lf !== -1 && lf < cr)) {
        if (lf === -1) return pos;
        lineEnd = lf;
        next = lf + 1;
      } else {
        lineEnd = cr;
        next = cr + 1;
        if (next === n) this.#skipLF = true; // its LF may begin the next chunk
        else if (text.charCodeAt(next) === LF) next++;
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

// Offset of the first CR or LF in bytes (there is one).
function firstLineEnd(bytes: Uint8Array): number {
  let i = 0;
  while (true) {
    const byte = bytes[i];
    if (byte === LF || byte === CR) return i;
    i++;
  }
}

// Offset just past the last CR or LF in bytes (there is one).
function lastLineEnd(bytes: Uint8Array): number {
  let i = bytes.length;
  while (true) {
    const byte = bytes[i - 1];
    if (byte === LF || byte === CR) return i;
    i--;
  }
}
