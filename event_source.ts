// Copyright the sse authors. MIT license.
/**
 * {@linkcode EventSource}: the WHATWG `EventSource`, following the HTML
 * standard (§9.2) to the letter, for the runtimes that lack one (Bun, Node
 * before 22, Cloudflare Workers) or whose own differs from the standard. Code
 * written for browsers runs unchanged.
 *
 * @example Listen to a stream in a runtime without EventSource
 * ```ts ignore
 * import { EventSource } from "@sse/sse/event-source";
 *
 * const source = new EventSource("https://example.com/events");
 * source.onmessage = (event) => console.log(event.data, event.lastEventId);
 * source.addEventListener("update", (event) => console.log(event.data));
 * source.onerror = () => {
 *   if (source.readyState === EventSource.CLOSED) console.log("gave up");
 * };
 * ```
 *
 * @module
 */

import { EventParser } from "./_event_parser.ts";
import type { SSEEvent } from "./parser.ts";
import {
  Backoff,
  CLOSED,
  CONNECTING,
  Connection,
  DEFAULT_BACKOFF_FACTOR,
  DEFAULT_MAX_RETRY_DELAY,
  type FetchLike,
  fetchOption,
  finalFailure,
  headersOption,
  type HeadersSource,
  isEventStream,
  OPEN,
  type ReadyState,
  requestHeaders,
  resolveURL,
  unreadableBody,
} from "./_connection.ts";
import { Pause } from "./_pause.ts";

// §9.2.3: "initially an implementation-defined value, probably in the region
// of a few seconds". Chromium's.
const DEFAULT_RECONNECTION_TIME = 3000;

/**
 * The second argument of the {@linkcode EventSource} constructor: the
 * standard `EventSourceInit`, plus extras that standard code never passes.
 */
export interface EventSourceInit {
  /**
   * Whether cross-origin requests carry credentials (`credentials:
   * "include"`).
   *
   * @default {false}
   */
  withCredentials?: boolean;
  /**
   * Non-standard: the `fetch` to use. It may resolve to a response of another
   * library or realm (anything with a numeric `status`, `headers` with `get`
   * and a `body` stream or `null`); a network-error response (status 0)
   * reestablishes the connection, and anything else that is not a response
   * fails it.
   *
   * @default {globalThis.fetch}
   */
  fetch?: (input: string | URL | Request, init?: RequestInit) => Promise<
    Response
  >;
  /**
   * Non-standard: extra request headers, or a function called (and awaited)
   * before every connection, to refresh a token for instance. `Accept`,
   * `Cache-Control` and `Last-Event-ID` are always the standard's: a
   * `Last-Event-ID` given here is ignored (the header goes out only when the
   * stream has set an ID). A value fetch cannot send (a control character
   * other than tab) makes the constructor throw a `TypeError`; from a
   * function, it fails the connection.
   *
   * @default {undefined}
   */
  headers?: HeadersInit | (() => HeadersInit | Promise<HeadersInit>);
}

/** The events an {@linkcode EventSource} fires, by type. */
export interface EventSourceEventMap {
  /** The connection failed, or was lost and is being reestablished. */
  error: Event;
  /** A message without an `event` field. */
  message: MessageEvent;
  /** The connection opened. */
  open: Event;
}

type Handler<E extends Event> = (this: EventSource, event: E) => unknown;

interface HandlerSlot {
  handler: Handler<Event>;
  listener: (event: Event) => void;
}

