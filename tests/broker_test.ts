// Copyright the sse authors. MIT license.
import assert from "node:assert/strict";
import fc from "fast-check";
import {
  MemoryBroker,
  type SSEBrokerEntry,
  type SSEBrokerSubscription,
} from "../server.ts";
import { SANITIZED, testBrokerContract } from "./_broker_contract.ts";

testBrokerContract({
  name: "MemoryBroker",
  open() {
    const broker = new MemoryBroker();
    return Promise.resolve({
      broker,
      peer: broker,
      close: () => broker.close(),
    });
  },
});

/** A test with the op and resource sanitizers on (Deno 2.9 leaves them off). */
function test(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ...SANITIZED, fn });
}

const KEEP = { replay: 100 };

function publish(
  broker: MemoryBroker,
  data: string,
  options: { name?: string; topic?: string; replay?: number } = {},
): Promise<string> {
  return broker.publish(
    options.name ?? "s",
    { topic: options.topic ?? "", message: { data } },
    { replay: options.replay ?? KEEP.replay },
  );
}

async function collect(
  broker: MemoryBroker,
  name: string,
  lastEventId?: string,
): Promise<{ entries: SSEBrokerEntry[]; subscription: SSEBrokerSubscription }> {
  const entries: SSEBrokerEntry[] = [];
  const subscription = await broker.subscribe(
    name,
    lastEventId === undefined ? {} : { lastEventId },
    (entry) => entries.push(entry),
  );
  return { entries, subscription };
}

function dataOf(entries: SSEBrokerEntry[]): unknown[] {
  return entries.map((entry) => entry.message.data);
}

test("MemoryBroker assigns unique ids, ordered by their sequence, and resolves once delivered", async () => {
  const broker = new MemoryBroker();
  const { entries, subscription } = await collect(broker, "s");
  const ids: string[] = [];
  for (let i = 0; i < 50; i++) {
    const id = await publish(broker, String(i), { name: i % 2 ? "s" : "t" });
    ids.push(id);
    if (i % 2) assert.equal(entries.at(-1)?.id, id);
  }
  assert.equal(new Set(ids).size, ids.length);
  const sequences = ids.map((id) => Number(id.slice(id.lastIndexOf("-") + 1)));
  assert.deepEqual(sequences, [...sequences].sort((a, b) => a - b));
  for (const id of ids) assert.doesNotMatch(id, /[\r\n\0]/);
  assert.deepEqual(
    dataOf(entries),
    Array.from({ length: 25 }, (_, i) => String(2 * i + 1)),
  );
  subscription.unsubscribe();
  await broker.close();
});

test("MemoryBroker ids of one broker are never valid in another, as after a restart", async () => {
  const before = new MemoryBroker();
  const after = new MemoryBroker();
  const old = await publish(before, "a");
  await publish(after, "b");
  await publish(after, "c");
  const { entries, subscription } = await collect(after, "s", old);
  assert.equal(subscription.resumed, false);
  assert.deepEqual(entries, []);
  subscription.unsubscribe();
  await before.close();
  await after.close();
});

test("MemoryBroker replays exactly the kept entries after lastEventId, then live ones", async () => {
  const broker = new MemoryBroker();
  const ids: string[] = [];
  for (let i = 0; i < 5; i++) ids.push(await publish(broker, String(i)));
  const { entries, subscription } = await collect(broker, "s", ids[1]);
  assert.equal(subscription.resumed, true);
  assert.deepEqual(dataOf(entries), ["2", "3", "4"]);
  await publish(broker, "5");
  assert.deepEqual(dataOf(entries), ["2", "3", "4", "5"]);
  assert.deepEqual(entries.map((entry) => entry.id).slice(0, 3), ids.slice(2));
  subscription.unsubscribe();
  await broker.close();
});

