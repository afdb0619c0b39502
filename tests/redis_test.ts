// Copyright the sse authors. MIT license.
import assert from "node:assert/strict";
import fc from "fast-check";
import { createClient } from "@redis/client";
import {
  RedisBroker,
  type RedisClientTemplate,
  type SSEBrokerSubscription,
  type SSEMessage,
} from "../redis.ts";
import {
  type BrokerFixture,
  Collector,
  readAll,
  testBrokerContract,
} from "./_broker_contract.ts";
import { EventReader, type Instance, startInstance } from "./_instance.ts";
import { APPEND, streamTag, utf8Length } from "../_redis_entry.ts";
import {
  publishWhenUp,
  type RawClient,
  rawClient,
  REDIS_SKIP,
  type RedisServer,
  redisTest,
  runWhileHeld,
  startRedis,
  unreachableRedisUrl,
} from "./_redis.ts";

/** The Redis server behind each contract fixture. */
const servers = new WeakMap<BrokerFixture, RedisServer>();
/** A raw connection to it, opened by the first `expire`. */
const raws = new WeakMap<BrokerFixture, RawClient>();

testBrokerContract({
  name: "RedisBroker",
  ignore: REDIS_SKIP !== undefined,
  // MAXLEN ~ trims whole radix-tree nodes (100 entries by default).
  publishesToTrim: 250,
  numRuns: 15,
  async open() {
    const redis = await startRedis();
    const errors: Error[] = [];
    const onError = (error: Error) => errors.push(error);
    const broker = new RedisBroker({ url: redis.url, onError });
    const peer = new RedisBroker({ url: redis.url, onError });
    const fixture: BrokerFixture = {
      broker,
      peer,
      errors,
      async close() {
        await Promise.all([
          broker.close(),
          peer.close(),
          raws.get(fixture)?.close(),
        ]);
        await redis.close();
      },
    };
    servers.set(fixture, redis);
    return fixture;
  },
  async poison(fixture, name) {
    const raw = await rawClient(servers.get(fixture)!.url);
    try {
      await raw.send(["XADD", `sse:${name}`, "*", "topic", "", "message", "{"]);
    } finally {
      await raw.close();
    }
  },
  async forge(fixture, name, message) {
    const raw = await rawClient(servers.get(fixture)!.url);
    try {
      await raw.send([
        "XADD",
        `sse:${name}`,
        "*",
        "topic",
        "",
        "message",
        JSON.stringify(message),
      ]);
    } finally {
      await raw.close();
    }
  },
  async clobber(fixture, name) {
    const raw = await rawClient(servers.get(fixture)!.url);
    try {
      await raw.send(["SET", `sse:${name}`, "not a stream"]);
    } finally {
      await raw.close();
    }
  },
  async expire(fixture, name) {
    // As an operator's DEL, an eviction under maxmemory or FLUSHALL would:
    // on a connection kept open, so that it lands within a millisecond.
    let raw = raws.get(fixture);
    if (raw === undefined) {
      raw = await rawClient(servers.get(fixture)!.url);
      raws.set(fixture, raw);
    }
    await raw.send(["DEL", `sse:${name}`]);
  },
  fallBehind(fixture, name, count) {
    // Another instance publishes, with the broker's own script, while this
    // process is held back.
    const entry = ["", JSON.stringify({ data: "behind" })];
    runWhileHeld(servers.get(fixture)!, [
      count,
      ...["EVAL", APPEND, "2", `sse:${name}`, `sse:~seq:${name}`, "100"],
      ...[...entry, "0"],
    ]);
  },
  async restart(fixture) {
    // Without persistence: the new Redis starts empty.
    const redis = servers.get(fixture)!;
    await redis.restart();
    return new RedisBroker({ url: redis.url, onError: () => {} });
  },
});

function message(data: string): { topic: string; message: SSEMessage } {
  return { topic: "", message: { data } };
}

const KEEP = { replay: 100 };

/** The stream tag of an event id. */
function tagOf(id: string): string {
  return id.slice(id.indexOf(".") + 1);
}

