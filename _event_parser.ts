// Copyright the sse authors. MIT license.
// The synchronous event-stream parser behind SSEParserStream and SSEClient.
// Spec: https://html.spec.whatwg.org/multipage/server-sent-events.html#parsing-an-event-stream
//
// How it works, and why it is fast:
// - Bytes are decoded by one streaming TextDecoder, so a character split
//   across chunks decodes whole, and lines are found in the text with the
//   native string search (an order of magnitude faster than scanning bytes).
//   When no character can be split (the decoder holds nothing and the chunk
//   ends with an ASCII byte), a one-shot decode does the same for less.
// - Blank lines and the usual fields (`data:`, `id:`, `event:`) are handled
//   inline in the line loop; anything else goes through the general path.
// - The unfinished last line is kept as text and extended by concatenation,
//   which V8 does in constant time (a rope, flattened once when the line
//   ends): a huge line spread over thousands of chunks costs linear time.
// - Tiny chunks are staged as bytes and decoded together when a line ends or
//   the stage fills, so one-byte chunks do not cost a decoder call each.
// - The decoder keeps U+FEFF (ignoreBOM) and the parser drops one BOM at the
//   start itself: Deno's streaming decoder would otherwise drop a U+FEFF that
//   begins any decode() call's output, even mid-stream.
// - maxEventSize counts UTF-8 bytes, yet the hot path only compares lengths:
//   a UTF-16 code unit is at most 3 bytes, so text of at most max/3 units is
//   within the limit and text of more than max units is over it. Only text in
//   between is counted, and a growing line or data buffer is counted once
//   when it crosses max/3, then piece by piece as it grows: linear, and never
//   on ordinary events (max/3 is over 5 MiB by default).

import type { SSEEvent } from "./parser.ts";

/** Default for `maxEventSize`: 16 MiB. */
export const DEFAULT_MAX_EVENT_SIZE = 16 * 1024 * 1024;

// Chunks shorter than this are staged and decoded together.
const SMALL_CHUNK = 256;
const STAGE_SIZE = 4096;
const STREAM: TextDecodeOptions = { stream: true };

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
 * Parses event-stream bytes: `push` a chunk, then call `next` until it
 * returns `undefined` (every complete event of the chunk taken), before the
 * next `push`. Events are parsed as they are taken, so the last event ID is
 * that of the last event taken, and comments and `retry` fields are reported
 * in stream order between them.
 */
export class EventParser {
  #onRetry: ((ms: number) => void) | undefined;
  #onComment: ((text: string) => void) | undefined;
  // maxEventSize, in bytes, and the most code units sure to be within it.
  #max: number;
  #quick: number;
  #decoder = new TextDecoder("utf-8", { ignoreBOM: true });
  // Only ever used for one-shot decodes, so it never holds state.
  #wholeDecoder = new TextDecoder("utf-8", { ignoreBOM: true });
  // #decoder may hold the start of a character split across chunks.
  #split = false;

  // Small chunks staged before decoding: #stage[0, #staged).
  #stage = new Uint8Array(STAGE_SIZE);
  #staged = 0;
  // The unfinished last line, decoded, and its size in UTF-8 bytes once it
  // is over #quick code units (-1 until then).
  #tail = "";
  #tailBytes = -1;
  // Nothing decoded yet: a BOM may still come (§9.2.5: one, at the start).
  #atStart = true;
  // The last text ended in CR: an LF starting the next one belongs to it.
  #skipLF = false;

  // The decoded text being parsed, and where its next line starts.
  #text = "";
  #pos = 0;
  // Searches in #text, kept between calls to next() so that each runs once
  // per match: the next LF, CR and U+0000 at or after #pos (the length of
  // the text when there is none, -1 before the first search), and the next
  // ":" in a line of the general path.
  #lf = -1;
  #cr = -1;
  #nul = -1;
  #colon = -1;

  // §9.2.6 buffers. #hasData distinguishes "data buffer empty" from a data
  // buffer holding only the LF of one empty `data` line.
  #data = "";
  #hasData = false;
  // The size of #data in UTF-8 bytes once it is over #quick code units.
  #dataBytes = -1;
  #type = "";
  #idBuffer: string;
  #lastEventId: string;
  #retry: number | undefined = undefined;

