// Copyright the sse authors. MIT license.
// One client of an SSEChannel: the underlying source of its response stream,
// its backlog, and the little state the fan-out needs; and the judge of
// whether clients drain. Private: used by _fanout.ts and _resume.ts, never
// exported from mod.ts or deno.json.
//
// The response stream's own queue is kept small (at most STREAM_QUEUE bytes,
// or `maxQueue` if smaller): what the runtime has not taken yet beyond that
// waits in the client's backlog, a list of the same Uint8Arrays every client
// shares, and moves into the stream as the stream pulls. So a backlog costs a
// reference per frame, not a copy. The channel keeps a backlog within
// `maxBacklog` bytes: a client that would need more falls behind (it keeps
// only its position, and is fed from the broker's history as it drains; see
// _resume.ts). A client can be let go at any moment: its backlog is dropped
// and its stream closed once the runtime has taken what its queue holds.
//
// Each chunk in the backlog is one message's frame (a run of replayed frames
// is written only into a stream with room, and keep-alives only into an
// empty queue), so a message is counted as delivered when its frame is
// handed to the stream, never when it only waits in a backlog that may be
// dropped.
//
// The fan-out's hot path is one write per client per event, so what the
// stream machinery does per chunk is most of the fan-out's cost beyond a
// hand-written loop (bench/fanout/hot_path.mjs measures it on Deno, Bun and
// Node). Three choices keep it near the loop's:
//
// - The stream's high-water mark is 0. A stream calls `pull` whenever its
//   desired size is above 0, which with a positive high-water mark means
//   after each chunk a waiting reader takes, twice (once as the chunk is
//   handed over, once as the reader asks again); with 0, only when a reader
//   finds the queue empty, the one moment the channel needs.
// - While a client has no backlog and no catch-up, `pull` returns a promise
//   that stays pending (the client is "parked"): a stream does not call
//   `pull` again before that promise settles, it only notes that it would
//   have (a flag). A client that keeps up thus costs no `pull` call (the
//   call and its promises) per chunk. Once it needs its pulls (a frame went
//   to its backlog, or a catch-up began), the promise is resolved, and the
//   stream calls `pull` at its next drain.
// - The queue counts chunks (no `size` function to call per chunk), and the
//   client bounds its bytes itself (`#room`).

import type { Resume } from "./_resume.ts";
import type { SSEChannelClient, Tally } from "./_presence.ts";
import type { SSEDisconnectReason } from "./_channel_options.ts";
import { startInterval, startTimeout, type Timer } from "./_timer.ts";

/** The client's stream exists; `init` has not finished. */
export const CONNECTING: number = 0;
/** `init`'s messages are written; live (or resumed) ones follow. */
export const OPEN: number = 1;
/** Released: nothing more is written. */
export const CLOSED: number = 2;

/** The most bytes a response stream's own queue holds. */
export const STREAM_QUEUE = 64 * 1024;

/** A client's bounds, the same for every client of a channel. */
export interface ClientLimits {
  /** The most bytes its stream's queue holds. */
  streamQueue: number;
  /**
   * The backlog's bytes above which frames wait for it beyond `maxQueue`
   * (its stream's queue full, and this much more): it is judged on whether
   * it drains (see DrainJudge). 0 when `maxQueue` is the stream's bound.
   */
  slowAt: number;
}

/** What a client tells its channel. */
export interface ClientEvents<C> {
  /** The stream took from its queue and has room again. */
  pull(client: Client<C>): void;
  /** The response stream was cancelled: the client went away. */
  cancel(client: Client<C>): void;
}

/**
 * One connected client: its stream's underlying source (so the stream needs
 * no closures), its backlog, and the little state the fan-out needs.
 */
