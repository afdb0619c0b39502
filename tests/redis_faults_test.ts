// Copyright the sse authors. MIT license.
// RedisBroker under the faults real deployments meet, each against a real
// redis-server: a Redis that stops answering (SIGSTOP, connections still
// open), a Redis that restarts, a Redis that evicts keys under maxmemory.
import assert from "node:assert/strict";
import { RedisBroker, type SSEBrokerEntry, type SSEMessage } from "../redis.ts";
import { Collector } from "./_broker_contract.ts";
import { createClient } from "@redis/client";
import { APPEND } from "../_redis_entry.ts";
import {
  publishWhenUp,
  type RawClient,
  rawClient,
  type RedisServer,
  type RedisServerOptions,
  redisTest,
  runWhileHeld,
  startRedis,
  unreachableRedisUrl,
} from "./_redis.ts";

/** The bound the tests give every Redis command, in ms. */
const TIMEOUT = 500;
const KEEP = { replay: 100 };
/** What a bounded wait may take beyond its bound on a loaded machine. */
const SLACK = 1_000;

function message(data: string): { topic: string; message: SSEMessage } {
  return { topic: "", message: { data } };
}

/** How long a promise takes to settle, in ms, and how. */
async function timed(
  promise: Promise<unknown>,
): Promise<{ ms: number; error: unknown }> {
  const started = performance.now();
  let error: unknown = undefined;
  try {
    await promise;
  } catch (caught) {
    error = caught;
  }
  return { ms: performance.now() - started, error };
}

/** Resolves after `ms` milliseconds. */
function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Collects what a subscription delivers with the time each entry arrived,
 * to measure how late delivery is once Redis is back.
 */
class TimedCollector {
  readonly collector = new Collector();
  readonly arrivals = new Map<string, number>();
  readonly onEntry = (entry: SSEBrokerEntry): void => {
    this.arrivals.set(entry.id, performance.now());
    this.collector.onEntry(entry);
  };
}

/**
 * Publishes as soon as Redis takes it again; resolves with the id and how
 * long after the publish resolved the subscriber had it (negative when the
 * read loop was faster than the publish's reply).
 */
async function deliveryDelay(
  broker: RedisBroker,
  received: TimedCollector,
  data: string,
): Promise<{ id: string; ms: number }> {
  const id = await publishWhenUp(() =>
    broker.publish("s", message(data), { replay: 100 })
  );
  const stored = performance.now();
  await received.collector.untilId(id);
  return { id, ms: received.arrivals.get(id)! - stored };
}

interface Fixture {
  redis: RedisServer;
  /** A broker whose commands are bounded at {@linkcode TIMEOUT}. */
  broker: RedisBroker;
  /** What it reported through `onError`. */
  errors: Error[];
}

/**
 * Runs `fn` with a fresh Redis and a broker on it; thaws Redis and closes
 * both whatever happens.
 */
function faultTest(
  name: string,
  fn: (fixture: Fixture) => Promise<void>,
  options: RedisServerOptions = {},
): void {
  redisTest(name, async () => {
    await using redis = await startRedis(options);
    const errors: Error[] = [];
    const broker = new RedisBroker({
      url: redis.url,
      commandTimeout: TIMEOUT,
      onError: (error) => errors.push(error),
    });
    try {
      await fn({ redis, broker, errors });
    } finally {
      redis.thaw();
      await broker.close();
    }
  });
}

