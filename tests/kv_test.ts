// Copyright the sse authors. MIT license.
// DenoKvBroker on real Deno KV databases in temporary files: two handles of
// one file in one process, Workers (other isolates), and another `deno run`
// process; large entries, trimming, expiry, entries it did not write, a
// database locked by another connection; then the shared broker contract.

import assert from "node:assert/strict";
import { DatabaseSync } from "node:sqlite";
import FakeTimers from "@sinonjs/fake-timers";
import {
  DENO_KV_MAX_ENTRY_SIZE,
  DenoKvBroker,
  type DenoKvBrokerOptions,
  type SSEBrokerEntry,
  type SSEMessage,
} from "../kv.ts";
import {
  type BrokerFixture,
  Collector,
  testBrokerContract,
} from "./_broker_contract.ts";
import { assertClientsRecoverFromGap, GAP_STREAM } from "./_gap.ts";

// Deno 2.9 leaves the op and resource sanitizers off unless asked.
const SANITIZED = { sanitizeOps: true, sanitizeResources: true } as const;
const ID = /^[0-9a-f]{20}-[1-9][0-9]*\.[0-9a-z]{8}$/;

/** An id's parts: versionstamp, sequence and incarnation. */
function partsOf(id: string): { stamp: string; seq: number; inc: string } {
  const [, stamp, seq, inc] = /^(\w+)-(\d+)(?:\.(\w+))?$/.exec(id)!;
  return { stamp: stamp!, seq: Number(seq), inc: inc ?? "" };
}

/** A database file in a fresh temporary directory, with its handles. */
class TempKv {
  readonly dir: string;
  readonly path: string;
  #handles: Deno.Kv[] = [];

  private constructor(dir: string) {
    this.dir = dir;
    this.path = `${dir}/kv.sqlite3`;
  }

  static async create(): Promise<TempKv> {
    return new TempKv(await Deno.makeTempDir({ prefix: "sse-kv-test-" }));
  }

  /** Another handle on the file. */
  async open(): Promise<Deno.Kv> {
    const kv = await Deno.openKv(this.path);
    this.#handles.push(kv);
    return kv;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    for (const kv of this.#handles) {
      try {
        kv.close();
      } catch {
        // Closed by the test already.
      }
    }
    await Deno.remove(this.dir, { recursive: true });
  }
}

/** The data of each entry. */
function data(entries: SSEBrokerEntry[]): unknown[] {
  return entries.map((entry) => entry.message.data);
}

function message(data: string): { topic: string; message: SSEMessage } {
  return { topic: "", message: { data } };
}

async function publishAll(
  broker: DenoKvBroker,
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

/** Every key under a prefix. */
async function keys(kv: Deno.Kv, prefix: Deno.KvKey): Promise<Deno.KvKey[]> {
  const found: Deno.KvKey[] = [];
  for await (const entry of kv.list({ prefix })) found.push(entry.key);
  return found;
}

/**
 * Another process publishes `count` entries `{ data: "behind" }` to stream
 * `name` of the database at `path`, keeping one (`replay: 1`, trimmed at
 * once), while this one is held back: its readers see them by their poll,
 * or the next watch, and find the oldest gone.
 */
function publishElsewhere(path: string, name: string, count: number): void {
  const code = `
    const { DenoKvBroker } = await import(${
    JSON.stringify(new URL("../kv.ts", import.meta.url).href)
  });
    const kv = await Deno.openKv(${JSON.stringify(path)});
    const broker = new DenoKvBroker({ kv, trimDelay: 0 });
    for (let i = 0; i < ${count}; i++) {
      await broker.publish(${
    JSON.stringify(name)
  }, { topic: "", message: { data: "behind" } }, { replay: 1 });
    }
    await broker.close();
    kv.close();`;
  const { success, stderr } = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--unstable-kv", code],
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).outputSync();
  if (!success) throw new Error(new TextDecoder().decode(stderr));
}

function kvTest(
  name: string,
  fn: (db: TempKv) => Promise<void>,
): void {
  Deno.test({
    name,
    ...SANITIZED,
    async fn() {
      await using db = await TempKv.create();
      await fn(db);
    },
  });
}

/** A broker whose errors are collected instead of printed. */
function broker(
  kv: Deno.Kv,
  options: Omit<DenoKvBrokerOptions, "kv"> = {},
): DenoKvBroker & { errors: string[] } {
  const errors: string[] = [];
  const created = new DenoKvBroker({
    kv,
    onError: (error) => errors.push(error.message),
    ...options,
  });
  return Object.assign(created, { errors });
}

kvTest(
  "DenoKvBroker says that its Deno.Kv was closed when the caller closes it under a running broker, in every rejection and in one report",
  async (db) => {
    const kv = await db.open();
    const closedUnder = broker(kv, { pollInterval: 20 });
    const received = new Collector();
    const subscription = await closedUnder.subscribe("s", received.onEntry);
    const [first] = await publishAll(closedUnder, "s", ["a"]);
    await received.until(1);
    kv.close();
    const said = /its Deno\.Kv is closed \(close the broker before it\)$/;
    await assert.rejects(
      closedUnder.publish("s", message("b"), { replay: 9 }),
      {
        message: new RegExp(`^Cannot publish to "s": ${said.source}`),
      },
    );
    await assert.rejects(
      closedUnder.history("s", { after: first!, limit: 9 }),
      {
        message: new RegExp(`^Cannot read the history of "s": ${said.source}`),
      },
    );
    await assert.rejects(closedUnder.subscribe("t", () => {}), {
      message: new RegExp(`^Cannot subscribe to "t": ${said.source}`),
    });
    // The poll meets it too: one report, whatever the number of polls.
    await new Promise((resolve) => setTimeout(resolve, 200));
    subscription.unsubscribe();
    await closedUnder.close();
    assert.equal(closedUnder.errors.length, 1, closedUnder.errors.join("\n"));
    assert.match(closedUnder.errors[0]!, said);
  },
);

/**
 * The database, with watches that end after `reads` changes: cleanly, as a
 * watch whose connection the service closes (on Deno Deploy, say) ends, or
 * with an error (`fail`). Returns the wrapper and how many watches were
 * opened.
 */
