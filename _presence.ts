// Copyright the sse authors. MIT license.
// Who is connected to an SSEChannel, and what it has done: the per-topic
// counts (kept as clients come and go, so a count is O(1)), the counters of
// the metrics snapshot, and the listing and picking of clients behind
// `clients()` and `disconnect()`. Private: SSEChannelClient and SSEChannelMetrics
// are exported from server.ts.
//
// Nothing here runs per message and per client except integer increments
// on one object the channel holds (`delivered`, `bytesSent`).

import { encodeSSE, type SSEMessage } from "./encoder.ts";
import { describe } from "./_json.ts";
import type { SSEDisconnectReason } from "./_channel_options.ts";
import type { Client } from "./_client.ts";

const encoder = new TextEncoder();

/**
 * A client connected to an {@linkcode SSEChannel}, as `clients()` lists it
 * and `disconnect`'s predicate is asked about. Frozen, and the same object
 * for the whole life of the connection: it can key a `WeakMap`, and
 * changing it cannot change the channel.
 */
export interface SSEChannelClient<C = undefined> {
  /** What `onConnect` returned for this connection. */
  readonly context: C;
  /**
   * The topics it receives (frozen, without duplicates); `null` when it
   * receives every topic.
   */
  readonly topics: readonly string[] | null;
  /** When `connect` accepted it, in milliseconds since the epoch. */
  readonly connectedAt: number;
}

/**
 * A snapshot of an {@linkcode SSEChannel}'s figures, from `metrics()`:
 * plain numbers, for dashboards and health checks. The counters (`…Total`
 * style, named without the suffix) only grow from the channel's creation;
 * `clients`, `everyTopic` and `topics` are the state now. Figures are this
 * channel's, in this process: several processes on one broker each count
 * their own clients (add them up).
 */
export interface SSEChannelMetrics {
  /** Clients connected now (`size`), including those still in `init`. */
  clients: number;
  /** Connected clients that receive every topic (no topics given). */
  everyTopic: number;
  /**
   * Per topic, the connected clients that asked for it by name (clients
   * that receive every topic are counted in `everyTopic` only). A topic
   * nobody is connected to is absent: the object has no prototype, so
   * `topics["constructor"]` is `undefined` too.
   */
  topics: Record<string, number>;
  /** Connections accepted (`connect` got as far as subscribing them). */
  connections: number;
  /** Messages this channel's `publish` stored (in this process). */
  published: number;
  /**
   * Entries the channel received from its broker's live subscription and
   * fanned out: those published here and, on a shared broker, elsewhere.
   */
  received: number;
  /**
   * Messages handed to clients' response streams, each copy counted once
   * per client: live ones and those replayed from history (not `init`'s
   * messages, not keep-alives). A message counts when the channel hands its
   * frame to the stream, not while it waits in a client's backlog: a
   * backlog dropped with a slow client is not delivered.
   */
  delivered: number;
  /**
   * Bytes handed to the clients' response streams: messages, `init`'s
   * messages, retry hints and keep-alive comments (what the runtime then
   * sends; a stream cut before the runtime took it all counts in full).
   */
  bytesSent: number;
  /** Connections with a `Last-Event-ID` that resumed from history. */
  resumed: number;
  /**
   * Connections with a `Last-Event-ID` that could not resume (an id this
   * stream did not issue or no longer holds, or a `history` that failed):
   * `init` was told `resumed: false`.
   */
  resumeFallbacks: number;
  /**
   * Times a live client fell more than `maxBacklog` behind and was sent the
   * rest from history (see `maxBacklog`).
   */
  fellBehind: number;
  /**
   * Connections ended, by reason (see {@linkcode SSEDisconnectReason});
   * `slow` counts clients dropped as too slow.
   */
  disconnects: Record<SSEDisconnectReason, number>;
}

/** Every reason, in the order `metrics().disconnects` lists them. */
const REASONS: readonly SSEDisconnectReason[] = [
  "client-closed",
  "slow",
  "disconnected",
  "channel-closed",
  "filter-error",
  "replay-lost",
  "broker-error",
  "connect-failed",
];

/**
 * The counts behind presence and metrics. The channel increments its public
 * counters directly; clients come and go through `joined` and `left`.
 */
export class Tally {
  connections = 0;
  published = 0;
  received = 0;
  delivered = 0;
  bytesSent = 0;
  resumed = 0;
  resumeFallbacks = 0;
  fellBehind = 0;
  everyTopic = 0;
  #topics = new Map<string, number>();
  #disconnects: Record<SSEDisconnectReason, number>;

