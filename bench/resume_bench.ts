// Copyright the sse authors. MIT license.
// Resume herd: N clients reconnect at once, each with a Last-Event-ID that
// misses K events of B bytes, as after a deploy or a network blip.
//
//   deno run -A bench/resume_bench.ts [--clients 1000] [--missed 500]
//     [--size 200] [--module ./server.ts] [--only resume|live|hand]
//
// Compares, in one run, on this machine, for SSEChannel from `--module`
// (default: this checkout's server.ts) with a MemoryBroker:
//   - resume: the K events are published first, then the N clients connect
//     with the id of the event before them and catch up from the history;
//   - live: the N clients connect first, then the same K events are
//     published and fanned out as they come: the same bytes to the same
//     clients, the floor a resume can hope for;
//   - hand: the floor of any resume on `Deno.serve`: a hand-written server
//     whose history is the K frames already encoded, in shared chunks of
//     32 KiB, and whose response streams (high-water mark 0) enqueue the
//     next chunk each time the runtime pulls: nothing held per client but
//     the runtime's own connection and what is being written.
// Then resume and hand again with V8's young generation held small
// (`--max-semi-space-size=1`, MiB): how much of a peak is V8 sizing its
// young generation to the allocation rate, rather than anything kept.
// For each: the server's peak RSS (VmHWM, in its own process, against its
// RSS before the clients connect) and the time from the first connection to
// the moment every client has every event. The ratio resume / live shows
// what catching up costs over live delivery, resume / hand what it costs
// over the floor. `--module` points at another
// copy of the library to measure it the same way (an older commit, say).
//
// The server and the clients run in processes of their own (the clients:
// raw TCP, counting frames by their blank line).

import { positive, readArgs } from "./_args.ts";
import { Child, live, stdinLines } from "./fanout/_child.ts";

const SELF = new URL(import.meta.url).pathname;
const MiB = 1024 * 1024;

const OPTIONS = {
  role: { type: "string" },
  mode: { type: "string" },
  module: { type: "string" },
  clients: { type: "string" },
  missed: { type: "string" },
  size: { type: "string" },
  port: { type: "string" },
  start: { type: "string" },
  only: { type: "string" },
} as const;

type Args = ReturnType<typeof readArgs<typeof OPTIONS>>;

function count(
  args: Args,
  name: "clients" | "missed" | "size" | "port",
  fallback: number,
): number {
  return positive(args[name], name, fallback, { explain: true });
}

function print(value: Record<string, unknown>): void {
  console.log(JSON.stringify(value));
}

/** Resident set size and its peak so far, from /proc (bytes). */
async function memory(): Promise<{ rss: number; peak: number }> {
  const status = await Deno.readTextFile("/proc/self/status");
  const field = (name: string) =>
    Number(status.match(new RegExp(`^${name}:\\s+(\\d+) kB`, "m"))?.[1]) *
    1024;
  return { rss: field("VmRSS"), peak: field("VmHWM") };
}

/**
 * The server: a channel on 127.0.0.1, port 0. In resume mode it publishes
 * the events before announcing itself; in live mode when told "publish".
 */
async function server(args: Args): Promise<void> {
  const module = new URL(args.module!, `file://${Deno.cwd()}/`).href;
  const { SSEChannel } = await import(module);
  const missed = count(args, "missed", 500);
  const size = count(args, "size", 200);
  const mode = args.mode;
  const clients = count(args, "clients", 1000);
  const channel = new SSEChannel({
    keepAlive: 0,
    replay: Math.max(1000, missed),
  });
  const filler = "x".repeat(size - 8);
  const hand = mode === "hand" ? handReplay(missed, filler) : undefined;
  const http = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    (request) => hand?.(request) ?? channel.connect(request),
  );
  const publish = async () => {
    for (let i = 0; i < missed; i++) {
      await channel.publish({ data: String(i).padStart(8, "0") + filler });
    }
  };
  const start = await channel.publish({ data: "start" });
  if (mode === "resume") await publish();
  (globalThis as { gc?: () => void }).gc?.();
  const before = await memory();
  // The JS heap's peak, sampled: heapUsed counts garbage not yet collected.
  let heapPeak = 0;
  const sampler = setInterval(() => {
    heapPeak = Math.max(heapPeak, Deno.memoryUsage().heapUsed);
  }, 5);
  print({ type: "ready", port: http.addr.port, start, rss: before.rss });
  for await (const line of stdinLines()) {
    if (line === "publish") {
      // Every client is subscribed first, so that each gets every event.
      while (channel.size < clients) {
        await new Promise((resolve) => setTimeout(resolve, 10));
      }
      await publish();
      print({ type: "published" });
    } else if (line === "memory") {
      print({ type: "memory", ...await memory(), heapPeak });
    }
  }
  clearInterval(sampler);
  await channel.close();
  await http.shutdown();
}

