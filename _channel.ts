// Copyright the sse authors. MIT license.
// SSEChannel: one broadcast stream served to many clients, with topics,
// resume, hooks, keep-alive and slow-client protection. Exported from
// server.ts.
//
// How an entry reaches a client (the hot path):
// - The channel holds ONE live broker subscription (`#shared`) for all its
//   clients. Each entry from it is encoded once (the `id:` line plus the
//   frame) into one Uint8Array, and that same Uint8Array is enqueued to every
//   matching client: `#everyone` (clients without topics) plus the clients in
//   `#byTopic.get(entry.topic)`. Nothing is allocated per client per entry.
//   Deno.serve copies chunks out without detaching them (tested).
// - A client that resumes (`Last-Event-ID`) is sent what it missed from the
//   broker's `history`, a page at a time as it reads, until its position
//   meets the shared subscription's, which then takes over (see
//   _resume.ts): no gap, no duplicate, whatever the timing.
// - Until `init` has written its messages, entries for a client wait in its
//   backlog (after the retry hint), then follow `init`'s in order.
//
// Slow clients: a client is judged on whether it drains, never on one burst.
// What the runtime has not taken yet waits in the client's backlog (shared
// frames: a reference each, see _client.ts). When it goes above `maxQueue`,
// the client joins `#over`, and a drain check runs every drainTimeout / 4;
// the stream pulling with its queue back under `maxQueue` clears it. A client
// still over after drainTimeout of checks in a row (so the event loop, and
// the socket, had that long to drain it) is dropped: its backlog is
// forgotten and its stream closed, which the runtime ends cleanly.

import type { SSEMessage } from "./encoder.ts";
import { encodeSSE } from "./encoder.ts";
import { describe, json } from "./_json.ts";
import { startInterval, type Timer } from "./_timer.ts";
import { KEEP_ALIVE_FRAME, keepAliveInterval, sseHeaders } from "./_http.ts";
import {
  errorMessage,
  errorReporter,
  isBrokerId,
  MemoryBroker,
  type SSEBroker,
  type SSEBrokerEntry,
  type SSEBrokerSubscription,
} from "./_broker.ts";
import {
  Client,
  type ClientEvents,
  CLOSED,
  CONNECTING,
  OPEN,
  STREAM_QUEUE,
} from "./_client.ts";
import {
  FrameCache,
  IdWindow,
  PAGE,
  RECENT,
  Resume,
  type ResumeHost,
} from "./_resume.ts";

/** What `#unlessClosed` resolves to when the channel closed first. */
const CLOSED_NOW: unique symbol = Symbol("closed");

/** Default `maxQueue`: 1 MiB. */
const DEFAULT_MAX_QUEUE = 1024 * 1024;
/** Default `replay`. */
const DEFAULT_REPLAY = 1000;
/** Default `drainTimeout`: 10 s. */
const DEFAULT_DRAIN_TIMEOUT = 10_000;
/** Drain checks per `drainTimeout`. */
const CHECKS = 4;
/** The most bytes of replayed frames a channel keeps for other resumes. */
const FRAME_CACHE_BYTES = 16 * 1024 * 1024;

const encoder = new TextEncoder();
const KEEP_ALIVE_BYTES = encoder.encode(KEEP_ALIVE_FRAME);
// A broker id goes on the wire as an `id:` field: §9.2.6 ignores one with
// NUL, and CR or LF would end the field early.
const BAD_ID = /[\r\n\0]/;

