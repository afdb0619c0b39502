// Copyright the sse authors. MIT license.
// The shape of the benchmarks' machine-readable results, and bench/results.md
// rendered from them (bench/run.ts writes both; bench/readme.ts copies the
// part between the readme markers into the README).

/** One parser workload; `bench/parser_bench.ts --json` prints an array. */
export interface ParserRow {
  key: string;
  workload: string;
  /** Input size in MB. */
  MB: number;
  /** Median MB/s. */
  ours: number;
  peer: number;
  /** ours / peer, of the medians, and the lowest and highest in one round. */
  ratio: number;
  min: number;
  max: number;
  /** ours / peer, of the median CPU time (this process, all threads). */
  cpuRatio: number;
  /** TextDecoderStream and a newline scan, no parsing: MB/s. */
  floor: number;
  /** Bare objects through a TransformStream, one per event: MB/s. */
  bare?: number;
  /** Decoding, the line scan and building each line's string: MB/s. */
  build?: number;
}

/** One contender of `bench/client_bench.ts`. */
export interface ClientRow {
  key: string;
  name: string;
  /** Median MB/s over the rounds. */
  mbps: number;
  /** MB/s in each round, in round order. */
  rounds: number[];
  /**
   * Median MB per second of this process's CPU time (user and system, all
   * threads): the consumer's own cost, whatever the machine's load and the
   * server's speed.
   */
  cpuMbps: number;
  /** MB per CPU second in each round. */
  cpuRounds: number[];
}

/** A ratio between two contenders: of the medians, and per round. */
export interface ClientRatio {
  ours: string;
  peer: string;
  /** ours / peer, of the median MB/s. */
  ratio: number;
  /** The lowest and highest ratio of one round's figures. */
  min: number;
  max: number;
  /** ours / peer, of the median MB per CPU second. */
  cpuRatio: number;
}

/** What `bench/client_bench.ts --json` prints. */
export interface ClientResult {
  events: number;
  size: number;
  rounds: number;
  rows: ClientRow[];
  ratios: ClientRatio[];
}

/** One benchmark of the suite, as bench/run.ts ran it. */
export interface StepResult {
  key: string;
  title: string;
  command: string;
  loadBefore: string;
  loadAfter: string;
  seconds: number;
  /** The commit it ran at, when it differs from other steps'. */
  commit?: string;
  ok: boolean;
  /** What it printed: JSON for parser and client, markdown for the rest. */
  stdout: string;
  data?: unknown;
}

/** bench/results.json. */
export interface BenchResults {
  date: string;
  /** The commit measured ("+ changes" when the checkout had any). */
  commit?: string;
  quick: boolean;
  machine: {
    cpu: string;
    cores: number;
    os: string;
    deno: string;
    v8: string;
  };
  steps: StepResult[];
}

export const README_START = "<!-- readme:start -->";
export const README_END = "<!-- readme:end -->";

const x = (ratio: number) => `${ratio.toFixed(2)}×`;
const mb = (value: number) => value.toFixed(0);

function parserSection(step: StepResult): string[] {
  const rows = step.data as ParserRow[];
  const lines = [
    "`SSEParserStream` against eventsource-parser 4's `EventSourceParserStream`",
    "behind a `TextDecoderStream`, both reading the same chunks with `for await`",
    "and reading each event's `data`; interleaved rounds, medians. The floor is",
    "`TextDecoderStream` plus a newline scan, with no parsing at all.",
    "",
    "| workload | ours MB/s | eventsource-parser MB/s | ours / peer | lowest–highest in one round | by CPU time | floor MB/s |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
  ];
  for (const r of rows) {
    lines.push(
      `| ${r.workload} | ${mb(r.ours)} | ${mb(r.peer)} | **${x(r.ratio)}** | ${
        r.min.toFixed(2)
      }–${x(r.max)} | ${x(r.cpuRatio)} | ${mb(r.floor)} |`,
    );
  }
  const llm = rows.find((r) => r.bare !== undefined);
  if (llm?.bare !== undefined) {
    lines.push(
      "",
      `On the LLM workload the stream machinery alone (as many bare objects as events, enqueued and read through a \`TransformStream\`) runs at ${
        mb(llm.bare)
      } MB/s equivalent.`,
    );
  }
  const huge = rows.find((r) => r.build !== undefined);
  if (huge?.build !== undefined) {
    lines.push(
      "",
      `On 1 MiB events, one \`TransformStream\` that only decodes each chunk, finds the line ends and builds each line's string from the chunks it spans runs at ${
        mb(huge.build)
      } MB/s, ${
        x(huge.build / huge.peer)
      } eventsource-parser: what handing out each event as one string costs at least.`,
    );
  }
  return lines;
}