function endingWatches(
  kv: Deno.Kv,
  reads: number,
  fail = false,
): { kv: Deno.Kv; watches: () => number } {
  let watches = 0;
  const wrapped = Object.create(kv) as Deno.Kv;
  wrapped.watch = ((keys: Deno.KvKey[]) => {
    watches++;
    const reader = kv.watch(keys).getReader();
    let left = reads;
    return new ReadableStream<Deno.KvEntryMaybe<unknown>[]>({
      async pull(controller) {
        if (left-- === 0) {
          await reader.cancel();
          if (fail) controller.error(new Error("watch connection reset"));
          else controller.close();
          return;
        }
        const { value, done } = await reader.read();
        if (done) controller.close();
        else controller.enqueue(value);
      },
      cancel: () => reader.cancel(),
    });
  }) as Deno.Kv["watch"];
  for (const method of ["atomic", "get", "list"] as const) {
    // deno-lint-ignore no-explicit-any
    (wrapped as any)[method] = (kv[method] as any).bind(kv);
  }
  return { kv: wrapped, watches: () => watches };
}

for (const fail of [false, true]) {
  kvTest(
    `DenoKvBroker watches again when a watch ${
      fail ? "fails" : "ends by itself"
    }, also with the poll off, losing nothing`,
    async (db) => {
      const kv = await db.open();
      const { kv: ending, watches } = endingWatches(kv, 3, fail);
      const reader = broker(ending, { pollInterval: Infinity });
      const publisher = broker(kv, { pollInterval: Infinity });
      const received = new Collector();
      const subscription = await reader.subscribe("s", received.onEntry);
      const ids: string[] = [];
      for (let i = 0; i < 6; i++) {
        ids.push(...await publishAll(publisher, "s", [String(i)]));
        // Each one through the watch (before: the first watch ended after two
        // changes, and nothing more was delivered).
        await received.untilId(ids.at(-1)!);
      }
      assert.deepEqual(received.ids, ids);
      assert.ok(watches() >= 3, `${watches()} watches`);
      subscription.unsubscribe();
      await publisher.close();
      await reader.close();
      assert.deepEqual(publisher.errors, []);
      // Each failure is reported (two here: reads worked in between).
      assert.equal(reader.errors.length > 0, fail);
      for (const error of reader.errors) {
        assert.equal(error, 'Cannot watch "s": watch connection reset');
      }
    },
  );
}

kvTest(
  "DenoKvBroker delivers live a burst published with replay 0 or 1: trimDelay keeps entries until every reader has read them",
  async (db) => {
    const reader = broker(await db.open());
    const publisher = broker(await db.open());
    for (const replay of [0, 1]) {
      const received = new Collector();
      const subscription = await reader.subscribe(
        `r${replay}`,
        received.onEntry,
      );
      const ids = await Promise.all(
        range(50).map((item) =>
          publisher.publish(`r${replay}`, message(item), { replay })
        ),
      );
      await received.until(ids.length);
      assert.deepEqual(new Set(received.ids), new Set(ids));
      subscription.unsubscribe();
    }
    await publisher.close();
    await reader.close();
    assert.deepEqual([...publisher.errors, ...reader.errors], []);
  },
);

kvTest(
  "DenoKvBroker delivers between two handles of one file by the watch alone",
  async (db) => {
    const publisher = broker(await db.open(), { pollInterval: Infinity });
    const reader = broker(await db.open(), { pollInterval: Infinity });
    const received = new Collector();
    const subscription = await reader.subscribe("s", received.onEntry);
    const ids = await publishAll(publisher, "s", ["a", "b", "c"]);
    await received.until(3);
    assert.deepEqual(received.ids, ids);
    assert.deepEqual(data(received.entries), ["a", "b", "c"]);
    subscription.unsubscribe();
    await publisher.close();
    await reader.close();
    assert.deepEqual([...publisher.errors, ...reader.errors], []);
  },
);

kvTest(
  "DenoKvBroker ids carry the commit's versionstamp: printable ASCII, unique and in order across brokers publishing at once",
  async (db) => {
    const a = broker(await db.open());
    const b = broker(await db.open());
    const reader = broker(await db.open());
    const received = new Collector();
    const subscription = await reader.subscribe("s", received.onEntry);
    // Unawaited publishes queue up, race the other handle's, and retry.
    const published = await Promise.all([
      ...range(40).map((i) =>
        a.publish("s", message(`a${i}`), { replay: 100 })
      ),
      ...range(40).map((i) =>
        b.publish("s", message(`b${i}`), { replay: 100 })
      ),
    ]);
    await received.until(80);
    assert.equal(new Set(published).size, 80);
    assert.deepEqual([...received.ids].sort(), [...published].sort());
    for (const id of published) assert.match(id, ID);
    // Delivered in commit order, which is the ids' order.
    const order = received.ids.map(partsOf);
    for (let i = 1; i < order.length; i++) {
      const { stamp, seq, inc } = order[i]!;
      const previous = order[i - 1]!;
      assert.ok(stamp >= previous.stamp, `${stamp} after ${previous.stamp}`);
      assert.equal(seq, previous.seq + 1);
      // One incarnation of the stream, whoever published.
      assert.equal(inc, previous.inc);
    }
    // Each publisher's own entries keep their order.
    for (const who of ["a", "b"]) {
      const mine = data(received.entries).filter((data) =>
        (data as string).startsWith(who)
      );
      assert.deepEqual(mine, range(40).map((i) => `${who}${i}`));
    }
    // History tells the same story under the same ids.
    const history = await a.history("s", {
      after: received.ids[0]!,
      limit: 100,
    });
    assert.deepEqual(history?.map((entry) => entry.id), received.ids.slice(1));
    subscription.unsubscribe();
    await Promise.all([a.close(), b.close(), reader.close()]);
  },
);

kvTest(
  "DenoKvBroker resumes on another instance with exactly what was missed, page by page",
  async (db) => {
    const a = broker(await db.open());
    const b = broker(await db.open());
    const ids = await publishAll(a, "s", range(5));
    const first = await b.history("s", { after: ids[1]!, limit: 2 });
    assert.deepEqual(first?.map((entry) => entry.id), ids.slice(2, 4));
    assert.deepEqual(first?.map((entry) => entry.message.data), ["2", "3"]);
    const second = await b.history("s", { after: ids[3]!, limit: 2 });
    assert.deepEqual(second?.map((entry) => entry.id), ids.slice(4));
    assert.deepEqual(await b.history("s", { after: ids[4]!, limit: 2 }), []);
    await a.close();
    await b.close();
  },
);