  constructor(options: EventParserOptions = {}) {
    this.#onRetry = options.onRetry;
    this.#onComment = options.onComment;
    // Only undefined is "not given": null (from a JSON config, say) is not.
    const max: unknown = options.maxEventSize === undefined
      ? DEFAULT_MAX_EVENT_SIZE
      : options.maxEventSize;
    if (typeof max !== "number") {
      throw new TypeError(
        `Invalid maxEventSize: expected a number, got ${
          max === null ? "null" : typeof max
        }`,
      );
    }
    if (!(max > 0)) {
      throw new RangeError(
        `Invalid maxEventSize: expected a positive number, got ${max}`,
      );
    }
    this.#max = max;
    this.#quick = Math.floor(max / 3);
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
    this.#decoder = new TextDecoder("utf-8", { ignoreBOM: true });
    this.#split = false;
    this.#staged = 0;
    this.#tail = "";
    this.#tailBytes = -1;
    this.#atStart = true;
    this.#skipLF = false;
    this.#text = "";
    this.#pos = 0;
    this.#data = "";
    this.#hasData = false;
    this.#dataBytes = -1;
    this.#type = "";
    this.#idBuffer = this.#lastEventId;
  }

  /**
   * Takes the next chunk of the stream, once every event of the previous one
   * has been taken with {@linkcode EventParser.next}.
   */
  push(chunk: Uint8Array): void {
    const length = chunk.length;
    if (length < SMALL_CHUNK) {
      if (length === 0) return;
      if (this.#staged + length > STAGE_SIZE) this.#unstage();
      this.#stage.set(chunk, this.#staged);
      this.#staged += length;
      if (hasLineEnd(chunk)) {
        // Decode now: a line may have ended, and no event may wait.
        const text = this.#decode(this.#stage.subarray(0, this.#staged));
        this.#staged = 0;
        this.#begin(text);
      } else if (this.#staged > STAGE_SIZE - SMALL_CHUNK) {
        this.#unstage();
      } else if (this.#tail.length * 3 + this.#staged > this.#max) {
        // The staged bytes all extend the unfinished line.
        if (this.#tailSize() + this.#staged > this.#max) this.#tooLarge();
      }
      return;
    }
    if (this.#staged > 0) this.#unstage();
    this.#begin(this.#decode(chunk));
  }

  // Staged bytes hold no line end (a chunk with one is decoded at once):
  // decoded, they extend the unfinished line.
  #unstage(): void {
    let text = this.#decode(this.#stage.subarray(0, this.#staged));
    this.#staged = 0;
    if (text === "") return;
    if (this.#atStart) {
      this.#atStart = false;
      // §9.2.5: one U+FEFF at the very start of the stream is ignored.
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
    }
    this.#skipLF = false;
    this.#extendTail(text);
  }

  // Decodes the next bytes of the stream. When no character can be split at
  // either end (the streaming decoder holds nothing and the bytes end with an
  // ASCII byte), a one-shot decode gives the same text and costs less.
  #decode(bytes: Uint8Array): string {
    if (bytes[bytes.length - 1]! < 0x80) {
      if (!this.#split) {
        return this.#wholeDecoder.decode(bytes);
      }
      this.#split = false;
    } else {
      this.#split = true;
    }
    return this.#decoder.decode(bytes, STREAM);
  }

  #tooLarge(): never {
    throw new RangeError(
      `Event exceeds maxEventSize: more than ${this.#max} bytes are pending`,
    );
  }