/** Options of {@linkcode SSEChannel}. `C` is the context `onConnect` returns. */
export interface SSEChannelOptions<C = undefined> {
  /**
   * The channel's stream in the broker. Channels (in this process or others)
   * that share a broker and a name are one stream.
   *
   * @default {"default"}
   */
  name?: string;
  /**
   * How many entries the broker keeps for resume: a client that reconnects
   * with a `Last-Event-ID` within that many entries gets exactly what it
   * missed. The in-memory brokers also bound the history in bytes
   * (`maxHistoryBytes`, 16 MiB per stream by default).
   *
   * @default {1000}
   */
  replay?: number;
  /**
   * Milliseconds without a write after which a client is sent a keep-alive
   * comment (`: keep-alive`), so proxies keep the connection open. 0 or
   * `Infinity` turns keep-alive off.
   *
   * @default {15000}
   */
  keepAlive?: number;
  /**
   * Reconnection delay (ms) sent first on every connection as a `retry`
   * field; `undefined` sends none (clients keep their own default).
   *
   * @default {undefined}
   */
  retry?: number;
  /**
   * The most bytes that may wait for one client for longer than
   * `drainTimeout`. A burst may queue more for a while: every client that
   * reads gets every message of any burst. A client whose queue stays above
   * `maxQueue` for `drainTimeout` is dropped as slow (its stream ends and
   * what waited for it is released), so a client that stops reading neither
   * slows others nor holds memory for long.
   *
   * What waits is the same encoded bytes every client is sent (a reference
   * per message, not a copy), so a client's queue costs little beyond the
   * messages themselves; a stalled client holds on to at most what was
   * published during its `drainTimeout`. The runtime and the kernel buffer
   * some more on top (a few MiB per connection on loopback) before bytes
   * start to wait here.
   *
   * @default {1048576} (1 MiB)
   */
  maxQueue?: number;
  /**
   * Milliseconds a client's queue may stay above `maxQueue` before the
   * client is dropped as slow (`onDisconnect` reason `"slow"`). It is
   * checked a few times over that span (every `drainTimeout / 4`), and the
   * queue must stay above `maxQueue` the whole time: a client that catches
   * up at any point starts afresh.
   *
   * @default {10000}
   */
  drainTimeout?: number;
  /**
   * Where ids, the replay history and live fan-out come from. A channel that
   * creates its own broker closes it in `close()`; a broker passed here is
   * left open (it may serve other channels).
   *
   * @default {new MemoryBroker()}
   */
  broker?: SSEBroker;
  /**
   * Extra headers for every event-stream response (for example CORS). The
   * event-stream headers (`content-type`, `cache-control: no-cache`,
   * `x-accel-buffering: no`) are set as `sseResponse` sets them.
   *
   * @default {undefined}
   */
  headers?: HeadersInit;
  /**
   * Called first for every connection, with the request. Return the
   * connection's context (anything: a user, a session), which `init`,
   * `filter` and `onDisconnect` receive; or return a `Response` to refuse the
   * connection with it (for example 401). May be async. A throw rejects
   * `connect`.
   *
   * @default {undefined} (every connection is accepted; the context is `undefined`)
   */
  onConnect?: (request: Request) => C | Response | Promise<C | Response>;
  /**
   * Called once per connection, before any live message, with the context,
   * the `Last-Event-ID` the client sent (`""` if none) and `{ resumed }`.
   * `resumed` is `true` only when the client sent an id and everything it
   * missed since is still in the replay window and follows `init`'s
   * messages; when it is `false` (a new client; an id this channel's stream
   * did not issue or no longer holds; or a broker whose `history` failed)
   * the application should send what the client needs first, such as a
   * snapshot of the current state.
   *
   * Returns (or resolves to) the messages to send, or nothing. They go out
   * after the retry hint and before replayed and live messages. `init` runs
   * once the client is subscribed, so a snapshot taken here misses nothing:
   * every message published from then on follows it (held until `init` is
   * done). A throw, or a message `encodeSSE` refuses, rejects `connect`.
   *
   * @default {undefined}
   */
  init?: (
    context: C,
    lastEventId: string,
    info: { resumed: boolean },
  ) =>
    | Iterable<SSEMessage>
    | void
    | Promise<Iterable<SSEMessage> | void>;
  /**
   * Decides, per client and per message, whether the client gets it. It must
   * be synchronous (it runs inside the fan-out loop). `message` carries the
   * assigned `id`, and `data` as sent (a string: JSON text for non-string
   * data). Only `true` delivers: anything else does not (a Promise from an
   * async filter included: it fails closed), and a result that is not a
   * boolean is reported to `onError` (once per channel). A throw ends that
   * client's stream (after what it was sent before; `onDisconnect` reason
   * `"filter-error"`) and goes to `onError`.
   *
   * @default {undefined} (every subscribed client gets every message)
   */
  filter?: (context: C, message: SSEMessage, topic: string) => boolean;
  /**
   * Called once when a connection ends, after everything it held is
   * released, with why it ended (see {@linkcode SSEDisconnectReason}). Must
   * not throw (a throw goes to `onError`).
   *
   * @default {undefined}
   */
  onDisconnect?: (context: C, info: { reason: SSEDisconnectReason }) => void;
  /**
   * Called with each error the channel catches and carries on after: an
   * entry from the broker that the encoder refuses (skipped, live and on
   * resume, and reported once; the error names the entry id, its `cause` is
   * the encoder's error), a hook that threw (`filter`, `onDisconnect`), or a
   * broker's `history` that failed for a resuming client. Must not throw.
   * Errors never go to `reportError`, which ends a Deno process.
   *
   * @default {(error) => console.error("SSEChannel: " + error.message)} (one line, no stack trace)
   */
  onError?: (error: Error) => void;
}

