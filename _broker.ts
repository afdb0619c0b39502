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
 * 2. `publish` assigns the id. Ids are printable ASCII (U+0021 to U+007E: they
 *    go on the wire as an `id:` field and come back as `Last-Event-ID`),
 *    unique within a stream, ordered (a later publish gets a later id), and
 *    never reused, even after a restart: a client may present an id it got
 *    from an earlier incarnation, which must not be taken for a current one.
 * 3. `publish` resolves once the entry is stored; from then on `history`
 *    returns it (until it leaves the kept history) and every current
 *    subscriber of the stream (in any process) will receive it. If it cannot
 *    be stored it rejects and delivers it to nobody.
 * 4. `subscribe` is live only: every entry whose publish resolves after the
 *    returned promise resolved reaches `onEntry` exactly once, in id order,
 *    until `unsubscribe()`. Entries published while `subscribe` is in
 *    progress may or may not be delivered; from the first entry delivered on,
 *    none is skipped. An entry a subscription delivered is in `history` by
 *    then. The one exception: a broker that reads a shared store, whose
 *    reader fell behind by more than the stream keeps, loses the entries
 *    trimmed before it read them; it calls the subscription's `onGap` once
 *    per gap, before the entry after it, and reports the gap through
 *    `onError`. `SSEChannel` then ends the clients that followed the live
 *    stream, so that they resume from `history` or get a snapshot.
 * 5. `history(name, { after, limit })` returns up to `limit` kept entries
 *    after `after`, oldest first: `[]` when `after` is the newest entry, and
 *    `null` when `after` is not a resume point of this stream (not an id this
 *    stream issued: another stream's, a future one, a malformed one, an
 *    earlier incarnation's; or one older than the kept history, so entries
 *    after it are gone). Calling it again with the last id of a page
 *    continues exactly. It rejects on a transient failure.
 * 6. Entries are shared between subscribers: subscribers treat them as
 *    read-only. Every subscription and every `history` call sees an entry
 *    under the same id string: `SSEChannel` matches ids across them. It holds
 *    one subscription per channel for all its clients, and pages a resuming
 *    client's missed entries from `history` as that client reads, until they
 *    meet the live ones.
 * 7. `onEntry` is a synchronous callback that must not throw. A broker reports
 *    a throw through its `onError` option and goes on delivering. A broker
 *    that reads entries written by others skips one it cannot decode and
 *    reports it the same way (with the stream, the entry id and the reason).
 *    The default `onError` writes one line to stderr, never a stack trace.
 * 8. `close()` ends every subscription, releases connections and timers, and
 *    completes in bounded time.
 *
 * `tests/_broker_contract.ts` checks these rules against any broker.
 *
 * @module
 */

import type { SSEMessage } from "./encoder.ts";
import { expireIn, historyBytes, LocalStreams } from "./_local_stream.ts";

