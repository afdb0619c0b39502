// Copyright the sse authors. MIT license.
// The reading side of one stream of a DenoKvBroker (kv.ts), shared by its
// subscriptions: a watch on the stream's head (watched again when it ends or
// fails), and on each new head a read of every entry after the last one
// delivered, up to that head, delivered in order. The broker's poll feeds it
// heads too. Private: never exported from mod.ts or deno.json.

import type { SSEBrokerEntry, SSEBrokerGap } from "./_broker.ts";
import { errorMessage } from "./_broker.ts";
import {
  entryId,
  type Head,
  parseHead,
  type RawEntry,
  readEntries,
  type StreamKeys,
} from "./_kv_store.ts";
import { startTimeout, type Timer } from "./_timer.ts";

/** The wait before watching again after a watch that ended within it, ms. */
const REWATCH_DELAY = 1_000;

/** Keys read per `kv.list` page (by history too). */
export const PAGE = 200;

/** One subscription's delivery state. */
export interface Subscriber {
  onEntry: (entry: SSEBrokerEntry) => void;
  /** Told of entries lost before the next one delivered, if given. */
  onGap: ((gap: SSEBrokerGap) => void) | undefined;
  /** Its reader's `delivered` when it joined: it gets the entries after. */
  from: number;
  active: boolean;
}

/** Where a reader goes on reading. */
export interface Cursor {
  /** Sequence of the last entry read (or of the head it started from). */
  seq: number;
  /** The incarnation `seq` counts in; `undefined` before any is known. */
  inc: string | undefined;
  /** Versionstamp of the newest head read up to (`""` before any). */
  versionstamp: string;
}

/** What a reader needs of its broker. */
export interface ReaderHost {
  readonly kv: Deno.Kv;
  /** Whether the broker is closed. */
  closed(): boolean;
  /** Work `close()` waits for. */
  task<T>(promise: Promise<T>): Promise<T>;
  /** Work nobody awaits, which `close()` waits for too. */
  track(promise: Promise<unknown>): void;
  /** A failure to reach the database (reported once per outage). */
  fault(error: unknown, context: string): void;
  /** The database answered: the outage, if any, is over. */
  recovered(): void;
  /** Reports an error nobody can be told of. */
  report(error: Error): void;
  /** The entry, or `undefined` (reported) when it does not decode. */
  decode(name: string, raw: RawEntry): SSEBrokerEntry | undefined;
}

/** The reading side of one stream in a broker, shared by subscriptions. */
export class StreamReader {
  readonly name: string;
  readonly keys: StreamKeys;
  readonly subscribers: Set<Subscriber> = new Set();
  /** `undefined` until a subscribe has read the head. */
  cursor: Cursor | undefined = undefined;
  /** Entries delivered so far. */
  delivered = 0;
  /** The id of the last entry read, if any. */
  #lastId: string | undefined = undefined;
  /** Whether it was stopped: no more delivery. */
  retired = false;
  /**
   * The newest head (by versionstamp) the watch, the poll, a subscribe or a
   * publish of this broker saw: what reading goes up to, and not beyond, so
   * that a key written by hand ahead of the head is not taken for an entry.
   */
  #head: Head | undefined = undefined;
  #pulling: Promise<void> | undefined = undefined;
  #again = false;
  #watch: ReadableStreamDefaultReader<Deno.KvEntryMaybe<unknown>[]> | undefined;
  /** A new watch to come, after one that ended or failed. */
  #rewatch: Timer | undefined = undefined;
  #host: ReaderHost;

  /**
   * Makes the reader of a stream and starts watching its head.
   *
   * @param name The stream.
   * @param keys Its keys.
   * @param host The broker.
   */
  constructor(name: string, keys: StreamKeys, host: ReaderHost) {
    this.name = name;
    this.keys = keys;
    this.#host = host;
    this.#startWatch();
  }

