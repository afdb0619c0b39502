// Copyright the sse authors. MIT license.
// The load side of bench/fanout_bench.ts, run as its own process so that the
// clients never share an event loop with the server they measure.
//
//   deno run --allow-net=127.0.0.1 --allow-read=/dev/stdin bench/fanout/clients.ts \
//     --port 8000 --n 10000 --events 10 [--path /sse] [--batch 250]
//
// It opens N raw TCP connections to 127.0.0.1 (in batches, each batch waiting
// for its response heads, so the listen backlog never overflows), sends a GET,
// parses the HTTP/1.1 response head, then the body as chunked transfer coding
// (or plain, when the server sends no `transfer-encoding`), then the event
// stream, minimally: only `data` lines and blank lines matter here. Every event
// carries `{"t": <publish time, ms>, "seq": <n>}`; a client's latency for it is
// the time its read returned the bytes that completed the event minus `t`.
// Both clocks are `performance.timeOrigin + performance.now()`, which on one
// machine agree to well under a millisecond between processes.
//
// stdout, one JSON object per line:
//   {"type":"connected","connected":N,"failed":F,"ms":M}  all heads received
//   {"type":"warm","received":W}      every client got the warm-up (seq < 0)
//   {"type":"event","seq":S}          every client got measured event S
//   {"type":"result",...}             every client got every measured event,
//                                     or "stop" arrived on stdin
//   {"type":"paused",...}             --pause-at reached; waits for "continue"
// stdin lines: "stop" (report what arrived so far), "continue", "exit".

import { readArgs } from "../_args.ts";
import { stdinLines } from "./_child.ts";

const decoder = new TextDecoder();

function now(): number {
  return performance.timeOrigin + performance.now();
}

const args = readArgs({
  port: { type: "string" },
  n: { type: "string" },
  events: { type: "string" },
  batch: { type: "string" },
  path: { type: "string" },
  "pause-at": { type: "string" },
  "no-head": { type: "string" },
  "accept-encoding": { type: "string" },
});

function positiveInt(
  name: "port" | "n" | "events" | "batch" | "pause-at" | "no-head",
  fallback?: number,
): number {
  const raw = args[name];
  if (raw === undefined && fallback !== undefined) return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < 0) {
    throw new RangeError(`Invalid --${name}: ${raw}`);
  }
  return value;
}

const port = positiveInt("port");
const n = positiveInt("n");
const events = positiveInt("events");
const batch = positiveInt("batch", 250);
const path = args.path ?? "/sse";
// Pause once this many connections are open (at a batch boundary), report
// "paused", and go on at the "continue" command. 0: never pause.
const pauseAt = positiveInt("pause-at", 0);
// "--no-head 1": count a connection once its request is written, without
// waiting for a response head (for a server that holds requests unanswered).
const noHead = positiveInt("no-head", 0) === 1;
// Sent as `accept-encoding`, to see what a browser's request costs the server.
// A compressed body is only counted, not parsed.
const acceptEncoding = args["accept-encoding"];

// Latencies of measured events, all clients together.
const latencies = new Float64Array(n * events);
// The event each latency belongs to, for the per-event maximum.
const sequences = new Uint32Array(n * events);
// How many clients got each measured event so far.
const receivedPerEvent = new Uint32Array(events);
let measured = 0;
let warmReceived = 0;
let connected = 0;
let failed = 0;
let readErrors = 0;
let firstReceive = Infinity;
let lastReceive = 0;
let warmReported = false;
let resultReported = false;
let connectPhaseDone = false;
let compressed = 0;

function emit(message: Record<string, unknown>): void {
  console.log(JSON.stringify(message));
}

function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return NaN;
  const index = Math.min(sorted.length - 1, Math.ceil(p * sorted.length) - 1);
  return sorted[Math.max(0, index)]!;
}

function report(): void {
  if (resultReported) return;
  resultReported = true;
  const sorted = latencies.slice(0, measured).sort();
  // The slowest delivery of each event: shows whether a tail is one bad
  // event (a pause somewhere) or every event's spread.
  const slowest = new Array<number>(events).fill(0);
  for (let i = 0; i < measured; i++) {
    const seq = sequences[i]!;
    if (seq < events) slowest[seq] = Math.max(slowest[seq]!, latencies[i]!);
  }
  // Each event's own p99: one event hit by a pause elsewhere on the machine
  // moves only its own.
  const perEvent = Array.from({ length: events }, () => [] as number[]);
  for (let i = 0; i < measured; i++) {
    const seq = sequences[i]!;
    if (seq < events) perEvent[seq]!.push(latencies[i]!);
  }
  const eventP99 = perEvent.map((values) =>
    percentile(Float64Array.from(values).sort(), 0.99)
  );
  let sum = 0;
  for (const value of sorted) sum += value;
  emit({
    type: "result",
    received: measured,
    expected: connected * events,
    p50: percentile(sorted, 0.5),
    p90: percentile(sorted, 0.9),
    p99: percentile(sorted, 0.99),
    max: sorted.length > 0 ? sorted[sorted.length - 1] : NaN,
    mean: sorted.length > 0 ? sum / sorted.length : NaN,
    firstReceive,
    lastReceive,
    readErrors,
    slowest: slowest.map((value) => Math.round(value)),
    eventP99,
  });
}

