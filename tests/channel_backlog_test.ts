// Copyright the sse authors. MIT license.
// SSEChannel's delivery: what reaches the wire (the broker's id alone),
// bursts of any size to readers that read (a backlog of shared frames up to
// maxBacklog), what a stalled client costs, what close() does with streams
// whose peer never reads, and the metrics of delivery. Each scenario runs
// over a real Deno.serve and real sockets.
import assert from "node:assert/strict";
import FakeTimers from "@sinonjs/fake-timers";
import {
  MemoryBroker,
  type SSEBrokerEntry,
  type SSEBrokerSubscription,
  SSEChannel,
} from "../server.ts";
import { SSEClient } from "../client.ts";
import type { SSEEvent } from "../parser.ts";
import {
  Client,
  numbered,
  RawClient,
  serve,
  test,
  until,
  WAIT_MS,
  within,
} from "./_channel.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

/** The numbers `numbered` put at the start of each event's data. */
function numbers(events: SSEEvent[]): number[] {
  return events.map((event) => Number(event.data.slice(0, 8)));
}

function run(from: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => from + i);
}

/** A turn of the event loop with real time. */
function turn(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 1));
}

/** A channel on a real server, with every disconnect reason it reports. */
function served<C = undefined>(
  options: ConstructorParameters<typeof SSEChannel<C>>[0] = {},
) {
  const reasons: string[] = [];
  const channel = new SSEChannel<C>({
    ...options,
    onDisconnect: (_context, { reason }) => reasons.push(reason),
  });
  const server = serve((request) => channel.connect(request));
  /** Reasons other than the readers' own close at the end of a test. */
  const dropped = () => reasons.filter((reason) => reason !== "client-closed");
  return { channel, server, reasons, dropped };
}

/**
 * Reads `count` events with an SSEClient (no reconnection: an end before
 * `count` is a failure), as fast as loopback allows.
 */
async function read(
  url: string,
  count: number,
  options: { lastEventId?: string; maxEventSize?: number } = {},
): Promise<{ events: SSEEvent[]; lastEventId: string }> {
  const controller = new AbortController();
  const client = new SSEClient(url, {
    signal: controller.signal,
    ...options,
  });
  const events: SSEEvent[] = [];
  try {
    await within(
      (async () => {
        for await (const event of client) {
          events.push(event);
          if (events.length === count) return;
        }
      })(),
      WAIT_MS,
      `${count} events (got ${events.length})`,
    ).catch((error) => {
      throw new Error(`${error.message}; got ${events.length}`);
    });
    return { events, lastEventId: client.lastEventId };
  } finally {
    client.close();
  }
}

/**
 * A broker that hands out entries whose message carries an id of its own,
 * as one written by another program, or kept by a broker that stores the
 * message as given, would: live and from history.
 */
class ForgingBroker extends MemoryBroker {
  static forge(entry: SSEBrokerEntry): SSEBrokerEntry {
    return { ...entry, message: { ...entry.message, id: "forged" } };
  }

  override subscribe(
    name: string,
    onEntry: (entry: SSEBrokerEntry) => void,
  ): Promise<SSEBrokerSubscription> {
    return super.subscribe(
      name,
      (entry) => onEntry(ForgingBroker.forge(entry)),
    );
  }

  override async history(
    name: string,
    options: { after: string; limit: number },
  ): Promise<SSEBrokerEntry[] | null> {
    const page = await super.history(name, options);
    return page?.map(ForgingBroker.forge) ?? null;
  }
}

test("SSEChannel writes the broker's id alone, never the id a stored message carries, live and replayed, with and without a filter", async () => {
  for (const filter of [undefined, () => true]) {
    const broker = new ForgingBroker();
    const channel = new SSEChannel({ broker, ...(filter && { filter }) });
    const server = serve((request) => channel.connect(request));
    const raw = await RawClient.open(server.url);
    try {
      const first = await channel.publish({ data: "first" });
      const reading = read(server.url, 2);
      // Connected (the raw client and this one) before the live messages,
      // so that it gets both.
      await until(() => channel.size === 2, "the reading client");
      const ids = [
        await channel.publish({ data: "live 1" }),
        await channel.publish({ data: "live 2" }),
      ];
      const live = await reading;
      assert.deepEqual(live.events.map((event) => event.id), ids);
      assert.equal(live.lastEventId, ids[1]);
      // Replayed from history to a client that resumes.
      const resumed = await read(server.url, 2, { lastEventId: first });
      assert.deepEqual(resumed.events.map((event) => event.id), ids);
      assert.equal(resumed.lastEventId, ids[1]);
      // On the wire: one id line per frame, the broker's.
      await raw.readUntil(
        () => raw.text.includes("live 2"),
        "the raw client's frames",
      );
      assert.doesNotMatch(raw.text, /forged/);
      const lines = [...raw.text.matchAll(/^id: (.*)$/gm)].map((m) => m[1]);
      assert.equal(lines.length, raw.text.match(/^data: /gm)?.length);
      assert.deepEqual(lines.slice(-2), ids);
    } finally {
      raw.close();
      await channel.close();
      await server.shutdown();
      await broker.close();
    }
  }
});