/** The Redis entry id inside an event id (`<ms>-<seq>.<tag>`). */
function redisId(id: string): string {
  return id.slice(0, id.indexOf("."));
}

/** Orders event ids by their Redis ids, numerically. */
function byStreamId(a: string, b: string): number {
  const [aMs, aSeq] = redisId(a).split("-").map(BigInt);
  const [bMs, bSeq] = redisId(b).split("-").map(BigInt);
  return aMs! < bMs!
    ? -1
    : aMs! > bMs!
    ? 1
    : aSeq! < bSeq!
    ? -1
    : aSeq! > bSeq!
    ? 1
    : 0;
}

redisTest(
  "RedisBroker ids are the Redis entry ids tagged with the stream, ordered across instances, and entries are seq, topic and message fields",
  async () => {
    await using redis = await startRedis();
    const a = new RedisBroker({ url: redis.url, prefix: "app:" });
    const b = new RedisBroker({ url: redis.url, prefix: "app:" });
    const raw = await rawClient(redis.url);
    try {
      const ids: string[] = [];
      for (let i = 0; i < 20; i++) {
        const broker = i % 2 ? a : b;
        ids.push(
          await broker.publish("s", {
            topic: i % 3 ? "t" : "",
            message: { event: "e", data: `d${i}`, retry: i },
          }, { replay: 100 }),
        );
      }
      for (const id of ids) assert.match(id, /^\d+-\d+\.[0-9a-z]+$/);
      assert.deepEqual([...ids].sort(byStreamId), ids);
      assert.equal(new Set(ids).size, ids.length);
      // One tag per stream key, whichever instance published.
      assert.equal(new Set(ids.map((id) => id.split(".")[1])).size, 1);
      const stored = await raw.send(["XRANGE", "app:s", "-", "+"]) as [
        string,
        string[],
      ][];
      assert.deepEqual(stored.map(([id]) => id), ids.map(redisId));
      for (const [i, [, fields]] of stored.entries()) {
        assert.deepEqual(fields.filter((_, j) => j % 2 === 0), [
          "seq",
          "topic",
          "message",
        ]);
        // Numbered 1, 2, 3, … whichever instance published.
        assert.equal(fields[1], String(i + 1));
        assert.equal(fields[3], i % 3 ? "t" : "");
        assert.deepEqual(JSON.parse(fields[5]!), {
          event: "e",
          data: `d${i}`,
          retry: i,
        });
      }
    } finally {
      await raw.close();
      await Promise.all([a.close(), b.close()]);
    }
  },
);

redisTest(
  "RedisBroker trims a stream to about replay entries (XADD MAXLEN ~), and never below 100, so that readers find them",
  async () => {
    await using redis = await startRedis();
    const broker = new RedisBroker({ url: redis.url });
    const raw = await rawClient(redis.url);
    try {
      const cases: [string, number, number][] = [["s", 500, 500], [
        "t",
        0,
        100,
      ]];
      for (const [stream, replay, least] of cases) {
        await Promise.all(
          Array.from(
            { length: 1200 },
            (_, i) => broker.publish(stream, message(String(i)), { replay }),
          ),
        );
        const length = await raw.send(["XLEN", `sse:${stream}`]) as number;
        // At least that, plus at most a radix-tree node or two (100 each).
        assert.ok(
          length >= least && length <= least + 200,
          `XLEN ${length} with replay ${replay}`,
        );
      }
    } finally {
      await raw.close();
      await broker.close();
    }
  },
);