kvTest(
  "DenoKvBroker history is null for an id that is not a resume point of the stream",
  async (db) => {
    const kv = await db.open();
    const a = broker(kv);
    const ids = await publishAll(a, "s", range(3));
    const [other] = await publishAll(a, "t", ["t"]);
    const { stamp, seq, inc } = partsOf(ids[1]!);
    const notOurs = [
      "",
      "nope",
      other!, // another stream's
      `${stamp}-9.${inc}`, // a future sequence
      `${"f".repeat(20)}-${seq}.${inc}`, // another commit's
      `${stamp}-${seq}.${"z".repeat(8)}`, // another incarnation's
      `${stamp}-${seq}`, // without its incarnation, as an earlier version wrote
      `${stamp}-0${seq}.${inc}`, // not canonical
      `${stamp}-${seq}.${inc} `,
      ` ${ids[1]}`,
    ];
    for (const after of notOurs) {
      assert.equal(await a.history("s", { after, limit: 10 }), null, after);
    }
    // The stream expires and starts again: its old ids are not resume points,
    // though the same sequence numbers come back.
    for (const key of await keys(kv, ["sse", "s"])) await kv.delete(key);
    const again = await publishAll(a, "s", range(3));
    assert.deepEqual(again.map((id) => partsOf(id).seq), [1, 2, 3]);
    for (const old of ids) {
      assert.equal(await a.history("s", { after: old, limit: 10 }), null);
    }
    assert.deepEqual(
      (await a.history("s", { after: again[0]!, limit: 10 }))?.map((e) => e.id),
      again.slice(1),
    );
    await a.close();
  },
);

kvTest(
  "DenoKvBroker never resumes an id from a lost database on a brand-new one, though versionstamps start over",
  async (db) => {
    // The database is lost (a file deleted, a new Deploy database) and the
    // app starts again on a new one, whose versionstamps start over: the
    // same (versionstamp, sequence) pairs come back now and then.
    let resumed = 0;
    let reused = 0;
    for (let round = 0; round < 20; round++) {
      const ids: string[][] = [];
      for (const life of ["old", "new"]) {
        const path = `${db.dir}/round-${round}-${life}.sqlite3`;
        const kv = await Deno.openKv(path);
        const a = broker(kv);
        ids.push(await publishAll(a, "news", range(10).map((i) => life + i)));
        if (life === "new") {
          for (const old of ids[0]!) {
            if (ids[1]!.includes(old)) reused++;
            const page = await a.history("news", { after: old, limit: 100 });
            if (page !== null) resumed++;
          }
        }
        await a.close();
        kv.close();
      }
    }
    // Before: 9 to 12 of 300 old ids came back and resumed against new
    // entries.
    assert.equal(reused, 0, `${reused} of 200 ids issued again`);
    assert.equal(resumed, 0, `${resumed} of 200 old ids resumed`);
  },
);

kvTest(
  "DenoKvBroker splits a 300 KiB event over keys of one commit and joins it again",
  async (db) => {
    const kv = await db.open();
    const a = broker(kv);
    const b = broker(await db.open());
    const received = new Collector();
    const subscription = await b.subscribe("big", received.onEntry);
    // Two- and four-byte characters, so that chunks end inside characters.
    const data = "é😀x".repeat(300 * 1024 / 7);
    const before = await a.publish("big", message("before"), { replay: 10 });
    const id = await a.publish("big", { topic: "t", message: { data } }, {
      replay: 10,
    });
    await received.until(2);
    assert.equal(received.entries[1]!.id, id);
    assert.equal(received.entries[1]!.message.data, data);
    assert.equal(received.entries[1]!.topic, "t");
    const history = await a.history("big", { after: before, limit: 5 });
    assert.equal(history?.[0]?.message.data, data);
    // Its header, then its parts under the header's key.
    const { seq } = partsOf(id);
    const parts = (await keys(kv, ["sse", "big", "entries", seq])).length;
    assert.equal(parts, 4, "300 KiB: the header's 64 KiB and 4 more values");
    subscription.unsubscribe();
    await a.close();
    await b.close();
  },
);

kvTest(
  "DenoKvBroker stores an entry of exactly 768 KiB and refuses a larger one with a RangeError naming the limit",
  async (db) => {
    const kv = await db.open();
    const a = broker(kv);
    // {"topic":"","message":{"data":"…"}} is 34 bytes around the data.
    const fits = "x".repeat(DENO_KV_MAX_ENTRY_SIZE - 34);
    const [before] = await publishAll(a, "s", ["before"]);
    await a.publish("s", message(fits), { replay: 10 });
    const [stored] = (await a.history("s", { after: before!, limit: 1 }))!;
    assert.equal(stored?.message.data, fits);
    await assert.rejects(
      a.publish("s", message(fits + "x"), { replay: 10 }),
      (error: Error) => {
        assert.equal(error.name, "RangeError");
        assert.match(error.message, /786433 bytes.*786432 \(768 KiB\)/);
        return true;
      },
    );
    await assert.rejects(
      a.publish("x".repeat(2040), message("x"), { replay: 10 }),
      /Invalid stream name: .*the limit is 1024/,
    );
    // Nothing of the refused ones was stored.
    const heads = (await keys(kv, ["sse"])).filter((key) => key.length === 3);
    assert.deepEqual(heads, [["sse", "s", "head"]]);
    assert.equal(
      (await kv.get<{ seq: number }>(["sse", "s", "head"])).value?.seq,
      2,
    );
    await a.close();
  },
);

kvTest(
  "DenoKvBroker stores a 768 KiB event under any stream name it accepts, and refuses a name that would not leave room for one",
  async (db) => {
    const kv = await db.open();
    const a = broker(kv);
    // {"topic":"","message":{"data":"…"}} is 34 bytes around the data.
    const ascii = "x".repeat(DENO_KV_MAX_ENTRY_SIZE - 34);
    const accented = "é".repeat((DENO_KV_MAX_ENTRY_SIZE - 34) / 2);
    // The longest name: its keys take 1 024 bytes (990 + 34 of key parts).
    const longest = "n".repeat(990);
    const received = new Collector();
    const subscription = await a.subscribe(longest, received.onEntry);
    const ids = await Promise.all([
      a.publish(longest, message(ascii), { replay: 10 }),
      a.publish(longest, message(accented), { replay: 10 }),
      a.publish(longest, message("small"), { replay: 10 }),
    ]);
    await received.untilId(ids[2]!);
    assert.deepEqual(received.ids, ids);
    assert.deepEqual(data(received.entries), [ascii, accented, "small"]);
    // Before: names up to 2 014 bytes were taken, and from 1 098 bytes on a
    // 768 KiB event failed with "Total mutation size too large".
    for (const name of ["n".repeat(991), "n".repeat(1_500)]) {
      await assert.rejects(
        a.publish(name, message(ascii), { replay: 10 }),
        (error: Error) => {
          assert.equal(error.name, "RangeError");
          assert.match(
            error.message,
            /^Invalid stream name: its Deno KV keys would take \d+ bytes, the limit is 1024/,
          );
          return true;
        },
      );
    }
    subscription.unsubscribe();
    await a.close();
  },
);