faultTest(
  "RedisBroker publish rejects within commandTimeout while Redis is frozen, and publishes again once it thaws",
  async ({ redis, broker, errors }) => {
    const received = new TimedCollector();
    const subscription = await broker.subscribe("s", received.onEntry);
    const before = await broker.publish("s", message("before"), {
      replay: 100,
    });
    await received.collector.untilId(before);

    redis.freeze();
    const first = await timed(
      broker.publish("s", message("frozen 1"), { replay: 100 }),
    );
    assert.match(
      String(first.error),
      /^Error: Cannot publish to "s": no answer from Redis within 500 ms/,
    );
    assert.ok(
      first.ms >= TIMEOUT - 50 && first.ms < TIMEOUT + SLACK,
      `rejected after ${first.ms} ms`,
    );
    // Still frozen: the next publish is not held longer either.
    const second = await timed(
      broker.publish("s", message("frozen 2"), { replay: 100 }),
    );
    assert.ok(second.error instanceof Error);
    assert.ok(second.ms < TIMEOUT + SLACK, `rejected after ${second.ms}`);
    redis.thaw();

    // What Redis had read before it froze may be stored now (publish said
    // it could not tell); what comes next reaches the subscriber at once.
    const after = await deliveryDelay(broker, received, "after");
    assert.ok(after.ms < 250, `delivered ${after.ms} ms after publish`);
    assert.deepEqual(
      received.collector.entries.map((entry) => entry.message.data).filter((
        data,
      ) => data !== "frozen 1" && data !== "frozen 2"),
      ["before", "after"],
    );
    assert.equal(errors.length, 1, errors.join("\n"));
    assert.match(errors[0]!.message, /no answer from Redis within 500 ms/);
    subscription.unsubscribe();
  },
);

faultTest(
  "RedisBroker subscribe, history and publish in flight together all reject within commandTimeout while Redis is frozen, for that reason",
  async ({ redis, broker }) => {
    const id = await broker.publish("s", message("x"), { replay: 100 });
    redis.freeze();
    // A new stream (where does it end?), a resume (what came after?) and a
    // publish, all waiting on the same connection.
    const [subscribing, reading, publishing] = await Promise.all([
      timed(broker.subscribe("t", () => {})),
      timed(broker.history("s", { after: id, limit: 10 })),
      timed(broker.publish("s", message("y"), { replay: 100 })),
    ]);
    assert.match(
      String(subscribing.error),
      /^Error: Cannot subscribe to "t": no answer from Redis within 500 ms/,
    );
    assert.match(
      String(reading.error),
      /^Error: Cannot read the history of "s": no answer from Redis within 500 ms/,
    );
    assert.match(
      String(publishing.error),
      /^Error: Cannot publish to "s": no answer from Redis within 500 ms/,
    );
    for (const { ms } of [subscribing, reading, publishing]) {
      assert.ok(ms < TIMEOUT + SLACK, `rejected after ${ms} ms`);
    }
  },
);

faultTest(
  "RedisBroker close completes within commandTimeout while Redis is frozen, with a publish in flight",
  async ({ redis, broker }) => {
    const subscription = await broker.subscribe("s", () => {});
    await broker.publish("s", message("x"), { replay: 100 });
    redis.freeze();
    const publishing = timed(
      broker.publish("s", message("y"), { replay: 100 }),
    );
    const closing = await timed(broker.close());
    assert.equal(closing.error, undefined);
    assert.ok(closing.ms < TIMEOUT + SLACK, `closed after ${closing.ms} ms`);
    assert.ok((await publishing).error instanceof Error);
    subscription.unsubscribe();
  },
);

faultTest(
  "RedisBroker publish and close each complete within commandTimeout when Redis froze before the broker first connected",
  async ({ redis, broker }) => {
    redis.freeze();
    // The TCP connection succeeds (the kernel accepts it), the handshake
    // gets no answer.
    const published = await timed(
      broker.publish("s", message("x"), { replay: 100 }),
    );
    assert.match(String(published.error), /no answer from Redis/);
    assert.ok(published.ms < TIMEOUT + SLACK, `after ${published.ms} ms`);
    const subscribing = timed(broker.subscribe("s", () => {}));
    await sleep(50);
    const closing = await timed(broker.close());
    assert.equal(closing.error, undefined);
    assert.ok(closing.ms < TIMEOUT + SLACK, `closed after ${closing.ms} ms`);
    assert.ok((await subscribing).error instanceof Error);
  },
);

