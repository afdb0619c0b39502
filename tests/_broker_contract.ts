// Copyright the sse authors. MIT license.
/**
 * The {@linkcode SSEBroker} contract (`_broker.ts`) as tests that run against
 * any broker: `testBrokerContract({ name, open })` registers one `Deno.test`
 * per rule. Delivery may be synchronous (MemoryBroker) or come later from
 * another connection (RedisBroker), so every check waits for the entries it
 * expects, then asserts the exact sequence.
 *
 * @module
 */

import assert from "node:assert/strict";
import fc from "fast-check";
import FakeTimers from "@sinonjs/fake-timers";
import type {
  SSEBroker,
  SSEBrokerEntry,
  SSEBrokerGap,
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
  /** What the brokers reported through their `onError` option, in order. */
  errors: Error[];
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
  /** fast-check runs of the property tests. @default {25} */
  numRuns?: number;
  /**
   * Whether the fixture trims entries beyond `replay` at once, before every
   * reader has read them (DenoKvBroker with `trimDelay: 0`): the live
   * delivery of a burst published with a tiny `replay` is then not asked of
   * it. @default {false}
   */
  trimsAtOnce?: boolean;
  /**
   * Stores, in stream `name` of the fixture's backend, one entry that the
   * broker cannot decode, as another process could write it, and resolves
   * once it is stored. Absent for a broker that only holds entries it made
   * itself (its test is then skipped).
   */
  poison?(fixture: BrokerFixture, name: string): Promise<void>;
  /**
   * Stores at the end of stream `name`, as another program (or an earlier
   * version) could write it, one valid entry whose message is `message`
   * (which has an `id` of its own), and resolves once it is stored. Absent
   * for a broker that only holds entries it made itself.
   */
  forge?(
    fixture: BrokerFixture,
    name: string,
    message: SSEMessage,
  ): Promise<void>;
  /**
   * A new broker on the fixture's backend after a restart that lost its
   * state (a new process, a Redis without persistence): ids from before must
   * not resume there. The test closes it. Absent when the backend cannot
   * lose state (its test is then skipped).
   */
  restart?(fixture: BrokerFixture): Promise<SSEBroker>;
  /**
   * Overwrites by hand, where the backend keeps stream `name`, what the
   * broker wrote with something that is not one of its streams (a Redis key
   * of another type; a Deno KV head that is not one, and a key beyond it),
   * as another program could, and resolves once it is stored. Absent for a
   * broker whose streams no other program can reach.
   */
  clobber?(fixture: BrokerFixture, name: string): Promise<void>;
  /**
   * Makes the backend drop everything it keeps of stream `name` while the
   * brokers run and subscribe to it, as its own expiry or eviction would (a
   * Redis key deleted or evicted, Deno KV keys that expired, an in-memory
   * history that expired), and resolves once it is gone. The stream then
   * starts again with the next publish. Absent when nothing can drop a
   * stream (its test is then skipped).
   */
  expire?(fixture: BrokerFixture, name: string): Promise<void>;
  /**
   * Publishes `count` entries `{ data: "behind" }` (topic `""`) to stream
   * `name` from outside this process while it is held back (its event loop
   * busy, as under a CPU-heavy request or a long garbage collection), with a
   * `replay` that keeps fewer than `count`, so that a live reader of the
   * stream in this process finds the oldest of them gone; returns once they
   * are stored. Absent for a broker that cannot lose an entry before its
   * subscribers get it (it delivers each as it is published, as
   * MemoryBroker does): its test is then skipped.
   */
  fallBehind?(fixture: BrokerFixture, name: string, count: number): void;
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

/** Printable ASCII: what every id must be (U+0021 to U+007E). */
const PRINTABLE = /^[\x21-\x7e]+$/;

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

const KEEP = { replay: 100 };

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
 * Every kept entry after `after`, paged `limit` at a time as a channel pages
 * it; `null` when the first page is.
 */
export async function readAll(
  broker: SSEBroker,
  name: string,
  after: string,
  limit: number,
): Promise<SSEBrokerEntry[] | null> {
  const all: SSEBrokerEntry[] = [];
  for (let position = after;;) {
    const page = await broker.history(name, { after: position, limit });
    if (page === null) {
      if (all.length === 0) return null;
      throw new Error(`history lost its place after ${position}`);
    }
    assert.ok(page.length <= limit, `a page of ${page.length} > ${limit}`);
    if (page.length === 0) return all;
    all.push(...page);
    position = page.at(-1)!.id;
  }
}

/**
 * The `expire` hook of a broker whose streams forget their history
 * `expireIn` ms after the last entry, by `Date.now()`, as the in-process
 * brokers do: moves the clock past it while the broker looks at the stream.
 *
 * @param broker The broker.
 * @param name The stream.
 * @param expireIn The broker's `expireIn`, in ms.
 */
export async function expireByClock(
  broker: SSEBroker,
  name: string,
  expireIn: number,
): Promise<void> {
  // Only Date: the test's own timers run on real time.
  const clock = FakeTimers.install({
    toFake: ["Date"],
    now: Date.now() + expireIn,
  });
  try {
    assert.equal(await broker.history(name, { after: "-", limit: 1 }), null);
  } finally {
    clock.uninstall();
  }
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
  const test = (
    title: string,
    fn: (fixture: BrokerFixture) => Promise<void>,
    ignore = false,
  ) =>
    Deno.test({
      name: `${name} ${title}`,
      ignore: ignore || (options.ignore ?? false),
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
    const subscription = await broker.subscribe("s", received.onEntry);
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
    assert.deepEqual(
      received.entries.map((entry) => entry.topic),
      ["", "odd", "", "odd", ""],
    );
    const { id: _, ...last } = messages[4]!;
    const expected = [...messages.slice(0, 4), last];
    assert.deepEqual(received.entries.map((entry) => entry.message), expected);
    // History hands out the same entries.
    const kept = await broker.history("s", { after: ids[0]!, limit: 10 });
    assert.deepEqual(kept, received.entries.slice(1));
    subscription.unsubscribe();
  });

  test(
    "delivers live what is published with replay 0 or 1, a burst included: replay is history, not delivery",
    async ({ broker, peer }) => {
      // Before (RedisBroker): XADD MAXLEN ~ 0 trimmed each entry before any
      // reader read it: 0 of 5 delivered, so a channel with replay 0 on Redis
      // delivered nothing live.
      for (const replay of [0, 1]) {
        const received = new Collector();
        const subscription = await broker.subscribe(
          `r${replay}`,
          received.onEntry,
        );
        const ids = await Promise.all(
          range(50).map((data) =>
            peer.publish(`r${replay}`, message(data), { replay })
          ),
        );
        await received.until(ids.length);
        // Each once (the order of concurrent publishes is the broker's).
        assert.equal(received.ids.length, ids.length);
        assert.deepEqual(new Set(received.ids), new Set(ids));
        subscription.unsubscribe();
      }
    },
    options.trimsAtOnce,
  );

  test(
    "reports entries trimmed before its live reader read them, once per gap, naming the stream and the range, and tells onGap before the entry after it",
    async (fixture) => {
      // Before (RedisBroker): XREAD returned what was left, 104 of 502
      // delivered and nothing reported.
      const { broker, peer, errors } = fixture;
      const received = new Collector();
      // Each gap, with how many entries had been delivered when it came.
      const gaps: { gap: SSEBrokerGap; at: number }[] = [];
      const subscription = await broker.subscribe("s", received.onEntry, {
        onGap: (gap) => gaps.push({ gap, at: received.entries.length }),
      });
      const count = 500;
      for (let round = 1; round <= 2; round++) {
        const [start] = await publishAll(peer, "s", [`start ${round}`]);
        await received.untilId(start!);
        const had = received.entries.length;
        options.fallBehind!(fixture, "s", count);
        const [end] = await publishAll(peer, "s", [`end ${round}`]);
        await received.untilId(end!);
        const burst = received.entries.slice(had, -1);
        assert.ok(
          burst.length < count,
          `${burst.length} of ${count}: none lost`,
        );
        assert.ok(burst.every((entry) => entry.message.data === "behind"));
        assert.equal(errors.length, round, errors.join("\n"));
        const report = errors.at(-1)!.message;
        assert.match(report, /"s"/, "the stream is named");
        assert.match(report, /trimmed/);
        assert.match(
          report,
          /\d+.* to \d+|after \S+ and before \S+/,
          "a range",
        );
        assert.doesNotMatch(report, /\n/, "one line");
        // onGap: once per gap, between the entries that bracket it.
        assert.equal(gaps.length, round, JSON.stringify(gaps));
        const { gap, at } = gaps.at(-1)!;
        assert.ok(at > 0 && at < received.entries.length);
        const previous = received.entries[at - 1]!.id;
        if (gap.after !== undefined) assert.equal(gap.after, previous);
        assert.equal(gap.before, received.entries[at]!.id);
        assert.equal(received.entries[at]!.message.data, "behind");
        assert.ok(
          at - 1 >= received.ids.indexOf(start!),
          "after this round's start",
        );
        if (gap.lost !== undefined) {
          assert.equal(gap.lost, count - burst.length);
        }
      }
      assert.equal(new Set(received.ids).size, received.ids.length);
      subscription.unsubscribe();
    },
    options.fallBehind === undefined,
  );

  test("issues ids of printable ASCII, unique, in publish order", async ({ broker, peer }) => {
    const ids = [
      ...await publishAll(peer, "s", range(20)),
      ...await publishAll(broker, "s", range(20, 20)),
    ];
    assert.equal(new Set(ids).size, ids.length);
    for (const id of ids) assert.match(id, PRINTABLE);
    // Ordered: history after the first id lists the others in publish order.
    const kept = await readAll(broker, "s", ids[0]!, 7);
    assert.deepEqual(kept?.map((entry) => entry.id), ids.slice(1));
  });

  test("delivers to every subscriber of a stream and keeps streams apart", async ({ broker, peer }) => {
    const first = new Collector();
    const second = new Collector();
    const other = new Collector();
    const subscriptions = [
      await broker.subscribe("a", first.onEntry),
      await broker.subscribe("a", second.onEntry),
      await broker.subscribe("b", other.onEntry),
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

  test("pages the kept entries after an id, oldest first, and answers [] after the newest", async ({ broker, peer }) => {
    const ids = await publishAll(peer, "s", range(6));
    const page = await broker.history("s", { after: ids[1]!, limit: 3 });
    assert.deepEqual(page?.map((entry) => entry.id), ids.slice(2, 5));
    assert.deepEqual(page?.map((entry) => entry.message.data), ["2", "3", "4"]);
    const rest = await broker.history("s", { after: ids[4]!, limit: 3 });
    assert.deepEqual(rest?.map((entry) => entry.id), ids.slice(5));
    assert.deepEqual(
      await broker.history("s", { after: ids[5]!, limit: 3 }),
      [],
    );
    assert.deepEqual(
      (await broker.history("s", { after: ids[0]!, limit: 100 }))?.map((
        entry,
      ) => entry.id),
      ids.slice(1),
    );
  });

  test("continues exactly from the last id of a page, whatever the page size", async ({ broker, peer }) => {
    const ids = await publishAll(peer, "s", range(25));
    for (const limit of [1, 2, 3, 7, 24, 25, 1000]) {
      for (const from of [0, 5, 23]) {
        const all = await readAll(broker, "s", ids[from]!, limit);
        assert.deepEqual(
          all?.map((entry) => entry.id),
          ids.slice(from + 1),
          `limit ${limit}, after entry ${from}`,
        );
      }
    }
  });

  test("answers null for an id that is not a resume point of the stream", async ({ broker, peer }) => {
    const before = await publishAll(peer, "other", ["x"]);
    const ids = await publishAll(peer, "s", range(3));
    // Issued later, for another stream: both foreign and from the future.
    const later = await publishAll(peer, "other", ["y"]);
    const newest = ids.at(-1)!;
    const foreign: [string, string][] = [
      [before[0]!, "another stream's id"],
      [later[0]!, "another stream's later id"],
      ["", "empty"],
      ["nope", "not an id"],
      ["0-0", "before any id"],
      ["1-0", "a small id"],
      ["99999999999999-0", "a future-looking id"],
      [`${newest}0`, "the newest id with a digit added"],
      [`${newest}-1`, "the newest id with a suffix"],
      [`${newest}\n`, "the newest id with a line feed"],
      [` ${newest}`, "the newest id with a leading space"],
      [`${newest} `, "the newest id with a trailing space"],
      [newest.slice(0, -1), "the newest id cut short"],
    ];
    for (const [after, what] of foreign) {
      assert.equal(
        await broker.history("s", { after, limit: 10 }),
        null,
        `${what}: ${JSON.stringify(after)}`,
      );
    }
    // A stream that never had an entry has no resume point at all.
    assert.equal(
      await broker.history("never", { after: newest, limit: 10 }),
      null,
    );
    // The real ids still resume.
    assert.deepEqual(
      await broker.history("s", { after: newest, limit: 10 }),
      [],
    );
  });

  test("answers null for an id older than the history kept", async ({ broker, peer }) => {
    const ids = await publishAll(peer, "s", range(publishesToTrim), 10);
    assert.equal(await broker.history("s", { after: ids[0]!, limit: 5 }), null);
    const recent = await readAll(broker, "s", ids.at(-6)!, 2);
    assert.deepEqual(recent?.map((entry) => entry.id), ids.slice(-5));
  });

  test(
    "answers null for an id from before a restart that lost the history",
    async (fixture) => {
      const { peer } = fixture;
      // Ten each: a backend whose ids restart with it (counters, clocks,
      // versionstamps of a new database) gives some of the same ids again.
      const old = await publishAll(peer, "s", range(10));
      const reborn = await options.restart!(fixture);
      try {
        const fresh = await publishAll(reborn, "s", range(10, 10));
        for (const id of old) {
          assert.equal(
            await reborn.history("s", { after: id, limit: 10 }),
            null,
          );
        }
        const kept = await reborn.history("s", { after: fresh[0]!, limit: 10 });
        assert.deepEqual(kept?.map((entry) => entry.id), fresh.slice(1));
      } finally {
        await reborn.close();
      }
    },
    options.restart === undefined,
  );

  test(
    "delivers every entry of a stream dropped and started again while subscribed, and never reuses an id",
    async (fixture) => {
      const { broker, peer } = fixture;
      const received = new Collector();
      const subscription = await broker.subscribe("s", received.onEntry);
      const ids: string[] = [];
      // Several rounds: a backend that numbers a new stream from its clock
      // is caught when the drop and the next publish share a tick, one that
      // numbers it from 1 when the old one was as long as the new one.
      for (let round = 0; round < 6; round++) {
        const before = await publishAll(
          peer,
          "s",
          range(1 + round % 3).map((i) => `${round} before ${i}`),
        );
        ids.push(...before);
        await received.untilId(before.at(-1)!);
        await options.expire!(fixture, "s");
        // Published at once, as a burst is: one commit, one tick.
        const burst = await Promise.all(
          range(4).map((i) =>
            peer.publish("s", message(`${round} ${i}`), KEEP)
          ),
        );
        ids.push(...burst);
        await received.untilId(burst.at(-1)!);
        // What came before the drop is gone: not a resume point, or one
        // after which exactly the new entries follow.
        for (const id of before) {
          const page = await broker.history("s", { after: id, limit: 100 });
          if (page !== null) {
            assert.deepEqual(
              page.map((entry) => entry.id),
              ids.slice(ids.indexOf(id) + 1),
              `round ${round}: history after ${id}`,
            );
          }
        }
        assert.deepEqual(
          (await readAll(broker, "s", burst[0]!, 2))?.map((entry) => entry.id),
          burst.slice(1),
        );
      }
      assert.equal(new Set(ids).size, ids.length, "an id was issued twice");
      assert.deepEqual(received.ids, ids);
      subscription.unsubscribe();
    },
    options.expire === undefined,
  );

  test("shows an entry under the same id to every subscription and to history", async ({ broker, peer }) => {
    const one = new Collector();
    const two = new Collector();
    const first = await broker.subscribe("s", one.onEntry);
    const second = await peer.subscribe("s", two.onEntry);
    const [start] = await publishAll(peer, "s", ["start"]);
    const ids = await publishAll(broker, "s", range(5));
    await Promise.all([one.until(6), two.until(6)]);
    assert.deepEqual(one.ids, [start, ...ids]);
    assert.deepEqual(two.ids, [start, ...ids]);
    const fromBroker = await broker.history("s", { after: start!, limit: 10 });
    const fromPeer = await peer.history("s", { after: start!, limit: 10 });
    assert.deepEqual(fromBroker?.map((entry) => entry.id), ids);
    assert.deepEqual(fromPeer?.map((entry) => entry.id), ids);
    // An entry a subscription delivered is in history by then.
    const [next] = await publishAll(peer, "s", ["next"]);
    await one.untilId(next!);
    assert.deepEqual(
      (await broker.history("s", { after: ids.at(-1)!, limit: 10 }))?.map((
        entry,
      ) => entry.id),
      [next],
    );
    first.unsubscribe();
    second.unsubscribe();
  });

  test("gives a subscription opened inside another's onEntry each later entry once", async ({ broker, peer }) => {
    const inner = new Collector();
    const outer = new Collector();
    const opened = Promise.withResolvers<SSEBrokerSubscription>();
    const outerSubscription = await broker.subscribe("s", (entry) => {
      if (outer.entries.length === 0) {
        broker.subscribe("s", inner.onEntry).then(
          opened.resolve,
          opened.reject,
        );
      }
      outer.onEntry(entry);
    });
    await publishAll(peer, "s", ["1"]);
    await outer.until(1);
    const subscription = await opened.promise;
    const ids = await publishAll(peer, "s", ["2", "3"]);
    await inner.untilId(ids[1]!);
    // "1" may or may not arrive (it was being delivered): then once, first.
    const data = inner.entries.map((entry) => entry.message.data);
    assert.deepEqual(data.filter((item) => item !== "1"), ["2", "3"]);
    assert.ok(data.lastIndexOf("1") <= 0, `got ${data}`);
    subscription.unsubscribe();
    outerSubscription.unsubscribe();
  });

  test("keeps id order for every subscriber when a subscriber publishes from inside onEntry", async ({ broker, peer }) => {
    const first = new Collector();
    const second = new Collector();
    const third = new Collector();
    const published: Promise<string>[] = [];
    const reacting = await broker.subscribe("s", (entry) => {
      first.onEntry(entry);
      // A hook reacts to "a" by publishing, while "a" is being delivered.
      if (entry.message.data === "a") {
        published.push(broker.publish("s", message("b"), KEEP));
      }
    });
    const others = [
      await broker.subscribe("s", second.onEntry),
      await broker.subscribe("s", third.onEntry),
    ];
    const [a] = await publishAll(peer, "s", ["a"]);
    await Promise.all([first.until(2), second.until(2), third.until(2)]);
    const b = await published[0]!;
    for (const collector of [first, second, third]) {
      assert.deepEqual(collector.ids, [a, b]);
    }
    reacting.unsubscribe();
    for (const subscription of others) subscription.unsubscribe();
  });

  test("stops delivering at unsubscribe, which is idempotent", async ({ broker, peer }) => {
    const leaving = new Collector();
    const staying = new Collector();
    const gone = await broker.subscribe("s", leaving.onEntry);
    const kept = await broker.subscribe("s", staying.onEntry);
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

  test("reports a throwing subscriber through onError and still delivers to the others", async ({ broker, peer, errors }) => {
    const thrown: Error[] = [];
    const throwing = await broker.subscribe("s", () => {
      const error = new Error(`boom ${thrown.length + 1}`);
      thrown.push(error);
      throw error;
    });
    const received = new Collector();
    const subscription = await broker.subscribe("s", received.onEntry);
    const ids = await publishAll(peer, "s", ["1", "2"]);
    await received.until(2);
    assert.deepEqual(received.ids, ids);
    assert.equal(thrown.length, 2);
    for (const error of thrown) {
      assert.ok(
        errors.some((reported) =>
          reported === error || reported.cause === error
        ),
        `${error.message} reported`,
      );
    }
    throwing.unsubscribe();
    subscription.unsubscribe();
  });

  test(
    "skips an entry it cannot decode, live and in history, and reports it once with the stream and the id",
    async (fixture) => {
      const { broker, peer, errors } = fixture;
      const received = new Collector();
      const subscription = await broker.subscribe("s", received.onEntry);
      const [first] = await publishAll(peer, "s", ["before"]);
      await options.poison!(fixture, "s");
      const [last] = await publishAll(peer, "s", ["after"]);
      await received.untilId(last!);
      assert.deepEqual(received.ids, [first, last]);
      // Read again and again, as by every client that resumes past it.
      for (let i = 0; i < 5; i++) {
        const kept = await readAll(broker, "s", first!, 1);
        assert.deepEqual(kept?.map((entry) => entry.id), [last]);
      }
      assert.equal(errors.length, 1, errors.join("\n"));
      for (const error of errors) {
        assert.ok(error instanceof Error);
        assert.match(error.message, /"s"/, "the stream is named");
        assert.doesNotMatch(error.message, /\n/, "one line");
      }
      subscription.unsubscribe();
    },
    options.poison === undefined,
  );

  test(
    "hands out an entry written by another program under its own id, never the id inside its message",
    async (fixture) => {
      const { broker, peer } = fixture;
      const received = new Collector();
      const subscription = await broker.subscribe("s", received.onEntry);
      const [before] = await publishAll(peer, "s", ["before"]);
      // Its message names an older id: framed after the broker's, it would
      // become the client's Last-Event-ID, and the client would be sent
      // what it already has.
      await options.forge!(fixture, "s", { data: "forged", id: before! });
      const [after] = await publishAll(peer, "s", ["after"]);
      await received.untilId(after!);
      const kept = await broker.history("s", { after: before!, limit: 10 });
      for (const entries of [received.entries.slice(1), kept!]) {
        assert.deepEqual(
          entries.map((entry) => entry.message),
          [{ data: "forged" }, { data: "after" }],
        );
        assert.notEqual(entries[0]!.id, before);
        assert.match(entries[0]!.id, PRINTABLE);
      }
      assert.equal(received.entries[1]!.id, kept![0]!.id);
      subscription.unsubscribe();
    },
    options.forge === undefined,
  );

  test(
    "keeps every other stream live when one is overwritten by hand, and reports it naming that stream",
    async (fixture) => {
      const { broker, peer, errors } = fixture;
      const clobbered = new Collector();
      const other = new Collector();
      const subscriptions = [
        await broker.subscribe("s", clobbered.onEntry),
        await broker.subscribe("t", other.onEntry),
      ];
      const ids = await publishAll(peer, "t", ["1"]);
      await publishAll(peer, "s", ["s1"]);
      await other.untilId(ids[0]!);
      await options.clobber!(fixture, "s");
      // Published to the stream overwritten: refused, naming it, or taken
      // (the broker starts the stream again), then delivered.
      let taken: string | undefined;
      try {
        taken = await peer.publish("s", message("s2"), KEEP);
      } catch (error) {
        assert.match(String(error), /"s"/);
      }
      ids.push(...await publishAll(peer, "t", ["2", "3"]));
      await other.untilId(ids.at(-1)!);
      assert.deepEqual(other.ids, ids);
      if (taken !== undefined) await clobbered.untilId(taken);
      assert.ok(
        errors.some((error) => /"s"/.test(error.message)),
        `reported: ${errors.join("\n")}`,
      );
      for (const subscription of subscriptions) subscription.unsubscribe();
    },
    options.clobber === undefined,
  );

  test("refuses what it cannot store or read, naming what is wrong", async ({ broker }) => {
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
      broker.subscribe("s", "no" as unknown as () => void),
      /Invalid onEntry/,
    );
    for (const onGap of ["no", null, 1]) {
      await assert.rejects(
        broker.subscribe("s", () => {}, {
          onGap: onGap as unknown as () => void,
        }),
        { name: "TypeError", message: /Invalid onGap/ },
        String(onGap),
      );
    }
    await assert.rejects(
      broker.subscribe("s", () => {}, 5 as unknown as { onGap?: () => void }),
      { name: "TypeError", message: /Invalid subscribe options/ },
    );
    // Two arguments, or an options object without onGap, still subscribe.
    for (const options of [undefined, {}]) {
      (await broker.subscribe("s", () => {}, options)).unsubscribe();
    }
    await assert.rejects(
      broker.history("s", { after: 1 as unknown as string, limit: 1 }),
      { name: "TypeError", message: /Invalid after/ },
    );
    for (const limit of [0, -1, 1.5, NaN, Infinity]) {
      await assert.rejects(
        broker.history("s", { after: "x", limit }),
        { name: "RangeError", message: /Invalid limit/ },
        `limit ${limit}`,
      );
    }
  });

  test("refuses a stream name that is not well-formed Unicode, naming it", async ({ broker }) => {
    // A lone surrogate, as JSON.parse("\"\\ud800\"") gives: a backend that
    // stores UTF-8 turns it into U+FFFD, so two names would share a stream
    // and replies would name a key the broker never asked for.
    for (const name of ["room-\ud800", "\udc00", "a\udfff\ud800b"]) {
      const invalid = { name: "TypeError", message: /Invalid stream name/ };
      await assert.rejects(
        broker.publish(name, message("x"), KEEP),
        invalid,
        JSON.stringify(name),
      );
      await assert.rejects(broker.subscribe(name, () => {}), invalid);
      await assert.rejects(
        broker.history(name, { after: "x", limit: 1 }),
        invalid,
      );
    }
    // Well-formed names of any script, and surrogate pairs, are streams.
    const names = ["😀", "naïve", "\u4e2d\u6587"];
    for (const name of names) {
      const received = new Collector();
      const subscription = await broker.subscribe(name, received.onEntry);
      const [id] = await publishAll(broker, name, [name]);
      await received.untilId(id!);
      assert.deepEqual(received.entries.map((e) => e.message.data), [name]);
      subscription.unsubscribe();
    }
  });

  test("close ends every subscription and refuses later calls", async ({ broker, peer }) => {
    const received = new Collector();
    await broker.subscribe("s", received.onEntry);
    const first = await publishAll(peer, "s", ["1"]);
    await received.until(1);
    await broker.close();
    await broker.close();
    if (peer !== broker) {
      // Another instance goes on; the closed one delivers nothing more.
      const watcher = new Collector();
      const watching = await peer.subscribe("s", watcher.onEntry);
      await publishAll(peer, "s", ["2"]);
      await watcher.until(1);
      watching.unsubscribe();
    }
    assert.deepEqual(received.ids, first);
    const closed = { name: "TypeError", message: /closed/ };
    await assert.rejects(
      broker.publish("s", message("x"), { replay: 1 }),
      closed,
    );
    await assert.rejects(broker.subscribe("s", () => {}), closed);
    await assert.rejects(
      broker.history("s", { after: first[0]!, limit: 1 }),
      closed,
    );
  });

  test("delivers live entries as a contiguous run up to the newest, and history meets them without gap", async ({ broker, peer }) => {
    let run = 0;
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 8 }),
        fc.nat(),
        fc.integer({ min: 0, max: 12 }),
        fc.integer({ min: 1, max: 5 }),
        fc.boolean(),
        async (before, resumeAt, during, limit, shared) => {
          const stream = `p${run++}`;
          // A subscription already open on the stream (as another channel's
          // would be) takes another path in brokers that read streams lazily.
          const other = shared
            ? await broker.subscribe(stream, () => {})
            : undefined;
          const ids = await publishAll(peer, stream, range(before));
          const lastEventId = ids[resumeAt % before]!;
          const received = new Collector();
          // Publishes race the subscription: some land before it, some
          // while it is set up, some after. Each id is listed as its
          // publish resolves, which is in id order.
          const racing = (async () => {
            for (const item of range(during, before)) {
              ids.push(await peer.publish(stream, message(item), KEEP));
            }
          })();
          const subscription = await broker.subscribe(
            stream,
            received.onEntry,
          );
          const after = peer.publish(stream, message("after"), KEEP).then(
            (id) => {
              ids.push(id);
              return id;
            },
          );
          await racing;
          await after;
          const [end] = await publishAll(peer, stream, ["end"]);
          ids.push(end!);
          await received.untilId(end!);
          subscription.unsubscribe();
          other?.unsubscribe();
          // A contiguous run of ids up to the newest, in order, that began no
          // later than the first publish after subscribe resolved.
          const from = ids.indexOf(received.ids[0]!);
          assert.ok(from >= 0 && from <= ids.indexOf(await after));
          assert.deepEqual(received.ids, ids.slice(from));
          // History from any id before the live run meets it exactly, as a
          // resuming client's pages meet the shared subscription.
          const missed = await readAll(broker, stream, lastEventId, limit);
          assert.deepEqual(
            missed?.map((entry) => entry.id),
            ids.slice(ids.indexOf(lastEventId) + 1),
          );
        },
      ),
      { numRuns },
    );
  });
}
