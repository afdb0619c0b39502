// Copyright the sse authors. MIT license.
// SSEChannel: one broadcast stream served to many clients, with topics,
// resume, hooks, keep-alive and slow-client protection. Exported from
// server.ts.
//
// This file is the channel's public face: checking what it is given,
// answering a connection (onConnect, the topics hook, resume, init) and
// publishing. Its clients and how entries reach them (the fan-out, the hot
// path; catch-ups; slow clients; keep-alive; how a client ends) are in
// _fanout.ts; who is connected and the metrics in _presence.ts; the options
// and the reasons a connection ends in _channel_options.ts; the frames
// (encoded once, live or replayed) in _frames.ts; a connection while
// `connect` answers it (what stops it at once) in _connecting.ts; the one
// broker subscription all clients share in _shared_subscription.ts.

import { encodeSSE, type SSEMessage } from "./encoder.ts";
import { describe, json } from "./_json.ts";
import {
  lastEventIdOf,
  nativeResponse,
  notAllowed,
  unavailable,
} from "./_http.ts";
import {
  type ChannelSettings,
  channelSettings,
  observe,
  type SSEChannelOptions,
  topicsOf,
} from "./_channel_options.ts";
import { type Client, CLOSED, OPEN } from "./_client.ts";
import { Connection, ignore, STOPPED } from "./_connecting.ts";
import { isResponse } from "./_response.ts";
import { encodeAll } from "./_frames.ts";
import { Fanout } from "./_fanout.ts";
import { SharedSubscription } from "./_shared_subscription.ts";
import {
  finalFrame,
  listClients,
  pickClients,
  type SSEChannelClient,
  type SSEChannelMetrics,
} from "./_presence.ts";
import type { Resume } from "./_resume.ts";

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
 * - What a client has not taken waits as references to the shared frames,
 *   up to `maxBacklog` (128 MiB); beyond, it is sent the rest from the
 *   broker's history as it reads, so a burst drops no client that reads. A
 *   client with more than `maxQueue` waiting that takes nothing for
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
 * - `close()` ends every stream, the streams of the connections still in
 *   progress included (200, so that their clients reconnect, to another
 *   instance or to a new channel), and answers later connections 503.
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
  #fanout: Fanout<C>;
  /** The one live broker subscription, for all its clients. */
  #shared: SharedSubscription<C>;
  #closed = false;
  /** The connections inside `connect`. */
  #connections = new Set<Connection<C>>();
  /** Those with a client, by client: its end wakes them. */
  #accepted = new Map<Client<C>, Connection<C>>();
  /** Answered clients whose `signal` is still listened to: its removal. */
  #signals = new Map<Client<C>, () => void>();
  #closing: Promise<void> | undefined;

  /**
   * Creates a channel.
   *
   * @param options Name, replay window, keep-alive, retry hint, queue limit,
   * broker, headers and hooks.
   * @throws {TypeError} For an option of the wrong type (a hook that is not a
   * function, a broker without its methods, a `name` that is not a string).
   * @throws {RangeError} For a number out of range: `keepAlive` below 1000
   * (but 0 or `Infinity`, off), `drainTimeout`, `maxQueue` or `maxBacklog`
   * not positive, `replay` not a non-negative integer, an invalid `retry`.
   */
  constructor(options: SSEChannelOptions<C> = {}) {
    const settings = channelSettings(options);
    this.#settings = settings;
    this.#fanout = new Fanout(settings);
    this.#shared = new SharedSubscription(settings, this.#fanout);
    this.#fanout.onRelease = (client) => {
      this.#accepted.get(client)?.wake?.();
      this.#signals.get(client)?.();
    };
  }

  /**
   * The number of connected clients.
   *
   * @returns Clients whose stream is open (including those still in `init`).
   */
  get size(): number {
    return this.#fanout.clients.size;
  }

  /**
   * Answers a request with the channel's event stream (or with what
   * `onConnect` returned).
   *
   * - GET subscribes the client (see below).
   * - HEAD runs `onConnect`, then answers what GET would (the status and
   *   headers) without a body, and subscribes nothing.
   * - Any other method gets 405 with `Allow: GET, HEAD`, before `onConnect`
   *   and before `topics` is looked at.
   * - `close()` answers the connections still waiting in `onConnect`, the
   *   `topics` hook, the broker or `init` at once, as it ends open clients'
   *   streams: 200 and a stream that ends (after the retry hint), so that
   *   they reconnect — to another instance, or to the channel that replaces
   *   this one (a browser's `EventSource` stops for good on any other
   *   status). Connections that come after `close()` are answered 503 (the
   *   app routes them elsewhere): nothing is accepted after it.
   * - A connection ended while it waits (`disconnect`, a `filter` that threw
   *   for it, the broker's `subscribe` failing: `"broker-error"`, reported)
   *   is answered at once with its stream, ended as an open client's would
   *   be for the same reason: 200, never 503, so that the client reconnects
   *   as after any end.
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
   * A client that goes away once its stream is answered is noticed from the
   * stream's cancel. Before that (a slow `onConnect`, `topics` hook or
   * `init`), only the request's signal can tell; and on workerd, which
   * does not cancel the stream of a client that left (its signal fires at
   * the next write, a keep-alive comment). The channel does not read
   * `request.signal` itself: on Deno 2.9, reading it prints a notice about
   * its legacy behaviour. Pass it as `signal` where it tells that the
   * client left: Node (`@hono/node-server`), Bun, Cloudflare Workers (with
   * the `enable_request_signal` compatibility flag), and Deno (which prints
   * that notice once per process unless run with
   * `--unstable-no-legacy-abort`). The channel listens to it until the
   * client is released; Deno's legacy firing when a response completes
   * comes after its stream ended, so it ends nothing.
   *
   * @param options `topics`: the topics this client receives (`""` is the
   * topic of messages published without one). When absent, the channel's
   * `topics` hook decides from the context; without the hook, every topic.
   * `signal`: aborted when the client leaves; the connection then ends at
   * once, whatever it waits for, and a client already accepted or answered
   * is released (`onDisconnect` reason `"client-closed"`).
   * @returns The response.
   * @throws {TypeError} When `request` is not a `Request`, `topics` (given,
   * or returned by the `topics` hook) is not an array of strings, or
   * `signal` is not an `AbortSignal`.
   */
  async connect(
    request: Request,
    options: { topics?: readonly string[]; signal?: AbortSignal } = {},
  ): Promise<Response> {
    if (!(request instanceof Request)) {
      throw new TypeError(
        `Invalid request: expected a Request, got ${describe(request)}`,
      );
    }
    // The method first: a POST is answered 405 whatever else it carries.
    const { method } = request;
    if (method !== "GET" && method !== "HEAD") return notAllowed();
    const given = options?.topics;
    const topics = topicsOf(given);
    const signal = options?.signal;
    if (signal !== undefined && !(signal instanceof AbortSignal)) {
      throw new TypeError(
        `Invalid signal: expected an AbortSignal, got ${describe(signal)}`,
      );
    }
    if (this.#closed) return unavailable();
    const connection = new Connection<C>();
    this.#connections.add(connection);
    const leave = () => this.#leave(connection);
    signal?.addEventListener("abort", leave);
    if (signal?.aborted) leave();
    try {
      return await this.#answer(request, connection, given, topics);
    } finally {
      this.#connections.delete(connection);
      const { client } = connection;
      if (client !== undefined) this.#accepted.delete(client);
      if (signal !== undefined && client?.state === OPEN) {
        // Answered: the signal goes on telling until the client is released.
        this.#signals.set(client, () => {
          this.#signals.delete(client);
          signal.removeEventListener("abort", leave);
        });
      } else {
        signal?.removeEventListener("abort", leave);
      }
    }
  }

  /**
   * The client of a connection in progress left (its request's signal):
   * its client, if accepted, is released at once (`"client-closed"`), and
   * its wait ends.
   */
  #leave(connection: Connection<C>): void {
    connection.left = true;
    const { client } = connection;
    // Its end wakes the connection (onRelease).
    if (client !== undefined) this.#fanout.end(client, "client-closed");
    else connection.wake?.();
  }

  /** `connect`, once the request is checked (see there). */
  async #answer(
    request: Request,
    connection: Connection<C>,
    given: readonly string[] | undefined,
    topics: readonly string[] | null,
  ): Promise<Response> {
    const { onConnect, init } = this.#settings;
    let context = undefined as C;
    if (onConnect !== undefined) {
      const result = await connection.wait(this.#closed, onConnect(request));
      if (result === STOPPED || this.#stops(connection)) {
        return this.#stopped(connection);
      }
      // A Response of any realm or library refuses (see _response.ts).
      if (isResponse(result)) return nativeResponse(result);
      context = result;
    }
    // RFC 9110 §9.3.2: HEAD answers as GET would, without the content.
    if (request.method === "HEAD") {
      return new Response(null, { headers: this.#settings.headers });
    }
    const connectedAt = Date.now();
    if (given === undefined && this.#settings.topics !== undefined) {
      // disconnect() sees it from now on, its topics not decided yet.
      connection.info = Object.freeze({ context, topics: null, connectedAt });
      const hooked = await connection.wait(
        this.#closed,
        this.#settings.topics(context, request),
      );
      if (hooked === STOPPED || this.#stops(connection)) {
        return this.#stopped(connection);
      }
      topics = topicsOf(hooked, true);
    }
    const lastEventId = lastEventIdOf(request, this.#settings.lastEventIdParam);

    const info: SSEChannelClient<C> = Object.freeze({
      context,
      topics,
      connectedAt,
    });
    const fanout = this.#fanout;
    const { tally } = fanout;
    const { client, stream } = fanout.accept(info);
    connection.client = client;
    connection.stream = stream;
    this.#accepted.set(client, connection);
    try {
      // close() and the client's end answer a connection that waits here at
      // once.
      const shared = await connection.wait(
        this.#closed,
        this.#shared.get(),
      ).catch(() => {
        // The broker is down, or answered no subscription (reported once,
        // by SharedSubscription): a transient failure. The client gets a
        // stream that ends, as on any end, so that it reconnects (an
        // EventSource stops for good on any status but 200), and its next
        // connection subscribes again.
        if (!this.#closed) fanout.end(client, "broker-error");
        return STOPPED;
      });
      if (shared === STOPPED || this.#stops(connection)) {
        return this.#stopped(connection);
      }
      let resume: Resume<C> | undefined;
      if (lastEventId !== "") {
        const resuming = await connection.wait(
          this.#closed,
          fanout.resume(client, lastEventId),
        );
        if (resuming === STOPPED || this.#stops(connection)) {
          return this.#stopped(connection);
        }
        resume = resuming;
        if (resume !== undefined) tally.resumed++;
        else tally.resumeFallbacks++;
      }
      // Waits until init is done; a resuming client joins once caught up.
      if (resume === undefined) fanout.join(client);
      let frames: Uint8Array[] = [];
      if (init !== undefined) {
        const messages = await connection.wait(
          this.#closed,
          init(context, lastEventId, { resumed: resume !== undefined }),
        );
        if (messages === STOPPED || this.#stops(connection)) {
          return this.#stopped(connection);
        }
        if (messages != null) frames = encodeAll(messages);
      }
      fanout.open(client, frames);
      if (client.state !== OPEN) return this.#stopped(connection);
      fanout.started(client, resume);
    } catch (error) {
      fanout.release(client, "connect-failed");
      // A broker closed along with the channel is no error of this request.
      if (this.#closed) return this.#closedStream();
      throw error;
    }
    return new Response(stream, { headers: this.#settings.headers });
  }

  /**
   * Whether a connection must stop: the channel closed, or the connection
   * was ended. Checked after every wait in `connect` (a wait's value may
   * come a few microtasks after `close()`), so that nothing is accepted
   * after `close()`.
   */
  #stops(connection: Connection<C>): boolean {
    return this.#closed || connection.ended;
  }

  /**
   * The answer of a connection that stopped before `connect` answered: its
   * stream, which the fan-out ended as it ends an open client's for the
   * same reason (after the retry hint, and `disconnect`'s final message if
   * one was given), so that it reconnects as after any end; when the
   * channel closed before it had a stream, the retry hint alone. `init`'s
   * messages are not sent: a client that reconnects without having seen
   * them gets them then.
   */
  /** A stream of the retry hint alone (if any), ended: the client reconnects. */
  #closedStream(): Response {
    const { retryBytes, headers } = this.#settings;
    return new Response(retryBytes?.slice() ?? null, { headers });
  }

  #stopped(connection: Connection<C>): Response {
    const fanout = this.#fanout;
    const { client } = connection;
    if (this.#closed) {
      // Ended as close() ends an open client's stream, so that it
      // reconnects (to another instance, or to this one's next channel):
      // on a 503 a browser's EventSource would stop for good.
      if (client === undefined) return this.#closedStream();
      fanout.end(client, "channel-closed");
      return new Response(connection.stream, {
        headers: this.#settings.headers,
      });
    }
    let { stream } = connection;
    if (client === undefined && connection.disconnected === undefined) {
      // It left before it was accepted: nothing was held, nobody reads this.
      return new Response(null, { headers: this.#settings.headers });
    }
    if (client === undefined) {
      // disconnect() picked it in its topics hook: a client only to end.
      let picked: Client<C>;
      ({ client: picked, stream } = fanout.accept(connection.info!));
      fanout.end(picked, "disconnected", connection.disconnected!.last);
    }
    return new Response(stream, { headers: this.#settings.headers });
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
    return listClients(this.#fanout.clients, topic);
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
    return this.#fanout.tally.count(topic);
  }

  /**
   * Ends the streams of the connected clients that `predicate` picks, at
   * once: for a logout, a ban, a permission that changed. Each gets what
   * was already queued for it, then `message` if given, then the end of its
   * stream; `onDisconnect` is told `"disconnected"`.
   *
   * Connections still in progress are asked about too once their context
   * is known (after `onConnect`): one in the `topics` hook (asked about
   * with `topics: null`, not decided yet), waiting for the broker, or in
   * `init`. A picked one is answered at once with its response: the retry
   * hint and `message` if any, already ended, and counted in the return
   * value. A connection still in `onConnect` is not asked about: revoke
   * the session first, so that `onConnect` refuses it.
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
   * {@linkcode SSEChannel.clients}) and connection in progress; `true` ends
   * it, `false` keeps it. It must be synchronous: it runs over every client
   * before any is ended (a Promise it returns is refused, and observed).
   * @param options `message`: sent to each client it ends, last, encoded
   * once.
   * @returns How many clients it ended as `"disconnected"` (not those that
   * ended otherwise meanwhile: an `onDisconnect` that calls `close()` ends
   * the rest as `"channel-closed"`).
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
    const last = finalFrame(options?.message);
    // An async predicate is refused (not a boolean); its promise is observed.
    const ask = (client: SSEChannelClient<C>): boolean => {
      const verdict = predicate(client);
      if (verdict !== true && verdict !== false) observe(verdict, ignore);
      return verdict;
    };
    const fanout = this.#fanout;
    const ending = pickClients(fanout.clients, ask);
    // Connections still in their topics hook: asked about too, before any
    // is ended.
    const waiting = pickClients(
      [...this.#connections].filter((connection) => connection.asked) as (
        & Connection<C>
        & { info: SSEChannelClient<C> }
      )[],
      ask,
    );
    // Counted: those this call ends. An `onDisconnect` that calls close()
    // ends the rest as "channel-closed", not "disconnected".
    let ended = 0;
    for (const client of ending) {
      if (client.state === CLOSED) continue;
      fanout.end(client, "disconnected", last);
      ended++;
    }
    for (const connection of waiting) {
      if (this.#stops(connection)) continue;
      connection.disconnected = { last };
      connection.wake?.();
      ended++;
    }
    return ended;
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
    const fanout = this.#fanout;
    return fanout.tally.snapshot(fanout.clients.size);
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
    this.#fanout.frames.published(stored, encodeSSE(stored));
    const { broker, name, replay } = this.#settings;
    const id = await broker.publish(name, { topic, message: stored }, {
      replay,
    });
    this.#fanout.tally.published++;
    return id;
  }

  /**
   * Closes the channel: every open stream ends (after what was already
   * queued for it), and so do those of the connections still in progress
   * (200 and a stream that ends, so that their clients reconnect); nothing
   * more is sent, subscriptions and timers are released, and later
   * connections are answered 503. A broker the channel created is closed
   * too. Idempotent.
   *
   * A stream whose client has not taken its end within
   * min(`drainTimeout`, 1000 ms) (a peer that never reads) is then cut, so
   * ending the streams takes at most that long, well within Deno Deploy's
   * 5 s between SIGINT and SIGKILL. Deno 2.9 and Bun close a cut
   * connection only when its peer reads again, so `server.shutdown()` may
   * still wait for such a peer: bound it in the app (the demo waits at most
   * 1 s, then exits); Node closes it at once.
   *
   * @returns Once everything is released.
   */
  close(): Promise<void> {
    this.#closing ??= this.#close();
    return this.#closing;
  }

  async #close(): Promise<void> {
    this.#closed = true;
    // Nothing more is delivered; a subscribe in progress is not waited for.
    this.#shared.close();
    for (const connection of this.#connections) connection.wake?.();
    // Streams ended before, still in their grace, are cut too.
    await this.#fanout.close();
    if (this.#settings.ownsBroker) await this.#settings.broker.close();
  }
}