/**
 * Why a connection of an {@linkcode SSEChannel} ended, as `onDisconnect` is
 * told:
 *
 * - `"client-closed"`: the client closed the connection (or it broke).
 * - `"slow"`: its queue stayed above `maxQueue` for `drainTimeout`; its
 *   stream was ended. A client that reconnects with its `Last-Event-ID`
 *   resumes from there.
 * - `"channel-closed"`: `close()` ended it.
 * - `"filter-error"`: `filter` threw for it; its stream was ended after
 *   what it was sent before.
 * - `"replay-lost"`: while it was catching up after a reconnect, the
 *   entries it still needed left the replay window; its stream was ended
 *   rather than skip them, and its next reconnect gets `resumed: false`.
 * - `"broker-error"`: while it was catching up, the broker's `history`
 *   failed; its stream was ended so that it reconnects and resumes.
 * - `"connect-failed"`: `connect` did not answer with its stream (`init` or
 *   the broker failed, or the channel closed meanwhile).
 */
export type SSEDisconnectReason =
  | "client-closed"
  | "slow"
  | "channel-closed"
  | "filter-error"
  | "replay-lost"
  | "broker-error"
  | "connect-failed";

/**
 * A broadcast channel of Server-Sent Events: every connected client receives
 * every message published to the topics it asked for, in publish order, each
 * with the id the broker assigned, and a client that reconnects with
 * `Last-Event-ID` gets exactly the messages it missed.
 *
 * - `connect(request)` answers a request with the event stream; a connection
 *   without `topics` receives every message, one with `topics` only messages
 *   published to one of them (use the topic `""` for messages published
 *   without a topic).
 * - `publish(message, { topic })` validates and encodes the message, stores
 *   it in the broker and resolves to its id. Non-string `data` is
 *   JSON-encoded once. The message must not carry an `id`: the broker
 *   assigns it (`TypeError`).
 * - A client whose queue stays above `maxQueue` bytes for `drainTimeout`
 *   is dropped as slow; a burst does not drop a client that reads. A client
 *   that goes away is noticed from its stream's cancel and released at once.
 * - Keep-alive comments come from one timer for the whole channel, not one
 *   per client.
 * - `close()` ends every stream and answers later connections 503.
 * - `connect` answers GET with the stream, HEAD with its headers alone, and
 *   any other method with 405.
 *
 * @example Serve a channel and publish to it
 * ```ts
 * import { SSEChannel } from "@sse/sse/server";
 *
 * const channel = new SSEChannel();
 * const server = Deno.serve(
 *   { hostname: "127.0.0.1", port: 0, onListen() {} },
 *   (request) => channel.connect(request),
 * );
 * const id = await channel.publish({ event: "greet", data: { hello: "world" } });
 * console.log(id);
 * await channel.close();
 * await server.shutdown();
 * ```
 *
 * @example Refuse, snapshot and filter with the hooks
 * ```ts
 * import { SSEChannel } from "@sse/sse/server";
 *
 * const channel = new SSEChannel({
 *   onConnect(request) {
 *     const user = request.headers.get("x-user");
 *     return user ?? new Response("Unauthorized", { status: 401 });
 *   },
 *   init(user, lastEventId, { resumed }) {
 *     return resumed ? [] : [{ event: "snapshot", data: { user, lastEventId } }];
 *   },
 *   filter: (user, message) => message.event !== "private" || user === "admin",
 * });
 * const response = await channel.connect(new Request("http://localhost/events"));
 * console.log(response.status); // 401
 * await channel.close();
 * ```
 */
export class SSEChannel<C = undefined> {
  #name: string;
  #replay: number;
  #keepAlive: number;
  #maxQueue: number;
  #drainTimeout: number;
  #streamQueue: number;
  #broker: SSEBroker;
  #ownsBroker: boolean;
  #headers: [string, string][];
  #retryBytes: Uint8Array | undefined;
  #strategy: QueuingStrategy<Uint8Array>;
  #onConnect: SSEChannelOptions<C>["onConnect"];
  #init: SSEChannelOptions<C>["init"];
  #filter: SSEChannelOptions<C>["filter"];
  #onDisconnect: SSEChannelOptions<C>["onDisconnect"];
  #report: (error: Error) => void;
  /** A filter result that is not a boolean was reported already. */
  #filterReported = false;

