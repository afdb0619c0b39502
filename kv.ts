// Copyright the sse authors. MIT license.
/**
 * {@linkcode DenoKvBroker}: an {@linkcode SSEBroker} on Deno KV, the shared
 * state Deno Deploy gives every instance of an application, or a local SQLite
 * file shared by processes on one machine.
 *
 * - **Ids** carry the versionstamp of the atomic commit that stored the entry
 *   and the tag of the stream's incarnation
 *   (`"00000000000012a40000-42.k3x9q2mz"`: versionstamp, dash, the entry's
 *   sequence number in its stream, dot, tag), so they are ordered and unique
 *   across every instance, and never reused: not when a stream expires and
 *   starts again (numbered from 1 again), nor on a brand-new database (whose
 *   versionstamps start over). An incarnation begins when a publisher finds
 *   no head it wrote, with a random tag. An id without the tag (as earlier
 *   versions of this module wrote, or a hand-written entry has) names only an
 *   entry without one: a client that comes back with an id from before an
 *   upgrade is not resumed (`history` answers `null`, the channel sends
 *   `init` with `resumed: false`).
 * - **Live delivery:** each process watches one small key per stream it
 *   serves (`kv.watch()`), and on each change reads every entry after the last
 *   one it delivered, up to the newest head (a key written by hand beyond it
 *   is not read): a watch may skip states, so the entries never travel in it.
 *   A head of another incarnation (the stream expired and started again) is
 *   read from the incarnation's start. `kv.watch()` does not see the writes of another process on a local
 *   SQLite file, so a poll (every `pollInterval` ms) backs it up: two
 *   `deno run` processes on one file work as they are.
 * - **History** for resume: the entries of a stream are kept in KV, about
 *   the last `replay` of them (an entry beyond them is deleted once it is
 *   `trimDelay` ms old, so that every instance has read it), and every key
 *   expires `expireIn` ms after it was written, so an abandoned stream
 *   disappears on its own.
 * - **Large events:** Deno KV holds at most 64 KiB in a value, so a larger
 *   entry is split over several keys written in the same atomic commit and
 *   joined again when read, up to {@linkcode DENO_KV_MAX_ENTRY_SIZE} bytes
 *   (768 KiB of JSON: an atomic commit holds at most 800 KiB, keys counted
 *   twice), whatever the stream's name: a name whose keys would take more
 *   than 1 KiB (about 990 bytes of name) is refused.
 *
 * Keys, under `prefix` (`["sse"]` by default), for a stream `name`:
 *
 * | key                                    | value                                                          |
 * | -------------------------------------- | -------------------------------------------------------------- |
 * | `[...prefix, name, "head"]`            | `{ seq, inc, base }`: the newest entry's number, the incarnation's tag, the number it began after |
 * | `[...prefix, name, "entries", seq]`    | `{ time, json, inc, parts }`: first bytes of the entry, its incarnation, how many values follow |
 * | `[...prefix, name, "entries", seq, i]` | the next bytes (`Uint8Array`), `i` ≥ 1                         |
 *
 * where the bytes are the UTF-8 JSON of `{ topic, message }`.
 *
 * Deno KV is unstable outside Deno Deploy: run with `--unstable-kv` (or
 * `"unstable": ["kv"]` in `deno.json`). That is why this module is not
 * re-exported from the package root.
 *
 * @example Share one channel between the instances of a Deno Deploy app
 * ```ts
 * import { DenoKvBroker } from "@sse/sse/kv";
 * import { SSEChannel } from "@sse/sse/server";
 *
 * // On Deno Deploy, Deno.openKv() with no argument opens the app's database.
 * const kv = await Deno.openKv(":memory:");
 * const broker = new DenoKvBroker({ kv });
 * const news = new SSEChannel({ name: "news", broker, replay: 1000 });
 *
 * // Serve it with Deno.serve((request) => news.connect(request)); publish
 * // from any instance with news.publish({ data: "hello" }). On shutdown:
 * await news.close();
 * await broker.close();
 * kv.close();
 * ```
 *
 * @module
 */

