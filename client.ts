// Copyright the sse authors. MIT license.
/**
 * {@linkcode SSEClient} consumes an event stream as an async iterable of
 * {@linkcode SSEEvent}s, and keeps it going: it reconnects when the stream
 * ends or the network fails, resumes with `Last-Event-ID`, follows the
 * server's `retry:` field, and backs off exponentially, with jitter, while a
 * server keeps failing. Any `fetch` request works, `POST` included.
 *
 * @example Follow a stream, resuming where it left off
 * ```ts ignore
 * import { SSEClient } from "@sse/sse/client";
 *
 * const client = new SSEClient("https://example.com/events", {
 *   lastEventId: localStorage.getItem("last-id") ?? "",
 * });
 * for await (const event of client) {
 *   console.log(event.type, event.data);
 *   localStorage.setItem("last-id", event.id);
 * }
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
  type FetchLike,
  finalFailure,
  type HeadersSource,
  isEventStream,
  OPEN,
  parseRetryAfter,
  type ReadyState,
  requestHeaders,
  unreadableBody,
  unsendableId,
} from "./_connection.ts";
import { describeFailure, messageOf } from "./_refusal.ts";
import { Pause } from "./_pause.ts";
import { clientSettings } from "./_client_options.ts";
import { describe } from "./_json.ts";

export type { SSEEvent } from "./parser.ts";

/** Options of {@linkcode SSEError}. */
export interface SSEErrorOptions {
  /** The HTTP status of the response that caused the error. */
  status?: number | undefined;
  /** The headers of that response. */
  headers?: Headers | undefined;
  /** The start of that response's body, as text. */
  body?: string | undefined;
  /** The underlying error. */
  cause?: unknown;
}

/**
 * An error of an {@linkcode SSEClient} connection. When an HTTP response
 * caused it, `status`, `headers` and `body` say what the server said:
 * servers explain a 401 or a 429 in a header or a JSON body.
 *
 * @example Tell an authentication failure apart
 * ```ts
 * import { SSEError } from "@sse/sse/client";
 * import assert from "node:assert/strict";
 *
 * const error = new SSEError("Unexpected status 401", {
 *   status: 401,
 *   headers: new Headers({ "www-authenticate": 'Bearer error="invalid_token"' }),
 *   body: '{"error":"invalid_token"}',
 * });
 * assert.equal(error.name, "SSEError");
 * assert.equal(error.status, 401);
 * assert.equal(JSON.parse(error.body!).error, "invalid_token");
 * ```
 */
export class SSEError extends Error {
  /** The HTTP status of the response that caused the error, if one did. */
  readonly status?: number;
  /** The headers of the response that caused the error, if one did. */
  readonly headers?: Headers;
  /**
   * The start of the body of the response that caused the error, as text:
   * its first 64 KiB, and only what arrived within 5 s. `undefined` when
   * there was none, or an `onResponse` callback read it.
   */
  readonly body?: string;

  /**
   * Creates an error.
   *
   * @param message What went wrong.
   * @param options The response's status, headers and body, and the cause,
   * if any.
   */
  constructor(message: string, options: SSEErrorOptions = {}) {
    super(
      message,
      options.cause === undefined ? undefined : { cause: options.cause },
    );
    this.name = "SSEError";
    if (options.status !== undefined) this.status = options.status;
    if (options.headers !== undefined) this.headers = options.headers;
    if (options.body !== undefined) this.body = options.body;
  }
}

/**
 * What an {@linkcode SSEClientOptions.onResponse} callback may return:
 * nothing to let the client judge the response, or `"retry"` to discard it
 * and try again at once.
 */
export type ResponseVerdict = void | undefined | "retry";

