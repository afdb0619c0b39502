// Copyright the sse authors. MIT license.
// The connection machinery shared by SSEClient and EventSource: building one
// attempt's request, classifying its response, reading its body with an idle
// timeout, and tearing it all down at once. Policy (when to retry, how long to
// wait, what to report) stays with the callers.
// Spec: https://html.spec.whatwg.org/multipage/server-sent-events.html#the-eventsource-interface

import { startTimeout, type Timer, timerDelay } from "./_timer.ts";

/** `readyState` values, as EventSource has them. */
export const CONNECTING = 0;
export const OPEN = 1;
export const CLOSED = 2;
export type ReadyState = typeof CONNECTING | typeof OPEN | typeof CLOSED;

/** The `fetch` a client uses: the global one, or one that was injected. */
export type FetchLike = (
  input: string | URL | Request,
  init?: RequestInit,
) => Promise<Response>;

/** Request headers: a value, or a function called before every attempt. */
export type HeadersSource =
  | HeadersInit
  | (() => HeadersInit | Promise<HeadersInit>);

const DONE = { done: true } as ReadableStreamReadDoneResult<Uint8Array>;

function ignore(): void {}

/**
 * Resolves `url` against the document's location when there is one (browsers,
 * `deno run --location`), so relative URLs work where they mean something.
 * Throws a `TypeError` when it cannot be parsed.
 */
export function resolveURL(url: string | URL): URL {
  const base = (globalThis as { location?: { href?: string } }).location
    ?.href;
  return new URL(url, base);
}

/**
 * The `fetch` option, checked: the one given, else the global `fetch`.
 * Throws a `TypeError` when that is not a function.
 */
export function fetchOption(fetch: FetchLike | undefined): FetchLike {
  const chosen = fetch ?? globalThis.fetch;
  if (typeof chosen !== "function") {
    throw new TypeError(
      `Invalid fetch: expected a function, got ${typeof chosen}`,
    );
  }
  return chosen;
}

/**
 * The `headers` option, checked once rather than at every attempt: a value
 * must be one `Headers` accepts (else its `TypeError`); a function is called
 * before every attempt.
 */
export function headersOption(
  headers: HeadersSource | undefined,
): HeadersSource | undefined {
  if (headers !== undefined && typeof headers !== "function") {
    new Headers(headers);
  }
  return headers;
}

/**
 * Header values are ByteStrings: a non-ASCII last event ID goes out as its
 * UTF-8 bytes, as browsers send it (§9.2.3 "encoded as UTF-8"), one Latin-1
 * character per byte.
 */
export function toByteString(text: string): string {
  // deno-lint-ignore no-control-regex
  if (/^[\x00-\x7f]*$/.test(text)) return text;
  const bytes = new TextEncoder().encode(text);
  let out = "";
  for (let i = 0; i < bytes.length; i += 4096) {
    out += String.fromCharCode(...bytes.subarray(i, i + 4096));
  }
  return out;
}

/**
 * The headers of one attempt: the caller's, then `Accept` (unless the caller
 * chose one and `forceAccept` is off), then `Last-Event-ID` when one is known.
 */
export function requestHeaders(
  init: HeadersInit | undefined,
  lastEventId: string,
  forceAccept: boolean,
): Headers {
  const headers = new Headers(init);
  if (forceAccept || !headers.has("accept")) {
    headers.set("accept", "text/event-stream");
  }
  if (lastEventId !== "") {
    headers.set("last-event-id", toByteString(lastEventId));
  }
  return headers;
}

/**
 * The essence of a `Content-Type` (type/subtype, lowercase, no parameters),
 * or `""` when there is none.
 */
export function mimeEssence(contentType: string | null): string {
  if (contentType === null) return "";
  const semicolon = contentType.indexOf(";");
  const essence = semicolon === -1
    ? contentType
    : contentType.slice(0, semicolon);
  // HTTP whitespace only (tab, LF, CR, space), as the MIME Sniffing standard.
  return essence.replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, "").toLowerCase();
}

/** Whether the response declares an event stream, parameters and case aside. */
export function isEventStream(response: Response): boolean {
  return mimeEssence(response.headers.get("content-type")) ===
    "text/event-stream";
}

/**
 * A `Retry-After` header in milliseconds from `now`: delay-seconds or an
 * HTTP-date (RFC 9110 §10.2.3). `undefined` when absent or unreadable.
 */
