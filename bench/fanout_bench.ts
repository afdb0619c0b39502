// Copyright the sse authors. MIT license.
// Fan-out: one publisher, N idle SSE clients, every event to every client.
//
//   deno run -A bench/fanout_bench.ts [--n 100,1000,10000] [--events 10] [--rate 2]
//     [--reps 3] [--quick] [--only channel,hand,better] [--verbose]
//     [--baseline /path/to/other/checkout/server.ts]
//
// Compares, in one run, on this machine:
//   - SSEChannel from server.ts (bench/fanout/channel_server.ts);
//   - the floor for Deno: a hand-written loop on `Deno.serve` that enqueues one
//     encoded buffer to a Set of stream controllers (handwritten_server.ts);
//   - better-sse 0.16.1 on Node's `http` (better_sse_server.mjs), installed on
//     first use with `npm install --prefix .cache/bench better-sse@0.16.1`;
//   - with `--baseline`, SSEChannel from another copy of the library too
//     ("SSEChannel (baseline)"), to compare two versions in one run.
//
// Each server runs in its own process; the N clients run in another
// (bench/fanout/clients.ts: raw TCP, HTTP/1.1 chunked decoding, minimal SSE).
// For every N and server: start the server, read its RSS (after a GC), open N
// clients, wait until the server counts N, let them idle 1 s, read the RSS
// again (growth / N = memory per idle connection), publish one warm-up event
// and wait until every client has it, then publish K events at a fixed rate.
// Latency is from the moment this driver sends the publish request (its
// timestamp travels in the event) to the moment a client's read returns the
// bytes that complete the event: the queueing of a server that falls behind
// counts. Servers alternate in order between repetitions; each figure is the
// median over the repetitions.

const ROOT = new URL("../", import.meta.url);
const FANOUT = new URL("fanout/", import.meta.url);
import { Child, live } from "./fanout/_child.ts";

const BETTER_SSE_VERSION = "0.16.1";
const CACHE = new URL(".cache/bench/", ROOT);

interface Options {
  sizes: number[];
  events: number;
  rate: number;
  reps: number;
  batch: number;
  /** Lower-case name fragments: run only the servers whose name has one. */
  only: string[] | undefined;
  /** Print each run's slowest delivery per event. */
  verbose: boolean;
  /** Another copy's server.ts, measured as "SSEChannel (baseline)". */
  baseline: string | undefined;
}

interface ServerSpec {
  name: string;
  argv: string[];
}

interface Stats {
  rss: number;
  heapUsed: number;
  external: number;
  connected: number;
}

interface ClientResult {
  received: number;
  expected: number;
  p50: number;
  p99: number;
  lastReceive: number;
  slowest: number[];
}

interface Measurement {
  server: string;
  n: number;
  connected: number;
  p50: number;
  p99: number;
  eventsPerSecond: number;
  kibPerConnection: number;
  heapKibPerConnection: number;
  /** RSS growth from server start to N idle clients, / N. */
  growthPerConnection: number;
  delivered: number;
  notes: string[];
  /** Slowest delivery of each measured event, ms. */
  slowest: number[];
}

function now(): number {
  return performance.timeOrigin + performance.now();
}

function parseOptions(args: string[]): Options {
  const options: Options = {
    sizes: [100, 1000, 10000],
    events: 10,
    rate: 2,
    reps: 3,
    batch: 250,
    only: undefined,
    verbose: false,
    baseline: undefined,
  };
  for (let i = 0; i < args.length; i++) {
    const name = args[i];
    const value = args[i + 1] ?? "";
    const count = (label: string) => {
      const parsed = Number(value);
      if (!Number.isInteger(parsed) || parsed < 1) {
        throw new RangeError(`Invalid ${label}: ${value}`);
      }
      i++;
      return parsed;
    };
    switch (name) {
      case "--quick":
        options.sizes = [100, 1000];
        break;
      case "--n":
        options.sizes = value.split(",").map((part) => {
          const parsed = Number(part.replaceAll("_", ""));
          if (!Number.isInteger(parsed) || parsed < 1) {
            throw new RangeError(`Invalid --n: ${value}`);
          }
          return parsed;
        });
        i++;
        break;
      case "--events":
        options.events = count("--events");
        break;
      case "--rate":
        options.rate = count("--rate");
        break;
      case "--reps":
        options.reps = count("--reps");
        break;
      case "--batch":
        options.batch = count("--batch");
        break;
      case "--only":
        options.only = value.toLowerCase().split(",").filter(Boolean);
        i++;
        break;
      case "--verbose":
        options.verbose = true;
        break;
      case "--baseline":
        options.baseline = value;
        i++;
        break;
      default:
        throw new TypeError(`Unknown argument: ${name}`);
    }
  }
  return options;
}