/** One stored message, as a broker hands it out. */
export interface SSEBrokerEntry {
  /** Assigned by the broker: printable ASCII, unique and ordered within a stream. */
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

/**
 * Entries a live subscription lost: stored in its stream, but gone (trimmed,
 * deleted, expired) before the broker's reader got to them, as
 * {@linkcode SSEBrokerSubscribeOptions.onGap} is told.
 */
export interface SSEBrokerGap {
  /**
   * The id of the newest entry before the gap that the broker knows of: the
   * last one its reader read (delivered, or skipped as undecodable), or the
   * stream's newest when the subscription started; `undefined` when it knows
   * none (the stream was empty, or the broker cannot name it).
   */
  after: string | undefined;
  /**
   * The id of the first entry after the gap: the next one the subscription
   * is delivered (unless it cannot be decoded: then it is skipped, and
   * reported).
   */
  before: string;
  /**
   * How many entries were lost, when the broker knows; `undefined` when it
   * does not (for instance a stream dropped whole and started again).
   */
  lost: number | undefined;
}

/**
 * Options of {@linkcode SSEBroker.subscribe}.
 *
 * @example Be told of the entries a subscription lost
 * ```ts
 * import { MemoryBroker, type SSEBrokerGap } from "@sse/sse/server";
 * import assert from "node:assert/strict";
 *
 * const broker = new MemoryBroker();
 * const gaps: SSEBrokerGap[] = [];
 * const subscription = await broker.subscribe("news", () => {}, {
 *   onGap: (gap) => gaps.push(gap),
 * });
 * await broker.publish("news", { topic: "", message: { data: "a" } }, { replay: 1 });
 * // MemoryBroker delivers each entry as it is published: it loses none.
 * assert.deepEqual(gaps, []);
 * subscription.unsubscribe();
 * await broker.close();
 * ```
 */
export interface SSEBrokerSubscribeOptions {
  /**
   * Called once per gap, synchronously and before the entries after it are
   * delivered, when the subscription lost entries: its broker's reader fell
   * behind by more than the stream keeps (or the store dropped entries it
   * had not read yet), or the runtime's `BroadcastChannel` dropped entries
   * from another Worker (`BroadcastChannelBroker`). `MemoryBroker`, which
   * delivers each entry as it is published, never calls it. The broker
   * also reports each gap through its own `onError`. Must not throw (a
   * throw goes to the broker's `onError`). `SSEChannel` ends every client
   * that follows the live stream (`onDisconnect` reason `"replay-lost"`), so
   * that each reconnects and resumes from the history, or gets
   * `resumed: false` when the history lost its position too.
   *
   * @default {undefined} (a gap is only reported through `onError`)
   */
  onGap?: (gap: SSEBrokerGap) => void;
}

/** A live subscription to one stream of a broker. */
export interface SSEBrokerSubscription {
  /** Stops delivery at once and releases what it holds. Idempotent. */
  unsubscribe(): void;
}

/**
 * Where ids, the history kept for resume, and live fan-out come from. One
 * broker serves many channels, keyed by the channel's `name`; a distributed
 * broker serves many processes.
 *
 * @example Subscribe to a stream, publish to it, then page its history
 * ```ts
 * import { MemoryBroker, type SSEBroker } from "@sse/sse/server";
 * import assert from "node:assert/strict";
 *
 * const broker: SSEBroker = new MemoryBroker();
 * const ids: string[] = [];
 * const subscription = await broker.subscribe("news", (entry) => {
 *   ids.push(entry.id);
 * });
 * const first = await broker.publish("news", { topic: "", message: { data: "a" } }, { replay: 100 });
 * const second = await broker.publish("news", { topic: "", message: { data: "b" } }, { replay: 100 });
 * assert.deepEqual(ids, [first, second]);
 * const page = await broker.history("news", { after: first, limit: 10 });
 * assert.deepEqual(page?.map((entry) => entry.id), [second]);
 * assert.equal(await broker.history("news", { after: "nope", limit: 10 }), null);
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
   * Live only: delivers to `onEntry`, in id order and exactly once, every
   * entry whose publish resolves after the returned promise resolved, until
   * `unsubscribe()`. Entries published while `subscribe` is in progress may
   * or may not be delivered. A broker that reads a shared store may lose
   * entries when its reader falls behind by more than the stream keeps:
   * it then tells `options.onGap`, once per gap, before the entries after
   * it.
   *
   * @param name The stream.
   * @param onEntry Called with each entry, synchronously; must not throw.
   * @param options `onGap`: told of entries the subscription lost.
   * @returns The subscription, once live. Rejects with a `TypeError` when
   * `onEntry`, or `onGap` if given, is not a function.
   */
  subscribe(
    name: string,
    onEntry: (entry: SSEBrokerEntry) => void,
    options?: SSEBrokerSubscribeOptions,
  ): Promise<SSEBrokerSubscription>;
  /**
   * Up to `limit` kept entries after `after`, oldest first. Calling it again
   * with the last id of the previous page continues exactly: no gap, no
   * duplicate.
   *
   * @param name The stream.
   * @param options `after`: an id the stream issued; `limit`: a positive
   * integer.
   * @returns The entries (`[]` when `after` is the newest), or `null` when
   * `after` is not a resume point of this stream: not one of its ids
   * (another stream's, a future one, a malformed one, an earlier
   * incarnation's), or older than the kept history. Rejects on a transient
   * failure.
   */
  history(
    name: string,
    options: { after: string; limit: number },
  ): Promise<SSEBrokerEntry[] | null>;
  /**
   * Ends every subscription and releases connections and timers.
   *
   * @returns Once everything is released.
   */
  close(): Promise<void>;
}

