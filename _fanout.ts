// Copyright the sse authors. MIT license.
// The clients of an SSEChannel and how an entry reaches them: the fan-out
// (the hot path), catch-ups from history, slow clients, keep-alive, and how
// a client ends. Private: used by _channel.ts, never exported from mod.ts or
// deno.json.
//
// How an entry reaches a client (the hot path):
// - The channel holds ONE live broker subscription for all its clients. Each
//   entry from it is encoded once (the `id:` line plus the frame) into one
//   Uint8Array, and that same Uint8Array is enqueued to every matching
//   client: `#everyone` (clients without topics) plus the clients in
//   `#byTopic.get(entry.topic)`. Nothing is allocated per client per entry.
//   Deno.serve copies chunks out without detaching them (tested).
// - A client that resumes (`Last-Event-ID`) is sent what it missed from the
//   broker's `history`, a page at a time as it reads, until its position
//   meets the shared subscription's, which then takes over (see
//   _resume.ts): no gap, no duplicate, whatever the timing.
// - Until `init` has written its messages, entries for a client wait in its
//   backlog (after the retry hint), then follow `init`'s in order.
//
// Clients that fall behind: what the runtime has not taken yet waits in the
// client's backlog (shared frames: a reference each), up to `maxBacklog`
// bytes. So a burst that the publisher sends without yielding (nothing
// reaches a socket until it yields) reaches every reader whole, and clients
// that lag by the same stretch pin the same frames once. A client whose
// backlog would go above `maxBacklog` falls behind: it leaves the fan-out,
// keeps its backlog and its position (the id of the last entry it was
// written), and once the backlog has drained it is fed from the broker's
// history as it reads, through the same catch-up as a resume (_resume.ts),
// which hands it back to the fan-out where they meet; one whose position
// left the history meanwhile is ended ("replay-lost").
//
// Slow clients: a client is judged on whether it takes what it is sent,
// never on how much waits (DrainJudge in _client.ts): one that has more than
// `maxQueue` bytes waiting and takes nothing for `drainTimeout` is dropped.
// Its backlog is forgotten and its stream closed once the runtime has taken
// what the stream holds; if it has not after another `drainTimeout`, the
// stream is errored, so that the runtime closes a connection whose peer
// never reads. `close()` ends every stream the same way, with a grace of
// min(drainTimeout, CLOSE_GRACE).

import type { SSEMessage } from "./encoder.ts";
import { describe } from "./_json.ts";
import {
  startInterval,
  startTimeout,
  type Timer,
  timerDelay,
} from "./_timer.ts";
import { cutReason, KEEP_ALIVE_FRAME, OPENING_FRAME } from "./_http.ts";
import {
  errorMessage,
  isBrokerId,
  type SSEBroker,
  type SSEBrokerEntry,
  type SSEBrokerSubscribeOptions,
  type SSEBrokerSubscription,
} from "./_broker.ts";
import type {
  ChannelSettings,
  SSEDisconnectReason,
} from "./_channel_options.ts";
import {
  Client,
  type ClientEvents,
  type ClientLimits,
  CLOSED,
  CONNECTING,
  DrainJudge,
  OPEN,
  STREAM_QUEUE,
} from "./_client.ts";
import { Frames } from "./_frames.ts";
import { type SSEChannelClient, Tally } from "./_presence.ts";
import {
  historyPage,
  IdWindow,
  RECENT,
  Resume,
  type ResumeHost,
} from "./_resume.ts";

const encoder = new TextEncoder();
const KEEP_ALIVE_BYTES = encoder.encode(KEEP_ALIVE_FRAME);
const OPENING_BYTES = encoder.encode(OPENING_FRAME);
/** The most milliseconds `close()` waits for a stream's end to be taken. */
export const CLOSE_GRACE = 1000;

/**
 * The broker's subscription to a stream, as the contract says it is: an
 * object with an `unsubscribe` method. A broker that throws instead of
 * rejecting, or resolves to anything else, gives a rejection, so that the
 * connection fails as on a failed subscribe and the next one subscribes
 * again (a subscription the channel could never release is refused).
 *
 * @param broker The channel's broker.
 * @param name The channel's stream.
 * @param deliver Called with each live entry.
 * @param options `onGap`: called when the subscription lost entries (see
 * {@linkcode Fanout.gap}).
 * @returns The subscription.
 * @throws {TypeError} When the broker resolved to something else.
 */
