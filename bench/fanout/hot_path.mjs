// Copyright the sse authors. MIT license.
// The fan-out's hot path alone, in one process, on any runtime: what one
// event to N clients costs SSEChannel against a hand-written loop, per
// client, without sockets. Each client's response body is read the way a
// runtime's server reads it (a reader, `read()` again as each chunk is
// taken: Deno.serve's pump and @hono/node-server's loop both do that), so
// the stream machinery that a server drives per chunk is counted, and the
// kernel's and the HTTP server's work, the same for both, is not.
//
//   deno run -A bench/fanout/hot_path.mjs --library <server.js> [--n 10000]
//     [--rounds 300] [--runs 5]
//   node bench/fanout/hot_path.mjs --library <server.js>
//   bun bench/fanout/hot_path.mjs --library <server.js>
//     [--only hand,channel,baseline]
//
// `--library` is server.ts (Deno) or its bundle (bench/fanout_bench.ts makes
// one with `deno bundle`); `--baseline <server.js>` measures another copy
// too. Prints one JSON line: per variant, the median over `--runs` runs of
// the CPU time per client per event (ns; the process's user and system
// time, so other processes on the machine count little), each run
// `--rounds` events after a warm-up, the variants interleaved run by run.

import process from "node:process";
import { resolve } from "node:path";
import { setImmediate } from "node:timers";
import { pathToFileURL } from "node:url";

function option(name, fallback) {
  const args = globalThis.Deno?.args ?? process.argv.slice(2);
  const index = args.indexOf(`--${name}`);
  return index === -1 ? fallback : args[index + 1];
}

const n = Number(option("n", "10000"));
const rounds = Number(option("rounds", "300"));
const runs = Number(option("runs", "5"));
const encoder = new TextEncoder();
/**
 * A turn of the event loop: every pending read and pull (promise jobs) has
 * run. (setImmediate, not setTimeout, which waits at least 1 ms on Node.)
 */
const turn = () => new Promise((resolve) => setImmediate(resolve));

/** Reads a body to its end as a server does: a read, then another. */
function drain(body) {
  const reader = body.getReader();
  const flow = ({ done }) => {
    if (!done) reader.read().then(flow);
  };
  reader.read().then(flow);
  return reader;
}

async function load(path) {
  return await import(pathToFileURL(resolve(path)).href);
}

/** The floor: a Set of controllers, one encoded buffer enqueued to each. */
function hand() {
  const controllers = new Set();
  const readers = [];
  let id = 0;
  return {
    open() {
      for (let i = 0; i < n; i++) {
        let controller;
        const body = new ReadableStream({
          start(c) {
            controller = c;
            controllers.add(c);
            c.enqueue(encoder.encode(":\n\n"));
          },
          cancel() {
            controllers.delete(controller);
          },
        });
        readers.push(drain(body));
      }
    },
    publish(data) {
      const bytes = encoder.encode(`id: ${++id}\ndata: ${data}\n\n`);
      for (const controller of controllers) controller.enqueue(bytes);
    },
    async close() {
      await Promise.all(readers.map((reader) => reader.cancel()));
    },
  };
}

/** SSEChannel with its defaults, N connections. */
function channel(library) {
  const { SSEChannel } = library;
  const sse = new SSEChannel();
  const readers = [];
  return {
    async open() {
      for (let i = 0; i < n; i++) {
        const response = await sse.connect(
          new Request("http://localhost/events"),
        );
        readers.push(drain(response.body));
      }
    },
    publish(data) {
      return sse.publish({ data });
    },
    async close() {
      await Promise.all(readers.map((reader) => reader.cancel()));
      await sse.close();
    },
  };
}

async function measure(variant) {
  await variant.open();
  await turn();
  const data = JSON.stringify({ t: 1764500000000.123, seq: 1 });
  for (let i = 0; i < 20; i++) {
    await variant.publish(data);
    await turn();
  }
  // CPU time, not wall time: a shared machine's other processes take turns
  // on its cores, which wall time would count.
  const started = process.cpuUsage();
  for (let i = 0; i < rounds; i++) {
    await variant.publish(data);
    await turn();
  }
  const { user, system } = process.cpuUsage(started);
  const ns = (user + system) * 1e3 / rounds / n;
  await variant.close();
  await turn();
  return ns;
}

function median(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1
    ? sorted[middle]
    : (sorted[middle - 1] + sorted[middle]) / 2;
}

const libraries = { channel: await load(option("library")) };
const baseline = option("baseline");
if (baseline !== undefined) libraries.baseline = await load(baseline);
const makers = { hand: () => hand() };
for (const [name, library] of Object.entries(libraries)) {
  makers[name] = () => channel(library);
}
// `--only hand,channel`: those variants alone (for a profiler).
const only = option("only")?.split(",");
for (const name of Object.keys(makers)) {
  if (only !== undefined && !only.includes(name)) delete makers[name];
}
const times = Object.fromEntries(Object.keys(makers).map((name) => [name, []]));
for (let run = 0; run < runs; run++) {
  const names = Object.keys(makers);
  const order = run % 2 === 0 ? names : names.reverse();
  for (const name of order) times[name].push(await measure(makers[name]()));
}
const result = { n, rounds, runs };
for (const [name, values] of Object.entries(times)) {
  result[name] = {
    ns: Math.round(median(values)),
    min: Math.round(Math.min(...values)),
    max: Math.round(Math.max(...values)),
  };
}
console.log(JSON.stringify(result));