export function parseRetryAfter(
  value: string | null,
  now: number,
): number | undefined {
  if (value === null) return undefined;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const date = Date.parse(text);
  if (Number.isNaN(date)) return undefined;
  return date > now ? date - now : 0;
}

/** The message of anything thrown. */
export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/**
 * One connection attempt and, when it succeeds, its open stream. `close()`
 * ends everything it holds at once: it cancels the body reader (aborting the
 * fetch alone can leave a read pending forever on Deno) and aborts the fetch.
 */
export class Connection {
  #controller = new AbortController();
  #reader: ReadableStreamDefaultReader<Uint8Array> | undefined = undefined;
  #closed = false;
  // Settles when close() is called, to release awaits the fetch signal cannot
  // reach (a headers function, an injected fetch that ignores its signal).
  #stop!: () => void;
  #stopped: Promise<undefined>;
  #idleTimeout: number;
  #timer: Timer | undefined = undefined;
  #timedOut: DOMException | undefined = undefined;

  /**
   * @param idleTimeout Milliseconds without a byte (while waiting for the
   * response or for a chunk) before the connection is closed; `Infinity`
   * turns it off.
   */
  constructor(idleTimeout: number) {
    this.#idleTimeout = idleTimeout;
    this.#stopped = new Promise<undefined>((resolve) => {
      this.#stop = () => resolve(undefined);
    });
  }

  /** Whether close() was called (by the owner, or by the idle timeout). */
  get closed(): boolean {
    return this.#closed;
  }

  /**
   * Waits for `promise`, or until close() is called (then `undefined`):
   * for awaits that no abort signal reaches.
   */
  until<T>(promise: T | Promise<T>): Promise<T | undefined> {
    return Promise.race([promise, this.#stopped]);
  }

  /**
   * Sends the request. Resolves with the response (whatever its status) and
   * takes its body; rejects on a network error, an idle timeout or close().
   */
  async open(
    fetch: FetchLike,
    url: string,
    init: RequestInit,
  ): Promise<Response> {
    init.signal = this.#controller.signal;
    this.#arm();
    try {
      const pending = fetch(url, init);
      const response = await Promise.race([pending, this.#stopped]);
      if (response === undefined || this.#closed) {
        // Closed first: a response that still arrives is released unread.
        pending.then(discard, ignore);
        throw this.#timedOut ??
          new DOMException("The connection was closed", "AbortError");
      }
      if (response.body !== null) this.#reader = response.body.getReader();
      return response;
    } finally {
      this.#disarm();
    }
  }

  /**
   * Reads the next chunk of the body. After close() it resolves as done; an
   * idle timeout rejects it with a `TimeoutError`.
   */
  read(): Promise<ReadableStreamReadResult<Uint8Array>> {
    const reader = this.#reader;
    if (reader === undefined) {
      return this.#timedOut === undefined
        ? Promise.resolve(DONE)
        : Promise.reject(this.#timedOut);
    }
    // Hot path: no timer, no wrapper.
    if (timerDelay(this.#idleTimeout) === undefined) return reader.read();
    this.#arm();
    return reader.read().then(this.#afterRead, this.#afterReadError);
  }

  #afterRead = (
    result: ReadableStreamReadResult<Uint8Array>,
  ): ReadableStreamReadResult<Uint8Array> => {
    this.#disarm();
    if (result.done && this.#timedOut !== undefined) throw this.#timedOut;
    return result;
  };

  #afterReadError = (error: unknown): never => {
    this.#disarm();
    throw this.#timedOut ?? error;
  };

  #arm(): void {
    // A timeout longer than a timer can hold means none (see _timer.ts).
    this.#timer = startTimeout(this.#onIdle, this.#idleTimeout);
  }

  #disarm(): void {
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
  }

  #onIdle = (): void => {
    this.#timer = undefined;
    this.#timedOut = new DOMException(
      `No bytes received for ${this.#idleTimeout} ms`,
      "TimeoutError",
    );
    this.close();
  };

  /** Cancels the body reader, aborts the fetch, releases every await. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#disarm();
    this.#stop();
    const reader = this.#reader;
    if (reader !== undefined) {
      this.#reader = undefined;
      // Cancelling settles a pending read at once, whatever the transport.
      reader.cancel().catch(ignore);
    }
    this.#controller.abort();
  }
}

function discard(response: Response): void {
  response.body?.cancel().catch(ignore);
}
