// Copyright the sse authors. MIT license.
// A connection of an SSEChannel while `connect` answers it: what close(),
// disconnect() and its client's end need to stop it at once, whatever it
// waits for (onConnect, the topics hook, the broker, init). Private: used by
// _channel.ts, never exported from mod.ts or deno.json.

import { isThenable, observe } from "./_channel_options.ts";
import { type Client, CLOSED } from "./_client.ts";
import type { SSEChannelClient } from "./_presence.ts";

/**
 * What a wait in `connect` resolves to when the connection stopped first:
 * the channel closed, or the connection was ended (see `Connection`).
 */
export const STOPPED: unique symbol = Symbol("stopped");

/** A rejection handler that drops the rejection (it was reported otherwise). */
export const ignore = (): void => {};

/**
 * A connection inside `connect`, from the call to its answer. `close()`
 * wakes it, and so does the end of its client (`disconnect`, a `filter`
 * that threw); `disconnect` asks about it once its context is known and
 * before it has a client (while the `topics` hook runs).
 */
export class Connection<C> {
  /** What `disconnect`'s predicate is asked about, once `onConnect` answered. */
  info: SSEChannelClient<C> | undefined;
  /** Its client, once accepted. */
  client: Client<C> | undefined;
  /** Its client left before it was answered (see `connect`'s `signal`). */
  left = false;
  /** `disconnect` picked it before it had a client: its final frame, if any. */
  disconnected: { last: Uint8Array | undefined } | undefined;
  /** Its client's response stream, once accepted. */
  stream: ReadableStream<Uint8Array> | undefined;
  /** Ends the current wait (see `wait`). */
  wake: (() => void) | undefined;

  /** Whether it is ended, apart from the channel closing. */
  get ended(): boolean {
    return this.left || this.disconnected !== undefined ||
      this.client?.state === CLOSED;
  }

  /**
   * Whether `disconnect` asks about it: its context is known, it has no
   * client yet (a client is asked about as one), and it is not ended.
   */
  get asked(): boolean {
    return this.info !== undefined && this.client === undefined &&
      !this.ended;
  }

  /**
   * What `value` resolves to, or STOPPED as soon as the channel closes or
   * the connection is ended, whichever comes first. Any thenable is waited
   * for as a promise is (a query builder, a promise of another library or
   * realm); its rejection is observed however the wait ends. The caller
   * checks again once it resumes: a value may come a few microtasks after
   * `close()`.
   *
   * @param closed Whether the channel is closed now.
   * @param value What a hook or the broker returned.
   */
  async wait<T>(
    closed: boolean,
    value: T | PromiseLike<T>,
  ): Promise<T | typeof STOPPED> {
    if (closed || this.ended) {
      observe(value, ignore);
      return STOPPED;
    }
    if (!isThenable(value)) return value;
    // One waiter per wait, dropped when it ends: a promise that lives as long
    // as the channel would collect a reaction per connection.
    // (No Promise.withResolvers: Node 20 has none.)
    const stopped = new Promise<typeof STOPPED>((resolve) => {
      this.wake = () => resolve(STOPPED);
    });
    try {
      return await Promise.race([value, stopped]);
    } finally {
      this.wake = undefined;
    }
  }
}