test("SSEChannel with default options delivers a burst of 300 messages of 4 KiB whole to 5 SSEClient readers, from their backlogs", async () => {
  const { channel, server, dropped } = served();
  try {
    const readers = Array.from({ length: 5 }, () => read(server.url, 300));
    await until(() => channel.size === 5, "5 readers");
    for (let i = 0; i < 300; i++) await channel.publish(numbered(i, 4 * KiB));
    for (const { events } of await Promise.all(readers)) {
      assert.deepEqual(numbers(events), run(0, 300));
    }
    assert.deepEqual(dropped(), []);
    const metrics = channel.metrics();
    // Nobody reconnected, nobody fell back to the history.
    assert.equal(metrics.connections, 5);
    assert.equal(metrics.fellBehind, 0);
    assert.equal(metrics.delivered, 1500);
  } finally {
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel with default options delivers 16 384 messages of 4 KiB from a publisher that never yields to a reader beside 20 stalled sockets, and drops the stalled ones", async () => {
  const clock = FakeTimers.install({
    toFake: ["setInterval", "clearInterval"],
  });
  const { channel, server, reasons, dropped } = served();
  const stalled: RawClient[] = [];
  try {
    for (let i = 0; i < 20; i++) stalled.push(await RawClient.open(server.url));
    await until(() => channel.size === 20, "the stalled sockets to connect");
    const COUNT = 16_384;
    const reading = read(server.url, COUNT);
    await until(() => channel.size === 21, "the reader to connect");
    // Every publish runs to its end without a turn of the event loop:
    // nothing reaches a socket until all 64 MiB are published.
    const publishing: Promise<string>[] = [];
    for (let i = 0; i < COUNT; i++) {
      publishing.push(channel.publish(numbered(i, 4 * KiB)));
    }
    await Promise.all(publishing);
    const { events } = await reading;
    assert.deepEqual(numbers(events), run(0, COUNT));
    // The stalled sockets take nothing for drainTimeout (10 s, checked
    // every 2.5 s): dropped as slow, the reader kept.
    for (let i = 0; i < 8 && dropped().length < 20; i++) {
      clock.tick(2500);
      await turn();
    }
    assert.deepEqual(dropped(), Array(20).fill("slow"));
    assert.equal(reasons.length, 21);
    const metrics = channel.metrics();
    assert.equal(metrics.connections, 21);
    assert.equal(metrics.fellBehind, 0);
  } finally {
    for (const client of stalled) client.close();
    await channel.close();
    await server.shutdown();
    clock.uninstall();
  }
});

test("SSEChannel with default options delivers one message of 20 MiB after a 200 KiB burst to every reader", async () => {
  const HUGE = 20 * MiB;
  const { channel, server, dropped } = served();
  try {
    const readers = Array.from(
      { length: 5 },
      () => read(server.url, 202, { maxEventSize: 32 * MiB }),
    );
    await until(() => channel.size === 5, "5 readers");
    for (let i = 0; i < 200; i++) await channel.publish(numbered(i, KiB));
    await channel.publish({ data: "H".repeat(HUGE) });
    await channel.publish({ data: "after" });
    for (const { events } of await Promise.all(readers)) {
      assert.deepEqual(numbers(events.slice(0, 200)), run(0, 200));
      assert.equal(events[200]!.data.length, HUGE);
      assert.equal(events[201]!.data, "after");
    }
    assert.deepEqual(dropped(), []);
    assert.equal(channel.metrics().connections, 5);
  } finally {
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel counts a message as delivered when it is handed to a response stream, not when it waits in a backlog dropped with a slow client", async () => {
  const clock = FakeTimers.install({
    toFake: ["setInterval", "clearInterval"],
  });
  const { channel, server, dropped } = served({
    keepAlive: 0,
    drainTimeout: 1000,
  });
  let raw: RawClient | undefined;
  try {
    raw = await RawClient.open(server.url);
    await until(() => channel.size === 1, "the raw client");
    // 24 MiB, far more than loopback's socket buffers take.
    const COUNT = 3000;
    for (let i = 0; i < COUNT; i++) {
      await channel.publish(numbered(i, 8 * KiB));
      if (i % 50 === 0) await turn();
    }
    for (let i = 0; i < 8 && dropped().length === 0; i++) {
      clock.tick(250);
      await turn();
    }
    assert.deepEqual(dropped(), ["slow"]);
    const { delivered } = channel.metrics();
    assert.ok(delivered < COUNT, `delivered ${delivered} of ${COUNT}`);
    // The client now reads all it will ever get: what was handed to its
    // stream, then the end of the response (no check ran: nothing is cut).
    const client = raw;
    assert.equal(
      await client.readUntil(() => client.ended, "the end of the stream"),
      true,
    );
    const got = client.text.match(/^data: /gm)?.length ?? 0;
    assert.equal(got, delivered);
  } finally {
    raw?.close();
    await channel.close();
    await server.shutdown();
    clock.uninstall();
  }
});

test("SSEChannel close ends every stream, cuts one whose peer never reads after min(drainTimeout, 1000 ms), and resolves then, no timer left", async () => {
  for (const drainTimeout of [undefined, 300]) {
    const grace = Math.min(drainTimeout ?? 10_000, 1000);
    const { channel, server } = served(
      drainTimeout === undefined ? {} : { drainTimeout },
    );
    let stalled: RawClient | undefined;
    let reader: Client | undefined;
    try {
      stalled = await RawClient.open(server.url);
      await until(() => channel.size === 1, "the stalled socket");
      reader = await Client.open(server.url);
      // 16 MiB: more than loopback's socket buffers and the runtime take
      // from a socket that is never read.
      const COUNT = 2048;
      for (let i = 0; i < COUNT; i++) {
        await channel.publish(numbered(i, 8 * KiB));
        if (i % 64 === 0) await turn();
      }
      await reader.take(COUNT);
      const started = performance.now();
      await channel.close();
      const took = performance.now() - started;
      assert.ok(
        took >= grace - 20 && took < grace + 1000,
        `close() took ${took.toFixed(0)} ms, grace ${grace} ms`,
      );
      // The reader got a clean end after everything.
      await reader.closed();
      assert.equal(reader.error, undefined);
      assert.deepEqual(numbers(reader.events), run(0, COUNT));
      // The stalled peer gets what was on its way, then the connection
      // ends without the response's last chunk: its stream was cut.
      const raw = stalled;
      assert.equal(await raw.readUntil(() => false, "the cut"), false);
      assert.equal(raw.ended, false);
      raw.close();
      await within(server.shutdown(), WAIT_MS, "server.shutdown()");
      assert.match(
        String(server.errors[0]),
        new RegExp(`has not read the end of its stream within ${grace} ms`),
      );
    } finally {
      stalled?.close();
      await reader?.close();
      await channel.close();
      await server.shutdown();
    }
  }
});

test("SSEChannel close resolves as soon as every client has taken the end of its stream", async () => {
  const { channel, server } = served();
  const readers: Client[] = [];
  try {
    for (let i = 0; i < 5; i++) readers.push(await Client.open(server.url));
    await until(() => channel.size === 5, "5 readers");
    for (let i = 0; i < 300; i++) await channel.publish(numbered(i, 4 * KiB));
    const started = performance.now();
    await channel.close();
    const took = performance.now() - started;
    // Far less than the grace (1 000 ms): no client needed it.
    assert.ok(took < 500, `close() took ${took.toFixed(0)} ms`);
    for (const reader of readers) {
      await reader.closed();
      assert.equal(reader.error, undefined);
      assert.deepEqual(numbers(reader.events), run(0, 300));
    }
  } finally {
    await Promise.all(readers.map((reader) => reader.close()));
    await channel.close();
    await server.shutdown();
  }
});

/**
 * The labels of one sample line of the Prometheus text exposition format,
 * read as strictly as prometheus/common's parser does: a label value is
 * any UTF-8 text in double quotes where a backslash starts only `\\`, `\"`
 * or `\n`, and a raw line feed cannot appear.
 */
function exposedLabels(line: string): Map<string, string> {
  const labels = new Map<string, string>();
  const open = line.indexOf("{");
  let i = open + 1;
  while (line[i] !== "}") {
    const name = /^[a-zA-Z_][a-zA-Z0-9_]*="/.exec(line.slice(i));
    assert.ok(name, `a label name at ${i} of ${JSON.stringify(line)}`);
    i += name[0].length;
    let value = "";
    for (;;) {
      const c = line[i++];
      assert.ok(c !== undefined && c !== "\n", "an unterminated label value");
      if (c === '"') break;
      if (c === "\\") {
        const escaped = line[i++];
        assert.ok(
          escaped === "\\" || escaped === '"' || escaped === "n",
          `invalid escape sequence '\\${escaped}' in ${JSON.stringify(line)}`,
        );
        value += escaped === "n" ? "\n" : escaped;
      } else {
        value += c;
      }
    }
    labels.set(name[0].slice(0, -2), value);
    if (line[i] === ",") i++;
  }
  assert.match(line.slice(i + 1), /^ \d+$/);
  return labels;
}

test("The README's /metrics example writes label values as the Prometheus text format allows, whatever a topic holds", async () => {
  const readme = await Deno.readTextFile(
    new URL("../README.md", import.meta.url),
  );
  const section = readme.slice(readme.indexOf("### Metrics"));
  const start = section.indexOf("```ts\n") + "```ts\n".length;
  const code = section.slice(start, section.indexOf("```\n", start));
  const root = new URL("../", import.meta.url);
  const file = new URL(
    `.readme_metrics_${crypto.randomUUID()}.ts`,
    root,
  ).pathname;
  await Deno.writeTextFile(file, code);
  try {
    const { code: status, stdout, stderr } = await new Deno.Command(
      Deno.execPath(),
      {
        args: [
          "run",
          "--allow-net=127.0.0.1",
          `--config=${new URL("deno.json", root).pathname}`,
          file,
        ],
        stdout: "piped",
        stderr: "piped",
      },
    ).output();
    assert.equal(status, 0, new TextDecoder().decode(stderr));
    const line = new TextDecoder().decode(stdout).trimEnd();
    assert.match(line, /^sse_topic_clients\{/);
    assert.deepEqual(
      exposedLabels(line),
      new Map([["topic", 'tab\t"quoted"\nnext line']]),
    );
  } finally {
    await Deno.remove(file);
  }
});

test("SSEChannel refuses a maxBacklog that is not a positive number of bytes", () => {
  for (const maxBacklog of [0, -1, NaN, "8" as unknown as number]) {
    assert.throws(
      () => new SSEChannel({ maxBacklog }),
      (error: unknown) =>
        error instanceof RangeError &&
        error.message.startsWith(
          "Invalid maxBacklog: expected a positive number of bytes, got ",
        ),
    );
  }
  return Promise.resolve();
});

test("SSEChannel sends a message larger than maxBacklog to a reader with nothing waiting, and one that falls beyond maxBacklog catches up from the history", async () => {
  const { channel, server, dropped } = served({ maxBacklog: MiB });
  try {
    const reading = read(server.url, 52, { maxEventSize: 4 * MiB });
    await until(() => channel.size === 1, "the reader");
    await channel.publish({ data: "B".repeat(2 * MiB) });
    // 50 messages of 64 KiB without a turn of the event loop: 3 MiB, more
    // than maxBacklog, behind the big one.
    const publishing: Promise<string>[] = [];
    for (let i = 0; i < 50; i++) {
      publishing.push(channel.publish(numbered(i, 64 * KiB)));
    }
    await Promise.all(publishing);
    await channel.publish({ data: "after" });
    const { events } = await reading;
    assert.equal(events[0]!.data.length, 2 * MiB);
    assert.deepEqual(numbers(events.slice(1, 51)), run(0, 50));
    assert.equal(events[51]!.data, "after");
    assert.deepEqual(dropped(), []);
    assert.equal(channel.metrics().connections, 1);
    assert.equal(channel.metrics().fellBehind, 1);
  } finally {
    await channel.close();
    await server.shutdown();
  }
});