import {
  BrokerSubscription,
  checkHistory,
  checkPublish,
  checkSubscribe,
  errorReporter,
  type SSEBroker,
  type SSEBrokerEntry,
  type SSEBrokerSubscribeOptions,
  type SSEBrokerSubscription,
} from "./_broker.ts";
import type { SSEMessage } from "./encoder.ts";
import {
  decodeEntry,
  encodeEntry,
  entryId,
  type Head,
  headSeq,
  keySize,
  kvErrorMessage,
  MAX_ENTRY_SIZE,
  MAX_STREAM_KEY,
  parseId,
  type RawEntry,
  readEntries,
  readHead,
  type StreamKeys,
  streamKeys,
} from "./_kv_store.ts";
import { StreamWriter } from "./_kv_writer.ts";
import {
  PAGE,
  type ReaderHost,
  StreamReader,
  type Subscriber,
} from "./_kv_reader.ts";
import { startInterval, startTimeout, type Timer } from "./_timer.ts";

export type { SSEBroker, SSEBrokerEntry, SSEBrokerSubscription, SSEMessage };

/**
 * The largest entry {@linkcode DenoKvBroker} stores, in bytes: its topic and
 * message as UTF-8 JSON (768 KiB), under any stream name the broker takes.
 * Deno KV holds at most 64 KiB in a value, and 800 KiB of keys and values in
 * one atomic commit.
 */
export const DENO_KV_MAX_ENTRY_SIZE: number = MAX_ENTRY_SIZE;

/** Options of {@linkcode DenoKvBroker}. */
export interface DenoKvBrokerOptions {
  /**
   * The database, opened by the caller (`await Deno.openKv()` on Deno
   * Deploy, `await Deno.openKv(path)` for a local file). The broker never
   * closes it: `close()` leaves it open for its owner.
   */
  kv: Deno.Kv;
  /**
   * The key prefix under which the broker keeps its streams. Brokers (in any
   * process) with the same `kv` and prefix share streams.
   * @default {["sse"]}
   */
  prefix?: Deno.KvKey;
  /**
   * Milliseconds between two polls of the streams this process reads. A
   * watch delivers other instances' entries at once on Deno Deploy and
   * between handles of one process; the poll is what brings the entries
   * another process wrote to a local file, which `kv.watch()` does not see.
   * `Infinity` turns it off (watch only).
   * @default {1000}
   */
  pollInterval?: number;
  /**
   * Milliseconds after which every key the broker writes expires: an entry
   * this long after it was published, a stream's head this long after its
   * last publish. A client that comes back later than this is not resumed.
   * @default {86_400_000} (one day)
   */
  expireIn?: number;
  /**
   * An entry beyond the newest `replay` of its stream is deleted once it is
   * at least this many milliseconds old, so that every instance (polling, or
   * slowed down) has read it before it goes. Until then a stream keeps more
   * than `replay` entries. An entry dated more than this ahead of the
   * trimming instance's clock (a clock set back, or another instance's
   * running fast) counts as old: its age cannot be known.
   * @default {30_000}
   */
  trimDelay?: number;
  /**
   * Called with an error no caller can be told of: a stream that cannot be
   * read (once per outage, not at every retry), an entry that does not decode
   * (it is skipped), entries trimmed before this process read them.
   * @default {writes one line to stderr with console.error}
   */
  onError?: (error: Error) => void;
}

const DEFAULT_PREFIX: Deno.KvKey = ["sse"];
const DEFAULT_POLL_INTERVAL = 1_000;
const DEFAULT_EXPIRE_IN = 86_400_000;
const DEFAULT_TRIM_DELAY = 30_000;
/** How long `close()` waits for operations in flight. */
const CLOSE_TIMEOUT = 1_000;
/**
 * The most streams whose publishing state (the head it knows, what it
 * trimmed) a broker keeps: about a kilobyte each.
 */
const MAX_WRITERS = 1_000;
/**
 * How many entries that do not decode the broker remembers having reported,
 * so that one read by every resuming client is reported once.
 */
const REPORTED_MAX = 1_000;

