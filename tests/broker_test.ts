// Copyright the sse authors. MIT license.
import assert from "node:assert/strict";
import fc from "fast-check";
import FakeTimers from "@sinonjs/fake-timers";
import { MemoryBroker, type SSEBrokerEntry } from "../server.ts";
import {
  expireByClock,
  SANITIZED,
  testBrokerContract,
} from "./_broker_contract.ts";

testBrokerContract({
  name: "MemoryBroker",
  open() {
    const errors: Error[] = [];
    const broker = new MemoryBroker({ onError: (error) => errors.push(error) });
    return Promise.resolve({
      broker,
      peer: broker,
      errors,
      close: () => broker.close(),
    });
  },
  // A process restart: a new broker object.
  restart: () => Promise.resolve(new MemoryBroker()),
  // A stream idle for expireIn (one day by default) forgets its history.
  expire: ({ broker }, name) => expireByClock(broker, name, 86_400_000),
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
): Promise<{ entries: SSEBrokerEntry[]; unsubscribe(): void }> {
  const entries: SSEBrokerEntry[] = [];
  const subscription = await broker.subscribe(name, (entry) => {
    entries.push(entry);
  });
  return { entries, unsubscribe: () => subscription.unsubscribe() };
}

async function dataAfter(
  broker: MemoryBroker,
  after: string,
  name = "s",
): Promise<unknown[] | null> {
  const page = await broker.history(name, { after, limit: 1000 });
  return page === null ? null : dataOf(page);
}

function dataOf(entries: SSEBrokerEntry[]): unknown[] {
  return entries.map((entry) => entry.message.data);
}

test("MemoryBroker assigns unique ids, ordered by their sequence, and delivers before publish resolves", async () => {
  const broker = new MemoryBroker();
  const { entries, unsubscribe } = await collect(broker, "s");
  const ids: string[] = [];
  for (let i = 0; i < 50; i++) {
    const id = await publish(broker, String(i), { name: i % 2 ? "s" : "t" });
    ids.push(id);
    if (i % 2) assert.equal(entries.at(-1)?.id, id);
  }
  assert.equal(new Set(ids).size, ids.length);
  for (const id of ids) assert.match(id, /^m[0-9a-z]{8}-[1-9][0-9]*$/);
  const sequences = ids.map((id) => Number(id.slice(id.lastIndexOf("-") + 1)));
  assert.deepEqual(sequences, [...sequences].sort((a, b) => a - b));
  assert.deepEqual(
    dataOf(entries),
    Array.from({ length: 25 }, (_, i) => String(2 * i + 1)),
  );
  unsubscribe();
  await broker.close();
});

test("MemoryBroker subscriptions are live only: nothing from before subscribe", async () => {
  const broker = new MemoryBroker();
  await publish(broker, "before");
  const { entries, unsubscribe } = await collect(broker, "s");
  await publish(broker, "after");
  assert.deepEqual(dataOf(entries), ["after"]);
  unsubscribe();
  await broker.close();
});

test("MemoryBroker ids of one broker are never resume points in another, as after a restart", async () => {
  const before = new MemoryBroker();
  const after = new MemoryBroker();
  const old = await publish(before, "a");
  await publish(after, "b");
  await publish(after, "c");
  assert.equal(await dataAfter(after, old), null);
  await before.close();
  await after.close();
});

test("MemoryBroker resumes only from ids of the same stream, though the sequence is shared", async () => {
  const broker = new MemoryBroker();
  const a1 = await publish(broker, "a1", { name: "a" });
  const b1 = await publish(broker, "b1", { name: "b" });
  await publish(broker, "a2", { name: "a" });
  const b2 = await publish(broker, "b2", { name: "b" });
  assert.deepEqual(await dataAfter(broker, a1, "a"), ["a2"]);
  assert.deepEqual(await dataAfter(broker, b1, "b"), ["b2"]);
  // b's ids sit between a's, but they are not a's.
  assert.equal(await dataAfter(broker, b1, "a"), null);
  assert.equal(await dataAfter(broker, b2, "a"), null);
  assert.equal(await dataAfter(broker, a1, "b"), null);
  await broker.close();
});

test("MemoryBroker answers null for an unknown id or one older than the replay window", async () => {
  const broker = new MemoryBroker();
  const ids: string[] = [];
  for (let i = 0; i < 6; i++) {
    ids.push(await publish(broker, String(i), { replay: 3 }));
  }
  const last = ids.at(-1)!;
  const cases: [string, unknown[] | null][] = [
    [ids[1]!, null], // entry 2 is gone
    [ids[2]!, ["3", "4", "5"]], // everything after it is kept
    [last, []], // nothing missed
    ["garbage", null],
    ["", null],
    [last.replace(/-\d+$/, "-999"), null], // a sequence not given out yet
    [last.replace(/-(\d+)$/, "-0$1"), null], // not the canonical spelling
  ];
  for (const [lastEventId, data] of cases) {
    assert.deepEqual(await dataAfter(broker, lastEventId), data, lastEventId);
  }
  await broker.close();
});

test("MemoryBroker keeps nothing with replay 0, yet the newest id resumes while the stream is subscribed", async () => {
  const broker = new MemoryBroker();
  const { unsubscribe } = await collect(broker, "s");
  const first = await publish(broker, "a", { replay: 0 });
  const second = await publish(broker, "b", { replay: 0 });
  assert.equal(await dataAfter(broker, first), null);
  assert.deepEqual(await dataAfter(broker, second), []);
  // Nobody subscribes and nothing is kept: the stream is gone, with its
  // last resume point.
  unsubscribe();
  assert.equal(await dataAfter(broker, second), null);
  await broker.close();
});

test("MemoryBroker shrinks and grows a stream's window when replay changes", async () => {
  const broker = new MemoryBroker();
  const ids: string[] = [];
  for (let i = 0; i < 10; i++) {
    ids.push(await publish(broker, String(i), { replay: 10 }));
  }
  ids.push(await publish(broker, "10", { replay: 4 })); // keeps 7..10
  assert.deepEqual(await dataAfter(broker, ids[6]!), ["7", "8", "9", "10"]);
  assert.equal(await dataAfter(broker, ids[5]!), null);
  ids.push(await publish(broker, "11", { replay: 8 })); // keeps 7..11
  assert.deepEqual(await dataAfter(broker, ids[6]!), [
    "7",
    "8",
    "9",
    "10",
    "11",
  ]);
  await broker.close();
});

test("MemoryBroker delivers an entry only to subscribers that existed when it was published", async () => {
  const broker = new MemoryBroker();
  const late: SSEBrokerEntry[] = [];
  const subscriptions: Promise<{ unsubscribe(): void }>[] = [];
  const first = await broker.subscribe("s", (entry) => {
    // Subscribes from inside the delivery of "b".
    if (entry.message.data === "b") {
      subscriptions.push(broker.subscribe("s", (e) => late.push(e)));
    }
  });
  await publish(broker, "a");
  await publish(broker, "b");
  await publish(broker, "c");
  assert.deepEqual(dataOf(late), ["c"]);
  first.unsubscribe();
  for (const subscription of await Promise.all(subscriptions)) {
    subscription.unsubscribe();
  }
  await broker.close();
});

test("MemoryBroker reports a throwing subscriber on one line of stderr by default, and still delivers to the others", async () => {
  const broker = new MemoryBroker();
  const lines: unknown[][] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => lines.push(args);
  try {
    const bad = await broker.subscribe("s", () => {
      throw new Error("subscriber bug");
    });
    const good = await collect(broker, "s");
    const id = await publish(broker, "a");
    assert.deepEqual(dataOf(good.entries), ["a"]);
    assert.equal(lines.length, 1);
    assert.equal(lines[0]!.length, 1);
    const line = lines[0]![0] as string;
    assert.equal(typeof line, "string");
    assert.match(line, /^MemoryBroker: /);
    assert.match(line, /subscriber bug/);
    assert.ok(line.includes(id), "names the entry");
    assert.doesNotMatch(line, /\n/);
    bad.unsubscribe();
    good.unsubscribe();
  } finally {
    console.error = original;
    await broker.close();
  }
});

test("MemoryBroker reports an error whose message spans lines on one line of stderr by default", async () => {
  const lines: unknown[][] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => lines.push(args);
  const broker = new MemoryBroker();
  try {
    await broker.subscribe("s", () => {
      throw new Error("first line\nsecond line\r\nthird\rfourth\u2028fifth");
    });
    await publish(broker, "a");
    // Before: five lines on the terminal, four of them without the owner.
    assert.equal(lines.length, 1);
    const line = lines[0]![0] as string;
    assert.doesNotMatch(line, /[\n\r\u2028\u2029]/);
    assert.match(
      line,
      /^MemoryBroker: .*first line\\nsecond line\\r\\nthird\\rfourth\\u2028fifth$/,
    );
  } finally {
    console.error = original;
    await broker.close();
  }
});

test("MemoryBroker survives an onError that throws, and refuses one that is not a function", async () => {
  const lines: unknown[][] = [];
  const original = console.error;
  console.error = (...args: unknown[]) => lines.push(args);
  const broker = new MemoryBroker({
    onError() {
      throw new Error("onError bug");
    },
  });
  try {
    await broker.subscribe("s", () => {
      throw new Error("subscriber bug");
    });
    await publish(broker, "a");
    // Before: only "onError threw: onError bug", the error itself lost.
    assert.deepEqual(lines.map((line) => line.length), [1, 1]);
    assert.match(lines[0]![0] as string, /^MemoryBroker: .*subscriber bug$/);
    assert.equal(lines[1]![0], "MemoryBroker: onError threw: onError bug");
  } finally {
    console.error = original;
    await broker.close();
  }
  assert.throws(
    () => new MemoryBroker({ onError: 1 as unknown as () => void }),
    { name: "TypeError", message: /onError/ },
  );
});

test("MemoryBroker stores the message without its id, and refuses what is not plain", async () => {
  const broker = new MemoryBroker();
  const { entries, unsubscribe } = await collect(broker, "s");
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
    broker.subscribe(1 as any, () => {}),
    TypeError,
  );
  assert.equal(entries.length, 1);
  unsubscribe();
  await broker.close();
});

