// Copyright the sse authors. MIT license.
// Gap herd: N clients follow one SSEChannel on a RedisBroker when its live
// reader loses entries (it fell behind by more than the stream keeps). The
// channel ends every live client ("replay-lost"); each reconnects from the
// last event it got, is answered `resumed: false`, and `init` sends it a
// snapshot. How long until all N hold the snapshot, how many requests that
// takes, whether anything published after is missed or doubled, and what it
// costs the server in memory and CPU.
//
//   deno run -A bench/gap_herd_bench.ts [--clients 100,1000] [--runs 3]
//     [--behind 500] [--after 20] [--retry 1000] [--gaps 1] [--json]
//
// What runs, every piece its own process, on 127.0.0.1, for each N and run:
// - redis-server (tests/_redis.ts: random port, no persistence), fresh;
// - the server: an SSEChannel ("herd", replay 5, the `retry` hint, an `init`
//   that sends a `snapshot` event unless resumed) on a RedisBroker, served by
//   Deno.serve; it records the gap its reader reports (`onGap`), each `init`
//   and each disconnect reason, and reads its own RSS and CPU from /proc;
// - the clients: N SSEClients (client.ts) in one process, each with a
//   counting `fetch`, recording every event with the time it came;
// - this process: another instance, an SSEChannel of the same name on its
//   own RedisBroker, that publishes. It publishes "start" (every client then
//   has an id), freezes the server (SIGSTOP, as a paused VM or a long
//   garbage collection would), publishes `behind` entries (more than the
//   100 the stream keeps), lets the server run again (SIGCONT): its reader
//   finds the oldest of them trimmed. Once every client holds its second
//   snapshot (or 60 s passed), it publishes `after` events, and checks that
//   each client got each of them once, in order, after its snapshot.
//
// Figures: time from the gap (the server's onGap) to the first and the last
// client holding its snapshot again; requests per client for that gap (1
// expected: one reconnect; the JSON lines give the histogram of all requests
// so far); the server's RSS before (N idle clients, or what the previous gap
// left), its peak from the freeze to the end of the check (VmHWM, reset
// through /proc/self/clear_refs), after (2 s later, after a GC); its CPU time
// (user + system) over the same span; the load average. Medians over `runs`.
// With `--gaps 2` or more, each run goes through that many gaps in a row: a
// later gap's growth shows whether the first one left anything behind.
//
// Bounded: every wait has a deadline (about 5 s a gap when all is well);
// what it started is stopped on every path, and a frozen server is thawed.

import { readArgs } from "./_args.ts";
import { Child, live, stdinLines } from "./fanout/_child.ts";
import { median } from "./_results.ts";
import { startRedis } from "../tests/_redis.ts";
import { RedisBroker } from "../redis.ts";
import type { SSEBroker } from "../_broker.ts";
import type { SSEChannel as SSEChannelType } from "../server.ts";

const SELF = new URL(import.meta.url).pathname;
const MiB = 1024 * 1024;
const STREAM = "herd";
/** The longest wait for the clients to recover, or to get the events after. */
const WAIT_MS = 60_000;

const ARGS = readArgs({
  role: { type: "string" },
  redis: { type: "string" },
  port: { type: "string" },
  clients: { type: "string" },
  retry: { type: "string" },
  gaps: { type: "string" },
  behind: { type: "string" },
  after: { type: "string" },
  runs: { type: "string" },
  json: { type: "boolean" },
});

type Count = "clients" | "retry" | "gaps" | "behind" | "after" | "runs";

function counts(name: Count, fallback: string): number[] {
  const raw = ARGS[name] ?? fallback;
  return raw.split(",").map((text) => {
    const value = Number(text);
    if (!Number.isSafeInteger(value) || value < 0) {
      throw new RangeError(
        `Invalid --${name}: expected non-negative integers, got ${raw}`,
      );
    }
    return value;
  });
}

function count(name: Count, fallback: number): number {
  return counts(name, String(fallback))[0]!;
}

function print(value: Record<string, unknown>): void {
  console.log(JSON.stringify(value));
}