kvTest(
  "DenoKvBroker commits publishes queued under a long stream name in batches within Deno KV's limits",
  async (db) => {
    const a = broker(await db.open());
    const name = "n".repeat(990);
    // Queued at once: committed together, as many per commit as fit in
    // 800 KiB, 80 KiB of keys and 1 000 mutations.
    const sizes = [
      ...Array.from({ length: 150 }, () => 10),
      70_000,
      400_000,
      ...Array.from({ length: 50 }, () => 100),
    ];
    const settled = await Promise.allSettled(
      sizes.map((size) =>
        a.publish(name, message("x".repeat(size)), { replay: 1_000 })
      ),
    );
    const failed = settled.filter((outcome) => outcome.status === "rejected");
    // Before: 201 of 202 rejected with "Total mutation size too large".
    assert.deepEqual(failed, []);
    await a.close();
  },
);

kvTest(
  "DenoKvBroker trims a long-named stream within Deno KV's commit limit",
  async (db) => {
    const kv = await db.open();
    const name = "n".repeat(990);
    const filler = broker(kv);
    const ids = await Promise.all(
      range(900).map((i) =>
        filler.publish(name, message(i), { replay: 1_000 })
      ),
    );
    await filler.close();
    // One publish that keeps 10: 890 entries go, more keys than one commit
    // of deletes can take with keys of 1 KiB.
    const trimmer = broker(kv, { trimDelay: 0 });
    await trimmer.publish(name, message("last"), { replay: 10 });
    await trimmer.close();
    const kept = (await keys(kv, ["sse", name, "entries"])).length;
    // Before: "Total mutation size too large", and nothing trimmed.
    assert.deepEqual(trimmer.errors, []);
    assert.ok(kept <= 120, `${kept} kept`);
    const reader = broker(kv);
    assert.equal(
      await reader.history(name, { after: ids[0]!, limit: 1 }),
      null,
    );
    await reader.close();
  },
);

kvTest(
  "DenoKvBroker trims a stream to about replay entries, oldest first",
  async (db) => {
    const kv = await db.open();
    const a = broker(kv, { trimDelay: 0 });
    const ids = await publishAll(a, "s", range(60), 10);
    // Trimming runs after the publish resolved; close waits for it.
    await a.close();
    const kept = (await keys(kv, ["sse", "s", "entries"])).length;
    // Trimmed a tenth of replay at a time: between 10 and 11 kept.
    assert.ok(kept >= 10 && kept <= 11, `${kept} kept`);
    const b = broker(kv);
    assert.equal(await b.history("s", { after: ids[0]!, limit: 10 }), null);
    assert.equal(await b.history("s", { after: ids[40]!, limit: 10 }), null);
    assert.deepEqual(
      (await b.history("s", { after: ids[50]!, limit: 20 }))?.map((e) => e.id),
      ids.slice(51),
    );
    await b.close();
  },
);

/**
 * Publishes `publish` to stream "s" (replay 5, trimDelay 60 s) with a broker
 * of its own, then counts the entries kept: trimming runs after each publish
 * resolved, and close waits for it.
 */
async function keptAfter(kv: Deno.Kv, publish: string[]): Promise<number> {
  const a = broker(kv, { trimDelay: 60_000 });
  await publishAll(a, "s", publish, 5);
  await a.close();
  return (await keys(kv, ["sse", "s", "entries"])).length;
}

kvTest(
  "DenoKvBroker keeps entries younger than trimDelay, and trims them once old",
  async (db) => {
    // Only Date is fake: KV's own work runs on real time.
    const clock = FakeTimers.install({ toFake: ["Date"], now: Date.now() });
    try {
      const kv = await db.open();
      const count = (publish: string[]) => keptAfter(kv, publish);
      assert.equal(await count(range(30)), 30);
      clock.tick(59_000);
      assert.equal(await count(["young"]), 31);
      clock.tick(2_000);
      const kept = await count(["late"]);
      // The 30 old ones beyond the newest 5 go; "young" and "late" stay.
      assert.ok(kept >= 5 && kept <= 6, `${kept} kept`);
    } finally {
      clock.uninstall();
    }
  },
);

kvTest(
  "DenoKvBroker keeps trimming when its clock jumps back or another instance's runs ahead: an entry dated more than trimDelay ahead goes at the next trim",
  async (db) => {
    const clock = FakeTimers.install({ toFake: ["Date"], now: Date.now() });
    try {
      const kv = await db.open();
      const count = (publish: string[]) => keptAfter(kv, publish);
      // Written an hour "ahead": by a clock that is then set back, or by an
      // instance whose clock is an hour fast. Their age cannot be known:
      // they go at the next trim (before: not for an hour, the stream
      // growing meanwhile); the entries of the present keep their delay.
      assert.equal(await count(range(30)), 30);
      clock.setSystemTime(Date.now() - 3_600_000);
      assert.equal(await count(range(20, 100)), 20);
      clock.tick(61_000);
      const kept = await count(["a minute later"]);
      assert.ok(kept >= 5 && kept <= 7, `${kept} kept`);
    } finally {
      clock.uninstall();
    }
  },
);

kvTest(
  "DenoKvBroker writes every key with expireIn, so that an abandoned stream goes",
  async (db) => {
    const a = broker(await db.open(), { expireIn: 3_600_000 });
    const before = Date.now();
    await publishAll(a, "s", ["small"]);
    await a.publish("s", message("x".repeat(100_000)), { replay: 10 });
    const after = Date.now();
    await a.close();
    const sqlite = new DatabaseSync(db.path, { readOnly: true });
    try {
      const rows = sqlite.prepare("SELECT expiration_ms FROM kv").all() as {
        expiration_ms: number;
      }[];
      // A head, one small entry, a header and one part.
      assert.equal(rows.length, 4);
      for (const { expiration_ms } of rows) {
        assert.ok(
          expiration_ms >= before + 3_600_000 &&
            expiration_ms <= after + 3_600_000,
          `expires at ${expiration_ms}`,
        );
      }
    } finally {
      sqlite.close();
    }
  },
);