test("MemoryBroker close ends every subscription and refuses later calls", async () => {
  const broker = new MemoryBroker();
  const { entries } = await collect(broker, "s");
  await broker.close();
  await broker.close();
  await assert.rejects(publish(broker, "a"), /closed/);
  await assert.rejects(broker.subscribe("s", () => {}), /closed/);
  await assert.rejects(broker.history("s", { after: "x", limit: 1 }), /closed/);
  assert.deepEqual(entries, []);
});

test("MemoryBroker history matches a model for any publishes, windows, resume points and page sizes", async () => {
  await fc.assert(
    fc.asyncProperty(
      fc.array(fc.integer({ min: 0, max: 6 }), { minLength: 1, maxLength: 40 }),
      fc.nat(),
      fc.integer({ min: 1, max: 8 }),
      async (replays, pick, limit) => {
        const broker = new MemoryBroker();
        // Subscribed, as a channel's stream is while it has clients.
        const { unsubscribe } = await collect(broker, "s");
        const ids: string[] = [];
        // Model: the entries kept are the last `replay` ones at each publish,
        // and once dropped an entry never comes back.
        let firstKept = 0;
        for (const [i, replay] of replays.entries()) {
          ids.push(await publish(broker, String(i), { replay }));
          firstKept = Math.max(firstKept, ids.length - replay);
        }
        const from = pick % ids.length;
        const page = await broker.history("s", { after: ids[from]!, limit });
        // Resumable when nothing after `from` was dropped.
        if (from + 1 >= firstKept) {
          assert.deepEqual(
            page?.map((entry) => entry.id),
            ids.slice(from + 1, from + 1 + limit),
          );
        } else {
          assert.equal(page, null);
        }
        unsubscribe();
        await broker.close();
      },
    ),
  );
});

