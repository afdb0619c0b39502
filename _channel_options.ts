// Copyright the sse authors. MIT license.
// The options of SSEChannel, checked once into its settings, and why a
// connection ends. Private: SSEChannelOptions and SSEDisconnectReason are
// exported from server.ts.

import { encodeSSE, type SSEMessage } from "./encoder.ts";
import { describe } from "./_json.ts";
import { keepAliveInterval, sseHeaders } from "./_http.ts";
import {
  errorMessage,
  errorReporter,
  MemoryBroker,
  type SSEBroker,
} from "./_broker.ts";

/** Default `maxQueue`: 1 MiB. */
const DEFAULT_MAX_QUEUE = 1024 * 1024;
/** Default `replay`. */
const DEFAULT_REPLAY = 1000;
/** Default `lastEventIdParam` (Mercure's name before its protocol 1.0). */
const DEFAULT_LAST_EVENT_ID_PARAM = "lastEventID";
/** Default `maxBacklog`: 128 MiB. */
const DEFAULT_MAX_BACKLOG = 128 * 1024 * 1024;
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
   * `Infinity` turns keep-alive off; anything else must be at least 1000
   * (proxies wait tens of seconds before closing a silent connection, so
   * more often keeps nothing more open and costs a write per client per
   * tick): below that, or negative or `NaN`, the constructor throws a
   * `RangeError` naming the floor.
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
   * The bytes waiting for one client (beyond what the runtime and the
   * kernel took) above which a client that takes nothing for
   * `drainTimeout` is dropped as slow (`onDisconnect` reason `"slow"`). A
   * burst alone never drops a client: what counts is whether it takes
   * anything. Its response stream holds at most 64 KiB (or `maxQueue` if
   * smaller); the rest waits in its backlog, up to `maxBacklog`.
   *
   * @default {1048576} (1 MiB)
   */
  maxQueue?: number;
  /**
   * The most bytes of messages one client's backlog refers to, in bytes of
   * encoded frames. The frames are shared: every client is sent the same
   * bytes, so a backlog costs a reference (8 bytes) per message, and
   * clients that lag by the same stretch pin it once. A client whose
   * backlog would go above it keeps only its position, and is sent the
   * rest from the broker's history, a page at a time as it reads (as a
   * client that reconnects with `Last-Event-ID` is), until it has caught
   * up. So every client that reads gets every message of a burst of any
   * size, as long as the history still holds what it has not got
   * (`replay`); one that falls out of it is ended (`onDisconnect` reason
   * `"replay-lost"`) and its reconnect gets `resumed: false`.
   *
   * @default {134217728} (128 MiB)
   */
  maxBacklog?: number;
  /**
   * Milliseconds a client may take nothing at all while more than
   * `maxQueue` waits for it before it is dropped as slow (`onDisconnect`
   * reason `"slow"`): what the channel held for it is released at once,
   * and its stream is closed. A client catching up from the history
   * (a resume, or a client that fell behind) has the rest of it waiting:
   * it is dropped once it takes nothing for `drainTimeout`, whatever its
   * stream holds. A client that takes anything starts afresh, however far
   * behind it is. It is checked a few times over that span (every
   * `drainTimeout / 4`).
   *
   * A stream the channel ended (a slow client, or `"filter-error"`,
   * `"replay-lost"`, `"broker-error"`) whose client has still not taken its
   * end another `drainTimeout` later is errored, so that the runtime cuts
   * the connection: Node (`@hono/node-server`) closes it at once; Deno
   * 2.9 and Bun 1.4 notice only once the client takes what they were
   * writing to it (they have no write timeout), so a peer that never reads
   * keeps its connection and the runtime's buffers until TCP gives up. With
   * their default error handlers, Deno and Node print one line for the cut
   * (`[SSEChannel: cut a connection …]`), Bun prints nothing.
   *
   * It also bounds each read of the broker's history: one that has not
   * answered within `drainTimeout` counts as failed (reported), so a
   * resuming `connect` answers with `resumed: false`, and a client
   * catching up is ended (`"broker-error"`) and reconnects, instead of
   * waiting for a broker that stopped answering without a word. The
   * channel's broker subscription too: a `subscribe` without an answer by
   * then ends the streams of the connections waiting for it
   * (`"broker-error"`), as a failed one does, and the next connection
   * subscribes again.
   *
   * `Infinity` means never: a client that stops reading is never dropped
   * as slow, and a stream the channel ended is never cut, except by
   * `close()`, which still cuts what is left after 1 000 ms. What such a
   * client holds stays bounded all the same (`maxBacklog`, then its
   * position only). Anything but a positive number (or `Infinity`) makes
   * the constructor throw a `RangeError`.
   *
   * @default {10000}
   */
  drainTimeout?: number;
  /**
   * The query parameter a client may resume from when it sends no
   * `Last-Event-ID` header: a browser's `EventSource` cannot set headers,
   * so after a page reload it resumes only if the page opens it with the
   * last id it saw in its URL (`/events?lastEventID=…`, kept in
   * `sessionStorage`). The header wins when both are sent (an
   * `EventSource` sends the header on its own reconnections, with a newer
   * id than its URL's). The id is checked as the header's is: one this
   * channel's stream did not issue or no longer holds gets `resumed:
   * false`. The default is the name Mercure read before its protocol 1.0
   * (now `last_event_id`: set this option to match). `null` reads the
   * header alone.
   *
   * @default {"lastEventID"}
   */
  lastEventIdParam?: string | null;
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
   * connection with it (for example 401). A Response is told apart by its
   * shape (a numeric `status`, `headers` with `get`, a `body` stream or
   * `null`), so one made by another library or realm (npm undici's on
   * Node) refuses too, copied into a `Response` of the runtime's if it is
   * not one. May be async, or return any thenable (a query builder): it is
   * awaited as a Promise, and `close()` answers a connection waiting on it
   * with 503 at once (its later rejection is observed). A throw rejects
   * `connect`.
   *
   * @default {undefined} (every connection is accepted; the context is `undefined`)
   */
  onConnect?: (request: Request) => C | Response | PromiseLike<C | Response>;
  /**
   * Decides a connection's topics from its context, after `onConnect` has
   * identified it: so per-user topics (`user:ada`) need no second look at
   * the request. Returns (or resolves to) the topics, or `undefined` for
   * every topic; `""` is the topic of messages published without one. It
   * gets the request too, for topics the client asks for (a query
   * parameter), to check against the context.
   *
   * `connect(request, { topics })` wins when it is given: the hook is not
   * called for that connection. A HEAD request does not call it (HEAD
   * subscribes nothing). What it returns is checked as `connect`'s
   * `topics` are: anything but an array of strings or `undefined` rejects
   * `connect` with a `TypeError`, and so does a throw, with what it threw;
   * no client is created, so `onDisconnect` is not called. A thenable is
   * awaited as a Promise. While it runs, `close()` answers the connection
   * at once with a stream that ends (so that it reconnects), and
   * `disconnect()` asks about it (with `topics: null`, not decided yet) and
   * ends it when picked.
   *
   * @default {undefined} (`connect`'s `topics`, else every topic)
   */
  topics?: (
    context: C,
    request: Request,
  ) =>
    | readonly string[]
    | undefined
    | PromiseLike<readonly string[] | undefined>;
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
   * A thenable is awaited as a Promise. A connection ended while `init`
   * runs is answered at once, without waiting for it: 503 when the
   * channel closed, else its stream, ended as an open client's would be
   * for the same reason (`disconnect`'s final message; a `filter` that
   * threw), without `init`'s messages.
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
    | PromiseLike<Iterable<SSEMessage> | void>;
  /**
   * Decides, per client and per message, whether the client gets it. It must
   * be synchronous (it runs inside the fan-out loop). `message` carries the
   * assigned `id`, and `data` as sent (a string: JSON text for non-string
   * data). Only `true` delivers: anything else does not (a Promise from an
   * async filter included: it fails closed, and its rejection is caught),
   * and a result that is not a boolean is reported to `onError` (once per
   * channel). A throw ends that
   * client's stream (after what it was sent before; `onDisconnect` reason
   * `"filter-error"`) and goes to `onError`.
   *
   * @default {undefined} (every subscribed client gets every message)
   */
  filter?: (context: C, message: SSEMessage, topic: string) => boolean;
  /**
   * Called once when a connection ends, after everything it held is
   * released, with why it ended (see {@linkcode SSEDisconnectReason}). Must
   * not throw (a throw goes to `onError`). It may be async (marking a user
   * offline in a database): nothing waits for it, and a rejection goes to
   * `onError` as `onDisconnect rejected: …`.
   *
   * @default {undefined}
   */
  onDisconnect?: (context: C, info: { reason: SSEDisconnectReason }) => void;
  /**
   * Called with each error the channel catches and carries on after: an
   * entry from the broker that the encoder refuses (skipped, live and on
   * resume, and reported once, however many clients skip it: the channel
   * remembers the ids of the last 1 024 it reported; the error names the
   * entry id, its `cause` is the encoder's error), a hook that threw (`filter`, `onDisconnect`), or a
   * broker's `history` that failed for a resuming client. Must not throw.
   * Errors never go to `reportError`, which ends a Deno process. It may be
   * async: nothing waits for it, and if it rejects (or throws), the error
   * and the rejection are written to stderr, one line each.
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
 * - `"slow"`: its stream was full and it took nothing for `drainTimeout`;
 *   its stream was ended (and later cut, see `drainTimeout`). A client that
 *   reconnects with its `Last-Event-ID` resumes from there.
 * - `"disconnected"`: the application ended it with `disconnect()`
 *   (logout, ban, a permission that changed), after `disconnect`'s final
 *   message if one was given. Like any client whose stream ends, it
 *   reconnects unless told otherwise: see `SSEChannel.disconnect`.
 * - `"channel-closed"`: `close()` ended it.
 * - `"filter-error"`: `filter` threw for it; its stream was ended after
 *   what it was sent before.
 * - `"replay-lost"`: while it was catching up (after a reconnect, or after
 *   falling more than `maxBacklog` behind), the entries it still needed left
 *   the replay window; or the broker lost entries of the live stream it
 *   followed (its reader fell behind by more than the stream keeps: the
 *   broker's `onGap`). Its stream was ended rather than skip them, and its
 *   next reconnect gets `resumed: false` (unless the history still holds
 *   what follows its last id).
 * - `"broker-error"`: while it was catching up, the broker's `history`
 *   failed; or as it connected, the broker's `subscribe` failed (or did
 *   not answer within `drainTimeout`). Its stream was ended so that it
 *   reconnects (and resumes), rather than answered with an error status,
 *   on which an `EventSource` stops for good.
 * - `"connect-failed"`: `connect` did not answer with its stream (`init` or
 *   the broker failed, or the channel closed meanwhile).
 */