/** Options of {@linkcode MemoryBroker}. */
export interface MemoryBrokerOptions {
  /**
   * The most bytes of history each stream keeps, on top of the count a
   * publish asks for (`replay`): the oldest entries are dropped first, and
   * an entry larger than this alone is delivered, then dropped at once. An
   * entry counts the length of its strings (data, event, comment, id,
   * topic): its size in bytes for ASCII text.
   *
   * @default {16777216} (16 MiB)
   */
  maxHistoryBytes?: number;
  /**
   * Milliseconds after which a stream to which nothing was published forgets
   * its history (a client that comes back later is not resumed), and is
   * freed if nothing subscribes to it. A stream that has no subscriber and
   * keeps nothing (`replay: 0`) is freed at once. `Infinity` keeps history
   * until `close()`.
   *
   * @default {86400000} (one day)
   */
  expireIn?: number;
  /**
   * Called with each error the broker catches: a subscriber's `onEntry`
   * that threw. Must not throw.
   *
   * @default {(error) => console.error("MemoryBroker: " + error.message)}
   */
  onError?: (error: Error) => void;
}

/**
 * The in-process {@linkcode SSEBroker}, the default of `SSEChannel`.
 *
 * Ids look like `"m1a2b3c4d5-42"`: a prefix chosen at random for each broker
 * object (so an id from before a restart is never mistaken for a current one),
 * a dash, and a sequence number shared by all the broker's streams. Each
 * stream keeps its last `replay` entries for resume, for up to `expireIn`
 * after its last publish; only those ids (and the newest one dropped, after
 * which nothing is missing) are resume points of that stream. A stream that
 * keeps nothing and has no subscriber takes no memory. Delivery is
 * synchronous: when `publish` resolves, every subscriber has had `onEntry`
 * called.
 *
 * @example Publish, then page what came after an id
 * ```ts
 * import { MemoryBroker } from "@sse/sse/server";
 * import assert from "node:assert/strict";
 *
 * const broker = new MemoryBroker();
 * const first = await broker.publish("news", { topic: "", message: { data: "a" } }, { replay: 10 });
 * await broker.publish("news", { topic: "", message: { data: "b" } }, { replay: 10 });
 *
 * const page = await broker.history("news", { after: first, limit: 100 });
 * assert.deepEqual(page?.map((entry) => entry.message.data), ["b"]);
 * // The id belongs to "news", not to another stream.
 * assert.equal(await broker.history("sports", { after: first, limit: 100 }), null);
 * await broker.close();
 * ```
 */
export class MemoryBroker implements SSEBroker {
  /** Chosen at the first publish (see {@linkcode randomId}). */
  #prefix: string | undefined;
  #seq = 0;
  #streams: LocalStreams;
  #closed = false;