function now(): number {
  return performance.timeOrigin + performance.now();
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** This process's RSS and peak RSS (bytes) and CPU time (ms), from /proc. */
async function usage(): Promise<{ rss: number; peak: number; cpu: number }> {
  const status = await Deno.readTextFile("/proc/self/status");
  const field = (name: string) =>
    Number(status.match(new RegExp(`^${name}:\\s+(\\d+) kB`, "m"))?.[1]) *
    1024;
  // utime and stime, fields 14 and 15, in ticks of 10 ms (USER_HZ 100).
  const stat = await Deno.readTextFile("/proc/self/stat");
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  const cpu = (Number(fields[11]) + Number(fields[12])) * 10;
  return { rss: field("VmRSS"), peak: field("VmHWM"), cpu };
}

/** The server: the channel on a RedisBroker, on 127.0.0.1 port 0. */
async function server(): Promise<void> {
  const { SSEChannel } = await import("../server.ts");
  const redis = new RedisBroker({ url: ARGS.redis! });
  const gaps: number[] = [];
  // The broker as the channel sees it, noting when a gap is reported.
  const broker: SSEBroker = {
    publish: (name, entry, options) => redis.publish(name, entry, options),
    history: (name, options) => redis.history(name, options),
    close: () => redis.close(),
    subscribe: (name, onEntry, options) =>
      redis.subscribe(name, onEntry, {
        onGap(gap) {
          gaps.push(now());
          options?.onGap?.(gap);
        },
      }),
  };
  let snapshots = 0;
  let resumed = 0;
  const reasons: Record<string, number> = {};
  const channel: SSEChannelType = new SSEChannel({
    name: STREAM,
    broker,
    replay: 5,
    retry: count("retry", 1000),
    keepAlive: 0,
    init(_, __, { resumed: yes }) {
      if (yes) {
        resumed++;
        return [];
      }
      snapshots++;
      return [{ event: "snapshot", data: `state ${snapshots}` }];
    },
    onDisconnect(_, { reason }) {
      reasons[reason] = (reasons[reason] ?? 0) + 1;
    },
  });
  const http = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (request) => channel.connect(request),
  );
  print({ type: "ready", port: http.addr.port, pid: Deno.pid });
  const gc = (globalThis as { gc?: () => void }).gc;
  let marked = { rss: 0, peak: 0, cpu: 0 };
  for await (const line of stdinLines()) {
    if (line === "mark") {
      gc?.();
      // Resets VmHWM to the current RSS: the peak read later is this span's.
      await Deno.writeTextFile("/proc/self/clear_refs", "5");
      marked = await usage();
      print({ type: "marked", rss: marked.rss });
    } else if (line === "stats") {
      const { peak, cpu } = await usage();
      print({
        type: "stats",
        peak,
        cpu: cpu - marked.cpu,
        gaps,
        snapshots,
        resumed,
        reasons,
        size: channel.size,
      });
    } else if (line === "settle") {
      await sleep(2000);
      gc?.();
      await sleep(100);
      print({ type: "settled", rss: (await usage()).rss });
    }
  }
  await channel.close();
  await http.shutdown();
  await broker.close();
}

/** One client's record: its events (with when they came) and its requests. */
interface Follower {
  events: { type: string; data: string; id: string; at: number }[];
  requests: number;
  snapshots: number[];
}

