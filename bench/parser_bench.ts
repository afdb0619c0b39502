// Copyright the sse authors. MIT license.
// Parser throughput: SSEParserStream against eventsource-parser's
// EventSourceParserStream behind a TextDecoderStream (the fastest JavaScript
// parser we know), interleaved round by round, each workload in a process of
// its own (with --only, the chosen ones in this process).
//
//   deno run -A bench/parser_bench.ts [--rounds 15] [--only llm,crlf,1mib,utf8]
//     [--scale 1] [--json]
//
// Prints, for each workload, median MB/s per contender and the ratio ours /
// eventsource-parser (of the medians, the lowest and highest of one round,
// and by CPU time), plus floors: TextDecoderStream with a newline scan; on
// 1 MiB events, one TransformStream decoding, scanning and building each
// line's string; and (for the LLM workload) bare objects enqueued and
// read through a TransformStream, one per event. `--scale` multiplies the
// size of every input (0.25 for a quick run).

import process from "node:process";
import { EventSourceParserStream } from "eventsource-parser/stream";
import { SSEParserStream } from "../parser.ts";
import { only, positive, readArgs } from "./_args.ts";
import { median, type ParserRow } from "./_results.ts";

interface Workload {
  key: string;
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
  key: string,
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
    key,
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

// The floor on huge events: one TransformStream that decodes each chunk,
// finds its line ends and builds each line's string from the chunks it
// spans (joined once), and enqueues each line's length, with no parsing:
// what any parser must do to hand out a 1 MiB event as one string.
const decodeScanBuild: Contender = async (w) => {
  const decoder = new TextDecoder();
  let pieces: string[] = [];
  const lines = new TransformStream<Uint8Array, number>({
    transform(chunk, controller) {
      const text = decoder.decode(chunk, { stream: true });
      if (text.indexOf("\r") !== -1) {
        throw new Error("decodeScanBuild reads LF-only input");
      }
      let start = 0;
      for (
        let i = text.indexOf("\n");
        i !== -1;
        i = text.indexOf("\n", start)
      ) {
        pieces.push(text.slice(start, i));
        controller.enqueue(pieces.join("").length);
        pieces = [];
        start = i + 1;
      }
      if (start < text.length) pieces.push(text.slice(start));
    },
  });
  let total = 0;
  for await (const length of source(w.chunks).pipeThrough(lines)) {
    total += length;
  }
  return total;
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

async function expectedDataLength(w: Workload): Promise<number> {
  return await eventsourceParser(w);
}

const ARGS = readArgs({
  rounds: { type: "string" },
  scale: { type: "string" },
  only: { type: "string" },
  json: { type: "boolean" },
});
const rounds = Math.round(
  positive(ARGS.rounds, "rounds", 15, { integer: false }),
);
const scale = positive(ARGS.scale, "scale", 1, { integer: false });
const asJson = ARGS.json === true;
const count = (n: number) => Math.max(1, Math.round(n * scale));

const WORKLOADS: Record<string, () => Workload> = {
  llm: () =>
    workload(
      "llm",
      "LLM tokens (~120 B events, 4 KiB chunks)",
      llmInput(count(40_000)),
      4096,
    ),
  crlf: () =>
    workload(
      "crlf",
      "id+event+2 data, CRLF (1 KiB chunks)",
      crlfInput(count(40_000)),
      1024,
    ),
  // 8 MiB sent 4 times: runs of 8 MiB alone (~1.3 ms, shorter than one major
  // GC) gave ratios from 1.08x to 1.33x across six bench runs.
  "1mib": () =>
    workload(
      "1mib",
      "1 MiB events (64 KiB chunks)",
      hugeInput(count(8)),
      64 * 1024,
      4,
    ),
  utf8: () =>
    workload(
      "utf8",
      "multi-byte UTF-8 (7-byte chunks)",
      utf8Input(count(30_000)),
      7,
    ),
};

function chosen(): string[] {
  const keys = Object.keys(WORKLOADS);
  return only(ARGS.only, keys, "workload") ?? keys;
}

function cpuMs(): number {
  const { user, system } = process.cpuUsage();
  return (user + system) / 1000;
}

async function measure(key: string): Promise<ParserRow> {
  const w = WORKLOADS[key]!();
  const expected = await expectedDataLength(w);
  const contenders: [string, Contender][] = [
    ["ours", ours],
    ["peer", eventsourceParser],
    ["floor", decodeAndScan],
  ];
  if (w.key === "llm") contenders.push(["bare", bareObjects(w)]);
  if (w.key === "1mib") contenders.push(["build", decodeScanBuild]);
  const times = new Map<string, number[]>(contenders.map(([k]) => [k, []]));
  const cpu = new Map<string, number[]>(contenders.map(([k]) => [k, []]));
  // Warm up every contender, then interleave, rotating the order each round.
  for (const [, run] of contenders) await run(w);
  for (let r = 0; r < rounds; r++) {
    for (let k = 0; k < contenders.length; k++) {
      const [key, run] = contenders[(k + r) % contenders.length]!;
      const startCpu = cpuMs();
      const start = performance.now();
      const result = await run(w);
      times.get(key)!.push(performance.now() - start);
      cpu.get(key)!.push(cpuMs() - startCpu);
      if ((key === "ours" || key === "peer") && result !== expected) {
        throw new Error(
          `${key} parsed ${result} data characters on "${w.name}", expected ${expected}`,
        );
      }
    }
  }
  const mbps = (key: string) =>
    w.bytes / 1e6 / (median(times.get(key)!) / 1000);
  const perRound = times.get("peer")!.map((peer, i) =>
    peer / times.get("ours")![i]!
  );
  const row: ParserRow = {
    key: w.key,
    workload: w.name,
    MB: Math.round(w.bytes / 1e5) / 10,
    ours: mbps("ours"),
    peer: mbps("peer"),
    ratio: mbps("ours") / mbps("peer"),
    min: Math.min(...perRound),
    max: Math.max(...perRound),
    cpuRatio: median(cpu.get("peer")!) / median(cpu.get("ours")!),
    floor: mbps("floor"),
  };
  if (times.has("bare")) row.bare = mbps("bare");
  if (times.has("build")) row.build = mbps("build");
  return row;
}

// One workload in a process of its own, as `--only` runs it.
async function isolated(key: string): Promise<ParserRow> {
  const { success, stdout } = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "-A",
      new URL(import.meta.url).pathname,
      "--only",
      key,
      "--rounds",
      String(rounds),
      "--scale",
      String(scale),
      "--json",
    ],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  if (!success) throw new Error(`The ${key} workload failed`);
  return (JSON.parse(new TextDecoder().decode(stdout)) as ParserRow[])[0]!;
}

// Without --only, each workload runs in a fresh process: one workload's input
// and garbage, and the JIT's feedback from its line shapes, would otherwise
// weigh on the next one's figures (the 1 MiB ratio moved by a fifth with the
// workloads run before it). With --only, the chosen ones share this process,
// each input built when its turn comes.
const rows: ParserRow[] = [];
if (ARGS.only !== undefined) {
  for (const key of chosen()) rows.push(await measure(key));
} else {
  for (const key of Object.keys(WORKLOADS)) rows.push(await isolated(key));
}

if (asJson) {
  console.log(JSON.stringify(rows));
} else {
  console.log(
    `SSEParserStream vs eventsource-parser@4 EventSourceParserStream + TextDecoderStream` +
      `\nDeno ${Deno.version.deno}, ${rounds} interleaved rounds, median MB/s\n`,
  );
  console.log(
    "| workload | ours MB/s | eventsource-parser MB/s | ratio | per round | by CPU time | floor: TextDecoderStream + line scan MB/s |",
  );
  console.log("|---|---:|---:|---:|---:|---:|---:|");
  for (const r of rows) {
    console.log(
      `| ${r.workload} | ${r.ours.toFixed(0)} | ${r.peer.toFixed(0)} | **${
        r.ratio.toFixed(2)
      }×** | ${r.min.toFixed(2)}–${r.max.toFixed(2)}× | ${
        r.cpuRatio.toFixed(2)
      }× | ${r.floor.toFixed(0)} |`,
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