export async function subscriptionOf(
  broker: SSEBroker,
  name: string,
  deliver: (entry: SSEBrokerEntry) => void,
  options?: SSEBrokerSubscribeOptions,
): Promise<SSEBrokerSubscription> {
  const subscription: unknown = await broker.subscribe(name, deliver, options);
  if (
    typeof (subscription as { unsubscribe?: unknown } | null)?.unsubscribe !==
      "function"
  ) {
    throw new TypeError(
      `Invalid subscription: the broker's subscribe resolved to ${
        describe(subscription)
      }, expected an object with an unsubscribe method`,
    );
  }
  return subscription as SSEBrokerSubscription;
}

/**
 * A channel's clients, from `connect` accepting one to its end, and the
 * delivery of the shared subscription's entries to them.
 */
export class Fanout<C> {
  /** Every client that has a stream, in any state but closed. */
  readonly clients: Set<Client<C>> = new Set();
  /** The counts behind presence and metrics. */
  readonly tally: Tally = new Tally();
  /** The channel's frames, encoded once for every client. */
  readonly frames: Frames;
  #settings: ChannelSettings<C>;
  #filter: ChannelSettings<C>["filter"];
  #report: (error: Error) => void;
  #maxBacklog: number;
  #limits: ClientLimits;
  /**
   * A stream that pulls only when it ran dry, counting chunks: the client
   * bounds its bytes (see _client.ts).
   */
  #strategy: QueuingStrategy<Uint8Array> = { highWaterMark: 0 };
  /** A filter result that is not a boolean was reported already. */
  #filterReported = false;
  /** Open clients without topics. */
  #everyone = new Set<Client<C>>();
  /** Open clients by topic. */
  #byTopic = new Map<string, Set<Client<C>>>();
  /** Open clients catching up from history. */
  #resuming = new Set<Client<C>>();
  /** The ids the shared subscription delivered last. */
  #sharedIds = new IdWindow(RECENT);
  /** An entry is being fanned out; those that arrive meanwhile wait. */
  #delivering = false;
  #waiting: SSEBrokerEntry[] = [];
  /** The keep-alive tick. */
  #timer: Timer | undefined;
  #drain: DrainJudge<C>;
  /** How long `close()` waits for a stream's end to be taken. */
  #grace: number;
  /** The broker calls in flight that a timer bounds: each one's give-up. */
  #reads = new Set<(error: Error) => void>();
  #closed = false;
  #events: ClientEvents<C> = {
    pull: (client) => this.#pulled(client),
    cancel: (client) => this.release(client, "client-closed"),
  };
  #host: ResumeHost<C>;
  /**
   * Told of every client released, whatever ended it: the channel wakes a
   * `connect` still waiting for that client (`init`, the broker).
   */
  onRelease: ((client: Client<C>) => void) | undefined;

  /** @param settings The channel's settings. */
  constructor(settings: ChannelSettings<C>) {
    this.#settings = settings;
    this.#filter = settings.filter;
    this.#report = settings.report;
    this.#maxBacklog = settings.maxBacklog;
    const streamQueue = Math.min(settings.maxQueue, STREAM_QUEUE);
    this.#limits = { streamQueue, slowAt: settings.maxQueue - streamQueue };
    this.frames = new Frames(settings.name, settings.replay, settings.report);
    this.#host = {
      shared: this.#sharedIds,
      maxBacklog: settings.maxBacklog,
      history: (after) => this.#history(after),
      frame: (client, entry) => this.#frameOf(client, entry),
      write: (client, frames, first, last) =>
        this.#writeRun(client, frames, first, last),
      send: (client, bytes) => this.#write(client, bytes),
      handOver: (client) => this.#handOver(client),
      end: (client, error) => this.#endResume(client, error),
    };
    const cutAfter = (ms: number) =>
      cutReason(
        `SSEChannel: cut a connection whose client has not read the end of its stream within ${ms} ms`,
      );
    const cut = cutAfter(settings.drainTimeout);
    this.#grace = Math.min(settings.drainTimeout, CLOSE_GRACE);
    const closeCut = cutAfter(this.#grace);
    this.#drain = new DrainJudge(
      settings.drainTimeout,
      (client) => this.end(client, "slow"),
      (client) => {
        try {
          client.controller.error(this.#closed ? closeCut : cut);
        } catch {
          // The stream is gone already.
        }
      },
    );
  }

  /**
   * A new client and its response stream (with the retry hint first, if
   * any), counted as connected from now on.
   */
  accept(
    info: SSEChannelClient<C>,
  ): { client: Client<C>; stream: ReadableStream<Uint8Array> } {
    const tally = this.tally;
    const client = new Client<C>(info, this.#limits, this.#events, tally);
    const stream = new ReadableStream<Uint8Array>(client, this.#strategy);
    const { retryBytes, keepAlive } = this.#settings;
    if (retryBytes !== undefined) client.enqueue(retryBytes);
    this.clients.add(client);
    tally.joined(info.topics);
    if (this.#timer === undefined && keepAlive > 0) {
      // One timer for the whole channel: a tick every keepAlive / 2 writes a
      // comment to each client that wrote nothing since the previous tick, so
      // an idle client gets one every keepAlive ms (never later), and 10 000
      // clients cost one timer, not 10 000.
      this.#timer = startInterval(this.#tick, keepAlive / 2);
    }
    return { client, stream };
  }

  /** Puts an open or held client into the shared fan-out. */
  join(client: Client<C>): void {
    const { topics } = client;
    if (topics === null) {
      this.#everyone.add(client);
      return;
    }
    for (const topic of topics) {
      let set = this.#byTopic.get(topic);
      if (set === undefined) this.#byTopic.set(topic, set = new Set());
      set.add(client);
    }
  }

  /**
   * The catch-up of a client that sent a `Last-Event-ID`, with the first
   * page of what it missed; `undefined` when the id is not a resume point of
   * the channel's stream (the client is then sent live entries only, and
   * `init` is told `resumed: false`).
   */
  async resume(
    client: Client<C>,
    lastEventId: string,
  ): Promise<Resume<C> | undefined> {
    // Not a broker id at all: no need to ask.
    if (!isBrokerId(lastEventId)) return undefined;
    const count = this.#sharedIds.count;
    let page: SSEBrokerEntry[] | null;
    try {
      page = await this.#host.history(lastEventId);
    } catch (error) {
      // The broker is down or frozen (and timed out): the client is
      // answered anyway, as one that cannot resume, and gets a snapshot.
      if (!this.#closed) {
        this.#report(
          new Error(
            `Answered a resuming client with resumed: false: the broker's history failed: ${
              errorMessage(error)
            }`,
            { cause: error },
          ),
        );
      }
      return undefined;
    }
    if (page === null || client.state !== CONNECTING) return undefined;
    return new Resume(this.#host, client, lastEventId, page, count);
  }

  /** Writes `init`'s frames, then what waited meanwhile; then live. */
  open(client: Client<C>, frames: Uint8Array[]): void {
    client.state = OPEN;
    for (const frame of frames) client.enqueue(frame);
    client.flush();
    if (client.blocked) this.#drain.watch(client);
  }

  /**
   * After `open`: starts the catch-up of a resuming client, or of one that
   * fell behind during `init`; a stream with nothing sent yet gets its
   * opening comment.
   */
  started(client: Client<C>, resume: Resume<C> | undefined): void {
    if (resume !== undefined) {
      client.resume = resume;
      this.#resuming.add(client);
      resume.start();
    } else if (client.resume !== undefined && client.backlogBytes === 0) {
      // It fell behind during init, and its backlog is in its stream.
      client.resume.pull();
    }
    // Nothing went first (no retry, no init message, nothing replayed or
    // published meanwhile): a first byte, so that the head leaves at once.
    if (client.silent) client.enqueue(OPENING_BYTES);
  }

  /**
   * Fan-out of the entries from the shared subscription, one at a time: an
   * entry that arrives while another is being fanned out (a hook published,
   * and the broker delivered at once) waits until that one has reached every
   * client, so that every client sees the entries in order.
   */
  deliver(entry: SSEBrokerEntry): void {
    if (this.#delivering) {
      this.#waiting.push(entry);
      return;
    }
    this.#delivering = true;
    try {
      this.#fanOut(entry);
      const waiting = this.#waiting;
      for (let i = 0; i < waiting.length; i++) this.#fanOut(waiting[i]!);
    } finally {
      this.#waiting = [];
      this.#delivering = false;
    }
  }

  /**
   * The shared subscription lost entries (the broker's reader fell behind
   * by more than the stream keeps). Every client that follows it, and every
   * catch-up merging its entries, may have needed them: each is ended
   * (`"replay-lost"`) after what it was sent, and reconnects from its last
   * id, resumed if the history still holds what follows, else with
   * `resumed: false`. A catch-up that pages the history finds a hole there
   * itself (`history` answers `null`).
   */
  gap(): void {
    const lost = new Set(this.#everyone);
    for (const set of this.#byTopic.values()) {
      for (const client of set) lost.add(client);
    }
    for (const client of this.#resuming) {
      if (client.resume?.merging) lost.add(client);
    }
    for (const client of lost) this.end(client, "replay-lost");
  }

  /**
   * Ends every client (`"channel-closed"`) after what it was sent, then
   * waits until the runtime has taken the end of every stream the channel
   * ended (these and any ended before, still in their grace), for at most
   * min(drainTimeout, CLOSE_GRACE) ms, and cuts (errors) those it has not
   * taken by then: a peer that never reads cannot hold the channel, and the
   * runtime is told to close its connection. No timer is left.
   *
   * @returns Once every stream is ended or cut.
   */
  close(): Promise<void> {
    this.#closed = true;
    // Their timers go now; whoever waits for them is released below.
    const closed = new Error("The event channel is closed");
    for (const giveUp of this.#reads) giveUp(closed);
    for (const client of this.clients) this.end(client, "channel-closed");
    return this.#drain.close(this.#grace);
  }

  /**
   * Ends a client's stream and releases it. A slow client's backlog is
   * forgotten; any other gets what it was sent first, then `last` if given.
   * A stream whose end the runtime has not taken (its queue holds chunks)
   * is cut if it has not after another `drainTimeout` (see DrainJudge).
   */
  end(
    client: Client<C>,
    reason: SSEDisconnectReason,
    last?: Uint8Array,
  ): void {
    if (client.state === CLOSED) return;
    // A client still in onConnect's wake (the broker, init) is answered by
    // its connect with this stream, ended as an open client's is (see
    // SSEChannel's #stopped).
    let ended: boolean;
    try {
      if (reason === "slow") client.discard();
      else if (client.state === OPEN) client.flushAll();
      if (last !== undefined) client.enqueue(last);
      ended = client.finish();
    } catch {
      // The runtime closed the stream already: the client is gone.
      ended = false;
    }
    this.release(client, reason);
    if (ended) this.#drain.ended(client);
  }

  /** Releases everything a client holds, then tells `onDisconnect`. */
  release(client: Client<C>, reason: SSEDisconnectReason): void {
    if (client.state === CLOSED) return;
    client.state = CLOSED;
    client.reason = reason;
    this.clients.delete(client);
    this.tally.left(client.topics, reason);
    client.discard();
    this.#drain.unwatch(client);
    this.#leave(client);
    if (client.resume !== undefined) {
      client.resume.release();
      client.resume = undefined;
      this.#resuming.delete(client);
    }
    if (this.clients.size === 0 && this.#timer !== undefined) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
    this.onRelease?.(client);
    const { onDisconnect } = this.#settings;
    if (onDisconnect !== undefined) {
      try {
        onDisconnect(client.context, { reason });
      } catch (error) {
        this.#report(
          new Error(`onDisconnect threw: ${errorMessage(error)}`, {
            cause: error,
          }),
        );
      }
    }
  }

  /**
   * The next page of history after `after` (see `historyPage`), bounded
   * (see `bound`).
   */
  #history(after: string): Promise<SSEBrokerEntry[] | null> {
    const { broker, name } = this.#settings;
    return this.bound(historyPage(broker, name, after), "history");
  }

  /**
   * What a broker call resolves to, or a rejection once `drainTimeout` has
   * passed without an answer: a broker that stopped answering fails the
   * connect or the catch-up waiting for it, as a failed call does, instead
   * of holding the client without a word. Its timer is cleared as soon as
   * it is settled, and by `close()` (which rejects it).
   *
   * @param call The broker's promise.
   * @param what The call, for the error: "history", "subscribe".
   * @returns What `call` resolves to, within `drainTimeout`.
   */
  bound<T>(call: Promise<T>, what: string): Promise<T> {
    const { drainTimeout } = this.#settings;
    if (timerDelay(drainTimeout) === undefined) return call;
    return new Promise((resolve, reject) => {
      const giveUp = (error: Error): void => {
        clearTimeout(timer);
        this.#reads.delete(giveUp);
        reject(error);
      };
      const timer = startTimeout(() =>
        giveUp(
          new Error(
            `${what} did not answer within ${drainTimeout} ms (drainTimeout)`,
          ),
        ), drainTimeout);
      this.#reads.add(giveUp);
      call.then((value) => {
        clearTimeout(timer);
        this.#reads.delete(giveUp);
        resolve(value);
      }, giveUp);
    });
  }

  /** Fan-out of one entry from the shared subscription. */
  #fanOut(entry: SSEBrokerEntry): void {
    this.tally.received++;
    const bytes = this.frames.live(entry);
    // Not an entry (no string id): skipped, reported, and no position.
    if (bytes === undefined && typeof entry?.id !== "string") return;
    let message: SSEMessage | undefined;
    if (bytes !== undefined) {
      const topicSet = this.#byTopic.get(entry.topic);
      const { id } = entry;
      if (this.#filter === undefined) {
        for (const client of this.#everyone) this.#send(client, bytes, id);
        if (topicSet !== undefined) {
          for (const client of topicSet) this.#send(client, bytes, id);
        }
      } else {
        message = { ...entry.message, id };
        for (const client of this.#everyone) {
          this.#sendFiltered(client, bytes, message, entry.topic);
        }
        if (topicSet !== undefined) {
          for (const client of topicSet) {
            this.#sendFiltered(client, bytes, message, entry.topic);
          }
        }
      }
    }
    const { id } = entry;
    this.#sharedIds.add(id);
    if (this.#resuming.size === 0) return;
    // After the fan-out: a client that joins here gets the next entry.
    for (const client of this.#resuming) {
      const resume = client.resume!;
      if (!resume.merging) {
        resume.shared(id);
      } else if (bytes !== undefined && this.#wants(client, entry, message)) {
        resume.collect(bytes, id);
      }
    }
  }

  /** The client leaves its catch-up for the shared fan-out. */
  #handOver(client: Client<C>): void {
    const resume = client.resume!;
    client.position = resume.position;
    resume.release();
    client.resume = undefined;
    this.#resuming.delete(client);
    this.join(client);
  }

  /**
   * Ends a catch-up that cannot go on: `history` lost the client's position
   * or failed. Its stream is closed after what it was sent, so the client
   * reconnects from its last id.
   */
  #endResume(client: Client<C>, error: unknown): void {
    if (error !== undefined) {
      this.#report(
        new Error(
          `Ended a resuming client: the broker's history failed: ${
            errorMessage(error)
          }`,
          { cause: error },
        ),
      );
    }
    this.end(client, error === undefined ? "replay-lost" : "broker-error");
  }

  /** A client's frame of an entry from history, if it selects it. */
  #frameOf(client: Client<C>, entry: SSEBrokerEntry): Uint8Array | undefined {
    if (!client.selects(entry.topic)) return undefined;
    const bytes = this.frames.replayed(entry);
    if (bytes === null) return undefined;
    if (this.#filter === undefined) return bytes;
    const message = { ...entry.message, id: entry.id };
    return this.#filtered(client, message, entry.topic) ? bytes : undefined;
  }

  /**
   * Writes replayed frames as one chunk. A client that gets every entry
   * (no topics, no filter) gets the same chunk as every such client that
   * resumes from the same place.
   */
  #writeRun(
    client: Client<C>,
    frames: Uint8Array[],
    first: string,
    last: string,
  ): void {
    if (!client.ready) {
      // A backlog holds one message per chunk (see _client.ts).
      for (const frame of frames) this.#write(client, frame);
      return;
    }
    const shared = client.topics === null && this.#filter === undefined;
    this.tally.delivered += frames.length;
    client.wrote = true;
    client.enqueue(this.frames.run(frames, first, last, shared));
    if (client.blocked) this.#drain.watch(client);
  }

  /** Whether a client selects an entry (its topics, then `filter`). */
  #wants(
    client: Client<C>,
    entry: SSEBrokerEntry,
    message: SSEMessage | undefined,
  ): boolean {
    if (!client.selects(entry.topic)) return false;
    if (this.#filter === undefined) return true;
    return this.#filtered(client, message!, entry.topic);
  }

  #sendFiltered(
    client: Client<C>,
    bytes: Uint8Array,
    message: SSEMessage,
    topic: string,
  ): void {
    if (this.#filtered(client, message, topic)) {
      this.#send(client, bytes, message.id as string);
    }
  }

  /**
   * `filter`'s verdict: only `true` delivers. Anything else is a no (a
   * Promise, from an async filter, included), reported once; a throw ends
   * the client and is a no.
   */
  #filtered(client: Client<C>, message: SSEMessage, topic: string): boolean {
    try {
      const verdict: unknown = this.#filter!(client.context, message, topic);
      if (verdict === true) return true;
      if (verdict !== false && !this.#filterReported) {
        this.#filterReported = true;
        this.#report(
          new TypeError(
            `filter returned ${
              describe(verdict)
            }, not a boolean: only true delivers (a filter must be synchronous)`,
          ),
        );
      }
      return false;
    } catch (error) {
      this.#report(
        new Error(`filter threw: ${errorMessage(error)}`, { cause: error }),
      );
      this.end(client, "filter-error");
      return false;
    }
  }

  /**
   * Writes a live entry's frame to a client in the fan-out. A client whose
   * backlog would go above `maxBacklog` falls behind instead: the frame is
   * not written, and it is fed from the history from its position on. (A
   * frame bigger than `maxBacklog` still goes to a client with an empty
   * backlog.)
   */
  #send(client: Client<C>, bytes: Uint8Array, id: string): void {
    const backlog = client.backlogBytes;
    if (
      backlog > 0 && backlog + bytes.byteLength > this.#maxBacklog &&
      client.position !== undefined
    ) {
      this.#fallBehind(client);
      return;
    }
    client.position = id;
    this.#write(client, bytes);
  }

  /** Writes a frame; a client that then has frames waiting is judged. */
  #write(client: Client<C>, bytes: Uint8Array): void {
    client.write(bytes);
    if (client.blocked) this.#drain.watch(client);
  }

  /**
   * Takes a client out of the fan-out, keeping its backlog and its
   * position: once the backlog has drained, it catches up from the history
   * (as a resume does), and rejoins where it meets the fan-out.
   */
  #fallBehind(client: Client<C>): void {
    this.tally.fellBehind++;
    this.#leave(client);
    client.resume = new Resume(this.#host, client, client.position!);
    this.#resuming.add(client);
  }

  /** The stream took from its queue: refill it, or go on catching up. */
  #pulled(client: Client<C>): void {
    if (client.state !== OPEN) return;
    client.flush();
    if (client.backlogBytes === 0) client.resume?.pull();
  }

  /** Takes a client out of the shared fan-out. */
  #leave(client: Client<C>): void {
    const { topics } = client;
    if (topics === null) {
      this.#everyone.delete(client);
    } else {
      for (const topic of topics) {
        const set = this.#byTopic.get(topic);
        if (set !== undefined && set.delete(client) && set.size === 0) {
          this.#byTopic.delete(topic);
        }
      }
    }
  }

  #tick = (): void => {
    for (const client of this.clients) {
      // A client with a backlog, or a full queue, has something to read
      // already: a keep-alive goes only into a stream with room (and so
      // never into a backlog, which holds messages only).
      if (client.state !== OPEN || !client.ready) continue;
      if (client.wrote) {
        client.wrote = false;
      } else {
        client.wrote = true;
        client.enqueue(KEEP_ALIVE_BYTES);
      }
    }
  };
}