function clientSection(step: StepResult): string[] {
  const result = step.data as ClientResult;
  const name = (key: string) =>
    result.rows.find((row) => row.key === key)?.name ?? key;
  const lines = [
    `${result.events.toLocaleString("en-US")} events of ${
      result.size.toLocaleString("en-US")
    } bytes (\`id\` and one \`data\` line) per connection, over loopback from a \`Deno.serve\` server in its own process sending pre-built 64 KiB chunks; each consumer reads every event's \`data\`; one connection per measurement, ${result.rounds} interleaved rounds after a warm-up, medians. MB per CPU second counts the consumer process's own CPU time (all threads).`,
    "",
    "| consumer | MB/s | MB per CPU second |",
    "| --- | ---: | ---: |",
  ];
  for (const row of result.rows) {
    const ours = row.key === "sseclient" || row.key === "eventsource";
    const label = ours ? `**${row.name}**` : row.name;
    lines.push(`| ${label} | ${mb(row.mbps)} | ${mb(row.cpuMbps)} |`);
  }
  lines.push(
    "",
    "| ours | against | ours / peer | lowest–highest in one round | by CPU time |",
    "| --- | --- | ---: | ---: | ---: |",
  );
  for (const r of result.ratios) {
    lines.push(
      `| ${name(r.ours)} | ${name(r.peer)} | **${x(r.ratio)}** | ${
        r.min.toFixed(2)
      }–${x(r.max)} | ${x(r.cpuRatio)} |`,
    );
  }
  return lines;
}

const INTRO: Record<string, string> = {
  encoder:
    '"hand" is the obvious string-concat + `TextEncoder` encoder, made safe by splitting data lines; "hono" is `streamSSE`\'s `writeSSE` over a `TransformStream`.',
  fanout:
    "One publisher, N idle clients on raw TCP in a separate process; on each runtime `SSEChannel` beside that runtime's hand-written broadcast loop (`Deno.serve`, `Bun.serve`, `node:http`), and on Node also the same loop over web streams through `@hono/node-server` (as `SSEChannel` is served there) and better-sse. All servers of a round are up at once, each with its own clients, and every event goes to one server at a time in rotating order.",
  hotpath:
    "The fan-out without sockets: N response streams in one process, each read as a runtime's server reads it, and one event to all of them; the CPU time per client per event of `SSEChannel` (publish, broker, encoding and its write to each stream) against a loop enqueuing one buffer to a Set of stream controllers. What the library itself costs, apart from the HTTP server and the kernel.",
  presence:
    "`clients()`, `count()`, `metrics()` and `disconnect()` at N connections in one process, per call, against copying N references into an array; and what presence and metrics keep per connection.",
  broker:
    "1 000 clients in two load processes; burst = events as fast as accepted, paced = events at a fixed rate; each broker in its own setup.",
  resume:
    "N clients reconnect at once, each missing K events; the server's peak RSS and the time until every client has caught up, against the same events delivered live, and against a hand-written floor on `Deno.serve` (the frames encoded once, in shared 32 KiB chunks, each response stream pulling the next); then resume and floor again with V8's young generation held to 1 MiB semi-spaces.",
};

function section(step: StepResult, commit: string | undefined): string[] {
  const at = step.commit !== undefined && step.commit !== commit
    ? ` at commit ${step.commit}`
    : "";
  const lines = [
    `### ${step.title}`,
    "",
    `\`${step.command}\`${at}: load average ${step.loadBefore} before, ${step.loadAfter} after, ${
      step.seconds.toFixed(0)
    } s.`,
    "",
  ];
  if (!step.ok) {
    lines.push("**Failed**; its output:", "", "```", step.stdout, "```");
    return lines;
  }
  if (step.key === "parser") return [...lines, ...parserSection(step)];
  if (step.key.startsWith("client")) return [...lines, ...clientSection(step)];
  const intro = INTRO[step.key];
  if (intro !== undefined) lines.push(intro, "");
  lines.push(...paragraphs(step.stdout));
  return lines;
}

// A benchmark's markdown output, each table and each other line a block of
// its own: a line right after a table would otherwise read as one of its rows.
function paragraphs(text: string): string[] {
  const out: string[] = [];
  let inTable = false;
  for (const line of text.split("\n")) {
    // A blank line ends a table: the next one starts a table of its own.
    if (line.trim() === "") {
      inTable = false;
      continue;
    }
    const row = line.startsWith("|");
    if (out.length > 0 && !(row && inTable)) out.push("");
    out.push(line);
    inTable = row;
  }
  return out;
}

/** bench/results.md for these results. */
export function renderResults(results: BenchResults): string {
  const m = results.machine;
  const lines = [
    "# Benchmark results",
    "",
    "Written by `deno task bench` (bench/run.ts); do not edit it, run that again.",
    "The README's Benchmarks section is the part between the readme markers, copied",
    "by bench/readme.ts. Machine-readable: bench/results.json.",
    "",
    README_START,
    `Measured ${results.date.slice(0, 10)}${
      results.commit === undefined ? "" : ` at commit ${results.commit}`
    } on ${m.cpu}, ${m.cores} cores (${m.os}), Deno ${m.deno} (V8 ${m.v8}); every benchmark runs ours and its peers in the same run, interleaved, and gives medians. The machine is shared: each benchmark gives the load average (1, 5 and 15 minutes) around it, and ratios measured in one run are what to read.${
      results.quick
        ? " **A --quick run: a check of the suite, not figures.**"
        : ""
    }`,
    "",
  ];
  for (const step of results.steps) {
    lines.push(...section(step, results.commit), "");
  }
  lines.push(README_END, "");
  return lines.join("\n");
}

/**
 * The median of `values`, NaN ones left out (a run that measured nothing);
 * NaN when none is left.
 */
export function median(values: number[]): number {
  const sorted = values.filter((value) => !Number.isNaN(value))
    .sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const middle = sorted.length >> 1;
  return sorted.length % 2 === 1
    ? sorted[middle]!
    : (sorted[middle - 1]! + sorted[middle]!) / 2;
}