export class Client<C> implements UnderlyingDefaultSource<Uint8Array> {
  controller!: ReadableStreamDefaultController<Uint8Array>;
  /** What presence shows of it (frozen; see SSEChannel.clients). */
  readonly info: SSEChannelClient<C>;
  readonly context: C;
  /** The topics it receives; `null` for every topic. */
  readonly topics: readonly string[] | null;
  /** Why it ended, once it has. */
  reason: SSEDisconnectReason | undefined;
  /** Set on every write, cleared by the keep-alive tick. */
  wrote = true;
  state: number = CONNECTING;
  /**
   * The id of the last entry whose frame it was written (or that its
   * catch-up passed): where it resumes from when it falls behind.
   */
  position: string | undefined;
  #resume: Resume<C> | undefined;
  /** The drain judge watches it (frames wait for it: see `blocked`). */
  watched = false;
  /** Drain checks in a row that found it had taken nothing. */
  checks = 0;
  /** What {@linkcode Client.taken} was at the last drain check. */
  takenAtCheck = 0;
  /** Bytes in the backlog. */
  backlogBytes = 0;
  /** Frames not yet handed to the stream, oldest first from `#head`. */
  #backlog: Uint8Array[] = [];
  #head = 0;
  #flushing = false;
  /** Resolves the promise `pull` returned while the client was parked. */
  #parked: (() => void) | undefined;
  /** The stream pulled since the last chunk was handed to it. */
  #asked = false;
  /** Chunks handed to the stream so far. */
  #chunks = 0;
  /**
   * Its stream is to close once the runtime has taken what its queue holds
   * (see `finish`); called then, or when the stream is cancelled first.
   */
  #ending = false;
  onEnd: ((client: Client<C>) => void) | undefined;
  /**
   * At least the bytes in the stream's queue: what went in since the queue
   * was last found empty (see `#room`).
   */
  #bound = 0;
  #streamQueue: number;
  #slowAt: number;
  #events: ClientEvents<C>;
  #tally: Tally;

  /**
   * A client, before its stream exists.
   *
   * @param info Its context, topics (`null` for all) and connection time.
   * @param limits Its stream's bound, and when it is judged.
   * @param events Where it reports pulls and its cancel.
   * @param tally Where the bytes and messages it is sent are counted.
   */
  constructor(
    info: SSEChannelClient<C>,
    limits: ClientLimits,
    events: ClientEvents<C>,
    tally: Tally,
  ) {
    this.info = info;
    this.context = info.context;
    this.topics = info.topics;
    this.#streamQueue = limits.streamQueue;
    this.#slowAt = limits.slowAt;
    this.#events = events;
    this.#tally = tally;
  }

  start(controller: ReadableStreamDefaultController<Uint8Array>): void {
    this.controller = controller;
  }

