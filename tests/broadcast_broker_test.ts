// Copyright the sse authors. MIT license.
import assert from "node:assert/strict";
import { BroadcastChannelBroker } from "../_broadcast_broker.ts";
import type { SSEBrokerEntry } from "../_broker.ts";
import {
  Collector,
  expireByClock,
  SANITIZED,
  testBrokerContract,
} from "./_broker_contract.ts";

// History is per Worker, so the contract (which pages right after
// publishing) runs against one broker; the tests below cover other Workers.
testBrokerContract({
  name: "BroadcastChannelBroker",
  open() {
    const errors: Error[] = [];
    const broker = new BroadcastChannelBroker({
      onError: (error) => errors.push(error),
    });
    return Promise.resolve({
      broker,
      peer: broker,
      errors,
      close: () => broker.close(),
    });
  },
  // Another Worker posts an envelope whose entry has a line feed in its id.
  async poison(fixture, name) {
    const sender = new BroadcastChannel(`sse:${name}`);
    const seen = fixture.errors.length;
    sender.postMessage({
      sse: 1,
      replay: 100,
      entry: { id: "1-0-bad\nid", topic: "", message: { data: "x" } },
    });
    sender.close();
    // Stored means seen: wait until the broker has had it.
    while (fixture.errors.length === seen) {
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  },
  // Another Worker (or another version of the library) posts a valid entry.
  async forge(_fixture, name, message) {
    const sender = new BroadcastChannel(`sse:${name}`);
    const receiver = new BroadcastChannel(`sse:${name}`);
    const id = `${Date.now()}-0-forger`;
    const arrived = new Promise((resolve) => receiver.onmessage = resolve);
    sender.postMessage({
      sse: 1,
      replay: 100,
      entry: { id, topic: "", message },
    });
    // Posted to every listener of the name at once: the broker has it too.
    await arrived;
    sender.close();
    receiver.close();
  },
  // A stream idle for expireIn (one day by default) forgets its history.
  expire: ({ broker }, name) => expireByClock(broker, name, 86_400_000),
  // A Worker that starts again: a new broker with no history.
  restart: () => Promise.resolve(new BroadcastChannelBroker()),
});

function publish(
  broker: BroadcastChannelBroker,
  data: string,
  name = "s",
): Promise<string> {
  return broker.publish(name, { topic: "", message: { data } }, {
    replay: 100,
  });
}

Deno.test({
  name:
    "BroadcastChannelBroker delivers to another broker's subscribers, in publish order",
  ...SANITIZED,
  async fn() {
    const here = new BroadcastChannelBroker();
    const there = new BroadcastChannelBroker();
    const local = new Collector();
    const remote = new Collector();
    const subscriptions = [
      await here.subscribe("s", local.onEntry),
      await there.subscribe("s", remote.onEntry),
    ];
    const ids: string[] = [];
    for (let i = 0; i < 50; i++) ids.push(await publish(here, String(i)));
    // Local subscribers have it when publish resolves; others a task later.
    assert.deepEqual(local.ids, ids);
    await remote.until(50);
    assert.deepEqual(remote.ids, ids);
    assert.deepEqual(remote.entries, local.entries);
    for (const subscription of subscriptions) subscription.unsubscribe();
    await Promise.all([here.close(), there.close()]);
  },
});

Deno.test({
  name:
    "BroadcastChannelBroker keeps entries from other Workers in the history of the broker that received them",
  ...SANITIZED,
  async fn() {
    const here = new BroadcastChannelBroker();
    const there = new BroadcastChannelBroker();
    // Listening starts with the first use of a stream, even without clients.
    assert.equal(await there.history("s", { after: "x", limit: 1 }), null);
    const watcher = new Collector();
    const watching = await there.subscribe("s", watcher.onEntry);
    const ids: string[] = [];
    for (let i = 0; i < 10; i++) ids.push(await publish(here, String(i)));
    await watcher.until(10);
    watching.unsubscribe();

    const page = await there.history("s", { after: ids[4]!, limit: 100 });
    assert.deepEqual(page?.map((entry) => entry.id), ids.slice(5));

    // A Worker that starts later has no history: null.
    const late = new BroadcastChannelBroker();
    assert.equal(await late.history("s", { after: ids[4]!, limit: 100 }), null);
    const fresh = new Collector();
    const lateSubscription = await late.subscribe("s", fresh.onEntry);
    const next = await publish(here, "next");
    await fresh.until(1);
    assert.deepEqual(fresh.ids, [next]);
    const more = await there.history("s", { after: ids[9]!, limit: 100 });
    assert.deepEqual(more?.map((entry) => entry.id), [next]);
    lateSubscription.unsubscribe();
    await Promise.all([here.close(), there.close(), late.close()]);
  },
});

Deno.test({
  name:
    "BroadcastChannelBroker ids come after every id its Worker has seen, and stay unique",
  ...SANITIZED,
  async fn() {
    const broker = new BroadcastChannelBroker({ prefix: "clock:" });
    const received = new Collector();
    const subscription = await broker.subscribe("s", received.onEntry);
    // An entry from a Worker whose clock is an hour ahead.
    const ahead = Date.now() + 3_600_000;
    const remote = new BroadcastChannel("clock:s");
    remote.postMessage({
      sse: 1,
      replay: 10,
      entry: { id: `${ahead}-7-other`, topic: "", message: { data: "r" } },
    });
    await received.until(1);
    const id = await publish(broker, "after");
    const [time, seq, origin] = id.split("-");
    assert.equal(Number(time), ahead);
    assert.equal(Number(seq), 8);
    assert.match(origin!, /^[0-9a-z]{8}$/);
    assert.deepEqual(received.ids, [`${ahead}-7-other`, id]);
    remote.close();
    subscription.unsubscribe();
    await broker.close();
  },
});

Deno.test({
  name:
    "BroadcastChannelBroker ignores messages on its channels that are not its envelopes, and reports broken entries",
  ...SANITIZED,
  async fn() {
    const errors: Error[] = [];
    const here = new BroadcastChannelBroker({ prefix: "junk:" });
    const there = new BroadcastChannelBroker({
      prefix: "junk:",
      onError: (error) => errors.push(error),
    });
    const received = new Collector();
    const subscription = await there.subscribe("s", received.onEntry);
    const foreign = new BroadcastChannel("junk:s");
    const entry = (fields: Record<string, unknown>) => ({
      sse: 1,
      replay: 1,
      entry: { id: "1-0-x", topic: "", message: {}, ...fields },
    });
    // Not envelopes of this broker: ignored without a word.
    for (const junk of ["text", null, { sse: 2, replay: 1, entry: {} }]) {
      foreign.postMessage(junk);
    }
    // Envelopes with an entry that cannot be used: skipped and reported.
    const broken = [
      { sse: 1, replay: -1, entry: { id: "1-1-x", topic: "", message: {} } },
      entry({ id: 1 }),
      entry({ id: "1-2-x\r" }),
      entry({ id: "1-3-é" }),
      entry({ id: "1-4-x", message: null }),
      entry({ id: "1-5-x", topic: 5 }),
      entry({ id: "1-6-x", message: { data: 5 } }),
      entry({ id: "1-7-x", message: { retry: "5" } }),
    ];
    for (const junk of broken) foreign.postMessage(junk);
    // Messages from one sender arrive in order: once this entry is in, the
    // junk posted before it was seen and dropped.
    const id = `${Date.now()}-0-foreign`;
    foreign.postMessage({
      sse: 1,
      replay: 10,
      entry: { id, topic: "", message: { data: "real" } },
    });
    // The same id again is not a new entry.
    foreign.postMessage({
      sse: 1,
      replay: 10,
      entry: { id, topic: "", message: { data: "again" } },
    });
    await received.until(1);
    const mine = await publish(here, "mine");
    await received.until(2);
    assert.deepEqual(received.ids, [id, mine]);
    assert.equal(errors.length, broken.length + 1);
    for (const error of errors) {
      assert.match(error.message, /^Skipped entry .* of stream "s": /);
      assert.doesNotMatch(error.message, /\n/);
    }
    foreign.close();
    subscription.unsubscribe();
    await Promise.all([here.close(), there.close()]);
  },
});

Deno.test({
  name:
    "BroadcastChannelBroker fans out between a Worker and the main thread of one process, both ways",
  ...SANITIZED,
  async fn() {
    const worker = new Worker(
      new URL("./fixtures/broadcast_worker.ts", import.meta.url),
      { type: "module" },
    );
    const replies: Record<string, unknown>[] = [];
    const waiters: (() => void)[] = [];
    worker.onmessage = (event) => {
      replies.push(event.data);
      for (const wake of waiters.splice(0)) wake();
    };
    const reply = async (key: string, count = 1) => {
      while (replies.filter((r) => key in r).length < count) {
        await new Promise<void>((resolve) => waiters.push(resolve));
      }
      return replies.filter((r) => key in r);
    };
    const broker = new BroadcastChannelBroker();
    try {
      const received = new Collector();
      const subscription = await broker.subscribe("s", received.onEntry);
      worker.postMessage({ subscribe: true });
      await reply("subscribed");

      worker.postMessage({ publish: 20 });
      const [{ published }] = await reply("published") as [
        { published: string[] },
      ];
      await received.until(20);
      assert.deepEqual(received.ids, published);
      assert.deepEqual(
        received.entries.map((entry) => entry.message.data),
        published.map((_, i) => `w${i}`),
      );
      assert.ok(received.entries.every((entry) => entry.topic === "w"));

      const id = await publish(broker, "from main");
      // The worker's own 20 entries, then this one.
      const echoed = (await reply("entry", 21)).map((r) =>
        r.entry as SSEBrokerEntry
      );
      assert.deepEqual(echoed.map((entry) => entry.id), [...published, id]);
      assert.equal(echoed.at(-1)!.message.data, "from main");
      subscription.unsubscribe();

      worker.postMessage({ close: true });
      await reply("closed");
    } finally {
      worker.terminate();
      await broker.close();
    }
  },
});

Deno.test({
  name:
    "BroadcastChannelBroker keeps at most maxHistoryBytes of a stream's history, by default 16 MiB",
  ...SANITIZED,
  async fn() {
    const small = new BroadcastChannelBroker({
      prefix: "bytes:",
      maxHistoryBytes: 1000,
    });
    const ids: string[] = [];
    for (let i = 0; i < 10; i++) {
      ids.push(await publish(small, String(i).repeat(300)));
    }
    const kept = await small.history("s", { after: ids[6]!, limit: 100 });
    assert.deepEqual(kept?.map((entry) => entry.id), ids.slice(7));
    assert.equal(
      await small.history("s", { after: ids[5]!, limit: 100 }),
      null,
    );
    await small.close();

    const broker = new BroadcastChannelBroker({ prefix: "bytes-default:" });
    // Subscribed, as a channel with clients is: the stream stays when it
    // keeps nothing, and the newest id resumes.
    const subscription = await broker.subscribe("s", () => {});
    const before = await publish(broker, "a");
    const big = await publish(broker, "x".repeat(20 * 1024 * 1024));
    assert.equal(await broker.history("s", { after: before, limit: 10 }), null);
    assert.deepEqual(await broker.history("s", { after: big, limit: 10 }), []);
    subscription.unsubscribe();
    await broker.close();
  },
});
