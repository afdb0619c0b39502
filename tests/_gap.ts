// Copyright the sse authors. MIT license.
// The broker-gap scenario of an SSEChannel, shared by the brokers that can
// lose entries (redis_channel_test.ts, kv_test.ts): real Deno.serve, real
// SSEClient and EventSource clients; the broker's reader falls behind by
// more than the stream keeps while another process publishes.

import assert from "node:assert/strict";
import type {
  SSEBroker,
  SSEBrokerEntry,
  SSEBrokerGap,
  SSEBrokerSubscribeOptions,
  SSEBrokerSubscription,
} from "../_broker.ts";
import { SSEChannel, type SSEDisconnectReason } from "../server.ts";
import { SSEClient } from "../client.ts";
import { EventSource } from "../event_source.ts";
import { WAIT_MS } from "./_channel.ts";

/** The stream the scenario's channel publishes to. */
export const GAP_STREAM = "gap";

/** What one client received, in order, and a wait on it. */
class Received {
  readonly events: { type: string; data: string; id: string }[] = [];
  #wake = (): void => {};

  push(event: { type: string; data: string; id: string }): void {
    this.events.push(event);
    this.#wake();
  }

  get snapshots(): number {
    return this.events.filter((event) => event.type === "snapshot").length;
  }

  /** Resolves once `done` holds; fails after WAIT_MS with `what()`. */
  async until(done: () => boolean, what: () => string): Promise<void> {
    const deadline = performance.now() + WAIT_MS;
    while (!done()) {
      const left = deadline - performance.now();
      if (left <= 0) throw new Error(what());
      let timer: ReturnType<typeof setTimeout> | undefined;
      await new Promise<void>((resolve) => {
        this.#wake = resolve;
        timer = setTimeout(resolve, left);
      });
      clearTimeout(timer);
    }
  }
}

/**
 * The broker as the channel sees it, recording each gap its subscriptions
 * are told of.
 */
function recordingGaps(
  broker: SSEBroker,
  gaps: SSEBrokerGap[],
): SSEBroker {
  return {
    publish: (name, entry, options) => broker.publish(name, entry, options),
    history: (name, options) => broker.history(name, options),
    close: () => broker.close(),
    subscribe(
      name: string,
      onEntry: (entry: SSEBrokerEntry) => void,
      options?: SSEBrokerSubscribeOptions,
    ): Promise<SSEBrokerSubscription> {
      return broker.subscribe(name, onEntry, {
        onGap(gap) {
          gaps.push(gap);
          options?.onGap?.(gap);
        },
      });
    },
  };
}

/**
 * An SSEChannel (`replay: 5`) on `broker`, served by Deno.serve, with an
 * SSEClient and an EventSource connected; `fallBehind(count)` publishes
 * `count` entries `{ data: "behind" }` to {@linkcode GAP_STREAM} from
 * another process while this one is held back, with a replay that keeps
 * fewer. Asserts that both clients' streams end at the gap
 * (`"replay-lost"`), that they come back from the last event they got and
 * are answered `resumed: false` with a snapshot, and that they get every
 * event published after, in order.
 *
 * @param broker The broker (closed by the caller).
 * @param fallBehind Publishes from elsewhere while this process is held.
 */
export async function assertClientsRecoverFromGap(
  broker: SSEBroker,
  fallBehind: (count: number) => void,
): Promise<void> {
  const gaps: SSEBrokerGap[] = [];
  const inits: { lastEventId: string; resumed: boolean }[] = [];
  const reasons: SSEDisconnectReason[] = [];
  const channel = new SSEChannel({
    name: GAP_STREAM,
    broker: recordingGaps(broker, gaps),
    replay: 5,
    retry: 50,
    keepAlive: 0,
    init(_, lastEventId, { resumed }) {
      inits.push({ lastEventId, resumed });
      return resumed ? [] : [{ event: "snapshot", data: "state" }];
    },
    onDisconnect: (_, { reason }) => reasons.push(reason),
  });
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (request) => channel.connect(request),
  );
  const url = `http://127.0.0.1:${server.addr.port}/`;
  const client = new SSEClient(url, { retry: 50 });
  const viaClient = new Received();
  const reading = (async () => {
    for await (const event of client) viaClient.push(event);
  })();
  const source = new EventSource(url);
  const viaSource = new Received();
  for (const type of ["message", "snapshot"]) {
    source.addEventListener(type, (event) => {
      const { data, lastEventId } = event as MessageEvent<string>;
      viaSource.push({ type, data, id: lastEventId });
    });
  }
  const clients = [viaClient, viaSource];
  const count = 500;
  try {
    for (const of of clients) {
      await of.until(() => of.snapshots === 1, () => "no first snapshot");
    }
    const start = await channel.publish({ data: "start" });
    for (const of of clients) {
      await of.until(
        () => of.events.some((event) => event.id === start),
        () => `start not received: ${JSON.stringify(of.events)}`,
      );
    }
    fallBehind(count);
    for (const of of clients) {
      await of.until(
        () => of.snapshots === 2,
        () =>
          `no snapshot again: ${
            of.events.filter((event) => event.data === "behind").length
          } of ${count} behind, ${of.snapshots} snapshot(s), ${inits.length} init(s), disconnects ${
            JSON.stringify(reasons)
          }, gaps ${JSON.stringify(gaps)}`,
      );
    }
    // One gap. Each stream ended there, after the last entry before it
    // ("start", or the first behind ones, read before the process was held
    // back), and each client came back from that entry, whose successors
    // are gone: resumed false, and a snapshot.
    assert.equal(gaps.length, 1, JSON.stringify(gaps));
    const [gap] = gaps;
    const resumedFrom: string[] = [];
    for (const of of clients) {
      const second = of.events.findLastIndex((e) => e.type === "snapshot");
      const last = of.events[second - 1]!.id;
      if (gap!.after !== undefined) assert.equal(last, gap!.after);
      assert.ok(!of.events.some((event) => event.id === gap!.before));
      resumedFrom.push(last);
    }
    assert.deepEqual(inits, [
      { lastEventId: "", resumed: false },
      { lastEventId: "", resumed: false },
      ...resumedFrom.map((lastEventId) => ({ lastEventId, resumed: false })),
    ]);
    assert.deepEqual(reasons, ["replay-lost", "replay-lost"]);

    // Nothing published after the reconnection is missed.
    const after: string[] = [];
    for (let i = 0; i < 20; i++) {
      after.push(await channel.publish({ data: `after ${i}` }));
    }
    for (const of of clients) {
      await of.until(
        () => of.events.at(-1)?.id === after.at(-1),
        () => `after: ${JSON.stringify(of.events.slice(-3))}`,
      );
      const second = of.events.findLastIndex((e) => e.type === "snapshot");
      const since = of.events.slice(second + 1);
      // Behind entries the reader delivered after the client joined again,
      // then every one published since, in order, each once.
      const ids = since.filter((event) => event.data !== "behind")
        .map((event) => event.id);
      assert.deepEqual(ids, after);
      const all = since.map((event) => event.id);
      assert.equal(new Set(all).size, all.length);
    }
    assert.equal(channel.size, 2);
  } finally {
    client.close();
    source.close();
    await reading;
    await channel.close();
    await server.shutdown();
  }
}