faultTest(
  "RedisBroker delivers again right after it reconnects to a thawed Redis, also when the freeze outlasted its blocking read",
  async ({ redis, broker }) => {
    const received = new TimedCollector();
    const subscription = await broker.subscribe("s", received.onEntry);
    const first = await broker.publish("s", message("first"), {
      replay: 100,
    });
    await received.collector.untilId(first);
    redis.freeze();
    await assert.rejects(
      broker.publish("s", message("frozen"), { replay: 100 }),
    );
    // Longer than a blocking read (2 s) plus its bound: the reader gives up
    // on its connection too, and reconnects.
    await sleep(3_000);
    redis.thaw();
    const after = await deliveryDelay(broker, received, "after");
    assert.ok(after.ms < 250, `delivered ${after.ms} ms after publish`);
    subscription.unsubscribe();
  },
);

faultTest(
  "RedisBroker delivers again right after it reconnects to a restarted Redis, without sleeping out its read backoff",
  async ({ redis, broker }) => {
    const publisher = new RedisBroker({ url: redis.url, onError: () => {} });
    try {
      const received = new TimedCollector();
      const subscription = await broker.subscribe("s", received.onEntry);
      const first = await publisher.publish("s", message("first"), {
        replay: 100,
      });
      await received.collector.untilId(first);
      await redis.stop();
      // Long enough for the read loop's backoff to reach its longest waits.
      await sleep(2_000);
      await redis.start();
      const after = await deliveryDelay(broker, received, "after");
      assert.ok(after.ms < 250, `delivered ${after.ms} ms after publish`);
      // And another instance's publish too.
      const other = await publishWhenUp(() =>
        publisher.publish("s", message("other"), { replay: 100 })
      );
      await received.collector.untilId(other);
      assert.deepEqual(received.collector.ids, [first, after.id, other]);
      subscription.unsubscribe();
    } finally {
      await publisher.close();
    }
  },
  { persistent: true },
);

redisTest(
  "RedisBroker close ends a connection attempt in flight at once, leaving no timer behind",
  async () => {
    const url = await unreachableRedisUrl();
    // Where the socket is when close() comes depends on timing: try several.
    for (let ticks = 0; ticks < 8; ticks++) {
      const broker = new RedisBroker({ url, onError: () => {} });
      // The writer's first attempt fails, so the publish does.
      await assert.rejects(broker.publish("s", message("x"), { replay: 1 }));
      // The read loop's reader starts connecting, and subscribe rejects as
      // soon as the writer cannot find where the stream ends; close() comes
      // while that socket may still connect. node-redis never settles a
      // connect() whose socket was destroyed then.
      const subscribing = broker.subscribe("s", () => {});
      await assert.rejects(subscribing);
      for (let tick = 0; tick < ticks; tick++) await sleep(0);
      const closing = await timed(broker.close());
      assert.ok(closing.ms < 500, `closed after ${closing.ms} ms`);
    }
  },
);

