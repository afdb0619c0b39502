// Copyright the sse authors. MIT license.
// RedisBroker's two connections to Redis: one for publish and queries, one
// for the blocking read. Every command the broker waits on is bounded by
// `commandTimeout`; a connection that misses a reply, breaks or is refused is
// reopened after a backoff, both at once, until close(). Private: never
// exported from mod.ts or deno.json.

import { createClient } from "@redis/client";
import { errorMessage } from "./_broker.ts";
import { startTimeout, type Timer } from "./_timer.ts";

/** The node-redis client surface the broker uses, with RESP2 replies. */
export interface Connection {
  readonly isOpen: boolean;
  readonly isReady: boolean;
  connect(): Promise<unknown>;
  sendCommand(args: string[]): Promise<unknown>;
  close(): Promise<void>;
  destroy(): void;
  on(event: string, listener: (value: unknown) => void): unknown;
}

/** A node-redis client whose settings the link copies (`duplicate()`). */
interface Template {
  duplicate(overrides: { RESP: 2; disableOfflineQueue: boolean }): unknown;
  options?: { socket?: object };
}

/** A wait for Redis that #bounded times. */
interface Bound {
  readonly client: Connection;
  timer: Timer | undefined;
  /** Ends the wait with this error, and clears its timer. */
  fail(error: Error): void;
}

/** Options of {@linkcode RedisLink}. */
export interface RedisLinkOptions {
  /** Where Redis is, unless `template` is given. */
  url: string;
  /** A client to copy the settings of, instead of `url`. */
  template: unknown;
  /** The longest wait for a reply, in ms. */
  commandTimeout: number;
  /** Reports an outage (once per outage); never throws. */
  report: (error: Error) => void;
  /** Called each time the reader connection is ready again. */
  onReaderReady: () => void;
}

/** Backoff between reconnection attempts, in ms. */
const RETRY_MIN_MS = 50;
const RETRY_MAX_MS = 2_000;

/**
 * The backoff after `failures` failures in a row: 50 ms doubling up to 2 s.
 *
 * @param failures How many attempts failed in a row.
 * @returns The wait in ms, before jitter.
 */
export function backoff(failures: number): number {
  return Math.min(RETRY_MIN_MS * 2 ** failures, RETRY_MAX_MS);
}

/** The writer and reader connections of one broker. */
export class RedisLink {
  #options: RedisLinkOptions;
  /** For `publish` and queries; no offline queue, so it fails fast. */
  #writer: Connection | undefined;
  /** For the blocking `XREAD` only; queues while offline, so the read waits. */
  #reader: Connection | undefined;
  /** Settles with the writer's first connection attempt. */
  #opened: Promise<void> | undefined;
  #openedSettled = false;
  #reconnectTimer: Timer | undefined;
  /** Failed reconnection attempts in a row, for the backoff. */
  #reconnects = 0;
  #healthy = true;
  /**
   * Why a connection last failed, until one is ready again: what a command
   * sent meanwhile rejects with, rather than node-redis's "The client is
   * closed", which says nothing of the cause (a wrong password, a refused
   * connection, a server that is not Redis).
   */
  #failure: unknown = undefined;
  #closed = false;
  /** The waits #bounded is timing, so that they can be ended together. */
  #bounds = new Set<Bound>();

  /**
   * Makes the link; nothing connects until {@linkcode RedisLink.open}.
   *
   * @param options Settings and callbacks.
   */
  constructor(options: RedisLinkOptions) {
    this.#options = options;
  }

