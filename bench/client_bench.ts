// Copyright the sse authors. MIT license.
// Client throughput over loopback: how fast each consumer turns one HTTP
// response of events into events it can use (each event's `data` is read),
// in one run, interleaved round by round.
//
//   deno run -A bench/client_bench.ts [--rounds 7] [--events 100000]
//     [--size 100] [--only sseclient,fetch,...] [--json]
//
// Contenders (`--only` takes their keys):
// - sseclient: SSEClient (ours), `for await` over the client;
// - eventsource: EventSource (ours), `onmessage`;
// - eventsource-parser: fetch + TextDecoderStream + eventsource-parser's
//   EventSourceParserStream, read with `for await` (the usual hand-rolled
//   consumer);
// - npm-eventsource: npm `eventsource` (v5, the EventSource polyfill for
//   Node), `onmessage`;
// - deno-eventsource: Deno's built-in EventSource, `onmessage`;
// - fetch: the body read with a default reader and no parsing at all, the
//   usual floor of every consumer above;
// - fetch-byob: the same with a BYOB reader reusing one 64 KiB buffer (as
//   SSEClient and our EventSource read), which spares an allocation per
//   chunk: the floor of our clients.
//
// The server is its own process (this file with `--serve`), so that it never
// shares an event loop with the client measured: it sends pre-built 64 KiB
// chunks of events `id: <8 digits>\ndata: <padding>\n\n`, `--size` bytes each.
// Each measurement is one connection, from construction to the `--events`-th
// event (for `fetch`: to the bytes of that many events). Prints median MB/s
// per contender over the rounds (after one warm-up round), and SSEClient's
// and our EventSource's ratios to the others: the ratio of the medians, and
// the lowest and highest ratio within one round, where both met the same
// machine state.

import process from "node:process";
import { EventSourceParserStream } from "eventsource-parser/stream";
import { EventSource as NpmEventSource } from "eventsource";
import { SSEClient } from "../client.ts";
import { EventSource as OurEventSource } from "../event_source.ts";
import { only, positive, readArgs } from "./_args.ts";
import { type ClientRatio, type ClientResult, median } from "./_results.ts";

const ARGS = readArgs({
  rounds: { type: "string" },
  events: { type: "string" },
  size: { type: "string" },
  only: { type: "string" },
  serve: { type: "boolean" },
  json: { type: "boolean" },
});

const ROUNDS = positive(ARGS.rounds, "rounds", 7);
const EVENTS = positive(ARGS.events, "events", 100_000);
const SIZE = positive(ARGS.size, "size", 100);
const CHUNK_BYTES = 64 * 1024;

// --- server ------------------------------------------------------------------

// `id: ` + 8 digits + LF, `data: `, LF LF.
const OVERHEAD = 4 + 8 + 1 + 6 + 2;
const DATA_LENGTH = SIZE - OVERHEAD;
if (DATA_LENGTH < 1) {
  throw new RangeError(`Invalid --size: at least ${OVERHEAD + 1} bytes`);
}

function eventBytes(index: number): string {
  const id = String(index % 1e8).padStart(8, "0");
  return `id: ${id}\ndata: ${"x".repeat(DATA_LENGTH)}\n\n`;
}

function serve(): void {
  const perChunk = Math.max(1, Math.floor(CHUNK_BYTES / SIZE));
  let text = "";
  for (let i = 0; i < perChunk; i++) text += eventBytes(i);
  const chunk = new TextEncoder().encode(text);
  Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen({ port }) {
      console.log(port);
    },
  }, (request) => {
    const events = Number(new URL(request.url).searchParams.get("events"));
    let chunks = Math.ceil(events / perChunk);
    const body = new ReadableStream<Uint8Array>({
      pull(controller) {
        if (chunks-- > 0) controller.enqueue(chunk.slice());
        else controller.close();
      },
    });
    return new Response(body, {
      headers: {
        "content-type": "text/event-stream",
        "cache-control": "no-cache",
      },
    });
  });
}

// --- contenders --------------------------------------------------------------

/** Reads `events` events from `url`; resolves to the data characters read. */
type Contender = (url: string, events: number) => Promise<number>;

interface EventSourceLike {
  onmessage: ((event: MessageEvent) => unknown) | null;
  onerror: ((event: Event) => unknown) | null;
  close(): void;
}

function viaEventSource(source: EventSourceLike, events: number) {
  return new Promise<number>((resolve, reject) => {
    let count = 0;
    let length = 0;
    source.onmessage = (event) => {
      length += (event.data as string).length;
      if (++count === events) {
        source.close();
        resolve(length);
      }
    };
    source.onerror = () => {
      source.close();
      reject(new Error(`The EventSource failed after ${count} events`));
    };
  });
}

