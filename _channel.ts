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
// Clients that fall behind: what the runtime has not taken yet waits in the
// client's backlog (shared frames: a reference each), up to `maxQueue`
// bytes. A client whose backlog would go above that falls behind: it leaves
// the fan-out, keeps its backlog and its position (the id of the last entry
// it was written), and once the backlog has drained it is fed from the
// broker's history as it reads, through the same catch-up as a resume
// (_resume.ts), which hands it back to the fan-out where they meet. So a
// burst of any size costs each client at most `maxQueue`, and every client
// that reads gets all of it as long as the history still holds it.
//
// Slow clients: a client is judged on whether it takes what it is sent,
// never on how much waits (DrainJudge in _client.ts): one whose stream is
// full and takes nothing for `drainTimeout` is dropped. Its backlog is
// forgotten and its stream closed; if the runtime has still not taken what
// the stream held after another `drainTimeout`, the stream is errored, so
// that the runtime closes a connection whose peer never reads.
//
// The options and the reasons a connection ends are in _channel_options.ts,
// the frames (encoded once, live or replayed) in _frames.ts.

import { encodeSSE, type SSEMessage } from "./encoder.ts";
import { describe, json } from "./_json.ts";
import { startInterval, type Timer } from "./_timer.ts";
import {
  cutReason,
  KEEP_ALIVE_FRAME,
  lastEventIdOf,
  notAllowed,
  OPENING_FRAME,
  unavailable,
} from "./_http.ts";
import {
  errorMessage,
  isBrokerId,
  type SSEBrokerEntry,
  type SSEBrokerSubscription,
} from "./_broker.ts";
import {
  type ChannelSettings,
  channelSettings,
  type SSEChannelOptions,
  type SSEDisconnectReason,
  topicsOf,
} from "./_channel_options.ts";
import {
  Client,
  type ClientEvents,
  CLOSED,
  CONNECTING,
  DrainJudge,
  OPEN,
  STREAM_QUEUE,
} from "./_client.ts";
import { encodeAll, Frames } from "./_frames.ts";
import {
  type SSEChannelClient,
  type SSEChannelMetrics,
  Tally,
} from "./_presence.ts";
import { IdWindow, PAGE, RECENT, Resume, type ResumeHost } from "./_resume.ts";

/** What `#unlessClosed` resolves to when the channel closed first. */
const CLOSED_NOW: unique symbol = Symbol("closed");

const encoder = new TextEncoder();
const KEEP_ALIVE_BYTES = encoder.encode(KEEP_ALIVE_FRAME);
const OPENING_BYTES = encoder.encode(OPENING_FRAME);