test("MemoryBroker reports resumed false for an unknown id or one older than the replay window", async () => {
  const broker = new MemoryBroker();
  const ids: string[] = [];
  for (let i = 0; i < 6; i++) {
    ids.push(await publish(broker, String(i), { replay: 3 }));
  }
  const last = ids.at(-1)!;
  const cases: [string, boolean, unknown[]][] = [
    [ids[1]!, false, []], // entries 2 is gone
    [ids[2]!, true, ["3", "4", "5"]], // everything after it is kept
    [last, true, []], // nothing missed
    ["garbage", false, []],
    ["", false, []],
    [last.replace(/-\d+$/, "-999"), false, []], // a sequence not given out yet
    [last.replace(/-(\d+)$/, "-0$1"), false, []], // not the canonical spelling
  ];
  for (const [lastEventId, resumed, data] of cases) {
    const { entries, subscription } = await collect(broker, "s", lastEventId);
    assert.equal(subscription.resumed, resumed, lastEventId);
    assert.deepEqual(dataOf(entries), data, lastEventId);
    subscription.unsubscribe();
  }
  const fresh = await collect(broker, "s");
  assert.equal(fresh.subscription.resumed, true);
  fresh.subscription.unsubscribe();
  await broker.close();
});

test("MemoryBroker keeps nothing with replay 0, yet the newest id still resumes", async () => {
  const broker = new MemoryBroker();
  const first = await publish(broker, "a", { replay: 0 });
  const second = await publish(broker, "b", { replay: 0 });
  const old = await collect(broker, "s", first);
  assert.equal(old.subscription.resumed, false);
  const current = await collect(broker, "s", second);
  assert.equal(current.subscription.resumed, true);
  assert.deepEqual(current.entries, []);
  old.subscription.unsubscribe();
  current.subscription.unsubscribe();
  await broker.close();
});

test("MemoryBroker shrinks and grows a stream's window when replay changes", async () => {
  const broker = new MemoryBroker();
  const ids: string[] = [];
  for (let i = 0; i < 10; i++) {
    ids.push(await publish(broker, String(i), { replay: 10 }));
  }
  ids.push(await publish(broker, "10", { replay: 4 })); // keeps 7..10
  let result = await collect(broker, "s", ids[6]);
  assert.equal(result.subscription.resumed, true);
  assert.deepEqual(dataOf(result.entries), ["7", "8", "9", "10"]);
  result.subscription.unsubscribe();
  result = await collect(broker, "s", ids[5]);
  assert.equal(result.subscription.resumed, false);
  result.subscription.unsubscribe();
  ids.push(await publish(broker, "11", { replay: 8 })); // keeps 7..11
  result = await collect(broker, "s", ids[6]);
  assert.deepEqual(dataOf(result.entries), ["7", "8", "9", "10", "11"]);
  result.subscription.unsubscribe();
  await broker.close();
});

test("MemoryBroker keeps streams apart, each with its own window", async () => {
  const broker = new MemoryBroker();
  const a = await collect(broker, "a");
  const b = await collect(broker, "b");
  const first = await publish(broker, "a1", { name: "a", topic: "x" });
  await publish(broker, "b1", { name: "b" });
  await publish(broker, "a2", { name: "a" });
  assert.deepEqual(dataOf(a.entries), ["a1", "a2"]);
  assert.equal(a.entries[0]!.topic, "x");
  assert.deepEqual(dataOf(b.entries), ["b1"]);
  // An id of stream a resumes stream b from the same moment.
  const later = await collect(broker, "b", first);
  assert.deepEqual(dataOf(later.entries), ["b1"]);
  for (const { subscription } of [a, b, later]) subscription.unsubscribe();
  await broker.close();
});

test("MemoryBroker stops delivering at unsubscribe, which is idempotent", async () => {
  const broker = new MemoryBroker();
  const { entries, subscription } = await collect(broker, "s");
  await publish(broker, "a");
  subscription.unsubscribe();
  subscription.unsubscribe();
  await publish(broker, "b");
  assert.deepEqual(dataOf(entries), ["a"]);
  await broker.close();
});

