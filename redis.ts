// Copyright the sse authors. MIT license.
/**
 * {@linkcode RedisBroker}: an {@linkcode SSEBroker} on Redis Streams, so that
 * several server instances behind a load balancer share one event stream, and
 * a client can resume on any of them.
 *
 * - Each channel is one Redis stream, at key `prefix + name` (`"sse:news"` by
 *   default). `publish` is one `XADD … MAXLEN ~ replay`; the entry id Redis
 *   assigns (`"1718000000000-0"`) is the event id, so ids are ordered across
 *   every instance.
 * - Each broker reads new entries of all the streams its process subscribes
 *   to with one blocking `XREAD` on one connection of its own, and fans them
 *   out locally: two Redis connections per process, whatever the number of
 *   clients or channels.
 * - A client that comes back with `Last-Event-ID` (to this instance or any
 *   other) gets exactly the entries after it that Redis still keeps
 *   (`XRANGE`), then the live ones, with no gap and no duplicate.
 * - When Redis restarts or is briefly unreachable, the broker reconnects,
 *   reports the outage once (`onError`), and reads on from where it stopped,
 *   so nothing stored in Redis is missed. `publish` rejects while Redis is
 *   unreachable instead of queueing.
 *
 * It needs one Redis server (5.0 or later; the one primary of a replicated
 * setup): Redis Cluster is not supported, as one `XREAD` spans every stream.
 *
 * This is the only module with a dependency: the npm `@redis/client` (v6,
 * the client the `redis` package bundles). It is not re-exported from the
 * package root.
 *
 * @example Share one channel between instances
 * ```ts
 * import { RedisBroker } from "@sse/sse/redis";
 *
 * // Connects on first use; every instance points at the same Redis.
 * const broker = new RedisBroker({
 *   url: Deno.env.get("REDIS_URL") ?? "redis://127.0.0.1:6379",
 *   prefix: "myapp:sse:",
 * });
 * // Hand it to each SSEChannel as its `broker`, then on shutdown:
 * await broker.close();
 * ```
 *
 * @module
 */

import { createClient } from "@redis/client";
import {
  BrokerSubscription,
  checkPublish,
  checkSubscribe,
  reportUncaught,
  type SSEBroker,
  type SSEBrokerEntry,
  type SSEBrokerSubscription,
} from "./_broker.ts";
import type { SSEMessage } from "./encoder.ts";
import { Pause } from "./_pause.ts";
import { startTimeout, type Timer } from "./_timer.ts";

export type { SSEBroker, SSEBrokerEntry, SSEBrokerSubscription, SSEMessage };

/**
 * The part of a node-redis client that {@linkcode RedisBroker} uses when it
 * is given one: `duplicate()`, to open its own connections with the same
 * settings (URL, credentials, TLS, database, socket options). Any client made
 * by `createClient` from `@redis/client` (or the `redis` package, which
 * re-exports it) fits.
 */
export interface RedisClientTemplate {
  /**
   * Makes a new, unconnected client with this client's settings and the
   * given overrides.
   *
   * @param overrides Settings that differ from this client's.
   * @returns The new client.
   */
  duplicate(overrides: { RESP: 2; disableOfflineQueue: boolean }): unknown;
}