/**
 * An {@linkcode SSEBroker} on Deno KV: events published on any instance of a
 * Deno Deploy app (or any process on one local database file) reach the
 * subscribers of every instance, and a client resumes on any of them.
 *
 * `publish` resolves once the entry is committed. Publishes of one process to
 * one stream are committed in order, several in one commit when they queue
 * up; publishers in different processes take turns by the stream's head key
 * (a commit that lost the race reads the head again and retries).
 *
 * @example Two brokers on one database, as two instances would be
 * ```ts
 * import { DenoKvBroker } from "@sse/sse/kv";
 * import assert from "node:assert/strict";
 *
 * const kv = await Deno.openKv(":memory:");
 * const a = new DenoKvBroker({ kv });
 * const b = new DenoKvBroker({ kv });
 * const first = await a.publish("news", { topic: "", message: { data: "one" } }, { replay: 100 });
 * await a.publish("news", { topic: "", message: { data: "two" } }, { replay: 100 });
 *
 * // Resume on the other broker after the first id.
 * const missed = await b.history("news", { after: first, limit: 10 });
 * assert.deepEqual(missed?.map((entry) => entry.message.data), ["two"]);
 *
 * await a.close();
 * await b.close();
 * kv.close();
 * ```
 */
export class DenoKvBroker implements SSEBroker {
  #kv: Deno.Kv;
  #prefix: Deno.KvKey;
  #pollInterval: number;
  #expireIn: number;
  #trimDelay: number;
  /** Calls `onError`, or writes one line to stderr; never throws. */
  #report: (error: Error) => void;
  #writers = new Map<string, StreamWriter>();
  #readers = new Map<string, StreamReader>();
  /** What the readers use of the broker. */
  #host: ReaderHost;
  /** Stream and id of the entries reported as not decoding. */
  #reported = new Set<string>();
  #poll: Timer | undefined;
  #polling = false;
  /** Work in flight, which `close()` waits for (up to a bound). */
  #tasks = new Set<Promise<unknown>>();
  #healthy = true;
  #closed = false;
  #closing: Promise<void> | undefined;

  /**
   * Creates a broker on a database the caller opened. Nothing is read or
   * written until the first `publish`, `subscribe` or `history`.
   *
   * @param options The database (`kv`), and `prefix`, `pollInterval`,
   * `expireIn`, `trimDelay`, `onError`.
   * @throws {TypeError} When `kv` is not a `Deno.Kv`, or `prefix` not a key
   * (or one with a string that is not well-formed Unicode), or `onError` not
   * a function.
   * @throws {RangeError} When `pollInterval`, `expireIn` or `trimDelay` is
   * out of range, or `prefix` too long for a Deno KV key.
   */
  constructor(options: DenoKvBrokerOptions) {
    const {
      kv,
      prefix = DEFAULT_PREFIX,
      pollInterval = DEFAULT_POLL_INTERVAL,
      expireIn = DEFAULT_EXPIRE_IN,
      trimDelay = DEFAULT_TRIM_DELAY,
      onError,
    } = options ?? {};
    for (const method of ["atomic", "get", "list", "watch"] as const) {
      if (
        typeof (kv as Partial<Deno.Kv> | undefined)?.[method] !== "function"
      ) {
        throw new TypeError(
          "Invalid kv: expected a Deno.Kv, as Deno.openKv() resolves to",
        );
      }
    }
    if (!Array.isArray(prefix)) {
      throw new TypeError("Invalid prefix: expected an array of key parts");
    }
    if (!(pollInterval > 0)) {
      throw new RangeError(
        `Invalid pollInterval: expected a positive number of ms, got ${pollInterval}`,
      );
    }
    if (!Number.isSafeInteger(expireIn) || expireIn <= 0) {
      throw new RangeError(
        `Invalid expireIn: expected a positive integer of ms, got ${expireIn}`,
      );
    }
    if (!(trimDelay >= 0) || trimDelay === Infinity) {
      throw new RangeError(
        `Invalid trimDelay: expected a non-negative number of ms, got ${trimDelay}`,
      );
    }
    this.#report = errorReporter("DenoKvBroker", onError);
    this.#kv = kv;
    this.#host = {
      kv,
      closed: () => this.#closed,
      task: (promise) => this.#task(promise),
      track: (promise) => this.#track(promise),
      fault: (error, context) => this.#fault(error, context),
      recovered: () => this.#healthy = true,
      report: (error) => this.#report(error),
      decode: (name, raw) => this.#decode(name, raw),
    };
    this.#prefix = [...prefix];
    const prefixSize = keySize(this.#prefix, "prefix");
    if (prefixSize > MAX_STREAM_KEY / 2) {
      throw new RangeError(
        `Invalid prefix: it takes ${prefixSize} bytes of a Deno KV key, at most ${
          MAX_STREAM_KEY / 2
        } leave room for stream names`,
      );
    }
    this.#pollInterval = pollInterval;
    this.#expireIn = expireIn;
    this.#trimDelay = trimDelay;
  }