kvTest(
  "DenoKvBroker continues a stream whose head expired after the entries still visible",
  async (db) => {
    const kv = await db.open();
    const a = broker(kv);
    const old = await publishAll(a, "s", range(3));
    // The head went first; expired entries may stay visible for a while.
    await kv.delete(["sse", "s", "head"]);
    const b = broker(await db.open());
    const received = new Collector();
    const subscription = await b.subscribe("s", received.onEntry);
    const [next] = await publishAll(b, "s", ["next"]);
    assert.equal(partsOf(next!).seq, 4);
    await received.until(1);
    assert.deepEqual(received.ids, [next]);
    assert.deepEqual(
      (await b.history("s", { after: old[2]!, limit: 10 }))?.map((e) => e.id),
      [next],
    );
    subscription.unsubscribe();
    await a.close();
    await b.close();
  },
);

kvTest(
  "DenoKvBroker goes on delivering to a subscriber when its stream expires and starts again",
  async (db) => {
    const kv = await db.open();
    const a = broker(kv);
    const received = new Collector();
    const subscription = await a.subscribe("s", received.onEntry);
    const first = await publishAll(a, "s", range(5));
    await received.until(5);
    for (const key of await keys(kv, ["sse", "s"])) await kv.delete(key);
    const second = await publishAll(a, "s", ["again 1", "again 2"]);
    await received.until(7);
    assert.deepEqual(received.ids, [...first, ...second]);
    subscription.unsubscribe();
    await a.close();
    assert.deepEqual(a.errors, []);
  },
);

kvTest(
  "DenoKvBroker delivers every entry of a stream that expired and started again to a process that only polls",
  async (db) => {
    // The other process's writes reach this one by the poll alone; between
    // two polls the stream expires and five entries are published.
    const other = Peer.process(db.dir);
    const kv = await db.open();
    const local = broker(kv, { pollInterval: 100 });
    try {
      await other.send({ open: { path: db.path, pollInterval: 100 } });
      const received = new Collector();
      const subscription = await local.subscribe("s", received.onEntry);
      const before = await other.send({
        publish: { name: "s", data: ["a", "b", "c"] },
      });
      await received.until(3);
      for (const key of await keys(kv, ["sse", "s"])) await kv.delete(key);
      const after = await other.send({
        publish: { name: "s", data: range(5) },
      });
      const ids = [
        ...before.published as string[],
        ...after.published as string[],
      ];
      await received.untilId(ids.at(-1)!);
      // Before: the first three of the five were never delivered.
      assert.deepEqual(received.ids, ids);
      subscription.unsubscribe();
    } finally {
      assert.deepEqual(await other.close(), []);
      await local.close();
    }
    assert.deepEqual(local.errors, []);
  },
);

/**
 * A broker subscribed to stream "s" after `count` entries, with what it
 * receives and reports, for the hand-written key tests.
 */
async function handWritten(
  db: TempKv,
  count: number,
): Promise<{
  kv: Deno.Kv;
  a: DenoKvBroker & { errors: string[] };
  received: Collector;
  ids: string[];
  done(): Promise<void>;
}> {
  const kv = await db.open();
  const a = broker(kv);
  const received = new Collector();
  const subscription = await a.subscribe("s", received.onEntry);
  const ids = await publishAll(a, "s", range(count));
  await received.untilId(ids.at(-1)!);
  const done = async () => {
    subscription.unsubscribe();
    await a.close();
  };
  return { kv, a, received, ids, done };
}

kvTest(
  "DenoKvBroker goes on delivering live when a key is written by hand beyond the head",
  async (db) => {
    const { kv, a, received, ids, done } = await handWritten(db, 1);
    // Another program writes a key far ahead, without touching the head.
    await kv.set(["sse", "s", "entries", 1000], {
      time: 1,
      json: json("not an entry"),
    });
    ids.push(...await publishAll(a, "s", range(5, 1)));
    await received.untilId(ids.at(-1)!);
    // Before: the cursor jumped to 1000 and nothing more was delivered.
    assert.deepEqual(received.ids, ids);
    assert.deepEqual(
      (await a.history("s", { after: ids[0]!, limit: 100 }))?.map((e) => e.id),
      ids.slice(1),
    );
    assert.deepEqual(
      await a.history("s", { after: ids.at(-1)!, limit: 100 }),
      [],
    );
    // Nothing was "trimmed": the key beyond the head is not read.
    assert.deepEqual(a.errors, []);
    await done();
  },
);

kvTest(
  "DenoKvBroker does not let a key written by hand at the next sequences take a real entry's place",
  async (db) => {
    const { kv, a, received, ids, done } = await handWritten(db, 1);
    await kv.set(["sse", "s", "entries", 3], "garbage");
    await kv.set(["sse", "s", "entries", 3, 1], new Uint8Array([1]));
    await kv.set(["sse", "s", "entries", 4, 5], new Uint8Array([1]));
    ids.push(...await publishAll(a, "s", range(3, 1)));
    await received.untilId(ids.at(-1)!);
    // Before: entry 3 was read as the garbage, reported, then never read.
    assert.deepEqual(received.ids, ids);
    assert.deepEqual(
      (await a.history("s", { after: ids[0]!, limit: 100 }))?.map((e) => e.id),
      ids.slice(1),
    );
    assert.deepEqual(a.errors, []);
    await done();
  },
);

kvTest(
  "DenoKvBroker starts again after the entries still there when its head is rewound by hand, and reports it once",
  async (db) => {
    const { kv, a, received, ids, done } = await handWritten(db, 3);
    await kv.set(["sse", "s", "head"], { seq: 0 });
    ids.push(...await publishAll(a, "s", ["4", "5"]));
    await received.untilId(ids.at(-1)!);
    // Before: entries 1 and 2 were overwritten, and reached no subscriber.
    assert.deepEqual(received.ids, ids);
    assert.deepEqual(
      data((await a.history("s", { after: ids[0]!, limit: 100 }))!),
      ["1", "2", "4", "5"],
    );
    assert.equal(a.errors.length, 1, a.errors.join("\n"));
    assert.match(
      a.errors[0]!,
      /^Invalid head of stream "s": it says entry 0 is the newest, but entry 3 is there/,
    );
    await done();
  },
);

kvTest(
  "DenoKvBroker history stops at a hole in the sequence, and the id before it is then no resume point",
  async (db) => {
    const kv = await db.open();
    const a = broker(kv);
    const ids = await publishAll(a, "s", range(10));
    // Entries 5 and 6 go (a trim between two list pages of one read looks
    // the same to that read).
    await kv.delete(["sse", "s", "entries", 5]);
    await kv.delete(["sse", "s", "entries", 6]);
    const page = await a.history("s", { after: ids[0]!, limit: 100 });
    // Before: entries 2 to 4, then 7 to 10, with nothing to say 5 and 6 were
    // missed.
    assert.deepEqual(page?.map((e) => e.id), ids.slice(1, 4));
    assert.equal(await a.history("s", { after: ids[3]!, limit: 100 }), null);
    assert.deepEqual(
      (await a.history("s", { after: ids[6]!, limit: 100 }))?.map((e) => e.id),
      ids.slice(7),
    );
    await a.close();
  },
);