test("MemoryBroker delivers an entry once to a subscriber added while it is delivered", async () => {
  const broker = new MemoryBroker();
  const late: SSEBrokerEntry[] = [];
  const subscriptions: Promise<SSEBrokerSubscription>[] = [];
  const first = await broker.subscribe("s", {}, (entry) => {
    // Subscribes from inside the delivery of `entry`, resuming before it.
    if (entry.message.data === "b") {
      subscriptions.push(
        broker.subscribe("s", { lastEventId: id }, (e) => late.push(e)),
      );
    }
  });
  const id = await publish(broker, "a");
  await publish(broker, "b");
  await publish(broker, "c");
  assert.deepEqual(dataOf(late), ["b", "c"]);
  first.unsubscribe();
  for (const subscription of await Promise.all(subscriptions)) {
    subscription.unsubscribe();
  }
  await broker.close();
});

test("MemoryBroker reports a throwing subscriber and still delivers to the others", async () => {
  const broker = new MemoryBroker();
  const reported: unknown[] = [];
  const onError = (event: ErrorEvent) => {
    event.preventDefault();
    reported.push(event.error);
  };
  globalThis.addEventListener("error", onError);
  try {
    const bad = await broker.subscribe("s", {}, () => {
      throw new Error("subscriber bug");
    });
    const good = await collect(broker, "s");
    await publish(broker, "a");
    assert.deepEqual(dataOf(good.entries), ["a"]);
    assert.equal((reported[0] as Error).message, "subscriber bug");
    bad.unsubscribe();
    good.subscription.unsubscribe();
  } finally {
    globalThis.removeEventListener("error", onError);
    await broker.close();
  }
});

test("MemoryBroker stores the message without its id, and refuses what is not plain", async () => {
  const broker = new MemoryBroker();
  const { entries, subscription } = await collect(broker, "s");
  const id = await broker.publish("s", {
    topic: "",
    message: { id: "mine", data: "x" },
  }, KEEP);
  assert.deepEqual(entries[0], { id, topic: "", message: { data: "x" } });
  await assert.rejects(
    broker.publish("s", { topic: "", message: { data: 1 } }, KEEP),
    { name: "TypeError", message: /data.*string/ },
  );
  await assert.rejects(
    broker.publish("s", { topic: "", message: { data: "x" } }, { replay: -1 }),
    RangeError,
  );
  await assert.rejects(
    // deno-lint-ignore no-explicit-any
    broker.publish("s", { topic: 1 as any, message: { data: "x" } }, KEEP),
    TypeError,
  );
  await assert.rejects(
    // deno-lint-ignore no-explicit-any
    broker.subscribe(1 as any, {}, () => {}),
    TypeError,
  );
  assert.equal(entries.length, 1);
  subscription.unsubscribe();
  await broker.close();
});

test("MemoryBroker close ends every subscription and refuses later calls", async () => {
  const broker = new MemoryBroker();
  const { entries } = await collect(broker, "s");
  await broker.close();
  await broker.close();
  await assert.rejects(publish(broker, "a"), /closed/);
  await assert.rejects(broker.subscribe("s", {}, () => {}), /closed/);
  assert.deepEqual(entries, []);
});

test("MemoryBroker resume matches a model for any publishes, windows and resume points", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.integer({ min: 0, max: 6 }), { minLength: 1, maxLength: 40 }),
      fc.nat(),
      async (replays, pick) => {
        const broker = new MemoryBroker();
        const ids: string[] = [];
        // Model: the entries kept are the last `replay` ones at each publish,
        // and once dropped an entry never comes back.
        let firstKept = 0;
        for (const [i, replay] of replays.entries()) {
          ids.push(await publish(broker, String(i), { replay }));
          firstKept = Math.max(firstKept, ids.length - replay);
        }
        const from = pick % ids.length;
        const { entries, subscription } = await collect(broker, "s", ids[from]);
        // Resumable when nothing after `from` was dropped.
        const resumed = from + 1 >= firstKept;
        assert.equal(subscription.resumed, resumed);
        assert.deepEqual(
          entries.map((entry) => entry.id),
          resumed ? ids.slice(from + 1) : [],
        );
        subscription.unsubscribe();
        await broker.close();
      },
    ),
  );
});
