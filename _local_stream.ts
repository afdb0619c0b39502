// Copyright the sse authors. MIT license.
// The streams of the in-process brokers (MemoryBroker, BroadcastChannelBroker):
// each one's kept entries and local subscribers (LocalStream), and the set of
// them, which frees a stream that holds nothing and expires one left idle
// (LocalStreams). Private: never exported from mod.ts or deno.json.

import {
  errorMessage,
  type SSEBrokerEntry,
  type SSEBrokerGap,
} from "./_broker.ts";

/** One subscriber of a {@linkcode LocalStream}. */
interface Subscriber {
  onEntry: (entry: SSEBrokerEntry) => void;
  onGap: ((gap: SSEBrokerGap) => void) | undefined;
  /** Only entries at a greater position are delivered to it. */
  after: number;
}

/**
 * One stream as one broker object holds it: its last entries, kept for
 * `history`, and its subscribers in this process, to which it delivers
 * synchronously. Both {@linkcode MemoryBroker} and `BroadcastChannelBroker`
 * keep their streams in it; the ids are theirs. Each entry gets a position
 * in the stream (1, 2, 3, … in the order entries are added); an id is a
 * resume point of the stream when it is kept, or is the newest one dropped
 * (nothing after it is missing). An entry added while another is being
 * delivered (a subscriber that publishes) is delivered right after it, so
 * every subscriber sees the entries in order. Internal: not exported from
 * `server.ts`.
 */
export class LocalStream {
  readonly name: string;
  /** Kept entries, oldest first, from index `#head`. */
  #entries: (SSEBrokerEntry | undefined)[] = [];
  #head = 0;
  /** Position of `#entries[#head]`; the newest is `#first + count - 1`. */
  #first = 1;
  /** Positions of the kept entries' ids, and of the newest dropped one. */
  #positions = new Map<string, number>();
  #droppedId: string | undefined;
  /** Bytes of the kept entries (see `entryBytes`), and the most kept. */
  #bytes = 0;
  #maxBytes: number;
  #subscribers = new Set<Subscriber>();
  /** Entries added during a delivery, with their positions, in order. */
  #queue: (SSEBrokerEntry | number)[] = [];
  #delivering = false;
  #report: (error: Error) => void;
  /** When an entry was last added (`Date.now()`), for the idle expiry. */
  touched = 0;

  /**
   * An empty stream.
   *
   * @param name Its name, for error reports.
   * @param maxBytes The most bytes of entries it keeps.
   * @param report Where a throwing subscriber is reported.
   */
  constructor(
    name: string,
    maxBytes: number,
    report: (error: Error) => void,
  ) {
    this.name = name;
    this.#maxBytes = maxBytes;
    this.#report = report;
  }