  // The next decoded piece of the stream: finishes the unfinished line with
  // its first line end, and leaves the rest for next().
  #begin(text: string): void {
    const n = text.length;
    if (n === 0) return;
    let pos = 0;
    if (this.#atStart) {
      this.#atStart = false;
      // §9.2.5: one U+FEFF at the very start of the stream is ignored.
      if (text.charCodeAt(0) === 0xfeff) pos = 1;
    } else if (this.#skipLF) {
      this.#skipLF = false;
      if (text.charCodeAt(0) === LF) pos = 1;
    }
    if (this.#tail !== "") {
      // The first line end here finishes the unfinished line, which is not
      // blank: it dispatches nothing.
      const lf = text.indexOf("\n", pos);
      const cr = text.indexOf("\r", pos);
      const end = cr === -1 || (lf !== -1 && lf < cr) ? lf : cr;
      if (end === -1) {
        this.#extendTail(pos === 0 ? text : text.slice(pos));
        return;
      }
      const line = this.#tail + text.slice(pos, end);
      if (line.length > this.#quick) {
        if (this.#tailSize() + utf8Length(text, pos, end) > this.#max) {
          this.#tooLarge();
        }
      }
      this.#tail = "";
      this.#tailBytes = -1;
      this.#colon = -1;
      this.#line(line, 0, line.length);
      pos = end + 1;
      if (end === cr) {
        if (pos === n) this.#skipLF = true;
        else if (text.charCodeAt(pos) === LF) pos++;
      }
    }
    this.#text = text;
    this.#pos = pos;
    this.#lf = -1;
    this.#cr = -1;
    this.#nul = -1;
    this.#colon = -1;
  }

  // Appends to the unfinished line, within the limit.
  #extendTail(piece: string): void {
    this.#tail += piece;
    if (this.#tailBytes !== -1) {
      this.#tailBytes += utf8Length(piece, 0, piece.length);
      if (this.#tailBytes > this.#max) this.#tooLarge();
    } else if (this.#tail.length > this.#quick) {
      if (this.#tail.length > this.#max) this.#tooLarge();
      if (this.#tailSize() > this.#max) this.#tooLarge();
    }
  }

  // The unfinished line's size in UTF-8 bytes, counted once: from then on,
  // #extendTail adds each piece.
  #tailSize(): number {
    if (this.#tailBytes === -1) {
      this.#tailBytes = utf8Length(this.#tail, 0, this.#tail.length);
    }
    return this.#tailBytes;
  }

  /**
   * The next event of the chunks pushed so far, or `undefined` when every
   * complete one has been taken (the unfinished last line is kept for the
   * next chunk). Throws a `RangeError` when an event or line exceeds
   * `maxEventSize`.
   *
   * Hot path: blank lines and the usual fields, each directly followed by a
   * colon, are handled inline; other lines go through #line.
   */
  next(): SSEEvent | undefined {
    const text = this.#text;
    const n = text.length;
    let pos = this.#pos;
    if (pos >= n) return undefined;
    let lf = this.#lf;
    let cr = this.#cr;
    while (pos < n) {
      const first = text.charCodeAt(pos);
      if (first === LF || first === CR) {
        pos++;
        if (first === CR) {
          if (pos === n) this.#skipLF = true; // its LF may begin the next text
          else if (text.charCodeAt(pos) === LF) pos++;
        }
        // §9.2.6: a blank line dispatches.
        const event = this.#dispatch();
        if (event !== undefined) {
          this.#pos = pos;
          this.#lf = lf;
          this.#cr = cr;
          return event;
        }
        continue;
      }
      if (lf < pos) {
        lf = text.indexOf("\n", pos);
        if (lf === -1) lf = n;
      }
      if (cr < pos) {
        cr = text.indexOf("\r", pos);
        if (cr === -1) cr = n;
      }
      let end: number;
      let next: number;
      if (lf < cr) {
        end = lf;
        next = lf + 1;
      } else if (cr < n) {
        end = cr;
        next = cr + 1;
        if (next === n) this.#skipLF = true;
        else if (text.charCodeAt(next) === LF) next++;
      } else {
        break; // the unfinished last line
      }
      if (first === 100) { // d
        if (
          pos + 4 < end && text.charCodeAt(pos + 4) === COLON &&
          text.charCodeAt(pos + 1) === 97 && text.charCodeAt(pos + 2) === 116 &&
          text.charCodeAt(pos + 3) === 97
        ) {
          let from = pos + 5;
          if (from < end && text.charCodeAt(from) === SPACE) from++;
          const value = from < end ? text.slice(from, end) : "";
          if (!this.#hasData && next < n && text.charCodeAt(next) === LF) {
            // A one-line event, followed by a blank line: dispatch it now.
            this.#pos = next + 1;
            this.#lf = lf;
            this.#cr = cr;
            return this.#dispatchData(value);
          }
          this.#addData(value);
          pos = next;
          continue;
        }
      } else if (first === 105) { // i
        if (
          pos + 2 < end && text.charCodeAt(pos + 2) === COLON &&
          text.charCodeAt(pos + 1) === 100
        ) {
          let from = pos + 3;
          if (from < end && text.charCodeAt(from) === SPACE) from++;
          // An id containing U+0000 is ignored.
          let nul = this.#nul;
          if (nul < from) {
            nul = text.indexOf("\0", from);
            this.#nul = nul = nul === -1 ? n : nul;
          }
          if (nul >= end) {
            this.#idBuffer = from < end ? text.slice(from, end) : "";
          }
          pos = next;
          continue;
        }
      } else if (first === 101) { // e
        if (
          pos + 5 < end && text.charCodeAt(pos + 5) === COLON &&
          text.charCodeAt(pos + 1) === 118 &&
          text.charCodeAt(pos + 2) === 101 &&
          text.charCodeAt(pos + 3) === 110 && text.charCodeAt(pos + 4) === 116
        ) {
          let from = pos + 6;
          if (from < end && text.charCodeAt(from) === SPACE) from++;
          this.#type = from < end ? text.slice(from, end) : "";
          pos = next;
          continue;
        }
      }
      this.#line(text, pos, end);
      pos = next;
    }
    this.#pos = n;
    if (pos < n) this.#extendTail(text.slice(pos));
    return undefined;
  }

  #addData(value: string): void {
    if (this.#hasData) {
      this.#data += "\n" + value;
      if (this.#data.length > this.#quick) this.#countData(value);
    } else {
      this.#data = value;
      this.#hasData = true;
      if (value.length > this.#quick) this.#countData(value);
    }
  }

  // The data buffer is over #quick code units: count it in bytes, all of it
  // the first time, then each added line.
  #countData(added: string): void {
    const data = this.#data;
    if (data.length > this.#max) this.#tooLarge();
    this.#dataBytes = this.#dataBytes === -1
      ? utf8Length(data, 0, data.length)
      : this.#dataBytes + 1 + utf8Length(added, 0, added.length);
    if (this.#dataBytes > this.#max) this.#tooLarge();
  }

  // §9.2.6: one non-empty line text[start, end).
  #line(text: string, start: number, end: number): void {
    const first = text.charCodeAt(start);
    // Fast paths: a known field name directly followed by a colon (nearly
    // every line of a real stream) skips the general search below.
    switch (first) {
      case 100: // d
        if (
          start + 4 < end && text.charCodeAt(start + 4) === COLON &&
          text.startsWith("data", start)
        ) return this.#field(1, text, start + 5, end);
        break;
      case 101: // e
        if (
          start + 5 < end && text.charCodeAt(start + 5) === COLON &&
          text.startsWith("event", start)
        ) return this.#field(2, text, start + 6, end);
        break;
      case 105: // i
        if (
          start + 2 < end && text.charCodeAt(start + 2) === COLON &&
          text.charCodeAt(start + 1) === 100
        ) return this.#field(3, text, start + 3, end);
        break;
      case 114: // r
        if (
          start + 5 < end && text.charCodeAt(start + 5) === COLON &&
          text.startsWith("retry", start)
        ) return this.#field(4, text, start + 6, end);
        break;
      case COLON:
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
        this.#addData(value);
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

  // §9.2.6 "dispatch the event": the event, if there is one.
  #dispatch(): SSEEvent | undefined {
    // Step 1: the ID is committed even when nothing is dispatched.
    this.#lastEventId = this.#idBuffer;
    if (!this.#hasData) {
      // Step 2: no data, no event; the type buffer is reset too.
      this.#type = "";
      return undefined;
    }
    const data = this.#data;
    this.#data = "";
    this.#hasData = false;
    this.#dataBytes = -1;
    return this.#event(data);
  }

  // Dispatches an event whose one data line, value, has just been read.
  #dispatchData(value: string): SSEEvent {
    if (
      value.length > this.#quick &&
      utf8Length(value, 0, value.length) > this.#max
    ) this.#tooLarge();
    this.#lastEventId = this.#idBuffer;
    return this.#event(value);
  }

  // The end of dispatch, once the ID is committed and the data taken.
  #event(data: string): SSEEvent {
    const type = this.#type;
    this.#type = "";
    return {
      type: type === "" ? "message" : type,
      data,
      id: this.#lastEventId,
    };
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

// The UTF-8 size of text[start, end): 1 byte below U+0080, 2 below U+0800, 3
// for the rest of the BMP, 4 for a surrogate pair (2 per unit). Decoded text
// holds no lone surrogate.
function utf8Length(text: string, start: number, end: number): number {
  let bytes = end - start;
  for (let i = start; i < end; i++) {
    const c = text.charCodeAt(i);
    if (c >= 0x80) bytes += c < 0x800 || (c >= 0xd800 && c <= 0xdfff) ? 1 : 2;
  }
  return bytes;
}

// Whether a small chunk holds a CR or LF.
function hasLineEnd(chunk: Uint8Array): boolean {
  for (let i = chunk.length - 1; i >= 0; i--) {
    const byte = chunk[i];
    if (byte === LF || byte === CR) return true;
  }
  return false;
}
