// Copyright the sse authors. MIT license.
// Presence and metrics at N connections: what `clients()`, `count()`,
// `metrics()` and `disconnect()` cost per call, and what presence and the
// metrics keep in memory per connection.
//
//   deno run -A --v8-flags=--expose-gc bench/presence_bench.ts [--n 10000]
//     [--rounds 200] [--json]
//
// Connects N clients to one SSEChannel in this process (`connect` with a
// Request, the stream kept open and unread: the channel holds what it holds
// for a served client; no sockets, so nothing else is measured). Each client
// has a context `{ user }` from onConnect and its topics from the topics
// hook: one of 10 rooms; then, in a second channel, also a topic of its own
// (`user:<n>`): N + 10 topics, the worst case for `metrics()`, whose
// snapshot lists every topic.
//
// Compares, in one run:
//   - time per call, median of `--rounds` calls, against a floor: copying N
//     references from a Set into an array (what any listing must do);
//   - memory per connection: the JS heap after a full GC with N clients,
//     less the heap before they connected, against what presence and metrics
//     add to it: N frozen `{ context, topics, connectedAt }` objects (the
//     entry `clients()` hands out) and the per-topic counts of N + 10
//     topics, measured apart the same way.

import { positive, readArgs } from "./_args.ts";
import { SSEChannel } from "../server.ts";
import { Tally } from "../_presence.ts";

interface Options {
  n: number;
  rounds: number;
  json: boolean;
}

function parseOptions(args: string[]): Options {
  const values = readArgs({
    n: { type: "string" },
    rounds: { type: "string" },
    json: { type: "boolean" },
  }, args);
  const explain = { explain: true };
  return {
    n: positive(values.n, "n", 10_000, explain),
    rounds: positive(values.rounds, "rounds", 200, explain),
    json: values.json === true,
  };
}

const gc = (globalThis as { gc?: () => void }).gc;
if (gc === undefined) {
  console.error("Run with --v8-flags=--expose-gc");
  Deno.exit(2);
}

/** The JS heap in use after full collections. */
function heap(): number {
  for (let i = 0; i < 3; i++) gc!();
  return Deno.memoryUsage().heapUsed;
}

/** Median microseconds per call of `fn`, over `rounds` calls. */
function time(rounds: number, fn: () => unknown): number {
  const samples: number[] = [];
  let sink = 0;
  for (let i = 0; i < rounds; i++) {
    const start = performance.now();
    const value = fn();
    samples.push(performance.now() - start);
    if (value !== undefined) sink++;
  }
  if (sink < 0) console.log(sink);
  samples.sort((a, b) => a - b);
  return samples[samples.length >> 1]! * 1000;
}

const options = parseOptions(Deno.args);
const { n, rounds } = options;
const ROOMS = 10;

interface User {
  user: number;
}

/** The topics of client `i`: its room, and with `perUser` one of its own. */
function topicsOf(i: number, perUser: boolean): string[] {
  return perUser ? [`room:${i % ROOMS}`, `user:${i}`] : [`room:${i % ROOMS}`];
}

interface Scenario {
  topics: number;
  heapPerConnection: number;
  presencePerConnection: number;
  microseconds: Record<string, number>;
  floorMicroseconds: number;
}