test("MemoryBroker keeps at most maxHistoryBytes of a stream's history, dropping the oldest first", async () => {
  const broker = new MemoryBroker({ maxHistoryBytes: 1000 });
  const ids: string[] = [];
  for (let i = 0; i < 10; i++) {
    ids.push(await publish(broker, String(i).repeat(300)));
  }
  const other = await publish(broker, "o", { name: "other" });
  // About 310 bytes each: the newest three fit.
  assert.deepEqual(
    (await dataAfter(broker, ids[6]!))?.map((data) => (data as string)[0]),
    ["7", "8", "9"],
  );
  assert.equal(await dataAfter(broker, ids[5]!), null);
  // One entry larger than the bound is delivered, then dropped at once; the
  // newest dropped id still resumes.
  const { entries, unsubscribe } = await collect(broker, "s");
  const big = await publish(broker, "b".repeat(5000));
  assert.equal(entries.length, 1);
  assert.equal(await dataAfter(broker, ids[9]!), null);
  assert.deepEqual(await dataAfter(broker, big), []);
  // Each stream has its own bound.
  assert.deepEqual(await dataAfter(broker, other, "other"), []);
  unsubscribe();
  await broker.close();
  assert.throws(() => new MemoryBroker({ maxHistoryBytes: -1 }), RangeError);
  assert.throws(
    () => new MemoryBroker({ maxHistoryBytes: "1" as unknown as number }),
    TypeError,
  );
});