/** Options of {@linkcode SSEClient}. */
export interface SSEClientOptions {
  /**
   * The request method: an HTTP token, other than the methods fetch forbids
   * (`CONNECT`, `TRACE`, `TRACK`) and `HEAD` (whose response never has a
   * body), else the constructor throws a `TypeError`.
   * As in fetch, `DELETE`, `GET`, `HEAD`, `OPTIONS`, `POST` and `PUT` are
   * sent upper-cased whatever their case; any other method is sent as given
   * (methods are case-sensitive: write `PATCH`, not `patch`).
   *
   * @default {"GET"}
   */
  method?: string;
  /**
   * Request headers: a value, or a function called (and awaited) before every
   * attempt, to refresh a token for instance. `Accept: text/event-stream` is
   * added unless present. `Last-Event-ID` belongs to the client: it is sent
   * whenever an ID is known, and never otherwise (not after the stream sends
   * an empty `id`). A `Last-Event-ID` among fixed headers is read as the
   * `lastEventId` seed (a `TypeError` if both are given and differ); one that
   * a function returns is dropped.
   *
   * @default {undefined}
   */
  headers?: HeadersInit | (() => HeadersInit | Promise<HeadersInit>);
  /**
   * The request body, sent again on every attempt (so it cannot be a stream).
   * Not allowed with `GET`.
   *
   * @default {null}
   */
  body?: string | Blob | BufferSource | FormData | URLSearchParams | null;
  /**
   * The `fetch` to use, for instance one that adds credentials or goes
   * through a proxy. It may resolve to a response of another library or
   * realm (npm undici's, node-fetch's): anything with a numeric `status`,
   * `headers` with `get`, and a `body` stream (or `null`). A network-error
   * response (`Response.error()`, status 0) is a network error, retried;
   * anything else that is not a response (`undefined` from a wrapper that
   * forgot to `return`) ends the iteration with an {@linkcode SSEError}
   * (`Invalid response: …`).
   *
   * @default {globalThis.fetch}
   */
  fetch?: (input: string | URL | Request, init?: RequestInit) => Promise<
    Response
  >;
  /**
   * Closes the client when aborted, at once, and no request is made after
   * it. Aborted with the default reason (`controller.abort()`: an
   * `"AbortError"` `DOMException`), iteration just ends, as with `close()`.
   * Aborted with any other reason (the `"TimeoutError"` of
   * `AbortSignal.timeout()`, a reason of yours), iteration throws that
   * reason, as `fetch` rejects with it: a timeout mid-answer does not look
   * like a complete answer.
   *
   * @default {undefined}
   */
  signal?: AbortSignal;
  /**
   * The last event ID to resume from: sent as `Last-Event-ID` on the first
   * request, and carried by events without an `id` until the stream sets one.
   * A fixed `Last-Event-ID` in `headers` does the same.
   *
   * @default {""}
   */
  lastEventId?: string;
  /**
   * The initial reconnection time in milliseconds: how long to wait after a
   * stream ends or drops. The server's `retry:` field replaces it. A wait
   * beyond 2^31 - 1 ms (about 24.8 days, the longest a timer holds), from
   * this option or from the server, is cut to that: a long wait, never
   * "never".
   *
   * @default {3000}
   */
  retry?: number;
  /**
   * The longest wait, in milliseconds, that backoff and `Retry-After` may
   * reach: at least 100 (the least wait after a failed attempt), else a
   * `RangeError`. A server's `retry:` field may still ask for longer.
   *
   * @default {30000}
   */
  maxRetryDelay?: number;
  /**
   * How many reconnection attempts in a row may follow the last connection
   * that made progress (or the start): one that delivered an event, and was
   * not part of a reconnect storm (see {@linkcode SSEClient}). When they are
   * used up, iteration throws the last error (a stream that merely ended
   * just ends the iteration). `0` never reconnects: right for a `POST` that
   * must not be sent twice, such as a language model's answer.
   *
   * @default {Infinity}
   */
  maxRetries?: number;
  /**
   * How much the wait grows with each consecutive failed attempt (one that
   * delivered no event).
   *
   * @default {2}
   */
  backoffFactor?: number;
  /**
   * The longest any one wait of an attempt may last, in milliseconds: for a
   * `headers` function to settle, for the response, and for each chunk of
   * the stream (comments count). When it is over, the attempt counts as
   * failed and is replaced by a new one. Servers that send keep-alive
   * comments make this a dead-connection detector. A value beyond 2^31 - 1
   * (about 24.8 days), like `Infinity`, means no timeout.
   *
   * @default {undefined} (off)
   */
  idleTimeout?: number;
  /**
   * The most bytes (UTF-8) that one unfinished line, or the data of one
   * event, may hold; beyond it iteration throws a `RangeError`, without
   * reconnecting, so a broken server cannot exhaust memory.
   *
   * @default {16777216} (16 MiB)
   */
  maxEventSize?: number;
  /**
   * Called (and awaited) with every response, whatever its status, before
   * the client judges it: to look at a status or a header, or to refresh a
   * token. It may:
   * - return nothing: the client goes on as usual (opens a 200 event stream,
   *   retries 5xx, 429 and 408, ends on 204, throws on the rest);
   * - return `"retry"`: the response is discarded and the request made again
   *   at once, without counting as a failure: after a 401, refresh the token
   *   that the `headers` function returns, then ask for a retry. One retry in
   *   a row: if the retried request's response asks again, the client judges
   *   it as usual;
   * - throw: iteration ends with that error.
   *
   * It may read the body of a response it retries or refuses (the error then
   * has no `body`); reading (or locking) the body of a stream it lets open
   * leaves nothing to parse, and ends the iteration with an
   * {@linkcode SSEError} (`Unreadable stream: …`). `idleTimeout` applies to
   * it.
   *
   * @default {undefined}
   */
  onResponse?: (
    response: Response,
  ) => ResponseVerdict | Promise<ResponseVerdict>;
  /**
   * Called with the response each time a connection opens (`readyState` is
   * then `1`, OPEN).
   *
   * @default {undefined}
   */
  onOpen?: (response: Response) => void;
  /**
   * Called with every failure: a network error, a dropped or idle stream, a
   * retryable status (`readyState` `0`: a retry follows), or the error that
   * ends the iteration (`readyState` `2`).
   *
   * @default {undefined}
   */
  onError?: (error: Error) => void;
  /**
   * Called with the wait, in milliseconds, each time a reconnection is
   * scheduled (`readyState` is `0`, CONNECTING), and with why: the error
   * `onError` was just given (a failed attempt, a dropped stream), or
   * `undefined` when the stream ended normally or `onResponse` asked for a
   * retry.
   *
   * @default {undefined}
   */
  onRetry?: (delay: number, error?: Error) => void;
  /**
   * Called with each comment line the server sends (keep-alives, usually):
   * the text after the `:`, one leading space removed.
   *
   * @default {undefined}
   */
  onComment?: (text: string) => void;
}