  /** Position of the newest entry added (0 before the first). */
  get #newest(): number {
    return this.#first + this.#entries.length - this.#head - 1;
  }

  /**
   * Keeps an entry (the newest `replay` are kept, within the stream's bytes)
   * and delivers it to every subscriber.
   *
   * @param entry The entry; its id must be new to the stream.
   * @param replay How many entries to keep.
   */
  add(entry: SSEBrokerEntry, replay: number): void {
    this.#entries.push(entry);
    this.#bytes += entryBytes(entry);
    const position = this.#newest;
    this.#positions.set(entry.id, position);
    this.#trim(replay);
    // Added from inside a delivery (a subscriber that publishes): delivered
    // once the current entry has reached every subscriber, so that every
    // subscriber sees ids in order.
    if (this.#delivering) {
      this.#queue.push(entry, position);
      return;
    }
    this.#delivering = true;
    try {
      this.#deliver(entry, position);
      const queue = this.#queue;
      for (let i = 0; i < queue.length; i += 2) {
        this.#deliver(queue[i] as SSEBrokerEntry, queue[i + 1] as number);
      }
    } finally {
      this.#queue = [];
      this.#delivering = false;
    }
  }

  #deliver(entry: SSEBrokerEntry, position: number): void {
    for (const subscriber of this.#subscribers) {
      // A subscriber added after the entry was published does not get it.
      if (subscriber.after >= position) continue;
      try {
        subscriber.onEntry(entry);
      } catch (error) {
        this.#report(
          new Error(
            `A subscriber of stream ${
              JSON.stringify(this.name)
            } threw on entry ${entry.id}: ${errorMessage(error)}`,
            { cause: error },
          ),
        );
      }
    }
  }

  /**
   * Whether an entry with this id was added and is still a resume point.
   *
   * @param id An id.
   * @returns `true` when `history(id, …)` would not be `null`.
   */
  has(id: string): boolean {
    return this.#positions.has(id);
  }

  /**
   * Up to `limit` kept entries after the one with id `after`.
   *
   * @param after An id.
   * @param limit A positive integer.
   * @returns The entries, oldest first; `null` when `after` is neither kept
   * nor the newest dropped id.
   */
  history(after: string, limit: number): SSEBrokerEntry[] | null {
    const position = this.#positions.get(after);
    if (position === undefined) return null;
    const from = this.#head + (position + 1 - this.#first);
    return this.#entries.slice(
      from,
      Math.min(from + limit, this.#entries.length),
    ) as SSEBrokerEntry[];
  }

  /**
   * Tells every subscriber of entries lost before the next one, and
   * forgets the history: it no longer holds every entry after its ids.
   *
   * @param gap The lost entries.
   */
  gap(gap: SSEBrokerGap): void {
    this.expire();
    for (const { onGap } of this.#subscribers) {
      try {
        onGap?.(gap);
      } catch (error) {
        this.#report(
          new Error(
            `A subscriber of stream ${
              JSON.stringify(this.name)
            } threw on a gap before entry ${gap.before}: ${
              errorMessage(error)
            }`,
            { cause: error },
          ),
        );
      }
    }
  }

  /**
   * Delivers every entry added from now on.
   *
   * @param onEntry Called with each entry; a throw is reported.
   * @param onGap Called by {@linkcode LocalStream.gap}; a throw is reported.
   * @returns Stops delivery at once.
   */
  subscribe(
    onEntry: (entry: SSEBrokerEntry) => void,
    onGap?: (gap: SSEBrokerGap) => void,
  ): () => void {
    const subscriber: Subscriber = { onEntry, onGap, after: this.#newest };
    this.#subscribers.add(subscriber);
    return () => this.#subscribers.delete(subscriber);
  }

  /** Whether it has no subscriber and keeps no entry: nothing to hold. */
  get empty(): boolean {
    return this.#subscribers.size === 0 &&
      this.#entries.length === this.#head;
  }

  /**
   * Forgets the history, as if every entry had expired: no id of it is a
   * resume point any more. Subscribers stay, and get the next entries.
   */
  expire(): void {
    this.#first += this.#entries.length - this.#head;
    this.#entries = [];
    this.#head = 0;
    this.#bytes = 0;
    this.#positions.clear();
    this.#droppedId = undefined;
  }

  /** Ends every subscription and forgets the history. */
  close(): void {
    this.#subscribers.clear();
    this.expire();
  }

  /**
   * Drops the oldest entries until at most `replay` are kept, in at most
   * the stream's bytes.
   */
  #trim(replay: number): void {
    const entries = this.#entries;
    let count = entries.length - this.#head;
    if (count <= replay && this.#bytes <= this.#maxBytes) return;
    while (count > replay || (count > 0 && this.#bytes > this.#maxBytes)) {
      const dropped = entries[this.#head]!;
      entries[this.#head++] = undefined;
      this.#bytes -= entryBytes(dropped);
      this.#first++;
      count--;
      // Only the newest dropped id stays a resume point.
      if (this.#droppedId !== undefined) {
        this.#positions.delete(this.#droppedId);
      }
      this.#droppedId = dropped.id;
    }
    // Compact once the dropped slots outnumber the kept entries.
    if (this.#head > 32 && this.#head > count) {
      this.#entries = entries.slice(this.#head);
      this.#head = 0;
    }
  }
}

/** Default `maxHistoryBytes`: 16 MiB per stream. */
const DEFAULT_HISTORY_BYTES = 16 * 1024 * 1024;

/**
 * Checks a `maxHistoryBytes` option: a non-negative number of bytes
 * (`Infinity` for no bound). Internal: shared by the in-memory brokers.
 *
 * @param value The option as given.
 * @returns The bound, the default when `undefined`.
 * @throws {TypeError} When it is not a number.
 * @throws {RangeError} When it is negative or NaN.
 */
export function historyBytes(value: unknown): number {
  if (value === undefined) return DEFAULT_HISTORY_BYTES;
  if (typeof value !== "number") {
    throw new TypeError(
      `Invalid maxHistoryBytes: expected a number of bytes, got ${typeof value}`,
    );
  }
  if (!(value >= 0)) {
    throw new RangeError(
      `Invalid maxHistoryBytes: expected a non-negative number of bytes, got ${value}`,
    );
  }
  return value;
}

/** An entry's size for `maxHistoryBytes`: the length of its strings. */
function entryBytes(entry: SSEBrokerEntry): number {
  const { message } = entry;
  return entry.id.length + entry.topic.length +
    (message.data as string | undefined ?? "").length +
    (message.event?.length ?? 0) + (message.comment?.length ?? 0) + 8;
}

/** Default `expireIn` of the in-process brokers: one day. */
const DEFAULT_EXPIRE_IN = 86_400_000;

/**
 * Checks an `expireIn` option: a positive number of milliseconds
 * (`Infinity` for never). Internal: shared by the in-memory brokers.
 *
 * @param value The option as given.
 * @returns The delay, the default when `undefined`.
 * @throws {TypeError} When it is not a number.
 * @throws {RangeError} When it is not positive.
 */
export function expireIn(value: unknown): number {
  if (value === undefined) return DEFAULT_EXPIRE_IN;
  if (typeof value !== "number") {
    throw new TypeError(
      `Invalid expireIn: expected a number of milliseconds, got ${typeof value}`,
    );
  }
  if (!(value > 0)) {
    throw new RangeError(
      `Invalid expireIn: expected a positive number of milliseconds, got ${value}`,
    );
  }
  return value;
}

/** Settings of {@linkcode LocalStreams}. */
export interface LocalStreamsOptions {
  /** The most bytes of entries each stream keeps. */
  maxBytes: number;
  /** A stream with no entry added for this long forgets its history, in ms. */
  expireIn: number;
  /** Where a throwing subscriber is reported. */
  report: (error: Error) => void;
  /** Called with a stream when it is freed, after it was created. */
  onFree?: (name: string) => void;
}

/** Streams looked at for the idle expiry, at most, per call of `sweep`. */
const SWEEP_STEP = 2;

/**
 * The streams of one in-process broker, by name. A stream that has no
 * subscriber and keeps no entry is freed at once (per-user streams must not
 * pile up); one with no entry added for `expireIn` forgets its history, and
 * is freed if nobody subscribes. That is checked without a timer: for the
 * stream a call touches, and for the least recently looked at ones, a few
 * per call and millisecond (each is moved to the end once looked at), so
 * every idle stream is reached after about as many calls as there are
 * streams.
 */
export class LocalStreams {
  #streams = new Map<string, LocalStream>();
  #options: LocalStreamsOptions;
  /** When `sweep` last looked. */
  #swept = 0;

  /**
   * An empty set.
   *
   * @param options Limits and callbacks.
   */
  constructor(options: LocalStreamsOptions) {
    this.#options = options;
  }

  /**
   * The stream of `name` if there is one; its history is forgotten first if
   * it expired.
   *
   * @param name The stream.
   * @param now `Date.now()`.
   * @returns The stream, or `undefined` (also once it expired and had no
   * subscriber).
   */
  get(name: string, now: number): LocalStream | undefined {
    const stream = this.#streams.get(name);
    if (stream === undefined || !this.#expired(stream, now)) return stream;
    stream.expire();
    stream.touched = now;
    this.settle(stream);
    return this.#streams.get(name);
  }

  /**
   * The stream of `name`, created when there is none.
   *
   * @param name The stream.
   * @param now `Date.now()`.
   * @returns The stream.
   */
  open(name: string, now: number): LocalStream {
    let stream = this.get(name, now);
    if (stream === undefined) {
      const { maxBytes, report } = this.#options;
      stream = new LocalStream(name, maxBytes, report);
      stream.touched = now;
      this.#streams.set(name, stream);
    }
    return stream;
  }

  /**
   * Frees the stream if it has no subscriber and keeps no entry.
   *
   * @param stream A stream of this set.
   */
  settle(stream: LocalStream): void {
    if (!stream.empty || this.#streams.get(stream.name) !== stream) return;
    this.#streams.delete(stream.name);
    this.#options.onFree?.(stream.name);
  }

  /**
   * Looks at the least recently looked at streams: forgets the history of
   * those that expired (and frees them if nobody subscribes).
   *
   * @param now `Date.now()`.
   */
  sweep(now: number): void {
    // At most once per millisecond: a burst of publishes pays nothing.
    if (now === this.#swept) return;
    this.#swept = now;
    for (let i = 0; i < SWEEP_STEP; i++) {
      const first = this.#streams.values().next();
      if (first.done) return;
      const stream = first.value;
      // To the end: the next call looks at the next one.
      this.#streams.delete(stream.name);
      this.#streams.set(stream.name, stream);
      if (this.#expired(stream, now)) {
        stream.expire();
        stream.touched = now;
        this.settle(stream);
      }
    }
  }

  /** Ends every subscription and forgets every stream. */
  close(): void {
    for (const stream of this.#streams.values()) stream.close();
    this.#streams.clear();
  }

  #expired(stream: LocalStream, now: number): boolean {
    return now - stream.touched >= this.#options.expireIn;
  }
}
