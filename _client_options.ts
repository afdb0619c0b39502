// Copyright the sse authors. MIT license.
// SSEClient's options (client.ts), checked once, in the constructor: what
// can never work throws there (a TypeError or RangeError naming the option),
// not at the first attempt. Private: never exported from mod.ts or deno.json.

import {
  DEFAULT_BACKOFF_FACTOR,
  DEFAULT_MAX_RETRY_DELAY,
  type FetchLike,
  fetchOption,
  fromByteString,
  headersOption,
  type HeadersSource,
  MIN_FAILURE_WAIT,
  resolveURL,
} from "./_connection.ts";
import { methodProblem, normalizeMethod } from "./_refusal.ts";
import { describe } from "./_json.ts";
import type { ResponseVerdict, SSEClientOptions } from "./client.ts";

/** The initial reconnection time, when neither option nor server sets it. */
export const DEFAULT_RETRY = 3000;

/** An {@linkcode SSEClient}'s options, checked, with their defaults. */
export interface ClientSettings {
  /** The URL, absolute. */
  url: string;
  fetch: FetchLike;
  /** As fetch sends it. */
  method: string;
  body: BodyInit | null;
  headers: HeadersSource | undefined;
  retry: number;
  maxRetryDelay: number;
  maxRetries: number;
  backoffFactor: number;
  idleTimeout: number;
  /** The seed: the option, or a fixed Last-Event-ID header. */
  lastEventId: string;
  onResponse:
    | ((response: Response) => ResponseVerdict | Promise<ResponseVerdict>)
    | undefined;
  onOpen: ((response: Response) => void) | undefined;
  onError: ((error: Error) => void) | undefined;
  onRetry: ((delay: number, error?: Error) => void) | undefined;
  onComment: ((text: string) => void) | undefined;
}

/**
 * Checks the URL and options of an {@linkcode SSEClient} (see its
 * constructor's `@throws`), but `signal` and `maxEventSize`.
 *
 * @param url The event stream's URL.
 * @param options The options.
 * @returns The settings.
 */