redisTest(
  "RedisBroker never reuses an id and delivers every entry when maxmemory evicts the stream under load",
  async () => {
    await using redis = await startRedis({
      args: ["--maxmemory", "4mb", "--maxmemory-policy", "allkeys-lru"],
    });
    const raw = await rawClient(redis.url);
    // Counts the evictions of the stream's key as they happen.
    await raw.send(["CONFIG", "SET", "notify-keyspace-events", "Ke"]);
    const listener = createClient({ url: redis.url, RESP: 2 });
    await listener.connect();
    let evictions = 0;
    await listener.subscribe("__keyspace@0__:sse:s", () => evictions++);
    const errors: Error[] = [];
    const broker = new RedisBroker({
      url: redis.url,
      onError: (error) => errors.push(error),
    });
    const received = new Collector();
    const subscription = await broker.subscribe("s", received.onEntry);
    // The application's other keys keep memory at the limit.
    let filling = true;
    const filler = (async () => {
      for (let i = 0; filling; i++) {
        await raw.send(["SET", `cache:${i}`, "x".repeat(20_000)]).catch(
          () => {},
        );
      }
    })();
    const ids: string[] = [];
    try {
      const data = "x".repeat(1_000);
      const deadline = performance.now() + 10_000;
      while (evictions < 3 && performance.now() < deadline) {
        // Bursts of publishes in flight together, as a busy app has.
        const burst = await Promise.allSettled(
          Array.from(
            { length: 8 },
            () => broker.publish("s", message(data), { replay: 1_000 }),
          ),
        );
        for (const outcome of burst) {
          if (outcome.status === "fulfilled") ids.push(outcome.value);
        }
      }
      filling = false;
      await filler;
      assert.ok(evictions >= 3, `the stream was evicted ${evictions} times`);
      assert.equal(ids.length - new Set(ids).size, 0, "ids issued twice");
      // Once memory is free again, the next entry arrives as usual.
      await raw.send(["FLUSHDB"]);
      ids.push(await broker.publish("s", message("last"), KEEP));
      await received.untilId(ids.at(-1)!);
      // In order, each once. Entries are missing only where Redis threw them
      // away before the reader got to them: right before the stream started
      // again (its first entry, `<ms>-0`, is what follows a missing run).
      // Each such run is reported, naming where the stream started again.
      let at = -1;
      for (const id of received.ids) {
        const next = ids.indexOf(id, at + 1);
        assert.ok(next > at, `${id} out of order or twice`);
        if (next > at + 1) {
          assert.match(id, /^\d+-0\./, `lost before ${id}`);
          // As entries deleted with the stream, or with its count as well.
          assert.ok(
            errors.some((error) =>
              error.message.includes(`before ${id} `) ||
              error.message.includes(`started again at ${id}:`)
            ),
            `the loss before ${id} is reported: ${errors.join("\n")}`,
          );
        }
        at = next;
      }
    } finally {
      filling = false;
      await filler;
      subscription.unsubscribe();
      await broker.close();
      await listener.close();
      await raw.close();
    }
  },
);

/** XREAD calls Redis has served so far. */
async function xreads(raw: { send(args: string[]): Promise<unknown> }) {
  const stats = String(await raw.send(["INFO", "commandstats"]));
  return Number(/cmdstat_xread:calls=(\d+)/.exec(stats)?.[1] ?? 0);
}

redisTest(
  "RedisBroker does not spin on a reply naming a key it did not ask for: it reports it once and waits",
  async () => {
    await using redis = await startRedis();
    const raw = await rawClient(redis.url);
    // Between the broker and Redis, a proxy that hands back stream "s" under
    // another name (as a lone surrogate in a key once did: Redis stores it as
    // U+FFFD and answers with that).
    const real = createClient({ url: redis.url });
    const template = {
      options: real.options,
      duplicate(overrides: { RESP: 2; disableOfflineQueue: boolean }) {
        const client = real.duplicate(overrides);
        const send = client.sendCommand.bind(client);
        client.sendCommand = (async (args: string[]) => {
          const reply = await send(args);
          if (args[0] !== "XREAD" || !Array.isArray(reply)) return reply;
          return reply.map(([key, entries]) => [
            key === "sse:s" ? "sse:s\ufffd" : key,
            entries,
          ]);
        }) as typeof client.sendCommand;
        return client;
      },
    };
    const errors: Error[] = [];
    const broker = new RedisBroker({
      client: template,
      onError: (error) => errors.push(error),
    });
    try {
      const lost = new Collector();
      const subscription = await broker.subscribe("s", lost.onEntry);
      await broker.publish("s", message("renamed"), KEEP);
      const before = await xreads(raw);
      await sleep(1_000);
      const calls = await xreads(raw) - before;
      // Before: 16 707 in that second, each answered at once.
      assert.ok(calls <= 10, `${calls} XREAD calls in 1 s`);
      assert.equal(errors.length, 1, errors.join("\n"));
      assert.match(errors[0]!.message, /"sse:s\ufffd", which this broker/);
      assert.deepEqual(lost.ids, []);
      subscription.unsubscribe();
    } finally {
      await broker.close();
      await raw.close();
    }
  },
);

