// Copyright the sse authors. MIT license.
/**
 * {@linkcode BroadcastChannelBroker}: an {@linkcode SSEBroker} that fans
 * events out between the Workers of one process with the platform's own
 * `BroadcastChannel`. Exported from `server.ts`.
 *
 * @module
 */

import {
  BrokerSubscription,
  checkHistory,
  checkPublish,
  checkSubscribe,
  checkWellFormed,
  entryProblem,
  errorReporter,
  randomId,
  settle,
  type SSEBroker,
  type SSEBrokerEntry,
  type SSEBrokerSubscribeOptions,
  type SSEBrokerSubscription,
} from "./_broker.ts";
import type { SSEMessage } from "./encoder.ts";
import {
  expireIn,
  historyBytes,
  type LocalStream,
  LocalStreams,
} from "./_local_stream.ts";

/** Options of {@linkcode BroadcastChannelBroker}. */
export interface BroadcastChannelBrokerOptions {
  /**
   * Prefix of the `BroadcastChannel` names: the stream `name` travels on the
   * channel named `prefix + name`. Brokers (in any Worker of the process)
   * with the same prefix share streams.
   * @default {"sse:"}
   */
  prefix?: string;
  /**
   * The most bytes of history each stream keeps in this Worker, on top of
   * the count a publish asks for (`replay`): the oldest entries are dropped
   * first, and an entry larger than this alone is delivered, then dropped at
   * once. An entry counts the length of its strings (data, event, comment,
   * id, topic): its size in bytes for ASCII text.
   *
   * @default {16777216} (16 MiB)
   */
  maxHistoryBytes?: number;
  /**
   * Milliseconds after which a stream that received no entry forgets its
   * history in this Worker, and is freed (its `BroadcastChannel` closed) if
   * nothing here subscribes to it. A stream that has no subscriber and keeps
   * nothing (`replay: 0`) is freed at once. `Infinity` keeps history until
   * `close()`.
   *
   * @default {86400000} (one day)
   */
  expireIn?: number;
  /**
   * Called with each error the broker catches: an entry from another Worker
   * that it cannot use (skipped; the error names the stream, the entry id
   * and the reason), or a subscriber's `onEntry` that threw. Must not throw.
   *
   * @default {(error) => console.error("BroadcastChannelBroker: " + error.message)}
   */
  onError?: (error: Error) => void;
}

/** What one broker posts to the others: an entry and how many to keep. */
interface Envelope {
  sse: 1;
  entry: SSEBrokerEntry;
  replay: number;
  /** The posting broker's origin id. */
  from: string;
  /** Its count of posts, on every stream: 1, 2, 3, … */
  post: number;
  /** Its `post` of its previous post on this stream; 0 when it knows none. */
  previous: number;
}

/** A stream's channel, and the last posts on it, by this broker and others. */
interface Link {
  channel: BroadcastChannel;
  /** This broker's last `post` on it; 0 for none. */
  posted: number;
  /** The last `post` received from each other broker (a few hundred). */
  heard: Map<string, number>;
}

/** The most brokers whose last post a stream remembers. */
const MAX_HEARD = 256;

const DEFAULT_PREFIX = "sse:";