async function measure(perUser: boolean): Promise<Scenario> {
  const channel = new SSEChannel<User>({
    keepAlive: 0,
    onConnect: (request) => ({
      user: Number(new URL(request.url).searchParams.get("user")),
    }),
    topics: ({ user }) => topicsOf(user, perUser),
  });
  const heapBefore = heap();
  const responses: Response[] = [];
  for (let i = 0; i < n; i++) {
    responses.push(
      await channel.connect(new Request(`http://localhost/?user=${i}`)),
    );
  }
  const heapWith = heap();
  if (channel.size !== n) throw new Error(`Connected ${channel.size} of ${n}`);

  // What presence and metrics keep, built apart the same way: the contexts
  // and topics exist first (a client holds them anyway), then the frozen
  // entry per client and the per-topic counts.
  const contexts = Array.from({ length: n }, (_, i) => ({ user: i }));
  const topics = contexts.map(({ user }) =>
    Object.freeze(topicsOf(user, perUser))
  );
  const presenceBefore = heap();
  const entries: unknown[] = new Array(n);
  const tally = new Tally();
  for (let i = 0; i < n; i++) {
    entries[i] = Object.freeze({
      context: contexts[i],
      topics: topics[i],
      connectedAt: Date.now(),
    });
    tally.joined(topics[i]!);
  }
  const presence = heap() - presenceBefore;

  const set = new Set(entries);
  const floor = time(rounds, () => [...set]);
  const microseconds = {
    "clients()": time(rounds, () => channel.clients()),
    'clients("room:3")': time(rounds, () => channel.clients("room:3")),
    'count("room:3")': time(rounds * 100, () => channel.count("room:3")),
    "size": time(rounds * 100, () => channel.size),
    "metrics()": time(rounds, () => channel.metrics()),
    "disconnect(() => false)": time(
      rounds,
      () => channel.disconnect(() => false),
    ),
  };
  const scenario = {
    topics: Object.keys(channel.metrics().topics).length,
    heapPerConnection: (heapWith - heapBefore) / n,
    presencePerConnection: (presence - 4 * n) / n, // less the array's slots
    microseconds,
    floorMicroseconds: floor,
  };
  await Promise.all(responses.map((response) => response.body?.cancel()));
  await channel.close();
  if (channel.size !== 0) throw new Error("Clients left after close");
  // Keep them alive until measured.
  if (entries.length !== n || set.size !== n) throw new Error("Lost entries");
  return scenario;
}

const scenarios = {
  rooms: await measure(false),
  "rooms and per-user": await measure(true),
};
const loadavg = Deno.loadavg();

if (options.json) {
  console.log(JSON.stringify({ n, scenarios, loadavg }));
} else {
  console.log(
    `presence: N = ${n} in-process connections, each in one of ${ROOMS} rooms; ` +
      `Deno ${Deno.version.deno}; load average ${
        loadavg.map((x) => x.toFixed(2)).join(", ")
      }`,
  );
  const names = Object.keys(scenarios) as (keyof typeof scenarios)[];
  console.log("");
  console.log(
    `| call | ${
      names.map((name) =>
        `µs, ${name} (${scenarios[name].topics} topics) | vs floor`
      ).join(" | ")
    } |`,
  );
  console.log("| --- |" + " ---: | ---: |".repeat(names.length));
  for (const call of Object.keys(scenarios.rooms.microseconds)) {
    const cells = names.map((name) => {
      const { microseconds, floorMicroseconds } = scenarios[name];
      const us = microseconds[call]!;
      const ratio = us / floorMicroseconds;
      return `${us.toFixed(us < 1 ? 3 : 0)} | ${
        ratio.toFixed(ratio < 0.1 ? 4 : 2)
      }×`;
    });
    console.log(`| \`${call}\` | ${cells.join(" | ")} |`);
  }
  console.log(
    `| floor: copying N references into an array | ${
      names.map((name) =>
        `${scenarios[name].floorMicroseconds.toFixed(0)} | 1×`
      ).join(" | ")
    } |`,
  );
  console.log("");
  for (const name of names) {
    const { heapPerConnection, presencePerConnection } = scenarios[name];
    console.log(
      `${name}: JS heap per connection ${heapPerConnection.toFixed(0)} B, ` +
        `of which presence and metrics keep ${
          presencePerConnection.toFixed(0)
        } B (${
          (100 * presencePerConnection / heapPerConnection).toFixed(1)
        } %): the frozen entry clients() hands out, and the per-topic counts.`,
    );
  }
}