/**
 * The WHATWG `EventSource`: an `EventTarget` that connects to an event
 * stream and dispatches its events as `MessageEvent`s.
 *
 * It behaves as the HTML standard's processing model (§9.2.3) says:
 * - the request carries `Accept: text/event-stream`, `Cache-Control:
 *   no-cache` and, once an ID is known, `Last-Event-ID` (UTF-8 bytes; an ID
 *   with a control character other than tab, or with a space or tab at
 *   either end, which no header value can carry as it is, is left out, so
 *   that reconnection still reaches the server and never resumes from
 *   another ID); redirects are followed;
 * - a `200` response with a `text/event-stream` content type opens the
 *   connection (`open`); any other status, `204` included, or any other
 *   content type fails it: `error` with `readyState` CLOSED, and no retry;
 * - when an open stream ends, or the network fails, the connection is
 *   reestablished: `error` with `readyState` CONNECTING, a wait of the
 *   reconnection time (3 s, or the stream's `retry:`), then a new request;
 *   after an attempt that dispatched no message (a network error, a stream
 *   that ended before its first message) the wait grows as the standard
 *   allows ("optionally, wait some more"): from the reconnection time,
 *   raised to at least 100 ms, doubling with each such attempt in a row up
 *   to 30 s, with jitter. A message dispatched brings it back to the
 *   reconnection time, except in a reconnect storm: from the fourth
 *   connection in a row that dispatched messages but lived less than 1 s,
 *   while the reconnection time is below 1 s, the wait grows the same way,
 *   until a connection lives 1 s;
 * - a request that can never succeed (a blocked port, a scheme fetch does not
 *   read, a redirect loop or a redirect to another scheme or to a `Location`
 *   that is not a URL, headers from the `headers` option that fetch cannot
 *   send, a `fetch` option that resolves to something that is not a
 *   response) fails the connection at once,
 *   as the standard allows when reestablishing it is known to be futile;
 * - each message is a `MessageEvent` with `data`, `lastEventId` and `origin`
 *   (the origin of the final URL, after redirects); events with an `event`
 *   field reach only `addEventListener` listeners for that type;
 * - after `close()` nothing is dispatched, not even the rest of a chunk
 *   already received.
 *
 * One limit the standard does not have: an event or line above 16 MiB fails
 * the connection, so that a broken server cannot exhaust memory.
 *
 * @example Receive messages from a server
 * ```ts
 * import { EventSource } from "@sse/sse/event-source";
 * import assert from "node:assert/strict";
 *
 * // An in-process server, through the non-standard `fetch` option.
 * const fetch = () =>
 *   Promise.resolve(
 *     new Response("id: 7\ndata: hello\n\n", {
 *       headers: { "content-type": "text/event-stream" },
 *     }),
 *   );
 * const source = new EventSource("https://example.com/events", { fetch });
 * const event = await new Promise<MessageEvent>((resolve) => {
 *   source.onmessage = resolve;
 * });
 * source.close();
 * assert.equal(event.data, "hello");
 * assert.equal(event.lastEventId, "7");
 * assert.equal(event.origin, "https://example.com");
 * assert.equal(source.readyState, EventSource.CLOSED);
 * ```
 */
export class EventSource extends EventTarget {
  /** The connection has not been established yet, or is being reestablished. */
  declare static readonly CONNECTING: 0;
  /** The connection is open and dispatching events. */
  declare static readonly OPEN: 1;
  /** The connection is closed and will not be reestablished. */
  declare static readonly CLOSED: 2;
  /** `0`: connecting or reconnecting. */
  declare readonly CONNECTING: 0;
  /** `1`: open. */
  declare readonly OPEN: 1;
  /** `2`: closed. */
  declare readonly CLOSED: 2;

  #url: string;
  #withCredentials: boolean;
  #readyState: ReadyState = CONNECTING;
  #fetch: FetchLike;
  #headers: HeadersSource | undefined;
  #parser: EventParser;
  // The serialization of the origin of the final URL (§9.2.6 dispatch).
  #origin = "";
  #connection: Connection | undefined = undefined;
  #pause = new Pause();
  // §9.2.3 "reestablish the connection" step 3: "Optionally, wait some
  // more. In particular, if the previous attempt failed, then user agents
  // might introduce an exponential backoff delay". An attempt that delivered
  // no message counts as failed, and so does a connection in a reconnect
  // storm (see Backoff).
  #backoff = new Backoff(DEFAULT_BACKOFF_FACTOR, DEFAULT_MAX_RETRY_DELAY);
  // Whether the current connection has dispatched a message.
  #progress = false;
  // When the current connection opened (Date.now()): how long it lived
  // tells a reconnect storm.
  #openedAt = 0;
  #handlers = new Map<string, HandlerSlot>();

  /**
   * Creates an event source and starts connecting.
   *
   * @param url The event stream's URL, resolved against the location when
   * there is one. A URL that cannot be parsed throws a `SyntaxError`
   * `DOMException`.
   * @param eventSourceInitDict `withCredentials`, and the non-standard
   * `fetch` and `headers`.
   * @throws {DOMException} A `SyntaxError` when the URL cannot be parsed
   * (§9.2.2 constructor step 5).
   * @throws {TypeError} When `fetch` is not a function, or `headers` is a
   * value that `Headers` refuses or fetch cannot send.
   */
  constructor(url: string | URL, eventSourceInitDict: EventSourceInit = {}) {
    super();
    let record: URL;
    try {
      record = resolveURL(url);
    } catch {
      // §9.2.2 constructor step 5.
      throw new DOMException(`Invalid URL: ${String(url)}`, "SyntaxError");
    }
    this.#url = record.href;
    this.#withCredentials = Boolean(eventSourceInitDict.withCredentials);
    this.#fetch = fetchOption(eventSourceInitDict.fetch);
    this.#headers = headersOption(eventSourceInitDict.headers);
    this.#parser = new EventParser();
    this.#run();
  }