  pull(): Promise<void> | undefined {
    this.#asked = true;
    // The runtime took the last chunk and asks for more: the end.
    if (this.#ending) {
      this.#end();
      return undefined;
    }
    // An enqueue can make the stream pull at once: not while flushing.
    if (this.#flushing) return undefined;
    this.#events.pull(this);
    if (this.backlogBytes > 0 || this.#resume !== undefined) return undefined;
    // Parked: the stream calls pull again once this settles (see the header).
    return new Promise<void>((resolve) => {
      this.#parked = resolve;
    });
  }

  /** While it catches up from the broker's history: the catch-up. */
  get resume(): Resume<C> | undefined {
    return this.#resume;
  }

  set resume(resume: Resume<C> | undefined) {
    this.#resume = resume;
    // A catch-up goes on as the client reads: it needs its pulls.
    if (resume !== undefined) this.#unpark();
  }

  // The response stream's cancel is the proof of a disconnect: Deno.serve's
  // request.signal also fires when a response completes normally.
  cancel(): void {
    if (this.#ending) this.#end();
    this.#events.cancel(this);
  }

  /**
   * Closes the stream once the runtime has taken every chunk in its queue:
   * at once when it is empty; else when the stream next pulls (it pulls
   * only when a read finds the queue empty), so that the channel knows when
   * the end was taken (`onEnd`).
   *
   * @returns Whether the end is still to be taken.
   */
  finish(): boolean {
    // Empty and open (the high-water mark is 0), or closed or errored.
    const size = this.controller.desiredSize;
    if (size === null || size >= 0) {
      try {
        this.controller.close();
      } catch {
        // The runtime closed the stream already: the client is gone.
      }
      return false;
    }
    this.#ending = true;
    this.#unpark();
    return true;
  }

  /** Whether its end is still to be taken (see `finish`). */
  get ending(): boolean {
    return this.#ending;
  }

  #end(): void {
    this.#ending = false;
    try {
      this.controller.close();
    } catch {
      // Cancelled, or cut meanwhile.
    }
    this.onEnd?.(this);
  }

  /**
   * Chunks the runtime has taken from the stream so far: what went in, less
   * what is still in its queue (the queue counts chunks, and its high-water
   * mark is 0: its desired size is minus the chunks it holds). Only
   * meaningful while the stream is open.
   */
  get taken(): number {
    return this.#chunks + (this.controller.desiredSize ?? 0);
  }

  /**
   * Whether more than `maxQueue` bytes wait for the runtime to take them:
   * the stream's queue is at its bound and the backlog holds more than
   * `slowAt`. (A backlog with an empty queue means the runtime holds the
   * last chunk it took and has not asked for more: the stream pulls only
   * when a read finds it empty.) A catch-up still behind the history is
   * blocked whenever the runtime has not asked for more since its last
   * chunk: the rest of the history waits for it, paged only as the stream
   * pulls, so never in its backlog (else a peer that never reads would hold
   * its connection for good).
   */
  get blocked(): boolean {
    const slowAt = this.#slowAt;
    if (this.backlogBytes > slowAt) return true;
    if (this.#resume?.behind === true) return !this.#asked;
    return slowAt === 0 && !this.#room();
  }

  /** Whether a frame goes into the stream now: room, and no backlog. */
  get ready(): boolean {
    return this.backlogBytes === 0 && this.#room();
  }

  /** Whether it has written anything to its stream yet. */
  get silent(): boolean {
    return this.#chunks === 0;
  }

  /**
   * Whether the client receives entries of this topic.
   *
   * @param topic An entry's topic.
   * @returns `true` when it asked for every topic or for this one.
   */
  selects(topic: string): boolean {
    return this.topics === null || this.topics.includes(topic);
  }

  /**
   * Hands a chunk to the stream at once, room or not (the retry hint,
   * `init`'s messages).
   *
   * @param bytes The chunk.
   */
  enqueue(bytes: Uint8Array): void {
    const length = bytes.byteLength;
    this.#chunks++;
    this.#asked = false;
    this.#bound += length;
    this.controller.enqueue(bytes);
    this.#tally.bytesSent += length;
  }

  /**
   * Writes a message's frame: into the stream when it has room and nothing
   * waits before it (delivered), else at the end of the backlog (always
   * while connecting).
   *
   * @param bytes The frame; shared, never changed.
   */
  write(bytes: Uint8Array): void {
    this.wrote = true;
    if (this.backlogBytes === 0 && this.state === OPEN && this.#room()) {
      this.#tally.delivered++;
      this.enqueue(bytes);
      return;
    }
    this.#backlog.push(bytes);
    this.backlogBytes += bytes.byteLength;
    // The backlog moves into the stream as it pulls.
    this.#unpark();
  }

  /** Moves frames from the backlog into the stream while it has room. */
  flush(): void {
    this.#move(false);
  }

  /** Moves the whole backlog into the stream, room or not: before a close. */
  flushAll(): void {
    this.#move(true);
  }

  /** Forgets the backlog. */
  discard(): void {
    this.#backlog = [];
    this.#head = 0;
    this.backlogBytes = 0;
  }

  /** Lets the stream call `pull` again (at its next drain). */
  #unpark(): void {
    const resolve = this.#parked;
    if (resolve !== undefined) {
      this.#parked = undefined;
      resolve();
    }
  }

  /**
   * Whether the stream's queue holds less than `streamQueue` bytes. What
   * went in since the queue was last found empty bounds it; only once that
   * reaches `streamQueue` is the queue looked at (its desired size, minus
   * the chunks it holds), and it has room again once the runtime has taken
   * every chunk. So a client that keeps up is looked at once per
   * `streamQueue` bytes, not once per frame. (An open client's stream is
   * readable: one that closes or errors has released its client first.)
   */
  #room(): boolean {
    if (this.#bound < this.#streamQueue) return true;
    if (this.controller.desiredSize !== 0) return false;
    this.#bound = 0;
    return true;
  }

  #move(all: boolean): void {
    if (this.#flushing || this.backlogBytes === 0) return;
    this.#flushing = true;
    const backlog = this.#backlog;
    try {
      while (this.#head < backlog.length && (all || this.#room())) {
        const bytes = backlog[this.#head]!;
        backlog[this.#head++] = undefined!;
        this.backlogBytes -= bytes.byteLength;
        this.#tally.delivered++;
        this.enqueue(bytes);
      }
    } finally {
      this.#flushing = false;
    }
    if (this.#head === backlog.length) {
      this.discard();
    } else if (this.#head > 1024 && this.#head * 2 > backlog.length) {
      this.#backlog = backlog.slice(this.#head);
      this.#head = 0;
    }
  }
}

/** Drain checks per `drainTimeout`. */
const CHECKS = 4;

/**
 * Judges clients on whether they take what they are sent, never on how much
 * waits for them. A client that is blocked (more than `maxQueue` waits for
 * it) is watched, and a check runs every drainTimeout / CHECKS while any is:
 * one that has taken anything since the previous check starts afresh, and
 * one that is no longer blocked is let go. A client that has taken nothing
 * at more than CHECKS checks in a row is slow. Counting checks, not time,
 * gives a client the whole span even when a publisher that never yields
 * delays the checks: the event loop, and so the socket, had that many turns
 * to take something.
 *
 * It also keeps the streams the channel ended whose end the runtime has not
 * taken yet (see `Client.finish`): once CHECKS more checks have passed, each
 * is cut (`cut`), so that the runtime closes a connection whose peer never
 * reads. `close` gives them all a last, shorter grace.
 */
export class DrainJudge<C> {
  #watched = new Set<Client<C>>();
  /** Ended clients whose end is still to be taken, with their checks. */
  #closing = new Map<Client<C>, number>();
  #timer: Timer | undefined;
  #interval: number;
  #onSlow: (client: Client<C>) => void;
  #cut: (client: Client<C>) => void;
  /** While `close` waits: resolves it once nothing is left to take. */
  #closed: (() => void) | undefined;
  #taken = (client: Client<C>): void => {
    if (!this.#closing.delete(client)) return;
    if (this.#closed !== undefined) {
      if (this.#closing.size === 0) this.#closed();
    } else {
      this.#disarm();
    }
  };

  /**
   * @param drainTimeout How long (ms) a client may take nothing, and how
   * long an ended stream has to be taken to its end.
   * @param onSlow Called with a client that took nothing in time.
   * @param cut Errors the stream of an ended client whose grace ended.
   */
  constructor(
    drainTimeout: number,
    onSlow: (client: Client<C>) => void,
    cut: (client: Client<C>) => void,
  ) {
    this.#interval = drainTimeout / CHECKS;
    this.#onSlow = onSlow;
    this.#cut = cut;
  }

  /** After a write: starts judging an open client that is blocked. */
  watch(client: Client<C>): void {
    // A client in init has had no chance to read: it is judged once open.
    if (client.watched || client.state !== OPEN || !client.blocked) return;
    client.watched = true;
    client.checks = 0;
    client.takenAtCheck = client.taken;
    this.#watched.add(client);
    this.#arm();
  }

  /** Stops judging a client. */
  unwatch(client: Client<C>): void {
    if (!client.watched) return;
    client.watched = false;
    this.#watched.delete(client);
    this.#disarm();
  }

  /**
   * An ended client whose end is still to be taken (`Client.finish` said
   * so): cut after its grace unless the runtime takes it first.
   */
  ended(client: Client<C>): void {
    client.onEnd = this.#taken;
    this.#closing.set(client, 0);
    if (this.#closed === undefined) this.#arm();
  }

  /**
   * Stops judging, and waits until the runtime has taken the end of every
   * ended stream, for at most `grace` ms: then cuts those it has not.
   *
   * @param grace Milliseconds.
   * @returns Once every stream is ended or cut; no timer is left.
   */
  close(grace: number): Promise<void> {
    for (const client of this.#watched) client.watched = false;
    this.#watched.clear();
    if (this.#timer !== undefined) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
    if (this.#closing.size === 0) return Promise.resolve();
    return new Promise<void>((resolve) => {
      const timer = startTimeout(() => {
        this.#closed = undefined;
        const closing = [...this.#closing.keys()];
        this.#closing.clear();
        for (const client of closing) this.#cut(client);
        resolve();
      }, grace);
      this.#closed = () => {
        clearTimeout(timer);
        this.#closed = undefined;
        resolve();
      };
    });
  }

  #arm(): void {
    this.#timer ??= startInterval(this.#check, this.#interval);
  }

  #disarm(): void {
    if (
      this.#watched.size === 0 && this.#closing.size === 0 &&
      this.#timer !== undefined
    ) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
  }

  #check = (): void => {
    // The ended streams first: a client dropped below starts its grace at
    // the next check.
    for (const [client, checks] of this.#closing) {
      if (checks < CHECKS) {
        this.#closing.set(client, checks + 1);
      } else {
        this.#closing.delete(client);
        this.#cut(client);
      }
    }
    for (const client of this.#watched) {
      if (!client.blocked) {
        this.unwatch(client);
        continue;
      }
      const taken = client.taken;
      if (taken !== client.takenAtCheck) {
        client.takenAtCheck = taken;
        client.checks = 0;
      } else if (++client.checks > CHECKS) {
        this.#onSlow(client);
      }
    }
    this.#disarm();
  };
}
