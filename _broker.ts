// Copyright the sse authors. MIT license.
/**
 * The broker seam of {@linkcode SSEChannel}: where event ids come from, where
 * the history kept for resume lives, and how a published message reaches every
 * subscriber, in this process and in others. {@linkcode MemoryBroker} is the
 * in-process default; `redis.ts` holds the Redis Streams one.
 *
 * Writing a broker: implement {@linkcode SSEBroker}. The contract, which
 * {@linkcode SSEChannel} relies on for "no gap, no duplicate":
 *
 * 1. A stream is named by a string (the channel's `name`); one broker serves
 *    any number of streams, channels and (for a distributed broker) processes.
 * 2. `publish` assigns the id. Ids are strings without CR, LF or NUL (they go
 *    on the wire as an `id:` field), unique within a stream, ordered (a later
 *    publish gets a later id), and never reused, even after a restart: a
 *    client may present an id it got from an earlier incarnation.
 * 3. `publish` resolves once the entry is stored; from then on every current
 *    subscriber of the stream (in any process) will receive it. If it cannot
 *    be stored it rejects and delivers it to nobody.
 * 4. `subscribe` delivers entries to `onEntry` one at a time, in id order, each
 *    at most once: first every kept entry after `lastEventId` (when given and
 *    still covered by the kept history), then every entry published after,
 *    until `unsubscribe()`. No entry between the replayed ones and the live
 *    ones may be lost, even one published while `subscribe` is in progress.
 * 5. `resumed` is `false` when `lastEventId` was given but is not one of this
 *    stream's ids, or is older than the history kept (so some entries after it
 *    are gone); the subscription then delivers live entries only.
 * 6. Entries are shared between subscribers: subscribers treat them as
 *    read-only. `onEntry` is a synchronous callback that must not throw (a
 *    broker reports a throw, with `reportError` where the runtime has it, and
 *    goes on delivering).
 * 7. Every subscription of a stream sees an entry under the same id string:
 *    `SSEChannel` matches ids across subscriptions. It holds one subscription
 *    (without `lastEventId`) per channel for all its clients, plus one per
 *    resuming client, with its `Last-Event-ID`, which it drops as soon as that
 *    client has caught up with the shared one: `subscribe` and `unsubscribe`
 *    should be cheap, for example by sharing one reader per stream between a
 *    process's subscriptions.
 *
 * `tests/_broker_contract.ts` checks these rules against any broker.
 *
 * @module
 */

import type { SSEMessage } from "./encoder.ts";

/** One stored message, as a broker hands it out. */
export interface SSEBrokerEntry {
  /** Assigned by the broker: unique and ordered within a stream. */
  id: string;
  /** The topic it was published to; `""` when published without a topic. */
  topic: string;
  /**
   * The message as published, without `id` (the broker's id replaces it).
   * `data`, when present, is already a string: the channel JSON-encodes other
   * data before publishing, so entries are plain JSON-serialisable values.
   */
  message: SSEMessage;
}

/** A live subscription to one stream of a broker. */
export interface SSEBrokerSubscription {
  /**
   * `false` when `lastEventId` was given but is unknown or older than the
   * history kept (the channel then tells `init`, so the application can send
   * a snapshot); `true` otherwise.
   */
  readonly resumed: boolean;
  /** Stops delivery at once and releases everything the subscription holds. Idempotent. */
  unsubscribe(): void;
}

/**
 * Where ids, the history kept for resume, and live fan-out come from. One
 * broker serves many channels, keyed by the channel's `name`; a distributed
 * broker serves many processes.
 *
 * @example Subscribe to a stream, then publish to it
 * ```ts
 * import { MemoryBroker, type SSEBroker } from "@sse/sse/server";
 * import assert from "node:assert/strict";
 *
 * const broker: SSEBroker = new MemoryBroker();
 * const ids: string[] = [];
 * const subscription = await broker.subscribe("news", {}, (entry) => {
 *   ids.push(entry.id);
 * });
 * const id = await broker.publish("news", { topic: "", message: { data: "hi" } }, { replay: 100 });
 * assert.deepEqual(ids, [id]);
 * subscription.unsubscribe();
 * await broker.close();
 * ```
 */