/**
 * A resumable event-stream consumer: an async iterable of
 * {@linkcode SSEEvent}s over any `fetch` request.
 *
 * It connects as soon as it is created and reads the body only as fast as
 * it is iterated. On every request it sends `Accept: text/event-stream` and,
 * once an ID is known, `Last-Event-ID` (UTF-8 bytes, as browsers send it).
 * An ID that a header cannot carry (one with a control character other than
 * tab, which the event stream allows, or with a space or tab at either end,
 * which a header value loses: `" 5 "` would reach the server as `"5"`) is
 * left out, so that reconnection still reaches the server and never resumes
 * from an ID it did not send, and reported once through `onError`.
 *
 * Reconnection follows the standard and adds what a robust client needs:
 * - a stream that delivered an event and then ends or drops is reopened after
 *   exactly the reconnection time (`retry`, or the server's `retry:` field);
 *   an event cut off by the drop is never delivered;
 * - an attempt that delivers no event is a failure: a network error, a
 *   retryable status (5xx, 429, 408), or a stream that opens and ends (or
 *   drops) before its first event. Failures in a row wait exponentially
 *   longer: from the reconnection time, raised to at least 100 ms, times
 *   `backoffFactor` per failure up to `maxRetryDelay`, randomised between
 *   half and all of that ("equal jitter") but never less than the
 *   reconnection time; `Retry-After` is honoured up to `maxRetryDelay`. Only
 *   an event delivered resets it (not a successful open), so a server that
 *   accepts every connection and closes it at once is not hammered;
 * - no reconnect storm: a stream that delivers events but lives less than
 *   1 s is short. Three short ones in a row reconnect after exactly the
 *   reconnection time; from the fourth, while the reconnection time is below
 *   1 s, the waits grow as after failures (100–200 ms, then 200–400 ms…),
 *   and such connections are no progress for `maxRetries`. A stream that
 *   lives 1 s or more ends the run. So a server that sends one event and
 *   closes, with `retry: 0`, gets a handful of requests a second at first
 *   and fewer and fewer after, not thousands; a reconnection time of 1 s or
 *   more is always followed exactly. Every wait is a timer, even one of 0;
 * - `204 No Content` ends the iteration normally;
 * - any other status, or a `Content-Type` that is not `text/event-stream`,
 *   makes iteration throw an {@linkcode SSEError} with its `status`, without
 *   retrying;
 * - a request that can never succeed is not retried either: iteration throws
 *   an {@linkcode SSEError} (`Request refused: …`, no `status`) for a URL on
 *   a port the Fetch standard blocks, headers from a `headers` function that
 *   fetch cannot send, a redirect loop, or a redirect to another scheme, to
 *   a blocked port or to a `Location` that is not a URL; and a custom
 *   `fetch` that resolves to something that is not a response ends it with
 *   `Invalid response: …`. Only network errors, 5xx, 429 and 408 are
 *   retried.
 *
 * An {@linkcode SSEError} caused by a response carries its `status`,
 * `headers` and the start of its `body` (64 KiB at most). The `onResponse`
 * callback sees every response first, and may ask for one immediate retry,
 * after refreshing a token for instance.
 *
 * `close()`, the `signal` option, or leaving a `for await` loop ends
 * iteration at once, whatever the client is doing, and releases everything;
 * a signal aborted with a reason other than the default `"AbortError"` (a
 * `TimeoutError` from `AbortSignal.timeout()`) makes it throw that reason.
 * Connection state is observable through `readyState` and the `onOpen`,
 * `onError` and `onRetry` callbacks. A callback that throws ends the
 * iteration with its error.
 *
 * @example Stream a language model's answer from a POST request
 * ```ts ignore
 * import { SSEClient } from "@sse/sse/client";
 *
 * const client = new SSEClient("https://api.example.com/v1/chat/completions", {
 *   method: "POST",
 *   headers: { "content-type": "application/json" },
 *   body: JSON.stringify({ stream: true, messages: [] }),
 *   maxRetries: 0, // never send the prompt twice
 *   signal: AbortSignal.timeout(60_000),
 * });
 * try {
 *   for await (const { data } of client) {
 *     if (data === "[DONE]") break; // leaving the loop closes the client
 *     console.log(JSON.parse(data).choices[0].delta.content);
 *   }
 * } catch (error) {
 *   // The timeout fired mid-answer: the loop throws its TimeoutError.
 *   if ((error as Error).name !== "TimeoutError") throw error;
 *   console.log("(no complete answer within 60 s)");
 * }
 * ```
 *
 * @example Refresh an expired token once, on a 401
 * ```ts ignore
 * import { SSEClient } from "@sse/sse/client";
 *
 * let token = await login();
 * const client = new SSEClient("https://example.com/events", {
 *   headers: () => ({ authorization: `Bearer ${token}` }),
 *   onResponse: async (response) => {
 *     if (response.status !== 401) return;
 *     token = await login(); // the retry's headers() call sends it
 *     return "retry";
 *   },
 * });
 * ```
 *
 * @example Read events from a server
 * ```ts
 * import { SSEClient } from "@sse/sse/client";
 * import assert from "node:assert/strict";
 *
 * // An in-process server, through the `fetch` option.
 * const fetch = () =>
 *   Promise.resolve(
 *     new Response("id: 1\ndata: hello\n\n", {
 *       headers: { "content-type": "text/event-stream" },
 *     }),
 *   );
 * const client = new SSEClient("https://example.com/events", { fetch });
 * for await (const event of client) {
 *   assert.deepEqual(event, { type: "message", data: "hello", id: "1" });
 *   break;
 * }
 * assert.equal(client.readyState, 2);
 * ```
 */
