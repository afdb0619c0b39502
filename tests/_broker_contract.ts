// Copyright the sse authors. MIT license.
/**
 * The {@linkcode SSEBroker} contract (broker.md, `_broker.ts`) as tests that
 * run against any broker: `testBrokerContract({ name, open })` registers one
 * `Deno.test` per rule. Delivery may be synchronous (MemoryBroker) or come
 * later from another connection (RedisBroker), so every check waits for the
 * entries it expects, then asserts the exact sequence.
 *
 * @module
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import type {
  SSEBroker,
  SSEBrokerEntry,
  SSEBrokerSubscription,
} from "../_broker.ts";
import type { SSEMessage } from "../encoder.ts";

/** What one contract test runs against. */
export interface BrokerFixture {
  /** The broker under test. */
  broker: SSEBroker;
  /**
   * Another broker on the same backend, as another instance would have; the
   * same object for an in-process broker.
   */
  peer: SSEBroker;
  /** Releases everything: both brokers and what they need. */
  close(): Promise<void>;
}

/** Options of {@linkcode testBrokerContract}. */
export interface BrokerContractOptions {
  /** Class name, the first word of every test name. */
  name: string;
  /** A fresh fixture for one test. */
  open(): Promise<BrokerFixture>;
  /**
   * How many entries to publish with `replay: 10` so the first one is surely
   * trimmed (brokers that trim lazily keep more).
   * @default {30}
   */
  publishesToTrim?: number;
  /** fast-check runs of the concurrency property. @default {25} */
  numRuns?: number;
  /** Skip every test (the message says why). */
  ignore?: boolean;
}

/**
 * Deno 2.9 runs tests with the op and resource sanitizers off unless asked:
 * every broker must release its timers, sockets and reads by `close()`.
 */
export const SANITIZED = {
  sanitizeOps: true,
  sanitizeResources: true,
} as const;

/** How long a test waits for entries it expects before failing. */
const WAIT_MS = 10_000;

/** Collects what a subscription delivers and lets a test wait for it. */
export class Collector {
  readonly entries: SSEBrokerEntry[] = [];
  #waiters: { done: () => boolean; resolve: () => void }[] = [];
  readonly onEntry = (entry: SSEBrokerEntry): void => {
    this.entries.push(entry);
    this.#waiters = this.#waiters.filter((waiter) => {
      if (!waiter.done()) return true;
      waiter.resolve();
      return false;
    });
  };

  get ids(): string[] {
    return this.entries.map((entry) => entry.id);
  }

  /** Resolves once `count` entries have arrived; fails after 10 s. */
  until(count: number): Promise<void> {
    return this.#wait(() => this.entries.length >= count, `${count} entries`);
  }

  /** Resolves once the entry with this id has arrived; fails after 10 s. */
  untilId(id: string): Promise<void> {
    return this.#wait(
      () => this.entries.some((entry) => entry.id === id),
      `entry ${id}`,
    );
  }

  async #wait(done: () => boolean, what: string): Promise<void> {
    if (done()) return;
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      await new Promise<void>((resolve, reject) => {
        this.#waiters.push({ done, resolve });
        timer = setTimeout(
          () =>
            reject(
              new Error(
                `Expected ${what} within ${WAIT_MS} ms, got ${this.entries.length} entries`,
              ),
            ),
          WAIT_MS,
        );
      });
    } finally {
      clearTimeout(timer);
    }
  }
}

function message(data: string): { topic: string; message: SSEMessage } {
  return { topic: "", message: { data } };
}

async function publishAll(
  broker: SSEBroker,
  name: string,
  data: string[],
  replay = 100,
): Promise<string[]> {
  const ids: string[] = [];
  for (const item of data) {
    ids.push(await broker.publish(name, message(item), { replay }));
  }
  return ids;
}

function range(count: number, from = 0): string[] {
  return Array.from({ length: count }, (_, i) => String(from + i));
}

/**
 * Registers the contract tests for one broker implementation.
 *
 * @param options The broker's name and how to open a fixture.
 */
