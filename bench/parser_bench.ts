// Copyright the sse authors. MIT license.
// Parser throughput: SSEParserStream against eventsource-parser's
// EventSourceParserStream behind a TextDecoderStream (the fastest JavaScript
// parser we know), in one process, interleaved round by round.
//
//   deno run -A bench/parser_bench.ts [--rounds 15] [--json]
//
// Prints, for each workload, median MB/s per contender and the ratio ours /
// eventsource-parser, plus two floors that no parser can beat: TextDecoderStream
// with a newline scan, and (for the LLM workload) bare objects enqueued and
// read through a TransformStream, one per event.

import { EventSourceParserStream } from "eventsource-parser/stream";
import { SSEParserStream } from "../parser.ts";

interface Workload {
  name: string;
  input: string;
  chunks: Uint8Array[];
  bytes: number;
  events: number;
}

type Contender = (w: Workload) => Promise<number>;

const encoder = new TextEncoder();

function split(bytes: Uint8Array, size: number): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += size) {
    chunks.push(bytes.slice(i, i + size));
  }
  return chunks;
}

// The stream is the input split into chunks, sent `repeat` times over: the
// same chunk objects again, so a run lasts long enough to even out garbage
// collection without needing more memory than the input.
function workload(
  name: string,
  input: string,
  chunkSize: number,
  repeat = 1,
): Workload {
  const bytes = encoder.encode(input);
  const once = split(bytes, chunkSize);
  const chunks: Uint8Array[] = [];
  for (let i = 0; i < repeat; i++) {
    for (const chunk of once) chunks.push(chunk);
  }
  return {
    name,
    input,
    chunks,
    bytes: bytes.length * repeat,
    events: (input.split(/\r\n\r\n|\n\n/).length - 1) * repeat,
  };
}

function source(chunks: Uint8Array[]): ReadableStream<Uint8Array> {
  let i = 0;
  return new ReadableStream<Uint8Array>({
    pull(controller) {
      if (i < chunks.length) controller.enqueue(chunks[i++]!);
      else controller.close();
    },
  }, { highWaterMark: 0 });
}

function llmInput(count: number): string {
  let out = "";
  for (let i = 0; i < count; i++) {
    const json = JSON.stringify({
      id: "chatcmpl-9x8y7z",
      object: "chat.completion.chunk",
      choices: [{ index: 0, delta: { content: ` token${i % 1000}` } }],
    });
    out += `data: ${json}\n\n`;
  }
  return out;
}

function crlfInput(count: number): string {
  let out = "";
  for (let i = 0; i < count; i++) {
    out += `id: ${i}\r\nevent: update\r\ndata: {"seq":${i},"status":"ok"}\r\n` +
      `data: second line of the payload for event ${i}\r\n\r\n`;
  }
  return out;
}

function hugeInput(count: number): string {
  const payload = "x".repeat(1024 * 1024);
  let out = "";
  for (let i = 0; i < count; i++) out += `data: ${payload}\n\n`;
  return out;
}

function utf8Input(count: number): string {
  const text = [
    "Größe über Straße",
    "日本語のテキストです",
    "Ελληνικά γράμματα",
    "emoji 🎉🚀✨ mixed",
    "Ça coûte 5 €",
  ];
  let out = "";
  for (let i = 0; i < count; i++) out += `data: ${text[i % text.length]}\n\n`;
  return out;
}

// Every contender drains the same chunks and sums the data lengths, so no
// work can be optimised away; the sum is checked against the expected value.
const ours: Contender = async (w) => {
  let total = 0;
  for await (
    const event of source(w.chunks).pipeThrough(new SSEParserStream())
  ) {
    total += event.data.length;
  }
  return total;
};

const eventsourceParser: Contender = async (w) => {
  let total = 0;
  const events = source(w.chunks)
    .pipeThrough(new TextDecoderStream())
    .pipeThrough(new EventSourceParserStream());
  for await (const event of events) total += event.data.length;
  return total;
};

// The floor: decoding plus finding every line end, with no parsing at all.
const decodeAndScan: Contender = async (w) => {
  let lines = 0;
  for await (
    const text of source(w.chunks).pipeThrough(new TextDecoderStream())
  ) {
    let i = text.indexOf("\n");
    while (i !== -1) {
      lines++;
      i = text.indexOf("\n", i + 1);
    }
  }
  return lines;
};