test("MemoryBroker bounds a stream's history at 16 MiB by default: a 20 MiB message does not stay", async () => {
  const broker = new MemoryBroker();
  const { unsubscribe } = await collect(broker, "s");
  const before = await publish(broker, "a");
  const big = await publish(broker, "x".repeat(20 * 1024 * 1024));
  assert.equal(await dataAfter(broker, before), null);
  assert.deepEqual(await dataAfter(broker, big), []);
  const after = await publish(broker, "b");
  assert.deepEqual(await dataAfter(broker, big), ["b"]);
  assert.deepEqual(await dataAfter(broker, after), []);
  unsubscribe();
  await broker.close();
});

test("MemoryBroker forgets a stream's history expireIn after its last publish, and frees it when nobody subscribes", async () => {
  // Only Date is fake: the broker reads the time from it.
  const clock = FakeTimers.install({ toFake: ["Date"], now: Date.now() });
  const broker = new MemoryBroker({ expireIn: 60_000 });
  try {
    const { entries, unsubscribe } = await collect(broker, "kept");
    const kept = await publish(broker, "a", { name: "kept" });
    const idle = await publish(broker, "b", { name: "idle" });
    clock.tick(59_000);
    assert.deepEqual(await dataAfter(broker, kept, "kept"), []);
    const fresh = await publish(broker, "c", { name: "kept" });
    clock.tick(2_000);
    // "idle" had nothing for 61 s: forgotten. "kept" had an entry 2 s ago.
    assert.equal(await dataAfter(broker, idle, "idle"), null);
    assert.deepEqual(await dataAfter(broker, kept, "kept"), ["c"]);
    clock.tick(60_000);
    // Subscribed: its history goes, its subscriber stays.
    assert.equal(await dataAfter(broker, fresh, "kept"), null);
    const last = await publish(broker, "d", { name: "kept" });
    assert.deepEqual(dataOf(entries), ["a", "c", "d"]);
    assert.deepEqual(await dataAfter(broker, last, "kept"), []);
    unsubscribe();
    assert.throws(() => new MemoryBroker({ expireIn: 0 }), RangeError);
    assert.throws(
      () => new MemoryBroker({ expireIn: "1" as unknown as number }),
      TypeError,
    );
  } finally {
    clock.uninstall();
    await broker.close();
  }
});

test("MemoryBroker and BroadcastChannelBroker hold no memory for streams that keep nothing and have no subscriber", async () => {
  // Measured in a process of its own, with a garbage collector to call.
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--v8-flags=--expose-gc",
      new URL("./fixtures/broker_state.ts", import.meta.url).pathname,
    ],
  }).output();
  assert.equal(code, 0, new TextDecoder().decode(stderr));
  const perStream = JSON.parse(new TextDecoder().decode(stdout));
  // Before, per stream, kept until close(): 808 bytes (MemoryBroker), 1 916
  // (BroadcastChannelBroker, with an open channel), 841 (MemoryBroker with
  // history, idle past expireIn). Now 20, 18 and 4.
  for (const [broker, bytes] of Object.entries(perStream)) {
    assert.ok((bytes as number) < 100, `${broker}: ${bytes} bytes per stream`);
  }
});
