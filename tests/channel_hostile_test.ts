// Copyright the sse authors. MIT license.
// SSEChannel against a broker, hooks and clients that do not keep to their
// contracts: a history or a subscribe that throws, hangs or answers something
// that is not a page or a subscription, live entries that are not entries, a
// Redis that is down when clients connect, clients that reconnect in a tight
// loop or leave at every step. Each scenario runs over a real Deno.serve on
// 127.0.0.1 with real sockets; nothing may crash the process, lose an event,
// stop a client for good or leave a client counted.
import assert from "node:assert/strict";
import {
  MemoryBroker,
  type SSEBroker,
  type SSEBrokerEntry,
  type SSEBrokerSubscription,
  SSEChannel,
  type SSEChannelOptions,
  sseResponse,
} from "../server.ts";
import { EventSource } from "../event_source.ts";
import { SSEParserStream } from "../parser.ts";
import { RedisBroker } from "../redis.ts";
import { redisTest, startRedis } from "./_redis.ts";
import {
  assertEndedStream,
  Client,
  Counter,
  randomFrom,
  serve,
  test,
  WAIT_MS,
  within,
} from "./_channel.ts";

/**
 * A MemoryBroker whose `history` does `fault` instead, from its `from`-th
 * call on (the first call is the one `connect` makes for a resume).
 */
class FaultyBroker implements SSEBroker {
  readonly inner: MemoryBroker = new MemoryBroker();
  calls = 0;
  fault: (() => unknown) | undefined;
  from = 1;
  /** The live subscription's callback, to hand it what a broker may. */
  deliver: ((entry: SSEBrokerEntry) => void) | undefined;

  publish(...args: Parameters<SSEBroker["publish"]>): Promise<string> {
    return this.inner.publish(...args);
  }

  /** What `subscribe` does instead, on its first call. */
  subscribeFault: (() => unknown) | undefined;
  subscribes = 0;
  unsubscribes = 0;

  subscribe(
    ...args: Parameters<SSEBroker["subscribe"]>
  ): Promise<SSEBrokerSubscription> {
    this.deliver = args[1];
    if (this.subscribes++ === 0 && this.subscribeFault !== undefined) {
      return this.subscribeFault() as Promise<SSEBrokerSubscription>;
    }
    return this.#counted(this.inner.subscribe(...args));
  }