/** Options of {@linkcode RedisBroker}. */
export interface RedisBrokerOptions {
  /**
   * The Redis server, as `redis[s]://[[user][:password]@]host[:port][/db]`.
   * Ignored when `client` is given.
   * @default {"redis://127.0.0.1:6379"}
   */
  url?: string;
  /**
   * An existing node-redis client whose settings the broker copies with
   * `client.duplicate()`. The broker never sends commands on it, never
   * connects or closes it: it opens two connections of its own, so that the
   * choices its guarantees rest on (no offline queue for `publish`, RESP2
   * replies, reconnection) are its own and your client stays as you set it.
   */
  client?: RedisClientTemplate;
  /**
   * Prefix of the Redis keys: the stream of channel `name` is at
   * `prefix + name`. Each broker also keeps one tiny stream of its own at
   * `prefix + "~wake:" + <random id>` (removed by `close()`, and expiring an
   * hour after its last use otherwise) to re-issue its blocking read when its
   * process starts reading a new stream.
   * @default {"sse:"}
   */
  prefix?: string;
  /**
   * The longest the broker waits for Redis to answer a command it waits on
   * (`publish`, the queries of `subscribe`, connecting, and `close()`), in
   * ms. A command without an answer by then fails (`publish` and `subscribe`
   * reject) and the broker drops that connection and opens a new one: a
   * Redis that stops answering (a stopped process, a paused VM, a network
   * that drops packets) cannot hold the application longer than this. The
   * blocking read that brings new entries waits up to 2 s for entries, plus
   * this. Redis answers in well under a millisecond normally; keep room for
   * its slowest moments (a large `XRANGE`, a fork for a snapshot).
   * @default {3000}
   */
  commandTimeout?: number;
  /**
   * Called when Redis becomes unreachable or stops answering (once per
   * outage, not once per reconnection attempt) and for errors no caller can
   * be told of, such as an entry that is not the broker's. The broker keeps
   * retrying either way.
   * @default {writes one line to stderr with console.error}
   */
  onError?: (error: Error) => void;
}

/** The node-redis client surface the broker uses, with RESP2 replies. */
interface Connection {
  readonly isOpen: boolean;
  readonly isReady: boolean;
  connect(): Promise<unknown>;
  sendCommand(args: string[]): Promise<unknown>;
  close(): Promise<void>;
  destroy(): void;
  on(event: string, listener: (value: unknown) => void): unknown;
}

/** A stream entry as RESP2 returns it: `[id, [field, value, …]]`. */
type RawEntry = [string, string[]];

/** One Redis stream read by this broker. */
interface Stream {
  readonly name: string;
  readonly key: string;
  /** Id of the last entry read from Redis (`"0-0"` before any). */
  cursor: string;
  /** Whether `cursor` is known, so the blocking read includes this stream. */
  watched: boolean;
  /** Settles when `cursor` is known. */
  ready: Promise<void>;
  subscribers: Set<Subscriber>;
}

const DEFAULT_URL = "redis://127.0.0.1:6379";
const DEFAULT_PREFIX = "sse:";
/**
 * How long one blocking read waits for entries before it is re-issued, in ms.
 * Short enough that a reader whose Redis stopped answering notices soon
 * (after this plus `commandTimeout`); an idle process re-issues it twice a
 * minute, which costs Redis nothing.
 */
const BLOCK_MS = 2_000;
const DEFAULT_COMMAND_TIMEOUT = 3_000;
/** Entries read per stream per `XREAD`, to bound one reply's size. */
const READ_COUNT = 1_000;
/** The wake stream expires this long after its last use, in ms. */
const WAKE_TTL_MS = 3_600_000;
/** Backoff of the read loop after a failed `XREAD`, in ms. */
const RETRY_MIN_MS = 50;
const RETRY_MAX_MS = 2_000;

/**
 * An {@linkcode SSEBroker} on Redis Streams: events published on any
 * instance reach the clients of every instance, with ids ordered across all
 * of them, and a client resumes on any instance with `Last-Event-ID`.
 *
 * Connections are opened on first use (one for `publish` and queries, and
 * one for the blocking read once something is subscribed) and re-opened
 * after a failure.
 *
 * Delivery guarantee: `publish` resolves once Redis has stored the entry
 * (persisted as your Redis configuration says: use `appendonly yes` if a
 * Redis restart must lose nothing), and from then on every subscriber in every
 * process receives it, also across a Redis restart or outage. `publish`
 * rejects at once when Redis is unreachable (no offline queue); if the
 * connection breaks after the command was sent, it rejects although Redis may
 * have stored the entry, in which case it is delivered as usual.
 *
 * @example One broker per process, shared by its channels
 * ```ts
 * import { RedisBroker } from "@sse/sse/redis";
 * import { SSEChannel } from "@sse/sse/server";
 *
 * // Every instance behind the load balancer runs this, with the same Redis.
 * const broker = new RedisBroker({ url: "redis://127.0.0.1:6379" });
 * const news = new SSEChannel({ name: "news", broker, replay: 1000 });
 *
 * // Serve it with Deno.serve((request) => news.connect(request)), and publish
 * // from any instance: await news.publish({ data: "hello" });
 *
 * // On shutdown (nothing has connected to Redis yet in this example):
 * await news.close();
 * await broker.close();
 * ```
 */
