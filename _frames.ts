// Copyright the sse authors. MIT license.
// A channel's encoded frames: each entry encoded once (the `id:` line and the
// frame) into one Uint8Array that every client is sent, live or replayed.
// Private: used by _fanout.ts and _channel.ts, never exported from mod.ts or
// deno.json.

import { encodeSSE, type SSEMessage } from "./encoder.ts";
import { describe } from "./_json.ts";
import { errorMessage, type SSEBrokerEntry } from "./_broker.ts";
import { IdWindow } from "./_resume.ts";

const encoder = new TextEncoder();
// A broker id goes on the wire as an `id:` field: §9.2.6 ignores one with
// NUL, and CR or LF would end the field early.
const BAD_ID = /[\r\n\0]/;

/** The most bytes of replayed frames a channel keeps for other resumes. */
const CACHE_BYTES = 16 * 1024 * 1024;
/** How many ids of skipped entries a channel remembers, not to report twice. */
const REPORTED = 1024;

/**
 * Encoded frames of replayed entries by id, so that a herd of clients that
 * resume past the same entries encodes each once and shares the bytes, as
 * live entries are shared. It keeps the newest `count` entries, and at most
 * `bytes` bytes. An entry that cannot be framed is kept as `null`, so it is
 * reported once, not once per client.
 */
export class FrameCache {
  #frames = new Map<string, Uint8Array | null>();
  #bytes = 0;
  #maxCount: number;
  #maxBytes: number;

  /**
   * @param count How many entries to keep.
   * @param bytes How many bytes of frames to keep.
   */
  constructor(count: number, bytes: number) {
    this.#maxCount = count;
    this.#maxBytes = bytes;
  }

  /** The frame of the entry with this id: `undefined` when not cached. */
  get(id: string): Uint8Array | null | undefined {
    return this.#frames.get(id);
  }

  /** Caches a frame (or `null`), forgetting the oldest beyond the bounds. */
  set(id: string, frame: Uint8Array | null): void {
    const frames = this.#frames;
    frames.set(id, frame);
    this.#bytes += frame?.byteLength ?? 0;
    while (frames.size > this.#maxCount || this.#bytes > this.#maxBytes) {
      const [oldest, old] = frames.entries().next().value!;
      frames.delete(oldest);
      this.#bytes -= old?.byteLength ?? 0;
    }
  }
}

/**
 * The frames of one channel's entries. A message published through the
 * channel was encoded by `publish` already (`published`), so its delivery
 * reuses that; an entry from elsewhere is encoded on delivery. An entry the
 * encoder refuses is skipped every time, and reported once: the ids of the
 * last REPORTED entries reported are remembered apart from the frames (which
 * a long replay pushes out of their cache).
 */
export class Frames {
  #name: string;
  #report: (error: Error) => void;
  /** Encoded frames (without the id line) of messages published here. */
  #bodies = new WeakMap<SSEMessage, string>();
  /** Frames of entries replayed from history, shared by resumes. */
  #replayed: FrameCache;
  /** Chunks of consecutive replayed frames, by first and last id. */
  #runs = new FrameCache(1024, CACHE_BYTES);
  /** Entries skipped and reported already. */
  #reported = new IdWindow(REPORTED);

  /**
   * @param name The channel's stream, for reports.
   * @param replay How many entries the channel replays.
   * @param report Where a skipped entry is reported.
   */
  constructor(name: string, replay: number, report: (error: Error) => void) {
    this.#name = name;
    this.#report = report;
    this.#replayed = new FrameCache(Math.max(replay, 100), CACHE_BYTES);
  }

  /** Remembers the body `publish` encoded for a message it stored. */
  published(message: SSEMessage, body: string): void {
    this.#bodies.set(message, body);
  }

  /**
   * The frame of an entry from the live subscription, encoded once for
   * every client: `undefined` (reported, and remembered as such) when it
   * cannot be framed.
   */
  live(entry: SSEBrokerEntry): Uint8Array | undefined {
    const frame = this.#encode(entry);
    // Reported once: a resume past it skips it without a word.
    if (frame === undefined && typeof entry?.id === "string") {
      this.#replayed.set(entry.id, null);
    }
    return frame;
  }