function checkProgress(): void {
  if (!connectPhaseDone) return;
  if (!warmReported && warmReceived >= connected && connected > 0) {
    warmReported = true;
    emit({ type: "warm", received: warmReceived });
  }
  if (measured >= connected * events && events > 0) report();
}

const HEAD = 0;
const CHUNK_SIZE = 1;
const CHUNK_EXTENSION = 2;
const CHUNK_SIZE_LF = 3;
const CHUNK_DATA = 4;
const CHUNK_DATA_CR = 5;
const CHUNK_DATA_LF = 6;
const PLAIN = 7;
const DONE = 8;
const DISCARD = 9;

/** One connection: HTTP head, chunked decoding, and just enough SSE parsing. */
class Client {
  #conn: Deno.TcpConn;
  #state = HEAD;
  #head = "";
  #chunkRemaining = 0;
  #sawSizeDigit = false;
  // SSE: the unfinished line, and the data of the event being assembled.
  #line = "";
  #data = "";
  #hasData = false;
  #onHead: (ok: boolean) => void;

  constructor(conn: Deno.TcpConn, onHead: (ok: boolean) => void) {
    this.#conn = conn;
    this.#onHead = onHead;
  }

  async run(): Promise<void> {
    const buffer = new Uint8Array(4096);
    try {
      while (true) {
        const count = await this.#conn.read(buffer);
        if (count === null) break;
        this.#push(buffer.subarray(0, count), now());
        if (this.#state === DONE) break;
      }
    } catch {
      readErrors++;
    }
    if (this.#state === HEAD) this.#onHead(false);
    this.#state = DONE;
  }

  close(): void {
    try {
      this.#conn.close();
    } catch {
      // Already closed by the server.
    }
  }

  #push(bytes: Uint8Array, time: number): void {
    let offset = 0;
    if (this.#state === HEAD) {
      // Latin-1 keeps one character per byte, so indexes map back to bytes.
      const before = this.#head.length;
      this.#head += String.fromCharCode(...bytes);
      const end = this.#head.indexOf("\r\n\r\n");
      if (end === -1) {
        if (this.#head.length > 65536) {
          throw new RangeError("Response head too large");
        }
        return;
      }
      const head = this.#head.slice(0, end).toLowerCase();
      this.#head = "";
      offset = end + 4 - before;
      if (!/^http\/1\.[01] 200 /.test(head)) {
        this.#state = DONE;
        this.#onHead(false);
        return;
      }
      this.#state = /\r\ncontent-encoding:/.test(head)
        ? DISCARD
        : /\r\ntransfer-encoding:[^\r]*chunked/.test(head)
        ? CHUNK_SIZE
        : PLAIN;
      if (this.#state === DISCARD) compressed++;
      this.#onHead(true);
    }
    if (this.#state === DISCARD) return;
    if (this.#state === PLAIN) {
      this.#sse(bytes.subarray(offset), time);
      return;
    }
    // Chunked transfer coding (RFC 9112 §7.1): size in hex, optional
    // extensions, CRLF, data, CRLF; a zero size ends the body.
    while (offset < bytes.length && this.#state !== DONE) {
      if (this.#state === CHUNK_DATA) {
        const take = Math.min(this.#chunkRemaining, bytes.length - offset);
        this.#sse(bytes.subarray(offset, offset + take), time);
        offset += take;
        this.#chunkRemaining -= take;
        if (this.#chunkRemaining === 0) this.#state = CHUNK_DATA_CR;
        continue;
      }
      const byte = bytes[offset++]!;
      switch (this.#state) {
        case CHUNK_SIZE: {
          const digit = hexValue(byte);
          if (digit >= 0) {
            this.#chunkRemaining = this.#chunkRemaining * 16 + digit;
            this.#sawSizeDigit = true;
          } else if (byte === 0x0d) {
            this.#state = CHUNK_SIZE_LF;
          } else if (byte === 0x3b || byte === 0x20 || byte === 0x09) {
            this.#state = CHUNK_EXTENSION;
          } else {
            throw new SyntaxError(`Invalid chunk size byte: ${byte}`);
          }
          break;
        }
        case CHUNK_EXTENSION:
          if (byte === 0x0d) this.#state = CHUNK_SIZE_LF;
          break;
        case CHUNK_SIZE_LF:
          if (byte !== 0x0a || !this.#sawSizeDigit) {
            throw new SyntaxError("Invalid chunk size line");
          }
          this.#sawSizeDigit = false;
          // The last chunk: trailers are not expected from these servers.
          this.#state = this.#chunkRemaining === 0 ? DONE : CHUNK_DATA;
          break;
        case CHUNK_DATA_CR:
          if (byte !== 0x0d) {
            throw new SyntaxError("Missing CR after chunk data");
          }
          this.#state = CHUNK_DATA_LF;
          break;
        case CHUNK_DATA_LF:
          if (byte !== 0x0a) {
            throw new SyntaxError("Missing LF after chunk data");
          }
          this.#state = CHUNK_SIZE;
          break;
      }
    }
  }

  // The servers write LF line ends and ASCII data; CR before LF is dropped
  // anyway. Only data lines and the blank line that dispatches matter.
  #sse(bytes: Uint8Array, time: number): void {
    if (bytes.length === 0) return;
    let text = this.#line + decoder.decode(bytes);
    let start = 0;
    let end: number;
    while ((end = text.indexOf("\n", start)) !== -1) {
      let lineEnd = end;
      if (lineEnd > start && text.charCodeAt(lineEnd - 1) === 0x0d) lineEnd--;
      if (lineEnd === start) {
        if (this.#hasData) this.#dispatch(this.#data, time);
        this.#data = "";
        this.#hasData = false;
      } else if (text.startsWith("data:", start)) {
        let valueStart = start + 5;
        if (text.charCodeAt(valueStart) === 0x20) valueStart++;
        const value = text.slice(valueStart, lineEnd);
        this.#data = this.#hasData ? this.#data + "\n" + value : value;
        this.#hasData = true;
      }
      start = end + 1;
    }
    text = text.slice(start);
    this.#line = text;
  }

  #dispatch(data: string, time: number): void {
    const { t, seq } = JSON.parse(data) as { t: number; seq: number };
    if (seq < 0) {
      warmReceived++;
    } else if (measured < latencies.length) {
      sequences[measured] = seq;
      latencies[measured++] = time - t;
      if (seq < events && ++receivedPerEvent[seq]! === connected) {
        emit({ type: "event", seq });
      }
      if (time < firstReceive) firstReceive = time;
      if (time > lastReceive) lastReceive = time;
    }
    checkProgress();
  }
}

function hexValue(byte: number): number {
  if (byte >= 0x30 && byte <= 0x39) return byte - 0x30;
  if (byte >= 0x61 && byte <= 0x66) return byte - 0x61 + 10;
  if (byte >= 0x41 && byte <= 0x46) return byte - 0x41 + 10;
  return -1;
}

const clients: Client[] = [];
const runs: Promise<void>[] = [];
const request = new TextEncoder().encode(
  `GET ${path} HTTP/1.1\r\nhost: 127.0.0.1:${port}\r\naccept: text/event-stream\r\n` +
    (acceptEncoding === undefined
      ? ""
      : `accept-encoding: ${acceptEncoding}\r\n`) +
    "\r\n",
);

async function open(): Promise<void> {
  let conn: Deno.TcpConn;
  try {
    conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(request);
  } catch {
    failed++;
    return;
  }
  const { promise, resolve } = Promise.withResolvers<boolean>();
  const client = new Client(conn, resolve);
  clients.push(client);
  runs.push(client.run());
  // --no-head: a server that never answers still counts once asked.
  if (noHead || await promise) connected++;
  else failed++;
}

// Commands from the driver, one per line, read from the start so that a
// paused connect phase can be resumed.
let resume: (() => void) | undefined;
let stdinEnded = false;
const { promise: exited, resolve: exit } = Promise.withResolvers<void>();
(async () => {
  for await (const command of stdinLines()) {
    if (command === "stop") report();
    if (command === "continue") resume?.();
    if (command === "exit") exit();
  }
  // The driver closed stdin (or went away): nothing more will come.
  stdinEnded = true;
  resume?.();
  exit();
})();

const started = performance.now();
let paused = pauseAt === 0;
for (let i = 0; i < n;) {
  if (!paused && i >= pauseAt && !stdinEnded) {
    // The driver reads the server's memory with `pauseAt` clients connected,
    // so that growth from here on is per connection, without one-time costs.
    paused = true;
    const { promise, resolve } = Promise.withResolvers<void>();
    resume = resolve;
    emit({ type: "paused", connected, failed });
    await promise;
  }
  let size = Math.min(batch, n - i);
  if (!paused) size = Math.min(size, pauseAt - i);
  await Promise.all(Array.from({ length: size }, open));
  i += size;
}
connectPhaseDone = true;
emit({
  type: "connected",
  connected,
  failed,
  compressed,
  ms: Math.round(performance.now() - started),
});
checkProgress();

await exited;
for (const client of clients) client.close();
await Promise.allSettled(runs);
// stdin stays open until the driver closes it; do not wait for that.
Deno.exit(0);