export class RedisBroker implements SSEBroker {
  #template: RedisClientTemplate | undefined;
  #url: string;
  #prefix: string;
  #onError: (error: Error) => void;
  #commandTimeout: number;
  /** For `publish` and queries; no offline queue, so it fails fast. */
  #writer: Connection | undefined;
  /** For the blocking `XREAD` only; queues while offline, so the loop waits. */
  #reader: Connection | undefined;
  /** Settles with the writer's first connection attempt. */
  #opened: Promise<void> | undefined;
  #openedSettled = false;
  #streams = new Map<string, Stream>();
  /** Named at first use: Workers refuse random values in global scope. */
  #wakeKey = "";
  #wakeCursor = "0-0";
  #loop: Promise<void> | undefined;
  /** The read loop's wait after a failed `XREAD`. */
  #retryPause = new Pause();
  #reconnectTimer: Timer | undefined;
  /** Failed reconnection attempts in a row, for the backoff. */
  #reconnects = 0;
  #healthy = true;
  #closed = false;
  #closing: Promise<void> | undefined;

  /**
   * Creates a broker. Nothing connects until the first `publish` or
   * `subscribe`.
   *
   * @param options Where Redis is (`url` or `client`), the key `prefix`,
   * `commandTimeout` and `onError`.
   * @throws {TypeError} When an option has the wrong type.
   * @throws {RangeError} When `commandTimeout` is not a positive number.
   */
  constructor(options: RedisBrokerOptions = {}) {
    const {
      url,
      client,
      prefix = DEFAULT_PREFIX,
      commandTimeout = DEFAULT_COMMAND_TIMEOUT,
      onError,
    } = options;
    if (url !== undefined && typeof url !== "string") {
      throw new TypeError(`Invalid url: expected a string, got ${typeof url}`);
    }
    if (
      client !== undefined &&
      typeof (client as { duplicate?: unknown })?.duplicate !== "function"
    ) {
      throw new TypeError(
        "Invalid client: expected a node-redis client (with duplicate())",
      );
    }
    if (typeof prefix !== "string") {
      throw new TypeError(
        `Invalid prefix: expected a string, got ${typeof prefix}`,
      );
    }
    if (typeof commandTimeout !== "number" || !(commandTimeout > 0)) {
      throw new RangeError(
        `Invalid commandTimeout: expected a positive number of milliseconds, got ${
          String(commandTimeout)
        }`,
      );
    }
    if (onError !== undefined && typeof onError !== "function") {
      throw new TypeError(
        `Invalid onError: expected a function, got ${typeof onError}`,
      );
    }
    this.#template = client;
    this.#commandTimeout = commandTimeout;
    this.#url = url ?? DEFAULT_URL;
    this.#prefix = prefix;
    this.#onError = onError ?? warn;
  }