kvTest(
  "DenoKvBroker history has no hole when a trim lands between the pages of one read",
  async (db) => {
    const kv = await db.open();
    const reader = broker(kv);
    // 70 KB entries take two values each, so a read of 100 spans pages.
    const big = "x".repeat(70_000);
    let holes = 0;
    let pages = 0;
    for (let round = 0; round < 8; round++) {
      const name = `s${round}`;
      const filler = broker(kv);
      const ids: string[] = [];
      for (let i = 0; i < 110; i++) {
        ids.push(await filler.publish(name, message(big), { replay: 1_000 }));
      }
      await filler.close();
      const trimmer = broker(kv, { trimDelay: 0 });
      // The trim of all but 5 starts first, the read some ms later.
      const trim = trimmer.publish(name, message("x"), { replay: 5 });
      await new Promise((resolve) => setTimeout(resolve, round % 4));
      const page = await reader.history(name, { after: ids[0]!, limit: 100 });
      await trim;
      await trimmer.close();
      if (page === null) continue;
      pages++;
      const seqs = page.map((entry) => partsOf(entry.id).seq);
      if (seqs.some((seq, i) => seq !== 2 + i)) holes++;
    }
    assert.equal(holes, 0, `${holes} of ${pages} pages had a hole`);
    await reader.close();
  },
);

Deno.test({
  name:
    "DenoKvBroker holds a bounded state for streams published to once, however many",
  ...SANITIZED,
  async fn() {
    // Measured in a process of its own, with a garbage collector to call.
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--unstable-kv",
        "--v8-flags=--expose-gc",
        new URL("./fixtures/kv_state.ts", import.meta.url).pathname,
      ],
    }).output();
    assert.equal(code, 0, new TextDecoder().decode(stderr));
    const bytes = Number(new TextDecoder().decode(stdout));
    // Before: about 1 200 bytes for each, kept until close().
    assert.ok(bytes < 200, `${bytes} bytes per stream beyond the first 1 000`);
  },
});

/** Writes an entry the way another program might, at the next sequence. */
async function writeRaw(
  kv: Deno.Kv,
  name: string,
  parts: unknown[],
): Promise<string> {
  const head = await kv.get<{ seq: number }>(["sse", name, "head"]);
  const seq = (head.value?.seq ?? 0) + 1;
  const operation = kv.atomic().set(["sse", name, "head"], { seq });
  operation.set(["sse", name, "entries", seq], parts[0]);
  for (const [i, part] of parts.slice(1).entries()) {
    operation.set(["sse", name, "entries", seq, i + 1], part);
  }
  const result = await operation.commit();
  assert.ok(result.ok);
  return `${result.versionstamp}-${seq}`;
}

const json = (value: unknown) =>
  new TextEncoder().encode(JSON.stringify(value));

kvTest(
  "DenoKvBroker skips an entry it cannot decode, reports it in one line, and delivers the rest",
  async (db) => {
    const kv = await db.open();
    const a = broker(kv);
    const received = new Collector();
    const subscription = await a.subscribe("s", received.onEntry);
    const [first] = await publishAll(a, "s", ["first"]);
    const poison = [
      await writeRaw(kv, "s", ["not an object"]),
      await writeRaw(kv, "s", [{
        time: 1,
        json: new TextEncoder().encode("{"),
      }]),
      await writeRaw(kv, "s", [{
        time: 1,
        json: json({ topic: 1, message: {} }),
      }]),
      await writeRaw(kv, "s", [{
        time: 1,
        json: json({ topic: "", message: { data: 5 } }),
      }]),
      await writeRaw(kv, "s", [{ time: 1, json: new Uint8Array([0xff]) }]),
      await writeRaw(kv, "s", [{ time: 1, json: json({}).slice(0, 1) }, "x"]),
    ];
    const [last] = await publishAll(a, "s", ["last"]);
    await received.until(2);
    assert.deepEqual(received.ids, [first, last]);
    assert.deepEqual(
      (await a.history("s", { after: first!, limit: 10 }))?.map((e) => e.id),
      [last],
    );
    // Each reported once (read live, then by history) with the stream and id.
    assert.equal(a.errors.length, poison.length);
    for (const id of poison) {
      const lines = a.errors.filter((line) => line.includes(id));
      assert.equal(lines.length, 1, id);
      assert.match(lines[0]!, /^Invalid entry .* of stream "s": \S/);
      assert.doesNotMatch(lines[0]!, /\n/);
    }
    subscription.unsubscribe();
    await a.close();
  },
);

kvTest(
  "DenoKvBroker reports by default with one line on stderr, no stack trace",
  async (db) => {
    const kv = await db.open();
    const a = new DenoKvBroker({ kv });
    const received = new Collector();
    const subscription = await a.subscribe("s", received.onEntry);
    const lines: unknown[][] = [];
    const original = console.error;
    console.error = (...args: unknown[]) => lines.push(args);
    let poison: string;
    try {
      poison = await writeRaw(kv, "s", [{
        time: 1,
        json: json({ topic: "" }),
      }]);
      await publishAll(a, "s", ["after"]);
      await received.until(1);
    } finally {
      console.error = original;
    }
    assert.deepEqual(data(received.entries), ["after"]);
    assert.deepEqual(lines, [[
      `DenoKvBroker: Invalid entry ${poison} of stream "s": the message is not an object`,
    ]]);
    subscription.unsubscribe();
    await a.close();
  },
);

