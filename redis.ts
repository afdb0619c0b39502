// Copyright the sse authors. MIT license.
/**
 * {@linkcode RedisBroker}: an {@linkcode SSEBroker} on Redis Streams, so that
 * several server instances behind a load balancer share one event stream, and
 * a client can resume on any of them.
 *
 * - Each channel is one Redis stream, at key `prefix + name` (`"sse:news"` by
 *   default). `publish` is one `XADD … MAXLEN ~ replay`, in a Lua script that
 *   starts a stream whose key was lost (deleted, evicted) after every id it
 *   issued before. The event id is the entry id Redis assigns, a dot, and a
 *   tag of the stream's key (`"1718000000000-0.1k2j3h4"`): ordered across
 *   every instance, never reused, and never the id of another stream's event,
 *   though Redis numbers each stream on its own and two streams often get the
 *   same entry id.
 * - Each broker reads new entries of all the streams its process subscribes
 *   to with one blocking `XREAD` on one connection of its own, and fans them
 *   out locally: two Redis connections per process, whatever the number of
 *   clients or channels.
 * - `history` pages what Redis still keeps after an id (`XRANGE`), so a
 *   client that comes back with `Last-Event-ID`, to this instance or any
 *   other, gets exactly what it missed.
 * - When Redis restarts or is briefly unreachable, the broker reconnects,
 *   reports the outage once (`onError`), and reads on from where it stopped,
 *   so nothing stored in Redis is missed. `publish` rejects while Redis is
 *   unreachable instead of queueing, and no command waits longer than
 *   `commandTimeout` for a Redis that stopped answering.
 * - Entries written by others that it cannot decode (not JSON, missing or
 *   mistyped fields) are skipped and reported through `onError`, once each.
 * - Each entry carries its number in the stream (a `seq` field, counted at
 *   key `prefix + "~seq:" + name`, which outlives a deleted stream), so a
 *   reader that fell behind by more than the stream keeps, and finds entries
 *   trimmed (or deleted) before it read them, reports the gap through
 *   `onError` (once, naming the stream and the ids around it) instead of
 *   skipping it silently; so does a reader that finds its stream dropped
 *   with its count (evicted, flushed) and started again.
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

import {
  BrokerSubscription,
  checkHistory,
  checkPublish,
  checkSubscribe,
  checkWellFormed,
  errorMessage,
  errorReporter,
  type SSEBroker,
  type SSEBrokerEntry,
  type SSEBrokerSubscribeOptions,
  type SSEBrokerSubscription,
} from "./_broker.ts";
import type { SSEMessage } from "./encoder.ts";
import { type Connection, RedisLink } from "./_redis_link.ts";
import { RedisReader, type Stream, type Subscriber } from "./_redis_reader.ts";
import {
  APPEND,
  countKey,
  decodeEntry,
  eventId,
  type RawEntry,
  redisIdOf,
  streamTag,
  utf8Length,
} from "./_redis_entry.ts";

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
   * The Redis server, as `redis[s]://[[user][:password]@]host[:port][/db]`
   * (anything else throws a `TypeError`). Ignored when `client` is given.
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
   * `prefix + name`, and the count that numbers its entries (a short
   * string) at `prefix + "~seq:" + name`. Each broker also keeps one tiny stream of its own at
   * `prefix + "~wake:" + <random id>` (removed by `close()`, and expiring an
   * hour after its last use otherwise) to re-issue its blocking read when its
   * process starts reading a new stream. So stream names beginning with `~`
   * are refused (a `TypeError`): they would share those keys.
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
   * The largest entry `publish` sends, in bytes: its topic and its message
   * as JSON, in UTF-8. A larger one is refused with a `RangeError`, before
   * anything is sent. Measured on loopback (a 2-core machine under load),
   * `publish` took 0.16 s for 16 MB, 0.75 s for 64 MB, 1 s for 100 MB and
   * 2.1 s for 200 MB, each reader holding about 8 times the entry in memory
   * while it reads it (1.6 GB for 200 MB); 300 MB did not finish within the
   * default `commandTimeout`, and V8 cannot hold a string of much more than
   * 512 MB. Raise both together.
   * @default {67108864} (64 MiB)
   */
  maxEntrySize?: number;
  /**
   * Called with the errors no caller can be told of: Redis became
   * unreachable or stopped answering (once per outage, not once per
   * reconnection attempt; the broker keeps retrying either way), an entry
   * that cannot be decoded was skipped (once per entry), entries trimmed
   * before this process read them, or its stream dropped and started again
   * (once per gap), a subscriber's `onEntry` threw. Must not throw.
   * @default {writes one line to stderr: "RedisBroker: " and the message}
   */
  onError?: (error: Error) => void;
}

