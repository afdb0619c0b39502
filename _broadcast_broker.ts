// Copyright the sse authors. MIT license.
/**
 * {@linkcode BroadcastChannelBroker}: an {@linkcode SSEBroker} that fans
 * events out across isolates with the platform's own `BroadcastChannel`
 * (Deno Deploy, workers, browsers' workers), with no server to run. Exported
 * from `server.ts`.
 *
 * @module
 */

import {
  BrokerSubscription,
  checkPublish,
  checkSubscribe,
  LocalStream,
  randomId,
  type SSEBroker,
  type SSEBrokerEntry,
  type SSEBrokerSubscription,
} from "./_broker.ts";
import type { SSEMessage } from "./encoder.ts";

/** Options of {@linkcode BroadcastChannelBroker}. */
export interface BroadcastChannelBrokerOptions {
  /**
   * Prefix of the `BroadcastChannel` names: the stream `name` travels on the
   * channel named `prefix + name`. Brokers (in any isolate) with the same
   * prefix share streams.
   * @default {"sse:"}
   */
  prefix?: string;
}

/** What one broker posts to the others: an entry and how many to keep. */
interface Envelope {
  sse: 1;
  entry: SSEBrokerEntry;
  replay: number;
}

/** One stream as this instance has seen it. */
interface Stream {
  channel: BroadcastChannel;
  /** Kept entries in the order they reached this instance; subscribers. */
  local: LocalStream;
}

const DEFAULT_PREFIX = "sse:";