  constructor() {
    this.#disconnects = Object.fromEntries(
      REASONS.map((reason) => [reason, 0]),
    ) as Record<SSEDisconnectReason, number>;
  }

  /** A client was accepted with these topics (`null`: every topic). */
  joined(topics: readonly string[] | null): void {
    this.connections++;
    if (topics === null) {
      this.everyTopic++;
      return;
    }
    const counts = this.#topics;
    for (const topic of topics) counts.set(topic, (counts.get(topic) ?? 0) + 1);
  }

  /** A client accepted with these topics ended. */
  left(topics: readonly string[] | null, reason: SSEDisconnectReason): void {
    this.#disconnects[reason]++;
    if (topics === null) {
      this.everyTopic--;
      return;
    }
    const counts = this.#topics;
    for (const topic of topics) {
      const count = counts.get(topic)! - 1;
      if (count === 0) counts.delete(topic);
      else counts.set(topic, count);
    }
  }

  /** Connected clients that asked for this topic by name. */
  count(topic: string): number {
    return this.#topics.get(topic) ?? 0;
  }

  /** The snapshot, with `clients` connected now. */
  snapshot(clients: number): SSEChannelMetrics {
    return {
      clients,
      everyTopic: this.everyTopic,
      topics: counts(this.#topics),
      connections: this.connections,
      published: this.published,
      received: this.received,
      delivered: this.delivered,
      bytesSent: this.bytesSent,
      resumed: this.resumed,
      resumeFallbacks: this.resumeFallbacks,
      fellBehind: this.fellBehind,
      disconnects: { ...this.#disconnects },
    };
  }
}

/**
 * A map's counts as an object without a prototype, so that a name like
 * `constructor` or `__proto__` is nothing but its own count.
 */
function counts(map: Map<string, number>): Record<string, number> {
  const object = Object.create(null) as Record<string, number>;
  for (const [name, count] of map) object[name] = count;
  return object;
}

/**
 * The clients `clients(topic)` lists.
 *
 * @param clients The connected clients, in the order they connected.
 * @param topic Only those that asked for it by name, when given.
 * @returns Their frozen entries, in a new array.
 */
export function listClients<C>(
  clients: Iterable<Client<C>>,
  topic: string | undefined,
): SSEChannelClient<C>[] {
  const list: SSEChannelClient<C>[] = [];
  for (const client of clients) {
    if (topic === undefined || client.topics?.includes(topic)) {
      list.push(client.info);
    }
  }
  return list;
}

/**
 * The clients `disconnect`'s predicate picks, asked about every one before
 * any is ended.
 *
 * @param clients The connected clients (or connections in progress: anything
 * with the `info` the predicate is asked about).
 * @param predicate `true` picks a client, `false` keeps it.
 * @returns The clients picked.
 * @throws {TypeError} When the predicate returns anything but a boolean;
 * what it throws.
 */
export function pickClients<
  C,
  T extends { readonly info: SSEChannelClient<C> },
>(
  clients: Iterable<T>,
  predicate: (client: SSEChannelClient<C>) => boolean,
): T[] {
  const picked: T[] = [];
  for (const client of clients) {
    const verdict: unknown = predicate(client.info);
    if (verdict === true) picked.push(client);
    else if (verdict !== false) {
      throw new TypeError(
        `Invalid predicate result: expected a boolean, got ${
          describe(verdict)
        } (the predicate must be synchronous): nobody was disconnected`,
      );
    }
  }
  return picked;
}

/**
 * The frame of `disconnect`'s final message.
 *
 * @param message The message as given, if any.
 * @returns Its frame, encoded once for every client it ends.
 * @throws {TypeError} When it is not an object, has an `id`, or is refused
 * by `encodeSSE` (and its `RangeError`).
 */
export function finalFrame(message: unknown): Uint8Array | undefined {
  if (message === undefined) return undefined;
  if (typeof message !== "object" || message === null) {
    throw new TypeError(
      `Invalid message: expected an SSE message object, got ${
        describe(message)
      }`,
    );
  }
  if ((message as SSEMessage).id !== undefined) {
    throw new TypeError(
      "Invalid message: a disconnect message carries no id (it would become the client's Last-Event-ID): remove the id field",
    );
  }
  return encoder.encode(encodeSSE(message as SSEMessage));
}