/**
 * An {@linkcode SSEBroker} for the Workers of one process (a Deno `Worker`,
 * or any runtime whose `BroadcastChannel` reaches its workers): each
 * published entry is delivered to this Worker's subscribers at once and
 * posted on a `BroadcastChannel`, which the runtime delivers to the other
 * Workers of the process, where their brokers deliver it to theirs.
 *
 * It does not reach other processes or machines. On Deno Deploy it used to
 * link the isolates of Deploy Classic, which was shut down on 2026-07-20:
 * Deno Deploy isolates are now isolated from each other, so scale-out there
 * is `DenoKvBroker` (from `@sse/sse/kv`), and across servers `RedisBroker`
 * (from `@sse/sse/redis`).
 *
 * What the platform primitive gives, and what it does not:
 *
 * - **History is per Worker.** Each broker keeps the last `replay` entries of
 *   each stream it has seen (those published here and those that arrived
 *   from other Workers since it started listening), in the order they
 *   reached it, and only those are resume points there. A client that
 *   reconnects to the same Worker resumes exactly; one that lands on another
 *   Worker resumes there only if that Worker has its `Last-Event-ID`
 *   (otherwise `history` answers `null` and the application sends a
 *   snapshot), and entries published concurrently on two Workers may reach
 *   each in a different order. A Worker that starts later has no history.
 * - **Ordering is per publisher.** Entries from one Worker reach every other
 *   Worker in publish order. Ids are `<ms>-<seq>-<origin>`: a hybrid logical
 *   clock (never behind any id this Worker has seen, so an entry published
 *   in reaction to another gets a later id), then a random id of the
 *   publishing broker, which keeps ids unique and never valid across a
 *   restart.
 * - **No acknowledgement.** `publish` resolves once the entry is delivered
 *   here and handed to the runtime; delivery to other Workers is as reliable
 *   as the runtime's `BroadcastChannel`. Deno's keeps the last 256 messages
 *   of the process for a Worker too busy to read, and drops older ones: a
 *   broker that sees it lost entries from another broker (between two that
 *   arrived) forgets its history of the stream and calls each
 *   subscription's `onGap` (`lost` unknown), and reports it to `onError`.
 *
 * A stream is listened to from its first `publish` or `subscribe` while it
 * has a subscriber or keeps entries (up to `expireIn` after the last one
 * arrived), so that its history keeps growing while no client is connected;
 * a stream that holds nothing is freed, its `BroadcastChannel` closed. An entry from another Worker that is not a valid entry (its message
 * not a plain object, for one) is skipped and reported to `onError`, and of
 * a valid one only the fields an event is framed from are kept; messages on
 * the channel that are not this broker's envelopes are ignored.
 *
 * @example One broker per Worker; here two in one Worker
 * ```ts
 * import { BroadcastChannelBroker } from "@sse/sse/server";
 * import assert from "node:assert/strict";
 *
 * const here = new BroadcastChannelBroker();
 * const there = new BroadcastChannelBroker();
 * const { promise, resolve } = Promise.withResolvers<string>();
 * const subscription = await there.subscribe("news", (entry) => {
 *   resolve(entry.message.data as string);
 * });
 * await here.publish("news", { topic: "", message: { data: "hello" } }, { replay: 100 });
 * assert.equal(await promise, "hello");
 * subscription.unsubscribe();
 * await Promise.all([here.close(), there.close()]);
 * ```
 */
export class BroadcastChannelBroker implements SSEBroker {
  #prefix: string;
  #report: (error: Error) => void;
  /** This broker's random id, chosen at its first publish. */
  #origin: string | undefined;
  /** The hybrid logical clock: the newest time part seen, and its counter. */
  #time = 0;
  #seq = 0;
  #streams: LocalStreams;
  /** This broker's count of posts. */
  #posts = 0;
  /** The channel of each stream this broker holds. */
  #channels = new Map<string, Link>();
  #closed = false;

