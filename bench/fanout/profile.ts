// Copyright the sse authors. MIT license.
// Where a fan-out server spends its CPU: `perf record` on the server process
// while N idle clients (bench/fanout/clients.ts) receive K events, for any
// server bench/fanout_bench.ts runs. JavaScript frames are named through
// V8's --perf-basic-prof (Deno, Node) and Bun's own perf map.
//
//   deno run -A bench/fanout/profile.ts --n 10000 --events 40 --rate 4 \
//     --out /tmp/channel.data -- deno run -A \
//     --v8-flags=--expose-gc,--perf-basic-prof,--logfile=/dev/null,--no-logfile-per-isolate \
//     bench/fanout/channel_server.ts
//   perf report -i /tmp/channel.data --no-children --sort symbol --stdio
//
// Prints the server's CPU time per event (from its /stats) and the p99 the
// clients saw; the profile covers the K events only.

import { readArgs } from "../_args.ts";
import { Child, live } from "./_child.ts";

const FANOUT = new URL("./", import.meta.url);
const split = Deno.args.indexOf("--");
if (split < 0) {
  throw new TypeError("Usage: profile.ts [options] -- <server command>");
}
const options = readArgs({
  n: { type: "string" },
  events: { type: "string" },
  rate: { type: "string" },
  out: { type: "string" },
}, Deno.args.slice(0, split));
const server = Deno.args.slice(split + 1);
const n = Number(options.n ?? "10000");
const events = Number(options.events ?? "40");
const rate = Number(options.rate ?? "4");
const out = options.out ?? "/tmp/fanout.perf.data";

const now = () => performance.timeOrigin + performance.now();
async function stats(port: number): Promise<Record<string, number>> {
  return await (await fetch(`http://127.0.0.1:${port}/stats`)).json();
}
async function publish(port: number, seq: number): Promise<void> {
  const response = await fetch(
    `http://127.0.0.1:${port}/publish?t=${now()}&seq=${seq}`,
    { method: "POST" },
  );
  await response.body?.cancel();
}

const child = new Child("server", server);
let clients: Child | undefined;
let perf: Deno.ChildProcess | undefined;
try {
  const { port } = await child.message("listening", 30_000) as { port: number };
  // The pid of the runtime itself: Child runs it through `bash -c exec`.
  const pids = new TextDecoder().decode(
    (await new Deno.Command("pgrep", { args: ["-n", "-f", server.at(-1)!] })
      .output()).stdout,
  ).trim();
  clients = new Child("clients", [
    Deno.execPath(),
    "run",
    "--allow-net=127.0.0.1",
    new URL("clients.ts", FANOUT).pathname,
    ...["--port", String(port), "--n", String(n), "--events", String(events)],
  ]);
  await clients.message("connected", 120_000);
  await publish(port, -1);
  await clients.message("warm", 30_000);
  const before = await stats(port);
  perf = new Deno.Command("perf", {
    args: ["record", "-F", "997", "-g", "-p", pids, "-o", out],
    stdout: "null",
    stderr: "null",
  }).spawn();
  await new Promise((resolve) => setTimeout(resolve, 500));
  const first = now();
  for (let seq = 0; seq < events; seq++) {
    const wait = first + seq * 1000 / rate - now();
    if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
    await publish(port, seq);
  }
  const result = await clients.message("result", 60_000);
  perf.kill("SIGINT");
  await perf.status;
  perf = undefined;
  const after = await stats(port);
  console.log(
    `N = ${n}, ${events} events: server CPU ${
      ((after.cpu! - before.cpu!) / events).toFixed(1)
    } ms/event, p50 ${(result.p50 as number).toFixed(1)} ms, p99 ${
      (result.p99 as number).toFixed(1)
    } ms; profile in ${out}`,
  );
} finally {
  perf?.kill("SIGINT");
  await perf?.status;
  await clients?.stop(0);
  await child.stop(0);
  if (live.size > 0) await Promise.all([...live].map((c) => c.stop(0)));
}
