// Copyright the sse authors. MIT license.
// Client throughput over loopback: how fast each consumer turns one HTTP
// response of ~100-byte events into events it can use (each event's `data`
// is read), in one run, interleaved round by round.
//
//   deno run -A bench/client_bench.ts [--rounds 7] [--events 100000] [--size 100]
//
// Contenders:
// - SSEClient (ours): `for await` over the client;
// - EventSource (ours): `onmessage`;
// - fetch + TextDecoderStream + eventsource-parser's EventSourceParserStream,
//   read with `for await` (the usual hand-rolled consumer);
// - npm `eventsource` (v5, the EventSource polyfill for Node), `onmessage`;
// - Deno's built-in EventSource, `onmessage`.
//
// The server is its own process (this file with `--serve`), so that it never
// shares an event loop with the client measured: it sends pre-built 64 KiB
// chunks of events `id: <8 digits>\ndata: <padding>\n\n`, `--size` bytes each.
// Each measurement is one connection, from construction to the `--events`-th
// event. Prints median MB/s per contender over the rounds (after one warm-up
// round) and each one's ratio to SSEClient.

import { EventSourceParserStream } from "eventsource-parser/stream";
import { EventSource as NpmEventSource } from "eventsource";
import { SSEClient } from "../client.ts";
import { EventSource as OurEventSource } from "../event_source.ts";

function option(name: string, fallback: number): number {
  const at = Deno.args.indexOf(`--${name}`);
  if (at < 0) return fallback;
  const value = Number(Deno.args[at + 1]);
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new RangeError(`Invalid --${name}: ${Deno.args[at + 1]}`);
  }
  return value;
}

const ROUNDS = option("rounds", 7);
const EVENTS = option("events", 100_000);
const SIZE = option("size", 100);
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

// --- contenders ------------------------------------------------------------------

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

const CONTENDERS: Record<string, Contender> = {
  "SSEClient": async (url, events) => {
    let count = 0;
    let length = 0;
    for await (const event of new SSEClient(url)) {
      length += event.data.length;
      if (++count === events) break;
    }
    return length;
  },
  "EventSource (ours)": (url, events) =>
    viaEventSource(new OurEventSource(url), events),
  "fetch + eventsource-parser": async (url, events) => {
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
  "npm eventsource": (url, events) =>
    viaEventSource(new NpmEventSource(url) as EventSourceLike, events),
  "Deno's EventSource": (url, events) =>
    viaEventSource(new EventSource(url) as EventSourceLike, events),
};

// --- main ------------------------------------------------------------------------

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1
    ? sorted[middle]!
    : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

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

async function main(): Promise<void> {
  const server = await startServer();
  const names = Object.keys(CONTENDERS);
  const rates = new Map<string, number[]>(names.map((name) => [name, []]));
  const bytes = EVENTS * SIZE;
  try {
    for (let round = 0; round <= ROUNDS; round++) {
      // Rotate the order so that no contender always runs first.
      const order = names.map((_, i) => names[(i + round) % names.length]!);
      for (const name of order) {
        const started = performance.now();
        const length = await CONTENDERS[name]!(server.url, EVENTS);
        const elapsed = performance.now() - started;
        if (length !== EVENTS * DATA_LENGTH) {
          throw new Error(`${name} read ${length} data characters`);
        }
        if (round > 0) rates.get(name)!.push(bytes / elapsed / 1000);
      }
    }
  } finally {
    await server.stop();
  }
  const reference = median(rates.get("SSEClient")!);
  console.log(
    `Client throughput, ${EVENTS} events of ${SIZE} bytes per connection, ` +
      `loopback, median of ${ROUNDS} interleaved rounds ` +
      `(Deno ${Deno.version.deno}):\n`,
  );
  console.log("| Consumer | MB/s | SSEClient is |");
  console.log("| --- | ---: | ---: |");
  for (const name of names) {
    const rate = median(rates.get(name)!);
    const ratio = name === "SSEClient"
      ? "—"
      : `${(reference / rate).toFixed(2)}×`;
    console.log(`| ${name} | ${rate.toFixed(0)} | ${ratio} |`);
  }
}

if (import.meta.main) {
  if (Deno.args.includes("--serve")) serve();
  else await main();
}