export interface SSEBroker {
  /**
   * Stores the message in stream `name` and delivers it to that stream's
   * subscribers, in every process.
   *
   * @param name The stream (a channel's `name`).
   * @param entry The topic (`""` for none) and the message, without `id`.
   * @param options `replay`: how many entries the stream should keep for
   * resume (approximately, for brokers that trim lazily).
   * @returns The assigned id, once stored. Rejects, and delivers to nobody,
   * if the entry cannot be stored.
   */
  publish(
    name: string,
    entry: { topic: string; message: SSEMessage },
    options: { replay: number },
  ): Promise<string>;
  /**
   * Delivers to `onEntry`, in id order with no gap and no duplicate: first
   * every kept entry after `lastEventId` (when given and known), then every
   * entry published afterwards, until `unsubscribe()`. May call `onEntry`
   * before the returned promise resolves.
   *
   * @param name The stream.
   * @param options `lastEventId`: resume after this id.
   * @param onEntry Called with each entry, synchronously; must not throw.
   * @returns The subscription, once live.
   */
  subscribe(
    name: string,
    options: { lastEventId?: string },
    onEntry: (entry: SSEBrokerEntry) => void,
  ): Promise<SSEBrokerSubscription>;
  /**
   * Ends every subscription and releases connections and timers.
   *
   * @returns Once everything is released.
   */
  close(): Promise<void>;
}

/**
 * The in-process {@linkcode SSEBroker}, the default of `SSEChannel`.
 *
 * Ids look like `"m1a2b3c4d5-42"`: a prefix chosen at random for each broker
 * object (so an id from before a restart is never mistaken for a current one),
 * a dash, and a sequence number shared by all the broker's streams. Each
 * stream keeps its last `replay` entries in a ring for resume. Delivery is
 * synchronous: when `publish` resolves, every subscriber has had `onEntry`
 * called.
 *
 * @example Publish, then resume after an id
 * ```ts
 * import { MemoryBroker } from "@sse/sse/server";
 * import assert from "node:assert/strict";
 *
 * const broker = new MemoryBroker();
 * const first = await broker.publish("news", { topic: "", message: { data: "a" } }, { replay: 10 });
 * await broker.publish("news", { topic: "", message: { data: "b" } }, { replay: 10 });
 *
 * const seen: string[] = [];
 * const subscription = await broker.subscribe("news", { lastEventId: first }, (entry) => {
 *   seen.push(entry.message.data as string);
 * });
 * assert.equal(subscription.resumed, true);
 * assert.deepEqual(seen, ["b"]);
 * subscription.unsubscribe();
 * await broker.close();
 * ```
 */
export class MemoryBroker implements SSEBroker {
  /** Chosen at the first publish (see {@linkcode randomId}). */
  #prefix: string | undefined;
  #seq = 0;
  #streams = new Map<string, LocalStream>();
  #closed = false;