  /** Every client that has a stream, in any state but closed. */
  #clients = new Set<Client<C>>();
  /** Open clients without topics. */
  #everyone = new Set<Client<C>>();
  /** Open clients by topic. */
  #byTopic = new Map<string, Set<Client<C>>>();
  /** Open clients catching up from history. */
  #resuming = new Set<Client<C>>();

  #shared: Promise<SSEBrokerSubscription> | undefined;
  /** The ids the shared subscription delivered last. */
  #sharedIds = new IdWindow(RECENT);
  /** An entry is being fanned out; those that arrive meanwhile wait. */
  #delivering = false;
  #waiting: SSEBrokerEntry[] = [];
  /** Encoded frames (without the id line) of messages published here. */
  #bodies = new WeakMap<SSEMessage, string>();
  /** Encoded frames of entries replayed from history, shared by resumes. */
  #frames: FrameCache;
  /** Chunks of consecutive replayed frames, by first and last id. */
  #runs = new FrameCache(1024, FRAME_CACHE_BYTES);
  #timer: Timer | undefined;
  /** Clients whose queue is above `maxQueue`, and the check that judges them. */
  #over = new Set<Client<C>>();
  #drainTimer: Timer | undefined;
  #closed = false;
  /** Connections waiting in connect, woken by close (see `#unlessClosed`). */
  #sleepers = new Set<() => void>();
  #closing: Promise<void> | undefined;
  #events: ClientEvents<C> = {
    pull: (client) => this.#pulled(client),
    cancel: (client) => this.#disconnect(client, "client-closed"),
  };
  #host: ResumeHost<C> = {
    shared: this.#sharedIds,
    history: (after) =>
      this.#broker.history(this.#name, { after, limit: PAGE }),
    frame: (client, entry) => this.#frameOf(client, entry),
    write: (client, frames, first, last) =>
      this.#writeRun(client, frames, first, last),
    send: (client, bytes) => this.#send(client, bytes),
    handOver: (client) => this.#handOver(client),
    end: (client, error) => this.#endResume(client, error),
  };

  /**
   * Creates a channel.
   *
   * @param options Name, replay window, keep-alive, retry hint, queue limit,
   * broker, headers and hooks.
   */
  constructor(options: SSEChannelOptions<C> = {}) {
    const { name = "default", replay = DEFAULT_REPLAY } = options;
    if (typeof name !== "string") {
      throw new TypeError(
        `Invalid name: expected a string, got ${typeof name}`,
      );
    }
    if (!Number.isSafeInteger(replay) || replay < 0) {
      throw new RangeError(
        `Invalid replay: expected a non-negative integer, got ${replay}`,
      );
    }
    const maxQueue = options.maxQueue ?? DEFAULT_MAX_QUEUE;
    if (typeof maxQueue !== "number" || !(maxQueue > 0)) {
      throw new RangeError(
        `Invalid maxQueue: expected a positive number of bytes, got ${maxQueue}`,
      );
    }
    const drainTimeout = options.drainTimeout ?? DEFAULT_DRAIN_TIMEOUT;
    if (typeof drainTimeout !== "number" || !(drainTimeout > 0)) {
      throw new RangeError(
        `Invalid drainTimeout: expected a positive number of milliseconds, got ${drainTimeout}`,
      );
    }
    this.#name = name;
    this.#replay = replay;
    this.#maxQueue = maxQueue;
    this.#drainTimeout = drainTimeout;
    this.#streamQueue = Math.min(maxQueue, STREAM_QUEUE);
    this.#frames = new FrameCache(Math.max(replay, PAGE), FRAME_CACHE_BYTES);
    this.#keepAlive = keepAliveInterval(options.keepAlive);
    this.#retryBytes = options.retry === undefined
      ? undefined
      : encoder.encode(encodeSSE({ retry: options.retry }));
    const broker = options.broker;
    if (broker === undefined) {
      this.#broker = new MemoryBroker();
      this.#ownsBroker = true;
    } else {
      if (
        typeof broker?.publish !== "function" ||
        typeof broker.subscribe !== "function" ||
        typeof broker.history !== "function" ||
        typeof broker.close !== "function"
      ) {
        throw new TypeError(
          "Invalid broker: expected an object with publish, subscribe, history and close methods",
        );
      }
      this.#broker = broker;
      this.#ownsBroker = false;
    }
    this.#headers = [...sseHeaders(options.headers)];
    this.#strategy = { highWaterMark: this.#streamQueue, size: byteLength };
    this.#onConnect = hook(options, "onConnect");
    this.#init = hook(options, "init");
    this.#filter = hook(options, "filter");
    this.#onDisconnect = hook(options, "onDisconnect");
    this.#report = errorReporter("SSEChannel", options.onError);
  }

  /**
   * The number of connected clients.
   *
   * @returns Clients whose stream is open (including those still in `init`).
   */
  get size(): number {
    return this.#clients.size;
  }

  /**
   * Answers a request with the channel's event stream (or with what
   * `onConnect` returned).
   *
   * - GET subscribes the client (see below).
   * - HEAD runs `onConnect`, then answers what GET would (the status and
   *   headers) without a body, and subscribes nothing.
   * - Any other method gets 405 with `Allow: GET, HEAD`, before `onConnect`.
   * - Once the channel is closed, 503; `close()` also answers 503 at once to
   *   the connections still waiting in `onConnect`, the broker or `init`.
   *
   * The client is subscribed before the returned promise resolves: a message
   * published after that reaches it. On the wire it gets the retry hint (if
   * `retry` is set), then `init`'s messages, then (when resuming from
   * `Last-Event-ID`) the messages it missed, then live messages.
   *
   * @param request The request; its `Last-Event-ID` header resumes.
   * @param options `topics`: the topics this client receives (every topic
   * when absent; `""` is the topic of messages published without one).
   * @returns The response.
   */
  async connect(
    request: Request,
    options: { topics?: readonly string[] } = {},
  ): Promise<Response> {
    if (!(request instanceof Request)) {
      throw new TypeError(
        `Invalid request: expected a Request, got ${describe(request)}`,
      );
    }
    const topics = topicsOf(options?.topics);
    const { method } = request;
    if (method !== "GET" && method !== "HEAD") return notAllowed();
    if (this.#closed) return unavailable();
    let context = undefined as C;
    if (this.#onConnect !== undefined) {
      const result = await this.#unlessClosed(this.#onConnect(request));
      if (result === CLOSED_NOW) return unavailable();
      if (result instanceof Response) return result;
      context = result;
    }
    // RFC 9110 §9.3.2: HEAD answers as GET would, without the content.
    if (method === "HEAD") {
      return new Response(null, { headers: this.#headers });
    }
    const lastEventId = lastEventIdOf(request);

    const client = new Client<C>(
      context,
      topics,
      this.#streamQueue,
      this.#events,
    );
    const stream = new ReadableStream<Uint8Array>(client, this.#strategy);
    if (this.#retryBytes !== undefined) {
      client.controller.enqueue(this.#retryBytes);
    }
    this.#clients.add(client);
    if (this.#timer === undefined && this.#keepAlive > 0) {
      // One timer for the whole channel: a tick every keepAlive / 2 writes a
      // comment to each client that wrote nothing since the previous tick, so
      // an idle client gets one every keepAlive ms (never later), and 10 000
      // clients cost one timer, not 10 000.
      this.#timer = startInterval(this.#tick, this.#keepAlive / 2);
    }

    try {
      // close() answers a connection that waits here at once.
      if (await this.#unlessClosed(this.#subscribeShared()) === CLOSED_NOW) {
        return unavailable();
      }
      let resume: Resume<C> | undefined;
      if (client.state === CONNECTING && lastEventId !== "") {
        const resuming = await this.#unlessClosed(
          this.#resume(client, lastEventId),
        );
        if (resuming === CLOSED_NOW) return unavailable();
        resume = resuming;
      }
      // Waits until init is done; a resuming client joins once caught up.
      if (client.state === CONNECTING && resume === undefined) {
        this.#join(client);
      }
      let frames: Uint8Array[] = [];
      if (this.#init !== undefined && client.state === CONNECTING) {
        const messages = await this.#unlessClosed(
          this.#init(context, lastEventId, { resumed: resume !== undefined }),
        );
        if (messages === CLOSED_NOW) return unavailable();
        if (messages != null) frames = encodeAll(messages);
      }
      if (client.state !== CONNECTING) return unavailable();
      this.#open(client, frames);
      if (client.state !== OPEN) return unavailable();
      if (resume !== undefined) {
        client.resume = resume;
        this.#resuming.add(client);
        resume.start();
      }
    } catch (error) {
      this.#disconnect(client, "connect-failed");
      // A broker closed along with the channel is no error of this request.
      if (this.#closed) return unavailable();
      throw error;
    }
    return new Response(stream, { headers: this.#headers });
  }

  /**
   * Publishes a message to every subscribed client, through the broker.
   *
   * The message is validated and encoded first: a message that `encodeSSE`
   * refuses (`TypeError`, `RangeError`) is rejected before anything is
   * stored or sent, and so is one with an `id` (`TypeError`: the broker
   * assigns ids, so that resume works). Non-string `data` is JSON-encoded
   * here, once.
   *
   * @param message The message, without `id`.
   * @param options `topic`: only clients subscribed to it (or to every
   * topic) receive the message. Default `""`.
   * @returns The id the broker assigned.
   */
  async publish(
    message: SSEMessage,
    options: { topic?: string } = {},
  ): Promise<string> {
    if (this.#closed) {
      throw new TypeError("Cannot publish: the channel is closed");
    }
    const topic = options?.topic ?? "";
    if (typeof topic !== "string") {
      throw new TypeError(
        `Invalid topic: expected a string, got ${describe(topic)}`,
      );
    }
    if (typeof message !== "object" || message === null) {
      throw new TypeError(
        `Invalid SSE message: expected an object, got ${describe(message)}`,
      );
    }
    if (message.id !== undefined) {
      throw new TypeError(
        "Invalid id: the broker assigns ids to published messages: remove the id field",
      );
    }
    // Only the fields the encoder writes, with data as the string sent: what
    // brokers store must be plain JSON.
    const stored: SSEMessage = {};
    if (message.comment !== undefined) stored.comment = message.comment;
    if (message.event !== undefined) stored.event = message.event;
    if (message.retry !== undefined) stored.retry = message.retry;
    const { data } = message;
    if (data !== undefined) {
      stored.data = typeof data === "string" ? data : json(data);
    }
    const body = encodeSSE(stored);
    this.#bodies.set(stored, body);
    return await this.#broker.publish(this.#name, { topic, message: stored }, {
      replay: this.#replay,
    });
  }

  /**
   * Closes the channel: every open stream ends (after what was already
   * queued for it), nothing more is sent, subscriptions and timers are
   * released, and later connections are answered 503. A broker the channel
   * created is closed too. Idempotent.
   *
   * @returns Once everything is released.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#closed = true;
    for (const wake of this.#sleepers) wake();
    for (const client of this.#clients) this.#end(client, "channel-closed");
    const shared = this.#shared;
    this.#shared = undefined;
    if (shared !== undefined) {
      try {
        (await shared).unsubscribe();
      } catch {
        // It never subscribed: nothing to release.
      }
    }
    if (this.#ownsBroker) await this.#broker.close();
  }

  /**
   * What `value` resolves to, or CLOSED_NOW as soon as the channel closes,
   * whichever comes first: a connection waiting for a hook or the broker is
   * answered at once when the channel closes.
   */
  async #unlessClosed<T>(
    value: T | Promise<T>,
  ): Promise<T | typeof CLOSED_NOW> {
    if (this.#closed) return CLOSED_NOW;
    if (!(value instanceof Promise)) return value;
    // One waiter per wait, dropped when it ends: a promise that lives as long
    // as the channel would collect a reaction per connection.
    const closing = Promise.withResolvers<typeof CLOSED_NOW>();
    const wake = () => closing.resolve(CLOSED_NOW);
    this.#sleepers.add(wake);
    try {
      return await Promise.race([value, closing.promise]);
    } finally {
      this.#sleepers.delete(wake);
    }
  }

  /** Subscribes the channel to its stream once, for all its clients. */
  #subscribeShared(): Promise<SSEBrokerSubscription> {
    if (this.#shared === undefined) {
      const shared = this.#broker.subscribe(
        this.#name,
        (entry) => this.#deliver(entry),
      );
      this.#shared = shared;
      // A failed subscribe is retried by the next connection.
      shared.catch(() => {
        if (this.#shared === shared) this.#shared = undefined;
      });
    }
    return this.#shared;
  }

  /** Puts an open or held client into the shared fan-out. */
  #join(client: Client<C>): void {
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
  async #resume(
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

  /**
   * Fan-out of the entries from the shared subscription, one at a time: an
   * entry that arrives while another is being fanned out (a hook published,
   * and the broker delivered at once) waits until that one has reached every
   * client, so that every client sees the entries in order.
   */
  #deliver(entry: SSEBrokerEntry): void {
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

  /** Fan-out of one entry from the shared subscription. */
  #fanOut(entry: SSEBrokerEntry): void {
    const bytes = this.#encodeEntry(entry);
    // Reported once: a resume past it skips it without a word.
    if (bytes === undefined && typeof entry.id === "string") {
      this.#frames.set(entry.id, null);
    }
    let message: SSEMessage | undefined;
    if (bytes !== undefined) {
      const topicSet = this.#byTopic.get(entry.topic);
      if (this.#filter === undefined) {
        for (const client of this.#everyone) this.#send(client, bytes);
        if (topicSet !== undefined) {
          for (const client of topicSet) this.#send(client, bytes);
        }
      } else {
        message = { ...entry.message, id: entry.id };
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
        resume.collect(bytes);
      }
    }
  }

  /** The client leaves its catch-up for the shared fan-out. */
  #handOver(client: Client<C>): void {
    client.resume!.release();
    client.resume = undefined;
    this.#resuming.delete(client);
    this.#join(client);
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
    this.#end(client, error === undefined ? "replay-lost" : "broker-error");
  }

  /**
   * Ends a client's stream and releases it. A slow client's backlog is
   * forgotten; any other gets what it was sent first.
   */
  #end(client: Client<C>, reason: SSEDisconnectReason): void {
    if (client.state === CLOSED) return;
    const open = client.state === OPEN;
    try {
      if (reason === "slow") client.discard();
      else if (open) client.flushAll();
      // A client still in init is answered 503 by its connect.
      if (open) client.controller.close();
    } catch {
      // The runtime closed the stream already: the client is gone.
    }
    this.#disconnect(client, reason);
  }

  /** A client's frame of an entry from history, if it selects it. */
  #frameOf(client: Client<C>, entry: SSEBrokerEntry): Uint8Array | undefined {
    if (!client.selects(entry.topic)) return undefined;
    const { id } = entry;
    let bytes = this.#frames.get(id);
    if (bytes === undefined) {
      bytes = this.#encodeEntry(entry) ?? null;
      if (typeof id === "string") this.#frames.set(id, bytes);
    }
    if (bytes === null) return undefined;
    if (this.#filter === undefined) return bytes;
    const message = { ...entry.message, id };
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
    if (frames.length === 1) {
      this.#send(client, frames[0]!);
      return;
    }
    const shared = client.topics === null && this.#filter === undefined;
    const key = first + " " + last;
    let chunk = shared ? this.#runs.get(key) : undefined;
    if (chunk == null) {
      chunk = concat(frames);
      if (shared) this.#runs.set(key, chunk);
    }
    this.#send(client, chunk);
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
    if (this.#filtered(client, message, topic)) this.#send(client, bytes);
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
      this.#end(client, "filter-error");
      return false;
    }
  }

  /** Writes one frame; a client whose queue goes above maxQueue is watched. */
  #send(client: Client<C>, bytes: Uint8Array): void {
    client.write(bytes);
    if (client.backlogBytes > 0 && !client.over) this.#watch(client);
  }

  /** Writes `init`'s frames, then what waited meanwhile; then live. */
  #open(client: Client<C>, frames: Uint8Array[]): void {
    client.state = OPEN;
    const { controller } = client;
    for (const frame of frames) controller.enqueue(frame);
    client.flush();
    if (client.backlogBytes > 0) this.#watch(client);
  }

  /** The stream took from its queue: refill it, and judge the client. */
  #pulled(client: Client<C>): void {
    if (client.state !== OPEN) return;
    client.flush();
    if (client.over && client.queued <= this.#maxQueue) this.#unwatch(client);
    if (client.backlogBytes === 0) client.resume?.pull();
  }

  /** Starts judging a client once its queue is above `maxQueue`. */
  #watch(client: Client<C>): void {
    // A client in init has had no chance to read: it is judged once open.
    if (client.state !== OPEN || client.queued <= this.#maxQueue) return;
    client.over = true;
    client.checks = 0;
    this.#over.add(client);
    this.#drainTimer ??= startInterval(
      this.#check,
      this.#drainTimeout / CHECKS,
    );
  }

  /**
   * The drain check: a client still above `maxQueue` at more than CHECKS
   * checks in a row (drainTimeout since the first) is dropped. Counting
   * checks, not time, gives a client the whole span even when a publisher
   * that never yields delays the checks.
   */
  #check = (): void => {
    for (const client of this.#over) {
      if (client.queued <= this.#maxQueue) this.#unwatch(client);
      else if (++client.checks > CHECKS) this.#end(client, "slow");
    }
  };

  /** Stops judging a client; the check stops with the last one. */
  #unwatch(client: Client<C>): void {
    client.over = false;
    this.#over.delete(client);
    if (this.#over.size === 0 && this.#drainTimer !== undefined) {
      clearInterval(this.#drainTimer);
      this.#drainTimer = undefined;
    }
  }

  #encodeEntry(entry: SSEBrokerEntry): Uint8Array | undefined {
    const { id, message } = entry;
    let body = this.#bodies.get(message);
    try {
      if (typeof id !== "string" || BAD_ID.test(id)) {
        throw new TypeError(
          `Invalid broker entry: id must be a string without CR, LF or NUL: got ${
            JSON.stringify(id)
          }`,
        );
      }
      if (body === undefined) body = encodeSSE(message);
      else this.#bodies.delete(message);
    } catch (error) {
      // A broker handed out an entry that cannot be framed: skip it rather
      // than break every client's stream.
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

  /** Releases everything a client holds, then tells `onDisconnect`. */
  #disconnect(client: Client<C>, reason: SSEDisconnectReason): void {
    if (client.state === CLOSED) return;
    client.state = CLOSED;
    this.#clients.delete(client);
    client.discard();
    if (client.over) this.#unwatch(client);
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
    if (client.resume !== undefined) {
      client.resume.release();
      client.resume = undefined;
      this.#resuming.delete(client);
    }
    if (this.#clients.size === 0 && this.#timer !== undefined) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
    if (this.#onDisconnect !== undefined) {
      try {
        this.#onDisconnect(client.context, { reason });
      } catch (error) {
        this.#report(
          new Error(`onDisconnect threw: ${errorMessage(error)}`, {
            cause: error,
          }),
        );
      }
    }
  }

  #tick = (): void => {
    for (const client of this.#clients) {
      // A client with a backlog has something to read already.
      if (client.state !== OPEN || client.backlogBytes > 0) continue;
      if (client.wrote) {
        client.wrote = false;
      } else {
        this.#send(client, KEEP_ALIVE_BYTES);
      }
    }
  };
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