redisTest(
  "RedisBroker reads big entries a few at a time, so that a reader behind never takes them all in one reply",
  async () => {
    await using redis = await startRedis();
    const raw = await rawClient(redis.url);
    const broker = new RedisBroker({ url: redis.url, commandTimeout: 10_000 });
    try {
      const received = new Collector();
      const subscription = await broker.subscribe("s", received.onEntry);
      const big = JSON.stringify({ data: "x".repeat(4 * 1024 * 1024) });
      // Stored at once (one transaction), as for a reader that fell behind.
      const store = async (count: number) => {
        await raw.send(["MULTI"]);
        for (let i = 0; i < count; i++) {
          await raw.send(["XADD", "sse:s", "*", "topic", "", "message", big]);
        }
        await raw.send(["EXEC"]);
      };
      await store(4);
      await received.until(4);
      const before = await xreads(raw);
      await store(20);
      await received.until(24);
      // 4 MiB entries, about 16 MiB a reply: four or five per read. Before:
      // one XREAD took all 20 (80 MiB; 40 of 10 MB peaked at 779 MB of
      // memory in the reader, 283 MB now).
      const calls = await xreads(raw) - before;
      assert.ok(calls >= 5, `${calls} XREAD calls for 20 entries of 4 MiB`);
      subscription.unsubscribe();
    } finally {
      await broker.close();
      await raw.close();
    }
  },
);

redisTest(
  "RedisBroker reads a stream again once its key, overwritten by hand, is removed",
  async () => {
    await using redis = await startRedis();
    const raw = await rawClient(redis.url);
    const errors: Error[] = [];
    const broker = new RedisBroker({
      url: redis.url,
      onError: (error) => errors.push(error),
    });
    try {
      const s = new Collector();
      const t = new Collector();
      const subscriptions = [
        await broker.subscribe("s", s.onEntry),
        await broker.subscribe("t", t.onEntry),
      ];
      await raw.send(["SET", "sse:s", "not a stream"]);
      await assert.rejects(
        broker.publish("s", message("refused"), KEEP),
        /^Error: Cannot publish to "s": WRONGTYPE/,
      );
      // Before: every stream of the process stopped, XREAD failing forever.
      const [first] = [await broker.publish("t", message("t1"), KEEP)];
      await t.untilId(first!);
      assert.equal(errors.length, 1, errors.join("\n"));
      assert.match(
        errors[0]!.message,
        /^Stream "s" cannot be read: .* a string/,
      );
      await raw.send(["DEL", "sse:s"]);
      const again = await broker.publish("s", message("again"), KEEP);
      await s.untilId(again);
      assert.deepEqual(s.ids, [again]);
      for (const subscription of subscriptions) subscription.unsubscribe();
    } finally {
      await broker.close();
      await raw.close();
    }
  },
);

/** Opens a broker and a subscription to "s" on a fresh Redis, for `fn`. */
async function withReader(
  fn: (context: {
    redis: RedisServer;
    raw: RawClient;
    broker: RedisBroker;
    received: Collector;
    errors: Error[];
  }) => Promise<void>,
): Promise<void> {
  await using redis = await startRedis();
  const raw = await rawClient(redis.url);
  const errors: Error[] = [];
  const broker = new RedisBroker({
    url: redis.url,
    onError: (error) => errors.push(error),
  });
  try {
    const received = new Collector();
    const subscription = await broker.subscribe("s", received.onEntry);
    await fn({ redis, raw, broker, received, errors });
    subscription.unsubscribe();
  } finally {
    await broker.close();
    await raw.close();
  }
}