  /**
   * The URL of the event stream, absolute.
   *
   * @returns The serialized URL.
   */
  get url(): string {
    return this.#url;
  }

  /**
   * Whether the requests carry credentials cross-origin.
   *
   * @returns The `withCredentials` the source was created with.
   */
  get withCredentials(): boolean {
    return this.#withCredentials;
  }

  /**
   * The state of the connection.
   *
   * @returns `0` (CONNECTING), `1` (OPEN) or `2` (CLOSED).
   */
  get readyState(): 0 | 1 | 2 {
    return this.#readyState;
  }

  /**
   * The `open` event handler: called, with the source as `this`, each time
   * a connection opens (`readyState` is then OPEN).
   *
   * Handlers are event handler attributes, as in browsers: setting one adds
   * a listener in the order of registration among the others, replacing it
   * keeps that place, setting `null` (or anything but a function) removes
   * it, and a handler that returns `false` cancels the event.
   *
   * @returns The handler, or `null`.
   */
  get onopen(): ((this: EventSource, event: Event) => unknown) | null {
    return this.#getHandler("open");
  }
  /**
   * Sets the `open` event handler.
   *
   * @param handler The handler, or `null` to remove it.
   */
  set onopen(handler: ((this: EventSource, event: Event) => unknown) | null) {
    this.#setHandler("open", handler);
  }

  /**
   * The `message` event handler: called, with the source as `this`, with a
   * `MessageEvent` (`data`, `lastEventId`, `origin`) for each event without
   * an `event` field. Events with one reach only `addEventListener`
   * listeners for their type.
   *
   * @returns The handler, or `null`.
   */
  get onmessage():
    | ((this: EventSource, event: MessageEvent) => unknown)
    | null {
    return this.#getHandler("message");
  }
  /**
   * Sets the `message` event handler.
   *
   * @param handler The handler, or `null` to remove it.
   */
  set onmessage(
    handler: ((this: EventSource, event: MessageEvent) => unknown) | null,
  ) {
    this.#setHandler("message", handler as Handler<Event> | null);
  }

  /**
   * The `error` event handler: called, with the source as `this`, when a
   * connection is lost and about to be reestablished (`readyState`
   * CONNECTING), or fails for good (`readyState` CLOSED: a status other than
   * 200, another content type, a request that can never succeed).
   *
   * @returns The handler, or `null`.
   */
  get onerror(): ((this: EventSource, event: Event) => unknown) | null {
    return this.#getHandler("error");
  }
  /**
   * Sets the `error` event handler.
   *
   * @param handler The handler, or `null` to remove it.
   */
  set onerror(handler: ((this: EventSource, event: Event) => unknown) | null) {
    this.#setHandler("error", handler);
  }

  /**
   * Closes the connection for good: the request or stream is aborted, a
   * pending reconnection is cancelled, `readyState` becomes CLOSED, and no
   * event is dispatched after it.
   */
  close(): void {
    // §9.2.2: abort any instances of fetch for this source; set CLOSED.
    this.#readyState = CLOSED;
    this.#connection?.close();
    this.#connection = undefined;
    this.#pause.cancel();
  }

  /**
   * Adds a listener: `open`, `message` and `error`, or any event type the
   * stream names in its `event` field.
   *
   * @param type The event type.
   * @param listener The listener.
   * @param options As `EventTarget.addEventListener`.
   */
  override addEventListener<K extends keyof EventSourceEventMap>(
    type: K,
    listener: (this: EventSource, event: EventSourceEventMap[K]) => unknown,
    options?: boolean | AddEventListenerOptions,
  ): void;
  /**
   * Adds a listener for an event type the stream names in its `event` field.
   *
   * @param type The event type.
   * @param listener The listener, called with `MessageEvent`s.
   * @param options As `EventTarget.addEventListener`.
   */
  override addEventListener(
    type: string,
    listener: (this: EventSource, event: MessageEvent) => unknown,
    options?: boolean | AddEventListenerOptions,
  ): void;
  /**
   * Adds a listener, as `EventTarget.addEventListener`.
   *
   * @param type The event type.
   * @param listener The listener.
   * @param options As `EventTarget.addEventListener`.
   */
  override addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  override addEventListener(
    type: string,
    listener:
      | EventListenerOrEventListenerObject
      | ((event: MessageEvent) => unknown)
      | null,
    options?: boolean | AddEventListenerOptions,
  ): void {
    super.addEventListener(
      type,
      listener as EventListenerOrEventListenerObject | null,
      options,
    );
  }