export type SSEDisconnectReason =
  | "client-closed"
  | "slow"
  | "disconnected"
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
  maxBacklog: number;
  drainTimeout: number;
  broker: SSEBroker;
  /** The channel created the broker, so it closes it. */
  ownsBroker: boolean;
  headers: [string, string][];
  /** The query parameter a client resumes from, if any. */
  lastEventIdParam: string | null;
  /** The `retry` frame sent first, if any. */
  retryBytes: Uint8Array | undefined;
  onConnect: SSEChannelOptions<C>["onConnect"];
  topics: SSEChannelOptions<C>["topics"];
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
  const maxBacklog = options.maxBacklog ?? DEFAULT_MAX_BACKLOG;
  if (typeof maxBacklog !== "number" || !(maxBacklog > 0)) {
    throw new RangeError(
      `Invalid maxBacklog: expected a positive number of bytes, got ${maxBacklog}`,
    );
  }
  const drainTimeout = options.drainTimeout ?? DEFAULT_DRAIN_TIMEOUT;
  if (typeof drainTimeout !== "number" || !(drainTimeout > 0)) {
    throw new RangeError(
      `Invalid drainTimeout: expected a positive number of milliseconds, got ${drainTimeout}`,
    );
  }
  const { lastEventIdParam = DEFAULT_LAST_EVENT_ID_PARAM } = options;
  if (
    lastEventIdParam !== null &&
    (typeof lastEventIdParam !== "string" || lastEventIdParam === "")
  ) {
    throw new TypeError(
      `Invalid lastEventIdParam: expected a non-empty string or null, got ${
        lastEventIdParam === "" ? '""' : describe(lastEventIdParam)
      }`,
    );
  }
  const report = channelReporter(options.onError);
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
    maxBacklog,
    drainTimeout,
    broker,
    ownsBroker,
    headers: [...sseHeaders(options.headers)],
    lastEventIdParam,
    retryBytes: options.retry === undefined
      ? undefined
      : new TextEncoder().encode(encodeSSE({ retry: options.retry })),
    onConnect: hook(options, "onConnect"),
    topics: hook(options, "topics"),
    init: hook(options, "init"),
    filter: observedFilter(hook(options, "filter")),
    onDisconnect: observedOnDisconnect(hook(options, "onDisconnect"), report),
    report,
  };
}