  /**
   * Creates a broker. Its random id prefix is chosen at the first `publish`,
   * so that a broker can be created in a Worker's global scope.
   *
   * @param options `maxHistoryBytes`, `expireIn` and `onError`.
   * @throws {TypeError} When `onError` is given and is not a function, or
   * `maxHistoryBytes` or `expireIn` is not a number.
   * @throws {RangeError} When `maxHistoryBytes` is negative, or `expireIn`
   * not positive.
   */
  constructor(options: MemoryBrokerOptions = {}) {
    this.#streams = new LocalStreams({
      report: errorReporter("MemoryBroker", options?.onError),
      maxBytes: historyBytes(options?.maxHistoryBytes),
      expireIn: expireIn(options?.expireIn),
    });
  }

  /**
   * Stores the message and delivers it, synchronously, to every subscriber
   * of the stream.
   *
   * @param name The stream.
   * @param entry The topic (`""` for none) and the message; its `id`, if any,
   * is left out of the stored entry.
   * @param options `replay`: how many entries the stream keeps.
   * @returns The assigned id. Rejects with a `TypeError` or `RangeError` for
   * bad arguments, and with a `TypeError` once the broker is closed.
   */
  publish(
    name: string,
    entry: { topic: string; message: SSEMessage },
    options: { replay: number },
  ): Promise<string> {
    return settle(this.#closed, "publish", () => {
      const { topic, message, replay } = checkPublish(name, entry, options);
      this.#prefix ??= "m" + randomId();
      const stored: SSEBrokerEntry = {
        id: `${this.#prefix}-${++this.#seq}`,
        topic,
        message,
      };
      const now = Date.now();
      this.#streams.sweep(now);
      const stream = this.#streams.open(name, now);
      stream.add(stored, replay);
      stream.touched = now;
      this.#streams.settle(stream);
      return stored.id;
    });
  }

  /**
   * Delivers every entry published to the stream from now on.
   *
   * @param name The stream.
   * @param onEntry Called with each entry; must not throw (a throw goes to
   * `onError`).
   * @param options `onGap` is checked, and never called: delivery is
   * synchronous, so no entry is lost.
   * @returns The subscription. Rejects with a `TypeError` for bad arguments
   * or once the broker is closed.
   */
  subscribe(
    name: string,
    onEntry: (entry: SSEBrokerEntry) => void,
    options?: SSEBrokerSubscribeOptions,
  ): Promise<SSEBrokerSubscription> {
    return settle(this.#closed, "subscribe", () => {
      checkSubscribe(name, onEntry, options);
      const now = Date.now();
      this.#streams.sweep(now);
      const stream = this.#streams.open(name, now);
      const release = stream.subscribe(onEntry);
      return new BrokerSubscription(() => {
        release();
        this.#streams.settle(stream);
      });
    });
  }

  /**
   * Up to `limit` kept entries of the stream after `after`.
   *
   * @param name The stream.
   * @param options `after` and `limit`.
   * @returns The entries, or `null` when `after` is not a resume point of
   * this stream. Rejects with a `TypeError` or `RangeError` for bad
   * arguments, and with a `TypeError` once the broker is closed.
   */
  history(
    name: string,
    options: { after: string; limit: number },
  ): Promise<SSEBrokerEntry[] | null> {
    return settle(this.#closed, "read history", () => {
      const { after, limit } = checkHistory(name, options);
      const now = Date.now();
      this.#streams.sweep(now);
      return this.#streams.get(name, now)?.history(after, limit) ?? null;
    });
  }

  /**
   * Ends every subscription and forgets every stream. Later calls to
   * `publish`, `subscribe` and `history` reject. Idempotent.
   *
   * @returns Once done.
   */
  close(): Promise<void> {
    this.#closed = true;
    this.#streams.close();
    return Promise.resolve();
  }
}

/**
 * The subscription object every broker hands out: an `unsubscribe()` that
 * runs the broker's release once. Internal: shared by the brokers, not
 * exported from `server.ts`.
 */
export class BrokerSubscription implements SSEBrokerSubscription {
  #release: (() => void) | undefined;

  /**
   * Wraps a release function.
   *
   * @param release Stops delivery and frees what the subscription holds.
   */
  constructor(release: () => void) {
    this.#release = release;
  }

  /** Runs the release, the first time only. */
  unsubscribe(): void {
    const release = this.#release;
    this.#release = undefined;
    release?.();
  }
}

// Printable ASCII, U+0021 to U+007E: an id goes on the wire in an `id:` field
// and comes back as a `Last-Event-ID` header.
const BROKER_ID = /^[\x21-\x7e]+$/;

/**
 * Whether a value can be a broker id: a non-empty string of printable ASCII
 * (U+0021 to U+007E). Internal: shared by the brokers, not exported from
 * `server.ts`.
 *
 * @param value Any value.
 * @returns `true` for a valid id.
 */
export function isBrokerId(value: unknown): value is string {
  return typeof value === "string" && BROKER_ID.test(value);
}

/**
 * Why a value read from a shared store is not an {@linkcode SSEBrokerEntry},
 * for a broker that reads entries written by other processes and must skip
 * (and report) those it cannot use. Internal: shared by the brokers, not
 * exported from `server.ts`.
 *
 * @param value A decoded entry: `{ id, topic, message }`.
 * @returns The reason, or `undefined` when it is a valid entry.
 */