  /**
   * Appends the message to the stream with `XADD`, trimming it to about
   * `replay` entries (`MAXLEN ~`). Every subscriber of the stream, in every
   * process, then receives it.
   *
   * @param name The stream (the channel's `name`); the key is `prefix + name`.
   * @param entry The topic (`""` for none) and the message; its `id`, if any,
   * is left out (Redis assigns the id).
   * @param options `replay`: how many entries the stream keeps, at least.
   * @returns The Redis entry id, once Redis has stored the entry. Rejects at
   * once, storing nothing, when Redis is unreachable, and after
   * `commandTimeout` when Redis does not answer (it may then still store the
   * entry once it answers again, and deliver it as usual).
   */
  async publish(
    name: string,
    entry: { topic: string; message: SSEMessage },
    options: { replay: number },
  ): Promise<string> {
    if (this.#closed) throw new TypeError("Cannot publish: broker is closed");
    const { topic, message, replay } = checkPublish(name, entry, options);
    const json = JSON.stringify(message);

    try {
      const writer = await this.#open();
      const id = await this.#send(writer, [
        "XADD",
        this.#prefix + name,
        "MAXLEN",
        "~",
        String(replay),
        "*",
        "topic",
        topic,
        "message",
        json,
      ]);
      return id as string;
    } catch (error) {
      if (this.#closed) {
        throw new TypeError("Cannot publish: broker is closed");
      }
      throw new Error(
        `Cannot publish to ${JSON.stringify(name)}: ${errorMessage(error)}`,
        { cause: error },
      );
    }
  }

  /**
   * Subscribes to a stream: replays the entries after `lastEventId` that
   * Redis still keeps (`XRANGE`), then delivers new ones as this process's
   * blocking read brings them, in id order, with no gap and no duplicate.
   *
   * `resumed` is `false` when `lastEventId` is not an id of this stream that
   * it still covers: not a Redis stream id, or not in the stream any more
   * (trimmed, or lost by Redis), or never assigned.
   *
   * @param name The stream.
   * @param options `lastEventId`: resume after this id.
   * @param onEntry Called with each entry; must not throw (a throw is
   * reported with `reportError`, or `console.error` where the runtime has
   * none).
   * @returns The subscription, once its replay is delivered. Rejects when
   * Redis cannot be reached to find where the stream ends.
   */
  async subscribe(
    name: string,
    options: { lastEventId?: string },
    onEntry: (entry: SSEBrokerEntry) => void,
  ): Promise<SSEBrokerSubscription> {
    if (this.#closed) throw new TypeError("Cannot subscribe: broker is closed");
    const lastEventId = checkSubscribe(name, options, onEntry);
    // An id Redis cannot have assigned is unknown: live entries only.
    const after = lastEventId === undefined
      ? undefined
      : canonicalId(lastEventId);

    // Join the stream's subscribers before anything is read from Redis: the
    // live entries the loop brings from now on are buffered while the replay
    // is fetched, and the replay reaches at least as far as the loop's cursor
    // did when we joined, so together they leave no gap.
    let writer: Connection;
    try {
      writer = await this.#open();
    } catch (error) {
      if (this.#closed) throw error;
      throw new Error(
        `Cannot subscribe to ${JSON.stringify(name)}: ${errorMessage(error)}`,
        { cause: error },
      );
    }
    const stream = this.#watch(name);
    const subscriber = new Subscriber(onEntry, after);
    stream.subscribers.add(subscriber);
    const release = () => this.#release(stream, subscriber);
    try {
      await stream.ready;
      let resumed = lastEventId === undefined;
      if (after !== undefined) {
        const replay = await this.#replay(writer, stream.key, after);
        resumed = replay !== undefined;
        if (resumed) {
          for (const entry of replay!) subscriber.replayed(entry);
        }
      }
      if (this.#closed) {
        throw new TypeError("Cannot subscribe: broker is closed");
      }
      subscriber.goLive(resumed);
      return new BrokerSubscription(resumed, release);
    } catch (error) {
      release();
      throw error;
    }
  }

  /**
   * Ends every subscription, stops the blocking read, waits for publishes in
   * flight, and closes the broker's connections (not a `client` you gave).
   * Later calls to `publish` and `subscribe` reject. Idempotent.
   *
   * @returns Once every connection and timer is released.
   */
  close(): Promise<void> {
    if (this.#closing !== undefined) return this.#closing;
    this.#closed = true;
    for (const stream of this.#streams.values()) {
      for (const subscriber of stream.subscribers) subscriber.active = false;
      stream.subscribers.clear();
    }
    this.#streams.clear();
    this.#cancelRetry();
    this.#closing = this.#shutDown();
    return this.#closing;
  }

  async #shutDown(): Promise<void> {
    const writer = this.#writer;
    if (writer === undefined) return;
    // Ends the blocking read at once (close() would wait for its reply).
    this.#reader?.destroy();
    if (writer.isReady) {
      // Removes the wake stream and lets publishes in flight finish, within
      // one commandTimeout for both: a frozen Redis cannot hold close().
      const graceful = (async () => {
        await writer.sendCommand(["DEL", this.#wakeKey]);
        await writer.close();
      })();
      await this.#bounded(writer, graceful).catch(() => writer.destroy());
    } else {
      writer.destroy();
    }
    await this.#loop;
    await this.#opened?.catch(() => {});
  }

  /**
   * Creates the writer connection on first use and waits for its first
   * attempt to connect. Later calls do not wait: while Redis is unreachable,
   * commands on the writer reject at once. (The reader is created with the
   * read loop, so a process that only publishes holds one connection.)
   */
  async #open(): Promise<Connection> {
    if (this.#opened === undefined) {
      this.#wakeKey = `${this.#prefix}~wake:${crypto.randomUUID()}`;
      const writer = this.#connection(false);
      this.#writer = writer;
      this.#opened = this.#connect(writer).finally(() =>
        this.#openedSettled = true
      );
    }
    if (!this.#openedSettled) await this.#opened;
    if (this.#closed) throw new TypeError("Cannot use a closed broker");
    return this.#writer!;
  }

  /**
   * A new connection with the broker's settings. It does not reconnect by
   * itself (`reconnectStrategy: false`): the broker does, on its own timer,
   * so that `close()` can cancel a pending attempt (node-redis's own retry
   * delay cannot be cancelled, and would outlive the broker).
   */
  #connection(offlineQueue: boolean): Connection {
    const template = this.#template as
      | (RedisClientTemplate & { options?: { socket?: object } })
      | undefined;
    const settings = {
      RESP: 2,
      disableOfflineQueue: !offlineQueue,
      // No node-redis command timer: it only bounds the time before a
      // command is written, not the wait for its reply; #bounded does both.
      commandOptions: { timeout: 0 },
      maintNotifications: "disabled",
    } as const;
    const client = (template === undefined
      ? createClient({
        url: this.#url,
        ...settings,
        socket: { reconnectStrategy: false },
      })
      : template.duplicate({
        ...settings,
        // Settings of a template that RESP2 or raw replies cannot take.
        clientSideCache: undefined,
        emitInvalidate: undefined,
        keyPrefix: undefined,
        socket: { ...template.options?.socket, reconnectStrategy: false },
      } as unknown as { RESP: 2; disableOfflineQueue: boolean })) as Connection;
    client.on(
      "error",
      (error) => this.#fault(error, "Redis connection failed"),
    );
    client.on("ready", () => {
      this.#reconnects = 0;
      if (this.#writer?.isReady && (this.#reader?.isReady ?? true)) {
        this.#healthy = true;
      }
      // Redis is back: reconnect the other connection now rather than after
      // its backoff, and let the read loop read now rather than after its.
      if (this.#reconnectTimer !== undefined) {
        clearTimeout(this.#reconnectTimer);
        this.#reconnectTimer = undefined;
        this.#reconnectAll();
      }
      if (client === this.#reader) this.#retryPause.cancel();
    });
    // The connection closed for good: reconnect it (and any other) later.
    client.on("terminated", () => this.#reconnectLater());
    return client;
  }

  /**
   * Connects a client; settles with the outcome of this one attempt, within
   * `commandTimeout` (a Redis that accepts the connection but does not answer
   * the handshake fails it).
   */
  #connect(client: Connection): Promise<void> {
    return this.#bounded(client, client.connect()).then(() => {});
  }

  /**
   * Sends a command and waits for its reply, at most `commandTimeout` (plus
   * `extra` ms, for a blocking command).
   */
  #send(client: Connection, args: string[], extra = 0): Promise<unknown> {
    return this.#bounded(client, client.sendCommand(args), extra);
  }

  /**
   * Settles like `promise`, or rejects once `commandTimeout` (plus `extra`)
   * has passed without an answer on `client`. Its connection is then
   * dropped: the replies of a connection that missed one cannot be trusted
   * to come, and every command queued on it fails with it. A new connection
   * is made after the usual backoff.
   */
  #bounded<T>(
    client: Connection,
    promise: Promise<T>,
    extra = 0,
  ): Promise<T> {
    const ms = this.#commandTimeout + extra;
    let timer: Timer | undefined;
    const expired = new Promise<never>((_, reject) => {
      timer = startTimeout(() => {
        const error = new Error(`no answer from Redis within ${ms} ms`);
        reject(error);
        this.#fault(error, "Redis connection dropped");
        client.destroy();
        this.#reconnectLater();
      }, ms);
    });
    return Promise.race([promise, expired]).finally(() => clearTimeout(timer));
  }

  /** Reconnects every closed connection after a backoff, until close(). */
  #reconnectLater(): void {
    if (this.#closed || this.#reconnectTimer !== undefined) return;
    const delay = Math.min(
      RETRY_MIN_MS * 2 ** this.#reconnects++,
      RETRY_MAX_MS,
    );
    this.#reconnectTimer = startTimeout(() => {
      this.#reconnectTimer = undefined;
      this.#reconnectAll();
    }, delay + Math.random() * delay / 4);
  }

  #reconnectAll(): void {
    if (this.#closed) return;
    for (const client of [this.#writer, this.#reader]) {
      // A failed attempt emits "terminated" (or, timed out, is dropped),
      // which schedules the next.
      if (client !== undefined && !client.isOpen) {
        this.#connect(client).catch(() => {});
      }
    }
  }

  /** Reports an error once per outage. */
  #fault(error: unknown, context: string): void {
    if (this.#closed || !this.#healthy) return;
    this.#healthy = false;
    this.#report(
      new Error(`${context}: ${errorMessage(error)}`, { cause: error }),
    );
  }

  #report(error: unknown): void {
    try {
      this.#onError(error instanceof Error ? error : new Error(String(error)));
    } catch (thrown) {
      reportUncaught(thrown);
    }
  }

  /** The stream of `name`, read by the loop from now on. */
  #watch(name: string): Stream {
    const stream = this.#streams.get(name);
    if (stream !== undefined) return stream;
    const created: Stream = {
      name,
      key: this.#prefix + name,
      cursor: "0-0",
      watched: false,
      ready: Promise.resolve(),
      subscribers: new Set(),
    };
    created.ready = this.#start(created);
    // Every subscriber awaits `ready`; this only keeps an unawaited rejection
    // from being reported when they have all left.
    created.ready.catch(() => {});
    this.#streams.set(name, created);
    this.#loop ??= this.#read();
    return created;
  }

  /**
   * Finds where the stream ends now: the loop reads on from there, so every
   * entry stored after this (in particular after `subscribe` resolves) is
   * delivered. `$` in `XREAD` would instead mean "after whatever is last when
   * the read is issued", which may be later.
   */
  async #start(stream: Stream): Promise<void> {
    try {
      const last = await this.#send(this.#writer!, [
        "XREVRANGE",
        stream.key,
        "+",
        "-",
        "COUNT",
        "1",
      ]) as RawEntry[];
      stream.cursor = last[0]?.[0] ?? "0-0";
    } catch (error) {
      if (this.#streams.get(stream.name) === stream) {
        this.#streams.delete(stream.name);
      }
      throw new Error(
        `Cannot subscribe to ${JSON.stringify(stream.name)}: ${
          errorMessage(error)
        }`,
        { cause: error },
      );
    }
    stream.watched = true;
    if (this.#closed) return;
    // The blocking read in flight does not include this stream yet: wake it
    // up so it is re-issued. The wake stream has a cursor too, so a wake-up
    // that arrives before the read is processed still ends it at once.
    const writer = this.#writer!;
    this.#send(writer, [
      "XADD",
      this.#wakeKey,
      "MAXLEN",
      "1",
      "*",
      "w",
      "",
    ]).then(() =>
      this.#send(writer, [
        "PEXPIRE",
        this.#wakeKey,
        String(WAKE_TTL_MS),
      ])
    ).catch((error) => this.#fault(error, "Redis connection failed"));
  }

  /**
   * `XRANGE` from `after` inclusive, in one command (so trimming cannot slip
   * in between): `after` is known and nothing after it is gone exactly when
   * it is still the first entry returned. Returns the entries after it, or
   * `undefined` when it is unknown or older than the history kept. (An id
   * trimmed just now, whose successors are all kept, also counts as too old:
   * Redis does not record which ids trimming removed.)
   */
  async #replay(
    writer: Connection,
    key: string,
    after: string,
  ): Promise<SSEBrokerEntry[] | undefined> {
    const raw = await this.#send(writer, ["XRANGE", key, after, "+"]) as
      | RawEntry[]
      | null;
    if (raw?.[0]?.[0] !== after) return undefined;
    return this.#entries(raw.slice(1));
  }

  #entries(raw: RawEntry[]): SSEBrokerEntry[] {
    const entries: SSEBrokerEntry[] = [];
    for (const item of raw) {
      const entry = this.#entry(item);
      if (entry !== undefined) entries.push(entry);
    }
    return entries;
  }

  /** Decodes an entry; one the broker did not write is reported and skipped. */
  #entry([id, fields]: RawEntry): SSEBrokerEntry | undefined {
    let topic: string | undefined;
    let json: string | undefined;
    for (let i = 0; i + 1 < fields.length; i += 2) {
      if (fields[i] === "topic") topic = fields[i + 1];
      else if (fields[i] === "message") json = fields[i + 1];
    }
    if (topic !== undefined && json !== undefined) {
      try {
        const message = JSON.parse(json);
        if (typeof message === "object" && message !== null) {
          return { id, topic, message };
        }
      } catch {
        // reported below
      }
    }
    this.#report(
      new SyntaxError(
        `Invalid stream entry ${id}: expected fields "topic" and "message" (JSON)`,
      ),
    );
    return undefined;
  }

  /**
   * The read loop: one blocking `XREAD` over every watched stream (and the
   * wake stream), fanned out to the local subscribers, re-issued with each
   * stream's cursor. After a failure it waits (with backoff) and reads on
   * from the same cursors, so nothing Redis stored meanwhile is missed.
   */
  async #read(): Promise<void> {
    // Its own connection, as XREAD BLOCK holds it; with an offline queue, so
    // a read issued while Redis is unreachable waits for the reconnection.
    const reader = this.#connection(true);
    this.#reader = reader;
    this.#connect(reader).catch(() => {}); // reported through #fault
    let failures = 0;
    while (!this.#closed) {
      const streams: Stream[] = [];
      for (const stream of this.#streams.values()) {
        if (!stream.watched) continue;
        if (stream.subscribers.size === 0) {
          // Nobody here listens any more; a later subscribe starts afresh.
          this.#streams.delete(stream.name);
          continue;
        }
        streams.push(stream);
      }
      const args = ["XREAD", "COUNT", String(READ_COUNT)];
      args.push("BLOCK", String(BLOCK_MS), "STREAMS");
      for (const stream of streams) args.push(stream.key);
      args.push(this.#wakeKey);
      for (const stream of streams) args.push(stream.cursor);
      args.push(this.#wakeCursor);

      let reply: [string, RawEntry[]][] | null;
      try {
        reply = await this.#send(reader, args, BLOCK_MS) as typeof reply;
      } catch (error) {
        if (this.#closed) return;
        this.#fault(error, "Reading streams failed");
        await this.#retryPause.wait(
          Math.min(RETRY_MIN_MS * 2 ** failures++, RETRY_MAX_MS),
        );
        continue;
      }
      failures = 0;
      if (this.#closed) return;
      if (this.#writer!.isReady) this.#healthy = true;
      if (reply === null) continue;
      const byKey = new Map<string, Stream>();
      for (const stream of streams) byKey.set(stream.key, stream);
      for (const [key, raw] of reply) {
        if (raw.length === 0) continue;
        if (key === this.#wakeKey) {
          this.#wakeCursor = raw[raw.length - 1]![0];
          continue;
        }
        const stream = byKey.get(key);
        if (stream === undefined) continue;
        for (const item of raw) {
          stream.cursor = item[0];
          const entry = this.#entry(item);
          if (entry === undefined) continue;
          for (const subscriber of stream.subscribers) {
            subscriber.live(entry);
          }
        }
      }
    }
  }

  #cancelRetry(): void {
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = undefined;
    this.#retryPause.cancel();
  }

  #release(stream: Stream, subscriber: Subscriber): void {
    subscriber.active = false;
    stream.subscribers.delete(subscriber);
  }
}