  /** Stops it: no more delivery, its watch cancelled. */
  retire(): void {
    this.retired = true;
    for (const subscriber of this.subscribers) subscriber.active = false;
    this.subscribers.clear();
    const watch = this.#watch;
    this.#watch = undefined;
    if (watch !== undefined) this.#host.track(watch.cancel());
    clearTimeout(this.#rewatch);
    this.#rewatch = undefined;
  }

  /**
   * For the broker's poll: watches again if no watch runs, then reads the
   * head as stored and what is new after it.
   *
   * @returns Whether the database answered.
   */
  async poll(): Promise<boolean> {
    if (this.#watch === undefined) this.#startWatch();
    let head: Head | undefined;
    try {
      head = parseHead(await this.#host.kv.get(this.keys.head));
    } catch (error) {
      this.#host.fault(error, `Cannot read ${JSON.stringify(this.name)}`);
      return false;
    }
    await this.observe(head);
    return true;
  }

  /**
   * Takes note of a head (the newest by versionstamp wins: the watch, the
   * poll and this broker's commits may report them out of order) and reads
   * what is new.
   *
   * @param head A head as stored; `undefined` (none, or not one a broker
   * wrote: it is not read up to) does nothing.
   * @returns Once what is new is read.
   */
  observe(head: Head | undefined): Promise<void> {
    if (head === undefined) return Promise.resolve();
    const known = this.#head;
    if (known === undefined || head.versionstamp! > known.versionstamp!) {
      this.#head = head;
    }
    return this.#pull();
  }

  /**
   * Watches the stream's head: each change it reports makes the reader read
   * what is new. It reports changes made through any handle of this process
   * (and, on Deno Deploy, anywhere); the poll covers the rest.
   */
  #startWatch(): void {
    const host = this.#host;
    let watch: ReadableStreamDefaultReader<Deno.KvEntryMaybe<unknown>[]>;
    try {
      watch = host.kv.watch([this.keys.head]).getReader();
    } catch (error) {
      host.fault(error, `Cannot watch ${JSON.stringify(this.name)}`);
      this.#watchAgain(REWATCH_DELAY);
      return;
    }
    this.#watch = watch;
    const started = Date.now();
    host.track((async () => {
      let failed = false;
      try {
        for (;;) {
          const { value, done } = await watch.read();
          if (this.retired || host.closed()) return;
          if (done) break;
          if (value[0] !== undefined) this.observe(parseHead(value[0]));
        }
      } catch (error) {
        if (this.retired || host.closed()) return;
        failed = true;
        host.fault(error, `Cannot watch ${JSON.stringify(this.name)}`);
      }
      // Ended by itself (a service closing long watches) or failed: watch
      // again, whether or not a poll runs (with none, nothing would be
      // delivered any more). A new watch reports the head as it is first, so
      // nothing is missed; after a failure, or a watch that ended at once,
      // it waits a little, never spinning.
      if (this.#watch !== watch) return;
      this.#watch = undefined;
      const lived = Date.now() - started;
      this.#watchAgain(failed || lived < REWATCH_DELAY ? REWATCH_DELAY : 0);
    })());
  }

  /** Watches again after `delay` ms. */
  #watchAgain(delay: number): void {
    if (this.#rewatch !== undefined || this.retired || this.#host.closed()) {
      return;
    }
    this.#rewatch = startTimeout(() => {
      this.#rewatch = undefined;
      // (Unless the poll watched again first.)
      if (
        !this.retired && !this.#host.closed() && this.#watch === undefined
      ) {
        this.#startWatch();
      }
    }, delay);
  }

  /**
   * Reads what is new in the stream, once at a time: a call while a read is
   * in flight makes it read again when done.
   */
  #pull(): Promise<void> {
    if (this.#pulling !== undefined) {
      this.#again = true;
      return this.#pulling;
    }
    const pulling = this.#host.task((async () => {
      try {
        do {
          this.#again = false;
          await this.#read();
        } while (this.#again && !this.retired);
      } catch (error) {
        this.#host.fault(error, `Cannot read ${JSON.stringify(this.name)}`);
      } finally {
        this.#pulling = undefined;
      }
    })());
    this.#pulling = pulling;
    return pulling;
  }

  /**
   * Reads every entry after the cursor up to the newest head seen, and
   * delivers it. A head of another incarnation (the stream expired and
   * started again, on this database or a new one) numbers its entries from
   * its base again: the cursor goes back there, so that none is skipped.
   */
  async #read(): Promise<void> {
    const cursor = this.cursor;
    const head = this.#head;
    if (cursor === undefined || head === undefined || this.retired) return;
    if (head.versionstamp! <= cursor.versionstamp) return;
    if (head.inc !== cursor.inc) {
      cursor.seq = Math.min(cursor.seq, head.base);
      cursor.inc = head.inc;
    }
    let expected = cursor.seq + 1;
    const entries = readEntries(this.#host.kv, this.keys, {
      from: expected,
      to: head.seq,
      batchSize: PAGE,
    });
    for await (const raw of entries) {
      if (this.retired) return;
      const id = entryId(raw.versionstamp, raw.seq, raw.inc);
      if (raw.seq > expected) {
        this.#host.report(
          new Error(
            `Entries ${expected} to ${raw.seq - 1} of stream ${
              JSON.stringify(this.name)
            } were trimmed or expired before this broker read them`,
          ),
        );
        this.#gap({
          after: this.#lastId,
          before: id,
          lost: raw.seq - expected,
        });
      }
      this.#lastId = id;
      cursor.seq = raw.seq;
      expected = raw.seq + 1;
      const entry = this.#host.decode(this.name, raw);
      if (entry !== undefined) this.#deliver(entry);
    }
    // Up to the head: an entry missing at its end expired with it.
    cursor.seq = Math.max(cursor.seq, head.seq);
    cursor.versionstamp = head.versionstamp!;
    this.#host.recovered();
  }

  /** Delivers an entry to the subscribers that joined before it. */
  #deliver(entry: SSEBrokerEntry): void {
    const position = ++this.delivered;
    for (const subscriber of this.subscribers) {
      // One that joined during this loop (from inside an onEntry) starts
      // with the next entry.
      if (!subscriber.active || subscriber.from >= position) continue;
      this.#call("onEntry", subscriber.onEntry, entry);
    }
  }

  /**
   * Tells every subscriber that the next entry would reach (see `#deliver`)
   * that entries before it were lost.
   */
  #gap(gap: SSEBrokerGap): void {
    const position = this.delivered + 1;
    for (const subscriber of this.subscribers) {
      const { onGap } = subscriber;
      if (!subscriber.active || subscriber.from >= position || !onGap) {
        continue;
      }
      this.#call("onGap", onGap, gap);
    }
  }

  /** Calls a subscriber's callback; what it throws is reported. */
  #call<T>(what: string, callback: (value: T) => void, value: T): void {
    try {
      callback(value);
    } catch (error) {
      this.#host.report(
        new Error(`${what} threw: ${errorMessage(error)}`, { cause: error }),
      );
    }
  }
}