export function testBrokerContract(options: BrokerContractOptions): void {
  const { name, open } = options;
  const publishesToTrim = options.publishesToTrim ?? 30;
  const numRuns = options.numRuns ?? 25;
  const test = (title: string, fn: (fixture: BrokerFixture) => Promise<void>) =>
    Deno.test({
      name: `${name} ${title}`,
      ignore: options.ignore ?? false,
      ...SANITIZED,
      async fn() {
        const fixture = await open();
        try {
          await fn(fixture);
        } finally {
          await fixture.close();
        }
      },
    });

  test("delivers every field of the message, with the id the publish resolved to", async ({ broker, peer }) => {
    const received = new Collector();
    const subscription = await broker.subscribe("s", {}, received.onEntry);
    const messages: SSEMessage[] = [
      { data: "plain" },
      { event: "update", data: "line 1\nline 2\r\nline 3", retry: 2500 },
      { comment: "a comment\nover lines", data: " leading space" },
      { data: "" },
      { event: "ü 😀", data: '{"json":[1,2]}', id: "ignored" },
    ];
    const ids: string[] = [];
    for (const [i, item] of messages.entries()) {
      const topic = i % 2 ? "odd" : "";
      ids.push(
        await peer.publish("s", { topic, message: item }, { replay: 10 }),
      );
    }
    await received.until(messages.length);
    assert.deepEqual(received.ids, ids);
    assert.equal(new Set(ids).size, ids.length);
    for (const id of ids) assert.doesNotMatch(id, /[\r\n\0]/);
    assert.deepEqual(
      received.entries.map((entry) => entry.topic),
      ["", "odd", "", "odd", ""],
    );
    const { id: _, ...last } = messages[4]!;
    assert.deepEqual(
      received.entries.map((entry) => entry.message),
      [...messages.slice(0, 4), last],
    );
    subscription.unsubscribe();
  });

  test("delivers to every subscriber of a stream and keeps streams apart", async ({ broker, peer }) => {
    const first = new Collector();
    const second = new Collector();
    const other = new Collector();
    const subscriptions = [
      await broker.subscribe("a", {}, first.onEntry),
      await broker.subscribe("a", {}, second.onEntry),
      await broker.subscribe("b", {}, other.onEntry),
    ];
    const a = await publishAll(peer, "a", ["1", "2"]);
    const b = await publishAll(peer, "b", ["3"]);
    await Promise.all([first.until(2), second.until(2), other.until(1)]);
    assert.deepEqual(first.ids, a);
    assert.deepEqual(second.ids, a);
    assert.deepEqual(other.ids, b);
    assert.deepEqual(other.entries.map((entry) => entry.message.data), ["3"]);
    for (const subscription of subscriptions) subscription.unsubscribe();
  });

  test("replays exactly the kept entries after lastEventId, then live ones", async ({ broker, peer }) => {
    const ids = await publishAll(peer, "s", range(6));
    const received = new Collector();
    const subscription = await broker.subscribe(
      "s",
      { lastEventId: ids[2]! },
      received.onEntry,
    );
    assert.equal(subscription.resumed, true);
    ids.push(...await publishAll(peer, "s", range(2, 6)));
    await received.until(5);
    assert.deepEqual(received.ids, ids.slice(3));
    assert.deepEqual(
      received.entries.map((entry) => entry.message.data),
      range(5, 3),
    );
    subscription.unsubscribe();
  });

  test("gives a subscription opened inside another's onEntry each entry once", async ({ broker, peer }) => {
    const [first] = await publishAll(peer, "s", ["0"]);
    const inner = new Collector();
    const opened: Promise<SSEBrokerSubscription>[] = [];
    const outer = await broker.subscribe("s", {}, () => {
      // While entry "1" is being delivered, a client resumes after "0".
      if (opened.length === 0) {
        opened.push(
          broker.subscribe("s", { lastEventId: first! }, inner.onEntry),
        );
      }
    });
    const ids = await publishAll(peer, "s", ["1", "2"]);
    await inner.until(2);
    const subscription = await opened[0]!;
    assert.equal(subscription.resumed, true);
    // Let any duplicate that is on its way arrive before judging.
    await publishAll(peer, "s", ["3"]);
    await inner.until(3);
    assert.deepEqual(inner.entries.map((entry) => entry.message.data), [
      "1",
      "2",
      "3",
    ]);
    assert.deepEqual(inner.ids.slice(0, 2), ids);
    subscription.unsubscribe();
    outer.unsubscribe();
  });

  test("resumes from the newest id with nothing to replay", async ({ broker, peer }) => {
    const ids = await publishAll(peer, "s", range(3));
    const received = new Collector();
    const subscription = await broker.subscribe(
      "s",
      { lastEventId: ids[2]! },
      received.onEntry,
    );
    assert.equal(subscription.resumed, true);
    const next = await publishAll(peer, "s", ["next"]);
    await received.until(1);
    assert.deepEqual(received.ids, next);
    subscription.unsubscribe();
  });

  test("reports resumed false for an id it never assigned, and delivers live entries only", async ({ broker, peer }) => {
    const ids = await publishAll(peer, "s", range(3));
    const unknown = [
      "",
      "nope",
      "0-0",
      "1-0",
      "99999999999999-0",
      `${ids[1]}0`,
      `${ids[1]}\n`,
    ];
    const collectors = unknown.map(() => new Collector());
    const subscriptions = await Promise.all(
      unknown.map((lastEventId, i) =>
        broker.subscribe("s", { lastEventId }, collectors[i]!.onEntry)
      ),
    );
    for (const [i, subscription] of subscriptions.entries()) {
      assert.equal(subscription.resumed, false, `lastEventId ${unknown[i]}`);
    }
    const live = await publishAll(peer, "s", ["live"]);
    for (const collector of collectors) {
      await collector.until(1);
      assert.deepEqual(collector.ids, live);
    }
    for (const subscription of subscriptions) subscription.unsubscribe();
  });

  test("reports resumed false for an id older than the history kept", async ({ broker, peer }) => {
    const ids = await publishAll(peer, "s", range(publishesToTrim), 10);
    const old = new Collector();
    const oldSubscription = await broker.subscribe(
      "s",
      { lastEventId: ids[0]! },
      old.onEntry,
    );
    assert.equal(oldSubscription.resumed, false);
    const recent = new Collector();
    const recentSubscription = await broker.subscribe(
      "s",
      { lastEventId: ids.at(-6)! },
      recent.onEntry,
    );
    assert.equal(recentSubscription.resumed, true);
    const live = await publishAll(peer, "s", ["live"], 10);
    await Promise.all([old.until(1), recent.until(6)]);
    assert.deepEqual(old.ids, live);
    assert.deepEqual(recent.ids, [...ids.slice(-5), ...live]);
    oldSubscription.unsubscribe();
    recentSubscription.unsubscribe();
  });

  test("stops delivering at unsubscribe, which is idempotent", async ({ broker, peer }) => {
    const leaving = new Collector();
    const staying = new Collector();
    const gone = await broker.subscribe("s", {}, leaving.onEntry);
    const kept = await broker.subscribe("s", {}, staying.onEntry);
    const first = await publishAll(peer, "s", ["1"]);
    await Promise.all([leaving.until(1), staying.until(1)]);
    gone.unsubscribe();
    gone.unsubscribe();
    const second = await publishAll(peer, "s", ["2"]);
    // `staying` gets entries in the same delivery as `leaving` would.
    await staying.until(2);
    assert.deepEqual(staying.ids, [...first, ...second]);
    assert.deepEqual(leaving.ids, first);
    kept.unsubscribe();
  });

  test("delivers to a subscriber that stops and starts again, from where it asks", async ({ broker, peer }) => {
    const before = new Collector();
    const first = await broker.subscribe("s", {}, before.onEntry);
    const ids = await publishAll(peer, "s", range(2));
    await before.until(2);
    first.unsubscribe();
    ids.push(...await publishAll(peer, "s", range(2, 2)));
    const after = new Collector();
    const second = await broker.subscribe(
      "s",
      { lastEventId: before.ids.at(-1)! },
      after.onEntry,
    );
    assert.equal(second.resumed, true);
    ids.push(...await publishAll(peer, "s", ["4"]));
    await after.until(3);
    assert.deepEqual([...before.ids, ...after.ids], ids);
    second.unsubscribe();
  });

  test("reports a throwing subscriber and still delivers to the others", async ({ broker, peer }) => {
    const reported: unknown[] = [];
    const onError = (event: ErrorEvent) => {
      event.preventDefault();
      reported.push(event.error);
    };
    globalThis.addEventListener("error", onError);
    try {
      let calls = 0;
      const throwing = await broker.subscribe("s", {}, () => {
        calls++;
        throw new Error(`boom ${calls}`);
      });
      const received = new Collector();
      const subscription = await broker.subscribe("s", {}, received.onEntry);
      const ids = await publishAll(peer, "s", ["1", "2"]);
      await received.until(2);
      assert.deepEqual(received.ids, ids);
      assert.equal(calls, 2);
      assert.deepEqual(
        reported.map((error) => (error as Error).message),
        ["boom 1", "boom 2"],
      );
      throwing.unsubscribe();
      subscription.unsubscribe();
    } finally {
      globalThis.removeEventListener("error", onError);
    }
  });

  test("refuses what it cannot store, naming what is wrong", async ({ broker }) => {
    await assert.rejects(
      broker.publish("s", message("x"), { replay: -1 }),
      RangeError,
    );
    await assert.rejects(
      broker.publish("s", message("x"), { replay: 1.5 }),
      RangeError,
    );
    await assert.rejects(
      broker.publish("s", { topic: "", message: { data: { a: 1 } } }, {
        replay: 1,
      }),
      /Invalid message data/,
    );
    await assert.rejects(
      broker.publish("s", { topic: 1 as unknown as string, message: {} }, {
        replay: 1,
      }),
      /Invalid topic/,
    );
    await assert.rejects(
      broker.publish(1 as unknown as string, message("x"), { replay: 1 }),
      /Invalid stream name/,
    );
    await assert.rejects(
      broker.subscribe("s", {}, "no" as unknown as () => void),
      /Invalid onEntry/,
    );
    await assert.rejects(
      broker.subscribe("s", { lastEventId: 1 as unknown as string }, () => {}),
      /Invalid lastEventId/,
    );
  });

  test("close ends every subscription and refuses later calls", async ({ broker, peer }) => {
    const received = new Collector();
    await broker.subscribe("s", {}, received.onEntry);
    const first = await publishAll(peer, "s", ["1"]);
    await received.until(1);
    await broker.close();
    await broker.close();
    if (peer !== broker) {
      // Another instance goes on; the closed one delivers nothing more.
      const watcher = new Collector();
      const watching = await peer.subscribe("s", {}, watcher.onEntry);
      await publishAll(peer, "s", ["2"]);
      await watcher.until(1);
      watching.unsubscribe();
    }
    assert.deepEqual(received.ids, first);
    await assert.rejects(broker.publish("s", message("x"), { replay: 1 }), {
      name: "TypeError",
      message: /closed/,
    });
    await assert.rejects(broker.subscribe("s", {}, () => {}), {
      name: "TypeError",
      message: /closed/,
    });
  });

  test("leaves no gap and no duplicate between replay and live entries published meanwhile", async ({ broker, peer }) => {
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: 8 }),
        fc.option(fc.nat(), { nil: undefined }),
        fc.integer({ min: 0, max: 12 }),
        fc.boolean(),
        async (before, resumeAt, during, shared) => {
          const stream = `p${run++}`;
          // A subscription already open on the stream (as a channel's shared
          // one is) takes another path in brokers that read streams lazily.
          const other = shared
            ? await broker.subscribe(stream, {}, () => {})
            : undefined;
          const ids = await publishAll(peer, stream, range(before));
          const lastEventId = resumeAt === undefined || before === 0
            ? undefined
            : ids[resumeAt % before]!;
          const received = new Collector();
          // Publishes race the subscription: some land before it, some while
          // it replays, some after.
          const racing = publishAll(peer, stream, range(during, before));
          const subscription = await broker.subscribe(
            stream,
            lastEventId === undefined ? {} : { lastEventId },
            received.onEntry,
          );
          ids.push(...await racing);
          const end = await publishAll(peer, stream, ["end"]);
          ids.push(...end);
          await received.untilId(end[0]!);
          subscription.unsubscribe();
          other?.unsubscribe();
          // Exactly a contiguous run of ids up to the newest, in order: from
          // the one after lastEventId, or (live only) from wherever it began,
          // which is never after the first publish that followed subscribe.
          const from = lastEventId === undefined
            ? ids.indexOf(received.ids[0]!)
            : ids.indexOf(lastEventId) + 1;
          assert.ok(from >= 0);
          assert.deepEqual(received.ids, ids.slice(from));
          if (lastEventId !== undefined) {
            assert.equal(subscription.resumed, true);
          }
        },
      ),
      { numRuns },
    );
  });
}