/** One subscription's delivery state. */
class Subscriber {
  active = true;
  #onEntry: (entry: SSEBrokerEntry) => void;
  /** Live entries held back while the replay is fetched. */
  #pending: SSEBrokerEntry[] | undefined;
  /** Live entries up to this id were replayed already: skip them. */
  #after: string | undefined;

  constructor(onEntry: (entry: SSEBrokerEntry) => void, after?: string) {
    this.#onEntry = onEntry;
    if (after !== undefined) {
      this.#pending = [];
      this.#after = after;
    }
  }

  /** An entry of the replay, in id order, all after `lastEventId`. */
  replayed(entry: SSEBrokerEntry): void {
    this.#after = entry.id;
    this.#deliver(entry);
  }

  /**
   * The replay is done: deliver what the loop brought meanwhile. Without a
   * replay (`lastEventId` unknown), every live entry is new to the client,
   * whatever its id.
   */
  goLive(resumed: boolean): void {
    if (!resumed) this.#after = undefined;
    const pending = this.#pending;
    this.#pending = undefined;
    if (pending === undefined) return;
    for (const entry of pending) this.live(entry);
  }

  /** An entry from the read loop. */
  live(entry: SSEBrokerEntry): void {
    if (!this.active) return;
    if (this.#pending !== undefined) {
      this.#pending.push(entry);
      return;
    }
    if (this.#after !== undefined) {
      // The replay may have reached further than the loop: skip its entries.
      if (compareIds(entry.id, this.#after) <= 0) return;
      this.#after = undefined;
    }
    this.#deliver(entry);
  }

  #deliver(entry: SSEBrokerEntry): void {
    if (!this.active) return;
    try {
      this.#onEntry(entry);
    } catch (error) {
      reportUncaught(error);
    }
  }
}

/** The default `onError`: one line on stderr, never a stack trace. */
function warn(error: Error): void {
  // deno-lint-ignore no-console
  console.error(`RedisBroker: ${error.message}`);
}

function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

// Only the canonical spelling: Redis reads "5-01" as "5-1", but never wrote it.
const STREAM_ID = /^(0|[1-9]\d{0,19})-(0|[1-9]\d{0,19})$/;
const U64_MAX = 2n ** 64n - 1n;

/**
 * `id` if it is a Redis stream id as Redis writes them (`<ms>-<seq>`, both
 * unsigned 64-bit decimal integers without leading zeros), else `undefined`.
 */
function canonicalId(id: string): string | undefined {
  const match = STREAM_ID.exec(id);
  if (match === null) return undefined;
  if (BigInt(match[1]!) > U64_MAX || BigInt(match[2]!) > U64_MAX) {
    return undefined;
  }
  return id;
}

/**
 * Orders two canonical stream ids as Redis does: by time part, then sequence,
 * each an integer (so `"9-0" < "10-0"`, unlike the strings).
 */
function compareIds(a: string, b: string): number {
  const aDash = a.indexOf("-");
  const bDash = b.indexOf("-");
  return compareDigits(a.slice(0, aDash), b.slice(0, bDash)) ||
    compareDigits(a.slice(aDash + 1), b.slice(bDash + 1));
}

/** Compares two decimal integers without leading zeros. */
function compareDigits(a: string, b: string): number {
  if (a.length !== b.length) return a.length - b.length;
  return a < b ? -1 : a > b ? 1 : 0;
}