  /**
   * Stores the message as the stream's next entry, in one atomic commit, and
   * trims the stream to about `replay` entries.
   *
   * @param name The stream (a channel's `name`).
   * @param entry The topic (`""` for none) and the message; its `id`, if any,
   * is left out (the broker assigns the id).
   * @param options `replay`: how many entries the stream keeps for resume.
   * @returns The id, once the entry is committed. Rejects, storing nothing,
   * when the commit fails.
   * @throws {RangeError} When the entry is larger than
   * {@linkcode DENO_KV_MAX_ENTRY_SIZE}, or the name (with the prefix) makes
   * the stream's keys longer than 1 KiB, which would leave no room for such
   * an entry in one commit (the promise rejects).
   * @throws {TypeError} When an argument is invalid, or the broker is closed
   * (the promise rejects).
   */
  publish(
    name: string,
    entry: { topic: string; message: SSEMessage },
    options: { replay: number },
  ): Promise<string> {
    try {
      if (this.#closed) throw new TypeError("Cannot publish: broker is closed");
      const { topic, message, replay } = checkPublish(name, entry, options);
      const bytes = encodeEntry(topic, message);
      if (bytes.length > MAX_ENTRY_SIZE) {
        throw new RangeError(
          `Entry too large for Deno KV: ${bytes.length} bytes of JSON, the limit is ${MAX_ENTRY_SIZE} (768 KiB)`,
        );
      }
      const writer = this.#writer(name);
      return new Promise<string>((resolve, reject) => {
        const writing = writer.publish({ bytes, replay, resolve, reject });
        if (writing !== undefined) this.#track(writing);
      });
    } catch (error) {
      return Promise.reject(error);
    }
  }

  /**
   * Delivers every entry of the stream committed after this call, from every
   * process, in order, each once, until `unsubscribe()`.
   *
   * @param name The stream.
   * @param onEntry Called with each entry, synchronously; must not throw (a
   * throw is reported through `onError`).
   * @param options `onGap`: told, once per gap and before the entry after
   * it, of entries trimmed or expired before this process read them (it
   * fell behind by more than the stream keeps); `after` is `undefined`
   * when this process has read no entry of the stream yet.
   * @returns The subscription, once the stream's head is read. Rejects when
   * the database cannot be read.
   * @throws {TypeError} When an argument is invalid or the broker is closed
   * (the promise rejects).
   */
  async subscribe(
    name: string,
    onEntry: (entry: SSEBrokerEntry) => void,
    options?: SSEBrokerSubscribeOptions,
  ): Promise<SSEBrokerSubscription> {
    if (this.#closed) throw new TypeError("Cannot subscribe: broker is closed");
    const onGap = checkSubscribe(name, onEntry, options);
    const reader = this.#reader(name);
    // Nothing is delivered to it until its starting point is known.
    const subscriber: Subscriber = {
      onEntry,
      onGap,
      from: Infinity,
      active: true,
    };
    reader.subscribers.add(subscriber);
    const release = () => this.#release(reader, subscriber);
    try {
      const head = await this.#task(this.#readHead(reader.keys));
      if (this.#closed) {
        throw new TypeError("Cannot subscribe: broker is closed");
      }
      // The first subscription reads on from the head; a later one joins
      // the reader where it is (behind the head, it may get entries that
      // were committed while this call was in progress).
      reader.cursor ??= head.stored
        ? { seq: head.seq, inc: head.inc, versionstamp: head.versionstamp! }
        : { seq: head.base, inc: undefined, versionstamp: "" };
      subscriber.from = reader.delivered;
      if (head.stored) reader.observe(head);
      this.#ensurePoll();
      return new BrokerSubscription(release);
    } catch (error) {
      release();
      if (error instanceof TypeError) throw error;
      throw new Error(
        `Cannot subscribe to ${JSON.stringify(name)}: ${kvErrorMessage(error)}`,
        { cause: error },
      );
    }
  }

  /**
   * Up to `limit` kept entries of the stream after the entry `after`,
   * oldest first, read in pages of one snapshot each.
   *
   * @param name The stream.
   * @param options `after`: an id this stream issued; `limit`: the most
   * entries to return (a positive integer).
   * @returns The entries; `[]` when `after` is the newest; `null` when
   * `after` is not an entry this stream still keeps (another stream's id, a
   * malformed or future one, one trimmed or expired, or one of an earlier
   * incarnation of the stream). Rejects when the database cannot be read.
   * @throws {TypeError} When an argument is invalid or the broker is closed
   * (the promise rejects).
   * @throws {RangeError} When `limit` is not a positive integer (the promise
   * rejects).
   */
  async history(
    name: string,
    options: { after: string; limit: number },
  ): Promise<SSEBrokerEntry[] | null> {
    if (this.#closed) throw new TypeError("Cannot read: broker is closed");
    const { after, limit } = checkHistory(name, options);
    const keys = streamKeys(this.#prefix, name);
    const id = parseId(after);
    if (id === undefined) return null;
    const entries: SSEBrokerEntry[] = [];
    let found = false;
    const batchSize = Math.min(limit + 1, PAGE);
    const reading = this.#task((async () => {
      // Up to the head: a key written by hand beyond it is no entry.
      const top = headSeq((await this.#kv.get(keys.head)).value);
      const to = top !== undefined && top >= id.seq ? top : Infinity;
      const list = readEntries(this.#kv, keys, { from: id.seq, to, batchSize });
      let previous = id.seq;
      for await (const raw of list) {
        if (!found) {
          // The first entry must be `after` itself: the same commit, of the
          // same incarnation.
          if (
            raw.seq !== id.seq || raw.versionstamp !== id.versionstamp ||
            raw.inc !== id.inc
          ) {
            return;
          }
          found = true;
          continue;
        }
        // Each page of the list is a snapshot of its own: a trim between
        // two of them leaves a hole. What comes before it is returned, and
        // the next call, after it, finds the hole first: not a resume point.
        if (raw.seq !== previous + 1 || raw.incomplete) {
          if (entries.length === 0) found = false;
          return;
        }
        previous = raw.seq;
        const entry = this.#decode(name, raw);
        if (entry !== undefined) entries.push(entry);
        if (entries.length === limit) return;
      }
    })());
    try {
      await reading;
    } catch (error) {
      if (error instanceof TypeError) throw error; // closed meanwhile
      throw new Error(
        `Cannot read the history of ${JSON.stringify(name)}: ${
          kvErrorMessage(error)
        }`,
        { cause: error },
      );
    }
    return found ? entries : null;
  }

  /**
   * Ends every subscription, stops watching and polling, rejects the
   * publishes not yet sent, and waits for the operations in flight: at most
   * one second, even when the database does not answer. The database stays
   * open. Later calls to `publish`, `subscribe` and `history` reject.
   * Idempotent.
   *
   * @returns Once everything is released (or after the bound).
   */
  close(): Promise<void> {
    if (this.#closing !== undefined) return this.#closing;
    this.#closed = true;
    clearInterval(this.#poll);
    this.#poll = undefined;
    for (const writer of this.#writers.values()) writer.close();
    this.#writers.clear();
    for (const reader of this.#readers.values()) reader.retire();
    this.#readers.clear();
    this.#closing = this.#settle();
    return this.#closing;
  }

  async #settle(): Promise<void> {
    let timer: Timer | undefined;
    const bound = new Promise<void>((resolve) => {
      timer = startTimeout(resolve, CLOSE_TIMEOUT);
    });
    await Promise.race([Promise.allSettled([...this.#tasks]), bound]);
    clearTimeout(timer);
  }

  /** Runs `promise` as work that `close()` waits for. */
  #task<T>(promise: Promise<T>): Promise<T> {
    this.#tasks.add(promise);
    const done = () => this.#tasks.delete(promise);
    promise.then(done, done);
    return promise;
  }

  /** Like {@linkcode #task}, for work nobody awaits: never rejects. */
  #track(promise: Promise<unknown>): void {
    this.#task(promise).catch((error) =>
      this.#report(error instanceof Error ? error : new Error(String(error)))
    );
  }

  /** The stream's head as stored (see `readHead`); a foreign one reported. */
  async #readHead(keys: StreamKeys): Promise<Head & { stored: boolean }> {
    const { problem, ...head } = await readHead(this.#kv, keys);
    if (problem !== undefined) {
      this.#report(
        new TypeError(
          `Invalid head of stream ${
            JSON.stringify(keys.name)
          }: ${problem}; going on after entry ${head.seq}`,
        ),
      );
    }
    return head;
  }

  // ---------------------------------------------------------------- publish

  #writer(name: string): StreamWriter {
    let writer = this.#writers.get(name);
    if (writer === undefined) {
      this.#dropWriters();
      writer = new StreamWriter(streamKeys(this.#prefix, name), {
        kv: this.#kv,
        expireIn: this.#expireIn,
        trimDelay: this.#trimDelay,
        readHead: (keys) => this.#readHead(keys),
        committed: (head) => {
          const reader = this.#readers.get(name);
          if (reader !== undefined) reader.observe(head);
        },
        fault: (error, context) => this.#fault(error, context),
      });
      this.#writers.set(name, writer);
    }
    return writer;
  }

  /**
   * Keeps at most {@linkcode MAX_WRITERS} writers: per-user streams must not
   * pile up. The oldest idle ones go (a later publish to their stream reads
   * its head again); busy ones are looked at again later.
   */
  #dropWriters(): void {
    for (let i = 0; i < 4 && this.#writers.size >= MAX_WRITERS; i++) {
      const [name, writer] = this.#writers.entries().next().value!;
      this.#writers.delete(name);
      if (!writer.idle) this.#writers.set(name, writer);
    }
  }

  // ---------------------------------------------------------------- read

  #reader(name: string): StreamReader {
    let reader = this.#readers.get(name);
    if (reader === undefined) {
      reader = new StreamReader(
        name,
        streamKeys(this.#prefix, name),
        this.#host,
      );
      this.#readers.set(name, reader);
    }
    return reader;
  }

  #release(reader: StreamReader, subscriber: Subscriber): void {
    subscriber.active = false;
    reader.subscribers.delete(subscriber);
    if (reader.subscribers.size > 0 || reader.retired) return;
    if (this.#readers.get(reader.name) === reader) {
      this.#readers.delete(reader.name);
    }
    reader.retire();
    if (this.#readers.size === 0) {
      clearInterval(this.#poll);
      this.#poll = undefined;
    }
  }

  #ensurePoll(): void {
    if (this.#poll !== undefined || this.#closed) return;
    this.#poll = startInterval(() => {
      if (this.#polling) return;
      this.#polling = true;
      this.#track(this.#pollAll().finally(() => this.#polling = false));
    }, this.#pollInterval);
  }

  /** Reads every watched stream's head, and what is new after it. */
  async #pollAll(): Promise<void> {
    for (const reader of [...this.#readers.values()]) {
      if (reader.retired || this.#closed) continue;
      if (!await reader.poll()) return;
    }
  }

  /** The entry, or `undefined` (reported) when it does not decode. */
  #decode(name: string, raw: RawEntry): SSEBrokerEntry | undefined {
    const decoded = decodeEntry(raw);
    if ("entry" in decoded) return decoded.entry;
    // Once per entry, however many readers (live, every resuming client)
    // skip it.
    const id = entryId(raw.versionstamp, raw.seq, raw.inc);
    const key = `${JSON.stringify(name)} ${id}`;
    if (this.#reported.has(key)) return undefined;
    if (this.#reported.size >= REPORTED_MAX) this.#reported.clear();
    this.#reported.add(key);
    this.#report(
      new SyntaxError(
        `Invalid entry ${id} of stream ${
          JSON.stringify(name)
        }: ${decoded.fault}`,
      ),
    );
    return undefined;
  }

  /** Reports a failure to reach the database, once per outage. */
  #fault(error: unknown, context: string): void {
    if (this.#closed || !this.#healthy) return;
    this.#healthy = false;
    this.#report(
      new Error(`${context}: ${kvErrorMessage(error)}`, { cause: error }),
    );
  }
}