  /**
   * The frame of an entry read from history, shared by every resume that
   * passes it: `null` when it cannot be framed (reported once).
   */
  replayed(entry: SSEBrokerEntry): Uint8Array | null {
    const { id } = entry;
    let frame = this.#replayed.get(id);
    if (frame === undefined) {
      frame = this.#encode(entry) ?? null;
      if (typeof id === "string") this.#replayed.set(id, frame);
    }
    return frame;
  }

  /**
   * Consecutive frames as one chunk; `shared` when every client that gets
   * entries `first` to `last` gets exactly these frames (no topics, no
   * filter), so that the chunk is built once for all of them.
   */
  run(
    frames: Uint8Array[],
    first: string,
    last: string,
    shared: boolean,
  ): Uint8Array {
    if (frames.length === 1) return frames[0]!;
    const key = first + " " + last;
    let chunk = shared ? this.#runs.get(key) : undefined;
    if (chunk == null) {
      chunk = concat(frames);
      if (shared) this.#runs.set(key, chunk);
    }
    return chunk;
  }

  #encode(entry: SSEBrokerEntry): Uint8Array | undefined {
    // A broker may hand out anything (null included): skipped as below.
    const id = entry?.id;
    const message = entry?.message;
    let body = this.#bodies.get(message);
    try {
      if (typeof id !== "string" || BAD_ID.test(id)) {
        throw new TypeError(
          `Invalid broker entry: id must be a string without CR, LF or NUL: got ${
            JSON.stringify(id)
          }`,
        );
      }
      if (body === undefined) body = encodeSSE(withoutId(message));
      else this.#bodies.delete(message);
    } catch (error) {
      // A broker handed out an entry that cannot be framed: skip it rather
      // than break every client's stream, and say so once.
      const key = typeof id === "string" ? id : String(JSON.stringify(id));
      if (this.#reported.has(key)) return undefined;
      this.#reported.add(key);
      this.#report(
        new TypeError(
          `Skipped entry ${JSON.stringify(id)} of stream ${
            JSON.stringify(this.#name)
          }: ${errorMessage(error)}`,
          { cause: error },
        ),
      );
      return undefined;
    }
    return encoder.encode("id: " + id + "\n" + body);
  }
}

/**
 * Encodes what `init` returned.
 *
 * @param messages An iterable of messages.
 * @returns Their frames.
 * @throws {TypeError} When it is not iterable, or for a message `encodeSSE`
 * refuses (and its `RangeError`s).
 */
export function encodeAll(messages: Iterable<SSEMessage>): Uint8Array[] {
  if (typeof messages !== "object" || !(Symbol.iterator in messages)) {
    throw new TypeError(
      `Invalid init result: expected an iterable of messages, got ${
        describe(messages)
      }`,
    );
  }
  const frames: Uint8Array[] = [];
  for (const message of messages) {
    frames.push(encoder.encode(encodeSSE(message)));
  }
  return frames;
}

/**
 * The message without an `id` of its own: the broker's entry id alone goes
 * on the wire. A message that carries one (written by another program, or
 * handed out by a broker that keeps it) would put a second `id:` line after
 * the channel's, and the last one wins (§9.2.6: each `id` field sets the
 * last event ID buffer), so a client would resume from a forged id.
 */
function withoutId(message: SSEMessage): SSEMessage {
  if (message === null || typeof message !== "object" || !("id" in message)) {
    return message;
  }
  const { id: _, ...rest } = message;
  return rest;
}

function concat(chunks: Uint8Array[]): Uint8Array {
  let length = 0;
  for (const chunk of chunks) length += chunk.byteLength;
  const joined = new Uint8Array(length);
  let offset = 0;
  for (const chunk of chunks) {
    joined.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return joined;
}