/** The clients: N SSEClients, reporting when each step is reached by all. */
async function clients(): Promise<void> {
  const { SSEClient } = await import("../client.ts");
  const url = `http://127.0.0.1:${ARGS.port}/`;
  const n = count("clients", 1000);
  const followers: Follower[] = [];
  const readers: Promise<void>[] = [];
  const all: InstanceType<typeof SSEClient>[] = [];
  let wake = () => {};
  const until = async (done: () => boolean): Promise<boolean> => {
    const deadline = now() + WAIT_MS;
    while (!done()) {
      if (now() > deadline) return false;
      await new Promise<void>((resolve) => {
        wake = resolve;
        setTimeout(resolve, 50);
      });
    }
    return true;
  };
  for (let i = 0; i < n; i++) {
    const follower: Follower = { events: [], requests: 0, snapshots: [] };
    followers.push(follower);
    const client = new SSEClient(url, {
      fetch(input, init) {
        follower.requests++;
        return fetch(input, init);
      },
    });
    all.push(client);
    readers.push((async () => {
      try {
        for await (const { type, data, id } of client) {
          const at = now();
          follower.events.push({ type, data, id, at });
          if (type === "snapshot") follower.snapshots.push(at);
          wake();
        }
      } catch (error) {
        print({ type: "client-error", message: String(error) });
      }
    })());
    // In batches, so that the listen backlog never overflows.
    if (i % 100 === 99) {
      await until(() => followers.every((f) => f.snapshots.length === 1));
    }
  }
  const ok = await until(() =>
    followers.every((f) => f.snapshots.length === 1)
  );
  print({ type: "connected", ok });
  for await (const line of stdinLines()) {
    const [command, rest] = [line.slice(0, line.indexOf(" ")), line];
    if (command === "start") {
      const [round, id] = rest.slice(6).split(" ") as [string, string];
      const snapshots = Number(round) + 1;
      const ok = await until(() =>
        followers.every((f) => f.events.some((event) => event.id === id))
      );
      print({ type: "started", ok });
      // Now the gap: each client ends, reconnects, gets a snapshot again.
      const recovered = await until(() =>
        followers.every((f) => f.snapshots.length >= snapshots)
      );
      const back = followers.map((f) => f.snapshots[snapshots - 1]).filter((
        at,
      ) => at !== undefined);
      print({
        type: "recovered",
        ok: recovered,
        count: back.length,
        first: Math.min(...back),
        last: Math.max(...back),
      });
    } else if (command === "after") {
      const ids: string[] = JSON.parse(rest.slice(6));
      const index = new Map(ids.map((id, i) => [id, i]));
      const last = ids.at(-1);
      await until(() =>
        followers.every((f) => f.events.some((event) => event.id === last))
      );
      let missed = 0;
      let duplicated = 0;
      let disordered = 0;
      let clean = 0;
      for (const f of followers) {
        const snapshot = f.events.findLastIndex((e) => e.type === "snapshot");
        // This round's events after the last snapshot, by their place.
        const got = f.events.slice(snapshot + 1)
          .map((event) => index.get(event.id))
          .filter((at) => at !== undefined);
        const seen = new Set<number>();
        for (const id of got) {
          if (seen.has(id)) duplicated++;
          seen.add(id);
        }
        missed += ids.length - seen.size;
        const inOrder = got.every((at, i) => i === 0 || at > got[i - 1]!);
        if (!inOrder) disordered++;
        if (got.length === ids.length && inOrder && seen.size === ids.length) {
          clean++;
        }
      }
      const requests = followers.map((f) => f.requests);
      const histogram: Record<string, number> = {};
      for (const r of requests) histogram[r] = (histogram[r] ?? 0) + 1;
      print({
        type: "checked",
        missed,
        duplicated,
        disordered,
        clean,
        requests: requests.reduce((a, b) => a + b, 0),
        histogram,
        snapshotsMax: Math.max(...followers.map((f) => f.snapshots.length)),
      });
    }
  }
  for (const client of all) client.close();
  await Promise.all(readers);
}

interface Run {
  clients: number;
  /** Which gap of the run (1, 2…): a later one shows what the first kept. */
  round: number;
  /** From the gap to the first and last client holding its snapshot (ms). */
  first: number;
  last: number;
  recovered: number;
  requests: number;
  histogram: Record<string, number>;
  missed: number;
  duplicated: number;
  disordered: number;
  clean: number;
  gaps: number;
  snapshots: number;
  resumed: number;
  reasons: Record<string, number>;
  before: number;
  peak: number;
  after: number;
  cpu: number;
}