export function entryProblem(value: unknown): string | undefined {
  if (typeof value !== "object" || value === null) {
    return "expected an object";
  }
  const { id, topic, message } = value as Partial<SSEBrokerEntry>;
  if (!isBrokerId(id)) return "the id is not a string of printable ASCII";
  if (typeof topic !== "string") return "the topic is not a string";
  if (typeof message !== "object" || message === null) {
    return "the message is not an object";
  }
  for (const field of ["data", "event", "comment"] as const) {
    const part = message[field];
    if (part !== undefined && typeof part !== "string") {
      return `the message ${field} is not a string`;
    }
  }
  if (message.retry !== undefined && typeof message.retry !== "number") {
    return "the message retry is not a number";
  }
  return undefined;
}

/**
 * Runs the synchronous body of a broker method and hands back its result, or
 * what it threw, as a promise: a broker method rejects, it never throws.
 * Once the broker is closed, it rejects without running it. Internal: shared
 * by the brokers, not exported from `server.ts`.
 *
 * @param closed Whether the broker is closed.
 * @param what The call, for the error: "publish", "subscribe", …
 * @param run The method's body.
 * @returns What `run` returned, or a rejection with what it threw (a
 * `TypeError` naming `what` when closed).
 */
export function settle<T>(
  closed: boolean,
  what: string,
  run: () => T,
): Promise<T> {
  try {
    if (closed) throw new TypeError(`Cannot ${what}: broker is closed`);
    return Promise.resolve(run());
  } catch (error) {
    return Promise.reject(error);
  }
}

/**
 * Checks the arguments of {@linkcode SSEBroker.publish}, as every broker
 * must, with the errors the contract names. Internal: shared by the brokers,
 * not exported from `server.ts`.
 *
 * @param name The stream name: a string of well-formed Unicode.
 * @param entry The topic (a string) and the message (an object whose `data`,
 * if any, is a string).
 * @param options `replay`: a non-negative safe integer.
 * @returns The topic, the message without its `id` (the object given when it
 * has none), and `replay`.
 * @throws {TypeError} For a name, topic or message of the wrong type, or a
 * name that is not well-formed Unicode.
 * @throws {RangeError} For a `replay` that is not a non-negative integer.
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
  const message = entry.message;
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
  return { topic, message: withoutId(message), replay };
}

/**
 * A message without its `id`: the broker's id is the event's, and a
 * message's own, framed after it, would become the client's `Last-Event-ID`.
 * Every broker stores a message without it, and drops it from an entry it
 * reads that another program wrote. Internal: shared by the brokers, not
 * exported from `server.ts`.
 *
 * @param message A message.
 * @returns The same object when it has no `id`, else a copy without it.
 */
export function withoutId(message: SSEMessage): SSEMessage {
  if (message.id === undefined) return message;
  const { id: _, ...rest } = message;
  return rest;
}

/**
 * Checks the arguments of {@linkcode SSEBroker.subscribe}, as every broker
 * must. Internal: shared by the brokers, not exported from `server.ts`.
 *
 * @param name The stream name: a string of well-formed Unicode.
 * @param onEntry A function.
 * @param options `undefined`, or an object whose `onGap`, if given, is a
 * function.
 * @returns `onGap`, if given.
 * @throws {TypeError} For a name, `onEntry`, `options` or `onGap` of the
 * wrong type, or a name that is not well-formed Unicode.
 */
export function checkSubscribe(
  name: string,
  onEntry: (entry: SSEBrokerEntry) => void,
  options?: SSEBrokerSubscribeOptions,
): SSEBrokerSubscribeOptions["onGap"] {
  checkName(name);
  if (typeof onEntry !== "function") {
    throw new TypeError(
      `Invalid onEntry: expected a function, got ${typeof onEntry}`,
    );
  }
  if (options === undefined) return undefined;
  if (typeof options !== "object" || options === null) {
    throw new TypeError(
      `Invalid subscribe options: expected an object, got ${
        options === null ? "null" : typeof options
      }`,
    );
  }
  const { onGap } = options;
  if (onGap !== undefined && typeof onGap !== "function") {
    throw new TypeError(
      `Invalid onGap: expected a function, got ${
        onGap === null ? "null" : typeof onGap
      }`,
    );
  }
  return onGap;
}