const CONTENDERS: Record<string, { name: string; run: Contender }> = {
  "sseclient": {
    name: "SSEClient",
    run: async (url, events) => {
      let count = 0;
      let length = 0;
      for await (const event of new SSEClient(url)) {
        length += event.data.length;
        if (++count === events) break;
      }
      return length;
    },
  },
  "eventsource": {
    name: "EventSource (ours)",
    run: (url, events) => viaEventSource(new OurEventSource(url), events),
  },
  "eventsource-parser": {
    name: "fetch + eventsource-parser",
    run: async (url, events) => {
      const response = await fetch(url);
      const stream = response.body!
        .pipeThrough(new TextDecoderStream())
        .pipeThrough(new EventSourceParserStream());
      let count = 0;
      let length = 0;
      for await (const event of stream) {
        length += event.data.length;
        if (++count === events) break;
      }
      return length;
    },
  },
  "npm-eventsource": {
    name: "npm eventsource",
    run: (url, events) =>
      viaEventSource(new NpmEventSource(url) as EventSourceLike, events),
  },
  "deno-eventsource": {
    name: "Deno's EventSource",
    run: (url, events) =>
      viaEventSource(new EventSource(url) as EventSourceLike, events),
  },
  "fetch": {
    name: "fetch, no parsing",
    run: async (url, events) => {
      const response = await fetch(url);
      const reader = response.body!.getReader();
      const bytes = events * SIZE;
      let read = 0;
      while (read < bytes) {
        const { done, value } = await reader.read();
        if (done) throw new Error(`The body ended after ${read} bytes`);
        read += value.length;
      }
      await reader.cancel();
      // What the parsing contenders report for the same bytes.
      return events * DATA_LENGTH;
    },
  },
  "fetch-byob": {
    name: "fetch, no parsing, BYOB reader",
    run: async (url, events) => {
      const response = await fetch(url);
      const reader = response.body!.getReader({ mode: "byob" });
      let buffer = new Uint8Array(64 * 1024);
      const bytes = events * SIZE;
      let read = 0;
      while (read < bytes) {
        const { done, value } = await reader.read(buffer);
        if (done) throw new Error(`The body ended after ${read} bytes`);
        read += value.length;
        buffer = new Uint8Array(value.buffer);
      }
      await reader.cancel();
      return events * DATA_LENGTH;
    },
  },
};

// --- main --------------------------------------------------------------------

async function startServer(): Promise<{ url: string; stop(): Promise<void> }> {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL(import.meta.url).pathname,
      "--serve",
      "--size",
      String(SIZE),
    ],
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  while (!text.includes("\n")) {
    const { value, done } = await reader.read();
    if (done) throw new Error("The bench server exited before listening");
    text += value;
  }
  const port = Number(text.trim());
  return {
    url: `http://127.0.0.1:${port}/?events=${EVENTS}`,
    async stop() {
      child.kill("SIGTERM");
      await reader.cancel();
      await child.status;
    },
  };
}

function chosen(): string[] {
  const keys = Object.keys(CONTENDERS);
  return only(ARGS.only, keys, "contender") ?? keys;
}

async function measure(keys: string[]): Promise<ClientResult> {
  const server = await startServer();
  const rates = new Map<string, number[]>(keys.map((key) => [key, []]));
  const cpuRates = new Map<string, number[]>(keys.map((key) => [key, []]));
  const bytes = EVENTS * SIZE;
  try {
    for (let round = 0; round <= ROUNDS; round++) {
      // Rotate the order so that no contender always runs first.
      const order = keys.map((_, i) => keys[(i + round) % keys.length]!);
      for (const key of order) {
        const cpu = process.cpuUsage();
        const started = performance.now();
        const length = await CONTENDERS[key]!.run(server.url, EVENTS);
        const elapsed = performance.now() - started;
        const { user, system } = process.cpuUsage(cpu);
        if (length !== EVENTS * DATA_LENGTH) {
          throw new Error(`${key} read ${length} data characters`);
        }
        if (round > 0) {
          rates.get(key)!.push(bytes / elapsed / 1000);
          cpuRates.get(key)!.push(bytes / (user + system));
        }
      }
    }
  } finally {
    await server.stop();
  }
  const rows = keys.map((key) => ({
    key,
    name: CONTENDERS[key]!.name,
    mbps: median(rates.get(key)!),
    rounds: rates.get(key)!,
    cpuMbps: median(cpuRates.get(key)!),
    cpuRounds: cpuRates.get(key)!,
  }));
  const ratios: ClientRatio[] = [];
  for (const ours of ["sseclient", "eventsource"]) {
    if (!rates.has(ours)) continue;
    for (const peer of keys) {
      if (peer === "sseclient" || peer === "eventsource") continue;
      const a = rates.get(ours)!;
      const b = rates.get(peer)!;
      const perRound = a.map((value, i) => value / b[i]!);
      ratios.push({
        ours,
        peer,
        ratio: median(a) / median(b),
        min: Math.min(...perRound),
        max: Math.max(...perRound),
        cpuRatio: median(cpuRates.get(ours)!) / median(cpuRates.get(peer)!),
      });
    }
  }
  return { events: EVENTS, size: SIZE, rounds: ROUNDS, rows, ratios };
}

function print(result: ClientResult): void {
  console.log(
    `Client throughput, ${result.events} events of ${result.size} bytes per ` +
      `connection, loopback, median of ${result.rounds} interleaved rounds ` +
      `(Deno ${Deno.version.deno}):\n`,
  );
  console.log("| Consumer | MB/s | MB per CPU second |");
  console.log("| --- | ---: | ---: |");
  for (const row of result.rows) {
    console.log(
      `| ${row.name} | ${row.mbps.toFixed(0)} | ${row.cpuMbps.toFixed(0)} |`,
    );
  }
  if (result.ratios.length === 0) return;
  console.log(
    "\n| Ours | vs | ratio of medians | per round | by CPU time |",
  );
  console.log("| --- | --- | ---: | ---: | ---: |");
  for (const r of result.ratios) {
    console.log(
      `| ${CONTENDERS[r.ours]!.name} | ${CONTENDERS[r.peer]!.name} | ${
        r.ratio.toFixed(2)
      }× | ${r.min.toFixed(2)}–${r.max.toFixed(2)}× | ${
        r.cpuRatio.toFixed(2)
      }× |`,
    );
  }
}

if (import.meta.main) {
  if (ARGS.serve === true) serve();
  else {
    const result = await measure(chosen());
    if (ARGS.json === true) console.log(JSON.stringify(result));
    else print(result);
  }
}
