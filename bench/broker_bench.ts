// Copyright the sse authors. MIT license.
// Events through a distributed broker to 1 000 clients split over two
// instances, against the in-memory broker with one instance holding all 1 000
// (and, to separate the cost of the broker from that of a second process,
// each broker with one instance), in one run: RedisBroker on a redis-server,
// DenoKvBroker on a Deno KV file (SQLite) shared by the processes.
//
//   deno run -A bench/broker_bench.ts [--clients 1000] [--events 1000] [--size 100]
//                                     [--rate 100] [--paced 300]
//                                     [--only memory,redis,kv]
//
// What runs (every piece its own process, on 127.0.0.1):
// - redis-server (from tests/_redis.ts: random port, no persistence);
// - a Deno KV file in a temporary directory, a new one for each setup;
// - instances: tests/fixtures/instance_server.ts, an SSEChannel on Deno.serve
//   with a RedisBroker or a DenoKvBroker (one or two instances) or a
//   MemoryBroker (one instance). Two DenoKvBroker processes on one local file
//   see each other's entries by polling (kv.watch() does not cross processes
//   there; it does on Deno Deploy), and when they read after a publish of
//   their own: they run with both publishing, and with one publishing (the
//   other's clients then get every event through the poll alone), with the
//   default pollInterval (1000 ms) and with 100 ms;
// - clients: two bench/fanout/clients.ts processes (raw TCP, minimal SSE
//   parsing), half the clients each, so the load never shares an event loop
//   with a server. With Redis, each client process talks to its own instance.
//
// Each setup is measured twice:
// - burst: `events` events published as fast as the instances accept them
//   (16 publishes in flight per publishing instance; with two instances
//   publishing, each publishes half). Throughput = deliveries (events × clients) per
//   second, from the first publish to the last delivery.
// - paced: `paced` events at `rate` events/s (by default 300 at 100/s:
//   100 000 deliveries/s, below what every setup sustains, so this is latency
//   without a backlog). Latency =
//   delivery time minus the time in the event, both `performance.timeOrigin +
//   now()`; p50 and p99 are the worse of the two client processes' (each holds
//   half the clients). In the burst, latency is mostly time spent queued.
//
// Bounded: a few seconds per phase, about 3 minutes in all.

import { positive, readArgs } from "./_args.ts";
import { Child } from "./fanout/_child.ts";
import { startRedis } from "../tests/_redis.ts";
import { type Instance, startInstance } from "../tests/_instance.ts";

const ARGS = readArgs({
  only: { type: "string" },
  clients: { type: "string" },
  events: { type: "string" },
  size: { type: "string" },
  rate: { type: "string" },
  paced: { type: "string" },
});

/** The setups to run: any of memory, redis, kv. */
function only(): Set<string> {
  const all = ["memory", "redis", "kv"];
  if (ARGS.only === undefined) return new Set(all);
  const chosen = ARGS.only.split(",");
  for (const name of chosen) {
    if (!all.includes(name)) {
      throw new RangeError(`Invalid --only: ${name} is none of ${all}`);
    }
  }
  return new Set(chosen);
}

const ONLY = only();
const CLIENTS = positive(ARGS.clients, "clients", 1000);
const EVENTS = positive(ARGS.events, "events", 1000);
const SIZE = positive(ARGS.size, "size", 100);
const PACED_RATE = positive(ARGS.rate, "rate", 100);
const PACED_EVENTS = positive(ARGS.paced, "paced", 300);
const CLIENTS_TS = new URL("./fanout/clients.ts", import.meta.url).pathname;

interface Phase {
  deliveriesPerSecond: number;
  p50: number;
  p99: number;
  received: number;
  expected: number;
}

function now(): number {
  return performance.timeOrigin + performance.now();
}

async function post(instance: Instance, path: string, body: unknown) {
  const response = await fetch(`${instance.url}${path}`, {
    method: "POST",
    body: JSON.stringify(body),
  });
  const text = await response.text();
  if (response.status !== 200) throw new Error(`${path}: ${text}`);
  return JSON.parse(text);
}

/**
 * Connects the client processes (one per target instance), warms up, then
 * publishes `events` events from the publishing instances and collects the
 * result.
 */
async function phase(
  targets: Instance[],
  publishers: Instance[],
  events: number,
  load: { concurrency?: number; rate?: number },
): Promise<Phase> {
  const perProcess = CLIENTS / 2;
  const clientTargets = targets.length === 1
    ? [targets[0]!, targets[0]!]
    : targets;
  const processes = clientTargets.map((target, i) =>
    new Child(`clients ${i}`, [
      Deno.execPath(),
      "run",
      "--allow-net=127.0.0.1",
      "--allow-read=/dev/stdin",
      CLIENTS_TS,
      ...["--port", new URL(target.url).port, "--n", String(perProcess)],
      ...["--events", String(events), "--path", "/events"],
    ])
  );
  try {
    for (const process of processes) {
      const connected = await process.message("connected", 60_000);
      if (connected.connected !== perProcess) {
        throw new Error(`${process.name}: ${JSON.stringify(connected)}`);
      }
    }
    // Warm-up: one event (seq -1) that every client must get first.
    await post(publishers[0]!, "/publish", {
      data: JSON.stringify({ t: now(), seq: -1 }),
    });
    for (const process of processes) await process.message("warm", 30_000);

    const share = Math.ceil(events / publishers.length);
    const started = now();
    await Promise.all(
      publishers.map((publisher, i) =>
        post(publisher, "/publish-batch", {
          count: Math.min(share, events - i * share),
          from: i * share,
          size: SIZE,
          ...load,
        })
      ),
    );
    const results = [];
    for (const process of processes) {
      results.push(await process.message("result", 60_000));
    }
    const last = Math.max(...results.map((r) => r.lastReceive as number));
    const received = results.reduce((n, r) => n + (r.received as number), 0);
    return {
      deliveriesPerSecond: received / ((last - started) / 1000),
      p50: Math.max(...results.map((r) => r.p50 as number)),
      p99: Math.max(...results.map((r) => r.p99 as number)),
      received,
      expected: CLIENTS * events,
    };
  } finally {
    for (const process of processes) await process.send("exit");
    await Promise.all(processes.map((process) => process.stop(5000)));
  }
}

