// Copyright the sse authors. MIT license.
// A resuming client's catch-up: the entries it missed, paged from the
// broker's history as it reads, until its position meets the channel's shared
// live subscription, which then takes over. Private: used by _fanout.ts,
// never exported from mod.ts or deno.json.
//
// Ids can be matched, not compared, so where the client stands relative to
// the shared subscription is known only by ids both have seen:
//
// - PAGING: pages of history are sent to the client, an entry at a time
//   while its stream has room, and the next page is fetched once a page is
//   sent: the replay is paced by how fast the client reads (its stream pulls
//   when it has taken what was queued), so a paused client costs one page.
//   An entry of a page that is the shared subscription's newest (`last`)
//   means the client is level: it joins the shared fan-out after it. An entry
//   the shared subscription delivered earlier (one of its recent ids) means
//   the shared one is ahead by a known stretch: MERGE.
// - MERGE: history is paged up to `until` (the shared subscription's newest
//   when MERGE began), while the shared entries after it that the client
//   wants are collected; at `until` they are written and the client joins.
// - WAIT: history had nothing after the client's position, which the shared
//   subscription has not delivered (it lags, or it started after that entry
//   was published). When it delivers the client's position, the client joins;
//   an id of the client's last page means it still lags; any other id means
//   something new was published (or an older one): page again.
//
// Every phase waits only for entries already stored, and a page of history
// continues exactly where the client stands, so nothing is skipped or sent
// twice whatever the timing of the broker's two paths. An entry the client
// needs that left the history meanwhile (history answers `null`) ends its
// stream: it reconnects with its Last-Event-ID and gets `resumed: false`.
//
// The same catch-up serves a live client that fell behind (its backlog would
// have gone above `maxBacklog`): it starts from the last entry the client was
// written, once its backlog has drained. What a catch-up holds is bounded
// too: a page, and while merging at most `maxBacklog` bytes of shared
// entries (references to the frames every client is sent);
// a merge that would collect more is given up (those entries are still in
// the history) and paging goes on.

import type { SSEBroker, SSEBrokerEntry } from "./_broker.ts";
import { type Client, CLOSED, OPEN } from "./_client.ts";
import { describe } from "./_json.ts";

/** Entries per `history` call. */
export const PAGE = 100;
/**
 * Replayed frames are written in chunks of about this many bytes: a herd of
 * clients that resume from the same place shares the chunks (see
 * `Frames.run` in _frames.ts), and the runtime handles a few chunks instead
 * of hundreds.
 */
export const RUN_BYTES = 32 * 1024;
/** How many ids of the shared subscription's last entries a channel keeps. */
export const RECENT = 256;

/**
 * The next page of a stream's history after `after`, as the broker contract
 * says it is: `null`, or an array of entries (objects with a string id; an
 * entry whose message cannot be framed is skipped later, and reported).
 * Anything else a broker does (throwing instead of rejecting, resolving to
 * something that is not a page) is a rejection, so that `connect` falls
 * back to `resumed: false` and a catch-up ends as after any failed read,
 * reported, instead of crashing the process or stalling the client.
 *
 * @param broker The channel's broker.
 * @param name The channel's stream.
 * @param after The id of the last entry the client has.
 * @returns The page, or `null` when `after` is not a resume point.
 * @throws {TypeError} When the broker answered something that is not a page.
 */
export async function historyPage(
  broker: SSEBroker,
  name: string,
  after: string,
): Promise<SSEBrokerEntry[] | null> {
  const page: unknown = await broker.history(name, { after, limit: PAGE });
  if (page === null) return null;
  if (!Array.isArray(page)) {
    throw new TypeError(
      `Invalid history page: expected an array of entries or null, got ${
        describe(page)
      }`,
    );
  }
  for (const entry of page as unknown[]) {
    if (
      typeof entry !== "object" || entry === null ||
      typeof (entry as { id?: unknown }).id !== "string"
    ) {
      throw new TypeError(
        `Invalid history page: expected entries with a string id, got ${
          describe(entry)
        }`,
      );
    }
  }
  return page as SSEBrokerEntry[];
}

/** The last ids some subscription delivered, newest `size` of them. */
export class IdWindow {
  /** The newest id added, if any. */
  last: string | undefined;
  /** How many ids were added in all. */
  count = 0;
  #ids = new Set<string>();
  #ring: (string | undefined)[];
  #at = 0;

  /** @param size How many ids to remember. */
  constructor(size: number) {
    this.#ring = new Array(size);
  }