  /**
   * Stores the message and delivers it, synchronously, to every subscriber
   * of the stream.
   *
   * @param name The stream.
   * @param entry The topic (`""` for none) and the message; its `id`, if any,
   * is left out of the stored entry.
   * @param options `replay`: how many entries the stream keeps.
   * @returns The assigned id.
   */
  publish(
    name: string,
    entry: { topic: string; message: SSEMessage },
    options: { replay: number },
  ): Promise<string> {
    try {
      if (this.#closed) throw new TypeError("Cannot publish: broker is closed");
      const { topic, message, replay } = checkPublish(name, entry, options);
      this.#prefix ??= "m" + randomId();
      const seq = ++this.#seq;
      const stored: SSEBrokerEntry = {
        id: `${this.#prefix}-${seq}`,
        topic,
        message,
      };
      this.#stream(name).add(stored, seq, replay);
      return Promise.resolve(stored.id);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * Replays the kept entries after `lastEventId` (synchronously, before the
   * returned promise resolves), then delivers every new entry.
   *
   * @param name The stream.
   * @param options `lastEventId`: resume after this id.
   * @param onEntry Called with each entry; must not throw.
   * @returns The subscription.
   */
  subscribe(
    name: string,
    options: { lastEventId?: string },
    onEntry: (entry: SSEBrokerEntry) => void,
  ): Promise<SSEBrokerSubscription> {
    try {
      if (this.#closed) {
        throw new TypeError("Cannot subscribe: broker is closed");
      }
      const lastEventId = checkSubscribe(name, options, onEntry);
      const stream = this.#stream(name);
      let after: number | undefined;
      if (lastEventId !== undefined) {
        after = this.#sequenceOf(lastEventId);
        // Entries after an id older than the history kept are gone.
        if (after !== undefined && after < stream.evicted) after = undefined;
      }
      const release = stream.subscribe(onEntry, after);
      return Promise.resolve(
        new BrokerSubscription(
          lastEventId === undefined || after !== undefined,
          release,
        ),
      );
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * Ends every subscription and forgets every stream. Later calls to
   * `publish` and `subscribe` reject. Idempotent.
   *
   * @returns Once done.
   */
  close(): Promise<void> {
    this.#closed = true;
    for (const stream of this.#streams.values()) stream.close();
    this.#streams.clear();
    return Promise.resolve();
  }

  /** The sequence number an id of this broker carries, if it is one. */
  #sequenceOf(id: string): number | undefined {
    // Before the first publish, the prefix is undefined and matches nothing.
    const dash = id.lastIndexOf("-");
    if (dash < 0 || id.slice(0, dash) !== this.#prefix) return undefined;
    const digits = id.slice(dash + 1);
    const seq = Number(digits);
    // Only the canonical spelling is an id this broker gave out.
    if (!Number.isSafeInteger(seq) || seq < 1 || String(seq) !== digits) {
      return undefined;
    }
    return seq <= this.#seq ? seq : undefined;
  }

  #stream(name: string): LocalStream {
    let stream = this.#streams.get(name);
    if (stream === undefined) {
      stream = new LocalStream();
      this.#streams.set(name, stream);
    }
    return stream;
  }
}

/**
 * The subscription object every broker hands out: `resumed`, and an
 * `unsubscribe()` that runs the broker's release once. Internal: shared by
 * the brokers, not exported from `server.ts`.
 */
export class BrokerSubscription implements SSEBrokerSubscription {
  /** Whether the subscription resumed after its `lastEventId`. */
  readonly resumed: boolean;
  #release: (() => void) | undefined;

  /**
   * Wraps a release function.
   *
   * @param resumed See {@linkcode SSEBrokerSubscription.resumed}.
   * @param release Stops delivery and frees what the subscription holds.
   */
  constructor(resumed: boolean, release: () => void) {
    this.resumed = resumed;
    this.#release = release;
  }

  /** Runs the release, the first time only. */
  unsubscribe(): void {
    const release = this.#release;
    this.#release = undefined;
    release?.();
  }
}

/** One subscriber of a {@linkcode LocalStream}. */
interface Subscriber {
  onEntry: (entry: SSEBrokerEntry) => void;
  /** Only entries with a greater sequence number are delivered live. */
  after: number;
  active: boolean;
}

/**
 * One stream as one broker object holds it: its last entries, kept in a ring
 * for replay, and its subscribers in this process, to which it delivers
 * synchronously. Both {@linkcode MemoryBroker} and `BroadcastChannelBroker`
 * keep their streams in it; the ids, and which id stands for which position,
 * are theirs. Each entry comes with a sequence number from the broker,
 * greater than those of the entries before it (other streams may share the
 * counter, so they need not be contiguous). Internal: not exported from
 * `server.ts`.
 */
export class LocalStream {
  /** Ring buffer of kept entries; `#seqs[i]` is the sequence of `#ring[i]`. */
  #ring: (SSEBrokerEntry | undefined)[] = [];
  #seqs: number[] = [];
  /** Index of the oldest kept entry in `#ring`. */
  #start = 0;
  /** Number of kept entries. */
  #count = 0;
  /** The newest entry dropped from the ring: its sequence (0 if none), id. */
  #evicted = 0;
  #evictedId: string | undefined = undefined;
  /** Sequence of the newest entry added (0 if none). */
  #newest = 0;
  #subscribers = new Set<Subscriber>();

  /**
   * Sequence of the newest entry no longer kept (0 if none): replay after an
   * older position would leave a gap.
   *
   * @returns A sequence number.
   */
  get evicted(): number {
    return this.#evicted;
  }

  /**
   * Keeps an entry (the newest `replay` are kept) and delivers it to every
   * subscriber.
   *
   * @param entry The entry.
   * @param seq Its sequence number, greater than every earlier one's.
   * @param replay How many entries to keep.
   */
  add(entry: SSEBrokerEntry, seq: number, replay: number): void {
    this.#keep(entry, seq, replay);
    this.#newest = seq;
    for (const subscriber of this.#subscribers) {
      // A subscriber added while this loop runs already got this entry by
      // replay (it was kept before the loop), so only older ones get it here.
      if (subscriber.after >= seq) continue;
      try {
        subscriber.onEntry(entry);
      } catch (error) {
        reportUncaught(error);
      }
    }
  }

  /**
   * Where the entry with this id stands: its sequence if it is kept, or the
   * newest dropped one's if it is that one (nothing after it is gone).
   *
   * @param id An entry's id.
   * @returns Its sequence number, or `undefined` when it is neither.
   */
  sequenceOf(id: string): number | undefined {
    if (id === this.#evictedId) return this.#evicted;
    const capacity = this.#ring.length;
    // Newest first: a reconnecting client usually missed only a few.
    for (let i = this.#count - 1; i >= 0; i--) {
      const index = (this.#start + i) % capacity;
      if (this.#ring[index]!.id === id) return this.#seqs[index];
    }
    return undefined;
  }

  /**
   * Subscribes: delivers the kept entries with a sequence greater than
   * `after`, when given, at once, then every entry added later.
   *
   * @param onEntry Called with each entry; a throw is reported.
   * @param after Replay after this sequence; `undefined` for none.
   * @returns Stops delivery at once.
   */
  subscribe(
    onEntry: (entry: SSEBrokerEntry) => void,
    after: number | undefined,
  ): () => void {
    const subscriber: Subscriber = {
      onEntry,
      after: this.#newest,
      active: true,
    };
    if (after !== undefined) this.#replay(after, subscriber);
    // Delivery is synchronous, so nothing can be added between the replay
    // above and joining the set below: no gap, no duplicate.
    this.#subscribers.add(subscriber);
    return () => {
      subscriber.active = false;
      this.#subscribers.delete(subscriber);
    };
  }

  /** Ends every subscription. */
  close(): void {
    for (const subscriber of this.#subscribers) subscriber.active = false;
    this.#subscribers.clear();
  }

  /** Appends an entry to the ring, which holds at most `capacity` entries. */
  #keep(entry: SSEBrokerEntry, seq: number, capacity: number): void {
    if (this.#ring.length !== capacity) this.#resize(capacity);
    if (capacity === 0) {
      this.#evicted = seq;
      this.#evictedId = entry.id;
      return;
    }
    const ring = this.#ring;
    const seqs = this.#seqs;
    if (this.#count === capacity) {
      const start = this.#start;
      this.#evicted = seqs[start]!;
      this.#evictedId = ring[start]!.id;
      ring[start] = entry;
      seqs[start] = seq;
      this.#start = (start + 1) % capacity;
    } else {
      const index = (this.#start + this.#count) % capacity;
      ring[index] = entry;
      seqs[index] = seq;
      this.#count++;
    }
  }

  /** Rebuilds the ring with a new capacity, keeping the newest entries. */
  #resize(capacity: number): void {
    const ring = this.#ring;
    const seqs = this.#seqs;
    const start = this.#start;
    const count = this.#count;
    const keepCount = Math.min(count, capacity);
    const dropped = count - keepCount;
    if (dropped > 0) {
      const newestDropped = (start + dropped - 1) % ring.length;
      this.#evicted = seqs[newestDropped]!;
      this.#evictedId = ring[newestDropped]!.id;
    }
    const newRing = new Array<SSEBrokerEntry | undefined>(capacity);
    const newSeqs = new Array<number>(capacity).fill(0);
    for (let i = 0; i < keepCount; i++) {
      const from = (start + dropped + i) % ring.length;
      newRing[i] = ring[from];
      newSeqs[i] = seqs[from]!;
    }
    this.#ring = newRing;
    this.#seqs = newSeqs;
    this.#start = 0;
    this.#count = keepCount;
  }

  /** Delivers the kept entries with a sequence greater than `after`. */
  #replay(after: number, subscriber: Subscriber): void {
    const ring = this.#ring;
    const seqs = this.#seqs;
    const start = this.#start;
    const count = this.#count;
    const capacity = ring.length;
    // Sequences in the ring increase, but other streams may share the
    // counter, so they are not contiguous: binary search for the first one
    // after `after`.
    let low = 0;
    let high = count;
    while (low < high) {
      const middle = (low + high) >>> 1;
      if (seqs[(start + middle) % capacity]! <= after) low = middle + 1;
      else high = middle;
    }
    for (let i = low; i < count && subscriber.active; i++) {
      try {
        subscriber.onEntry(ring[(start + i) % capacity]!);
      } catch (error) {
        reportUncaught(error);
      }
    }
  }
}

/**
 * Checks the arguments of {@linkcode SSEBroker.publish}, as every broker
 * must, with the errors the contract names. Internal: shared by the brokers,
 * not exported from `server.ts`.
 *
 * @param name The stream name: a string.
 * @param entry The topic (a string) and the message (an object whose `data`,
 * if any, is a string).
 * @param options `replay`: a non-negative safe integer.
 * @returns The topic, the message without its `id` (the object given when it
 * has none), and `replay`.
 */
export function checkPublish(
  name: string,
  entry: { topic: string; message: SSEMessage },
  options: { replay: number },
): { topic: string; message: SSEMessage; replay: number } {
  checkName(name);
  const topic = entry?.topic;
  if (typeof topic !== "string") {
    throw new TypeError(
      `Invalid topic: expected a string, got ${typeof topic}`,
    );
  }
  const replay = options?.replay;
  if (!Number.isSafeInteger(replay) || replay < 0) {
    throw new RangeError(
      `Invalid replay: expected a non-negative integer, got ${replay}`,
    );
  }
  let message = entry.message;
  if (typeof message !== "object" || message === null) {
    throw new TypeError(
      `Invalid message: expected an object, got ${
        message === null ? "null" : typeof message
      }`,
    );
  }
  if (message.data !== undefined && typeof message.data !== "string") {
    throw new TypeError(
      `Invalid message data: a broker stores strings, got ${typeof message
        .data}`,
    );
  }
  // The broker assigns the id: the stored message has none.
  if (message.id !== undefined) {
    const { id: _, ...rest } = message;
    message = rest;
  }
  return { topic, message, replay };
}

/**
 * Checks the arguments of {@linkcode SSEBroker.subscribe}, as every broker
 * must. Internal: shared by the brokers, not exported from `server.ts`.
 *
 * @param name The stream name: a string.
 * @param options `lastEventId`: a string, if given.
 * @param onEntry A function.
 * @returns The `lastEventId` to resume after, if any.
 */
export function checkSubscribe(
  name: string,
  options: { lastEventId?: string },
  onEntry: (entry: SSEBrokerEntry) => void,
): string | undefined {
  checkName(name);
  if (typeof onEntry !== "function") {
    throw new TypeError(
      `Invalid onEntry: expected a function, got ${typeof onEntry}`,
    );
  }
  const lastEventId = options?.lastEventId;
  if (lastEventId !== undefined && typeof lastEventId !== "string") {
    throw new TypeError(
      `Invalid lastEventId: expected a string, got ${typeof lastEventId}`,
    );
  }
  return lastEventId;
}

function checkName(name: unknown): void {
  if (typeof name !== "string") {
    throw new TypeError(
      `Invalid stream name: expected a string, got ${typeof name}`,
    );
  }
}

/**
 * Eight random base-36 characters, for the part of a broker's ids that tells
 * its incarnations apart. Call it on first use, never in a constructor:
 * Cloudflare Workers refuse random values in global scope ("disallowed
 * operation"), where an application may well create its `SSEChannel`.
 * Internal: shared with `_broadcast_broker.ts`, not exported from `server.ts`.
 *
 * @returns A fresh random string of `[0-9a-z]{8}`.
 */
export function randomId(): string {
  const bytes = crypto.getRandomValues(new Uint8Array(8));
  let id = "";
  for (const byte of bytes) id += (byte % 36).toString(36);
  return id;
}

/**
 * Reports an error that no caller can catch (a throw from a callback): with
 * `reportError` where the runtime has it (Deno, Bun, Workers, browsers), so
 * it surfaces as an uncaught error, else (Node) with `console.error`.
 * Internal: shared with `_channel.ts`, not exported from `server.ts`.
 *
 * @param error What was thrown.
 */
export function reportUncaught(error: unknown): void {
  const report = (globalThis as { reportError?: (error: unknown) => void })
    .reportError;
  if (typeof report === "function") report(error);
  // deno-lint-ignore no-console
  else console.error(error);
}