// The stream machinery alone: the same number of objects as events, enqueued
// by a TransformStream in one batch per input chunk (as a parser does), and
// read with for await. No parser can go below this on small events.
function bareObjects(w: Workload): Contender {
  const perChunk = Math.ceil(w.events / w.chunks.length);
  const object = { type: "message", data: "", id: "" };
  return async () => {
    let n = 0;
    const readable = source(w.chunks).pipeThrough(
      new TransformStream<Uint8Array, typeof object>(
        {
          transform(_chunk, controller) {
            for (let k = 0; k < perChunk; k++) controller.enqueue(object);
          },
        },
        undefined,
        { highWaterMark: 1 },
      ),
    );
    for await (const _ of readable) n++;
    return n;
  };
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = sorted.length >> 1;
  return sorted.length % 2
    ? sorted[mid]!
    : (sorted[mid - 1]! + sorted[mid]!) / 2;
}

async function expectedDataLength(w: Workload): Promise<number> {
  return await eventsourceParser(w);
}

const args = Deno.args;
const roundsArg = args.indexOf("--rounds");
const rounds = roundsArg === -1 ? 15 : Number(args[roundsArg + 1]);
const asJson = args.includes("--json");

const workloads: Workload[] = [
  workload("LLM tokens (~120 B events, 4 KiB chunks)", llmInput(40_000), 4096),
  workload("id+event+2 data, CRLF (1 KiB chunks)", crlfInput(40_000), 1024),
  // 8 MiB sent 4 times: runs of 8 MiB alone (~1.3 ms, shorter than one major
  // GC) gave ratios from 1.08x to 1.33x across six bench runs.
  workload("1 MiB events (64 KiB chunks)", hugeInput(8), 64 * 1024, 4),
  workload("multi-byte UTF-8 (7-byte chunks)", utf8Input(30_000), 7),
];

interface Row {
  workload: string;
  MB: number;
  ours: number;
  peer: number;
  ratio: number;
  floor: number;
  bare?: number;
}

const rows: Row[] = [];
for (const w of workloads) {
  const expected = await expectedDataLength(w);
  const contenders: [string, Contender][] = [
    ["ours", ours],
    ["peer", eventsourceParser],
    ["floor", decodeAndScan],
  ];
  if (w.name.startsWith("LLM")) contenders.push(["bare", bareObjects(w)]);
  const times = new Map<string, number[]>(contenders.map(([k]) => [k, []]));
  // Warm up every contender, then interleave, rotating the order each round.
  for (const [, run] of contenders) await run(w);
  for (let r = 0; r < rounds; r++) {
    for (let k = 0; k < contenders.length; k++) {
      const [key, run] = contenders[(k + r) % contenders.length]!;
      const start = performance.now();
      const result = await run(w);
      times.get(key)!.push(performance.now() - start);
      if ((key === "ours" || key === "peer") && result !== expected) {
        throw new Error(
          `${key} parsed ${result} data characters on "${w.name}", expected ${expected}`,
        );
      }
    }
  }
  const mbps = (key: string) =>
    w.bytes / 1e6 / (median(times.get(key)!) / 1000);
  const row: Row = {
    workload: w.name,
    MB: Math.round(w.bytes / 1e5) / 10,
    ours: mbps("ours"),
    peer: mbps("peer"),
    ratio: mbps("ours") / mbps("peer"),
    floor: mbps("floor"),
  };
  if (times.has("bare")) row.bare = mbps("bare");
  rows.push(row);
}

if (asJson) {
  console.log(JSON.stringify(rows));
} else {
  console.log(
    `SSEParserStream vs eventsource-parser@4 EventSourceParserStream + TextDecoderStream` +
      `\nDeno ${Deno.version.deno}, ${rounds} interleaved rounds, median MB/s\n`,
  );
  console.log(
    "| workload | ours MB/s | eventsource-parser MB/s | ratio | floor: TextDecoderStream + line scan MB/s |",
  );
  console.log("|---|---:|---:|---:|---:|");
  for (const r of rows) {
    console.log(
      `| ${r.workload} | ${r.ours.toFixed(0)} | ${r.peer.toFixed(0)} | **${
        r.ratio.toFixed(2)
      }×** | ${r.floor.toFixed(0)} |`,
    );
  }
  const llm = rows.find((r) => r.bare !== undefined);
  if (llm?.bare !== undefined) {
    console.log(
      `\nLLM workload, stream machinery alone (bare objects through a TransformStream, one per event): ${
        llm.bare.toFixed(0)
      } MB/s equivalent`,
    );
  }
}
