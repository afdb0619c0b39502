// Copyright the sse authors. MIT license.
// SSEChannel on RedisBroker, over a real Deno.serve, real sockets and a real
// redis-server: what a client sees when another process wrote entries it
// cannot use, when it resumes with another channel's id, when a hook
// publishes during a fan-out, and when Redis stops answering.
import assert from "node:assert/strict";
import { RedisBroker } from "../redis.ts";
import { SSEChannel, type SSEDisconnectReason } from "../server.ts";
import type { SSEMessage } from "../encoder.ts";
import { SSEParserStream } from "../parser.ts";
import { within } from "./_channel.ts";
import { EventReader, startInstance } from "./_instance.ts";
import {
  rawClient,
  type RedisServer,
  redisTest,
  runWhileHeld,
  startRedis,
} from "./_redis.ts";
import { APPEND } from "../_redis_entry.ts";
import { assertClientsRecoverFromGap, GAP_STREAM } from "./_gap.ts";

/** What {@linkcode serveChannels} runs. */
interface Served {
  url: string;
  broker: RedisBroker;
  channels: Map<string, SSEChannel<string>>;
  /** What the broker reported through `onError`. */
  brokerErrors: Error[];
  /** What the channels reported through `onError`. */
  channelErrors: Error[];
  /** What `init` was told, per connection, in order. */
  inits: { channel: string; lastEventId: string; resumed: boolean }[];
  /** Errors Deno.serve saw from the handler (none expected). */
  serveErrors: unknown[];
  close(): Promise<void>;
}

/**
 * Channels on one RedisBroker, served at `/<channel>/<client>/events`
 * (the client's name is its context). `init` sends a snapshot, the
 * channel's name, to a client that did not resume.
 */
function serveChannels(
  redis: RedisServer,
  names: string[],
  options: {
    commandTimeout?: number;
    filter?: (context: string, message: SSEMessage) => boolean;
    onDisconnect?: (
      channel: SSEChannel<string>,
      context: string,
      reason: SSEDisconnectReason,
    ) => void;
  } = {},
): Served {
  const brokerErrors: Error[] = [];
  const channelErrors: Error[] = [];
  const inits: Served["inits"] = [];
  const serveErrors: unknown[] = [];
  const broker = new RedisBroker({
    url: redis.url,
    onError: (error) => brokerErrors.push(error),
    ...options.commandTimeout === undefined
      ? {}
      : { commandTimeout: options.commandTimeout },
  });
  const channels = new Map<string, SSEChannel<string>>();
  for (const name of names) {
    const channel: SSEChannel<string> = new SSEChannel<string>({
      name,
      broker,
      replay: 1000,
      keepAlive: 0,
      onError: (error) => channelErrors.push(error),
      onConnect: (request) => new URL(request.url).pathname.split("/")[2]!,
      init(_, lastEventId, { resumed }) {
        inits.push({ channel: name, lastEventId, resumed });
        return resumed ? [] : [{ event: "snapshot", data: name }];
      },
      ...options.filter === undefined ? {} : { filter: options.filter },
      ...options.onDisconnect === undefined ? {} : {
        onDisconnect: (context, { reason }) =>
          options.onDisconnect!(channel, context, reason),
      },
    });
    channels.set(name, channel);
  }
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen() {},
    onError(error) {
      serveErrors.push(error);
      return new Response("Internal Server Error", { status: 500 });
    },
  }, (request) => {
    const name = new URL(request.url).pathname.split("/")[1] ?? "";
    const channel = channels.get(name);
    if (channel === undefined) return new Response(null, { status: 404 });
    return channel.connect(request);
  });
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    broker,
    channels,
    brokerErrors,
    channelErrors,
    inits,
    serveErrors,
    async close() {
      for (const channel of channels.values()) await channel.close();
      await broker.close();
      await server.shutdown();
    },
  };
}

/** Writes a stream entry as another program would, with raw fields. */
async function xadd(
  redis: RedisServer,
  key: string,
  id: string,
  fields: string[],
): Promise<string> {
  const raw = await rawClient(redis.url);
  try {
    return await raw.send(["XADD", key, id, ...fields]) as string;
  } finally {
    await raw.close();
  }
}

/** The Redis id inside an event id, as two integers, for ordering. */
function position(id: string): [bigint, bigint] {
  const [ms, seq] = id.slice(0, id.indexOf(".")).split("-").map(BigInt);
  return [ms!, seq!];
}