redisTest(
  "RedisBroker reads every stream of a process on one blocking connection, and a new stream joins it at once",
  async () => {
    await using redis = await startRedis();
    const broker = new RedisBroker({ url: redis.url });
    const publisher = new RedisBroker({ url: redis.url });
    const raw = await rawClient(redis.url);
    const subscriptions: SSEBrokerSubscription[] = [];
    try {
      const collectors: Collector[] = [];
      for (let stream = 0; stream < 10; stream++) {
        for (let i = 0; i < 5; i++) {
          const collector = new Collector();
          collectors.push(collector);
          subscriptions.push(
            await broker.subscribe(`s${stream}`, collector.onEntry),
          );
        }
      }
      const ids: string[] = [];
      for (let stream = 0; stream < 10; stream++) {
        ids.push(
          await publisher.publish(`s${stream}`, message("x"), {
            replay: 10,
          }),
        );
      }
      for (const [i, collector] of collectors.entries()) {
        await collector.until(1);
        assert.deepEqual(collector.ids, [ids[Math.floor(i / 5)]]);
      }
      // The broker: one connection to publish and query, one to read; the
      // publisher never subscribed: one; and this raw client.
      const clients = (await raw.send(["CLIENT", "LIST"]) as string)
        .trim().split("\n");
      assert.equal(clients.length, 4, clients.join("\n"));

      // The read in flight blocks for up to 10 s; a new stream must not wait
      // for it to time out.
      const late = new Collector();
      const started = performance.now();
      subscriptions.push(await broker.subscribe("late", late.onEntry));
      const id = await publisher.publish("late", message("y"), { replay: 10 });
      await late.until(1);
      assert.deepEqual(late.ids, [id]);
      const elapsed = performance.now() - started;
      assert.ok(elapsed < 2_000, `took ${elapsed} ms`);
    } finally {
      for (const subscription of subscriptions) subscription.unsubscribe();
      await raw.close();
      await Promise.all([broker.close(), publisher.close()]);
    }
  },
);

redisTest(
  "RedisBroker takes a node-redis client as a template and never uses or closes it",
  async () => {
    await using redis = await startRedis();
    // RESP3 and a type mapping on the template do not change what the broker
    // reads: its own connections use RESP2 and no mapping.
    const client = createClient({ url: redis.url, RESP: 3 });
    const broker = new RedisBroker({ client });
    try {
      const received = new Collector();
      const subscription = await broker.subscribe("s", received.onEntry);
      const ids = [
        await broker.publish("s", message("a"), { replay: 10 }),
        await broker.publish("s", message("b"), { replay: 10 }),
      ];
      await received.until(2);
      assert.deepEqual(received.ids, ids);
      const page = await broker.history("s", { after: ids[0]!, limit: 10 });
      assert.deepEqual(page?.map((e) => e.message.data), ["b"]);
      subscription.unsubscribe();
      assert.equal(client.isOpen, false);
    } finally {
      await broker.close();
    }
    assert.equal(client.isOpen, false);
    assert.throws(
      () => new RedisBroker({ client: {} as RedisClientTemplate }),
      TypeError,
    );
    assert.throws(
      () => new RedisBroker({ prefix: 1 as unknown as string }),
      /Invalid prefix/,
    );
  },
);

redisTest(
  "RedisBroker pages history in Redis id order, which compares ids as integers, not as strings",
  async () => {
    await using redis = await startRedis();
    const broker = new RedisBroker({ url: redis.url });
    const raw = await rawClient(redis.url);
    try {
      for (const id of ["9-1", "9-2", "9-10", "10-0", "100-0"]) {
        await raw.send([
          "XADD",
          "sse:s",
          id,
          "topic",
          "",
          "message",
          JSON.stringify({ data: id }),
        ]);
      }
      const tag = (await broker.publish("s", message("last"), { replay: 10 }))
        .split(".")[1];
      const all = await readAll(broker, "s", `9-1.${tag}`, 2);
      assert.deepEqual(all?.map((entry) => entry.message.data), [
        "9-2",
        "9-10",
        "10-0",
        "100-0",
        "last",
      ]);
    } finally {
      await raw.close();
      await broker.close();
    }
  },
);