export function clientSettings(
  url: string | URL,
  options: SSEClientOptions,
): ClientSettings {
  if (isRequest(url)) {
    // As fetch takes it: its method, headers and body would be lost.
    throw new TypeError(
      "Invalid URL: expected a string or a URL, got a Request (pass request.url, and its method, headers and body as options)",
    );
  }
  let resolved: URL;
  try {
    resolved = resolveURL(url);
  } catch {
    throw new TypeError(`Invalid URL: ${String(url)}`);
  }
  if (resolved.protocol !== "http:" && resolved.protocol !== "https:") {
    throw new TypeError(
      `Invalid URL: expected http: or https:, got ${resolved.protocol}`,
    );
  }
  const href = resolved.href;

  const fetch = fetchOption(options.fetch);
  const method = options.method ?? "GET";
  const problem = methodProblem(method);
  if (problem !== undefined) throw new TypeError(problem);
  const normalized = normalizeMethod(method);
  if (normalized === "HEAD") {
    // RFC 9110 §9.3.2: a response to HEAD never has content, so every
    // attempt would be a stream that ends before an event: retried forever.
    throw new TypeError(
      "Invalid method: a response to HEAD has no body, so no event could ever arrive",
    );
  }
  const body = options.body ?? null;
  if (body !== null) {
    if (normalized === "GET") {
      throw new TypeError(
        `Invalid body: a ${normalized} request cannot have one`,
      );
    }
    if (body instanceof ReadableStream) {
      throw new TypeError(
        "Invalid body: a stream cannot be sent again on every attempt",
      );
    }
  }
  const headers = headersOption(options.headers);
  const retry = milliseconds("retry", options.retry, DEFAULT_RETRY);
  const maxRetryDelay = milliseconds(
    "maxRetryDelay",
    options.maxRetryDelay,
    DEFAULT_MAX_RETRY_DELAY,
  );
  if (maxRetryDelay < MIN_FAILURE_WAIT) {
    throw new RangeError(
      `Invalid maxRetryDelay: expected at least ${MIN_FAILURE_WAIT} ms (the least wait after a failed attempt), got ${maxRetryDelay}`,
    );
  }
  const maxRetries = numberOption("maxRetries", options.maxRetries) ??
    Infinity;
  if (
    !(maxRetries >= 0 &&
      (Number.isInteger(maxRetries) || maxRetries === Infinity))
  ) {
    throw new RangeError(
      `Invalid maxRetries: expected a non-negative integer or Infinity, got ${maxRetries}`,
    );
  }
  const factor = numberOption("backoffFactor", options.backoffFactor) ??
    DEFAULT_BACKOFF_FACTOR;
  if (!(factor >= 1 && factor < Infinity)) {
    throw new RangeError(
      `Invalid backoffFactor: expected a finite number of at least 1, got ${factor}`,
    );
  }
  const idle = numberOption(
    "idleTimeout",
    options.idleTimeout,
    "a number of milliseconds",
  ) ?? Infinity;
  if (!(idle > 0)) {
    throw new RangeError(
      `Invalid idleTimeout: expected a positive number of milliseconds, got ${idle}`,
    );
  }
  if (
    options.lastEventId !== undefined &&
    typeof options.lastEventId !== "string"
  ) {
    throw new TypeError(
      `Invalid lastEventId: expected a string, got ${
        describe(options.lastEventId)
      }`,
    );
  }
  let lastEventId = options.lastEventId ?? "";
  // A Last-Event-ID among fixed headers is the seed; the client sends the
  // header itself from then on.
  const header = headers === undefined || typeof headers === "function"
    ? null
    : new Headers(headers).get("last-event-id");
  if (header !== null) {
    const seed = fromByteString(header);
    if (options.lastEventId === undefined) {
      lastEventId = seed;
    } else if (seed !== lastEventId) {
      throw new TypeError(
        `Invalid headers: Last-Event-ID ${
          JSON.stringify(seed)
        } contradicts the lastEventId option ${
          JSON.stringify(lastEventId)
        }: give one of them`,
      );
    }
  }
  if (typeof lastEventId === "string" && /[\0\n\r]/.test(lastEventId)) {
    throw new TypeError(
      `Invalid lastEventId: an ID cannot contain NUL, CR or LF, got ${
        JSON.stringify(lastEventId)
      }`,
    );
  }
  return {
    url: href,
    fetch,
    method: normalized,
    body,
    headers,
    retry,
    maxRetryDelay,
    maxRetries,
    backoffFactor: factor,
    idleTimeout: idle,
    lastEventId,
    onResponse: callback("onResponse", options.onResponse),
    onOpen: callback("onOpen", options.onOpen),
    onError: callback("onError", options.onError),
    onRetry: callback("onRetry", options.onRetry),
    onComment: callback("onComment", options.onComment),
  };
}

// Whether a value is a fetch Request (of this realm or another): what
// stringifies to "[object Request]", not to its URL.
function isRequest(value: unknown): boolean {
  return typeof value === "object" && value !== null &&
    !(value instanceof URL) &&
    Object.prototype.toString.call(value) === "[object Request]";
}

// A callback option, type-checked: one that is not a function would throw
// only when called, in the middle of the stream.
function callback<T>(name: string, value: T): T {
  if (value === undefined || typeof value === "function") return value;
  throw new TypeError(
    `Invalid ${name}: expected a function, got ${describe(value)}`,
  );
}

// A number option, type-checked: `null` (from a JSON config, say) or a
// string is not read as a number.
function numberOption(
  name: string,
  value: unknown,
  expected = "a number",
): number | undefined {
  if (value === undefined || typeof value === "number") return value;
  throw new TypeError(
    `Invalid ${name}: expected ${expected}, got ${describe(value)}`,
  );
}

function milliseconds(
  name: string,
  option: number | undefined,
  fallback: number,
): number {
  const value = numberOption(name, option, "a number of milliseconds");
  if (value === undefined) return fallback;
  if (!(value >= 0)) {
    throw new RangeError(
      `Invalid ${name}: expected a non-negative number of milliseconds, got ${value}`,
    );
  }
  return value;
}
