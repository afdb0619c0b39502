// Copyright the sse authors. MIT license.
// RedisBroker's read loop: one blocking XREAD, on a connection of its own,
// over every stream the process subscribes to (and a small wake stream of
// its own, to re-issue the read when a stream joins), fanned out to the
// local subscribers. Private: never exported from mod.ts or deno.json.

import {
  errorMessage,
  type SSEBrokerEntry,
  type SSEBrokerGap,
} from "./_broker.ts";
import { Pause } from "./_pause.ts";
import { backoff, type RedisLink } from "./_redis_link.ts";
import { entrySeq, eventId, type RawEntry, streamTag } from "./_redis_entry.ts";

/** One Redis stream read by a {@linkcode RedisReader}. */
export interface Stream {
  readonly name: string;
  readonly key: string;
  /** What follows the Redis id in this stream's event ids. */
  readonly tag: string;
  /** Id of the last entry read from Redis (`"0-0"` before any). */
  cursor: string;
  /**
   * The `seq` of the entry at `cursor` (see `APPEND`), if it has one: the
   * next entry read should have one more, or those in between are gone.
   */
  seq: number | undefined;
  /** Whether `cursor` is known, so the blocking read includes this stream. */
  watched: boolean;
  /** Settles when `cursor` is known. */
  ready: Promise<void>;
  subscribers: Set<Subscriber>;
  /** Entries fanned out so far: a subscriber gets those after its `from`. */
  delivered: number;
  /**
   * What its key holds when it is not a stream (written by another program:
   * `XREAD` refuses it, and every stream read with it): it is left out of
   * the read until it is a stream again, or gone.
   */
  wrongType: string | undefined;
}

/** One subscription's delivery state. */
export interface Subscriber {
  readonly onEntry: (entry: SSEBrokerEntry) => void;
  /** Told of entries lost before the next one delivered, if given. */
  readonly onGap: ((gap: SSEBrokerGap) => void) | undefined;
  /** The stream's `delivered` count when it joined. */
  readonly from: number;
  active: boolean;
}

/**
 * How long one blocking read waits for entries before it is re-issued, in ms.
 * Short enough that a reader whose Redis stopped answering notices soon
 * (after this plus `commandTimeout`); an idle process re-issues it twice a
 * minute, which costs Redis nothing.
 */
export const BLOCK_MS = 2_000;
/** Entries read per stream per `XREAD`, to bound one reply's size. */
const READ_COUNT = 1_000;
/**
 * About how many characters of entries one `XREAD` brings, at most: after
 * a reply, the next asks for as many entries per stream as this holds of
 * the largest entry in it (at least one, at most `READ_COUNT`).
 */
const READ_BYTES = 16 * 1024 * 1024;
/**
 * How many keys answered unasked the reader remembers having reported.
 */
const REPORTED_MAX = 1_000;
/** The wake stream expires this long after its last use, in ms. */
const WAKE_TTL_MS = 3_600_000;

/** What a {@linkcode RedisReader} needs from its broker. */
export interface RedisReaderOptions {
  /** The broker's connections. */
  link: RedisLink;
  /** The broker's key prefix. */
  prefix: string;
  /** Reports an error no caller can be told of; never throws. */
  report: (error: Error) => void;
  /** Decodes an entry; reports (once) and skips one it cannot decode. */
  decode(
    stream: Pick<Stream, "name" | "key" | "tag">,
    raw: RawEntry,
  ): SSEBrokerEntry | undefined;
}

/** The streams one broker reads, and the loop that reads them. */
export class RedisReader {
  #options: RedisReaderOptions;
  #streams = new Map<string, Stream>();
  /** Named at first use: Workers refuse random values in global scope. */
  #wakeKey = "";
  #wakeCursor = "0-0";
  #loop: Promise<void> | undefined;
  /** The read loop's wait after a failed `XREAD`. */
  #retryPause = new Pause();
  /** Keys `XREAD` answered with, unasked, already reported. */
  #strays = new Set<string>();
  #closed = false;

  /**
   * A reader; nothing is read until a stream is watched.
   *
   * @param options What it needs from its broker.
   */
  constructor(options: RedisReaderOptions) {
    this.#options = options;
  }