  /**
   * Creates a broker. Its random origin id is chosen at the first `publish`,
   * so that a broker can be created in a Worker's global scope.
   *
   * @param options The `BroadcastChannel` name `prefix`,
   * `maxHistoryBytes` and `onError`.
   * @throws {TypeError} When `prefix` is not a string (or not well-formed
   * Unicode), `maxHistoryBytes` not a number or `onError` not a function.
   * @throws {RangeError} When `maxHistoryBytes` is negative.
   */
  constructor(options: BroadcastChannelBrokerOptions = {}) {
    const { prefix = DEFAULT_PREFIX } = options;
    if (typeof prefix !== "string") {
      throw new TypeError(
        `Invalid prefix: expected a string, got ${typeof prefix}`,
      );
    }
    checkWellFormed(prefix, "prefix");
    this.#prefix = prefix;
    this.#report = errorReporter("BroadcastChannelBroker", options.onError);
    this.#streams = new LocalStreams({
      report: this.#report,
      maxBytes: historyBytes(options.maxHistoryBytes),
      expireIn: expireIn(options.expireIn),
      onFree: (name) => {
        this.#channels.get(name)?.channel.close();
        this.#channels.delete(name);
      },
    });
  }

  /**
   * Delivers the message to this Worker's subscribers, keeps it for
   * `history`, and posts it to the other Workers.
   *
   * @param name The stream.
   * @param entry The topic (`""` for none) and the message; its `id`, if any,
   * is left out of the stored entry.
   * @param options `replay`: how many entries each Worker keeps.
   * @returns The assigned id. Rejects with a `TypeError` or `RangeError` for
   * bad arguments, a `DataCloneError` for a message that cannot be posted,
   * and a `TypeError` once the broker is closed.
   */
  publish(
    name: string,
    entry: { topic: string; message: SSEMessage },
    options: { replay: number },
  ): Promise<string> {
    return settle(this.#closed, "publish", () => {
      const { topic, message, replay } = checkPublish(name, entry, options);
      const now = Date.now();
      const local = this.#stream(name, now);
      const stored: SSEBrokerEntry = {
        id: this.#nextId(),
        topic,
        message,
      };
      // Structured clone: the other Workers get their own copy, and a
      // message that cannot be cloned throws here, before anything happens.
      const link = this.#channels.get(name)!;
      const envelope: Envelope = {
        sse: 1,
        entry: stored,
        replay,
        from: this.#origin!,
        post: this.#posts + 1,
        previous: link.posted,
      };
      try {
        link.channel.postMessage(envelope);
        link.posted = ++this.#posts;
      } catch (error) {
        // Nothing kept: a stream made for it holds nothing.
        this.#streams.settle(local);
        throw error;
      }
      this.#keep(local, stored, replay, now);
      return stored.id;
    });
  }

  /**
   * Delivers every entry that reaches this broker from now on, from this
   * Worker or another.
   *
   * @param name The stream.
   * @param onEntry Called with each entry; must not throw (a throw goes to
   * `onError`).
   * @param options `onGap`: called when the runtime's `BroadcastChannel`
   * dropped entries from another Worker before they reached this one (see
   * the class notes), before the entry after them.
   * @returns The subscription. Rejects with a `TypeError` for bad arguments
   * or once the broker is closed.
   */
  subscribe(
    name: string,
    onEntry: (entry: SSEBrokerEntry) => void,
    options?: SSEBrokerSubscribeOptions,
  ): Promise<SSEBrokerSubscription> {
    return settle(this.#closed, "subscribe", () => {
      const onGap = checkSubscribe(name, onEntry, options);
      const local = this.#stream(name, Date.now());
      const release = local.subscribe(onEntry, onGap);
      return new BrokerSubscription(() => {
        release();
        this.#streams.settle(local);
      });
    });
  }

  /**
   * Up to `limit` entries this broker keeps after `after` (see the class
   * notes: history is per Worker).
   *
   * @param name The stream.
   * @param options `after` and `limit`.
   * @returns The entries, or `null` when this broker does not have `after`
   * as a resume point. Rejects with a `TypeError` or `RangeError` for bad
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
   * Ends every subscription, closes every `BroadcastChannel` and forgets the
   * history. Later calls to `publish`, `subscribe` and `history` reject.
   * Idempotent.
   *
   * @returns Once done.
   */
  close(): Promise<void> {
    this.#closed = true;
    this.#streams.close();
    for (const { channel } of this.#channels.values()) channel.close();
    this.#channels.clear();
    return Promise.resolve();
  }

  /** The next id: hybrid logical clock time, counter, origin. */
  #nextId(): string {
    const now = Date.now();
    if (now > this.#time) {
      this.#time = now;
      this.#seq = 0;
    } else if (this.#seq < Number.MAX_SAFE_INTEGER) {
      this.#seq++;
    } else {
      // The counter is full (an id from another Worker set it): the next
      // millisecond, so that ids stay unique and exact.
      this.#time++;
      this.#seq = 0;
    }
    this.#origin ??= randomId();
    return `${this.#time}-${this.#seq}-${this.#origin}`;
  }

  /** Moves the clock past a received id, so later ids here sort after it. */
  #observe(id: string): void {
    const [time, seq] = id.split("-", 2).map(Number);
    // A time at the largest safe integer would leave no next millisecond
    // for a full counter: such an id is kept, but not followed.
    if (
      !Number.isSafeInteger(time) || time! >= Number.MAX_SAFE_INTEGER ||
      !Number.isSafeInteger(seq)
    ) {
      return;
    }
    if (time! > this.#time || (time === this.#time && seq! > this.#seq)) {
      this.#time = time!;
      this.#seq = seq!;
    }
  }

  /**
   * Tells the stream's subscribers of posts lost on the way from another
   * broker: a runtime's `BroadcastChannel` may drop what a Worker too busy
   * to read fell behind on (Deno keeps the last 256 messages of the
   * process). Only seen between two posts received from the same broker.
   */
  #follow(local: LocalStream, envelope: Partial<Envelope>): void {
    const { from, post, previous, entry } = envelope as Envelope;
    if (
      typeof from !== "string" || !Number.isSafeInteger(post) ||
      !Number.isSafeInteger(previous)
    ) {
      return;
    }
    const { heard } = this.#channels.get(local.name)!;
    const last = heard.get(from);
    // Posts from one broker arrive in order: an older one is not its own.
    if (last !== undefined && post <= last) return;
    heard.delete(from);
    heard.set(from, post);
    if (heard.size > MAX_HEARD) heard.delete(heard.keys().next().value!);
    if (last === undefined || previous === 0 || previous === last) return;
    const before = entry.id;
    this.#report(
      new Error(
        `Lost entries of stream ${
          JSON.stringify(local.name)
        } before ${before}: the BroadcastChannel dropped them`,
      ),
    );
    local.gap({ after: undefined, before, lost: undefined });
  }

  /** The stream, listened to on its channel from now on. */
  #stream(name: string, now: number): LocalStream {
    this.#streams.sweep(now);
    const local = this.#streams.open(name, now);
    if (!this.#channels.has(name)) {
      const channel = new BroadcastChannel(this.#prefix + name);
      channel.onmessage = (event: MessageEvent) => {
        if (!this.#closed) this.#receive(name, event.data);
      };
      this.#channels.set(name, { channel, posted: 0, heard: new Map() });
    }
    return local;
  }

  /** Keeps an entry and delivers it; frees the stream if it keeps none. */
  #keep(
    local: LocalStream,
    entry: SSEBrokerEntry,
    replay: number,
    now: number,
  ): void {
    local.add(entry, replay);
    local.touched = now;
    this.#streams.settle(local);
  }

  /** Keeps an entry from another Worker and delivers it here. */
  #receive(name: string, data: unknown): void {
    // Messages that are not this broker's envelopes (same channel name,
    // other code) are none of its business.
    if (typeof data !== "object" || data === null) return;
    const { sse, entry, replay } = data as Partial<Envelope>;
    if (sse !== 1) return;
    const now = Date.now();
    const local = this.#stream(name, now);
    let problem = entryProblem(entry);
    // Structured clone keeps a Map, a Date or an array as such: not a
    // message.
    if (
      problem === undefined &&
      Object.getPrototypeOf(entry!.message) !== Object.prototype
    ) {
      problem = "the message is not a plain object";
    }
    if (problem === undefined && local.has(entry!.id)) {
      problem = "the id was received before";
    }
    if (
      problem === undefined && (!Number.isSafeInteger(replay) || replay! < 0)
    ) {
      problem = `the replay count is not a non-negative integer`;
    }
    if (problem !== undefined) {
      const id = (entry as { id?: unknown } | undefined)?.id;
      this.#report(
        new TypeError(
          `Skipped entry ${
            typeof id === "string"
              ? JSON.stringify(id)
              : `with a ${typeof id} id`
          } of stream ${JSON.stringify(local.name)}: ${problem}`,
        ),
      );
      // The stream may have expired just now: one that holds nothing is
      // freed, not listened to again.
      this.#streams.settle(local);
      return;
    }
    this.#follow(local, data as Partial<Envelope>);
    this.#observe(entry!.id);
    const { id, topic, message } = entry!;
    this.#keep(
      local,
      { id, topic, message: messageFields(message) },
      replay!,
      now,
    );
  }
}

/**
 * The fields of a message from another Worker that an event is framed
 * from. Its `id` is left out: the event id is the entry's, whatever its
 * message says. Any other field is left out too: it would be kept in the
 * history without counting against `maxHistoryBytes`.
 */
function messageFields(message: SSEMessage): SSEMessage {
  const { data, event, retry, comment } = message;
  const fields: SSEMessage = {};
  if (comment !== undefined) fields.comment = comment;
  if (event !== undefined) fields.event = event;
  if (retry !== undefined) fields.retry = retry;
  if (data !== undefined) fields.data = data;
  return fields;
}