/**
 * A broadcast channel of Server-Sent Events: every connected client receives
 * every message published to the topics it asked for, in publish order, each
 * with the id the broker assigned, and a client that reconnects with
 * `Last-Event-ID` gets exactly the messages it missed.
 *
 * - `connect(request)` answers a request with the event stream; a connection
 *   without `topics` receives every message, one with `topics` only messages
 *   published to one of them (use the topic `""` for messages published
 *   without a topic). Topics come from `connect(request, { topics })`, or
 *   from the `topics` hook, which decides them from the context `onConnect`
 *   returned (per-user topics, with one authentication).
 * - `publish(message, { topic })` validates and encodes the message, stores
 *   it in the broker and resolves to its id. Non-string `data` is
 *   JSON-encoded once. The message must not carry an `id`: the broker
 *   assigns it (`TypeError`).
 * - At most `maxQueue` bytes wait for a client: one that falls further
 *   behind is sent the rest from the broker's history as it reads, so a
 *   burst drops no client that reads. A client that takes nothing for
 *   `drainTimeout` is dropped as slow. A client that goes away is noticed
 *   from its stream's cancel and released at once.
 * - Keep-alive comments come from one timer for the whole channel, not one
 *   per client.
 * - A client resumes from its `Last-Event-ID` header or, without one, from
 *   the `lastEventID` query parameter (`lastEventIdParam`), which a
 *   browser's `EventSource` can send after a page reload.
 * - `clients()` and `count(topic)` say who is connected; `disconnect(…)`
 *   ends chosen clients' streams (logout, ban); `metrics()` is a snapshot
 *   of the channel's figures.
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
 *
 * @example Resume after a page reload, from the query parameter
 * ```ts
 * import { SSEChannel } from "@sse/sse/server";
 * import { SSEParserStream } from "@sse/sse/parser";
 * import assert from "node:assert/strict";
 *
 * const channel = new SSEChannel();
 * const seen = await channel.publish({ data: "seen before the reload" });
 * await channel.publish({ data: "missed" });
 * // The reloaded page opens `new EventSource("/events?lastEventID=" + id)`
 * // with the id it kept in sessionStorage: EventSource sets no headers.
 * const response = await channel.connect(
 *   new Request(`http://localhost/events?lastEventID=${seen}`),
 * );
 * const events = response.body!.pipeThrough(new SSEParserStream()).getReader();
 * assert.equal((await events.read()).value?.data, "missed");
 * await events.cancel();
 * await channel.close();
 * ```
 *
 * @example Per-user topics, decided from the context
 * ```ts
 * import { SSEChannel } from "@sse/sse/server";
 * import { SSEParserStream } from "@sse/sse/parser";
 * import assert from "node:assert/strict";
 *
 * const channel = new SSEChannel<string>({
 *   onConnect(request) {
 *     const name = request.headers.get("x-user");
 *     return name ?? new Response("Unauthorized", { status: 401 });
 *   },
 *   topics: (name) => [`user:${name}`, "news"],
 * });
 * const response = await channel.connect(
 *   new Request("http://localhost/events", { headers: { "x-user": "ada" } }),
 * );
 * await channel.publish({ data: "for bo" }, { topic: "user:bo" });
 * await channel.publish({ data: "for ada" }, { topic: "user:ada" });
 * const events = response.body!.pipeThrough(new SSEParserStream()).getReader();
 * assert.equal((await events.read()).value?.data, "for ada");
 * await events.cancel();
 * await channel.close();
 * ```
 */
export class SSEChannel<C = undefined> {
  #settings: ChannelSettings<C>;
  #filter: SSEChannelOptions<C>["filter"];
  #report: (error: Error) => void;
  #maxQueue: number;
  #streamQueue: number;
  #strategy: QueuingStrategy<Uint8Array>;
  /** A filter result that is not a boolean was reported already. */
  #filterReported = false;