  /** The key of the wake stream, named at the first call. */
  get wakeKey(): string {
    if (this.#wakeKey === "") this.#wakeKey = this.#newWakeKey();
    return this.#wakeKey;
  }

  /** Cuts the loop's wait after a failure short: Redis is back. */
  wake(): void {
    this.#retryPause.cancel();
  }

  /**
   * Ends every subscription and the loop's wait; the loop itself ends when
   * its connection is closed.
   *
   * @returns The loop, to await after closing the connection.
   */
  close(): Promise<void> {
    this.#closed = true;
    for (const stream of this.#streams.values()) {
      for (const subscriber of stream.subscribers) subscriber.active = false;
      stream.subscribers.clear();
    }
    this.#streams.clear();
    this.#retryPause.cancel();
    return this.#loop ?? Promise.resolve();
  }

  #newWakeKey(): string {
    return `${this.#options.prefix}~wake:${crypto.randomUUID()}`;
  }

  /**
   * The stream of `name`, read by the loop from now on (until it has no
   * subscriber left).
   *
   * @param name The stream.
   * @returns Its state; its `ready` settles once the loop reads it.
   */
  watch(name: string): Stream {
    const stream = this.#streams.get(name);
    if (stream !== undefined) return stream;
    const key = this.#options.prefix + name;
    const created: Stream = {
      name,
      key,
      tag: streamTag(key),
      cursor: "0-0",
      seq: undefined,
      watched: false,
      ready: Promise.resolve(),
      subscribers: new Set(),
      delivered: 0,
      wrongType: undefined,
    };
    created.ready = this.#start(created);
    // Every subscriber awaits `ready`; this only keeps an unawaited rejection
    // from being reported when they have all left.
    created.ready.catch(() => {});
    this.#streams.set(name, created);
    this.#loop ??= this.#read();
    return created;
  }