async function measure(
  name: string,
  targets: Instance[],
  publishers: Instance[],
): Promise<{ name: string; burst: Phase; paced: Phase }> {
  const burst = await phase(targets, publishers, EVENTS, { concurrency: 16 });
  const paced = await phase(targets, publishers, PACED_EVENTS, {
    rate: PACED_RATE,
  });
  return { name, burst, paced };
}

/** Runs `body` with a fresh Deno KV file path, removed afterwards. */
async function withKvFile<T>(body: (path: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "sse-broker-bench-" });
  try {
    return await body(`${dir}/kv.sqlite3`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** The 1-, 5- and 15-minute load averages, where the system tells them. */
async function loadAverage(): Promise<string> {
  const text = await Deno.readTextFile("/proc/loadavg").catch(() => "? ? ?");
  return text.split(" ").slice(0, 3).join(" ");
}

async function main(): Promise<void> {
  const started = performance.now();
  const loadBefore = await loadAverage();
  const rows = [];
  if (ONLY.has("memory")) {
    await using a = await startInstance({ broker: "memory" });
    rows.push(await measure("MemoryBroker, 1 instance", [a], [a]));
  }
  if (ONLY.has("redis")) {
    const redis = await startRedis();
    try {
      {
        // The cost of going through Redis, without a second instance.
        await using a = await startInstance({ redisUrl: redis.url });
        rows.push(await measure("RedisBroker, 1 instance", [a], [a]));
      }
      {
        await using a = await startInstance({ redisUrl: redis.url });
        await using b = await startInstance({ redisUrl: redis.url });
        rows.push(
          await measure("RedisBroker, 2 instances", [a, b], [a, b]),
        );
      }
    } finally {
      await redis.close();
    }
  }
  if (ONLY.has("kv")) {
    await withKvFile(async (kvPath) => {
      await using a = await startInstance({ broker: "kv", kvPath });
      rows.push(await measure("DenoKvBroker, 1 instance", [a], [a]));
    });
    // Both instances publishing: each local publish also reads what the
    // other process wrote. One publishing: the other's clients get every
    // event through the poll alone.
    const setups = [
      { pollInterval: 1000, both: true },
      { pollInterval: 1000, both: false },
      { pollInterval: 100, both: false },
    ];
    for (const { pollInterval, both } of setups) {
      await withKvFile(async (kvPath) => {
        const options = { broker: "kv", kvPath, pollInterval } as const;
        await using a = await startInstance(options);
        await using b = await startInstance(options);
        rows.push(
          await measure(
            `DenoKvBroker, 2 instances, ${
              both ? "both" : "one"
            } publishing (poll ${pollInterval} ms)`,
            [a, b],
            both ? [a, b] : [a],
          ),
        );
      });
    }
  }

  const format = (n: number) => Math.round(n).toLocaleString("en-US");
  const ms = (n: number) => n.toFixed(1);
  console.log(
    `\n${CLIENTS} clients, ${EVENTS} events of ~${SIZE} B (burst), ${PACED_EVENTS} at ${PACED_RATE}/s (paced); Deno ${Deno.version.deno}, redis-server and a Deno KV file on 127.0.0.1; load average ${loadBefore} before, ${await loadAverage()} after\n`,
  );
  console.log(
    "| Broker | burst: events/s to every client | burst: deliveries/s | burst: p50 / p99 ms | paced: p50 / p99 ms | received |",
  );
  console.log("| --- | ---: | ---: | ---: | ---: | ---: |");
  for (const { name, burst, paced } of rows) {
    console.log(
      `| ${name} | ${format(burst.deliveriesPerSecond / CLIENTS)} | ${
        format(burst.deliveriesPerSecond)
      } | ${ms(burst.p50)} / ${ms(burst.p99)} | ${ms(paced.p50)} / ${
        ms(paced.p99)
      } | ${burst.received + paced.received} of ${
        burst.expected + paced.expected
      } |`,
    );
  }
  const memory = rows.find((row) => row.name.startsWith("MemoryBroker"));
  for (const row of rows) {
    if (memory === undefined || row === memory) continue;
    console.log(
      `${row.name} / memory: burst throughput ${
        (row.burst.deliveriesPerSecond / memory.burst.deliveriesPerSecond)
          .toFixed(2)
      }×; paced p50 latency ${(row.paced.p50 / memory.paced.p50).toFixed(2)}×`,
    );
  }
  console.log(
    `${((performance.now() - started) / 1000).toFixed(0)} s in all.`,
  );
}

// `deno bench bench/` loads every *_bench.ts: this one runs only as a program.
if (import.meta.main) {
  await main();
}
