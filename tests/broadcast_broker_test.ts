// Copyright the sse authors. MIT license.
import assert from "node:assert/strict";
import { BroadcastChannelBroker } from "../_broadcast_broker.ts";
import type { SSEBrokerEntry } from "../_broker.ts";
import {
  Collector,
  SANITIZED,
  testBrokerContract,
} from "./_broker_contract.ts";

// Replay is per instance, so the contract (which resumes right after
// publishing) runs against one broker; the tests below cover other isolates.
testBrokerContract({
  name: "BroadcastChannelBroker",
  open() {
    const broker = new BroadcastChannelBroker();
    return Promise.resolve({
      broker,
      peer: broker,
      close: () => broker.close(),
    });
  },
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
      await here.subscribe("s", {}, local.onEntry),
      await there.subscribe("s", {}, remote.onEntry),
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
    "BroadcastChannelBroker keeps entries from other isolates for replay on the instance that received them",
  ...SANITIZED,
  async fn() {
    const here = new BroadcastChannelBroker();
    const there = new BroadcastChannelBroker();
    // Listening starts with the first use of a stream, even without clients.
    const first = new Collector();
    (await there.subscribe("s", {}, first.onEntry)).unsubscribe();
    const watcher = await there.subscribe("s", {}, first.onEntry);
    const ids: string[] = [];
    for (let i = 0; i < 10; i++) ids.push(await publish(here, String(i)));
    await first.until(10);
    watcher.unsubscribe();

    const resumed = new Collector();
    const subscription = await there.subscribe(
      "s",
      { lastEventId: ids[4]! },
      resumed.onEntry,
    );
    assert.equal(subscription.resumed, true);
    assert.deepEqual(resumed.ids, ids.slice(5));

    // An instance that starts later has no history: resumed is false.
    const late = new BroadcastChannelBroker();
    const fresh = new Collector();
    const lateSubscription = await late.subscribe(
      "s",
      { lastEventId: ids[4]! },
      fresh.onEntry,
    );
    assert.equal(lateSubscription.resumed, false);
    const next = await publish(here, "next");
    await Promise.all([resumed.until(6), fresh.until(1)]);
    assert.deepEqual(resumed.ids, [...ids.slice(5), next]);
    assert.deepEqual(fresh.ids, [next]);
    subscription.unsubscribe();
    lateSubscription.unsubscribe();
    await Promise.all([here.close(), there.close(), late.close()]);
  },
});

Deno.test({
  name:
    "BroadcastChannelBroker ids come after every id its isolate has seen, and stay unique",
  ...SANITIZED,
  async fn() {
    const broker = new BroadcastChannelBroker({ prefix: "clock:" });
    const received = new Collector();
    const subscription = await broker.subscribe("s", {}, received.onEntry);
    // An entry from an isolate whose clock is an hour ahead.
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
    "BroadcastChannelBroker ignores messages on its channels that are not entries",
  ...SANITIZED,
  async fn() {
    const here = new BroadcastChannelBroker({ prefix: "junk:" });
    const there = new BroadcastChannelBroker({ prefix: "junk:" });
    const received = new Collector();
    const subscription = await there.subscribe("s", {}, received.onEntry);
    const foreign = new BroadcastChannel("junk:s");
    for (
      const junk of [
        "text",
        null,
        { sse: 2, replay: 1, entry: { id: "1", topic: "", message: {} } },
        { sse: 1, replay: -1, entry: { id: "1", topic: "", message: {} } },
        { sse: 1, replay: 1, entry: { id: 1, topic: "", message: {} } },
        { sse: 1, replay: 1, entry: { id: "1", topic: "", message: null } },
      ]
    ) {
      foreign.postMessage(junk);
    }
    // Messages from one sender arrive in order: once this entry is in, the
    // junk posted before it was seen and dropped.
    const id = `${Date.now()}-0-foreign`;
    foreign.postMessage({
      sse: 1,
      replay: 10,
      entry: { id, topic: "", message: { data: "real" } },
    });
    await received.until(1);
    const mine = await publish(here, "mine");
    await received.until(2);
    assert.deepEqual(received.ids, [id, mine]);
    foreign.close();
    subscription.unsubscribe();
    await Promise.all([here.close(), there.close()]);
  },
});

Deno.test({
  name:
    "BroadcastChannelBroker fans out between a worker isolate and the main one, both ways",
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
      const subscription = await broker.subscribe("s", {}, received.onEntry);
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