const DEFAULT_URL = "redis://127.0.0.1:6379";
const DEFAULT_PREFIX = "sse:";
const DEFAULT_COMMAND_TIMEOUT = 3_000;
/**
 * The fewest entries `publish` trims a stream to, whatever its `replay`:
 * `XADD … MAXLEN ~` trims at once, and an entry must still be there when the
 * blocking read of every instance asks for it (with `replay: 0`, none was:
 * nothing was delivered live). A burst of more than this while a reader is
 * behind can still be trimmed before it is read: the reader reports it.
 */
const MIN_KEPT = 100;
const DEFAULT_MAX_ENTRY_SIZE = 64 * 1024 * 1024;
/**
 * How many skipped entries the broker remembers having reported, so that one
 * bad entry read by every resuming client is reported once.
 */
const REPORTED_MAX = 1_000;

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
 * process receives it, also across a Redis restart or outage, and `history`
 * returns it while Redis keeps it. The one exception is a process whose read
 * falls behind by more than the stream keeps (`replay`, and at least 100
 * entries): what is trimmed before it reads it is lost to its subscribers,
 * and it reports so through `onError`, once per gap. `publish` rejects at once when Redis is
 * unreachable (no offline queue), and after `commandTimeout` when it does not
 * answer; if the connection breaks (or is given up) after the command was
 * sent, it rejects although Redis may have stored the entry, in which case it
 * is delivered as usual.
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
  #prefix: string;
  #maxEntrySize: number;
  #report: (error: Error) => void;
  #link: RedisLink;
  /** `key + " " + id` of the skipped entries already reported. */
  #reported = new Set<string>();
  /** The blocking read of every stream this process subscribes to. */
  #reader: RedisReader;
  /** The time part (ms) of the newest id `publish` was given: see APPEND. */
  #newest = 0;
  #closed = false;
  #closing: Promise<void> | undefined;

  /**
   * Creates a broker. Nothing connects until the first `publish`,
   * `subscribe` or `history`.
   *
   * @param options Where Redis is (`url` or `client`), the key `prefix`,
   * `commandTimeout` and `onError`.
   * @throws {TypeError} When an option has the wrong type, `url` is not a
   * `redis:` or `rediss:` URL, or `prefix` is not well-formed Unicode.
   * @throws {RangeError} When `commandTimeout` is not a positive number.
   */
  constructor(options: RedisBrokerOptions = {}) {
    const {
      url,
      client,
      prefix = DEFAULT_PREFIX,
      commandTimeout = DEFAULT_COMMAND_TIMEOUT,
      maxEntrySize = DEFAULT_MAX_ENTRY_SIZE,
      onError,
    } = options;
    if (url !== undefined && typeof url !== "string") {
      throw new TypeError(`Invalid url: expected a string, got ${typeof url}`);
    }
    if (url !== undefined) {
      // What node-redis can never connect to: refused now, not at every
      // command. The URL itself stays out of the message (a password).
      let protocol: string;
      try {
        protocol = new URL(url).protocol;
      } catch {
        protocol = "text that is not a URL";
      }
      if (protocol !== "redis:" && protocol !== "rediss:") {
        throw new TypeError(
          `Invalid url: expected a redis: or rediss: URL, got ${protocol}`,
        );
      }
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
    checkWellFormed(prefix, "prefix");
    if (typeof commandTimeout !== "number" || !(commandTimeout > 0)) {
      throw new RangeError(
        `Invalid commandTimeout: expected a positive number of milliseconds, got ${
          String(commandTimeout)
        }`,
      );
    }
    if (!Number.isSafeInteger(maxEntrySize) || maxEntrySize < 1) {
      throw new RangeError(
        `Invalid maxEntrySize: expected a positive integer of bytes, got ${
          String(maxEntrySize)
        }`,
      );
    }
    this.#maxEntrySize = maxEntrySize;
    this.#report = errorReporter("RedisBroker", onError);
    this.#prefix = prefix;
    this.#link = new RedisLink({
      url: url ?? DEFAULT_URL,
      template: client,
      commandTimeout,
      report: this.#report,
      onReaderReady: () => this.#reader.wake(),
    });
    this.#reader = new RedisReader({
      link: this.#link,
      prefix,
      report: this.#report,
      decode: (stream, raw) => this.#entry(stream, raw),
    });
  }

  /**
   * Appends the message to the stream with `XADD`, trimming it to about
   * `replay` entries, and never below 100 (`MAXLEN ~`), so that the readers
   * of every process find it before it is trimmed. Every subscriber of the
   * stream, in every process, then receives it.
   *
   * @param name The stream (the channel's `name`); the key is `prefix + name`.
   * @param entry The topic (`""` for none) and the message; its `id`, if any,
   * is left out (Redis assigns the id).
   * @param options `replay`: how many entries the stream keeps, at least.
   * @returns The event id (the Redis entry id, a dot, the stream's tag), once
   * Redis has stored the entry. Rejects with a `TypeError` or `RangeError`
   * for bad arguments or once closed; at once, storing nothing, when Redis is
   * unreachable; and after `commandTimeout` when Redis does not answer (it
   * may then still store the entry once it answers again, and deliver it as
   * usual).
   */
  async publish(
    name: string,
    entry: { topic: string; message: SSEMessage },
    options: { replay: number },
  ): Promise<string> {
    if (this.#closed) throw new TypeError("Cannot publish: broker is closed");
    const { topic, message, replay } = checkPublish(name, entry, options);
    checkOwnKeys(name);
    const json = JSON.stringify(message);
    const max = this.#maxEntrySize;
    // UTF-8 takes at most three bytes per UTF-16 unit: count only when that
    // could be too many.
    if ((topic.length + json.length) * 3 > max) {
      const size = utf8Length(topic) + utf8Length(json);
      if (size > max) {
        throw new RangeError(
          `Entry too large for ${
            JSON.stringify(name)
          }: ${size} bytes, the limit is ${max} (maxEntrySize)`,
        );
      }
    }

    try {
      const writer = await this.#open();
      const key = this.#prefix + name;
      // EVAL with the text each time, not EVALSHA: Redis may not have the
      // script (a restart, SCRIPT FLUSH), and retrying with the text after
      // a NOSCRIPT reply would let a later publish in flight pass this one.
      const id = await this.#link.send(writer, [
        "EVAL",
        APPEND,
        "2",
        key,
        countKey(this.#prefix, name),
        String(Math.max(replay, MIN_KEPT)),
        topic,
        json,
        String(this.#newest),
      ]) as string;
      const ms = Number(id.slice(0, id.indexOf("-")));
      if (ms > this.#newest && ms <= Number.MAX_SAFE_INTEGER) {
        this.#newest = ms;
      }
      return eventId(id, streamTag(key));
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
   * Delivers every entry stored in the stream from now on, in id order, as
   * this process's one blocking read brings them (whoever published them).
   *
   * @param name The stream.
   * @param onEntry Called with each entry; must not throw (a throw goes to
   * `onError`).
   * @param options `onGap`: told, once per gap and before the entry after
   * it, of entries trimmed or deleted before this process read them (it
   * fell behind by more than the stream keeps), or of its stream dropped
   * with its count and started again (`lost` then unknown).
   * @returns The subscription, once the broker knows where the stream ends:
   * every entry stored after that reaches `onEntry`. Rejects with a
   * `TypeError` for bad arguments or once closed, and when Redis cannot be
   * reached or does not answer within `commandTimeout`.
   */
  async subscribe(
    name: string,
    onEntry: (entry: SSEBrokerEntry) => void,
    options?: SSEBrokerSubscribeOptions,
  ): Promise<SSEBrokerSubscription> {
    if (this.#closed) throw new TypeError("Cannot subscribe: broker is closed");
    const onGap = checkSubscribe(name, onEntry, options);
    checkOwnKeys(name);
    try {
      await this.#open();
    } catch (error) {
      if (this.#closed) throw error;
      throw new Error(
        `Cannot subscribe to ${JSON.stringify(name)}: ${errorMessage(error)}`,
        { cause: error },
      );
    }
    const stream = this.#reader.watch(name);
    const subscriber: Subscriber = {
      onEntry,
      onGap,
      from: stream.delivered,
      active: true,
    };
    stream.subscribers.add(subscriber);
    const release = () => {
      subscriber.active = false;
      stream.subscribers.delete(subscriber);
    };
    try {
      await stream.ready;
      if (this.#closed) {
        throw new TypeError("Cannot subscribe: broker is closed");
      }
      return new BrokerSubscription(release);
    } catch (error) {
      release();
      throw error;
    }
  }

  /**
   * Up to `limit` entries that Redis keeps after `after`, oldest first, in
   * one `XRANGE` (more only when entries that cannot be decoded are skipped).
   *
   * `after` is a resume point when it is an event id of this stream (its tag
   * matches) that Redis still keeps: the `XRANGE` starts at it, inclusive,
   * and it must come first. An id trimmed away is not one, even the newest
   * trimmed: Redis does not record which ids trimming removed (`XINFO
   * STREAM`'s `max-deleted-entry-id` counts only `XDEL`, checked on Redis
   * 7.0), so the broker cannot tell it from one whose successors are gone.
   *
   * @param name The stream.
   * @param options `after`: the last event id a client has; `limit`: a
   * positive integer.
   * @returns The entries (`[]` when `after` is the newest), or `null` when
   * `after` is not a resume point of this stream: another stream's id, a
   * malformed one, a future one, one trimmed away or lost with Redis's data.
   * Rejects with a `TypeError` or `RangeError` for bad arguments or once
   * closed, and when Redis cannot be reached or does not answer within
   * `commandTimeout`.
   */
  async history(
    name: string,
    options: { after: string; limit: number },
  ): Promise<SSEBrokerEntry[] | null> {
    if (this.#closed) {
      throw new TypeError("Cannot read history: broker is closed");
    }
    const { after, limit } = checkHistory(name, options);
    checkOwnKeys(name);
    const key = this.#prefix + name;
    const tag = streamTag(key);
    const start = redisIdOf(after, tag);
    if (start === undefined) return null;
    try {
      const writer = await this.#open();
      return await this.#history(writer, { name, key, tag }, start, limit);
    } catch (error) {
      if (this.#closed) {
        throw new TypeError("Cannot read history: broker is closed");
      }
      throw new Error(
        `Cannot read the history of ${JSON.stringify(name)}: ${
          errorMessage(error)
        }`,
        { cause: error },
      );
    }
  }

  /**
   * Ends every subscription, stops the blocking read, waits for publishes in
   * flight (at most `commandTimeout`), and closes the broker's connections
   * (not a `client` you gave). Later calls to `publish`, `subscribe` and
   * `history` reject. Idempotent.
   *
   * @returns Once every connection and timer is released, within
   * `commandTimeout` even when Redis does not answer.
   */
  close(): Promise<void> {
    if (this.#closing !== undefined) return this.#closing;
    this.#closed = true;
    const loop = this.#reader.close();
    this.#closing = this.#shutDown(loop);
    return this.#closing;
  }

  async #shutDown(loop: Promise<void>): Promise<void> {
    // Removes the wake stream, and ends the blocking read at once.
    await this.#link.close(["DEL", this.#reader.wakeKey]);
    await loop;
  }

  /** The writer, connected (or not) at the first call. */
  async #open(): Promise<Connection> {
    const writer = await this.#link.open();
    if (this.#closed) throw new TypeError("Cannot use a closed broker");
    return writer;
  }

  /**
   * Pages the entries after `start` (a Redis id), as `history` describes.
   * Each `XRANGE` starts at the last id read, inclusive, and goes on only if
   * that id still comes first: so nothing trimmed in between is skipped
   * unnoticed. Entries that cannot be decoded are skipped; when a whole page
   * was skipped, the next is read, so `[]` always means "nothing after".
   */
  async #history(
    writer: Connection,
    stream: Pick<Stream, "name" | "key" | "tag">,
    start: string,
    limit: number,
  ): Promise<SSEBrokerEntry[] | null> {
    const entries: SSEBrokerEntry[] = [];
    for (let from = start;;) {
      const wanted = limit - entries.length;
      const raw = await this.#link.send(writer, [
        "XRANGE",
        stream.key,
        from,
        "+",
        "COUNT",
        String(wanted + 1),
      ]) as RawEntry[];
      // Gone meanwhile (trimmed, or never there): what came after it is too.
      if (raw[0]?.[0] !== from) return entries.length > 0 ? entries : null;
      for (let i = 1; i < raw.length; i++) {
        const entry = this.#entry(stream, raw[i]!);
        if (entry !== undefined) entries.push(entry);
      }
      if (entries.length >= limit || raw.length <= wanted) return entries;
      from = raw[raw.length - 1]![0];
    }
  }

  /** Decodes a stream entry; reports and skips one it cannot decode. */
  #entry(
    stream: Pick<Stream, "name" | "key" | "tag">,
    raw: RawEntry,
  ): SSEBrokerEntry | undefined {
    const entry = decodeEntry(raw, stream.tag);
    if (typeof entry !== "string") return entry;
    this.#skipped(stream, raw[0], entry);
    return undefined;
  }

  /** Reports a skipped entry, the first time this broker skips it. */
  #skipped(
    stream: Pick<Stream, "name" | "key">,
    rawId: string,
    problem: string,
  ): void {
    const key = `${stream.key} ${rawId}`;
    if (this.#reported.has(key)) return;
    if (this.#reported.size >= REPORTED_MAX) this.#reported.clear();
    this.#reported.add(key);
    this.#report(
      new TypeError(
        `Skipped entry ${rawId} of stream ${JSON.stringify(stream.name)} (key ${
          JSON.stringify(stream.key)
        }): ${problem}`,
      ),
    );
  }
}

/**
 * Refuses a stream name beginning with `~`: its key, `prefix + name`, would
 * be one of the broker's own (`prefix + "~seq:" + name` counts the entries
 * of stream `name`, `prefix + "~wake:" + id` is a broker's wake stream), so
 * stream `"~seq:news"` would overwrite the count of stream `"news"`.
 *
 * @param name A stream name, already checked to be a string.
 * @throws {TypeError} When it begins with `~`.
 */
function checkOwnKeys(name: string): void {
  if (!name.startsWith("~")) return;
  throw new TypeError(
    `Invalid stream name: ${
      JSON.stringify(name)
    } begins with "~", which RedisBroker keeps for its own keys (prefix + "~seq:" + name, prefix + "~wake:" + id)`,
  );
}
