// Copyright the sse authors. MIT license.
// SSEChannel under the faults real deployments meet: bursts, stalled and
// paused readers, resumes bigger than a client's queue, hooks that publish,
// foreign ids, entries that cannot be framed. Each scenario runs over a real
// Deno.serve and real sockets.
import assert from "node:assert/strict";
import FakeTimers from "@sinonjs/fake-timers";
import { SSEChannel } from "../server.ts";
import {
  Client,
  Counter,
  RawClient,
  serve,
  test,
} from "./_channel.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

/** A message of `size` bytes of data that starts with its number. */
function numbered(i: number, size: number): { data: string } {
  return { data: String(i).padStart(8, "0") + "x".repeat(size - 8) };
}

/**
 * Serves a channel on a real server, counting the connections `connect`
 * answered.
 */
function serveChannel<C>(
  channel: SSEChannel<C>,
): ReturnType<typeof serve> & { connected: Counter } {
  const connected = new Counter();
  const server = serve(async (request) => {
    const response = await channel.connect(request);
    connected.hit();
    return response;
  });
  return { ...server, connected };
}

test("SSEChannel keeps every reader through a burst of 300 messages of 4 KiB", async () => {
  const reasons: string[] = [];
  const channel = new SSEChannel({
    onDisconnect: (_context, { reason }) => reasons.push(reason),
  });
  const server = serve((request) => channel.connect(request));
  const clients = await Promise.all(
    Array.from({ length: 5 }, () => Client.open(server.url)),
  );
  try {
    for (let i = 0; i < 300; i++) {
      await channel.publish(numbered(i, 4 * KiB));
    }
    const counts = await Promise.all(clients.map(async (client) => {
      await client.take(300).catch(() => {});
      return client.events.length;
    }));
    const total = counts.reduce((a, b) => a + b, 0);
    assert.equal(total, 1500, `received ${total} of 1500 events`);
    for (const client of clients) {
      assert.deepEqual(
        client.data.map((data) => Number(data.slice(0, 8))),
        Array.from({ length: 300 }, (_, i) => i),
      );
    }
    assert.deepEqual(reasons, []);
    assert.equal(channel.size, 5);
  } finally {
    await Promise.all(clients.map((client) => client.close()));
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel keeps a reader through a burst from a publisher that never yields, and drops the 20 stalled sockets that never drain", async () => {
  const dropped = new Counter();
  const reasons: [string, unknown][] = [];
  const channel = new SSEChannel<string>(
    {
      keepAlive: 0,
      drainTimeout: 2000,
      onConnect: (request) => request.headers.get("x-client") ?? "",
      onDisconnect(name, info?: { reason?: unknown }) {
        reasons.push([name, info?.reason]);
        dropped.hit();
      },
    },
  );
  const server = serveChannel(channel);
  const stalled: RawClient[] = [];
  let reader: Client | undefined;
  try {
    for (let i = 0; i < 20; i++) {
      stalled.push(await RawClient.open(server.url, { "x-client": "stalled" }));
    }
    await server.connected.reach(20, "the stalled sockets to connect");
    reader = await Client.open(server.url, { "x-client": "reader" });
    // 16 MiB: more than loopback's socket buffers take from a stalled
    // socket, so they are left with more than maxQueue (1 MiB) to send.
    const COUNT = 16_384;
    // Every publish runs to the end synchronously: nothing is written to a
    // socket until the loop is over.
    const publishing: Promise<string>[] = [];
    for (let i = 0; i < COUNT; i++) {
      publishing.push(channel.publish(numbered(i, KiB)));
    }
    await Promise.all(publishing);
    await reader.take(COUNT).catch(() => {});
    assert.equal(
      reader.events.length,
      COUNT,
      `the reader got ${reader.events.length} of ${COUNT} events`,
    );
    assert.deepEqual(
      reader.data.map((data) => Number(data.slice(0, 8))),
      Array.from({ length: COUNT }, (_, i) => i),
    );
    await dropped.reach(20, "the stalled sockets to be dropped");
    assert.deepEqual(reasons, Array(20).fill(["stalled", "slow"]));
    assert.equal(channel.size, 1);
    assert.deepEqual(server.errors, []);
  } finally {
    for (const client of stalled) client.close();
    await reader?.close();
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel judges a client on whether it drains within drainTimeout, not on one check, and drops a stalled one without a word", async () => {
  const clock = FakeTimers.install({
    toFake: ["setInterval", "clearInterval"],
  });
  const printed: unknown[][] = [];
  const error = console.error;
  console.error = (...args: unknown[]) => printed.push(args);
  const reasons: [string, unknown][] = [];
  const channel = new SSEChannel<string>(
    {
      keepAlive: 0,
      drainTimeout: 1000,
      onConnect: (request) => request.headers.get("x-client") ?? "",
      onDisconnect: (name, info?: { reason?: unknown }) =>
        reasons.push([name, info?.reason]),
    },
  );
  const server = serveChannel(channel);
  let paused: RawClient | undefined;
  let stalled: RawClient | undefined;
  let reader: Client | undefined;
  try {
    paused = await RawClient.open(server.url, { "x-client": "paused" });
    stalled = await RawClient.open(server.url, { "x-client": "stalled" });
    await server.connected.reach(2, "the raw sockets to connect");
    reader = await Client.open(server.url, { "x-client": "reader" });
    // 24 MiB: far more than loopback's socket buffers and maxQueue (1 MiB).
    const COUNT = 384;
    for (let i = 0; i < COUNT; i++) {
      await channel.publish(numbered(i, 64 * KiB));
    }
    await reader.take(COUNT);
    // Three checks, 750 ms: both raw sockets are far behind, none is
    // dropped yet.
    for (let i = 0; i < 3; i++) clock.tick(250);
    assert.deepEqual(reasons, []);
    // The paused client reads everything, then its backlog is gone.
    const last = String(COUNT - 1).padStart(8, "0");
    assert.equal(
      await paused.readUntil(
        () => paused!.text.includes(`data: ${last}`),
        "the paused client to read everything",
      ),
      true,
    );
    for (let i = 0; i < 8; i++) {
      clock.tick(250);
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    assert.deepEqual(reasons, [["stalled", "slow"]]);
    assert.equal(channel.size, 2);
    // The stalled socket gets what was already on its way, then a clean end
    // of the response: far less than the 24 MiB published.
    assert.equal(
      await stalled.readUntil(() => stalled!.ended, "the end of the stream"),
      true,
    );
    assert.ok(
      stalled.text.length < 16 * MiB,
      `the stalled client got ${stalled.text.length} bytes`,
    );
    // Normal operation: nothing printed, nothing for Deno.serve's onError.
    assert.deepEqual(printed, []);
    assert.deepEqual(server.errors, []);
  } finally {
    console.error = error;
    paused?.close();
    stalled?.close();
    await reader?.close();
    await channel.close();
    await server.shutdown();
    clock.uninstall();
  }
});
