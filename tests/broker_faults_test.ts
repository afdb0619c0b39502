// Copyright the sse authors. MIT license.
// Hostile input to the in-process brokers: what other code posts on a
// BroadcastChannel name that a BroadcastChannelBroker listens to.
import assert from "node:assert/strict";
import { BroadcastChannelBroker } from "../_broadcast_broker.ts";
import type { SSEBrokerGap } from "../_broker.ts";
import FakeTimers from "@sinonjs/fake-timers";
import { Collector, SANITIZED } from "./_broker_contract.ts";

/** A broker on its own prefix, its errors, and a raw channel of stream "s". */
async function poisoned(prefix: string) {
  const errors: Error[] = [];
  const broker = new BroadcastChannelBroker({
    prefix,
    onError: (error) => errors.push(error),
  });
  const received = new Collector();
  const subscription = await broker.subscribe("s", received.onEntry);
  const foreign = new BroadcastChannel(prefix + "s");
  const post = (id: string, message: unknown, replay = 100) =>
    foreign.postMessage({ sse: 1, replay, entry: { id, topic: "", message } });
  const close = async () => {
    foreign.close();
    subscription.unsubscribe();
    await broker.close();
  };
  return { broker, errors, received, post, close };
}

function publish(broker: BroadcastChannelBroker): Promise<string> {
  return broker.publish("s", { topic: "", message: { data: "mine" } }, {
    replay: 100,
  });
}

Deno.test({
  name:
    "BroadcastChannelBroker keeps its ids unique after an entry whose id counter is at the largest safe integer",
  ...SANITIZED,
  async fn() {
    const { broker, received, post, close } = await poisoned("seq:");
    try {
      const max = Number.MAX_SAFE_INTEGER;
      post(`${max - 1}-${max}-forger`, { data: "forged" });
      post(`${max}-${max}-forger`, { data: "forged" });
      await received.until(2);
      const ids: string[] = [];
      for (let i = 0; i < 4; i++) ids.push(await publish(broker));
      assert.equal(new Set(ids).size, ids.length, `ids repeat: ${ids}`);
      for (const id of ids) {
        const [time, seq] = id.split("-", 2).map(Number);
        assert.ok(Number.isSafeInteger(time) && Number.isSafeInteger(seq), id);
        // Every id is a resume point of its own.
        const page = await broker.history("s", { after: id, limit: 10 });
        assert.equal(page?.length, ids.length - 1 - ids.indexOf(id));
      }
    } finally {
      await close();
    }
  },
});

Deno.test({
  name:
    "BroadcastChannelBroker skips an entry from another Worker whose message is not a plain object, and keeps only the fields of a message",
  ...SANITIZED,
  async fn() {
    const { errors, received, post, close } = await poisoned("odd:");
    try {
      const odd = [
        new Map([["data", "x"]]),
        new Date(0),
        ["x"],
        new Uint8Array(4),
      ];
      odd.forEach((message, i) => post(`1-${i}-odd`, message));
      // Fields an encoder never writes are not kept (nor counted against
      // maxHistoryBytes): a large one would pin memory in every Worker.
      post(`2-0-odd`, {
        data: "real",
        event: "e",
        retry: 5,
        comment: "c",
        id: "other",
        junk: new Uint8Array(1024 * 1024),
      });
      await received.untilId("2-0-odd");
      assert.deepEqual(received.ids, ["2-0-odd"]);
      assert.deepEqual(received.entries, [{
        id: "2-0-odd",
        topic: "",
        message: { data: "real", event: "e", retry: 5, comment: "c" },
      }]);
      assert.equal(errors.length, odd.length);
      for (const error of errors) {
        assert.match(
          error.message,
          /^Skipped entry "1-\d-odd" of stream "s": the message is not a plain object$/,
        );
      }
    } finally {
      await close();
    }
  },
});

Deno.test({
  name:
    "BroadcastChannelBroker frees an expired stream that a message it cannot use reaches, instead of listening again",
  ...SANITIZED,
  async fn() {
    const errors: Error[] = [];
    const broker = new BroadcastChannelBroker({
      prefix: "expired:",
      onError: (error) => errors.push(error),
    });
    await publish(broker);
    const foreign = new BroadcastChannel("expired:s");
    // A day later (Date only: the test's own timers run on real time), no
    // subscriber: the stream has expired, and nothing has swept it yet.
    const clock = FakeTimers.install({
      toFake: ["Date"],
      now: Date.now() + 86_400_000,
    });
    try {
      foreign.postMessage("not an envelope");
      foreign.postMessage({ sse: 1, replay: 1, entry: { id: 5 } });
      // Messages from one sender arrive in order: once the broken entry is
      // reported, both were seen.
      while (errors.length === 0) {
        await new Promise((resolve) => setTimeout(resolve, 1));
      }
    } finally {
      clock.uninstall();
      foreign.close();
    }
    assert.match(errors[0]!.message, /^Skipped entry with a number id/);
    // Not closed: a stream that holds nothing has its BroadcastChannel
    // closed, so no receive is left pending for the op sanitizer to find.
  },
});

Deno.test({
  name:
    "BroadcastChannelBroker tells its subscribers of entries the BroadcastChannel dropped while their Worker was busy, and forgets the history before them",
  ...SANITIZED,
  async fn() {
    const worker = new Worker(
      new URL("./fixtures/broadcast_burst_worker.ts", import.meta.url),
      { type: "module" },
    );
    const errors: Error[] = [];
    const broker = new BroadcastChannelBroker({
      prefix: "burst:",
      onError: (error) => errors.push(error),
    });
    const received = new Collector();
    const gaps: SSEBrokerGap[] = [];
    const subscription = await broker.subscribe("s", received.onEntry, {
      onGap: (gap) => gaps.push(gap),
    });
    let replies = Promise.withResolvers<string[]>();
    worker.onmessage = (event) => replies.resolve(event.data.published);
    try {
      worker.postMessage({ publish: 1 });
      const [first] = await replies.promise;
      await received.untilId(first!);
      // This thread blocks while the Worker publishes more than the
      // runtime keeps for a reader behind (Deno: 256 messages).
      replies = Promise.withResolvers<string[]>();
      const flag = new Int32Array(new SharedArrayBuffer(4));
      worker.postMessage({ publish: 2000, flag });
      assert.equal(Atomics.wait(flag, 0, 0, 30_000), "ok");
      const burst = await replies.promise;
      await received.untilId(burst.at(-1)!);
      const lost = 2001 - received.entries.length;
      assert.ok(lost > 0, "the runtime dropped nothing: no gap to see");
      assert.deepEqual(gaps.length, 1);
      assert.equal(gaps[0]!.before, received.ids[1]);
      assert.equal(errors.length, 1);
      assert.match(errors[0]!.message, /^Lost entries of stream "s" before /);
      // A resume from before the gap would skip the lost entries.
      assert.equal(
        await broker.history("s", { after: first!, limit: 1 }),
        null,
      );
      // Entries from one publisher still arrive in order.
      const order = received.entries.map((entry) => burst.indexOf(entry.id));
      assert.deepEqual(order, [...order].sort((a, b) => a - b));
    } finally {
      subscription.unsubscribe();
      worker.terminate();
      await broker.close();
    }
  },
});