  /** A subscription whose unsubscribe is counted. */
  async #counted(
    subscribing: Promise<SSEBrokerSubscription>,
  ): Promise<SSEBrokerSubscription> {
    const subscription = await subscribing;
    return {
      unsubscribe: () => {
        this.unsubscribes++;
        subscription.unsubscribe();
      },
    };
  }

  history(
    ...args: Parameters<SSEBroker["history"]>
  ): Promise<SSEBrokerEntry[] | null> {
    if (++this.calls >= this.from && this.fault !== undefined) {
      return this.fault() as Promise<SSEBrokerEntry[] | null>;
    }
    return this.inner.history(...args);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/**
 * A channel on a FaultyBroker over a real server, with `count` messages
 * ("0", "1", …) published, and what its onError was told.
 */
async function faultyChannel(
  count: number,
  options: SSEChannelOptions = {},
): Promise<{
  broker: FaultyBroker;
  errors: string[];
  channel: SSEChannel;
  server: ReturnType<typeof serve>;
  first: string;
}> {
  const broker = new FaultyBroker();
  const errors: string[] = [];
  const channel = new SSEChannel({
    ...options,
    broker,
    onError: (error) => errors.push(error.message),
  });
  const server = serve((request) => channel.connect(request));
  const first = await channel.publish({ data: "0" });
  for (let i = 1; i < count; i++) await channel.publish({ data: String(i) });
  return { broker, errors, channel, server, first };
}

/**
 * An EventSource on `url`, with its opens counted and its first message's
 * data.
 */
function listen(url: string): {
  source: EventSource;
  opened: Counter;
  received: Promise<string>;
} {
  const source = new EventSource(url);
  const opened = new Counter();
  source.onopen = opened.hit;
  const { promise, resolve } = Promise.withResolvers<string>();
  source.onmessage = (event) => resolve(event.data);
  return { source, opened, received: promise };
}

/** What a broker's history may do instead of answering a page. */
const FAULTS: [string, () => unknown][] = [
  ["throws", () => {
    throw new Error("history threw");
  }],
  ["resolves to undefined", () => Promise.resolve(undefined)],
  ["resolves to an object", () => Promise.resolve({ length: 2 })],
  [
    "resolves to entries that are not entries",
    () => Promise.resolve([null, 5]),
  ],
];

for (const [what, fault] of FAULTS) {
  test(`SSEChannel ends a catch-up, reported, when the broker's history ${what}`, async () => {
    const { broker, errors, channel, server, first } = await faultyChannel(400);
    // The page connect reads is whole; the next one fails.
    broker.fault = fault;
    broker.from = 2;
    const client = await Client.open(server.url, { "last-event-id": first });
    await client.closed();
    assert.deepEqual(
      client.data,
      Array.from({ length: client.data.length }, (_, i) => String(i + 1)),
    );
    assert.ok(client.data.length >= 100, `${client.data.length} events`);
    assert.equal(channel.size, 0);
    assert.equal(channel.metrics().disconnects["broker-error"], 1);
    assert.match(errors.join("\n"), /history failed/);
    await channel.close();
    await server.shutdown();
  });

  test(`SSEChannel answers a resume with resumed: false, reported, when the broker's history ${what}`, async () => {
    const resumed: boolean[] = [];
    const { broker, errors, channel, server, first } = await faultyChannel(2, {
      init(_context, _id, options) {
        resumed.push(options.resumed);
        return [{ data: "snapshot" }];
      },
    });
    broker.fault = fault;
    const client = await Client.open(server.url, { "last-event-id": first });
    await channel.publish({ data: "2" });
    await client.take(2);
    assert.deepEqual(client.data, ["snapshot", "2"]);
    assert.deepEqual(resumed, [false]);
    assert.deepEqual(channel.metrics().resumeFallbacks, 1);
    assert.match(errors.join("\n"), /history failed/);
    assert.deepEqual(server.errors, []);
    await client.close();
    await channel.close();
    await server.shutdown();
  });
}

test("SSEChannel skips, reported, live entries that are not entries (null, a number, no id), and delivers the next in order", async () => {
  const { broker, errors, channel, server } = await faultyChannel(1);
  const client = await Client.open(server.url);
  await channel.publish({ data: "a" });
  for (const bad of [null, 5, { id: 7 }, { topic: "", message: {} }]) {
    assert.doesNotThrow(() => broker.deliver!(bad as never));
  }
  await channel.publish({ data: "b" });
  await client.take(2);
  assert.deepEqual(client.data, ["a", "b"]);
  // Reported once per id: the three without one share a report.
  assert.equal(errors.length, 2, errors.join("\n"));
  assert.match(errors[0]!, /^Skipped entry undefined/);
  assert.match(errors[1]!, /^Skipped entry 7/);
  assert.equal(client.ended, false);
  await client.close();
  await channel.close();
  await server.shutdown();
});

/** A history that never answers (a broker whose backend froze). */
const hang = () => new Promise<never>(() => {});

test("SSEChannel ends a catch-up whose history does not answer within drainTimeout, reported, so that the client reconnects", async () => {
  const { broker, errors, channel, server, first } = await faultyChannel(400, {
    drainTimeout: 300,
  });
  broker.fault = hang;
  broker.from = 2;
  const client = await Client.open(server.url, { "last-event-id": first });
  await client.closed();
  assert.equal(client.data.length, 100);
  assert.equal(channel.size, 0);
  assert.equal(channel.metrics().disconnects["broker-error"], 1);
  assert.match(errors.join("\n"), /did not answer within 300 ms/);
  await channel.close();
  await server.shutdown();
});

test("SSEChannel answers a resume whose history does not answer within drainTimeout with resumed: false, reported", async () => {
  const { broker, errors, channel, server, first } = await faultyChannel(2, {
    drainTimeout: 300,
    init: (_context, _id, { resumed }) => [{ data: `resumed: ${resumed}` }],
  });
  broker.fault = hang;
  const client = await Client.open(server.url, { "last-event-id": first });
  await client.take(1);
  assert.deepEqual(client.data, ["resumed: false"]);
  assert.match(errors.join("\n"), /did not answer within 300 ms/);
  await client.close();
  await channel.close();
  await server.shutdown();
});

test("SSEChannel's close() during histories that never answer leaves no timer, and ends the resuming connect's stream", async () => {
  const { broker, channel, server, first } = await faultyChannel(400, {
    drainTimeout: 60_000,
  });
  broker.fault = hang;
  broker.from = 2;
  // One in its catch-up, one in connect, both waiting for the history.
  const paging = await Client.open(server.url, { "last-event-id": first });
  await paging.take(100);
  const connecting = fetch(server.url, { headers: { "last-event-id": first } });
  while (broker.calls < 3) await new Promise((r) => setTimeout(r, 5));
  await channel.close();
  await assertEndedStream(await connecting, "the resuming connect");
  await paging.closed();
  assert.equal(paging.data.length, 100);
  await server.shutdown();
});

test("SSEChannel's close() completes while the broker's subscribe never answers, and ends the waiting connect's stream", async () => {
  const { broker, channel, server } = await faultyChannel(1, {
    drainTimeout: 60_000,
  });
  broker.subscribeFault = hang;
  const connecting = fetch(server.url);
  while (broker.subscribes < 1) await new Promise((r) => setTimeout(r, 5));
  await within(channel.close(), 2000, "close()");
  await assertEndedStream(await connecting, "the waiting connect");
  await server.shutdown();
});

test("SSEChannel refuses a broker subscription without unsubscribe, reported, ends that stream, and subscribes again for the next connection", async () => {
  const { broker, errors, channel, server } = await faultyChannel(1);
  broker.subscribeFault = () => Promise.resolve({});
  const refused = await Client.open(server.url);
  await refused.closed();
  assert.deepEqual(refused.data, []);
  assert.match(errors.join("\n"), /subscribe failed: Invalid subscription/);
  assert.deepEqual(server.errors, []);
  const client = await Client.open(server.url);
  await channel.publish({ data: "live" });
  await client.take(1);
  assert.deepEqual(client.data, ["live"]);
  await client.close();
  await channel.close();
  assert.equal(broker.unsubscribes, 1);
  await server.shutdown();
});

test("SSEChannel ends the stream of a connect whose broker subscribe has not answered within drainTimeout, reported, subscribes again for the next, and releases the late subscription", async () => {
  const { broker, errors, channel, server } = await faultyChannel(1, {
    drainTimeout: 300,
  });
  let answer!: (subscription: SSEBrokerSubscription) => void;
  broker.subscribeFault = () => new Promise((resolve) => answer = resolve);
  const refused = await Client.open(server.url);
  await refused.closed();
  assert.match(errors.join("\n"), /subscribe did not answer within 300 ms/);
  assert.deepEqual(server.errors, []);
  const client = await Client.open(server.url);
  await channel.publish({ data: "live" });
  await client.take(1);
  // The broker answers the first subscribe at last: it is released at once.
  let late = 0;
  answer({ unsubscribe: () => late++ });
  await new Promise((r) => setTimeout(r, 0));
  assert.equal(late, 1);
  assert.deepEqual(client.data, ["live"]);
  await client.close();
  await channel.close();
  await server.shutdown();
});

test("SSEChannel takes live entries that a broker delivers synchronously inside subscribe, before it resolves", async () => {
  const { broker, channel, server } = await faultyChannel(1);
  broker.subscribeFault = () => {
    broker.deliver!({ id: "0-1", topic: "", message: { data: "early" } });
    return broker.inner.subscribe("default", broker.deliver!);
  };
  const client = await Client.open(server.url);
  await channel.publish({ data: "live" });
  await client.take(1);
  assert.deepEqual(client.data, ["live"]);
  assert.equal(channel.metrics().received, 2);
  await client.close();
  await channel.close();
  await server.shutdown();
});

test("SSEChannel answers a connection while the broker's subscribe fails with a stream that ends, so that an EventSource reconnects and gets live events", async () => {
  const { broker, errors, channel, server } = await faultyChannel(1, {
    retry: 50,
  });
  broker.subscribeFault = () => Promise.reject(new Error("broker down"));
  const { source, opened, received } = listen(server.url);
  try {
    // The first attempt found the broker down; the second subscribes.
    await opened.reach(2, "a reconnection");
    await channel.publish({ data: "live" });
    assert.equal(await within(received, WAIT_MS, "a message"), "live");
    assert.equal(source.readyState, EventSource.OPEN);
    assert.match(errors.join("\n"), /subscribe failed: broker down/);
    assert.equal(channel.metrics().disconnects["broker-error"], 1);
    assert.deepEqual(server.errors, []);
  } finally {
    source.close();
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel and sseResponse name the headers option when it is not headers", async () => {
  const invalid = [
    "x-user: ada",
    { "x-user": "ada\nset-cookie: a" },
    [["x-user"]],
  ];
  for (const headers of invalid) {
    assert.throws(() => new SSEChannel({ headers: headers as never }), {
      name: "TypeError",
      message: /^Invalid headers: /,
    });
    assert.throws(
      () => sseResponse(new ReadableStream(), { headers: headers as never }),
      { name: "TypeError", message: /^Invalid headers: / },
    );
  }
  // Valid headers still go through, the event-stream ones winning.
  const response = sseResponse(new ReadableStream(), {
    headers: { "content-type": "text/plain", "x-user": "ada" },
  });
  assert.equal(response.headers.get("x-user"), "ada");
  assert.equal(
    response.headers.get("content-type"),
    "text/event-stream; charset=utf-8",
  );
  await response.body?.cancel();
});

test("SSEChannel loses and repeats nothing for a client that reconnects in a tight loop with Last-Event-ID while bursts are published and hooks publish", async () => {
  const random = randomFrom(7);
  const echoed = new Set<string>();
  const broker = new MemoryBroker();
  // deno-lint-ignore prefer-const
  let channel: SSEChannel;
  channel = new SSEChannel({
    broker,
    replay: 100_000,
    filter(_context, message) {
      // A hook that publishes during fan-outs and catch-ups.
      const data = String(message.data);
      if (/^\d+7$/.test(data) && !echoed.has(data)) {
        echoed.add(data);
        void channel.publish({ data: `echo ${data}` });
      }
      return true;
    },
  });
  const server = serve((request) => channel.connect(request));
  const start = await channel.publish({ data: "start" });
  let published = false;
  const publishing = (async () => {
    for (let i = 0; i < 3000;) {
      const burst: Promise<string>[] = [];
      for (let k = 1 + random(300); k > 0 && i < 3000; k--, i++) {
        burst.push(channel.publish({ data: String(i) }));
      }
      await Promise.all(burst);
      await new Promise((resolve) => setTimeout(resolve, random(3)));
    }
    published = true;
  })();
  const got: string[] = [];
  let last = start;
  let cycles = 0;
  for (let idle = false; !(published && idle); cycles++) {
    const response = await fetch(server.url, {
      headers: { "last-event-id": last },
    });
    const events = response.body!.pipeThrough(new SSEParserStream())
      .getReader();
    idle = false;
    for (let n = random(60); n > 0; n--) {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const result = await Promise.race([
        events.read(),
        // Once everything is published, only a long silence ends the loop:
        // a busy machine can pause a catch-up for more than 200 ms.
        new Promise<null>((resolve) =>
          timer = setTimeout(resolve, published ? 1000 : 200, null)
        ),
      ]);
      clearTimeout(timer);
      if (result === null) {
        idle = true;
        break;
      }
      if (result.done) break;
      got.push(result.value.id);
      last = result.value.id;
    }
    await events.cancel();
  }
  await publishing;
  const stored: string[] = [];
  for (let after = start;;) {
    const page = await broker.history("default", { after, limit: 1000 });
    if (page === null || page.length === 0) break;
    stored.push(...page.map((entry) => entry.id));
    after = page.at(-1)!.id;
  }
  assert.ok(cycles > 50, `${cycles} connections`);
  assert.equal(stored.length, 3000 + echoed.size);
  assert.deepEqual(got, stored);
  await channel.close();
  await server.shutdown();
});

test("SSEChannel is back to nothing after 2 000 connections that leave at every step, with async hooks and per-user topics", async () => {
  const random = randomFrom(11);
  const channel = new SSEChannel<string>({
    async onConnect(request) {
      await null;
      return request.headers.get("x-user") ?? "";
    },
    topics: (user) => [`user:${user}`, "news"],
    async init() {
      await new Promise((resolve) => setTimeout(resolve, random(3)));
      return [{ data: "snapshot" }];
    },
  });
  const server = serve((request) =>
    channel.connect(request, { signal: request.signal })
  );
  const ticker = setInterval(
    () => void channel.publish({ data: "tick" }, { topic: "news" }),
    5,
  );
  try {
    for (let i = 0; i < 2000; i += 20) {
      await Promise.all(Array.from({ length: 20 }, async (_, k) => {
        const abort = new AbortController();
        const step = random(3);
        const answer = fetch(server.url, {
          headers: { "x-user": String(i + k) },
          signal: abort.signal,
        });
        if (step === 0) {
          setTimeout(() => abort.abort(), random(3));
          await answer.then((r) => r.body?.cancel(), () => {});
          return;
        }
        const reader = (await answer).body!.getReader();
        if (step === 1) await reader.read();
        await reader.cancel();
      }));
    }
  } finally {
    clearInterval(ticker);
  }
  const empty = async () => {
    while (channel.size > 0) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
  };
  await within(empty(), WAIT_MS, "every client released");
  const metrics = channel.metrics();
  assert.equal(channel.clients().length, 0);
  assert.equal(channel.count("news"), 0);
  assert.deepEqual({ ...metrics.topics }, {});
  assert.equal(metrics.clients, 0);
  const ended = Object.values(metrics.disconnects).reduce((a, b) => a + b, 0);
  assert.equal(metrics.connections, ended);
  assert.equal(metrics.disconnects["client-closed"], ended);
  await channel.close();
  await server.shutdown();
});

redisTest(
  "SSEChannel on a RedisBroker keeps an EventSource that connects while Redis is down reconnecting, and it gets live events once Redis is back",
  async () => {
    await using redis = await startRedis();
    await redis.stop();
    const broker = new RedisBroker({ url: redis.url, onError() {} });
    const errors: string[] = [];
    const channel = new SSEChannel({
      broker,
      retry: 100,
      onError: (error) => errors.push(error.message),
    });
    const server = serve((request) => channel.connect(request));
    const { source, opened, received } = listen(server.url);
    try {
      // Before: 500, and the EventSource closed for good (readyState 2).
      await opened.reach(2, "two attempts while Redis is down");
      assert.notEqual(source.readyState, EventSource.CLOSED);
      assert.match(
        errors[0]!,
        /^Ended the clients connecting: the broker's subscribe failed/,
      );
      await redis.start();
      let sent = 0;
      const publishing = setInterval(() => {
        channel.publish({ data: `up ${sent++}` }).catch(() => {});
      }, 50);
      try {
        const data = await within(received, WAIT_MS, "a live event");
        assert.match(data, /^up \d+$/);
      } finally {
        clearInterval(publishing);
      }
      assert.equal(source.readyState, EventSource.OPEN);
      assert.deepEqual(server.errors, []);
    } finally {
      source.close();
      await channel.close();
      await broker.close();
      await server.shutdown();
    }
  },
);

test("SSEChannel reports a failed broker subscribe once, however many connections waited for it, and ends each of their streams", async () => {
  const { broker, errors, channel, server } = await faultyChannel(1);
  let fail!: (error: Error) => void;
  broker.subscribeFault = () => new Promise((_, reject) => fail = reject);
  const opening = Array.from({ length: 5 }, () => Client.open(server.url));
  while (channel.size < 5) await new Promise((r) => setTimeout(r, 5));
  fail(new Error("broker down"));
  const clients = await Promise.all(opening);
  await Promise.all(clients.map((client) => client.closed()));
  assert.equal(channel.metrics().disconnects["broker-error"], 5);
  assert.equal(errors.length, 1, errors.join("\n"));
  assert.match(errors[0]!, /subscribe failed: broker down/);
  await channel.close();
  await server.shutdown();
});
