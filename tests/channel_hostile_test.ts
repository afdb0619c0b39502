// Copyright the sse authors. MIT license.
// SSEChannel against a broker, hooks and clients that do not keep to their
// contracts: a history that throws, hangs or answers something that is not a
// page, live entries that are not entries, clients that reconnect in a tight
// loop. Each scenario runs over a real Deno.serve on 127.0.0.1 with real
// sockets; nothing may crash the process, lose an event or leave a client
// counted.
import assert from "node:assert/strict";
import {
  MemoryBroker,
  type SSEBroker,
  type SSEBrokerEntry,
  SSEChannel,
} from "../server.ts";
import { Client, serve, test } from "./_channel.ts";

/**
 * A MemoryBroker whose `history` does `fault` instead, from its `from`-th
 * call on (the first call is the one `connect` makes for a resume).
 */
class FaultyBroker implements SSEBroker {
  readonly inner: MemoryBroker = new MemoryBroker();
  calls = 0;
  fault: (() => unknown) | undefined;
  from = 1;
  /** The live subscription's callback, to hand it what a broker may. */
  deliver: ((entry: SSEBrokerEntry) => void) | undefined;

  publish(...args: Parameters<SSEBroker["publish"]>): Promise<string> {
    return this.inner.publish(...args);
  }

  subscribe(...args: Parameters<SSEBroker["subscribe"]>) {
    this.deliver = args[1];
    return this.inner.subscribe(...args);
  }

  history(
    ...args: Parameters<SSEBroker["history"]>
  ): Promise<SSEBrokerEntry[] | null> {
    if (++this.calls >= this.from && this.fault !== undefined) {
      return this.fault() as Promise<SSEBrokerEntry[] | null>;
    }
    return this.inner.history(...args);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}

/** What a broker's history may do instead of answering a page. */
const FAULTS: [string, () => unknown][] = [
  ["throws", () => {
    throw new Error("history threw");
  }],
  ["resolves to undefined", () => Promise.resolve(undefined)],
  ["resolves to an object", () => Promise.resolve({ length: 2 })],
  [
    "resolves to entries that are not entries",
    () => Promise.resolve([null, 5]),
  ],
];

for (const [what, fault] of FAULTS) {
  test(`SSEChannel ends a catch-up, reported, when the broker's history ${what}`, async () => {
    const broker = new FaultyBroker();
    const errors: string[] = [];
    const channel = new SSEChannel({
      broker,
      onError: (error) => errors.push(error.message),
    });
    const server = serve((request) => channel.connect(request));
    const first = await channel.publish({ data: "0" });
    for (let i = 1; i < 400; i++) await channel.publish({ data: String(i) });
    // The page connect reads is whole; the next one fails.
    broker.fault = fault;
    broker.from = 2;
    const client = await Client.open(server.url, { "last-event-id": first });
    await client.closed();
    assert.deepEqual(
      client.data,
      Array.from({ length: client.data.length }, (_, i) => String(i + 1)),
    );
    assert.ok(client.data.length >= 100, `${client.data.length} events`);
    assert.equal(channel.size, 0);
    assert.equal(channel.metrics().disconnects["broker-error"], 1);
    assert.match(errors.join("\n"), /history failed/);
    await channel.close();
    await server.shutdown();
  });

  test(`SSEChannel answers a resume with resumed: false, reported, when the broker's history ${what}`, async () => {
    const broker = new FaultyBroker();
    const errors: string[] = [];
    const resumed: boolean[] = [];
    const channel = new SSEChannel({
      broker,
      onError: (error) => errors.push(error.message),
      init(_context, _id, options) {
        resumed.push(options.resumed);
        return [{ data: "snapshot" }];
      },
    });
    const server = serve((request) => channel.connect(request));
    const first = await channel.publish({ data: "0" });
    await channel.publish({ data: "1" });
    broker.fault = fault;
    const client = await Client.open(server.url, { "last-event-id": first });
    await channel.publish({ data: "2" });
    await client.take(2);
    assert.deepEqual(client.data, ["snapshot", "2"]);
    assert.deepEqual(resumed, [false]);
    assert.deepEqual(channel.metrics().resumeFallbacks, 1);
    assert.match(errors.join("\n"), /history failed/);
    assert.deepEqual(server.errors, []);
    await client.close();
    await channel.close();
    await server.shutdown();
  });
}

test("SSEChannel skips, reported, live entries that are not entries (null, a number, no id), and delivers the next in order", async () => {
  const broker = new FaultyBroker();
  const errors: string[] = [];
  const channel = new SSEChannel({
    broker,
    onError: (error) => errors.push(error.message),
  });
  const server = serve((request) => channel.connect(request));
  const client = await Client.open(server.url);
  await channel.publish({ data: "a" });
  for (const bad of [null, 5, { id: 7 }, { topic: "", message: {} }]) {
    assert.doesNotThrow(() => broker.deliver!(bad as never));
  }
  await channel.publish({ data: "b" });
  await client.take(2);
  assert.deepEqual(client.data, ["a", "b"]);
  // Reported once per id: the three without one share a report.
  assert.equal(errors.length, 2, errors.join("\n"));
  assert.match(errors[0]!, /^Skipped entry undefined/);
  assert.match(errors[1]!, /^Skipped entry 7/);
  assert.equal(client.ended, false);
  await client.close();
  await channel.close();
  await server.shutdown();
});