/**
 * An {@linkcode SSEBroker} for Deno Deploy and other multi-isolate runtimes:
 * each published entry is delivered to this isolate's subscribers at once and
 * posted on a `BroadcastChannel`, which the runtime delivers to every other
 * isolate of the application, where the brokers deliver it to theirs.
 *
 * What the platform primitive gives, and what it does not:
 *
 * - **Replay is per instance.** Each broker keeps the last `replay` entries of
 *   each stream it has seen (those published here and those that arrived from
 *   other isolates since it started listening), in the order they reached it.
 *   A client that reconnects to the same isolate resumes exactly; one that
 *   lands on another isolate resumes there only if that isolate has its
 *   `Last-Event-ID` (otherwise `resumed` is `false` and the application sends
 *   a snapshot), and entries published concurrently on two isolates may reach
 *   each in a different order. An isolate that starts later has no history.
 * - **Ordering is per publisher.** Entries from one isolate reach every other
 *   isolate in publish order. Ids are `<ms>-<seq>-<origin>`: a hybrid logical
 *   clock (never behind any id this isolate has seen, so an entry published
 *   in reaction to another gets a later id), then a random id of the
 *   publishing broker, which keeps ids unique and never valid across a
 *   restart. Entries from different isolates published within the broadcast
 *   delay have no agreed order.
 * - **No acknowledgement.** `publish` resolves once the entry is delivered
 *   here and handed to the runtime; delivery to other isolates is as reliable
 *   as the platform's `BroadcastChannel`. Use `RedisBroker` (from
 *   `@sse/sse/redis`) when every instance must see every event, in one order,
 *   and resume anywhere.
 *
 * A stream is listened to from its first `publish` or `subscribe` until
 * `close()`, so that its history keeps growing while no client is connected.
 *
 * @example One broker per isolate; here two in one process
 * ```ts
 * import { BroadcastChannelBroker } from "@sse/sse/server";
 * import assert from "node:assert/strict";
 *
 * const here = new BroadcastChannelBroker();
 * const there = new BroadcastChannelBroker();
 * const { promise, resolve } = Promise.withResolvers<string>();
 * const subscription = await there.subscribe("news", {}, (entry) => {
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
  /** This broker's random id, chosen at its first publish. */
  #origin: string | undefined;
  /** The hybrid logical clock: the newest time part seen, and its counter. */
  #time = 0;
  #seq = 0;
  /** Entries that reached this instance: their order here, for LocalStream. */
  #arrivals = 0;
  #streams = new Map<string, Stream>();
  #closed = false;

  /**
   * Creates a broker. Its random origin id is chosen at the first `publish`,
   * so that a broker can be created in a Worker's global scope.
   *
   * @param options The `BroadcastChannel` name `prefix`.
   */
  constructor(options: BroadcastChannelBrokerOptions = {}) {
    const { prefix = DEFAULT_PREFIX } = options;
    if (typeof prefix !== "string") {
      throw new TypeError(
        `Invalid prefix: expected a string, got ${typeof prefix}`,
      );
    }
    this.#prefix = prefix;
  }

  /**
   * Delivers the message to this isolate's subscribers, keeps it for replay,
   * and posts it to the other isolates.
   *
   * @param name The stream.
   * @param entry The topic (`""` for none) and the message; its `id`, if any,
   * is left out of the stored entry.
   * @param options `replay`: how many entries each isolate keeps.
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
      const stream = this.#stream(name);
      const stored: SSEBrokerEntry = {
        id: this.#nextId(),
        topic,
        message,
      };
      // Structured clone: the other isolates get their own copy, and a
      // message that cannot be cloned throws here, before anything happens.
      const envelope: Envelope = { sse: 1, entry: stored, replay };
      stream.channel.postMessage(envelope);
      this.#receive(stream, stored, replay);
      return Promise.resolve(stored.id);
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * Replays the entries this instance keeps after `lastEventId`
   * (synchronously, before the returned promise resolves), then delivers
   * every new one, from this isolate or another.
   *
   * @param name The stream.
   * @param options `lastEventId`: resume after this id; `resumed` is `false`
   * when this instance does not have it (see the class notes).
   * @param onEntry Called with each entry; must not throw (a throw is
   * reported with `reportError`, or `console.error` where the runtime has
   * none).
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
      const { local } = this.#stream(name);
      // Only an id this instance still keeps, or the newest it dropped, resumes.
      const after = lastEventId === undefined
        ? undefined
        : local.sequenceOf(lastEventId);
      // Messages from other isolates arrive as tasks, so the replay and joining
      // happen with nothing reaching the stream in between.
      const release = local.subscribe(onEntry, after);
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
   * Ends every subscription, closes every `BroadcastChannel` and forgets the
   * history. Later calls to `publish` and `subscribe` reject. Idempotent.
   *
   * @returns Once done.
   */
  close(): Promise<void> {
    this.#closed = true;
    for (const stream of this.#streams.values()) {
      stream.local.close();
      stream.channel.close();
    }
    this.#streams.clear();
    return Promise.resolve();
  }

  /** The next id: hybrid logical clock time, counter, origin. */
  #nextId(): string {
    const now = Date.now();
    if (now > this.#time) {
      this.#time = now;
      this.#seq = 0;
    } else {
      this.#seq++;
    }
    this.#origin ??= randomId();
    return `${this.#time}-${this.#seq}-${this.#origin}`;
  }

  /** Moves the clock past a received id, so later ids here sort after it. */
  #observe(id: string): void {
    const [time, seq] = id.split("-", 2).map(Number);
    if (time === undefined || seq === undefined) return;
    if (time > this.#time || (time === this.#time && seq > this.#seq)) {
      this.#time = time;
      this.#seq = seq;
    }
  }

  #stream(name: string): Stream {
    let stream = this.#streams.get(name);
    if (stream !== undefined) return stream;
    const channel = new BroadcastChannel(this.#prefix + name);
    const created: Stream = { channel, local: new LocalStream() };
    channel.onmessage = (event: MessageEvent) => {
      if (this.#closed) return;
      const envelope = parseEnvelope(event.data);
      // Messages that are not ours (same name, other code) are ignored.
      if (envelope === undefined) return;
      this.#observe(envelope.entry.id);
      this.#receive(created, envelope.entry, envelope.replay);
    };
    this.#streams.set(name, created);
    stream = created;
    return stream;
  }

  /** Keeps an entry and delivers it to this instance's subscribers. */
  #receive(stream: Stream, entry: SSEBrokerEntry, replay: number): void {
    stream.local.add(entry, ++this.#arrivals, replay);
  }
}

function parseEnvelope(data: unknown): Envelope | undefined {
  if (typeof data !== "object" || data === null) return undefined;
  const { sse, entry, replay } = data as Partial<Envelope>;
  if (sse !== 1 || !Number.isSafeInteger(replay) || replay! < 0) {
    return undefined;
  }
  if (
    typeof entry !== "object" || entry === null ||
    typeof entry.id !== "string" || typeof entry.topic !== "string" ||
    typeof entry.message !== "object" || entry.message === null
  ) {
    return undefined;
  }
  return data as Envelope;
}