/**
 * Checks the arguments of {@linkcode SSEBroker.history}, as every broker
 * must. Internal: shared by the brokers, not exported from `server.ts`.
 *
 * @param name The stream name: a string of well-formed Unicode.
 * @param options `after`: a string (any string: one that is not an id of
 * the stream makes `history` resolve to `null`); `limit`: a positive safe
 * integer.
 * @returns `after` and `limit`.
 * @throws {TypeError} For a name or `after` that is not a string, or a name
 * that is not well-formed Unicode.
 * @throws {RangeError} For a `limit` that is not a positive integer.
 */
export function checkHistory(
  name: string,
  options: { after: string; limit: number },
): { after: string; limit: number } {
  checkName(name);
  const after = options?.after;
  if (typeof after !== "string") {
    throw new TypeError(
      `Invalid after: expected an id (a string), got ${typeof after}`,
    );
  }
  const limit = options.limit;
  if (!Number.isSafeInteger(limit) || limit < 1) {
    throw new RangeError(
      `Invalid limit: expected a positive integer, got ${limit}`,
    );
  }
  return { after, limit };
}

function checkName(name: unknown): void {
  if (typeof name !== "string") {
    throw new TypeError(
      `Invalid stream name: expected a string, got ${typeof name}`,
    );
  }
  checkWellFormed(name, "stream name");
}

/**
 * Checks that a string a broker sends to its backend as a name (a stream
 * name, a key prefix) is well-formed Unicode. A lone surrogate (as
 * `JSON.parse('"\\ud800"')` gives) cannot be written as UTF-8: Redis, Deno KV
 * and `BroadcastChannel` would store U+FFFD instead, so that two names share
 * one stream, and a reply names a key the broker never asked for. Internal:
 * shared by the brokers, not exported from `server.ts`.
 *
 * @param text The string.
 * @param what What it is, for the error: "stream name", "prefix", …
 * @throws {TypeError} When it holds a lone surrogate.
 */
export function checkWellFormed(text: string, what: string): void {
  if (text.isWellFormed()) return;
  throw new TypeError(
    `Invalid ${what}: ${
      JSON.stringify(text)
    } is not well-formed Unicode (it holds a lone surrogate)`,
  );
}

/**
 * The `onError` option of a broker (or of the channel), checked, as the
 * function to call with each error caught. The default writes one line to
 * stderr, `"<owner>: <message>"` (line breaks in the message written as
 * `\n`, `\r`), never a stack trace; when a user's function throws, the
 * error it was given and what it threw are written so, one line each. Errors never reach
 * `reportError`, which ends a Deno process. Internal: shared by the brokers
 * and the channel, not exported from `server.ts`.
 *
 * @param owner The class name that starts each default line, such as
 * `"MemoryBroker"`.
 * @param onError The option as given: a function, or `undefined`.
 * @returns A function that reports an error and never throws.
 * @throws {TypeError} When `onError` is neither.
 */
export function errorReporter(
  owner: string,
  onError: unknown,
): (error: Error) => void {
  if (onError === undefined) return (error) => logLine(owner, error);
  if (typeof onError !== "function") {
    throw new TypeError(
      `Invalid onError: expected a function, got ${typeof onError}`,
    );
  }
  return (error) => {
    try {
      onError(error);
    } catch (thrown) {
      // Both: what happened, and why it was not handled.
      logLine(owner, error);
      logLine(owner, new Error(`onError threw: ${errorMessage(thrown)}`));
    }
  };
}

// Line breaks as JavaScript writes them in a string, so that one report is
// one line of a log whatever its message holds.
const LINE_BREAK = /\r|\n|\u2028|\u2029/g;
const ESCAPED: Record<string, string> = {
  "\r": "\\r",
  "\n": "\\n",
  "\u2028": "\\u2028",
  "\u2029": "\\u2029",
};

function logLine(owner: string, error: Error): void {
  const message = String(error.message).replace(
    LINE_BREAK,
    (brk) => ESCAPED[brk]!,
  );
  // deno-lint-ignore no-console
  console.error(`${owner}: ${message}`);
}

/**
 * The message of anything thrown, for an error message of one's own.
 * Internal: shared by the brokers and the channel.
 *
 * @param error What was thrown.
 * @returns Its `message` when it has one, else its string form.
 */
export function errorMessage(error: unknown): string {
  if (error instanceof Error) return error.message;
  try {
    return String(error);
  } catch {
    return typeof error;
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