export class SSEClient implements AsyncIterable<SSEEvent> {
  /** The URL requested, absolute. */
  readonly url: string;

  #fetch: FetchLike;
  #method: string;
  #body: BodyInit | null;
  #headers: HeadersSource | undefined;
  #retry: number;
  #maxRetries: number;
  #backoff: Backoff;
  #idleTimeout: number;
  #signal: AbortSignal | undefined;
  #onResponse:
    | ((response: Response) => ResponseVerdict | Promise<ResponseVerdict>)
    | undefined;
  #onOpen: ((response: Response) => void) | undefined;
  #onError: ((error: Error) => void) | undefined;
  #onRetry: ((delay: number, error?: Error) => void) | undefined;

  // Holds the last chunk read; its events are parsed as they are taken.
  #parser: EventParser;

  #state: ReadyState = CONNECTING;
  // The current attempt or open stream.
  #connection: Connection | undefined = undefined;
  // While CONNECTING: the attempt loop, which settles when OPEN or CLOSED.
  #connecting: Promise<void> | undefined = undefined;
  #pause = new Pause();
  // Whether the current connection has delivered an event.
  #progress = false;
  // When the current connection opened (Date.now()): how long it lived
  // tells a reconnect storm.
  #openedAt = 0;
  // Reconnection attempts since the last event delivered.
  #retries = 0;
  // Whether the last response's onResponse asked for a retry, granted.
  #retriedOnRequest = false;
  // The last event ID last reported as one that cannot be sent.
  #unsentId = "";
  // The error that ends the iteration, until it has been thrown.
  // (An abort reason may be anything but undefined: it is thrown as is.)
  #error: unknown = undefined;
  // A next() in progress: later calls wait for it, so results stay in order.
  #pulling: Promise<IteratorResult<SSEEvent>> | undefined = undefined;