async function run(n: number): Promise<Run[]> {
  await using redis = await startRedis();
  const retry = String(count("retry", 1000));
  const serverChild = new Child("server", [
    Deno.execPath(),
    "run",
    "-A",
    "--v8-flags=--expose-gc",
    SELF,
    ...["--role", "server", "--redis", redis.url, "--retry", retry],
  ]);
  let clientChild: Child | undefined;
  let pid = 0;
  const publisher = new RedisBroker({ url: redis.url });
  const { SSEChannel } = await import("../server.ts");
  const other = new SSEChannel({ name: STREAM, broker: publisher, replay: 5 });
  try {
    const ready = await serverChild.message("ready", 30_000);
    pid = ready.pid as number;
    clientChild = new Child("clients", [
      Deno.execPath(),
      "run",
      "-A",
      SELF,
      ...["--role", "clients", "--port", String(ready.port)],
      ...["--clients", String(n)],
    ]);
    const connected = await clientChild.message("connected", WAIT_MS + 5000);
    if (!connected.ok) throw new Error(`not all ${n} clients connected`);
    const results: Run[] = [];
    let requests = n;
    for (let round = 1; round <= count("gaps", 1); round++) {
      const start = await other.publish({ data: "start" });
      await clientChild.send(`start ${round} ${start}`);
      const started = await clientChild.message("started", WAIT_MS + 5000);
      if (!started.ok) throw new Error(`not all ${n} clients got "start"`);
      await serverChild.send("mark");
      const { rss: before } = await serverChild.message("marked", 10_000);
      Deno.kill(pid, "SIGSTOP");
      try {
        const behind = count("behind", 500);
        for (let i = 0; i < behind; i++) {
          await other.publish({ data: "behind" });
        }
      } finally {
        Deno.kill(pid, "SIGCONT");
      }
      const recovered = await clientChild.message("recovered", WAIT_MS + 5000);
      const ids: string[] = [];
      for (let i = 0; i < count("after", 20); i++) {
        ids.push(await other.publish({ data: `after ${i}` }));
      }
      await clientChild.send(`after ${JSON.stringify(ids)}`);
      const checked = await clientChild.message("checked", WAIT_MS + 5000);
      await serverChild.send("stats");
      const stats = await serverChild.message("stats", 10_000);
      await serverChild.send("settle");
      const { rss: after } = await serverChild.message("settled", 10_000);
      const gaps = stats.gaps as number[];
      const gapAt = gaps[round - 1] ?? NaN;
      results.push({
        clients: n,
        round,
        first: (recovered.first as number) - gapAt,
        last: (recovered.last as number) - gapAt,
        recovered: recovered.count as number,
        requests: (checked.requests as number) - requests,
        histogram: checked.histogram as Record<string, number>,
        missed: checked.missed as number,
        duplicated: checked.duplicated as number,
        disordered: checked.disordered as number,
        clean: checked.clean as number,
        gaps: gaps.length,
        snapshots: stats.snapshots as number,
        resumed: stats.resumed as number,
        reasons: stats.reasons as Record<string, number>,
        before: before as number,
        peak: stats.peak as number,
        after: after as number,
        cpu: stats.cpu as number,
      });
      requests = checked.requests as number;
    }
    return results;
  } finally {
    if (pid !== 0) {
      try {
        Deno.kill(pid, "SIGCONT");
      } catch {
        // Already gone.
      }
    }
    await clientChild?.stop(10_000);
    await serverChild.stop(5000);
    await other.close();
    await publisher.close();
  }
}

async function loadavg(): Promise<string> {
  return (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3)
    .join(" ");
}

async function main(): Promise<void> {
  const role = ARGS.role;
  if (role === "server") return await server();
  if (role === "clients") return await clients();
  Deno.addSignalListener("SIGINT", () => {
    for (const child of live) child.stop(0);
    Deno.exit(130);
  });
  const json = ARGS.json === true;
  const runs = count("runs", 3);
  const loadBefore = await loadavg();
  const results: Run[] = [];
  for (const n of counts("clients", "100,1000")) {
    for (let i = 0; i < runs; i++) {
      for (const result of await run(n)) {
        results.push(result);
        if (!json) console.log(JSON.stringify(result));
      }
    }
  }
  const loadAfter = await loadavg();
  if (json) {
    console.log(JSON.stringify({ loadBefore, loadAfter, results }));
    return;
  }
  console.log(
    `\nGap herd: behind ${count("behind", 500)}, after ${
      count("after", 20)
    }, retry ${
      count("retry", 1000)
    } ms; medians of ${runs}; load ${loadBefore} before, ${loadAfter} after\n`,
  );
  console.log(
    "| clients | gap | gap → first snapshot (ms) | gap → all snapshots (ms) | reconnects / client | after events missed / doubled / out of order | RSS before (MiB) | peak RSS (MiB) | RSS after (MiB) | server CPU (ms) |",
  );
  console.log(
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
  );
  for (
    const [n, round] of counts("clients", "100,1000").flatMap((n) =>
      Array.from({ length: count("gaps", 1) }, (_, i) => [n, i + 1] as const)
    )
  ) {
    const of = results.filter((result) =>
      result.clients === n && result.round === round
    );
    const m = (pick: (r: Run) => number) => median(of.map(pick));
    const mib = (pick: (r: Run) => number) => (m(pick) / MiB).toFixed(0);
    console.log(
      `| ${n} | ${round} | ${m((r) => r.first).toFixed(0)} | ${
        m((r) => r.last).toFixed(0)
      } | ${(m((r) => r.requests) / n).toFixed(2)} | ${m((r) => r.missed)} / ${
        m((r) => r.duplicated)
      } / ${m((r) => r.disordered)} | ${mib((r) => r.before)} | ${
        mib((r) => r.peak)
      } | ${mib((r) => r.after)} | ${m((r) => r.cpu).toFixed(0)} |`,
    );
  }
}

await main();