/**
 * The hand-written floor: the frames of events 1 to `missed` (after the
 * "start" event, id 0), encoded once into shared chunks of about 32 KiB, and
 * a stream per client that enqueues the next chunk when the runtime pulls.
 */
function handReplay(
  missed: number,
  filler: string,
): (request: Request) => Response {
  const encoder = new TextEncoder();
  const chunks: Uint8Array[] = [];
  let text = "";
  for (let i = 0; i < missed; i++) {
    text += `id: ${i + 1}\ndata: ${String(i).padStart(8, "0")}${filler}\n\n`;
    if (text.length >= 32 * 1024 || i === missed - 1) {
      chunks.push(encoder.encode(text));
      text = "";
    }
  }
  return () => {
    let next = 0;
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        // The last chunk sent, the stream stays open, as a live one does.
        if (next < chunks.length) controller.enqueue(chunks[next++]!);
      },
    }, { highWaterMark: 0 });
    return new Response(body, {
      headers: { "content-type": "text/event-stream; charset=utf-8" },
    });
  };
}

/**
 * The clients: N raw TCP connections, each sending a GET and counting events
 * until it has K. A frame ends with a blank line (LF LF); the runtime writes
 * each chunk the channel enqueues (whole frames) as one HTTP chunk, so the
 * chunked framing (CR LF, size, CR LF) never splits that pair.
 */
async function clients(args: Args): Promise<void> {
  const port = count(args, "port", 1);
  const n = count(args, "clients", 1000);
  const missed = count(args, "missed", 500);
  const start = args.start ?? "";
  const request = new TextEncoder().encode(
    `GET / HTTP/1.1\r\nhost: 127.0.0.1\r\n` +
      (start === "" ? "" : `last-event-id: ${start}\r\n`) + "\r\n",
  );
  const began = performance.now();
  const connections: Deno.TcpConn[] = [];
  const read = async (conn: Deno.TcpConn) => {
    const buffer = new Uint8Array(64 * 1024);
    let events = 0;
    let previous = 0;
    while (events < missed) {
      const n = await conn.read(buffer);
      if (n === null) {
        throw new Error(`connection ended after ${events} events`);
      }
      for (let i = 0; i < n; i++) {
        const byte = buffer[i]!;
        if (byte === 10 && previous === 10) events++;
        previous = byte;
      }
    }
  };
  // In batches, so that the listen backlog never overflows.
  for (let i = 0; i < n; i += 100) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(100, n - i) }, async () => {
        const conn = await Deno.connect({ hostname: "127.0.0.1", port });
        await conn.write(request);
        return conn;
      }),
    );
    connections.push(...batch);
  }
  print({ type: "connected", ms: performance.now() - began });
  if (start === "") {
    // Live: the events are published now.
    print({ type: "waiting" });
    for await (const _ of stdinLines()) break;
  }
  await Promise.all(connections.map(read));
  print({ type: "caught-up", ms: performance.now() - began });
  for (const conn of connections) conn.close();
}

interface Result {
  mode: string;
  baseline: number;
  peak: number;
  heapPeak: number;
  ms: number;
}

type Mode = "resume" | "live" | "hand";