function byteLength(chunk: Uint8Array): number {
  return chunk.byteLength;
}

function hook<C, K extends keyof SSEChannelOptions<C>>(
  options: SSEChannelOptions<C>,
  key: K,
): SSEChannelOptions<C>[K] {
  const value = options[key];
  if (value !== undefined && typeof value !== "function") {
    throw new TypeError(
      `Invalid ${key}: expected a function, got ${describe(value)}`,
    );
  }
  return value;
}

function topicsOf(topics: unknown): readonly string[] | null {
  if (topics === undefined) return null;
  if (!Array.isArray(topics)) {
    throw new TypeError(
      `Invalid topics: expected an array of strings, got ${describe(topics)}`,
    );
  }
  for (const topic of topics) {
    if (typeof topic !== "string") {
      throw new TypeError(
        `Invalid topics: expected an array of strings, found ${
          describe(topic)
        }`,
      );
    }
  }
  return [...new Set<string>(topics)];
}

/**
 * The `Last-Event-ID` header, `""` if none. Header values are ByteStrings:
 * browsers send a non-ASCII id as its UTF-8 bytes, which arrive one character
 * per byte, so they are decoded back here.
 */
function lastEventIdOf(request: Request): string {
  const value = request.headers.get("last-event-id");
  if (value === null) return "";
  // deno-lint-ignore no-control-regex
  if (/^[\x00-\x7f]*$/.test(value)) return value;
  const bytes = new Uint8Array(value.length);
  for (let i = 0; i < value.length; i++) bytes[i] = value.charCodeAt(i);
  return new TextDecoder().decode(bytes);
}

function encodeAll(messages: Iterable<SSEMessage>): Uint8Array[] {
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

function notAllowed(): Response {
  return new Response(
    "Method not allowed: an event stream answers GET and HEAD",
    {
      status: 405,
      headers: {
        allow: "GET, HEAD",
        "content-type": "text/plain; charset=utf-8",
      },
    },
  );
}

function unavailable(): Response {
  return new Response("The event channel is closed", {
    status: 503,
    headers: { "content-type": "text/plain; charset=utf-8" },
  });
}
