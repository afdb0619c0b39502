// Copyright the sse authors. MIT license.
// Encoder benchmark: `deno run -A bench/encoder_bench.ts [--quick]`
//
// What is compared, on the same pre-built messages, in one process, with the
// contenders' rounds interleaved (so drift and GC hit them alike):
//
// 1. Frames: message -> UTF-8 bytes, synchronously, one frame at a time.
//    - ours:  encodeSSE + TextEncoder.encode (exactly what SSEEncoderStream
//             does per chunk; validation included);
//    - hand:  the obvious hand-written encoder: string concatenation and
//             TextEncoder.encode. A naive one that does not split data at line
//             breaks can be broken by its input, so this one splits at CRLF, CR
//             and LF too (a fair, safe peer); it validates nothing.
// 2. Streams: messages written one by one (awaiting each write) into a stream
//    whose bytes are drained by a reader, as a server handler would.
//    - ours:  SSEEncoderStream (writer.write(message));
//    - hono:  SSEStreamingApi.writeSSE from hono/streaming over a
//             TransformStream, its responseReadable drained; data that is not
//             a string is JSON.stringify'd by the caller, as hono requires.
//
// Inputs (N messages each):
// - tokens:     LLM-style token messages, { data: { choices: [{ delta: {
//               content } }] } }, about 70 bytes per frame;
// - multiline:  text data of 4-6 lines (LF and CRLF), about 300 bytes;
// - id+event:   { id, event, data: short text }, about 60 bytes.
//
// Reported: the median over rounds of events/s and MB/s (MB = 10^6 bytes of
// output), and the ratio ours/peer of the medians (> 1: ours is faster).

import { encodeSSE, SSEEncoderStream, type SSEMessage } from "../encoder.ts";
import { readArgs } from "./_args.ts";
import { median } from "./_results.ts";
import { SSEStreamingApi } from "hono/streaming";

const quick = readArgs({ quick: { type: "boolean" } }).quick === true;
const N = quick ? 2_000 : 20_000;
const FRAME_ROUNDS = quick ? 5 : 25;
const STREAM_ROUNDS = quick ? 3 : 9;

// ------------------------------------------------------------------ inputs

const WORDS = [
  "The",
  " quick",
  " brown",
  " fox",
  " jumps",
  " over",
  " the",
  " lazy",
  " dog",
  ".",
  "\n",
  " Ünïcödé",
  " 😀",
  ",",
  " and",
  " then",
];

function tokens(): SSEMessage[] {
  return Array.from({ length: N }, (_, i) => ({
    data: {
      id: "chatcmpl-1",
      choices: [{ index: 0, delta: { content: WORDS[i % WORDS.length] } }],
    },
  }));
}

function multiline(): SSEMessage[] {
  return Array.from({ length: N }, (_, i) => {
    const lines: string[] = [];
    for (let l = 0; l < 4 + (i % 3); l++) {
      lines.push(`line ${l} of message ${i}: lorem ipsum dolor sit amet, elit`);
    }
    return { data: lines.join(i % 2 === 0 ? "\n" : "\r\n") };
  });
}

function idEvent(): SSEMessage[] {
  return Array.from({ length: N }, (_, i) => ({
    id: String(i),
    event: i % 2 === 0 ? "update" : "price",
    data: `AAPL ${(150 + (i % 100) / 10).toFixed(2)} at tick ${i}`,
  }));
}

// ------------------------------------------------------------- contenders

const textEncoder = new TextEncoder();

function ourFrames(messages: SSEMessage[]): number {
  let bytes = 0;
  for (let i = 0; i < messages.length; i++) {
    bytes += textEncoder.encode(encodeSSE(messages[i]!)).length;
  }
  return bytes;
}

// The obvious hand-written encoder, made safe: data split at every line break.
function handEncode(message: SSEMessage): Uint8Array {
  let frame = "";
  if (message.event !== undefined) frame += "event: " + message.event + "\n";
  if (message.id !== undefined) frame += "id: " + message.id + "\n";
  const data = typeof message.data === "string"
    ? message.data
    : JSON.stringify(message.data);
  for (const line of data.split(/\r\n|\r|\n/)) frame += "data: " + line + "\n";
  return textEncoder.encode(frame + "\n");
}

function handFrames(messages: SSEMessage[]): number {
  let bytes = 0;
  for (let i = 0; i < messages.length; i++) {
    bytes += handEncode(messages[i]!).length;
  }
  return bytes;
}

async function drain(readable: ReadableStream<Uint8Array>): Promise<number> {
  let bytes = 0;
  for await (const chunk of readable) bytes += chunk.length;
  return bytes;
}