async function run(
  mode: Mode,
  args: Args,
  smallYoung = false,
): Promise<Result> {
  const module = args.module ??
    new URL("../server.ts", import.meta.url).pathname;
  const common = [
    "--clients",
    String(count(args, "clients", 1000)),
    "--missed",
    String(count(args, "missed", 500)),
    "--size",
    String(count(args, "size", 200)),
  ];
  const serverChild = new Child(`${mode} server`, [
    Deno.execPath(),
    "run",
    "-A",
    `--v8-flags=--expose-gc${smallYoung ? ",--max-semi-space-size=1" : ""}`,
    SELF,
    "--role",
    "server",
    "--mode",
    mode,
    "--module",
    module,
    ...common,
  ]);
  let clientChild: Child | undefined;
  try {
    const ready = await serverChild.message("ready", 60_000);
    clientChild = new Child(`${mode} clients`, [
      Deno.execPath(),
      "run",
      "-A",
      SELF,
      "--role",
      "clients",
      "--port",
      String(ready.port),
      ...(mode === "live" ? [] : ["--start", String(ready.start)]),
      ...common,
    ]);
    if (mode === "live") {
      await clientChild.message("waiting", 120_000);
      await clientChild.send("go");
      await serverChild.send("publish");
    }
    const caughtUp = await clientChild.message("caught-up", 300_000);
    await serverChild.send("memory");
    const { peak, heapPeak } = await serverChild.message("memory", 10_000);
    return {
      mode: smallYoung ? `${mode}, young generation 1 MiB` : mode,
      baseline: ready.rss as number,
      peak: peak as number,
      heapPeak: heapPeak as number,
      ms: caughtUp.ms as number,
    };
  } finally {
    await clientChild?.stop(5000);
    await serverChild.stop(5000);
  }
}

async function main(): Promise<void> {
  const args = readArgs(OPTIONS);
  const role = args.role;
  if (role === "server") return await server(args);
  if (role === "clients") return await clients(args);
  Deno.addSignalListener("SIGINT", () => {
    for (const child of live) child.stop(0);
    Deno.exit(130);
  });
  const n = count(args, "clients", 1000);
  const missed = count(args, "missed", 500);
  const size = count(args, "size", 200);
  console.log(
    `Resume herd: ${n} clients x ${missed} events of ${size} B` +
      ` (${((n * missed * size) / MiB).toFixed(0)} MiB to deliver), ` +
      `load ${
        (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(
          " ",
        )
      }`,
  );
  const results: Result[] = [];
  const only = args.only;
  const runs: [Mode, boolean][] = [
    ["resume", false],
    ["live", false],
    ["hand", false],
    ["resume", true],
    ["hand", true],
  ];
  for (const [mode, smallYoung] of runs) {
    if (only === undefined || only === mode) {
      results.push(await run(mode, args, smallYoung));
    }
  }
  const mib = (bytes: number) => (bytes / MiB).toFixed(0);
  console.log(
    "| mode | RSS before (MiB) | peak RSS (MiB) | growth (MiB) | peak JS heap (MiB) | all caught up (ms) |",
  );
  console.log("| --- | ---: | ---: | ---: | ---: | ---: |");
  for (const result of results) {
    console.log(
      `| ${result.mode} | ${mib(result.baseline)} | ${mib(result.peak)} | ${
        mib(result.peak - result.baseline)
      } | ${mib(result.heapPeak)} | ${result.ms.toFixed(0)} |`,
    );
  }
  const find = (mode: string) => results.find((r) => r.mode === mode);
  const resume = find("resume");
  const young = ", young generation 1 MiB";
  const pairs = [
    [resume, find("live")],
    [resume, find("hand")],
    [find(`resume${young}`), find(`hand${young}`)],
  ];
  for (const [resume, other] of pairs) {
    if (resume === undefined || other === undefined) continue;
    console.log(
      `${resume.mode} / ${other.mode}: peak RSS ${
        (resume.peak / other.peak).toFixed(2)
      }x, growth ${
        ((resume.peak - resume.baseline) / (other.peak - other.baseline))
          .toFixed(2)
      }x, time ${(resume.ms / other.ms).toFixed(2)}x`,
    );
  }
  // The target is for the issue's herd: 1 000 clients x 500 events of 200 B.
  if (resume !== undefined && n === 1000 && missed === 500 && size === 200) {
    const peak = resume.peak / MiB;
    console.log(
      `Target: resume peak RSS ${peak.toFixed(0)} MiB, at most 160 MiB: ${
        peak <= 160 ? "met" : "**not met**"
      }${
        find("hand") === undefined
          ? ""
          : ` (hand-written floor: ${
            (find("hand")!.peak / MiB).toFixed(0)
          } MiB)`
      }`,
    );
  }
}

await main();