  /**
   * Creates a client and starts connecting.
   *
   * @param url The event stream's URL.
   * @param options Request, reconnection and callback options.
   * @throws {TypeError} When the URL is a `Request` (pass its `url`),
   * cannot be parsed or is not http: or https:; when `method` is not an HTTP
   * token, is one fetch forbids (`CONNECT`, `TRACE`, `TRACK`) or is `HEAD`
   * (no body: no event could arrive); when `headers` holds a value fetch
   * cannot send (a control character other than tab); when `body` is given
   * with `GET` or is a stream; when `lastEventId` is not a string or
   * contains NUL, CR or LF; when a number option is not a number (`null`
   * included); when `signal` is not an `AbortSignal`; or when `fetch` or a
   * callback is not a function.
   * @throws {RangeError} When a number option is out of its range
   * (`maxRetryDelay` below 100 ms included).
   */
  constructor(url: string | URL, options: SSEClientOptions = {}) {
    const settings = clientSettings(url, options);
    this.url = settings.url;
    this.#fetch = settings.fetch;
    this.#method = settings.method;
    this.#body = settings.body;
    this.#headers = settings.headers;
    this.#retry = settings.retry;
    this.#maxRetries = settings.maxRetries;
    this.#backoff = new Backoff(settings.backoffFactor, settings.maxRetryDelay);
    this.#idleTimeout = settings.idleTimeout;
    this.#onResponse = settings.onResponse;
    this.#onOpen = settings.onOpen;
    this.#onError = settings.onError;
    this.#onRetry = settings.onRetry;
    this.#parser = new EventParser({
      lastEventId: settings.lastEventId,
      onComment: settings.onComment,
      maxEventSize: options.maxEventSize,
    });

    const signal = options.signal;
    if (signal !== undefined && !(signal instanceof AbortSignal)) {
      throw new TypeError(
        `Invalid signal: expected an AbortSignal, got ${describe(signal)}`,
      );
    }
    if (signal?.aborted) {
      this.#state = CLOSED;
      if (!isDefaultAbort(signal.reason)) this.#error = signal.reason;
      return;
    }
    this.#signal = signal;
    signal?.addEventListener("abort", this.#onAbort);
    this.#connecting = this.#connect(undefined);
  }

  /**
   * The connection state, as `EventSource.readyState`.
   *
   * @returns `0` (CONNECTING, or waiting to retry), `1` (OPEN) or `2`
   * (CLOSED: closed, ended or failed).
   */
  get readyState(): 0 | 1 | 2 {
    return this.#state;
  }

  /**
   * The last event ID: the `lastEventId` option at first, then the ID each
   * event block commits, as events are taken: after an event is handed out,
   * its `id`, never that of an event still unread. Sent as `Last-Event-ID`
   * when reconnecting.
   *
   * @returns The last event ID, `""` if none.
   */
  get lastEventId(): string {
    return this.#parser.lastEventId;
  }

  /**
   * Stops the client: a pending `next()` resolves as done, the current
   * request or stream is cancelled, a scheduled retry is cleared, and no
   * request is made after it. Calling it again does nothing.
   */
  close(): void {
    if (this.#isClosed()) return;
    this.#shutdown();
  }

  /**
   * Iterates over the events. Leaving the loop (`break`, `return`, a thrown
   * error) closes the client.
   *
   * Its `next()` rejects once, with the error that ends the iteration: an
   * {@linkcode SSEError} (a status or content type that is not an event
   * stream, a request that can never succeed, retries used up), a
   * `RangeError` (an event over `maxEventSize`), what a callback or the
   * `headers` function threw, or the reason the `signal` aborted with (other
   * than the default `"AbortError"`, which just ends it).
   *
   * @returns An async iterator of events.
   */
  [Symbol.asyncIterator](): AsyncIterator<SSEEvent> {
    const iterator: AsyncIterableIterator<SSEEvent> = {
      next: () => this.#next(),
      return: () => {
        this.close();
        return Promise.resolve({ done: true, value: undefined });
      },
      [Symbol.asyncIterator]: () => iterator,
    };
    return iterator;
  }

  // A method, not a field comparison: TypeScript would narrow the field
  // across awaits, but close() may run while any of them is pending.
  #isClosed(): boolean {
    return this.#state === CLOSED;
  }

  // The default reason (what `controller.abort()` gives) is a stop, as
  // close() is; any other (a TimeoutError from AbortSignal.timeout(), a
  // custom reason) ends the iteration with that reason, as fetch rejects
  // with it: a timeout mid-answer must not look like a complete answer.
  #onAbort = (): void => {
    const reason = this.#signal?.reason;
    if (this.#isClosed()) return;
    if (isDefaultAbort(reason)) this.#shutdown();
    else this.#end(reason);
  };

  #next(): Promise<IteratorResult<SSEEvent>> {
    // Hot path: the next event of the last chunk read. Events are parsed as
    // they are taken, so none is handed out after close().
    if (this.#state === OPEN) {
      let event: SSEEvent | undefined;
      try {
        event = this.#parser.next();
      } catch (error) {
        this.#fail(error); // the pull below throws it
      }
      // An onComment callback may have closed the client meanwhile.
      if (event !== undefined && !this.#isClosed()) {
        this.#progress = true;
        return Promise.resolve({ value: event, done: false });
      }
    }
    const previous = this.#pulling;
    if (previous !== undefined) {
      const again = () => this.#next();
      return previous.then(again, again);
    }
    const pull = this.#pull();
    this.#pulling = pull;
    const settled = () => {
      if (this.#pulling === pull) this.#pulling = undefined;
    };
    pull.then(settled, settled);
    return pull;
  }

  // Reads chunks until one yields an event, reconnecting as needed.
  async #pull(): Promise<IteratorResult<SSEEvent>> {
    while (true) {
      if (this.#isClosed()) {
        const error = this.#error;
        if (error !== undefined) {
          this.#error = undefined;
          throw error;
        }
        return { done: true, value: undefined };
      }
      if (this.#state === CONNECTING) {
        await this.#connecting;
        continue;
      }
      const connection = this.#connection!;
      let result: ReadableStreamReadResult<Uint8Array> | undefined;
      let failure: unknown = undefined;
      try {
        result = await connection.read();
      } catch (error) {
        failure = error;
      }
      // Closed (or failed) while reading: the loop reports it.
      if (this.#connection !== connection) continue;
      try {
        if (result === undefined) {
          this.#drop(
            new SSEError(`Connection lost: ${messageOf(failure)}`, {
              cause: failure,
            }),
          );
        } else if (result.done) {
          this.#drop(undefined);
        } else {
          this.#parser.push(result.value);
          const event = this.#parser.next();
          // Not after close() from an onComment callback: the loop ends.
          if (event !== undefined && !this.#isClosed()) {
            this.#progress = true;
            return { value: event, done: false };
          }
        }
      } catch (error) {
        this.#fail(error);
      }
    }
  }

  // An open stream ended or broke: reconnect after the reconnection time if
  // it delivered an event (unless it is part of a storm), else after a
  // failure's backoff.
  #drop(error: SSEError | undefined): void {
    this.#connection!.close();
    this.#connection = undefined;
    // §9.2.5: an event cut off by the end of the stream is discarded; the
    // last event ID and the reconnection time carry over.
    this.#parser.reset();
    const time = this.#reconnectionTime();
    let wait: number | undefined = undefined;
    if (this.#progress) {
      wait = this.#backoff.afterProgress(time, Date.now() - this.#openedAt);
      // Progress ends the run of attempts that count against maxRetries;
      // a connection in a storm does not.
      if (!this.#backoff.storming) this.#retries = 0;
    }
    if (this.#retries >= this.#maxRetries) {
      if (error === undefined) this.#shutdown();
      else this.#fail(error);
      return;
    }
    this.#state = CONNECTING;
    if (error !== undefined) this.#onError?.(error);
    if (this.#isClosed()) return; // closed by the callback
    this.#retries++;
    this.#connecting = this.#connect(wait ?? this.#backoff.next(time), error);
  }

  #reconnectionTime(): number {
    return this.#parser.retry ?? this.#retry;
  }

  // Attempts until a stream opens, the client closes, or an error is final.
  // Never rejects.
  // `wait` is undefined for the very first attempt.
  // `reason` is what made the connection end or the attempt fail, if
  // anything did, for onRetry.
  async #connect(
    wait: number | undefined,
    reason?: SSEError,
  ): Promise<void> {
    try {
      while (true) {
        if (this.#isClosed()) return;
        if (wait !== undefined) {
          this.#onRetry?.(wait, reason);
          if (this.#isClosed()) return;
          // A timer even for 0: never a synchronous reconnection loop.
          await this.#pause.wait(wait);
          if (this.#isClosed()) return;
        }
        const connection = new Connection(this.#idleTimeout);
        this.#connection = connection;
        const next = await this.#attempt(connection);
        if (this.#isClosed()) return;
        if (next.kind === "open") {
          this.#state = OPEN;
          this.#progress = false;
          this.#openedAt = Date.now();
          this.#onOpen?.(next.response);
          return;
        }
        connection.close();
        this.#connection = undefined;
        if (next.kind === "end") {
          // No Content: the server has nothing more to send, ever.
          this.#shutdown();
          return;
        }
        wait = next.wait;
        reason = next.error;
        if (reason !== undefined) this.#onError?.(reason);
      }
    } catch (error) {
      this.#fail(error);
    }
  }

  // One attempt: the headers, the request, the response. Resolves with the
  // response of an open stream, the end (204, or closed meanwhile), or the
  // failure to report and the wait before the next attempt; throws what ends
  // the iteration.
  async #attempt(connection: Connection): Promise<Outcome> {
    let init = this.#headers;
    if (typeof init === "function") {
      try {
        init = await connection.until(init(), "The headers function");
      } catch (error) {
        // A function that fails ends the iteration; one that takes longer
        // than idleTimeout makes a failed attempt.
        if (!connection.timedOut) throw error;
        return this.#failed(error);
      }
      if (this.#isClosed()) return ENDED;
    }
    let headers: Headers;
    try {
      headers = requestHeaders(init, this.#parser.lastEventId, false);
    } catch (cause) {
      // What a headers function returned is not headers at all.
      throw new SSEError(`Request refused: ${messageOf(cause)}`, { cause });
    }
    this.#reportUnsendableId();
    if (this.#isClosed()) return ENDED; // closed by the callback
    let response: Response;
    try {
      response = await connection.open(this.#fetch, this.url, {
        method: this.#method,
        headers,
        body: this.#body,
        redirect: "follow",
      });
    } catch (cause) {
      if (this.#isClosed()) return ENDED;
      // The same request would meet the same failure: final.
      const final = finalFailure(cause);
      if (final !== undefined) throw new SSEError(final, { cause });
      return this.#failed(cause);
    }
    if (this.#onResponse !== undefined) {
      let verdict: ResponseVerdict;
      try {
        verdict = await connection.until(
          this.#onResponse(response),
          "The onResponse callback",
        );
      } catch (error) {
        if (!connection.timedOut) throw error;
        return this.#failed(error);
      }
      if (this.#isClosed()) return ENDED;
      if (verdict === "retry" && !this.#retriedOnRequest) {
        this.#retriedOnRequest = true;
        return RETRY_NOW;
      }
    }
    this.#retriedOnRequest = false;
    const status = response.status;
    if (status === 200 && isEventStream(response)) {
      const unreadable = unreadableBody(response);
      if (unreadable !== undefined) {
        throw new SSEError(
          `Unreadable stream: ${unreadable} (by onResponse?)`,
          {
            status,
            headers: response.headers,
          },
        );
      }
      return { kind: "open", response };
    }
    if (status === 204) return ENDED;
    // What the server said, for the error: read before judging.
    const said = {
      status,
      headers: response.headers,
      body: await connection.text(ERROR_BODY_LIMIT, ERROR_BODY_TIME),
    };
    if (this.#isClosed()) return ENDED;
    if (status === 408 || status === 429 || status >= 500) {
      const reason = `Unexpected status ${status}`;
      if (++this.#retries > this.#maxRetries) {
        throw new SSEError(`${reason}: no retries left`, said);
      }
      return {
        kind: "retry",
        wait: this.#backoff.next(
          this.#reconnectionTime(),
          parseRetryAfter(response.headers.get("retry-after"), Date.now()),
        ),
        error: new SSEError(`${reason}: retrying`, said),
      };
    }
    if (status !== 200) {
      throw new SSEError(
        `Unexpected status ${status}: expected 200 with text/event-stream`,
        said,
      );
    }
    const type = response.headers.get("content-type");
    throw new SSEError(
      `Unexpected content type ${
        type === null ? "(none)" : JSON.stringify(type)
      }: expected text/event-stream`,
      said,
    );
  }

  // A failed attempt that may work next time (a network error, an idle
  // timeout): the wait before the next one, or the end when no retry is left.
  #failed(cause: unknown): Retry {
    const reason = `Connection failed: ${describeFailure(cause)}`;
    if (++this.#retries > this.#maxRetries) {
      throw new SSEError(`${reason}: no retries left`, { cause });
    }
    return {
      kind: "retry",
      wait: this.#backoff.next(this.#reconnectionTime()),
      error: new SSEError(reason, { cause }),
    };
  }

  // Once per ID: it is left out of the request (see unsendableId).
  #reportUnsendableId(): void {
    const id = this.#parser.lastEventId;
    if (id === this.#unsentId) return;
    const problem = unsendableId(id);
    if (problem === undefined) return;
    this.#unsentId = id;
    this.#onError?.(new SSEError(`${problem}: reconnecting without it`));
  }

  // The end: the error is thrown once by the iteration.
  #fail(error: unknown): void {
    if (this.#isClosed()) return;
    this.#end(
      error instanceof Error
        ? error
        : new SSEError(`Unexpected error: ${messageOf(error)}`, {
          cause: error,
        }),
    );
  }

  // Ends the iteration with `error`, thrown once, as is.
  #end(error: unknown): void {
    this.#error = error;
    this.#shutdown();
    if (!(error instanceof Error)) return;
    try {
      this.#onError?.(error);
    } catch {
      // The iteration already ends with `error`; it cannot end twice.
    }
  }

  #shutdown(): void {
    this.#state = CLOSED;
    this.#connection?.close();
    this.#connection = undefined;
    this.#pause.cancel();
    this.#signal?.removeEventListener("abort", this.#onAbort);
    this.#signal = undefined;
  }
}

// How an attempt ends, tagged: results are never told apart by class (a
// custom fetch may resolve to a Response of another realm or library).
type Outcome =
  // A stream opened.
  | { kind: "open"; response: Response }
  // Another attempt: the wait before it, and the failure to report (none
  // when an onResponse callback asked for it).
  | Retry
  // No Content, or closed meanwhile.
  | { kind: "end" };

interface Retry {
  kind: "retry";
  wait: number;
  error?: SSEError;
}

const RETRY_NOW: Retry = { kind: "retry", wait: 0 };
const ENDED: Outcome = { kind: "end" };

// Whether an abort reason is the one `abort()` gives when none is passed:
// an "AbortError" DOMException.
function isDefaultAbort(reason: unknown): boolean {
  return typeof reason === "object" && reason !== null &&
    (reason as { name?: unknown }).name === "AbortError";
}

// How much of a refused response's body an SSEError keeps, and how long the
// client waits for it.
const ERROR_BODY_LIMIT = 64 * 1024;
const ERROR_BODY_TIME = 5000;
