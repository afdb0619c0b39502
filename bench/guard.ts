// Copyright the sse authors. MIT license.
// The performance guard that CI runs: short runs of the parser and client
// benchmarks, ours against the same peers as `deno task bench`, whose ratios
// must stay within 25 % of the committed baseline (bench/baseline.json); a
// ratio below that is measured once more, and fails only if it stays below.
//
//   deno run -A bench/guard.ts             measure and compare (CI)
//   deno run -A bench/guard.ts --update    measure, write the new baseline
//
// Each benchmark runs in five processes of its own, and each ratio is the
// median of the five: one process's JIT and heap can settle a few percent
// off another's, which no number of rounds within it averages out. Takes
// 15 to 25 s on two shared cores.

import { readArgs } from "./_args.ts";
import { type ClientResult, median, type ParserRow } from "./_results.ts";

const ROOT = new URL("../", import.meta.url);
const BASELINE = new URL("bench/baseline.json", ROOT);
/** A ratio fails when it drops below this fraction of its baseline. */
const TOLERANCE = 0.75;
const PROCESSES = 5;

/** One ratio ours / peer, as measured in one process. */
interface Ratio {
  /** What is compared: `ours vs peer, input`. */
  name: string;
  /** Of the median wall times. */
  wall: number;
  /** Of the median CPU times (the process's, all threads). */
  cpu: number;
}

async function json<T>(script: string, args: string[]): Promise<T> {
  const { success, stdout } = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", script, ...args, "--json"],
    cwd: ROOT,
    stdout: "piped",
    stderr: "inherit",
  }).output();
  const text = new TextDecoder().decode(stdout).trim();
  if (!success) throw new Error(`${script} failed: ${text}`);
  return JSON.parse(text.split("\n").at(-1)!) as T;
}

async function parserRatios(): Promise<Ratio[]> {
  const rows = await json<ParserRow[]>("bench/parser_bench.ts", [
    "--only",
    "llm,crlf,1mib",
    "--rounds",
    "11",
    "--scale",
    "0.5",
  ]);
  return rows.map((row) => ({
    name: `SSEParserStream vs eventsource-parser, ${row.workload}`,
    wall: row.ratio,
    cpu: row.cpuRatio,
  }));
}

const CLIENT_RUNS = [
  {
    input: "100 B events",
    args: [
      "--only",
      "sseclient,eventsource,eventsource-parser,deno-eventsource",
      "--events",
      "50000",
      "--rounds",
      "7",
    ],
    pairs: [
      ["sseclient", "eventsource-parser"],
      ["eventsource", "deno-eventsource"],
    ],
  },
  {
    input: "64 KiB events",
    args: [
      "--only",
      "sseclient,fetch",
      "--size",
      "65536",
      "--events",
      "1000",
      "--rounds",
      "7",
    ],
    pairs: [["sseclient", "fetch"]],
  },
];

async function clientRatios(): Promise<Ratio[]> {
  const ratios: Ratio[] = [];
  for (const { input, args, pairs } of CLIENT_RUNS) {
    const result = await json<ClientResult>("bench/client_bench.ts", args);
    const name = (key: string) =>
      result.rows.find((row) => row.key === key)!.name;
    for (const [ours, peer] of pairs) {
      const ratio = result.ratios.find((r) =>
        r.ours === ours && r.peer === peer
      )!;
      ratios.push({
        name: `${name(ours!)} vs ${name(peer!)}, ${input}`,
        wall: ratio.ratio,
        cpu: ratio.cpuRatio,
      });
    }
  }
  return ratios;
}

/** Every ratio, each the median of its PROCESSES measurements. */
async function measure(): Promise<Ratio[]> {
  const runs: Ratio[][] = [];
  for (let i = 0; i < PROCESSES; i++) {
    runs.push([...await parserRatios(), ...await clientRatios()]);
  }
  return runs[0]!.map(({ name }) => {
    const all = runs.map((run) => run.find((r) => r.name === name)!);
    return {
      name,
      wall: median(all.map((r) => r.wall)),
      cpu: median(all.map((r) => r.cpu)),
    };
  });
}