  /**
   * Creates the writer connection on first use and waits for its first
   * attempt to connect. Later calls do not wait: while Redis is unreachable,
   * commands on the writer reject at once.
   *
   * @returns The writer.
   */
  async open(): Promise<Connection> {
    if (this.#opened === undefined) {
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
   * The reader connection, created (and connecting) on first use, so that a
   * process that only publishes holds one connection. It has an offline
   * queue: a read sent while it reconnects waits for it.
   *
   * @returns The reader.
   */
  reader(): Connection {
    if (this.#reader === undefined) {
      this.#reader = this.#connection(true);
      this.#connect(this.#reader).catch(() => {}); // reported by fault()
    }
    return this.#reader;
  }

  /**
   * Sends a command and waits for its reply, at most `commandTimeout` (plus
   * `extra` ms, for a blocking command).
   *
   * @param client The writer or the reader.
   * @param args The command.
   * @param extra Added to the bound, in ms.
   * @returns The reply.
   */
  send(client: Connection, args: string[], extra = 0): Promise<unknown> {
    // The writer only: the reader's offline queue holds a read until then.
    if (
      client === this.#writer && !client.isOpen &&
      this.#failure !== undefined && !this.#closed
    ) {
      const failure = this.#failure;
      return Promise.reject(
        new Error(`not connected to Redis: ${errorMessage(failure)}`, {
          cause: failure,
        }),
      );
    }
    return this.#bounded(client, client.sendCommand(args), extra);
  }

  /**
   * Reports an error, once per outage.
   *
   * @param error What failed.
   * @param context What it was, to begin the message.
   */
  fault(error: unknown, context: string): void {
    if (this.#closed || !this.#healthy) return;
    this.#healthy = false;
    this.#options.report(
      new Error(`${context}: ${errorMessage(error)}`, { cause: error }),
    );
  }

  /** Ends an outage once Redis answered on both connections. */
  recovered(): void {
    if (this.#writer?.isReady && (this.#reader?.isReady ?? true)) {
      this.#healthy = true;
    }
  }

  /**
   * Closes both connections: the reader at once (its blocking read would
   * hold a graceful close), the writer after `last` and the commands in
   * flight, within one `commandTimeout`; then destroys what is left.
   *
   * @param last A command to send before closing, if the writer is ready.
   * @returns Once both are closed and no timer is left.
   */
  async close(last: string[]): Promise<void> {
    this.#closed = true;
    clearTimeout(this.#reconnectTimer);
    this.#reconnectTimer = undefined;
    const writer = this.#writer;
    this.#reader?.destroy();
    if (writer === undefined) return;
    if (writer.isReady) {
      const graceful = (async () => {
        await writer.sendCommand(last);
        await writer.close();
      })();
      await this.#bounded(writer, graceful).catch(() => writer.destroy());
    } else {
      writer.destroy();
    }
    // A connection destroyed while its socket connects never settles its
    // connect(): end what still waits, and its timer, now.
    const closed = new TypeError("Cannot use a closed broker");
    for (const bound of this.#bounds) bound.fail(closed);
    await this.#opened?.catch(() => {});
  }

  /**
   * A new connection with the link's settings. It does not reconnect by
   * itself (`reconnectStrategy: false`): the link does, on its own timer, so
   * that `close()` can cancel a pending attempt (node-redis's own retry delay
   * cannot be cancelled, and would outlive the broker).
   */
  #connection(offlineQueue: boolean): Connection {
    const template = this.#options.template as Template | undefined;
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
        url: this.#options.url,
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
    client.on("error", (error) => {
      this.#failure = error;
      this.fault(error, "Redis connection failed");
    });
    client.on("ready", () => {
      this.#failure = undefined;
      this.#reconnects = 0;
      this.recovered();
      // Redis is back: reconnect the other connection now rather than after
      // its backoff, and let the read loop read now rather than after its.
      if (this.#reconnectTimer !== undefined) {
        clearTimeout(this.#reconnectTimer);
        this.#reconnectTimer = undefined;
        this.#reconnectAll();
      }
      if (client === this.#reader) this.#options.onReaderReady();
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
   * Settles like `promise`, or rejects once `commandTimeout` (plus `extra`)
   * has passed without an answer on `client`. Its connection is then
   * dropped: the replies of a connection that missed one cannot be trusted
   * to come, and every command queued on it fails with it. A new connection
   * is made after the usual backoff.
   */
  #bounded<T>(client: Connection, promise: Promise<T>, extra = 0): Promise<T> {
    const ms = this.#options.commandTimeout + extra;
    const bound: Bound = { client, timer: undefined, fail: () => {} };
    const failed = new Promise<never>((_, reject) => {
      bound.fail = (error) => {
        clearTimeout(bound.timer);
        reject(error);
      };
    });
    bound.timer = startTimeout(() => {
      // Every command waiting on this connection fails with this reason, not
      // with the "disconnected" that destroying it gives them.
      const error = new Error(`no answer from Redis within ${ms} ms`);
      this.#failure = error;
      for (const other of this.#bounds) {
        if (other.client === client) other.fail(error);
      }
      this.fault(error, "Redis connection dropped");
      client.destroy();
      this.#reconnectLater();
    }, ms);
    this.#bounds.add(bound);
    return Promise.race([promise, failed]).finally(() => {
      clearTimeout(bound.timer);
      this.#bounds.delete(bound);
    });
  }

  /** Reconnects every closed connection after a backoff, until close(). */
  #reconnectLater(): void {
    if (this.#closed || this.#reconnectTimer !== undefined) return;
    const delay = backoff(this.#reconnects++);
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
}
