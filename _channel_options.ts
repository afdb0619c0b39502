// Copyright the sse authors. MIT license.
// The options of SSEChannel, checked once into its settings, and why a
// connection ends. Private: SSEChannelOptions and SSEDisconnectReason are
// exported from server.ts.

import { encodeSSE, type SSEMessage } from "./encoder.ts";
import { describe } from "./_json.ts";
import { keepAliveInterval, sseHeaders } from "./_http.ts";
import { errorReporter, MemoryBroker, type SSEBroker } from "./_broker.ts";

/** Default `maxQueue`: 1 MiB. */
const DEFAULT_MAX_QUEUE = 1024 * 1024;
/** Default `replay`. */
const DEFAULT_REPLAY = 1000;
/** Default `drainTimeout`: 10 s. */
const DEFAULT_DRAIN_TIMEOUT = 10_000;

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

/** The options of a channel, checked, with their defaults. */
export interface ChannelSettings<C> {
  name: string;
  replay: number;
  /** Milliseconds; 0 when off. */
  keepAlive: number;
  maxQueue: number;
  drainTimeout: number;
  broker: SSEBroker;
  /** The channel created the broker, so it closes it. */
  ownsBroker: boolean;
  headers: [string, string][];
  /** The `retry` frame sent first, if any. */
  retryBytes: Uint8Array | undefined;
  onConnect: SSEChannelOptions<C>["onConnect"];
  init: SSEChannelOptions<C>["init"];
  filter: SSEChannelOptions<C>["filter"];
  onDisconnect: SSEChannelOptions<C>["onDisconnect"];
  /** `onError`, never throwing (see `errorReporter`). */
  report: (error: Error) => void;
}

/**
 * Checks a channel's options.
 *
 * @param options The options as given.
 * @returns The settings.
 * @throws {TypeError} For an option of the wrong type.
 * @throws {RangeError} For a number out of range.
 */
export function channelSettings<C>(
  options: SSEChannelOptions<C>,
): ChannelSettings<C> {
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
  let { broker } = options;
  const ownsBroker = broker === undefined;
  if (broker === undefined) {
    broker = new MemoryBroker();
  } else if (
    typeof broker?.publish !== "function" ||
    typeof broker.subscribe !== "function" ||
    typeof broker.history !== "function" ||
    typeof broker.close !== "function"
  ) {
    throw new TypeError(
      "Invalid broker: expected an object with publish, subscribe, history and close methods",
    );
  }
  return {
    name,
    replay,
    keepAlive: keepAliveInterval(options.keepAlive),
    maxQueue,
    drainTimeout,
    broker,
    ownsBroker,
    headers: [...sseHeaders(options.headers)],
    retryBytes: options.retry === undefined
      ? undefined
      : new TextEncoder().encode(encodeSSE({ retry: options.retry })),
    onConnect: hook(options, "onConnect"),
    init: hook(options, "init"),
    filter: hook(options, "filter"),
    onDisconnect: hook(options, "onDisconnect"),
    report: errorReporter("SSEChannel", options.onError),
  };
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

/**
 * Checks the `topics` option of `connect`.
 *
 * @param topics The option as given.
 * @returns The topics without duplicates, or `null` for every topic.
 * @throws {TypeError} When it is not an array of strings.
 */
export function topicsOf(topics: unknown): readonly string[] | null {
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