  /** Remembers an id, forgetting the oldest one beyond `size`. */
  add(id: string): void {
    const old = this.#ring[this.#at];
    if (old !== undefined) this.#ids.delete(old);
    this.#ring[this.#at] = id;
    this.#at = (this.#at + 1) % this.#ring.length;
    this.#ids.add(id);
    this.last = id;
    this.count++;
  }

  /** Whether the id is one of the remembered ones. */
  has(id: string): boolean {
    return this.#ids.has(id);
  }
}

/** What a catch-up needs from its channel. */
export interface ResumeHost<C> {
  /** The shared subscription's last ids. */
  readonly shared: IdWindow;
  /** The most bytes of shared entries a merge collects. */
  readonly maxBacklog: number;
  /** The next page of the channel's stream after `after`. */
  history(after: string): Promise<SSEBrokerEntry[] | null>;
  /**
   * The client's frame of an entry: `undefined` when it does not select it
   * (topics, `filter`, which may end the client) or it cannot be framed.
   */
  frame(client: Client<C>, entry: SSEBrokerEntry): Uint8Array | undefined;
  /**
   * Writes consecutive frames of entries `first` to `last` to the client as
   * one chunk.
   */
  write(
    client: Client<C>,
    frames: Uint8Array[],
    first: string,
    last: string,
  ): void;
  /** Sends an encoded frame to the client. */
  send(client: Client<C>, bytes: Uint8Array): void;
  /** The client leaves its catch-up for the shared fan-out. */
  handOver(client: Client<C>): void;
  /**
   * Ends the client's stream, so that it reconnects: `history` lost its
   * position (`error` undefined) or failed.
   */
  end(client: Client<C>, error?: unknown): void;
}

const PAGING = 0;
const MERGE = 1;
const WAIT = 2;

/** A resuming client's catch-up (see the header). */
export class Resume<C> {
  /** The id of the last entry the client has. */
  position: string;
  #host: ResumeHost<C>;
  #client: Client<C>;
  #phase = PAGING;
  /** A `history` call is in flight. */
  #busy = false;
  /** A page is being sent (its writes may make the stream pull). */
  #sending = false;
  /** The page being sent, and the index of its next entry. */
  #page: SSEBrokerEntry[];
  #index = 0;
  /** The shared subscription's count when the last fetch began. */
  #countAtFetch: number;
  #until = "";
  /** While merging: the frames collected, and their ids; their bytes. */
  #pending: Uint8Array[] = [];
  #pendingIds: string[] = [];
  #pendingBytes = 0;
  /** While waiting: the ids of the last page the client got. */
  #seen: Set<string> | undefined;
  /** Handed over or ended: nothing more to do. */
  #done = false;

  /**
   * A catch-up from `position`: with a page already fetched (the one that
   * told `connect` the client resumes), then {@linkcode Resume.start}; or
   * with none, for a client that fell behind, which fetches its first page
   * when the client's stream pulls with its backlog drained
   * ({@linkcode Resume.pull}).
   *
   * @param host The channel.
   * @param client The resuming client.
   * @param position The id of the last entry it has: its `Last-Event-ID`,
   * or the last entry it was written.
   * @param first The page of history after it, if fetched.
   * @param countAtFetch The shared subscription's count before that fetch.
   */
  constructor(
    host: ResumeHost<C>,
    client: Client<C>,
    position: string,
    first: SSEBrokerEntry[] = [],
    countAtFetch: number = host.shared.count,
  ) {
    this.#host = host;
    this.#client = client;
    this.position = position;
    this.#page = first;
    this.#countAtFetch = countAtFetch;
  }

  /**
   * Whether history is still to be sent: it pages or merges, rather than
   * waiting for the shared subscription (or being done).
   */
  get behind(): boolean {
    return !this.#done && this.#phase !== WAIT;
  }

  /** Whether shared entries are to be collected (see {@linkcode collect}). */
  get merging(): boolean {
    return this.#phase === MERGE;
  }