redisTest(
  "RedisBroker history resumes from an id Redis still keeps, not from a trimmed one, nor another stream's",
  async () => {
    await using redis = await startRedis();
    const broker = new RedisBroker({ url: redis.url });
    const raw = await rawClient(redis.url);
    const add = (key: string, id: string) =>
      raw.send([
        "XADD",
        key,
        id,
        "topic",
        "",
        "message",
        JSON.stringify({ data: id }),
      ]);
    try {
      for (let seq = 1; seq <= 5; seq++) await add("sse:s", `1-${seq}`);
      // Another stream with the very same entry ids, as two streams written
      // in the same millisecond have.
      for (let seq = 1; seq <= 5; seq++) await add("sse:t", `1-${seq}`);
      await raw.send(["XTRIM", "sse:s", "MAXLEN", "3"]); // drops 1-1 and 1-2
      const sTag = tagOf(await broker.publish("s", message("6"), KEEP));
      const tTag = tagOf(await broker.publish("t", message("6"), KEEP));
      assert.notEqual(sTag, tTag);
      const kept = await broker.history("s", {
        after: `1-3.${sTag}`,
        limit: 2,
      });
      assert.deepEqual(kept?.map((entry) => entry.message.data), [
        "1-4",
        "1-5",
      ]);
      // Redis does not record which ids trimming removed (XINFO STREAM's
      // max-deleted-entry-id counts XDEL only), so even the newest trimmed
      // one cannot be told from one whose successors are gone.
      for (const after of ["1-2", "1-1", "0-1", "0-0"]) {
        assert.equal(
          await broker.history("s", { after: `${after}.${sTag}`, limit: 10 }),
          null,
          after,
        );
      }
      // The same entry id from the other stream is not a resume point here.
      assert.equal(
        await broker.history("s", { after: `1-3.${tTag}`, limit: 10 }),
        null,
      );
      // Bare Redis ids, non-canonical spellings, ids beyond 64 bits.
      for (
        const after of [
          "1-3",
          `1-03.${sTag}`,
          `01-3.${sTag}`,
          `1-3.${sTag}.`,
          `18446744073709551616-0.${sTag}`,
        ]
      ) {
        assert.equal(await broker.history("s", { after, limit: 10 }), null);
      }
    } finally {
      await raw.close();
      await broker.close();
    }
  },
);

redisTest(
  "RedisBroker publish rejects at once while Redis is unreachable, and subscribe and history too, each saying why",
  async () => {
    const url = await unreachableRedisUrl();
    const errors: Error[] = [];
    const broker = new RedisBroker({ url, onError: (e) => errors.push(e) });
    try {
      const started = performance.now();
      await assert.rejects(broker.publish("s", message("x"), { replay: 1 }), {
        message: /^Cannot publish to "s": .*ECONNREFUSED/,
      });
      // Not node-redis's "The client is closed": what is wrong, every time.
      await assert.rejects(broker.publish("s", message("x"), { replay: 1 }), {
        message: /^Cannot publish to "s": .*ECONNREFUSED/,
      });
      await assert.rejects(broker.subscribe("s", () => {}), {
        message: /^Cannot subscribe to "s": .*ECONNREFUSED/,
      });
      await assert.rejects(
        broker.history("s", { after: `1-0.${streamTag("sse:s")}`, limit: 1 }),
        /^Error: Cannot read the history of "s": .*ECONNREFUSED/,
      );
      // Four refusals, each at once: far from one commandTimeout (3 s) each.
      const took = performance.now() - started;
      assert.ok(took < 2_000, `${took} ms`);
      assert.equal(errors.length, 1);
      assert.match(errors[0]!.message, /^Redis connection failed: /);
    } finally {
      await broker.close();
    }
  },
);

redisTest(
  "RedisBroker with a wrong password says so in every rejection, and reports it once",
  async () => {
    await using redis = await startRedis({ args: ["--requirepass", "right"] });
    const errors: Error[] = [];
    const broker = new RedisBroker({
      url: redis.url.replace("redis://", "redis://:wrong@"),
      onError: (e) => errors.push(e),
    });
    try {
      for (let i = 0; i < 3; i++) {
        await assert.rejects(
          broker.publish("s", message("x"), { replay: 1 }),
          { message: /^Cannot publish to "s": .*WRONGPASS/ },
        );
      }
      await assert.rejects(broker.subscribe("s", () => {}), {
        message: /^Cannot subscribe to "s": .*WRONGPASS/,
      });
      assert.equal(errors.length, 1);
      assert.match(errors[0]!.message, /WRONGPASS/);
    } finally {
      await broker.close();
    }
  },
);