/** `publish` as another instance runs it, for {@linkcode runWhileHeld}. */
function publishCommand(count: number, data: string): [number, ...string[]] {
  const entry = ["", JSON.stringify({ data })];
  const keys = ["2", "sse:s", "sse:~seq:s"];
  return [count, "EVAL", APPEND, ...keys, "100", ...entry, "0"];
}

/**
 * Publishes "first", then runs `commands` while the process is held back,
 * then publishes "last": the data received from "first" on, with any "old"
 * (published before the drop the commands hold) left out but counted.
 */
async function heldDrop(
  { redis, broker, received }: {
    redis: RedisServer;
    broker: RedisBroker;
    received: Collector;
  },
  ...commands: [number, ...string[]][]
): Promise<{ data: unknown[]; ids: string[]; old: number }> {
  const had = received.entries.length;
  const [first] = [await broker.publish("s", message("first"), KEEP)];
  await received.untilId(first!);
  runWhileHeld(redis, ...commands);
  const last = await broker.publish("s", message("last"), KEEP);
  await received.untilId(last);
  const entries = received.entries.slice(had);
  const old = entries.filter((entry) => entry.message.data === "old").length;
  const kept = entries.filter((entry) => entry.message.data !== "old");
  return {
    data: kept.map((entry) => entry.message.data),
    ids: kept.map((entry) => entry.id),
    old,
  };
}

redisTest(
  "RedisBroker reports the entries of a stream deleted while its reader was behind, and a stream dropped with its count, once, naming where it read up to",
  () =>
    withReader(async (context) => {
      const { raw, broker, received, errors } = context;
      const expected = ["first", "new", "new", "new", "last"];
      // Held back while the stream gets entries, is deleted (an operator's
      // DEL, an eviction) and starts again: its count outlives it, so the
      // loss is known exactly. Before: nothing reported.
      const deleted = await heldDrop(
        context,
        publishCommand(3, "old"),
        [1, "DEL", "sse:s"],
        publishCommand(3, "new"),
      );
      // A blocking read already in flight got the first "old" one.
      assert.ok(deleted.old <= 1, `${deleted.old} old`);
      assert.deepEqual(deleted.data, expected);
      assert.equal(errors.length, 1, errors.join("\n"));
      const lost = 3 - deleted.old;
      assert.match(
        errors[0]!.message,
        new RegExp(
          `^Entries after \\S+ and before ${
            deleted.ids[1]!.replace(".", "\\.")
          } of stream "s" \\(key "sse:s"\\) were trimmed or deleted before this broker read them: ${lost} entr(y|ies) \\(seq ${
            2 + deleted.old
          } to 4\\)`,
        ),
      );
      // Deleted once read: nothing lost, nothing reported.
      await raw.send(["DEL", "sse:s"]);
      const again = await broker.publish("s", message("again"), KEEP);
      await received.untilId(again);
      assert.equal(errors.length, 1, errors.join("\n"));
      // Both keys gone (FLUSHALL, an eviction of both): what was lost is not
      // known, only where.
      const flushed = await heldDrop(
        context,
        publishCommand(3, "old"),
        [1, "FLUSHALL"],
        publishCommand(3, "new"),
      );
      assert.deepEqual(flushed.data, expected);
      assert.equal(errors.length, 2, errors.join("\n"));
      const restart = received.ids.indexOf(flushed.ids[1]!);
      assert.equal(
        errors[1]!.message,
        `The stream "s" (key "sse:s") was dropped with its count (both keys evicted, flushed or deleted) and started again at ${
          received.ids[restart]
        }: entries stored after ${
          received.ids[restart - 1]
        } that this broker had not read yet, if any, are lost to its subscribers`,
      );
    }),
);

