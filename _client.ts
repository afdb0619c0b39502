// Copyright the sse authors. MIT license.
// One client of an SSEChannel: the underlying source of its response stream,
// and the little state the fan-out needs. Private: used by _channel.ts and
// _resume.ts, never exported from mod.ts or deno.json.

import type { Resume } from "./_resume.ts";

/** The client's stream exists; `init` has not finished. */
export const CONNECTING: number = 0;
/** `init`'s messages are written; live (or resumed) ones follow. */
export const OPEN: number = 1;
/** Released: nothing more is written. */
export const CLOSED: number = 2;

/** What a client tells its channel. */
export interface ClientEvents<C> {
  /** The stream wants more (its queue fell below its high-water mark). */
  pull(client: Client<C>): void;
  /** The response stream was cancelled: the client went away. */
  cancel(client: Client<C>): void;
}

/**
 * One connected client: its stream's underlying source (so the stream needs
 * no closures), and the little state the fan-out needs.
 */
export class Client<C> implements UnderlyingDefaultSource<Uint8Array> {
  controller!: ReadableStreamDefaultController<Uint8Array>;
  readonly context: C;
  /** The topics it receives; `null` for every topic. */
  readonly topics: readonly string[] | null;
  /** Encoded entries waiting for `init` to finish; `null` once open. */
  held: Uint8Array[] | null = [];
  heldBytes = 0;
  /** Set on every write, cleared by the keep-alive tick. */
  wrote = true;
  state: number = CONNECTING;
  /** While it catches up from the broker's history: the catch-up. */
  resume: Resume<C> | undefined;
  #events: ClientEvents<C>;

  constructor(
    context: C,
    topics: readonly string[] | null,
    events: ClientEvents<C>,
  ) {
    this.context = context;
    this.topics = topics;
    this.#events = events;
  }

  start(controller: ReadableStreamDefaultController<Uint8Array>): void {
    this.controller = controller;
  }

  pull(): void {
    this.#events.pull(this);
  }

  // The response stream's cancel is the proof of a disconnect: Deno.serve's
  // request.signal also fires when a response completes normally.
  cancel(): void {
    this.#events.cancel(this);
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
}