function increasing(ids: string[]): boolean {
  for (let i = 1; i < ids.length; i++) {
    const [aMs, aSeq] = position(ids[i - 1]!);
    const [bMs, bSeq] = position(ids[i]!);
    if (aMs > bMs || (aMs === bMs && aSeq >= bSeq)) return false;
  }
  return true;
}

/** One line, no stack trace: what a log line may be. */
function assertOneLine(error: Error): void {
  assert.ok(error instanceof Error);
  assert.doesNotMatch(error.message, /\n/, error.message);
}

/**
 * Entries another process might write: the reason each is refused, and
 * whether the broker (it cannot decode it) or the channel (the encoder
 * cannot frame it) refuses it.
 */
const POISON: { fields: string[]; by: "broker" | "channel" }[] = [
  {
    fields: ["topic", "", "message", '{"event":"a\\nb","data":"x"}'],
    by: "channel",
  },
  {
    fields: ["topic", "", "message", '{"retry":-5,"data":"x"}'],
    by: "channel",
  },
  { fields: ["topic", "", "message", "{}"], by: "channel" },
  { fields: ["topic", "", "message", "{nope"], by: "broker" },
  { fields: ["topic", "", "message", '"a string"'], by: "broker" },
  { fields: ["topic", "", "message", "[1,2]"], by: "broker" },
  { fields: ["topic", "", "message", '{"data":5}'], by: "broker" },
  { fields: ["message", '{"data":"no topic"}'], by: "broker" },
  { fields: ["topic", ""], by: "broker" },
  { fields: ["foreign", "field"], by: "broker" },
];

redisTest(
  "SSEChannel on RedisBroker skips entries another process wrote that cannot be decoded or framed, live and on resume, reporting each in one line",
  async () => {
    await using redis = await startRedis();
    const served = serveChannels(redis, ["news"]);
    const channel = served.channels.get("news")!;
    const live = await EventReader.open(`${served.url}/news/x`);
    let resumed: EventReader | undefined;
    try {
      const before = await channel.publish({ data: "before" });
      const poison: string[] = [];
      for (const { fields } of POISON) {
        poison.push(await xadd(redis, "sse:news", "*", fields));
      }
      const after = await channel.publish({ data: "after" });
      await live.until(3);
      assert.deepEqual(live.data, ["news", "before", "after"]);
      assert.deepEqual(live.ids.slice(1), [before, after]);

      // A client that saw only "before" resumes across every poison entry.
      resumed = await EventReader.open(`${served.url}/news/x`, before);
      const again = await channel.publish({ data: "again" });
      await Promise.all([live.until(4), resumed.until(2)]);
      assert.deepEqual(resumed.data, ["after", "again"]);
      assert.deepEqual(resumed.ids, [after, again]);
      assert.equal(served.inits.at(-1)?.resumed, true);

      // Each one reported, by whoever refused it, naming it, in one line.
      for (const [i, { by }] of POISON.entries()) {
        const errors = by === "broker"
          ? served.brokerErrors
          : served.channelErrors;
        assert.ok(
          errors.some((error) => error.message.includes(poison[i]!)),
          `${POISON[i]!.fields.join(" ")} (${poison[i]}) reported by the ${by}`,
        );
      }
      for (const error of [...served.brokerErrors, ...served.channelErrors]) {
        assertOneLine(error);
        assert.match(error.message, /^Skipped entry .*"news"/);
      }
      assert.deepEqual(served.serveErrors, []);
    } finally {
      await live.close();
      await resumed?.close();
      await served.close();
    }
  },
);