  /**
   * Removes a listener added with `addEventListener`.
   *
   * @param type The event type.
   * @param listener The listener.
   * @param options As `EventTarget.removeEventListener`.
   */
  override removeEventListener<K extends keyof EventSourceEventMap>(
    type: K,
    listener: (this: EventSource, event: EventSourceEventMap[K]) => unknown,
    options?: boolean | EventListenerOptions,
  ): void;
  /**
   * Removes a listener for an event type the stream names.
   *
   * @param type The event type.
   * @param listener The listener.
   * @param options As `EventTarget.removeEventListener`.
   */
  override removeEventListener(
    type: string,
    listener: (this: EventSource, event: MessageEvent) => unknown,
    options?: boolean | EventListenerOptions,
  ): void;
  /**
   * Removes a listener, as `EventTarget.removeEventListener`.
   *
   * @param type The event type.
   * @param listener The listener.
   * @param options As `EventTarget.removeEventListener`.
   */
  override removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
  override removeEventListener(
    type: string,
    listener:
      | EventListenerOrEventListenerObject
      | ((event: MessageEvent) => unknown)
      | null,
    options?: boolean | EventListenerOptions,
  ): void {
    super.removeEventListener(
      type,
      listener as EventListenerOrEventListenerObject | null,
      options,
    );
  }