/**
 * Whether a value is a thenable: a Promise of this realm or any other
 * object or function with a `then` method (a query builder, a promise from
 * another library or realm), which `await` would follow. A `then` getter
 * that throws counts: `await` would meet the same throw.
 *
 * @param value Anything.
 * @returns `true` when awaiting it would call its `then`.
 */
export function isThenable(value: unknown): value is PromiseLike<unknown> {
  if (value instanceof Promise) return true;
  if (
    value === null || (typeof value !== "object" && typeof value !== "function")
  ) {
    return false;
  }
  try {
    return typeof (value as { then?: unknown }).then === "function";
  } catch {
    return true;
  }
}

/**
 * Observes what a hook returned where no one awaits it (a hook that must be
 * synchronous, written async): a thenable gets a rejection handler, so that
 * its rejection is never unhandled (which ends a Deno process), and
 * `onRejected` is told. Anything else is left alone.
 *
 * @param value What the hook returned.
 * @param onRejected Told the rejection, if it rejects.
 */
export function observe(
  value: unknown,
  onRejected: (reason: unknown) => void,
): void {
  if (!isThenable(value)) return;
  // Promise.resolve follows any thenable, and turns a then that throws
  // into a rejection: nothing here throws.
  Promise.resolve(value).then(undefined, (reason) => {
    try {
      onRejected(reason);
    } catch {
      // onRejected reports, and reporting never throws.
    }
  });
}