redisTest(
  "RedisBroker loses nothing across a Redis restart: publish rejects while it is down, and every entry stored reaches subscribers once",
  async () => {
    await using redis = await startRedis({ persistent: true });
    const errors = { a: [] as Error[], b: [] as Error[] };
    const a = new RedisBroker({
      url: redis.url,
      onError: (e) => errors.a.push(e),
    });
    const b = new RedisBroker({
      url: redis.url,
      onError: (e) => errors.b.push(e),
    });
    let c: RedisBroker | undefined;
    try {
      const received = new Collector();
      const subscription = await b.subscribe("s", received.onEntry);
      const ids: string[] = [];
      for (let i = 0; i < 10; i++) {
        ids.push(await a.publish("s", message(`before ${i}`), { replay: 100 }));
      }
      await received.until(10);

      await redis.stop();
      await assert.rejects(
        a.publish("s", message("while down"), { replay: 100 }),
        /^Error: Cannot publish to "s"/,
      );
      await redis.start();
      // Published by a fresh instance as soon as Redis is back, most likely
      // before b's reader has reconnected: b reads on from its cursor.
      c = new RedisBroker({ url: redis.url });
      for (let i = 0; i < 5; i++) {
        ids.push(
          await c.publish("s", message(`meanwhile ${i}`), { replay: 100 }),
        );
      }
      for (let i = 0; i < 5; i++) {
        ids.push(
          await publishWhenUp(() =>
            a.publish("s", message(`after ${i}`), { replay: 100 })
          ),
        );
      }
      await received.until(20);
      assert.deepEqual(received.ids, ids);
      // A client that saw only the first entries resumes from Redis's
      // persisted history.
      const missed = await readAll(b, "s", ids[4]!, 4);
      assert.deepEqual(missed?.map((entry) => entry.id), ids.slice(5));
      // One report per outage, not one per reconnection attempt.
      assert.equal(errors.a.length, 1, errors.a.join("\n"));
      assert.equal(errors.b.length, 1, errors.b.join("\n"));
      subscription.unsubscribe();
    } finally {
      await Promise.all([a.close(), b.close(), c?.close()]);
    }
  },
);

redisTest(
  "RedisBroker reconnects a template client's connections even with reconnectStrategy false",
  async () => {
    await using redis = await startRedis({ persistent: true });
    const client = createClient({
      url: redis.url,
      socket: { reconnectStrategy: false },
    });
    const broker = new RedisBroker({ client, onError: () => {} });
    const publisher = new RedisBroker({ url: redis.url, onError: () => {} });
    try {
      const received = new Collector();
      const subscription = await broker.subscribe("s", received.onEntry);
      const ids = [await publisher.publish("s", message("1"), { replay: 10 })];
      await received.until(1);
      await redis.restart();
      ids.push(
        await publishWhenUp(() =>
          publisher.publish("s", message("2"), { replay: 10 })
        ),
      );
      await received.until(2);
      ids.push(
        await publishWhenUp(() =>
          broker.publish("s", message("3"), { replay: 10 })
        ),
      );
      await received.until(3);
      assert.deepEqual(received.ids, ids);
      subscription.unsubscribe();
    } finally {
      await Promise.all([broker.close(), publisher.close()]);
    }
  },
);

// Two server processes (tests/fixtures/instance_server.ts) on one Redis, with
// real HTTP clients: what a deployment behind a load balancer does.

async function publishVia(instance: Instance, data: string): Promise<string> {
  const response = await instance.publish({ data });
  const text = await response.text();
  assert.equal(response.status, 200, text);
  return JSON.parse(text).id;
}

