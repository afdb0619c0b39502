// Copyright the sse authors. MIT license.
// Which clients of an SSEChannel a broker gap ends, over a real Deno.serve
// and real sockets: a MemoryBroker whose subscriptions can be told of a gap
// on demand (the gap itself, with real Redis and Deno KV, is in
// redis_channel_test.ts and kv_test.ts).

import assert from "node:assert/strict";
import {
  MemoryBroker,
  type SSEBroker,
  type SSEBrokerGap,
  SSEChannel,
  type SSEDisconnectReason,
} from "../server.ts";
import { Client, RawClient, serve, test, WAIT_MS, within } from "./_channel.ts";

/**
 * A MemoryBroker whose subscriptions' `onGap` is called by `gap()`, as a
 * broker whose reader fell behind calls it.
 */
function gapping(): { broker: SSEBroker; gap(): void; close(): Promise<void> } {
  const memory = new MemoryBroker({ maxHistoryBytes: 64 * 1024 * 1024 });
  const told: ((gap: SSEBrokerGap) => void)[] = [];
  return {
    broker: {
      publish: (name, entry, options) => memory.publish(name, entry, options),
      history: (name, options) => memory.history(name, options),
      close: () => memory.close(),
      subscribe(name, onEntry, options) {
        if (options?.onGap !== undefined) told.push(options.onGap);
        return memory.subscribe(name, onEntry);
      },
    },
    gap() {
      for (const onGap of told) {
        onGap({ after: undefined, before: "m-0", lost: undefined });
      }
    },
    close: () => memory.close(),
  };
}

/** The ids of the events in a raw chunked response, in order. */
function idsIn(text: string): string[] {
  return [...text.matchAll(/^id: (.*)$/gm)].map((match) => match[1]!);
}

/**
 * Reads a raw client's connection on, collecting the ids of the events in
 * it (after those in `ids` already, from its `text`), until `last` is among
 * them: linear in what is read, however much that is.
 */
async function readIdsUntil(
  client: RawClient,
  ids: string[],
  last: string,
): Promise<void> {
  const decoder = new TextDecoder();
  const buffer = new Uint8Array(256 * 1024);
  // The text after the last line break read, which may hold part of a line.
  let rest = client.text.slice(client.text.lastIndexOf("\n") + 1);
  client.text = "";
  const read = async () => {
    while (!ids.includes(last)) {
      const n = await client.conn.read(buffer);
      if (n === null) throw new Error("The stream ended");
      const text = rest + decoder.decode(buffer.subarray(0, n), {
        stream: true,
      });
      const end = text.lastIndexOf("\n") + 1;
      ids.push(...idsIn(text.slice(0, end)));
      rest = text.slice(end);
    }
  };
  await within(read(), WAIT_MS, `event ${last}`);
  client.text = rest;
}

test("SSEChannel ends the clients following the live stream on a broker gap, and a catch-up merging its entries, and leaves one paging the history", async () => {
  const { broker, gap, close } = gapping();
  const left: [string, SSEDisconnectReason][] = [];
  const channel = new SSEChannel<string>({
    broker,
    replay: 3000,
    keepAlive: 0,
    onConnect: (request) =>
      request.headers.get("x-client") ??
        new URL(request.url).searchParams.get("c") ?? "",
    topics: (_, request) => {
      const topic = new URL(request.url).searchParams.get("topic");
      return topic === null ? undefined : [topic];
    },
    onDisconnect: (context, { reason }) => left.push([context, reason]),
  });
  const server = serve((request) => channel.connect(request));
  const everything = await Client.open(`${server.url}/?c=all`);
  const topical = await Client.open(`${server.url}/?c=topic&topic=t`);
  let paused: RawClient | undefined;
  let merging: RawClient | undefined;
  try {
    const first = await channel.publish({ data: "first" });
    const topic = await channel.publish({ data: "t" }, { topic: "t" });
    // What a paused resuming client has to catch up: far more than its
    // socket and its stream take while it reads nothing (32 MiB), so that
    // its catch-up pages the history, far from the entries the live stream
    // delivered last (which would make it merge them).
    const data = "x".repeat(16 * 1024);
    const ids: string[] = [];
    for (let i = 0; i < 2000; i++) ids.push(await channel.publish({ data }));
    // And one that resumes among the entries the live stream delivered
    // last (RECENT: 256), so that its catch-up merges the live ones that
    // come meanwhile: 32 MiB it does not read either.
    const big = "x".repeat(128 * 1024);
    for (let i = 0; i < 250; i++) {
      ids.push(await channel.publish({ data: big }));
    }
    await everything.until(() => everything.events.length === 2252, "all");
    await topical.until(() => topical.events.length === 1, "its topic");
    paused = await RawClient.open(server.url, {
      "last-event-id": first,
      "x-client": "paused",
    });
    await paused.readUntil(() => idsIn(paused!.text).length > 0, "a replay");
    merging = await RawClient.open(server.url, {
      "last-event-id": ids.at(-250)!,
      "x-client": "merging",
    });
    await merging.readUntil(() => idsIn(merging!.text).length > 0, "merging");
    // A live entry it collects while merging.
    const live = await channel.publish({ data: "live" });
    await everything.until(() => everything.events.length === 2253, "live");
    assert.equal(channel.size, 4);

    gap();
    // Both live clients (with and without topics) ended, as replay-lost,
    // and the catch-up that merged live entries.
    await everything.closed();
    await topical.closed();
    assert.deepEqual(left.sort(), [
      ["all", "replay-lost"],
      ["merging", "replay-lost"],
      ["topic", "replay-lost"],
    ]);
    // The catch-up reads the history, which holds what it needs: it goes
    // on, reaches the live stream and gets what comes after.
    assert.equal(channel.size, 1);
    const got = idsIn(paused.text.slice(0, paused.text.lastIndexOf("\n") + 1));
    await readIdsUntil(paused, got, ids.at(-1)!);
    const next = await channel.publish({ data: "next" });
    await readIdsUntil(paused, got, next);
    assert.deepEqual(got.filter((id) => id !== live), [topic, ...ids, next]);
    assert.equal(left.length, 3);
  } finally {
    paused?.close();
    merging?.close();
    await everything.close();
    await topical.close();
    await channel.close();
    await server.shutdown();
    await close();
  }
});

test("SSEChannel takes a broker gap with no client connected, and serves the next ones as usual", async () => {
  const { broker, gap, close } = gapping();
  const channel = new SSEChannel({ broker, keepAlive: 0 });
  const server = serve((request) => channel.connect(request));
  const before = await Client.open(server.url);
  let after: Client | undefined;
  try {
    await before.close();
    gap();
    after = await Client.open(server.url);
    const id = await channel.publish({ data: "a" });
    const [event] = await after.take(1);
    assert.equal(event!.id, id);
  } finally {
    await after?.close();
    await channel.close();
    await server.shutdown();
    await close();
  }
});
