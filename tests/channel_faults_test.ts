// Copyright the sse authors. MIT license.
// SSEChannel under the faults real deployments meet: bursts, stalled and
// paused readers, resumes bigger than a client's queue, hooks that publish,
// foreign ids, entries that cannot be framed. Each scenario runs over a real
// Deno.serve and real sockets.
import assert from "node:assert/strict";
import FakeTimers from "@sinonjs/fake-timers";
import {
  MemoryBroker,
  type SSEBroker,
  type SSEBrokerEntry,
  type SSEBrokerSubscription,
  SSEChannel,
  type SSEMessage,
} from "../server.ts";
import {
  assertEndedStream,
  Client,
  Counter,
  Lines,
  numbered,
  RawClient,
  serve,
  spawnServer,
  test,
  until,
  WAIT_MS,
  within,
} from "./_channel.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

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
  // The history holds the whole burst: the reader, left behind while the
  // publisher does not yield, catches up from it.
  const broker = new MemoryBroker({ maxHistoryBytes: 64 * MiB });
  const channel = new SSEChannel<string>(
    {
      broker,
      replay: 20_000,
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
    // What a dashboard sees: 20 dropped as too slow, the reader kept.
    const metrics = channel.metrics();
    assert.equal(metrics.disconnects.slow, 20);
    assert.equal(metrics.clients, 1);
    assert.equal(metrics.published, COUNT);
    assert.deepEqual(server.errors, []);
  } finally {
    for (const client of stalled) client.close();
    await reader?.close();
    await channel.close();
    await server.shutdown();
    await broker.close();
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
  // The history holds the whole burst, which the paused client catches up
  // from.
  const broker = new MemoryBroker({ maxHistoryBytes: 64 * MiB });
  const channel = new SSEChannel<string>(
    {
      broker,
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
    // The paused client reads everything (what it fell behind on, from the
    // history), then nothing waits for it.
    const last = String(COUNT - 1).padStart(8, "0");
    assert.equal(
      await paused.readUntil(
        () => paused!.text.includes(`data: ${last}`),
        "the paused client to read everything",
      ),
      true,
    );
    // Until the stalled client has taken nothing at 5 checks in a row (more
    // than drainTimeout; the kernel took some of it after the burst).
    for (let i = 0; i < 8 && reasons.length === 0; i++) {
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
    // Its grace ends: the stream was taken to its end, so there is nothing
    // to cut.
    for (let i = 0; i < 6; i++) {
      clock.tick(250);
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
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
    await broker.close();
    clock.uninstall();
  }
});

// What a stalled client costs: 20 sockets that never read while 200 MiB
// (25 600 messages of 8 KiB) is published, from a publisher that lets the
// sockets be written to every 1 MiB. The server runs in a process of its
// own, started with --expose-gc, so that its memory is measured apart from
// the clients': what it retains after a full garbage collection, every
// 12.5 MiB of the burst, and its peak RSS, the kernel's high-water mark
// (VmHWM), read from here. The same burst with no client at all is the
// baseline: the history (4 000 messages, 32 MiB, so that a stalled client
// stays inside it and connected) and the garbage of publishing 200 MiB are
// there either way. drainTimeout is long, so no client is dropped as slow.
const BURST_CLIENTS = 20;
const BURST_COUNT = 25_600;
const BURST_SIZE = 8 * KiB;

/** Peak resident memory of a process (Linux), in bytes. */
function peakRss(pid: number): number {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  return Number(status.match(/VmHWM:\s+(\d+) kB/)![1]) * KiB;
}

/** What {@linkcode burstServer} measured. */
interface Burst {
  /** Clients still connected at the end, and why the others left. */
  size: number;
  reasons: string[];
  /** The most heap and buffers retained, above the start. */
  retained: number;
  /** The peak RSS, above the start. */
  peak: number;
}

/** The server side of the stalled-burst test (see above). */
async function burstServer(clients: number): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  assert.ok(gc, "run with --v8-flags=--expose-gc");
  const print = (value: unknown) => console.log(JSON.stringify(value));
  /** The JS heap and buffers in use after a full collection. */
  const retained = async () => {
    // V8 frees the buffers of a collected ArrayBuffer a task after the
    // collection: collect, let that run, collect again.
    gc();
    await new Promise((resolve) => setTimeout(resolve));
    gc();
    const { heapUsed, external } = Deno.memoryUsage();
    return heapUsed + external;
  };
  const reasons: string[] = [];
  const broker = new MemoryBroker({ maxHistoryBytes: 64 * MiB });
  const channel = new SSEChannel({
    broker,
    replay: 4000,
    keepAlive: 0,
    drainTimeout: 60_000,
    onDisconnect: (_context, { reason }) => reasons.push(reason),
  });
  const server = serveChannel(channel);
  print({ url: server.url });
  await server.connected.reach(clients, "the stalled clients");
  const rss = Deno.memoryUsage().rss;
  const before = await retained();
  let most = 0;
  const filler = "x".repeat(BURST_SIZE - 8);
  for (let i = 1; i <= BURST_COUNT; i++) {
    await channel.publish({ data: String(i).padStart(8, "0") + filler });
    if (i % 1600 === 0) most = Math.max(most, await retained() - before);
    else if (i % 128 === 0) await new Promise((resolve) => setTimeout(resolve));
  }
  print({ size: channel.size, reasons, retained: most, rss });
  await new Lines(Deno.stdin.readable).drain();
  await channel.close();
  await server.shutdown();
  await broker.close();
}

if (import.meta.main && Deno.args[0] === "--burst-server") {
  await burstServer(Number(Deno.args[1]));
}

/** Runs {@linkcode burstServer} with `count` stalled sockets. */
async function burst(count: number): Promise<Burst> {
  const child = spawnServer(import.meta.url, [
    "--burst-server",
    String(count),
  ]);
  const output = new Lines(child.stdout);
  const stdin = child.stdin.getWriter();
  const stalled: RawClient[] = [];
  try {
    const { url } = JSON.parse((await within(output.next(), WAIT_MS, "url"))!);
    for (let i = 0; i < count; i++) stalled.push(await RawClient.open(url));
    const result = JSON.parse(
      (await within(output.next(), 60_000, "the burst"))!,
    );
    return { ...result, peak: peakRss(child.pid) - result.rss };
  } finally {
    for (const client of stalled) client.close();
    await stdin.close();
    await output.drain();
    const status = await child.status;
    assert.equal(status.code, 0);
  }
}

test("SSEChannel holds at most maxBacklog of shared frames for stalled clients, not the burst: 20 stalled sockets and 200 MiB published", async () => {
  const alone = await burst(0);
  const stalled = await burst(BURST_CLIENTS);
  const mib = (bytes: number) => (bytes / MiB).toFixed(1);
  console.log(
    `    200 MiB published past ${BURST_CLIENTS} stalled sockets: ${
      mib(stalled.retained - alone.retained)
    } MiB more heap and buffers retained than with none (${
      mib(stalled.retained)
    } against ${mib(alone.retained)}), peak RSS ${
      mib(stalled.peak)
    } MiB above the start against ${mib(alone.peak)}`,
  );
  assert.equal(stalled.size, BURST_CLIENTS, stalled.reasons.join());
  // Each stalled client refers to at most maxBacklog (128 MiB) of frames,
  // the same frames for all 20 (they stalled together), then keeps only its
  // position; and a reference (8 bytes) per frame: about 130 MiB for 20.
  const maxBacklog = 128 * MiB;
  assert.ok(
    stalled.retained - alone.retained < maxBacklog + 16 * MiB,
    `${BURST_CLIENTS} stalled clients retained ${
      mib(stalled.retained - alone.retained)
    } MiB`,
  );
  assert.ok(
    stalled.peak - alone.peak < maxBacklog + 96 * MiB,
    `${BURST_CLIENTS} stalled clients raised the peak RSS by ${
      mib(stalled.peak - alone.peak)
    } MiB`,
  );
});

/**
 * A MemoryBroker that counts `history` calls, and hands out fresh entry
 * objects from it, as a broker that reads them from a store does, whose
 * message counts how often its `data` is read (encoding reads it once).
 */
class StoreBroker extends MemoryBroker {
  historyCalls = 0;
  dataReads = 0;

  override async history(
    name: string,
    options: { after: string; limit: number },
  ): Promise<SSEBrokerEntry[] | null> {
    this.historyCalls++;
    const page = await super.history(name, options);
    return page?.map(({ id, topic, message }) => {
      const copy = { ...message };
      const data = copy.data;
      Object.defineProperty(copy, "data", {
        enumerable: true,
        get: () => {
          this.dataReads++;
          return data;
        },
      });
      return { id, topic, message: copy };
    }) ?? null;
  }
}

/** Publishes `count` numbered messages of `size` bytes; their ids. */
async function publishNumbered(
  channel: { publish(message: { data: string }): Promise<string> },
  from: number,
  count: number,
  size: number,
): Promise<string[]> {
  const ids: string[] = [];
  for (let i = from; i < from + count; i++) {
    ids.push(await channel.publish(numbered(i, size)));
  }
  return ids;
}

function numbers(data: string[]): number[] {
  return data.map((item) => Number(item.slice(0, 8)));
}

function run(from: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => from + i);
}

/**
 * Reads a raw client's chunked response as it arrives and collects the
 * numbers `numbered` put at the start of each message, until `count` of
 * them (or the end of the stream). Each chunk holds whole frames (the
 * channel writes frames, or runs of frames, as one chunk each).
 */
async function readNumbers(raw: RawClient, count: number): Promise<number[]> {
  const numbers: number[] = [];
  const decoder = new TextDecoder();
  const buffer = new Uint8Array(1024 * 1024);
  let tail = "";
  const read = async () => {
    while (numbers.length < count) {
      const n = await raw.conn.read(buffer);
      if (n === null) return;
      const text = tail + decoder.decode(buffer.subarray(0, n), {
        stream: true,
      });
      const end = text.lastIndexOf("\n");
      tail = text.slice(end + 1);
      for (const match of text.slice(0, end + 1).matchAll(/data: (\d{8})/g)) {
        numbers.push(Number(match[1]));
      }
    }
  };
  await within(read(), WAIT_MS, `${count} messages on a raw socket`);
  return numbers;
}

test("SSEChannel keeps every reader through a 50 MiB burst, far above maxBacklog: a reader that pauses catches up from a history that holds the burst", async () => {
  // The history holds the whole burst (8 000 entries, 128 MiB), and each
  // client's backlog holds at most 8 MiB: beyond it, a client catches up
  // from the history.
  const broker = new StoreBroker({ maxHistoryBytes: 128 * MiB });
  const reasons: string[] = [];
  const channel = new SSEChannel({
    broker,
    replay: 8000,
    maxBacklog: 8 * MiB,
    keepAlive: 0,
    // The paused client waits for the whole burst to reach the readers
    // (about 2 s; 6.4 s on a machine three times slower): never long
    // enough to be judged slow.
    drainTimeout: 60_000,
    onDisconnect: (_context, { reason }) => reasons.push(reason),
  });
  const server = serveChannel(channel);
  const readers: Client[] = [];
  let paused: RawClient | undefined;
  try {
    for (let i = 0; i < 5; i++) readers.push(await Client.open(server.url));
    paused = await RawClient.open(server.url);
    await server.connected.reach(6, "the clients to connect");
    // 6 400 messages of 8 KiB from a publisher that never lets a socket be
    // written to until it is done: every client is left 50 MiB behind.
    const COUNT = 6400;
    await publishNumbered(channel, 0, COUNT, 8 * KiB);
    for (const reader of readers) {
      await reader.take(COUNT);
      assert.deepEqual(numbers(reader.data), run(0, COUNT));
    }
    // The paused client, which read nothing so far (far less than
    // drainTimeout), reads everything now.
    assert.deepEqual(await readNumbers(paused, COUNT), run(0, COUNT));
    // Nobody joined with a Last-Event-ID: the history was read for the
    // clients that fell behind, and no client held the burst.
    assert.ok(broker.historyCalls > 0, "the history was never read");
    assert.deepEqual(reasons, []);
    assert.equal(channel.size, 6);
    // Every client fell behind at least once; each got every message once.
    const metrics = channel.metrics();
    assert.ok(metrics.fellBehind >= 6, `fellBehind ${metrics.fellBehind}`);
    assert.equal(metrics.delivered, 6 * COUNT);
    assert.equal(metrics.resumed + metrics.resumeFallbacks, 0);
  } finally {
    paused?.close();
    await Promise.all(readers.map((reader) => reader.close()));
    await channel.close();
    await server.shutdown();
    await broker.close();
  }
});

test("SSEChannel catches up a resume bigger than maxQueue: 600 missed messages of 4 KiB", async () => {
  const seen: [string, boolean][] = [];
  const channel = new SSEChannel({
    init: (_context, lastEventId, { resumed }) => {
      seen.push([lastEventId, resumed]);
    },
  });
  const server = serveChannel(channel);
  let client: Client | undefined;
  try {
    const [start] = await publishNumbered(channel, 0, 1, 4 * KiB);
    await publishNumbered(channel, 1, 600, 4 * KiB);
    // Reconnects as EventSource does: with the last id it got.
    const response = await fetch(server.url, {
      headers: { "last-event-id": start! },
    });
    assert.equal(
      response.status,
      200,
      `status ${response.status}: ${
        response.status === 200 ? "" : await response.text()
      }`,
    );
    client = new Client(response);
    await client.take(600);
    await publishNumbered(channel, 601, 1, 4 * KiB);
    await client.take(601);
    assert.deepEqual(numbers(client.data), run(1, 601));
    assert.deepEqual(seen, [[start, true]]);
  } finally {
    await client?.close();
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel pages a resume as the client reads: a paused client costs a page, not the whole replay", async () => {
  const broker = new StoreBroker({ maxHistoryBytes: 64 * MiB });
  const reasons: string[] = [];
  const channel = new SSEChannel({
    broker,
    keepAlive: 0,
    onDisconnect: (_context, { reason }) => reasons.push(reason),
  });
  const server = serveChannel(channel);
  let paused: RawClient | undefined;
  try {
    // 1000 messages of 32 KiB: 32 MiB, far more than the socket buffers.
    const [start] = await publishNumbered(channel, 0, 1, 32 * KiB);
    await publishNumbered(channel, 1, 999, 32 * KiB);
    paused = await RawClient.open(server.url, { "last-event-id": start! });
    await server.connected.reach(1, "the paused client to connect");
    // Let the socket buffers fill: the history calls stop at some page.
    let calls = -1;
    while (calls !== broker.historyCalls) {
      calls = broker.historyCalls;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    assert.ok(calls < 6, `${calls} pages of 100 read for a paused client`);
    // It reads: the rest follows, page by page, then live messages.
    const last = String(999).padStart(8, "0");
    assert.equal(
      await paused.readUntil(
        () => paused!.text.includes(`data: ${last}`),
        "the paused client to catch up",
      ),
      true,
    );
    assert.ok(broker.historyCalls >= 10);
    await publishNumbered(channel, 1000, 1, 32 * KiB);
    const live = String(1000).padStart(8, "0");
    assert.equal(
      await paused.readUntil(
        () => paused!.text.includes(`data: ${live}`),
        "the live message",
      ),
      true,
    );
    const received = [...paused.text.matchAll(/data: (\d{8})/g)].map((
      match,
    ) => Number(match[1]));
    assert.deepEqual(received, run(1, 1000));
    assert.deepEqual(reasons, []);
  } finally {
    paused?.close();
    await channel.close();
    await server.shutdown();
    await broker.close();
  }
});

test("SSEChannel encodes a replayed entry once for every client that resumes past it", async () => {
  const broker = new StoreBroker();
  const channel = new SSEChannel({ broker, keepAlive: 0 });
  const server = serveChannel(channel);
  const clients: Client[] = [];
  try {
    const [start] = await publishNumbered(channel, 0, 1, 200);
    await publishNumbered(channel, 1, 50, 200);
    for (let i = 0; i < 10; i++) {
      clients.push(await Client.open(server.url, { "last-event-id": start! }));
    }
    for (const client of clients) {
      await client.take(50);
      assert.deepEqual(numbers(client.data), run(1, 50));
    }
    // 10 clients x 50 entries, each encoded once: 50 reads of data, not 500.
    assert.equal(broker.dataReads, 50);
  } finally {
    await Promise.all(clients.map((client) => client.close()));
    await channel.close();
    await server.shutdown();
    await broker.close();
  }
});

test("SSEChannel ends a resuming client whose position leaves the replay window mid-resume, never skipping, and its reconnect gets resumed: false", async () => {
  const inits: [string, boolean][] = [];
  const reasons: string[] = [];
  const channel = new SSEChannel({
    keepAlive: 0,
    replay: 1000,
    init(_context, lastEventId, { resumed }) {
      inits.push([lastEventId, resumed]);
      return resumed ? [] : [{ event: "snapshot", data: "state" }];
    },
    onDisconnect: (_context, { reason }) => reasons.push(reason),
  });
  const server = serveChannel(channel);
  let paused: RawClient | undefined;
  let again: Client | undefined;
  try {
    const [start] = await publishNumbered(channel, 0, 1, 16 * KiB);
    await publishNumbered(channel, 1, 999, 16 * KiB);
    paused = await RawClient.open(server.url, { "last-event-id": start! });
    await server.connected.reach(1, "the paused client to connect");
    // While it does not read, 1000 more push everything it still needs out
    // of the window.
    await publishNumbered(channel, 1000, 1000, 16 * KiB);
    assert.equal(
      await paused.readUntil(() => paused!.ended, "the end of its stream"),
      true,
    );
    const frames = [...paused.text.matchAll(/id: (\S+)\ndata: (\d{8})/g)];
    const received = frames.map((match) => Number(match[2]));
    // A run without a gap from the first missed message, cut short.
    assert.ok(received.length > 0 && received.length < 999);
    assert.deepEqual(received, run(1, received.length));
    assert.deepEqual(reasons, ["replay-lost"]);
    // Its reconnect is told it did not resume, so it gets a snapshot.
    const lastId = frames.at(-1)![1]!;
    again = await Client.open(server.url, { "last-event-id": lastId });
    await publishNumbered(channel, 2000, 1, 100);
    assert.deepEqual((await again.take(2)).map((event) => event.type), [
      "snapshot",
      "message",
    ]);
    assert.deepEqual(inits, [[start, true], [lastId, false]]);
  } finally {
    paused?.close();
    await again?.close();
    await channel.close();
    await server.shutdown();
  }
});

/**
 * An in-process broker written the naive way: `publish` delivers to every
 * subscriber at once, even from inside a delivery, so a subscriber that
 * publishes makes the others see the new entry first. The channel must keep
 * order over it too.
 */
class NaiveBroker implements SSEBroker {
  #entries: SSEBrokerEntry[] = [];
  #subscribers = new Set<(entry: SSEBrokerEntry) => void>();

  publish(
    _name: string,
    entry: { topic: string; message: SSEMessage },
  ): Promise<string> {
    const stored = { id: `n-${this.#entries.length + 1}`, ...entry };
    this.#entries.push(stored);
    for (const onEntry of this.#subscribers) onEntry(stored);
    return Promise.resolve(stored.id);
  }

  subscribe(
    _name: string,
    onEntry: (entry: SSEBrokerEntry) => void,
  ): Promise<SSEBrokerSubscription> {
    const deliver = (entry: SSEBrokerEntry) => onEntry(entry);
    this.#subscribers.add(deliver);
    return Promise.resolve({
      unsubscribe: () => this.#subscribers.delete(deliver),
    });
  }

  history(
    _name: string,
    { after, limit }: { after: string; limit: number },
  ): Promise<SSEBrokerEntry[] | null> {
    const index = this.#entries.findIndex((entry) => entry.id === after);
    return Promise.resolve(
      index < 0 ? null : this.#entries.slice(index + 1, index + 1 + limit),
    );
  }

  close(): Promise<void> {
    this.#subscribers.clear();
    return Promise.resolve();
  }
}

for (
  const [kind, makeBroker] of [
    ["MemoryBroker", () => new MemoryBroker()],
    ["a broker that delivers from inside a delivery", () => new NaiveBroker()],
  ] as const
) {
  test(`SSEChannel keeps publish order for every client when a hook publishes during a fan-out, on ${kind}`, async () => {
    // filter throws for one client, which ends it; onDisconnect publishes a
    // "left" message, and a filter publishes a "seen" one: both from inside
    // the fan-out of "x".
    let seen = false;
    const broker: SSEBroker = makeBroker();
    const channel: SSEChannel<string> = new SSEChannel<string>({
      broker,
      keepAlive: 0,
      onConnect: (request) => request.headers.get("x-user") ?? "",
      filter(user, message) {
        if (user === "buggy" && message.data === "x") throw new Error("bug");
        if (user === "watcher" && message.data === "x" && !seen) {
          seen = true;
          channel.publish({ data: "seen" }).catch(() => {});
        }
        return true;
      },
      onDisconnect(user) {
        // Rejected once the channel is closed: only the drop matters here.
        channel.publish({ data: `${user} left` }).catch(() => {});
      },
      onError() {},
    });
    const server = serveChannel(channel);
    const clients: Client[] = [];
    try {
      for (const user of ["first", "buggy", "watcher", "last"]) {
        clients.push(await Client.open(server.url, { "x-user": user }));
      }
      const x = await channel.publish({ data: "x" });
      const order = ["x", "buggy left", "seen"];
      for (const [i, client] of clients.entries()) {
        if (i === 1) continue;
        await client.take(3);
        assert.deepEqual(client.data, order, `client ${i}`);
        assert.equal(client.events[0]!.id, x);
      }
      // Every client saw the same ids, in the order publish assigned them.
      const ids = clients[0]!.events.map((event) => event.id);
      for (const client of [clients[2]!, clients[3]!]) {
        assert.deepEqual(client.events.map((event) => event.id), ids);
      }
    } finally {
      await Promise.all(clients.map((client) => client.close()));
      await channel.close();
      await server.shutdown();
      await broker.close();
    }
  });
}

test("SSEChannel does not resume from another stream's id, a future id or a malformed one", async () => {
  const broker = new MemoryBroker();
  const inits: [string, boolean][] = [];
  const a = new SSEChannel({
    broker,
    name: "a",
    keepAlive: 0,
    init(_context, lastEventId, { resumed }) {
      inits.push([lastEventId, resumed]);
      return resumed ? [] : [{ event: "snapshot", data: "a's state" }];
    },
  });
  const b = new SSEChannel({ broker, name: "b", keepAlive: 0 });
  const server = serveChannel(a);
  const clients: Client[] = [];
  try {
    const [b1] = await publishNumbered(b, 0, 1, 100);
    const [a1] = await publishNumbered(a, 1, 1, 100);
    await publishNumbered(b, 2, 1, 100);
    await publishNumbered(a, 3, 1, 100);
    // Issued later, by stream b: from the future for stream a.
    const [future] = await publishNumbered(b, 4, 1, 100);
    const foreign = [
      b1!, // b's first event, older than a's second one
      future!,
      `${a1}0`,
      a1!.replace(/-\d+$/, "-999"),
      "garbage",
      "é",
    ];
    for (const lastEventId of foreign) {
      clients.push(
        await Client.open(server.url, {
          "last-event-id": String.fromCharCode(
            ...new TextEncoder().encode(lastEventId),
          ),
        }),
      );
    }
    const [live] = await publishNumbered(a, 5, 1, 100);
    for (const client of clients) {
      await client.until(
        () => client.events.at(-1)?.id === live,
        "the live event",
      );
      // The snapshot, then live events: nothing replayed from the wrong place.
      assert.deepEqual(client.events.map((event) => event.type), [
        "snapshot",
        "message",
      ]);
    }
    assert.deepEqual(inits, foreign.map((id) => [id, false]));
  } finally {
    await Promise.all(clients.map((client) => client.close()));
    await a.close();
    await b.close();
    await server.shutdown();
    await broker.close();
  }
});

/** A channel on `broker`, served, that records what it reports. */
function reportingChannel(broker: SSEBroker) {
  const reported: Error[] = [];
  const channel = new SSEChannel({
    broker,
    keepAlive: 0,
    onError: (error) => reported.push(error),
  });
  return { channel, reported, server: serveChannel(channel) };
}

test("SSEChannel skips an entry the encoder refuses, live and on resume, reports it once with its id, and carries on", async () => {
  const broker = new MemoryBroker();
  const { channel, reported, server } = reportingChannel(broker);
  const clients: Client[] = [];
  try {
    const live = await Client.open(server.url);
    clients.push(live);
    const [first] = await publishNumbered(channel, 0, 1, 100);
    // Entries another process (an older version, a bug) stored in the
    // broker, which the encoder refuses.
    const poison = [
      { event: "a\nb", data: "x" },
      { data: "x", retry: -5 },
      {},
    ];
    const poisonIds: string[] = [];
    for (const message of poison) {
      poisonIds.push(
        await broker.publish("default", { topic: "", message }, {
          replay: 1000,
        }),
      );
    }
    const [last] = await publishNumbered(channel, 1, 1, 100);
    await live.take(2);
    assert.deepEqual(live.events.map((event) => event.id), [first, last]);
    // Resuming from before them: skipped there too.
    for (let i = 0; i < 3; i++) {
      const resumed = await Client.open(server.url, {
        "last-event-id": first!,
      });
      clients.push(resumed);
      await resumed.take(1);
    }
    const [after] = await publishNumbered(channel, 2, 1, 100);
    for (const client of clients.slice(1)) {
      await client.take(2);
      assert.deepEqual(client.events.map((event) => event.id), [last, after]);
    }
    await live.take(3);
    // Each reported once, with its id and the encoder's reason.
    assert.equal(reported.length, 3, reported.map(String).join("; "));
    for (const [i, id] of poisonIds.entries()) {
      const error = reported[i]!;
      assert.ok(error.message.includes(JSON.stringify(id)), error.message);
      assert.ok(error.cause instanceof Error);
      assert.ok(error.message.endsWith((error.cause as Error).message));
    }
    assert.equal(channel.size, 4);

    // A channel that never saw them live (another process, say): resuming
    // clients skip them, and each is reported once, not once per client.
    const freshReports: Error[] = [];
    const fresh = new SSEChannel({
      broker,
      keepAlive: 0,
      onError: (error) => freshReports.push(error),
    });
    const freshServer = serveChannel(fresh);
    try {
      for (let i = 0; i < 3; i++) {
        const resumed = await Client.open(freshServer.url, {
          "last-event-id": first!,
        });
        clients.push(resumed);
        await resumed.take(2);
        assert.deepEqual(resumed.events.map((event) => event.id), [
          last,
          after,
        ]);
      }
      assert.equal(freshReports.length, 3);
    } finally {
      await fresh.close();
      await freshServer.shutdown();
    }
  } finally {
    await Promise.all(clients.map((client) => client.close()));
    await channel.close();
    await server.shutdown();
    await broker.close();
  }
});

test("SSEChannel reports a poison entry once, however many clients skip it and however much is replayed after it", async () => {
  const broker = new MemoryBroker({ maxHistoryBytes: 64 * MiB });
  const { channel, reported, server } = reportingChannel(broker);
  const clients: Client[] = [];
  try {
    const live = await Client.open(server.url);
    clients.push(live);
    const [first] = await publishNumbered(channel, 0, 1, 100);
    const poison = await broker.publish("default", {
      topic: "",
      message: { data: "x", retry: -5 },
    }, { replay: 1000 });
    // 24 MiB after it: more than the channel keeps of replayed frames
    // (16 MiB), so a resume past all of it makes the channel forget it
    // skipped the poison entry.
    await publishNumbered(channel, 1, 96, 256 * KiB);
    await live.take(97);
    for (let i = 0; i < 3; i++) {
      const resumed = await Client.open(server.url, {
        "last-event-id": first!,
      });
      clients.push(resumed);
      await resumed.take(96);
      assert.deepEqual(numbers(resumed.data), run(1, 96));
    }
    // Live once, then three resumes past it: one report.
    assert.deepEqual(
      reported.map((error) => error.message.includes(JSON.stringify(poison))),
      [true],
    );
  } finally {
    await Promise.all(clients.map((client) => client.close()));
    await channel.close();
    await server.shutdown();
    await broker.close();
  }
});

test("SSEChannel reports on one line of stderr by default: a poison entry and a throwing hook, never a stack trace", async () => {
  const printed: unknown[][] = [];
  const error = console.error;
  console.error = (...args: unknown[]) => printed.push(args);
  const broker = new MemoryBroker();
  const disconnected = new Counter();
  const channel = new SSEChannel({
    broker,
    keepAlive: 0,
    onDisconnect() {
      disconnected.hit();
      throw new Error("onDisconnect bug");
    },
  });
  const server = serveChannel(channel);
  let client: Client | undefined;
  try {
    client = await Client.open(server.url);
    const id = await broker.publish("default", {
      topic: "",
      message: { data: "x", retry: -5 },
    }, { replay: 10 });
    await client.close();
    await disconnected.reach(1, "the disconnect");
    assert.equal(printed.length, 2);
    for (const line of printed) {
      assert.equal(line.length, 1);
      assert.equal(typeof line[0], "string");
      assert.match(line[0] as string, /^SSEChannel: /);
      assert.doesNotMatch(line[0] as string, /\n/);
    }
    assert.ok((printed[0]![0] as string).includes(id));
    assert.match(
      printed[1]![0] as string,
      /onDisconnect threw: onDisconnect bug/,
    );
  } finally {
    console.error = error;
    await client?.close();
    await channel.close();
    await server.shutdown();
    await broker.close();
  }
});

test("SSEChannel delivers only when filter returns true, and reports a filter that returns anything else once", async () => {
  const reported: Error[] = [];
  const channel = new SSEChannel<string>({
    keepAlive: 0,
    onConnect: (request) => request.headers.get("x-user") ?? "",
    // What a filter written in plain JavaScript may return.
    filter: ((user: string): unknown => {
      if (user === "async") return Promise.resolve(true); // truthy, not true
      if (user === "one") return 1;
      if (user === "undefined") return undefined;
      return true;
    }) as (user: string) => boolean,
    onError: (error) => reported.push(error),
  });
  const server = serveChannel(channel);
  const users = ["yes", "async", "one", "undefined"];
  const clients: Client[] = [];
  try {
    for (const user of users) {
      clients.push(await Client.open(server.url, { "x-user": user }));
    }
    await publishNumbered(channel, 0, 3, 100);
    await clients[0]!.take(3);
    await channel.close();
    for (const client of clients) await client.closed();
    assert.deepEqual(
      clients.map((client) => client.events.length),
      [3, 0, 0, 0],
    );
    assert.equal(reported.length, 1, reported.map(String).join("; "));
    assert.match(reported[0]!.message, /filter returned .* not a boolean/);
  } finally {
    await Promise.all(clients.map((client) => client.close()));
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel tells onDisconnect why each connection ended", async () => {
  const reasons: [string, string][] = [];
  const channel = new SSEChannel<string>({
    keepAlive: 0,
    onConnect: (request) => new URL(request.url).pathname,
    init(path) {
      if (path === "/fails") throw new Error("init failed");
    },
    onDisconnect: (path, { reason }) => reasons.push([path, reason]),
  });
  const server = serveChannel(channel);
  let staying: Client | undefined;
  try {
    const leaving = await Client.open(`${server.url}/leaves`);
    await leaving.close();
    const failed = await fetch(`${server.url}/fails`);
    assert.equal(failed.status, 500);
    await failed.body?.cancel();
    staying = await Client.open(`${server.url}/stays`);
    await until(() => reasons.length === 2, "two disconnects");
    await channel.close();
    assert.deepEqual(reasons, [
      ["/leaves", "client-closed"],
      ["/fails", "connect-failed"],
      ["/stays", "channel-closed"],
    ]);
  } finally {
    await staying?.close();
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel close ends at once the streams of connections still in onConnect or init", async () => {
  const gate = Promise.withResolvers<void>();
  const waiting = new Counter();
  const channel = new SSEChannel<string>({
    retry: 2000,
    async onConnect(request) {
      const path = new URL(request.url).pathname;
      if (path === "/on-connect") {
        waiting.hit();
        await gate.promise;
      }
      return path;
    },
    async init(path) {
      if (path === "/init") {
        waiting.hit();
        await gate.promise;
      }
    },
  });
  const server = serveChannel(channel);
  try {
    const pending = ["/on-connect", "/init"].map((path) =>
      fetch(server.url + path)
    );
    await waiting.reach(2, "both connections to wait");
    await channel.close();
    // The hooks are still waiting: the answers come from close, not them.
    const responses = await within(
      Promise.all(pending),
      2000,
      "the answers to the waiting connections",
    );
    // Before: 503, on which a browser's EventSource stops for good. Now
    // they reconnect, after the channel's retry hint.
    for (const [i, response] of responses.entries()) {
      const what = ["/on-connect", "/init"][i]!;
      assert.equal(await assertEndedStream(response, what), "retry: 2000\n\n");
    }
    assert.equal(channel.size, 0);
  } finally {
    gate.resolve();
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel answers 405 with Allow: GET, HEAD to other methods, and HEAD with the headers alone", async () => {
  const connects: string[] = [];
  const channel = new SSEChannel({
    keepAlive: 0,
    headers: { "access-control-allow-origin": "*" },
    onConnect(request) {
      connects.push(request.method);
      return request.headers.has("authorization")
        ? undefined
        : new Response("Unauthorized", { status: 401 });
    },
  });
  const server = serveChannel(channel);
  try {
    for (const method of ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"]) {
      const response = await fetch(server.url, {
        method,
        headers: { authorization: "Bearer t" },
      });
      assert.equal(response.status, 405, method);
      assert.equal(response.headers.get("allow"), "GET, HEAD", method);
      await response.body?.cancel();
    }
    assert.equal(channel.size, 0);
    assert.deepEqual(connects, []);
    // HEAD: what GET would answer, without a body or a subscription.
    const head = await fetch(server.url, {
      method: "HEAD",
      headers: { authorization: "Bearer t" },
    });
    assert.equal(head.status, 200);
    assert.equal(
      head.headers.get("content-type"),
      "text/event-stream; charset=utf-8",
    );
    assert.equal(head.headers.get("access-control-allow-origin"), "*");
    assert.equal(await head.text(), "");
    const refused = await fetch(server.url, { method: "HEAD" });
    assert.equal(refused.status, 401);
    await refused.body?.cancel();
    assert.deepEqual(connects, ["HEAD", "HEAD"]);
    assert.equal(channel.size, 0);
  } finally {
    await channel.close();
    await server.shutdown();
  }
});

/** A MemoryBroker whose `history` fails from its `failFrom`-th call on. */
class FailingBroker extends MemoryBroker {
  calls = 0;
  failFrom = Infinity;

  override history(
    name: string,
    options: { after: string; limit: number },
  ): Promise<SSEBrokerEntry[] | null> {
    if (++this.calls >= this.failFrom) {
      return Promise.reject(new Error("Command timed out after 3000 ms"));
    }
    return super.history(name, options);
  }
}

test("SSEChannel answers a resuming client with resumed: false when the broker's history fails", async () => {
  const broker = new FailingBroker();
  const inits: [string, boolean][] = [];
  const reported: Error[] = [];
  const channel = new SSEChannel({
    broker,
    keepAlive: 0,
    init(_context, lastEventId, { resumed }) {
      inits.push([lastEventId, resumed]);
      return resumed ? [] : [{ event: "snapshot", data: "state" }];
    },
    onError: (error) => reported.push(error),
  });
  const server = serveChannel(channel);
  let client: Client | undefined;
  try {
    const [start] = await publishNumbered(channel, 0, 2, 100);
    broker.failFrom = 1;
    client = await within(
      Client.open(server.url, { "last-event-id": start! }),
      2000,
      "the answer",
    );
    const [live] = await publishNumbered(channel, 2, 1, 100);
    assert.deepEqual(await client.take(2), [
      { type: "snapshot", data: "state", id: "" },
      { type: "message", data: numbered(2, 100).data, id: live },
    ]);
    assert.deepEqual(inits, [[start, false]]);
    assert.equal(reported.length, 1);
    assert.match(reported[0]!.message, /history.*Command timed out/);
  } finally {
    await client?.close();
    await channel.close();
    await server.shutdown();
    await broker.close();
  }
});

test("SSEChannel ends a catch-up whose history fails midway, so that the client resumes from where it got to", async () => {
  const broker = new FailingBroker();
  const reasons: string[] = [];
  const channel = new SSEChannel({
    broker,
    keepAlive: 0,
    onDisconnect: (_context, { reason }) => reasons.push(reason),
    onError() {},
  });
  const server = serveChannel(channel);
  const clients: Client[] = [];
  try {
    const [start] = await publishNumbered(channel, 0, 1, 100);
    await publishNumbered(channel, 1, 250, 100);
    // The first page (100) is read; the next read fails.
    broker.failFrom = 2;
    const first = await Client.open(server.url, { "last-event-id": start! });
    clients.push(first);
    await first.closed();
    assert.equal(first.error, undefined);
    assert.deepEqual(numbers(first.data), run(1, 100));
    assert.deepEqual(reasons, ["broker-error"]);
    // The broker is back: its reconnect resumes exactly where it got to.
    broker.failFrom = Infinity;
    const again = await Client.open(server.url, {
      "last-event-id": first.events.at(-1)!.id,
    });
    clients.push(again);
    await again.take(150);
    assert.deepEqual(numbers(again.data), run(101, 150));
  } finally {
    await Promise.all(clients.map((client) => client.close()));
    await channel.close();
    await server.shutdown();
    await broker.close();
  }
});