async function getStats(port: number): Promise<Stats> {
  const response = await fetch(`http://127.0.0.1:${port}/stats`);
  return await response.json() as Stats;
}

async function waitForConnected(
  port: number,
  count: number,
  ms: number,
): Promise<Stats> {
  const deadline = Date.now() + ms;
  while (true) {
    const stats = await getStats(port);
    if (stats.connected === count || Date.now() > deadline) return stats;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function publish(port: number, seq: number, t = now()): Promise<void> {
  const response = await fetch(
    `http://127.0.0.1:${port}/publish?t=${t}&seq=${seq}`,
    { method: "POST" },
  );
  await response.body?.cancel();
  if (!response.ok) throw new Error(`Publish failed: ${response.status}`);
}

async function measure(
  spec: ServerSpec,
  n: number,
  options: Options,
): Promise<Measurement> {
  const notes: string[] = [];
  let growthPerConnection = NaN;
  const server = new Child(spec.name, spec.argv);
  let clients: Child | undefined;
  try {
    const listening = await server.message("listening", 30_000);
    const port = listening.port as number;
    const start = await getStats(port);
    // Memory is read at N/10 clients and at N: the growth between, divided by
    // the clients added, is what one more idle connection costs, without the
    // one-time costs of the first connections (JIT, pools) that dominate at
    // small N. Growth from startup / N is logged per run as well.
    const pauseAt = Math.floor(n / 10);
    clients = new Child("clients", [
      Deno.execPath(),
      "run",
      "--allow-net=127.0.0.1",
      new URL("clients.ts", FANOUT).pathname,
      ...["--port", String(port), "--n", String(n)],
      ...["--events", String(options.events), "--batch", String(options.batch)],
      ...["--pause-at", String(pauseAt)],
    ]);
    const paused = await clients.message("paused", 120_000);
    const partial = paused.connected as number;
    await waitForConnected(port, partial, 30_000);
    await new Promise((resolve) => setTimeout(resolve, 500));
    const before = await getStats(port);
    await clients.send("continue");
    const opened = await clients.message("connected", 120_000);
    const connected = opened.connected as number;
    if (connected < n) notes.push(`${n - connected} connections failed`);
    const seen = await waitForConnected(port, connected, 30_000);
    if (seen.connected !== connected) {
      notes.push(`server counted ${seen.connected} of ${connected}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const idle = await getStats(port);
    const added = Math.max(1, idle.connected - before.connected);
    growthPerConnection = (idle.rss - start.rss) / connected / 1024;

    await publish(port, -1);
    await clients.message("warm", 30_000).catch((error) => {
      notes.push(`warm-up incomplete (${(error as Error).message})`);
    });

    // Open loop: each publish leaves on schedule, whatever the last one did.
    const interval = 1000 / options.rate;
    const first = now() + 20;
    const publishes: Promise<void>[] = [];
    for (let seq = 0; seq < options.events; seq++) {
      const wait = first + seq * interval - now();
      if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
      publishes.push(publish(port, seq));
    }
    await Promise.all(publishes);
    const result = await clients.message("result", 30_000).catch(async () => {
      notes.push("stopped waiting 30 s after the last publish");
      await clients!.send("stop");
      return await clients!.message("result", 10_000);
    }) as unknown as ClientResult;
    if (result.received < result.expected) {
      notes.push(`${result.expected - result.received} events not delivered`);
    }

    await clients.send("exit");
    await clients.stop(10_000);
    clients = undefined;
    const after = await waitForConnected(port, 0, 10_000);
    if (after.connected !== 0) {
      notes.push(`${after.connected} clients still held after disconnect`);
    }
    return {
      server: spec.name,
      n,
      connected,
      p50: result.p50,
      p99: result.p99,
      eventsPerSecond: result.received / ((result.lastReceive - first) / 1000),
      kibPerConnection: (idle.rss - before.rss) / added / 1024,
      heapKibPerConnection: (idle.heapUsed - before.heapUsed) / added / 1024,
      growthPerConnection,
      delivered: result.received / Math.max(1, result.expected),
      notes,
      slowest: result.slowest,
    };
  } finally {
    await clients?.stop(0);
    await server.stop(0);
    if (server.stderr.trim() !== "") {
      notes.push(`server stderr: ${server.stderr.trim().slice(0, 500)}`);
    }
  }
}

async function exists(url: URL): Promise<boolean> {
  try {
    await Deno.stat(url);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

async function ensureBetterSse(): Promise<boolean> {
  const installed = new URL("node_modules/better-sse/package.json", CACHE);
  if (await exists(installed)) return true;
  console.error(
    `Installing better-sse@${BETTER_SSE_VERSION} into .cache/bench`,
  );
  try {
    const { success } = await new Deno.Command("npm", {
      args: [
        "install",
        "--no-audit",
        "--no-fund",
        "--prefix",
        CACHE.pathname,
        `better-sse@${BETTER_SSE_VERSION}`,
      ],
      stdout: "null",
      stderr: "inherit",
    }).output();
    return success && await exists(installed);
  } catch {
    return false;
  }
}

function median(values: number[]): number {
  const sorted = values.filter((value) => !Number.isNaN(value)).sort((a, b) =>
    a - b
  );
  if (sorted.length === 0) return NaN;
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1
    ? sorted[middle]!
    : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

function format(value: number, digits = 1): string {
  if (!Number.isFinite(value)) return "–";
  return value.toLocaleString("en-US", {
    minimumFractionDigits: digits,
    maximumFractionDigits: digits,
  });
}

function ratio(value: number, base: number | undefined): string {
  if (base === undefined || !Number.isFinite(value) || !(base > 0)) return "–";
  return `${format(value / base, 2)}×`;
}

async function version(command: string): Promise<string> {
  try {
    const { stdout } = await new Deno.Command(command, { args: ["--version"] })
      .output();
    return new TextDecoder().decode(stdout).split("\n")[0]!.trim();
  } catch {
    return "missing";
  }
}

async function main(): Promise<void> {
  const options = parseOptions(Deno.args);
  const interrupt = () => {
    Promise.all([...live].map((child) => child.stop(0))).finally(() =>
      Deno.exit(130)
    );
  };
  Deno.addSignalListener("SIGINT", interrupt);
  try {
    await run(options);
  } finally {
    Deno.removeSignalListener("SIGINT", interrupt);
  }
}

async function run(options: Options): Promise<void> {
  const deno = Deno.execPath();
  const denoServer = (file: string): string[] => [
    deno,
    "run",
    "--allow-net=127.0.0.1",
    "--allow-read",
    "--v8-flags=--expose-gc",
    new URL(file, FANOUT).pathname,
  ];
  const specs: ServerSpec[] = [];
  specs.push({ name: "SSEChannel", argv: denoServer("channel_server.ts") });
  if (options.baseline !== undefined) {
    specs.push({
      name: "SSEChannel (baseline)",
      argv: [...denoServer("channel_server.ts"), "--module", options.baseline],
    });
  }
  specs.push({
    name: "hand-written loop",
    argv: denoServer("handwritten_server.ts"),
  });
  if (await ensureBetterSse()) {
    specs.push({
      name: "better-sse (Node)",
      argv: [
        "node",
        "--expose-gc",
        new URL("better_sse_server.mjs", FANOUT).pathname,
        "--prefix",
        CACHE.pathname,
      ],
    });
  } else {
    console.error("better-sse is not installed and npm failed: skipping it");
  }

  if (options.only !== undefined) {
    const only = options.only;
    for (let i = specs.length - 1; i >= 0; i--) {
      const name = specs[i]!.name.toLowerCase();
      if (!only.some((part) => name.includes(part))) specs.splice(i, 1);
    }
  }

  const load = Deno.loadavg().map((value) => value.toFixed(2)).join(", ");
  console.log(
    `fan-out: ${Deno.version.deno}, ${await version("node")}, ` +
      `${navigator.hardwareConcurrency} cores, load average ${load}`,
  );
  console.log(
    `N = ${options.sizes.join(", ")}; 1 warm-up + ${options.events} events ` +
      `at ${options.rate}/s; ${options.reps} repetition(s), order alternating`,
  );

  const results = new Map<string, Measurement[]>();
  const started = performance.now();
  for (const n of options.sizes) {
    for (let rep = 0; rep < options.reps; rep++) {
      const order = rep % 2 === 0 ? specs : [...specs].reverse();
      for (const spec of order) {
        const key = `${spec.name}\0${n}`;
        let measurement: Measurement;
        try {
          measurement = await measure(spec, n, options);
        } catch (error) {
          measurement = {
            server: spec.name,
            n,
            connected: 0,
            p50: NaN,
            p99: NaN,
            eventsPerSecond: NaN,
            kibPerConnection: NaN,
            heapKibPerConnection: NaN,
            growthPerConnection: NaN,
            delivered: 0,
            notes: [`failed: ${(error as Error).message}`],
            slowest: [],
          };
        }
        console.error(
          `  ${spec.name}, N = ${n}, rep ${rep + 1}: p99 ${
            format(measurement.p99)
          } ms, ${format(measurement.kibPerConnection)} KiB/conn (${
            format(measurement.growthPerConnection)
          } KiB/conn from startup)` +
            (measurement.notes.length > 0
              ? ` (${measurement.notes.join("; ")})`
              : "") +
            (options.verbose
              ? `; slowest per event: ${measurement.slowest.join(", ")} ms`
              : ""),
        );
        results.set(key, [...(results.get(key) ?? []), measurement]);
      }
    }
  }

  const rows = [...results.values()].map((runs): Measurement => ({
    server: runs[0]!.server,
    n: runs[0]!.n,
    connected: Math.min(...runs.map((run) => run.connected)),
    p50: median(runs.map((run) => run.p50)),
    p99: median(runs.map((run) => run.p99)),
    eventsPerSecond: median(runs.map((run) => run.eventsPerSecond)),
    kibPerConnection: median(runs.map((run) => run.kibPerConnection)),
    heapKibPerConnection: median(runs.map((run) => run.heapKibPerConnection)),
    growthPerConnection: median(runs.map((run) => run.growthPerConnection)),
    delivered: Math.min(...runs.map((run) => run.delivered)),
    notes: [...new Set(runs.flatMap((run) => run.notes))],
    slowest: [],
  }));
  const find = (server: string, n: number) =>
    rows.find((row) => row.server === server && row.n === n);

  console.log();
  console.log(
    "| server | N | p50 ms | p99 ms | events/s delivered | KiB/conn | " +
      "JS heap KiB/conn | p99 vs hand-written | p99 vs better-sse | " +
      "KiB/conn vs hand-written |",
  );
  console.log("|" + " --- |".repeat(10));
  for (const n of options.sizes) {
    const hand = find("hand-written loop", n);
    const better = find("better-sse (Node)", n);
    for (const spec of specs) {
      const row = find(spec.name, n);
      if (row === undefined) continue;
      console.log(
        `| ${row.server} | ${row.n.toLocaleString("en-US")} | ${
          format(row.p50)
        } | ${format(row.p99)} | ${format(row.eventsPerSecond, 0)} | ${
          format(row.kibPerConnection)
        } | ${format(row.heapKibPerConnection)} | ${
          ratio(row.p99, hand?.p99)
        } | ${ratio(row.p99, better?.p99)} | ${
          ratio(row.kibPerConnection, hand?.kibPerConnection)
        } |`,
      );
    }
  }
  const problems = rows.filter((row) => row.notes.length > 0);
  if (problems.length > 0) {
    console.log();
    for (const row of problems) {
      console.log(`${row.server}, N = ${row.n}: ${row.notes.join("; ")}`);
    }
  }
  console.log();
  console.log(
    `Latency: publish request sent → client read returned the event, over ` +
      `every client and event (median of the repetitions). KiB/conn: server ` +
      `RSS growth from N/10 to N idle clients, per client added, after a GC; ` +
      `JS heap: the same for V8's used heap. ${
        format((performance.now() - started) / 1000, 0)
      } s in all.`,
  );
}

// `deno bench bench/` loads every *_bench.ts: this one runs only as a program.
if (import.meta.main) {
  await main();
}