  // A method, not a field comparison: TypeScript would narrow the field
  // across awaits and dispatches, but close() may run during any of them.
  #isClosed(): boolean {
    return this.#readyState === CLOSED;
  }

  #getHandler(type: string): Handler<Event> | null {
    return this.#handlers.get(type)?.handler ?? null;
  }

  // Event handler attributes (HTML §8.1.8.1): one listener per type, added
  // when a handler is first set, kept in place when it is replaced, removed
  // when it is set to null.
  #setHandler(type: string, handler: Handler<Event> | null): void {
    const slot = this.#handlers.get(type);
    if (typeof handler !== "function") {
      if (slot !== undefined) {
        this.#handlers.delete(type);
        super.removeEventListener(type, slot.listener);
      }
      return;
    }
    if (slot !== undefined) {
      slot.handler = handler;
      return;
    }
    const created: HandlerSlot = {
      handler,
      listener: (event) => {
        if (created.handler.call(this, event) === false) event.preventDefault();
      },
    };
    this.#handlers.set(type, created);
    super.addEventListener(type, created.listener);
  }

  // §9.2.6 "dispatch the event", for each event the parser completes.
  #dispatchMessage(event: SSEEvent): void {
    this.#progress = true;
    const origin = this.#origin;
    const message = new MessageEvent(event.type, {
      data: event.data,
      lastEventId: event.id,
      origin,
    });
    if (dropsIds()) {
      if (message.lastEventId !== event.id) {
        defineValue(message, "lastEventId", event.id);
      }
      if (message.origin !== origin) defineValue(message, "origin", origin);
    }
    this.dispatchEvent(message);
  }

  // §9.2.3 processing model: fetch, then announce and read, or fail, or
  // reestablish. Never rejects.
  async #run(): Promise<void> {
    // The constructor returns before anything happens: events are queued as
    // tasks in the standard, so none may be dispatched synchronously.
    await undefined;
    // close() may come at any await: each is followed by a check, and each
    // connection is closed however its attempt ends.
    while (!this.#isClosed()) {
      const connection = new Connection(Infinity);
      this.#connection = connection;
      this.#progress = false;
      let next: Next;
      try {
        next = await this.#attempt(connection);
      } finally {
        connection.close();
        if (this.#connection === connection) this.#connection = undefined;
      }
      if (this.#isClosed()) return;
      if (next === FAIL) {
        this.#fail();
        return;
      }
      if (!(await this.#reestablish())) return;
    }
  }

  // One connection: fetch, then announce and read. Resolves to what the
  // processing model does next (or anything, once closed).
  async #attempt(connection: Connection): Promise<Next> {
    let headers: Headers;
    try {
      let init = this.#headers;
      if (typeof init === "function") {
        init = await connection.until(init(), "The headers function");
        if (this.#isClosed()) return FAIL;
      }
      headers = requestHeaders(init, this.#parser.lastEventId, true);
      headers.set("cache-control", "no-cache");
    } catch {
      // The non-standard headers option failed: nothing to retry.
      return FAIL;
    }
    const init: RequestInit = { headers, redirect: "follow" };
    // Only when asked: some runtimes refuse a `credentials` member.
    if (this.#withCredentials) init.credentials = "include";
    let response: Response;
    try {
      response = await connection.open(this.#fetch, this.#url, init);
    } catch (error) {
      // §9.2.3: a network error reestablishes the connection, "unless the
      // user agent knows that to be futile, in which case the user agent may
      // fail the connection": a request that can never succeed, or a fetch
      // option that resolves to something that is not a response.
      return finalFailure(error) === undefined ? REESTABLISH : FAIL;
    }
    if (this.#isClosed()) return FAIL;
    if (
      response.status !== 200 || !isEventStream(response) ||
      unreadableBody(response) !== undefined
    ) {
      return FAIL;
    }
    this.#origin = new URL(response.url || this.#url).origin;
    // Announce the connection.
    this.#readyState = OPEN;
    this.#openedAt = Date.now();
    this.dispatchEvent(new Event("open"));
    while (!this.#isClosed()) {
      let result: ReadableStreamReadResult<Uint8Array>;
      try {
        result = await connection.read();
      } catch {
        break; // the network failed mid-stream
      }
      if (result.done || this.#isClosed()) break;
      const parser = this.#parser;
      try {
        parser.push(result.value);
        // Nothing after close(), not even the rest of this chunk (§9.2.6:
        // the queued task checks readyState).
        while (!this.#isClosed()) {
          const event = parser.next();
          if (event === undefined) break;
          this.#dispatchMessage(event);
        }
      } catch {
        // Only the size limit throws: this stream cannot be read.
        return FAIL;
      }
    }
    return REESTABLISH;
  }

  // §9.2.3 "fail the connection".
  #fail(): void {
    this.#readyState = CLOSED;
    this.dispatchEvent(new Event("error"));
  }

  // §9.2.3 "reestablish the connection". Resolves to whether to reconnect.
  async #reestablish(): Promise<boolean> {
    // §9.2.5: an event cut off by the end of the stream is discarded; the
    // last event ID and the reconnection time carry over.
    this.#parser.reset();
    this.#readyState = CONNECTING;
    this.dispatchEvent(new Event("error"));
    if (this.#isClosed()) return false;
    // Steps 2 and 3: wait the reconnection time, and longer after a failed
    // attempt or in a storm.
    const time = this.#parser.retry ?? DEFAULT_RECONNECTION_TIME;
    await this.#pause.wait(
      this.#progress
        ? this.#backoff.afterProgress(time, Date.now() - this.#openedAt)
        : this.#backoff.next(time),
    );
    return !this.#isClosed();
  }
}

// What the processing model does after a connection.
const FAIL = 0;
const REESTABLISH = 1;
type Next = typeof FAIL | typeof REESTABLISH;

// Cloudflare Workers' MessageEvent drops `lastEventId` and `origin` from its
// init dictionary (they are own data properties there, so they can be defined
// afterwards). Asked once per MessageEvent class, not per message: in Deno,
// each read of these getters costs a brand check.
let probed: typeof MessageEvent | undefined;
let initDropsIds = false;

function dropsIds(): boolean {
  if (probed !== MessageEvent) {
    probed = MessageEvent;
    const probe = new MessageEvent("message", {
      lastEventId: "1",
      origin: "o",
    });
    initDropsIds = probe.lastEventId !== "1" || probe.origin !== "o";
  }
  return initDropsIds;
}

function defineValue(target: object, name: string, value: string): void {
  Object.defineProperty(target, name, {
    value,
    enumerable: true,
    configurable: true,
  });
}

// Constants on the interface object and its prototype, as WebIDL defines
// them: enumerable, neither writable nor configurable.
for (const target of [EventSource, EventSource.prototype]) {
  Object.defineProperties(target, {
    CONNECTING: { value: CONNECTING, enumerable: true },
    OPEN: { value: OPEN, enumerable: true },
    CLOSED: { value: CLOSED, enumerable: true },
  });
}