  /** Sends the first page, once the client is open; then goes on paging. */
  start(): void {
    if (this.#page.length === 0) this.#atEnd();
    else this.#pump();
  }

  /** The client's stream wants more. */
  pull(): void {
    this.#pump();
  }

  /**
   * While merging: a shared entry after `until` that the client wants. One
   * that would take the collected frames above `maxBacklog` gives the merge
   * up: paging goes on from the client's position, through the history,
   * which holds them too.
   *
   * @param bytes Its encoded frame.
   * @param id Its id.
   */
  collect(bytes: Uint8Array, id: string): void {
    if (this.#pendingBytes + bytes.byteLength > this.#host.maxBacklog) {
      this.#phase = PAGING;
      this.#until = "";
      this.#forget();
      return;
    }
    this.#pending.push(bytes);
    this.#pendingIds.push(id);
    this.#pendingBytes += bytes.byteLength;
  }

  /**
   * The shared subscription delivered an entry (after its fan-out). Only a
   * waiting catch-up cares.
   *
   * @param id The entry's id.
   */
  shared(id: string): void {
    if (this.#phase !== WAIT || this.#done) return;
    if (id === this.position) {
      this.#host.handOver(this.#client);
    } else if (!this.#seen!.has(id)) {
      this.#phase = PAGING;
      this.#seen = undefined;
      if (!this.#busy) this.#fetch();
    }
  }

  /** Stops for good and forgets what it holds. */
  release(): void {
    this.#done = true;
    this.#forget();
    this.#page = [];
  }

  #forget(): void {
    this.#pending = [];
    this.#pendingIds = [];
    this.#pendingBytes = 0;
  }

  /**
   * Sends entries of the page while the client's stream has room, then
   * fetches the next page.
   */
  #pump(): void {
    const client = this.#client;
    if (this.#sending || this.#done || client.state !== OPEN) return;
    this.#sending = true;
    try {
      this.#send();
    } finally {
      this.#sending = false;
    }
    if (
      this.#index === this.#page.length && !this.#busy && !this.#done &&
      this.#phase !== WAIT && client.ready
    ) {
      this.#fetch();
    }
  }

  #fetch(): void {
    const host = this.#host;
    const client = this.#client;
    this.#busy = true;
    this.#countAtFetch = host.shared.count;
    host.history(this.position).then((page) => {
      this.#busy = false;
      if (this.#done || client.state === CLOSED) return;
      if (page === null) {
        host.end(client);
      } else if (page.length === 0) {
        this.#atEnd();
      } else {
        this.#page = page;
        this.#index = 0;
        this.#pump();
      }
    }, (error) => {
      this.#busy = false;
      if (!this.#done && client.state !== CLOSED) host.end(client, error);
    });
  }

  /**
   * Sends the page's next entries, a run of frames at a time, while the
   * client's stream has room; joins the shared fan-out where they meet.
   */
  #send(): void {
    const host = this.#host;
    const client = this.#client;
    const shared = host.shared;
    const page = this.#page;
    const run: Uint8Array[] = [];
    let bytes = 0;
    let first = "";
    const flush = () => {
      if (run.length === 0) return;
      host.write(client, run, first, this.position);
      run.length = 0;
      bytes = 0;
    };
    while (this.#index < page.length) {
      if (run.length === 0 && !client.ready) return;
      const entry = page[this.#index++]!;
      const { id } = entry;
      const frame = host.frame(client, entry);
      if (this.#done || client.state === CLOSED) return;
      if (frame !== undefined) {
        if (run.length === 0) first = id;
        run.push(frame);
        bytes += frame.byteLength;
      }
      this.position = id;
      if (this.#phase === MERGE) {
        if (id === this.#until) {
          flush();
          this.#merge();
          return;
        }
      } else if (id === shared.last) {
        flush();
        host.handOver(client);
        return;
      } else if (shared.has(id)) {
        this.#phase = MERGE;
        this.#until = shared.last!;
      }
      if (bytes >= RUN_BYTES) flush();
    }
    flush();
  }

  /** History had nothing after the client's position. */
  #atEnd(): void {
    const host = this.#host;
    const shared = host.shared;
    if (this.position === shared.last) {
      host.handOver(this.#client);
    } else if (shared.count !== this.#countAtFetch) {
      // The shared subscription moved while history was read: read again.
      if (!this.#busy) this.#fetch();
    } else if (this.#phase === MERGE) {
      // `until` was delivered, so it is stored after the client's position;
      // a history without it lost entries: start again from a reconnect.
      host.end(this.#client);
    } else {
      this.#phase = WAIT;
      // A shared entry the client got from its last page means the shared
      // subscription still lags behind it.
      this.#seen = new Set(this.#page.map((entry) => entry.id));
    }
  }

  /**
   * At `until`: writes the shared entries collected since (at most
   * `maxBacklog` bytes), then joins.
   */
  #merge(): void {
    const client = this.#client;
    const pending = this.#pending;
    const ids = this.#pendingIds;
    this.#forget();
    for (let i = 0; i < pending.length; i++) {
      if (client.state === CLOSED) return;
      this.#host.send(client, pending[i]!);
      this.position = ids[i]!;
    }
    if (client.state !== CLOSED) this.#host.handOver(client);
  }
}