async function loadAverage(): Promise<string> {
  try {
    return (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3)
      .join(" ");
  } catch {
    return "unknown";
  }
}

interface Baseline {
  note: string;
  measured: string;
  deno: string;
  load: string;
  ratios: Record<string, number>;
}

async function update(): Promise<void> {
  const load = await loadAverage();
  const ratios = await measure();
  const baseline: Baseline = {
    note:
      "Ratios ours / peer by wall time, each the median of five processes; `deno run -A bench/guard.ts --update` rewrites this file.",
    measured: new Date().toISOString().slice(0, 10),
    deno: Deno.version.deno,
    load,
    ratios: Object.fromEntries(
      ratios.map((r) => [r.name, Math.round(r.wall * 100) / 100]),
    ),
  };
  await Deno.writeTextFile(
    BASELINE,
    JSON.stringify(baseline, null, 2) + "\n",
  );
  for (const r of ratios) {
    console.log(
      `${r.name}: ${r.wall.toFixed(2)}× (by CPU time ${r.cpu.toFixed(2)}×)`,
    );
  }
  console.log("Wrote bench/baseline.json");
}

/** The names of the baseline's ratios that `ratios` misses or falls below. */
function failing(baseline: Baseline, ratios: Ratio[]): string[] {
  return Object.keys(baseline.ratios).filter((name) => {
    const ratio = ratios.find((r) => r.name === name);
    return ratio === undefined ||
      ratio.wall < baseline.ratios[name]! * TOLERANCE;
  });
}

/**
 * Measures, and measures once more when a ratio falls below its floor,
 * keeping each ratio's better median: a machine busy with something else
 * for half a minute can pull one ratio under (seen: 78 % of baseline at
 * load 5 on two cores), while a slower build stays under in both.
 */
async function measureTwiceIfNeeded(baseline: Baseline): Promise<Ratio[]> {
  const first = await measure();
  const failed = failing(baseline, first);
  if (failed.length === 0) return first;
  console.log(
    `Performance guard: measuring again, below the floor once: ${
      failed.join("; ")
    }`,
  );
  const second = await measure();
  return first.map((ratio) => {
    const again = second.find((r) => r.name === ratio.name);
    return again !== undefined && again.wall > ratio.wall ? again : ratio;
  });
}

async function check(): Promise<boolean> {
  const baseline = JSON.parse(await Deno.readTextFile(BASELINE)) as Baseline;
  const started = performance.now();
  const load = await loadAverage();
  const ratios = await measureTwiceIfNeeded(baseline);
  console.log(
    `Performance guard: load average ${load} before, ${await loadAverage()} after, ${
      ((performance.now() - started) / 1000).toFixed(0)
    } s; a ratio fails below ${TOLERANCE} × its baseline in two measurements`,
  );
  let ok = true;
  for (const name of Object.keys(baseline.ratios)) {
    const expected = baseline.ratios[name]!;
    const ratio = ratios.find((r) => r.name === name);
    if (ratio === undefined) {
      console.log(`FAIL ${name}: not measured`);
      ok = false;
      continue;
    }
    const floor = expected * TOLERANCE;
    const pass = ratio.wall >= floor;
    if (!pass) ok = false;
    console.log(
      `${pass ? "ok  " : "FAIL"} ${name}: ${ratio.wall.toFixed(2)}× (${
        (ratio.wall / expected * 100).toFixed(0)
      } % of ${expected.toFixed(2)}×, floor ${floor.toFixed(2)}×; by CPU time ${
        ratio.cpu.toFixed(2)
      }×)`,
    );
  }
  return ok;
}

if (import.meta.main) {
  if (readArgs({ update: { type: "boolean" } }).update === true) await update();
  else if (!(await check())) Deno.exit(1);
}