async function ourStream(messages: SSEMessage[]): Promise<number> {
  const stream = new SSEEncoderStream();
  const drained = drain(stream.readable);
  const writer = stream.writable.getWriter();
  for (const message of messages) await writer.write(message);
  await writer.close();
  return await drained;
}

async function honoStream(messages: SSEMessage[]): Promise<number> {
  const { readable, writable } = new TransformStream<Uint8Array, Uint8Array>();
  const api = new SSEStreamingApi(writable, readable);
  const drained = drain(api.responseReadable);
  for (const m of messages) {
    const message: { data: string; event?: string; id?: string } = {
      data: typeof m.data === "string" ? m.data : JSON.stringify(m.data),
    };
    if (m.event !== undefined) message.event = m.event;
    if (m.id !== undefined) message.id = String(m.id);
    await api.writeSSE(message);
  }
  await api.close();
  return await drained;
}

// ------------------------------------------------------------- harness

interface Sample {
  eventsPerSecond: number;
  mbPerSecond: number;
}

type Run = (messages: SSEMessage[]) => number | Promise<number>;

async function measure(
  contenders: Record<string, Run>,
  messages: SSEMessage[],
  rounds: number,
): Promise<Record<string, Sample>> {
  const names = Object.keys(contenders);
  const samples: Record<string, Sample[]> = {};
  for (const name of names) samples[name] = [];
  // Equal output first: every contender writes the same bytes.
  const sizes = await Promise.all(
    names.map((name) => contenders[name]!(messages)),
  );
  if (new Set(sizes).size !== 1) {
    throw new Error(`Contenders disagree on output size: ${sizes}`);
  }
  for (let round = -2; round < rounds; round++) { // two warm-up rounds
    // Alternate the order, so neither always runs first.
    const order = round % 2 === 0 ? names : [...names].reverse();
    for (const name of order) {
      const start = performance.now();
      const bytes = await contenders[name]!(messages);
      const seconds = (performance.now() - start) / 1000;
      if (round >= 0) {
        samples[name]!.push({
          eventsPerSecond: messages.length / seconds,
          mbPerSecond: bytes / 1e6 / seconds,
        });
      }
    }
  }
  const result: Record<string, Sample> = {};
  for (const name of names) {
    const list = samples[name]!;
    result[name] = {
      eventsPerSecond: median(list.map((s) => s.eventsPerSecond)),
      mbPerSecond: median(list.map((s) => s.mbPerSecond)),
    };
  }
  return result;
}

const inputs: [string, SSEMessage[]][] = [
  ["tokens", tokens()],
  ["multiline", multiline()],
  ["id+event", idEvent()],
];

const rows: string[][] = [];
for (
  const [level, contenders, rounds, peer] of [
    ["frames", { ours: ourFrames, hand: handFrames }, FRAME_ROUNDS, "hand"],
    ["stream", { ours: ourStream, hono: honoStream }, STREAM_ROUNDS, "hono"],
  ] as const
) {
  for (const [input, messages] of inputs) {
    const bytes = ourFrames(messages);
    const result = await measure(contenders, messages, rounds);
    const ours = result.ours!;
    const other = result[peer]!;
    rows.push([
      level,
      input,
      `${(bytes / messages.length).toFixed(0)} B`,
      fmt(ours.eventsPerSecond),
      ours.mbPerSecond.toFixed(0),
      peer,
      fmt(other.eventsPerSecond),
      other.mbPerSecond.toFixed(0),
      (ours.eventsPerSecond / other.eventsPerSecond).toFixed(2) + "×",
    ]);
  }
}

function fmt(eventsPerSecond: number): string {
  return eventsPerSecond >= 1e6
    ? (eventsPerSecond / 1e6).toFixed(2) + " M"
    : (eventsPerSecond / 1e3).toFixed(0) + " k";
}

console.log(
  `Encoder benchmark: ${N} messages per input; medians of ${FRAME_ROUNDS} ` +
    `(frames) and ${STREAM_ROUNDS} (stream) interleaved rounds; ` +
    `Deno ${Deno.version.deno}, V8 ${Deno.version.v8}\n`,
);
const header = [
  "level",
  "input",
  "frame",
  "ours ev/s",
  "ours MB/s",
  "peer",
  "peer ev/s",
  "peer MB/s",
  "ours/peer",
];
const table = [header, ...rows];
const widths = header.map((_, c) =>
  Math.max(...table.map((r) => r[c]!.length))
);
const line = (r: string[]) =>
  "| " + r.map((cell, c) => cell.padEnd(widths[c]!)).join(" | ") + " |";
console.log(line(header));
console.log("|" + widths.map((w) => "-".repeat(w + 2)).join("|") + "|");
for (const row of rows) console.log(line(row));