  /**
   * Finds where the stream ends now: the loop reads on from there, so every
   * entry stored after this (in particular after `subscribe` resolves) is
   * delivered. `$` in `XREAD` would instead mean "after whatever is last when
   * the read is issued", which may be later.
   */
  async #start(stream: Stream): Promise<void> {
    try {
      const last = await this.#options.link.send(
        await this.#options.link.open(),
        [
          "XREVRANGE",
          stream.key,
          "+",
          "-",
          "COUNT",
          "1",
        ],
      ) as RawEntry[];
      stream.cursor = last[0]?.[0] ?? "0-0";
      stream.seq = last[0] && entrySeq(last[0][1]);
    } catch (error) {
      if (this.#streams.get(stream.name) === stream) {
        this.#streams.delete(stream.name);
      }
      throw new Error(
        `Cannot subscribe to ${JSON.stringify(stream.name)}: ${
          errorMessage(error)
        }`,
        { cause: error },
      );
    }
    stream.watched = true;
    if (this.#closed) return;
    // The blocking read in flight does not include this stream yet: wake it
    // up so it is re-issued. The wake stream has a cursor too, so a wake-up
    // that arrives before the read is processed still ends it at once.
    const writer = await this.#options.link.open();
    this.#options.link.send(writer, [
      "XADD",
      this.wakeKey,
      "MAXLEN",
      "1",
      "*",
      "w",
      "",
    ]).then(() =>
      this.#options.link.send(writer, [
        "PEXPIRE",
        this.wakeKey,
        String(WAKE_TTL_MS),
      ])
    ).catch((error) =>
      this.#options.link.fault(error, "Redis connection failed")
    );
  }

  /**
   * The read loop: one blocking `XREAD` over every watched stream (and the
   * wake stream), fanned out to the local subscribers, re-issued with each
   * stream's cursor. After a failure it waits (with backoff) and reads on
   * from the same cursors, so nothing Redis stored meanwhile is missed.
   */
  async #read(): Promise<void> {
    // Its own connection, as XREAD BLOCK holds it; with an offline queue, so
    // a read issued while Redis is unreachable waits for the reconnection.
    const reader = this.#options.link.reader();
    let failures = 0;
    /** Replies in a row that held a key the read did not ask for. */
    let strays = 0;
    /** Entries per stream the next read asks for: fewer when they are big. */
    let count = READ_COUNT;
    /** When streams left out for their key's type are looked at again. */
    let recheckAt = 0;
    while (!this.#closed) {
      const streams: Stream[] = [];
      let wrongTyped = false;
      for (const stream of this.#streams.values()) {
        if (!stream.watched) continue;
        if (stream.subscribers.size === 0) {
          // Nobody here listens any more; a later subscribe starts afresh.
          this.#streams.delete(stream.name);
          continue;
        }
        if (stream.wrongType === undefined) streams.push(stream);
        else wrongTyped = true;
      }
      if (wrongTyped && performance.now() >= recheckAt) {
        // Left out for a while: a stream again (or gone) reads on.
        recheckAt = performance.now() + BLOCK_MS;
        const fixed = await this.#checkTypes(
          [...this.#streams.values()].filter((stream) => stream.wrongType),
        ).catch(() => []);
        if (fixed.length > 0) continue;
      }
      const args = ["XREAD", "COUNT", String(count)];
      args.push("BLOCK", String(BLOCK_MS), "STREAMS");
      for (const stream of streams) args.push(stream.key);
      args.push(this.wakeKey);
      for (const stream of streams) args.push(stream.cursor);
      args.push(this.#wakeCursor);

      let reply: [string, RawEntry[]][] | null;
      try {
        reply = await this.#options.link.send(
          reader,
          args,
          BLOCK_MS,
        ) as typeof reply;
      } catch (error) {
        if (this.#closed) return;
        // A key of another type makes the whole read fail: find it, and read
        // the others without it.
        if (
          /^WRONGTYPE/.test(errorMessage(error)) &&
          (await this.#checkTypes(streams).catch(() => [])).length > 0
        ) {
          continue;
        }
        this.#options.link.fault(error, "Reading streams failed");
        // Cut short when the reader is connected again.
        await this.#retryPause.wait(backoff(failures++));
        continue;
      }
      failures = 0;
      if (this.#closed) return;
      this.#options.link.recovered();
      if (reply === null) continue;
      const byKey = new Map<string, Stream>();
      for (const stream of streams) byKey.set(stream.key, stream);
      let stray: string | undefined;
      let largest = 0;
      for (const [key, raw] of reply) {
        if (raw.length === 0) continue;
        for (const [, fields] of raw) {
          let size = 0;
          for (const field of fields) size += field.length;
          if (size > largest) largest = size;
        }
        if (key === this.wakeKey) {
          this.#wakeCursor = raw[raw.length - 1]![0];
          continue;
        }
        const stream = byKey.get(key);
        if (stream === undefined) {
          stray = key;
          continue;
        }
        for (const item of raw) {
          this.#follow(stream, item);
          const entry = this.#options.decode(stream, item);
          if (entry !== undefined) this.#fanOut(stream, entry);
        }
      }
      // A reply of READ_BYTES or so, whatever the size of the entries: a
      // reader behind by many big ones reads them a few at a time.
      count = Math.max(
        1,
        Math.min(READ_COUNT, Math.floor(READ_BYTES / Math.max(largest, 1))),
      );
      if (stray === undefined) {
        strays = 0;
      } else {
        // Entries under a key this broker did not ask for (stream names are
        // well-formed Unicode, so Redis hands back the very keys it was
        // given: a proxy in between may not). No cursor moves for them, so
        // the same read would return at once, forever: wait instead.
        const wait = backoff(strays++);
        this.#strayKey(stray, wait);
        await this.#retryPause.wait(wait);
      }
    }
  }

  /**
   * Looks at the type of each stream's key (and of the wake stream's):
   * marks and reports those that hold something else than a stream, and
   * clears those that are a stream again (or gone).
   *
   * @returns The streams whose mark changed (and a new wake stream, if its
   * key was taken).
   */
  async #checkTypes(streams: Stream[]): Promise<unknown[]> {
    const writer = await this.#options.link.open();
    const changed: unknown[] = [];
    const typeOf = async (key: string) =>
      await this.#options.link.send(writer, ["TYPE", key]) as string;
    for (const stream of streams) {
      const type = await typeOf(stream.key);
      const wrong = type === "stream" || type === "none" ? undefined : type;
      if (wrong === stream.wrongType) continue;
      stream.wrongType = wrong;
      changed.push(stream);
      if (wrong !== undefined) {
        this.#options.report(
          new TypeError(
            `Stream ${JSON.stringify(stream.name)} cannot be read: its key ${
              JSON.stringify(stream.key)
            } holds a ${wrong}, not a stream (written by another program); its subscribers get nothing until it is a stream again`,
          ),
        );
      }
    }
    const wake = await typeOf(this.wakeKey);
    if (wake !== "stream" && wake !== "none") {
      // Not ours any more: take another.
      this.#wakeKey = this.#newWakeKey();
      this.#wakeCursor = "0-0";
      changed.push(this.#wakeKey);
    }
    return changed;
  }

  /**
   * Moves the stream's cursor to an entry read, and reports what went
   * missing before it: `XREAD` returns what the stream still holds after the
   * cursor, so entries trimmed before this reader got to them (it fell
   * behind by more than the stream keeps) or deleted, or a stream dropped
   * with its count and started again, show only in the entries' `seq`.
   * Reported once per gap, and told to each subscriber's `onGap` before
   * the entry after it is delivered.
   */
  #follow(stream: Stream, [id, fields]: RawEntry): void {
    const seq = entrySeq(fields);
    const last = stream.seq;
    if (seq !== undefined && last !== undefined && seq !== last + 1) {
      const where = `stream ${JSON.stringify(stream.name)} (key ${
        JSON.stringify(stream.key)
      })`;
      const before = eventId(stream.cursor, stream.tag);
      const next = eventId(id, stream.tag);
      if (seq > last + 1) {
        const lost = seq - last - 1;
        this.#options.report(
          new Error(
            `Entries after ${before} and before ${next} of ${where} were trimmed or deleted before this broker read them: ${lost} ${
              lost === 1 ? "entry" : "entries"
            } (seq ${last + 1} to ${
              seq - 1
            }) lost to its subscribers, as it was behind by more than the stream keeps`,
          ),
        );
        this.#gap(stream, { after: before, before: next, lost });
      } else if (seq === 1) {
        this.#options.report(
          new Error(
            `The ${where} was dropped with its count (both keys evicted, flushed or deleted) and started again at ${next}: entries stored after ${before} that this broker had not read yet, if any, are lost to its subscribers`,
          ),
        );
        this.#gap(stream, { after: before, before: next, lost: undefined });
      }
    }
    stream.cursor = id;
    stream.seq = seq;
  }

  /**
   * Tells every subscriber that the next entry would reach (see `#fanOut`)
   * that entries before it were lost.
   */
  #gap(stream: Stream, gap: SSEBrokerGap): void {
    const position = stream.delivered + 1;
    for (const subscriber of stream.subscribers) {
      const { onGap } = subscriber;
      if (!subscriber.active || subscriber.from >= position || !onGap) {
        continue;
      }
      this.#call(stream, onGap, gap);
    }
  }

  /** Calls a subscriber's callback; what it throws is reported. */
  #call<T>(stream: Stream, callback: (value: T) => void, value: T): void {
    try {
      callback(value);
    } catch (error) {
      this.#options.report(
        new Error(
          `A subscriber of ${JSON.stringify(stream.name)} threw: ${
            errorMessage(error)
          }`,
          { cause: error },
        ),
      );
    }
  }

  /** Reports a key `XREAD` answered with that it was not asked for, once. */
  #strayKey(key: string, wait: number): void {
    if (this.#strays.has(key)) return;
    if (this.#strays.size >= REPORTED_MAX) this.#strays.clear();
    this.#strays.add(key);
    this.#options.report(
      new Error(
        `XREAD answered with entries of key ${
          JSON.stringify(key)
        }, which this broker did not ask for: skipped, and reading waits (${wait} ms, then longer) while it goes on`,
      ),
    );
  }

  /** Delivers a live entry to the subscribers that joined before it. */
  #fanOut(stream: Stream, entry: SSEBrokerEntry): void {
    const position = ++stream.delivered;
    for (const subscriber of stream.subscribers) {
      // One that joined during this loop (from inside an onEntry) starts
      // with the next entry.
      if (!subscriber.active || subscriber.from >= position) continue;
      this.#call(stream, subscriber.onEntry, entry);
    }
  }
}