redisTest(
  "Two instances on one Redis deliver every event to the clients of both, in one order",
  async () => {
    await using redis = await startRedis();
    await using a = await startInstance({ redisUrl: redis.url });
    await using b = await startInstance({ redisUrl: redis.url });
    const readers = await Promise.all([
      EventReader.open(a.url),
      EventReader.open(a.url),
      EventReader.open(b.url),
      EventReader.open(b.url),
    ]);
    try {
      const ids: string[] = [];
      for (let i = 0; i < 20; i++) {
        ids.push(await publishVia(i % 2 ? a : b, `event ${i}`));
      }
      assert.deepEqual([...ids].sort(byStreamId), ids);
      for (const reader of readers) {
        await reader.until(20);
        assert.deepEqual(reader.ids, ids);
        assert.deepEqual(
          reader.data,
          ids.map((_, i) => `event ${i}`),
        );
      }
    } finally {
      await Promise.all(readers.map((reader) => reader.close()));
    }
  },
);

redisTest(
  "A client resumes on the other instance after the first is killed with SIGKILL, losing nothing",
  async () => {
    await using redis = await startRedis();
    const a = await startInstance({ redisUrl: redis.url });
    await using b = await startInstance({ redisUrl: redis.url });
    const first = await EventReader.open(a.url);
    let second: EventReader | undefined;
    try {
      const ids: string[] = [];
      // Some events through the instance about to die: once acknowledged,
      // they are in Redis.
      for (let i = 0; i < 5; i++) ids.push(await publishVia(a, `a ${i}`));
      // The rest through the other one, while the first is killed mid-stream.
      const publishing = (async () => {
        for (let i = 0; i < 40; i++) ids.push(await publishVia(b, `b ${i}`));
      })();
      await first.until(12);
      await a.stop("SIGKILL");
      await first.ended;
      await publishing;

      // The client reconnects (through the load balancer) to the survivor.
      const lastEventId = first.ids.at(-1)!;
      second = await EventReader.open(b.url, lastEventId);
      ids.push(await publishVia(b, "after"));
      const missed = ids.length - first.events.length;
      await second.until(missed);
      assert.deepEqual([...first.ids, ...second.ids], ids);
      assert.equal(new Set([...first.ids, ...second.ids]).size, ids.length);
    } finally {
      await first.close();
      await second?.close();
      await a.stop("SIGKILL");
    }
  },
);

redisTest(
  "Instances keep their clients across a Redis restart: publishing fails while it is down, every later event arrives once",
  async () => {
    await using redis = await startRedis({ persistent: true });
    await using a = await startInstance({ redisUrl: redis.url });
    await using b = await startInstance({ redisUrl: redis.url });
    const reader = await EventReader.open(a.url);
    try {
      const ids: string[] = [];
      for (let i = 0; i < 5; i++) ids.push(await publishVia(b, `before ${i}`));
      await reader.until(5);

      await redis.stop();
      const refused = await b.publish({ data: "while down" });
      assert.equal(refused.status, 503);
      assert.match(await refused.text(), /Cannot publish to "news"/);
      await redis.start();
      for (let i = 0; i < 5; i++) {
        ids.push(
          await publishWhenUp(async () => {
            const response = await b.publish({ data: `after ${i}` });
            const text = await response.text();
            if (response.status !== 200) throw new Error(text);
            return JSON.parse(text).id;
          }),
        );
      }
      await reader.until(10);
      assert.deepEqual(reader.ids, ids);
      assert.deepEqual(
        reader.data.slice(5),
        ids.slice(5).map((_, i) => `after ${i}`),
      );
    } finally {
      await reader.close();
    }
    // Each instance logged the outage once, not once per reconnection attempt.
    await a.stop();
    await b.stop();
    for (const instance of [a, b]) {
      const lines = instance.stderr.split("\n").filter((line) =>
        line.startsWith("RedisBroker:")
      );
      assert.equal(lines.length, 1, instance.stderr);
    }
  },
);

