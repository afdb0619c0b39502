// Copyright the sse authors. MIT license.
// One client of an SSEChannel: the underlying source of its response stream,
// its backlog, and the little state the fan-out needs; and the judge of
// whether clients drain. Private: used by _channel.ts and _resume.ts, never
// exported from mod.ts or deno.json.
//
// The response stream's own queue is kept small (its high-water mark is at
// most STREAM_QUEUE bytes): what the runtime has not taken yet beyond that
// waits in the client's backlog, a list of the same Uint8Arrays every client
// shares, and moves into the stream as the stream pulls. So a backlog costs a
// reference per frame, not a copy, and a client can be let go at any moment:
// its backlog is dropped and its stream closed, cleanly, with nothing left
// for the runtime to report.

import type { Resume } from "./_resume.ts";
import { startInterval, type Timer } from "./_timer.ts";

/** The client's stream exists; `init` has not finished. */
export const CONNECTING: number = 0;
/** `init`'s messages are written; live (or resumed) ones follow. */
export const OPEN: number = 1;
/** Released: nothing more is written. */
export const CLOSED: number = 2;

/** The most bytes a response stream's own queue holds. */
export const STREAM_QUEUE = 64 * 1024;

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
  readonly context: C;
  /** The topics it receives; `null` for every topic. */
  readonly topics: readonly string[] | null;
  /** Set on every write, cleared by the keep-alive tick. */
  wrote = true;
  state: number = CONNECTING;
  /** While it catches up from the broker's history: the catch-up. */
  resume: Resume<C> | undefined;
  /** Its queue went above `maxQueue` and has not come back under since. */
  over = false;
  /** Drain checks in a row that found it over. */
  checks = 0;
  /** Bytes in the backlog. */
  backlogBytes = 0;
  /** Frames not yet handed to the stream, oldest first from `#head`. */
  #backlog: Uint8Array[] = [];
  #head = 0;
  #flushing = false;
  #streamQueue: number;
  #events: ClientEvents<C>;

  /**
   * A client, before its stream exists.
   *
   * @param context What `onConnect` returned.
   * @param topics Its topics, or `null` for all.
   * @param streamQueue Its stream's high-water mark, in bytes.
   * @param events Where it reports pulls and its cancel.
   */
  constructor(
    context: C,
    topics: readonly string[] | null,
    streamQueue: number,
    events: ClientEvents<C>,
  ) {
    this.context = context;
    this.topics = topics;
    this.#streamQueue = streamQueue;
    this.#events = events;
  }

  start(controller: ReadableStreamDefaultController<Uint8Array>): void {
    this.controller = controller;
  }

  pull(): void {
    // An enqueue can make the stream pull at once: not while flushing.
    if (!this.#flushing) this.#events.pull(this);
  }

  // The response stream's cancel is the proof of a disconnect: Deno.serve's
  // request.signal also fires when a response completes normally.
  cancel(): void {
    this.#events.cancel(this);
  }

  /** Bytes written to it that the runtime has not taken yet. */
  get queued(): number {
    const room = this.controller.desiredSize ?? this.#streamQueue;
    return this.backlogBytes + Math.max(0, this.#streamQueue - room);
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
   * Writes a frame: into the stream when it has room and nothing waits
   * before it, else at the end of the backlog (always while connecting).
   *
   * @param bytes The frame; shared, never changed.
   */
  write(bytes: Uint8Array): void {
    this.wrote = true;
    if (
      this.backlogBytes === 0 && this.state === OPEN &&
      this.controller.desiredSize! > 0
    ) {
      this.controller.enqueue(bytes);
      return;
    }
    this.#backlog.push(bytes);
    this.backlogBytes += bytes.byteLength;
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

  #move(all: boolean): void {
    if (this.#flushing || this.backlogBytes === 0) return;
    this.#flushing = true;
    const backlog = this.#backlog;
    const { controller } = this;
    try {
      while (
        this.#head < backlog.length && (all || controller.desiredSize! > 0)
      ) {
        const bytes = backlog[this.#head]!;
        backlog[this.#head++] = undefined!;
        this.backlogBytes -= bytes.byteLength;
        controller.enqueue(bytes);
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
 * Judges clients on whether they drain, never on one burst. A client whose
 * queue goes above `maxQueue` is watched, and a check runs every
 * drainTimeout / CHECKS while any is; its stream pulling with its queue back
 * under `maxQueue` clears it (`drained`). A client still over at more than
 * CHECKS checks in a row is slow. Counting checks, not time, gives a client
 * the whole span even when a publisher that never yields delays the checks:
 * the event loop, and so the socket, had that many turns to drain it.
 */
export class DrainJudge<C> {
  #over = new Set<Client<C>>();
  #timer: Timer | undefined;
  #maxQueue: number;
  #interval: number;
  #onSlow: (client: Client<C>) => void;

  /**
   * @param maxQueue The bytes a client may keep waiting.
   * @param drainTimeout How long (ms) it may keep more.
   * @param onSlow Called with a client that did not drain in time.
   */
  constructor(
    maxQueue: number,
    drainTimeout: number,
    onSlow: (client: Client<C>) => void,
  ) {
    this.#maxQueue = maxQueue;
    this.#interval = drainTimeout / CHECKS;
    this.#onSlow = onSlow;
  }

  /** After a write: starts judging an open client whose queue is over. */
  watch(client: Client<C>): void {
    // A client in init has had no chance to read: it is judged once open.
    if (
      client.over || client.state !== OPEN ||
      client.queued <= this.#maxQueue
    ) {
      return;
    }
    client.over = true;
    client.checks = 0;
    this.#over.add(client);
    this.#timer ??= startInterval(this.#check, this.#interval);
  }

  /** After the stream took from its queue: clears a client that drained. */
  drained(client: Client<C>): void {
    if (client.over && client.queued <= this.#maxQueue) this.unwatch(client);
  }

  /** Stops judging a client; the check stops with the last one. */
  unwatch(client: Client<C>): void {
    if (!client.over) return;
    client.over = false;
    this.#over.delete(client);
    if (this.#over.size === 0 && this.#timer !== undefined) {
      clearInterval(this.#timer);
      this.#timer = undefined;
    }
  }

  #check = (): void => {
    for (const client of this.#over) {
      if (client.queued <= this.#maxQueue) this.unwatch(client);
      else if (++client.checks > CHECKS) this.#onSlow(client);
    }
  };
}
