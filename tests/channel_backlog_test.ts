// Copyright the sse authors. MIT license.
// SSEChannel's delivery: what reaches the wire (the broker's id alone),
// bursts of any size to readers that read (a backlog of shared frames up to
// maxBacklog), what a stalled client costs, what close() does with streams
// whose peer never reads, and the metrics of delivery. Each scenario runs
// over a real Deno.serve and real sockets.
import assert from "node:assert/strict";
import {
  MemoryBroker,
  type SSEBrokerEntry,
  type SSEBrokerSubscription,
  SSEChannel,
} from "../server.ts";
import { SSEClient } from "../client.ts";
import type { SSEEvent } from "../parser.ts";
import {
  Counter,
  RawClient,
  serve,
  test,
  WAIT_MS,
  within,
} from "./_channel.ts";

const KiB = 1024;
const MiB = 1024 * KiB;

/** A message of `size` bytes of data that starts with its number. */
function numbered(i: number, size: number): { data: string } {
  return { data: String(i).padStart(8, "0") + "x".repeat(size - 8) };
}

/** The numbers `numbered` put at the start of each event's data. */
function numbers(events: SSEEvent[]): number[] {
  return events.map((event) => Number(event.data.slice(0, 8)));
}

function run(from: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => from + i);
}

/**
 * Reads `count` events with an SSEClient (no reconnection: an end before
 * `count` is a failure), as fast as loopback allows.
 */
async function read(
  url: string,
  count: number,
  options: { lastEventId?: string; maxEventSize?: number } = {},
): Promise<{ events: SSEEvent[]; lastEventId: string }> {
  const controller = new AbortController();
  const client = new SSEClient(url, {
    signal: controller.signal,
    ...options,
  });
  const events: SSEEvent[] = [];
  try {
    await within(
      (async () => {
        for await (const event of client) {
          events.push(event);
          if (events.length === count) return;
        }
      })(),
      WAIT_MS,
      `${count} events (got ${events.length})`,
    ).catch((error) => {
      throw new Error(`${error.message}; got ${events.length}`);
    });
    return { events, lastEventId: client.lastEventId };
  } finally {
    client.close();
  }
}

/**
 * A broker that hands out entries whose message carries an id of its own,
 * as one written by another program, or kept by a broker that stores the
 * message as given, would: live and from history.
 */
class ForgingBroker extends MemoryBroker {
  static forge(entry: SSEBrokerEntry): SSEBrokerEntry {
    return { ...entry, message: { ...entry.message, id: "forged" } };
  }

  override subscribe(
    name: string,
    onEntry: (entry: SSEBrokerEntry) => void,
  ): Promise<SSEBrokerSubscription> {
    return super.subscribe(
      name,
      (entry) => onEntry(ForgingBroker.forge(entry)),
    );
  }

  override async history(
    name: string,
    options: { after: string; limit: number },
  ): Promise<SSEBrokerEntry[] | null> {
    const page = await super.history(name, options);
    return page?.map(ForgingBroker.forge) ?? null;
  }
}

test("SSEChannel writes the broker's id alone, never the id a stored message carries, live and replayed, with and without a filter", async () => {
  for (const filter of [undefined, () => true]) {
    const broker = new ForgingBroker();
    const channel = new SSEChannel({ broker, ...(filter && { filter }) });
    const server = serve((request) => channel.connect(request));
    const raw = await RawClient.open(server.url);
    try {
      const first = await channel.publish({ data: "first" });
      const reading = read(server.url, 2);
      await new Promise((resolve) => setTimeout(resolve, 50));
      const ids = [
        await channel.publish({ data: "live 1" }),
        await channel.publish({ data: "live 2" }),
      ];
      const live = await reading;
      assert.deepEqual(live.events.map((event) => event.id), ids);
      assert.equal(live.lastEventId, ids[1]);
      // Replayed from history to a client that resumes.
      const resumed = await read(server.url, 2, { lastEventId: first });
      assert.deepEqual(resumed.events.map((event) => event.id), ids);
      assert.equal(resumed.lastEventId, ids[1]);
      // On the wire: one id line per frame, the broker's.
      await raw.readUntil(
        () => raw.text.includes("live 2"),
        "the raw client's frames",
      );
      assert.doesNotMatch(raw.text, /forged/);
      const lines = [...raw.text.matchAll(/^id: (.*)$/gm)].map((m) => m[1]);
      assert.equal(lines.length, raw.text.match(/^data: /gm)?.length);
      assert.deepEqual(lines.slice(-2), ids);
    } finally {
      raw.close();
      await channel.close();
      await server.shutdown();
      await broker.close();
    }
  }
});