  #tally = new Tally();
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
  #frames: Frames;
  /** The keep-alive tick. */
  #timer: Timer | undefined;
  #drain: DrainJudge<C>;
  #closed = false;
  /** Connections waiting in connect, woken by close (see `#unlessClosed`). */
  #sleepers = new Set<() => void>();
  #closing: Promise<void> | undefined;
  #events: ClientEvents<C> = {
    pull: (client) => this.#pulled(client),
    cancel: (client) => this.#disconnect(client, "client-closed"),
  };
  #host: ResumeHost<C>;

  /**
   * Creates a channel.
   *
   * @param options Name, replay window, keep-alive, retry hint, queue limit,
   * broker, headers and hooks.
   */
  constructor(options: SSEChannelOptions<C> = {}) {
    const settings = channelSettings(options);
    this.#settings = settings;
    this.#filter = settings.filter;
    this.#report = settings.report;
    this.#maxQueue = settings.maxQueue;
    this.#streamQueue = Math.min(settings.maxQueue, STREAM_QUEUE);
    this.#strategy = { highWaterMark: this.#streamQueue, size: byteLength };
    this.#frames = new Frames(settings.name, settings.replay, settings.report);
    this.#host = {
      shared: this.#sharedIds,
      maxQueue: settings.maxQueue,
      history: (after) =>
        this.#settings.broker.history(this.#settings.name, {
          after,
          limit: PAGE,
        }),
      frame: (client, entry) => this.#frameOf(client, entry),
      write: (client, frames, first, last) =>
        this.#writeRun(client, frames, first, last),
      send: (client, bytes) => {
        this.#tally.delivered++;
        this.#write(client, bytes);
      },
      handOver: (client) => this.#handOver(client),
      end: (client, error) => this.#endResume(client, error),
    };
    const cut = cutReason(
      `SSEChannel: cut a connection whose client has not read the end of its stream within ${settings.drainTimeout} ms`,
    );
    this.#drain = new DrainJudge(
      settings.drainTimeout,
      (client) => this.#end(client, "slow"),
      (controller) => {
        try {
          controller.error(cut);
        } catch {
          // The stream is gone already.
        }
      },
    );
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
   * `Last-Event-ID`) the messages it missed, then live messages. A stream
   * with none of these to send at once starts with an empty comment (`:` and
   * a blank line), so that the response's head leaves at once on every
   * runtime (Bun holds it until the first body byte).
   *
   * @param request The request; its `Last-Event-ID` header resumes, and
   * without it, its `lastEventIdParam` query parameter (`lastEventID`).
   * @param options `topics`: the topics this client receives (`""` is the
   * topic of messages published without one). When absent, the channel's
   * `topics` hook decides from the context; without the hook, every topic.
   * @returns The response.
   * @throws {TypeError} When `request` is not a `Request`, or `topics`
   * (given, or returned by the `topics` hook) is not an array of strings.
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
    const given = options?.topics;
    let topics = topicsOf(given);
    const { method } = request;
    if (method !== "GET" && method !== "HEAD") return notAllowed();
    if (this.#closed) return unavailable();
    const { onConnect, init } = this.#settings;
    let context = undefined as C;
    if (onConnect !== undefined) {
      const result = await this.#unlessClosed(onConnect(request));
      if (result === CLOSED_NOW) return unavailable();
      if (result instanceof Response) return result;
      context = result;
    }
    // RFC 9110 §9.3.2: HEAD answers as GET would, without the content.
    if (method === "HEAD") {
      return new Response(null, { headers: this.#settings.headers });
    }
    if (given === undefined && this.#settings.topics !== undefined) {
      const hooked = await this.#unlessClosed(
        this.#settings.topics(context, request),
      );
      if (hooked === CLOSED_NOW) return unavailable();
      topics = topicsOf(hooked, true);
    }
    const lastEventId = lastEventIdOf(request, this.#settings.lastEventIdParam);

    const info: SSEChannelClient<C> = Object.freeze({
      context,
      topics,
      connectedAt: Date.now(),
    });
    const tally = this.#tally;
    const client = new Client<C>(info, this.#streamQueue, this.#events, tally);
    const stream = new ReadableStream<Uint8Array>(client, this.#strategy);
    if (this.#settings.retryBytes !== undefined) {
      client.enqueue(this.#settings.retryBytes);
    }
    this.#clients.add(client);
    tally.joined(topics);
    const { keepAlive } = this.#settings;
    if (this.#timer === undefined && keepAlive > 0) {
      // One timer for the whole channel: a tick every keepAlive / 2 writes a
      // comment to each client that wrote nothing since the previous tick, so
      // an idle client gets one every keepAlive ms (never later), and 10 000
      // clients cost one timer, not 10 000.
      this.#timer = startInterval(this.#tick, keepAlive / 2);
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
        if (resume !== undefined) tally.resumed++;
        else if (client.state === CONNECTING) tally.resumeFallbacks++;
      }
      // Waits until init is done; a resuming client joins once caught up.
      if (client.state === CONNECTING && resume === undefined) {
        this.#join(client);
      }
      let frames: Uint8Array[] = [];
      if (init !== undefined && client.state === CONNECTING) {
        const messages = await this.#unlessClosed(
          init(context, lastEventId, { resumed: resume !== undefined }),
        );
        if (messages === CLOSED_NOW) return unavailable();
        if (messages != null) frames = encodeAll(messages);
      }
      if (client.state !== CONNECTING) return this.#endedAnswer(client, stream);
      this.#open(client, frames);
      if (client.state !== OPEN) return this.#endedAnswer(client, stream);
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
    } catch (error) {
      this.#disconnect(client, "connect-failed");
      // A broker closed along with the channel is no error of this request.
      if (this.#closed) return unavailable();
      throw error;
    }
    return new Response(stream, { headers: this.#settings.headers });
  }

  /**
   * The answer of a connection that ended before `connect` answered: its
   * stream (ended, with `disconnect`'s final message) when `disconnect`
   * ended it, so that it reads as every disconnected client does; 503 when
   * the channel closed.
   */
  #endedAnswer(
    client: Client<C>,
    stream: ReadableStream<Uint8Array>,
  ): Response {
    return client.reason === "disconnected"
      ? new Response(stream, { headers: this.#settings.headers })
      : unavailable();
  }

  /**
   * Lists the connected clients: the contexts `onConnect` returned, with
   * their topics and connection time. Each entry is frozen and the same
   * object for the whole connection; the array is a new one on each call.
   * It costs O(connected clients) (about 0.1 ms for 10 000, see the README);
   * for a count, use {@linkcode SSEChannel.size} or
   * {@linkcode SSEChannel.count}, which cost O(1).
   *
   * Clients still in `onConnect` are not listed; clients in `init` are (as
   * `size` counts them). These are this channel's clients, in this process:
   * servers that share a broker each list their own.
   *
   * @example Who is in a room
   * ```ts
   * import { SSEChannel } from "@sse/sse/server";
   * import assert from "node:assert/strict";
   *
   * const channel = new SSEChannel<{ name: string }>({
   *   onConnect: (request) => ({ name: request.headers.get("x-user") ?? "?" }),
   *   topics: () => ["room:lobby"],
   * });
   * const responses = await Promise.all(["ada", "bo"].map((name) =>
   *   channel.connect(
   *     new Request("http://localhost/", { headers: { "x-user": name } }),
   *   )
   * ));
   * const online = channel.clients("room:lobby").map((c) => c.context.name);
   * assert.deepEqual(online, ["ada", "bo"]);
   * assert.equal(channel.count("room:lobby"), 2);
   * await Promise.all(responses.map((response) => response.body!.cancel()));
   * await channel.close();
   * ```
   *
   * @param topic Only the clients that asked for this topic by name (a
   * client that receives every topic is listed only without `topic`).
   * @returns The clients, in the order they connected.
   * @throws {TypeError} When `topic` is given and is not a string.
   */
  clients(topic?: string): SSEChannelClient<C>[] {
    if (topic !== undefined && typeof topic !== "string") {
      throw new TypeError(
        `Invalid topic: expected a string, got ${describe(topic)}`,
      );
    }
    const list: SSEChannelClient<C>[] = [];
    for (const client of this.#clients) {
      if (topic === undefined || client.topics?.includes(topic)) {
        list.push(client.info);
      }
    }
    return list;
  }

  /**
   * How many connected clients asked for a topic by name, in O(1) (the
   * counts are kept as clients come and go). Clients that receive every
   * topic are not counted: they are `size` less the rest, or
   * `metrics().everyTopic`.
   *
   * @param topic A topic.
   * @returns The number of connected clients subscribed to it by name.
   * @throws {TypeError} When `topic` is not a string.
   */
  count(topic: string): number {
    if (typeof topic !== "string") {
      throw new TypeError(
        `Invalid topic: expected a string, got ${describe(topic)}`,
      );
    }
    return this.#tally.count(topic);
  }

  /**
   * Ends the streams of the connected clients that `predicate` picks, at
   * once: for a logout, a ban, a permission that changed. Each gets what
   * was already queued for it, then `message` if given, then the end of its
   * stream; `onDisconnect` is told `"disconnected"`. A client still in
   * `init` gets its response with `message` alone, already ended.
   *
   * An SSE client reconnects after any end (`EventSource` after its retry
   * delay, `SSEClient` too). To keep one away, use either or both:
   *
   * - `message`: an event the application chooses (`{ event: "signed-out"
   *   }`), on which the page calls `source.close()`; its `retry` field, if
   *   set, also delays the reconnection. It carries no `id`, so the
   *   client's `Last-Event-ID` stays what it was.
   * - `onConnect` answering that user's reconnection with 204 No Content,
   *   which makes `EventSource` and `SSEClient` stop for good, or with 401
   *   or 403, which `EventSource` also treats as final and `SSEClient`
   *   throws as an `SSEError` with its `status`: revoke the session before
   *   calling `disconnect`.
   *
   * @example Sign a user out everywhere
   * ```ts
   * import { SSEChannel } from "@sse/sse/server";
   * import { SSEParserStream } from "@sse/sse/parser";
   * import assert from "node:assert/strict";
   *
   * const sessions = new Map([["s1", "ada"], ["s2", "bo"]]);
   * const channel = new SSEChannel<{ session: string; name: string }>({
   *   onConnect(request) {
   *     const session = request.headers.get("x-session") ?? "";
   *     const name = sessions.get(session);
   *     // A revoked session is told to stop: 204 ends EventSource for good.
   *     if (name === undefined) return new Response(null, { status: 204 });
   *     return { session, name };
   *   },
   * });
   * const open = (session: string) =>
   *   channel.connect(
   *     new Request("http://localhost/", {
   *       headers: { "x-session": session },
   *     }),
   *   );
   * const ada = await open("s1");
   * const bo = await open("s2");
   *
   * sessions.delete("s1");
   * const ended = channel.disconnect((client) => client.context.session === "s1", {
   *   message: { event: "signed-out", data: "" },
   * });
   * assert.equal(ended, 1);
   * const events = await Array.fromAsync(
   *   ada.body!.pipeThrough(new SSEParserStream()),
   * );
   * assert.deepEqual(events.map((event) => event.type), ["signed-out"]);
   * assert.equal((await open("s1")).status, 204);
   * assert.equal(channel.size, 1);
   * await bo.body!.cancel();
   * await channel.close();
   * ```
   *
   * @param predicate Called once with each connected client (see
   * {@linkcode SSEChannel.clients}); `true` ends it, `false` keeps it. It
   * must be synchronous: it runs over every client before any is ended.
   * @param options `message`: sent to each client it ends, last, encoded
   * once.
   * @returns How many clients it ended.
   * @throws {TypeError} When `predicate` is not a function or returns
   * anything but a boolean (nobody is ended then), or `message` has an `id`
   * or is refused by `encodeSSE` (and its `RangeError`); what `predicate`
   * throws, with nobody ended.
   */
  disconnect(
    predicate: (client: SSEChannelClient<C>) => boolean,
    options: { message?: SSEMessage } = {},
  ): number {
    if (typeof predicate !== "function") {
      throw new TypeError(
        `Invalid predicate: expected a function, got ${describe(predicate)}`,
      );
    }
    const message: unknown = options?.message;
    let last: Uint8Array | undefined;
    if (message !== undefined) {
      if (typeof message !== "object" || message === null) {
        throw new TypeError(
          `Invalid message: expected an SSE message object, got ${
            describe(message)
          }`,
        );
      }
      if ((message as SSEMessage).id !== undefined) {
        throw new TypeError(
          "Invalid message: a disconnect message carries no id (it would become the client's Last-Event-ID): remove the id field",
        );
      }
      last = encoder.encode(encodeSSE(message as SSEMessage));
    }
    const ending: Client<C>[] = [];
    for (const client of this.#clients) {
      const verdict: unknown = predicate(client.info);
      if (verdict === true) ending.push(client);
      else if (verdict !== false) {
        throw new TypeError(
          `Invalid predicate result: expected a boolean, got ${
            describe(verdict)
          } (the predicate must be synchronous): nobody was disconnected`,
        );
      }
    }
    for (const client of ending) this.#end(client, "disconnected", last);
    return ending.length;
  }

  /**
   * A snapshot of the channel's figures, for dashboards and health checks:
   * clients connected now and per topic, messages published, received and
   * delivered, bytes sent, resumes served from history and fallen back to
   * `init`, and connections ended by reason (`slow`: dropped as too slow).
   * Plain numbers in a new object (see {@linkcode SSEChannelMetrics}): the
   * counters are integer increments the channel makes anyway, so a snapshot
   * costs O(topics with clients), nothing per client. Every connection
   * accepted is connected or ended: `connections` equals `clients` plus the
   * sum of `disconnects`.
   *
   * @example Expose them to Prometheus
   * ```ts
   * import { SSEChannel } from "@sse/sse/server";
   * import assert from "node:assert/strict";
   *
   * const channel = new SSEChannel();
   * function prometheus(): Response {
   *   const m = channel.metrics();
   *   const lines = [
   *     `sse_clients ${m.clients}`,
   *     `sse_published_total ${m.published}`,
   *     `sse_delivered_total ${m.delivered}`,
   *     `sse_sent_bytes_total ${m.bytesSent}`,
   *     ...Object.entries(m.disconnects).map(([reason, n]) =>
   *       `sse_disconnects_total{reason="${reason}"} ${n}`
   *     ),
   *   ];
   *   return new Response(lines.join("\n") + "\n", {
   *     headers: { "content-type": "text/plain; version=0.0.4" },
   *   });
   * }
   * await channel.publish({ data: "hello" });
   * assert.match(await prometheus().text(), /^sse_published_total 1$/m);
   * await channel.close();
   * ```
   *
   * @returns The figures now.
   */
  metrics(): SSEChannelMetrics {
    return this.#tally.snapshot(this.#clients.size);
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
    this.#frames.published(stored, encodeSSE(stored));
    const { broker, name, replay } = this.#settings;
    const id = await broker.publish(name, { topic, message: stored }, {
      replay,
    });
    this.#tally.published++;
    return id;
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
    // Streams ended before, still in their grace, are cut now.
    this.#drain.close();
    const shared = this.#shared;
    this.#shared = undefined;
    if (shared !== undefined) {
      try {
        (await shared).unsubscribe();
      } catch {
        // It never subscribed: nothing to release.
      }
    }
    if (this.#settings.ownsBroker) await this.#settings.broker.close();
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
    // (No Promise.withResolvers: Node 20 has none.)
    let wake!: () => void;
    const closing = new Promise<typeof CLOSED_NOW>((resolve) => {
      wake = () => resolve(CLOSED_NOW);
    });
    this.#sleepers.add(wake);
    try {
      return await Promise.race([value, closing]);
    } finally {
      this.#sleepers.delete(wake);
    }
  }

  /** Subscribes the channel to its stream once, for all its clients. */
  #subscribeShared(): Promise<SSEBrokerSubscription> {
    if (this.#shared === undefined) {
      const { broker, name } = this.#settings;
      const shared = broker.subscribe(name, (entry) => this.#deliver(entry));
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
    this.#tally.received++;
    const bytes = this.#frames.live(entry);
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
   * forgotten; any other gets what it was sent first. Unless the channel is
   * closing, a stream that the runtime has not taken to its end after
   * another `drainTimeout` is then cut (see DrainJudge).
   */
  #end(
    client: Client<C>,
    reason: SSEDisconnectReason,
    last?: Uint8Array,
  ): void {
    if (client.state === CLOSED) return;
    // A client still in onConnect's wake (the broker, init) is answered by
    // its connect: with its ended stream when `disconnect` ended it (see
    // #endedAnswer), else 503.
    const ended = client.state === OPEN || reason === "disconnected";
    try {
      if (reason === "slow") client.discard();
      else if (client.state === OPEN) client.flushAll();
      if (ended) {
        if (last !== undefined) client.enqueue(last);
        client.controller.close();
      }
    } catch {
      // The runtime closed the stream already: the client is gone.
    }
    this.#disconnect(client, reason);
    if (ended && reason !== "channel-closed") {
      this.#drain.closed(client.controller);
    }
  }

  /** A client's frame of an entry from history, if it selects it. */
  #frameOf(client: Client<C>, entry: SSEBrokerEntry): Uint8Array | undefined {
    if (!client.selects(entry.topic)) return undefined;
    const bytes = this.#frames.replayed(entry);
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
    const shared = client.topics === null && this.#filter === undefined;
    this.#tally.delivered += frames.length;
    this.#write(client, this.#frames.run(frames, first, last, shared));
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
      this.#end(client, "filter-error");
      return false;
    }
  }

  /**
   * Writes a live entry's frame to a client in the fan-out. A client whose
   * backlog would go above `maxQueue` falls behind instead: the frame is not
   * written, and it is fed from the history from its position on. (A frame
   * bigger than `maxQueue` still goes to a client with an empty backlog.)
   */
  #send(client: Client<C>, bytes: Uint8Array, id: string): void {
    const backlog = client.backlogBytes;
    if (
      backlog > 0 && backlog + bytes.byteLength > this.#maxQueue &&
      client.position !== undefined
    ) {
      this.#fallBehind(client);
      return;
    }
    client.position = id;
    this.#tally.delivered++;
    this.#write(client, bytes);
  }

  /** Writes a frame; a client whose stream is then full is judged. */
  #write(client: Client<C>, bytes: Uint8Array): void {
    client.write(bytes);
    if (client.full) this.#drain.watch(client);
  }

  /**
   * Takes a client out of the fan-out, keeping its backlog and its
   * position: once the backlog has drained, it catches up from the history
   * (as a resume does), and rejoins where it meets the fan-out.
   */
  #fallBehind(client: Client<C>): void {
    this.#tally.fellBehind++;
    this.#leave(client);
    client.resume = new Resume(this.#host, client, client.position!);
    this.#resuming.add(client);
  }

  /** Writes `init`'s frames, then what waited meanwhile; then live. */
  #open(client: Client<C>, frames: Uint8Array[]): void {
    client.state = OPEN;
    for (const frame of frames) client.enqueue(frame);
    client.flush();
    if (client.full) this.#drain.watch(client);
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

  /** Releases everything a client holds, then tells `onDisconnect`. */
  #disconnect(client: Client<C>, reason: SSEDisconnectReason): void {
    if (client.state === CLOSED) return;
    client.state = CLOSED;
    client.reason = reason;
    this.#clients.delete(client);
    this.#tally.left(client.topics, reason);
    client.discard();
    this.#drain.unwatch(client);
    this.#leave(client);
    if (client.resume !== undefined) {
      client.resume.release();
      client.resume = undefined;
      this.#resuming.delete(client);
    }
    if (this.#clients.size === 0 && this.#timer !== undefined) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
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

  #tick = (): void => {
    for (const client of this.#clients) {
      // A client with a backlog has something to read already.
      if (client.state !== OPEN || client.backlogBytes > 0) continue;
      if (client.wrote) {
        client.wrote = false;
      } else {
        this.#write(client, KEEP_ALIVE_BYTES);
      }
    }
  };
}

function byteLength(chunk: Uint8Array): number {
  return chunk.byteLength;
}