redisTest(
  "RedisBroker refuses an entry larger than maxEntrySize with a RangeError naming the limit, storing nothing",
  async () => {
    await using redis = await startRedis();
    const raw = await rawClient(redis.url);
    const small = new RedisBroker({ url: redis.url, maxEntrySize: 1_000 });
    const broker = new RedisBroker({ url: redis.url });
    try {
      // The topic and the message's JSON, in UTF-8: {"data":"…"} is 11
      // bytes around the data, and "é" takes two.
      const id = await small.publish("s", {
        topic: "t",
        message: { data: "é".repeat(494) },
      }, KEEP);
      await assert.rejects(
        small.publish("s", {
          topic: "t",
          message: { data: "é".repeat(494) + "x" },
        }, KEEP),
        (error: Error) => {
          assert.equal(error.name, "RangeError");
          assert.equal(
            error.message,
            'Entry too large for "s": 1001 bytes, the limit is 1000 (maxEntrySize)',
          );
          return true;
        },
      );
      // The default: 64 MiB. Before, 300 MB was sent and failed with "no
      // answer from Redis within 3000 ms" (the entry may still be stored),
      // and 500 MB with "The client is closed", at 2.5 GB of memory.
      // Refused before anything is sent: the time is that of serializing
      // and measuring 64 MiB (0.3-0.7 s on a busy 2-core machine, 1.7 s with
      // four CPU hogs beside it), with no wait for Redis.
      const huge = message("x".repeat(64 * 1024 * 1024));
      const started = performance.now();
      await assert.rejects(broker.publish("s", huge, KEEP), {
        name: "RangeError",
        message: /the limit is 67108864 \(maxEntrySize\)$/,
      });
      const took = performance.now() - started;
      assert.ok(took < 5_000, `refused after ${took.toFixed(0)} ms`);
      const stored = await raw.send(["XRANGE", "sse:s", "-", "+"]) as unknown[];
      assert.equal(stored.length, 1);
      assert.equal(tagOf(id), tagOf(`x.${streamTag("sse:s")}`));
      for (const maxEntrySize of [0, -1, 1.5, NaN]) {
        assert.throws(
          () => new RedisBroker({ maxEntrySize }),
          { name: "RangeError", message: /Invalid maxEntrySize/ },
        );
      }
    } finally {
      await raw.close();
      await Promise.all([small.close(), broker.close()]);
    }
  },
);

Deno.test("RedisBroker refuses at construction a url that can never reach Redis, naming it", async () => {
  // Before: accepted, then every publish rejected ("Protocol - http: - is not
  // a valid Redis protocol", "Invalid URL: 'not a url'").
  for (
    const [url, message] of [
      [
        "http://127.0.0.1:6379",
        "Invalid url: expected a redis: or rediss: URL, got http:",
      ],
      [
        "not a url",
        "Invalid url: expected a redis: or rediss: URL, got text that is not a URL",
      ],
      [
        "",
        "Invalid url: expected a redis: or rediss: URL, got text that is not a URL",
      ],
    ] as [string, string][]
  ) {
    assert.throws(() => new RedisBroker({ url }), {
      name: "TypeError",
      message,
    });
  }
  // The password stays out of the message.
  assert.throws(
    () => new RedisBroker({ url: "http://user:secret@127.0.0.1/" }),
    (error: Error) => !error.message.includes("secret"),
  );
  for (const url of ["redis://127.0.0.1:1", "rediss://h:1/0", "REDIS://h"]) {
    await new RedisBroker({ url }).close();
  }
});

Deno.test("RedisBroker counts an entry's bytes as UTF-8 does, lone surrogates included", () => {
  fc.assert(
    fc.property(fc.string({ unit: "binary" }), (text) => {
      assert.equal(utf8Length(text), new TextEncoder().encode(text).length);
    }),
    { numRuns: 2_000 },
  );
  for (const text of ["\ud800", "\udc00", "\ud800x", "a\ud83d\ude00b", ""]) {
    assert.equal(utf8Length(text), new TextEncoder().encode(text).length);
  }
});