redisTest(
  "RedisBroker reads entries without a seq (an older version's, or written by hand) among its own, and reports no gap",
  () =>
    withReader(async ({ raw, broker, received, errors }) => {
      const ids: string[] = [];
      const older = async (data: string) => {
        const id = await raw.send([
          "XADD",
          "sse:s",
          "*",
          "topic",
          "",
          "message",
          JSON.stringify({ data }),
        ]) as string;
        ids.push(`${id}.${ids[0]!.split(".")[1]}`);
      };
      ids.push(await broker.publish("s", message("1"), KEEP));
      await older("2");
      await older("3");
      ids.push(await broker.publish("s", message("4"), KEEP));
      ids.push(await broker.publish("s", message("5"), KEEP));
      await older("6");
      ids.push(await broker.publish("s", message("7"), KEEP));
      await received.untilId(ids.at(-1)!);
      assert.deepEqual(received.ids, ids);
      assert.deepEqual(
        received.entries.map((entry) => entry.message.data),
        ["1", "2", "3", "4", "5", "6", "7"],
      );
      // The count lost alone (an eviction took that key only): numbering
      // goes on from the newest entry's, or starts again after one without.
      await raw.send(["DEL", "sse:~seq:s"]);
      ids.push(await broker.publish("s", message("8"), KEEP));
      await older("9");
      await raw.send(["DEL", "sse:~seq:s"]);
      ids.push(await broker.publish("s", message("10"), KEEP));
      ids.push(await broker.publish("s", message("11"), KEEP));
      await received.untilId(ids.at(-1)!);
      assert.deepEqual(received.ids, ids);
      const stored = await raw.send(["XRANGE", "sse:s", "-", "+"]) as [
        string,
        string[],
      ][];
      assert.deepEqual(
        stored.map(([, fields]) => fields[0] === "seq" ? fields[1] : "-"),
        ["1", "-", "-", "2", "3", "-", "4", "5", "-", "1", "2"],
      );
      const kept = await broker.history("s", { after: ids[0]!, limit: 20 });
      assert.deepEqual(kept?.map((entry) => entry.id), ids.slice(1));
      assert.deepEqual(errors, []);
    }),
);

redisTest(
  "RedisBroker history answers null, never a page with a hole, for a resume whose window was trimmed, also between two pages",
  () =>
    withReader(async ({ redis, broker, received }) => {
      const ids: string[] = [];
      for (let i = 0; i < 10; i++) {
        ids.push(await broker.publish("s", message(String(i)), KEEP));
      }
      await received.untilId(ids.at(-1)!);
      const page = await broker.history("s", { after: ids[0]!, limit: 3 });
      assert.deepEqual(page?.map((entry) => entry.id), ids.slice(1, 4));
      // A burst trims the rest of this client's window before its next page.
      runWhileHeld(redis, publishCommand(400, "burst"));
      for (const after of [ids[0]!, page!.at(-1)!.id, ids.at(-1)!]) {
        assert.equal(
          await broker.history("s", { after, limit: 3 }),
          null,
          `after ${after}`,
        );
      }
    }),
);

redisTest(
  "RedisBroker refuses a stream name beginning with ~, whose key would be another stream's count",
  () =>
    withReader(async ({ broker, errors }) => {
      const first = await broker.publish("news", message("a"), KEEP);
      await broker.publish("news", message("b"), KEEP);
      // Before: stream "~seq:news" lived at key "sse:~seq:news", where the
      // publish script counts the entries of "news": publishing to it failed
      // with Redis's WRONGTYPE.
      const refused = /^Invalid stream name: "~seq:news" begins with "~"/;
      await assert.rejects(
        broker.publish("~seq:news", message("x"), KEEP),
        (error) => error instanceof TypeError && refused.test(error.message),
      );
      await assert.rejects(
        broker.subscribe("~seq:news", () => {}),
        (error) => error instanceof TypeError && refused.test(error.message),
      );
      await assert.rejects(
        broker.history("~seq:news", { after: "0", limit: 10 }),
        (error) => error instanceof TypeError && refused.test(error.message),
      );
      await broker.publish("news", message("c"), KEEP);
      const after = await broker.history("news", { after: first, limit: 10 });
      assert.deepEqual(after?.map((e) => e.message.data), ["b", "c"]);
      assert.deepEqual(errors, []);
    }),
);