const ignore = (): void => {};

/**
 * `filter`, with its thenables observed: an async filter's promise fails
 * closed (only `true` delivers, and the fan-out reports a non-boolean
 * once), and its rejection, once per call, is caught and dropped: the
 * report already says that the filter must be synchronous.
 */
function observedFilter<C>(
  filter: SSEChannelOptions<C>["filter"],
): SSEChannelOptions<C>["filter"] {
  if (filter === undefined) return undefined;
  return (context, message, topic) => {
    const verdict = filter(context, message, topic);
    if (verdict !== true && verdict !== false) observe(verdict, ignore);
    return verdict;
  };
}

/**
 * `onDisconnect`, with its thenable observed: an async `onDisconnect` that
 * rejects is reported as one that throws is.
 */
function observedOnDisconnect<C>(
  onDisconnect: SSEChannelOptions<C>["onDisconnect"],
  report: (error: Error) => void,
): SSEChannelOptions<C>["onDisconnect"] {
  if (onDisconnect === undefined) return undefined;
  return (context, info) => {
    observe(onDisconnect(context, info), (reason) =>
      report(
        new Error(`onDisconnect rejected: ${errorMessage(reason)}`, {
          cause: reason,
        }),
      ));
  };
}

/**
 * The channel's reporter: `onError`, never throwing (see `errorReporter`),
 * and with its thenable observed: an async `onError` that rejects gets the
 * default report of the error it was given, and one line for the rejection.
 */
function channelReporter(onError: unknown): (error: Error) => void {
  if (typeof onError !== "function") {
    return errorReporter("SSEChannel", onError);
  }
  const log = errorReporter("SSEChannel", undefined);
  return errorReporter("SSEChannel", (error: Error) => {
    observe(onError(error), (reason) => {
      log(error);
      log(new Error(`onError rejected: ${errorMessage(reason)}`));
    });
  });
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
 * Checks the topics of a connection: `connect`'s `topics` option, or what
 * the `topics` hook returned.
 *
 * @param topics The topics as given.
 * @param hooked Whether the `topics` hook returned them (for the message).
 * @returns The topics without duplicates, frozen, or `null` for every topic.
 * @throws {TypeError} When it is neither an array of strings nor undefined.
 */
export function topicsOf(
  topics: unknown,
  hooked = false,
): readonly string[] | null {
  if (topics === undefined) return null;
  if (!Array.isArray(topics)) {
    throw new TypeError(
      hooked
        ? `Invalid topics: the topics hook returned ${
          describe(topics)
        }, expected an array of strings or undefined`
        : `Invalid topics: expected an array of strings, got ${
          describe(topics)
        }`,
    );
  }
  for (const topic of topics) {
    if (typeof topic !== "string") {
      throw new TypeError(
        hooked
          ? `Invalid topics: the topics hook returned an array holding ${
            describe(topic)
          }, expected strings only`
          : `Invalid topics: expected an array of strings, found ${
            describe(topic)
          }`,
      );
    }
  }
  // Frozen: presence hands the same array out (see SSEChannel.clients).
  return Object.freeze([...new Set<string>(topics)]);
}