redisTest(
  "An instance process survives poison entries: it logs one line for each and keeps serving live and resuming clients",
  async () => {
    await using redis = await startRedis();
    await using instance = await startInstance({ redisUrl: redis.url });
    const live = await EventReader.open(instance.url);
    let resumed: EventReader | undefined;
    try {
      const publish = async (data: string) => {
        const response = await instance.publish({ data });
        assert.equal(response.status, 200);
        return (await response.json()).id as string;
      };
      const before = await publish("before");
      for (const { fields } of POISON) {
        await xadd(redis, "sse:news", "*", fields);
      }
      const after = await publish("after");
      await live.until(2);
      assert.deepEqual(live.ids, [before, after]);
      resumed = await EventReader.open(instance.url, before);
      const again = await publish("again");
      await Promise.all([live.until(3), resumed.until(2)]);
      assert.deepEqual(resumed.ids, [after, again]);
    } finally {
      await live.close();
      await resumed?.close();
    }
    await instance.stop();
    const lines = instance.stderr.split("\n").filter((line) => line !== "");
    // One line per poison entry skipped live (each reported once), by the
    // broker or the channel, and not one line of a stack trace.
    assert.ok(lines.length >= POISON.length, instance.stderr);
    for (const line of lines) {
      assert.match(line, /^(RedisBroker|SSEChannel): Skipped entry /, line);
    }
  },
);

redisTest(
  "A client of channel a that sends the id of b's first event gets resumed false and a snapshot, not a's entries after the same Redis id",
  async () => {
    await using redis = await startRedis();
    const served = serveChannels(redis, ["a", "b"]);
    const a = served.channels.get("a")!;
    const b = served.channels.get("b")!;
    const readers: EventReader[] = [];
    try {
      // Redis numbers each stream on its own: two streams written in the
      // same millisecond hold the same entry ids, as these do.
      const message = (
        data: string,
      ) => ["topic", "", "message", JSON.stringify({ data })];
      await xadd(redis, "sse:b", "5-1", message("b1"));
      await xadd(redis, "sse:a", "5-1", message("a1"));
      await xadd(redis, "sse:a", "5-2", message("a2"));
      const bReader = await EventReader.open(`${served.url}/b/x`);
      readers.push(bReader);
      const b2 = await b.publish({ data: "b2" });
      await bReader.until(2);
      const bFirst = `5-1.${b2.split(".")[1]}`;
      // Another stream's id, then other ids that are no resume point of a.
      const foreign = [bFirst, b2, "5-1", `9${b2}`, "nope", "5-1.zzz"];
      for (const lastEventId of foreign) {
        const reader = await EventReader.open(`${served.url}/a/x`, lastEventId);
        readers.push(reader);
      }
      const a3 = await a.publish({ data: "a3" });
      for (const [i, reader] of readers.slice(1).entries()) {
        await reader.until(2);
        // The snapshot, then live entries only: never a2 without a1.
        assert.deepEqual(reader.data, ["a", "a3"], foreign[i]);
        assert.deepEqual(reader.ids.slice(1), [a3]);
      }
      const ofA = served.inits.filter((init) => init.channel === "a");
      assert.deepEqual(
        ofA.map((init) => init.resumed),
        foreign.map(() => false),
      );
      // a's own id of that entry does resume, after a1.
      const own = await EventReader.open(
        `${served.url}/a/x`,
        `5-1.${a3.split(".")[1]}`,
      );
      readers.push(own);
      await own.until(2);
      assert.deepEqual(own.data, ["a2", "a3"]);
    } finally {
      for (const reader of readers) await reader.close();
      await served.close();
    }
  },
);

redisTest(
  "SSEChannel on RedisBroker keeps ids increasing for every client when onDisconnect publishes during a fan-out",
  async () => {
    await using redis = await startRedis();
    const served = serveChannels(redis, ["news"], {
      // The client named "bad" makes the filter throw on "trigger": it is
      // dropped in the middle of that entry's fan-out.
      filter(context, message) {
        if (context === "bad" && message.data === "trigger") {
          throw new Error("filter failed");
        }
        return true;
      },
      onDisconnect(channel, context, reason) {
        if (reason === "filter-error") {
          channel.publish({ data: `${context} left` }).catch(() => {});
        }
      },
    });
    const channel = served.channels.get("news")!;
    const readers: EventReader[] = [];
    try {
      for (const name of ["one", "two", "bad", "three", "four"]) {
        readers.push(await EventReader.open(`${served.url}/news/${name}`));
      }
      const good = readers.filter((_, i) => i !== 2);
      const ids = [await channel.publish({ data: "first" })];
      ids.push(await channel.publish({ data: "trigger" }));
      for (let i = 0; i < 20; i++) {
        ids.push(await channel.publish({ data: `after ${i}` }));
      }
      for (const reader of good) {
        // snapshot + first + trigger + "bad left" + 20
        await reader.until(24);
        const eventIds = reader.ids.slice(1);
        assert.ok(increasing(eventIds), eventIds.join(" "));
        assert.ok(reader.data.includes("bad left"));
        for (const id of ids) assert.ok(eventIds.includes(id), id);
      }
    } finally {
      for (const reader of readers) await reader.close();
      await served.close();
    }
  },
);