kvTest(
  "DenoKvBroker close is bounded while the database does not answer",
  async (db) => {
    const kv = await db.open();
    const a = broker(kv);
    const received = new Collector();
    const subscription = await a.subscribe("s", received.onEntry);
    const [before] = await publishAll(a, "s", ["before"]);
    await received.until(1);
    // Another connection holds the file; a write on the broker's handle
    // waits for it, and the handle's later operations wait behind that one.
    const lock = new DatabaseSync(db.path);
    lock.exec("BEGIN EXCLUSIVE");
    let unlocked = false;
    try {
      const blocked = kv.set(["blocked"], true);
      const outcomes: string[] = [];
      const settle = (what: string, promise: Promise<unknown>) =>
        promise.then(
          () => outcomes.push(`${what} resolved`),
          (error) => outcomes.push(`${what}: ${error.message}`),
        );
      const pending = [
        settle("history", a.history("s", { after: before!, limit: 10 })),
        settle("subscribe", a.subscribe("t", () => {})),
        settle("publish", a.publish("s", message("stuck"), { replay: 10 })),
      ];
      await new Promise((resolve) => setTimeout(resolve, 100));
      assert.equal(outcomes.length, 0, "the database does not answer");
      const started = performance.now();
      await a.close();
      const took = performance.now() - started;
      assert.ok(took >= 900 && took < 2_000, `close took ${took} ms`);
      lock.exec("COMMIT");
      unlocked = true;
      await blocked;
      await Promise.all(pending);
      // Started before close: each settles once the database answers.
      assert.equal(outcomes.length, 3);
      assert.ok(
        outcomes.includes("subscribe: Cannot subscribe: broker is closed"),
      );
      subscription.unsubscribe();
    } finally {
      if (!unlocked) lock.exec("COMMIT");
      lock.close();
    }
    // The database is still the caller's, and usable.
    await kv.set(["after"], true);
  },
);

kvTest(
  "DenoKvBroker close ends subscriptions, refuses later calls and leaves the database open",
  async (db) => {
    const kv = await db.open();
    const a = broker(kv);
    const b = broker(await db.open());
    const received = new Collector();
    await a.subscribe("s", received.onEntry);
    await publishAll(b, "s", ["1"]);
    await received.until(1);
    await a.close();
    await a.close();
    await publishAll(b, "s", ["2"]);
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(data(received.entries), ["1"]);
    await assert.rejects(a.publish("s", message("x"), { replay: 1 }), {
      name: "TypeError",
      message: /closed/,
    });
    await assert.rejects(a.subscribe("s", () => {}), /closed/);
    await assert.rejects(a.history("s", { after: "x", limit: 1 }), /closed/);
    await kv.set(["still", "open"], true);
    await b.close();
  },
);

Deno.test("DenoKvBroker refuses invalid options, naming them", async () => {
  const kv = await Deno.openKv(":memory:");
  try {
    const bad: [unknown, RegExp][] = [
      [{}, /Invalid kv/],
      [{ kv: {} }, /Invalid kv/],
      [{ kv, prefix: "sse" }, /Invalid prefix/],
      [{ kv, prefix: [{}] }, /Invalid prefix/],
      [{ kv, prefix: ["x".repeat(2100)] }, /Invalid prefix/],
      [{ kv, pollInterval: 0 }, /Invalid pollInterval/],
      [{ kv, expireIn: 1.5 }, /Invalid expireIn/],
      [{ kv, trimDelay: -1 }, /Invalid trimDelay/],
      [{ kv, onError: "no" }, /Invalid onError/],
    ];
    for (const [options, pattern] of bad) {
      assert.throws(
        () => new DenoKvBroker(options as DenoKvBrokerOptions),
        pattern,
      );
    }
  } finally {
    kv.close();
  }
});

/**
 * The database handle of each contract fixture, for its hooks, and the
 * databases its restarts opened.
 */
const fixtureKv = new WeakMap<
  BrokerFixture,
  { kv: Deno.Kv; others: TempKv[]; path: string }
>();

kvTest(
  "SSEChannel on DenoKvBroker ends its live clients when the broker's reader lost entries, and they come back with a snapshot, missing nothing after",
  async (db) => {
    // Before: each client got what the other process left (1 of the 500),
    // its stream never ended, and no snapshot was sent again.
    const kv = await db.open();
    const broker = new DenoKvBroker({
      kv,
      trimDelay: 0,
      pollInterval: 100,
      onError: () => {},
    });
    try {
      await assertClientsRecoverFromGap(
        broker,
        (count) => publishElsewhere(db.path, GAP_STREAM, count),
      );
    } finally {
      await broker.close();
    }
  },
);

testBrokerContract({
  name: "DenoKvBroker",
  numRuns: 15,
  // trimDelay 0 below; the default keeps entries until read (tested apart).
  trimsAtOnce: true,
  async open() {
    const db = await TempKv.create();
    const kv = await db.open();
    const errors: Error[] = [];
    const onError = (error: Error) => errors.push(error);
    // Two handles of one file, as two instances; trimmed at once.
    const broker = new DenoKvBroker({ kv, trimDelay: 0, onError });
    const peer = new DenoKvBroker({
      kv: await db.open(),
      trimDelay: 0,
      onError,
    });
    const others: TempKv[] = [];
    const fixture: BrokerFixture = {
      broker,
      peer,
      errors,
      async close() {
        await Promise.all([broker.close(), peer.close()]);
        for (const other of [db, ...others]) {
          await other[Symbol.asyncDispose]();
        }
      },
    };
    fixtureKv.set(fixture, { kv, others, path: db.path });
    return fixture;
  },
  async poison(fixture, name) {
    const { kv } = fixtureKv.get(fixture)!;
    await writeRaw(kv, name, [{ time: 1, json: json({ topic: "" }) }]);
  },
  async forge(fixture, name, message) {
    const { kv } = fixtureKv.get(fixture)!;
    await writeRaw(kv, name, [{ time: 1, json: json({ topic: "", message }) }]);
  },
  async clobber(fixture, name) {
    const { kv } = fixtureKv.get(fixture)!;
    await kv.set(["sse", name, "head"], "not a head");
    await kv.set(["sse", name, "entries", 1000], { time: 1, json: json(1) });
  },
  async expire(fixture, name) {
    // What Deno KV's expiry sweep leaves once every key of the stream has
    // expired: nothing.
    const { kv } = fixtureKv.get(fixture)!;
    for (const key of await keys(kv, ["sse", name])) await kv.delete(key);
  },
  fallBehind(fixture, name, count) {
    publishElsewhere(fixtureKv.get(fixture)!.path, name, count);
  },
  async restart(fixture) {
    // The database is lost, and the app starts on a brand-new one (a new
    // file, a new Deploy database): its versionstamps start over.
    const other = await TempKv.create();
    fixtureKv.get(fixture)!.others.push(other);
    const kv = await other.open();
    return new DenoKvBroker({ kv, trimDelay: 0, onError: () => {} });
  },
});

/** What another instance sends back (see tests/fixtures/kv_peer.ts). */
type Reply = Record<string, unknown>;

/**
 * Another DenoKvBroker instance on the same file: in a Worker (another
 * isolate of this process) or in another `deno run` process.
 */
class Peer {
  /** Entries its subscriptions delivered. */
  readonly delivered: Collector = new Collector();
  /** When each was delivered (timeOrigin + now). */
  readonly times: number[] = [];
  #send: (command: Reply) => void;
  #replies: ((reply: Reply) => void)[] = [];
  #stop: () => Promise<void>;