// The broker's history rejects within commandTimeout (tested in
// redis_faults_test.ts); SSEChannel then answers the resuming client as one
// that cannot resume. Before: connect threw, and Deno.serve answered 500
// after commandTimeout (0.5 s here; 6 s before commandTimeout existed).
Deno.test({
  name:
    "SSEChannel on RedisBroker answers a resuming client within commandTimeout while Redis is frozen, with resumed false",
  sanitizeOps: true,
  sanitizeResources: true,
  async fn() {
    await using redis = await startRedis();
    const served = serveChannels(redis, ["news"], { commandTimeout: 500 });
    const channel = served.channels.get("news")!;
    const readers: EventReader[] = [];
    try {
      readers.push(await EventReader.open(`${served.url}/news/x`));
      const first = await channel.publish({ data: "first" });
      await readers[0]!.until(2);
      redis.freeze();
      const started = performance.now();
      const resuming = await EventReader.open(`${served.url}/news/x`, first);
      readers.push(resuming);
      const ms = performance.now() - started;
      assert.ok(ms < 1_500, `headers after ${ms} ms`);
      await resuming.until(1);
      assert.deepEqual(resuming.data, ["news"]); // the snapshot
      assert.equal(served.inits.at(-1)?.resumed, false);
      redis.thaw();
    } finally {
      redis.thaw();
      for (const reader of readers) await reader.close();
      await served.close();
    }
  },
});

redisTest(
  "SSEChannel with replay 0 on RedisBroker delivers live what another instance publishes",
  async () => {
    // Before: XADD MAXLEN ~ 0 trimmed each entry before it was read, and the
    // client got nothing but its snapshot.
    await using redis = await startRedis();
    const brokers = [0, 1].map(() => new RedisBroker({ url: redis.url }));
    const [here, there] = brokers.map((broker) =>
      new SSEChannel({ name: "live", broker, replay: 0, keepAlive: 0 })
    );
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      (request) => here!.connect(request),
    );
    try {
      const response = await fetch(`http://127.0.0.1:${server.addr.port}/`);
      const events = response.body!.pipeThrough(new SSEParserStream())
        .getReader();
      const ids: string[] = [];
      for (const data of ["a", "b", "c"]) {
        ids.push(await there!.publish({ data }));
      }
      const got: string[] = [];
      await within(
        (async () => {
          while (got.length < 3) {
            const { value, done } = await events.read();
            if (done) break;
            got.push(value.id);
          }
        })(),
        10_000,
        "three live events",
      ).catch((error) => {
        events.cancel();
        throw error;
      });
      assert.deepEqual(got, ids);
      await events.cancel();
    } finally {
      await Promise.all([here!.close(), there!.close()]);
      await server.shutdown();
      await Promise.all(brokers.map((broker) => broker.close()));
    }
  },
);

redisTest(
  "SSEChannel on RedisBroker ends its live clients when the broker's reader lost entries, and they come back with a snapshot, missing nothing after",
  async () => {
    // Before: the broker reported the gap through onError, but the channel's
    // clients kept streaming without the lost entries: each got 102 of the
    // 500, its stream never ended, and no snapshot was sent again.
    await using redis = await startRedis();
    const errors: Error[] = [];
    const broker = new RedisBroker({
      url: redis.url,
      onError: (error) => errors.push(error),
    });
    try {
      await assertClientsRecoverFromGap(broker, (count) =>
        // Another instance publishes while this process is held back: its
        // reader finds the oldest of them trimmed (MAXLEN ~ 100).
        runWhileHeld(redis, [
          count,
          ...[
            "EVAL",
            APPEND,
            "2",
            `sse:${GAP_STREAM}`,
            `sse:~seq:${GAP_STREAM}`,
          ],
          ...["100", "", JSON.stringify({ data: "behind" }), "0"],
        ]));
      // Reported once too, as before.
      assert.equal(errors.length, 1, errors.join("\n"));
      assert.match(errors[0]!.message, /trimmed/);
    } finally {
      await broker.close();
    }
  },
);