  private constructor(
    send: (command: Reply) => void,
    stop: () => Promise<void>,
  ) {
    this.#send = send;
    this.#stop = stop;
  }

  #receive(reply: Reply): void {
    if (reply.entry !== undefined) {
      this.times.push(reply.at as number);
      this.delivered.onEntry(reply.entry as SSEBrokerEntry);
    } else {
      this.#replies.shift()?.(reply);
    }
  }

  /** A Worker running kv_worker.ts. */
  static worker(): Peer {
    const worker = new Worker(
      new URL("./fixtures/kv_worker.ts", import.meta.url),
      { type: "module" },
    );
    const peer: Peer = new Peer(
      (command) => worker.postMessage(command),
      () => Promise.resolve(worker.terminate()),
    );
    worker.onmessage = (event) => peer.#receive(event.data);
    return peer;
  }

  /** A `deno run` process running kv_process.ts, allowed only `dir`. */
  static process(dir: string): Peer {
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--no-config",
        "--unstable-kv",
        `--allow-read=${dir}`,
        `--allow-write=${dir}`,
        new URL("./fixtures/kv_process.ts", import.meta.url).pathname,
      ],
      stdin: "piped",
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const stdin = child.stdin.getWriter();
    const encoder = new TextEncoder();
    const read = Promise.withResolvers<void>();
    const peer: Peer = new Peer(
      (command) => {
        stdin.write(encoder.encode(JSON.stringify(command) + "\n"));
      },
      async () => {
        await stdin.close();
        await read.promise;
        assert.equal((await child.status).code, 0);
      },
    );
    (async () => {
      let buffer = "";
      for await (
        const text of child.stdout.pipeThrough(new TextDecoderStream())
      ) {
        buffer += text;
        const lines = buffer.split("\n");
        buffer = lines.pop()!;
        for (const line of lines) peer.#receive(JSON.parse(line));
      }
    })().then(read.resolve, read.reject);
    return peer;
  }

  /** Sends a command; resolves with its reply, failing on an error. */
  async send(command: Reply): Promise<Reply> {
    const reply = await new Promise<Reply>((resolve) => {
      this.#replies.push(resolve);
      this.#send(command);
    });
    if (reply.error !== undefined) throw new Error(String(reply.error));
    return reply;
  }

  /** Closes its broker and database, and ends it; its errors, if any. */
  async close(): Promise<string[]> {
    const { errors } = await this.send({ close: true });
    await this.#stop();
    return errors as string[];
  }
}

/** Milliseconds since the epoch, comparable between processes. */
function now(): number {
  return performance.timeOrigin + performance.now();
}

kvTest(
  "DenoKvBroker delivers between Workers on one file, and resumes in any of them",
  async (db) => {
    const workers = [Peer.worker(), Peer.worker()];
    const local = broker(await db.open(), { pollInterval: Infinity });
    try {
      for (const worker of workers) {
        // Watch only: a write in one isolate wakes the watches of the others.
        await worker.send({ open: { path: db.path, pollInterval: null } });
        await worker.send({ subscribe: "s" });
      }
      const received = new Collector();
      const subscription = await local.subscribe("s", received.onEntry);
      const mine = await publishAll(local, "s", ["main 1", "main 2"]);
      const { published } = await workers[0]!.send({
        publish: { name: "s", data: ["worker 1", "worker 2"] },
      });
      const ids = [...mine, ...published as string[]];
      await received.until(4);
      assert.deepEqual(received.ids, ids);
      for (const worker of workers) {
        await worker.delivered.until(4);
        assert.deepEqual(worker.delivered.ids, ids);
      }
      const { history } = await workers[1]!.send({
        history: { name: "s", after: ids[0], limit: 10 },
      });
      assert.deepEqual(
        (history as SSEBrokerEntry[]).map((entry) => entry.message.data),
        ["main 2", "worker 1", "worker 2"],
      );
      subscription.unsubscribe();
    } finally {
      for (const worker of workers) assert.deepEqual(await worker.close(), []);
      await local.close();
    }
  },
);

kvTest(
  "DenoKvBroker delivers between two deno run processes on one file, by the poll",
  async (db) => {
    const pollInterval = 100;
    const other = Peer.process(db.dir);
    const local = broker(await db.open(), { pollInterval });
    try {
      await other.send({ open: { path: db.path, pollInterval } });
      await other.send({ subscribe: "s" });
      const received = new Collector();
      const times: number[] = [];
      const subscription = await local.subscribe("s", (entry) => {
        times.push(now());
        received.onEntry(entry);
      });
      // Both publish at once, each stamping its entries with the time.
      const [mine, theirs] = await Promise.all([
        (async () => {
          const ids: string[] = [];
          for (const i of range(10)) {
            await new Promise((resolve) => setTimeout(resolve, 30));
            ids.push(
              await local.publish("s", message(`here ${i} ${now()}`), {
                replay: 100,
              }),
            );
          }
          return ids;
        })(),
        other.send({
          publish: {
            name: "s",
            data: range(10).map((i) => `there ${i}`),
            gap: 30,
          },
        }),
      ]);
      await Promise.all([other.delivered.until(20), received.until(20)]);
      // One order for both, by commit.
      const order = received.ids;
      assert.deepEqual(other.delivered.ids, order);
      assert.deepEqual(
        [...order].sort(),
        [...mine, ...theirs.published as string[]].sort(),
      );
      // What crossed processes came within a poll (plus load): the time in
      // the data is when the other side called publish.
      const latencies = (
        entries: SSEBrokerEntry[],
        at: number[],
        from: string,
      ) =>
        entries.flatMap((entry, i) => {
          const [who, , sent] = (entry.message.data as string).split(" ");
          return who === from ? [at[i]! - Number(sent)] : [];
        });
      const crossed = [
        ...latencies(received.entries, times, "there"),
        ...latencies(other.delivered.entries, other.times, "here"),
      ];
      assert.equal(crossed.length, 20);
      for (const latency of crossed) {
        assert.ok(latency < pollInterval + 1_000, `${latency} ms`);
      }
      // Resume in the other process after an id this one issued.
      const { history } = await other.send({
        history: { name: "s", after: order[9], limit: 100 },
      });
      assert.deepEqual(
        (history as SSEBrokerEntry[]).map((entry) => entry.id),
        order.slice(10),
      );
      subscription.unsubscribe();
    } finally {
      assert.deepEqual(await other.close(), []);
      await local.close();
    }
    assert.deepEqual(local.errors, []);
  },
);
