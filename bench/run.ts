// Copyright the sse authors. MIT license.
// Every benchmark, one after the other, each in its own process; then
// bench/results.md (figures, ratios, peers and inputs, the machine and its
// load) and the README's Benchmarks section, generated from it
// (bench/readme.ts). This is `deno task bench`.
//
//   deno run -A bench/run.ts [--quick] [--only parser,client,...] [--no-readme]
//   deno run -A bench/run.ts --render
//
// A full run takes about 11 minutes, most of it the fan-out across three
// runtimes (bounded by its --budget). `--quick` runs every benchmark small
// (about two minutes in all, for checking the suite itself, never for
// figures); `--only` runs some of them (the
// others keep their section of the previous results.md); `--no-readme`
// leaves the README alone; `--render` runs nothing, and writes results.md
// and the README again from bench/results.json.

import { only as chooseOnly, readArgs } from "./_args.ts";
import {
  type BenchResults,
  renderResults,
  type StepResult,
} from "./_results.ts";
import { updateReadme } from "./readme.ts";

interface Step {
  key: string;
  title: string;
  script: string;
  /** Deno's own flags, before the script. */
  flags?: string[];
  args: string[];
  /** The arguments of a --quick run. */
  quick: string[];
  /** The step prints JSON on stdout (else markdown, kept verbatim). */
  json: boolean;
}

const STEPS: Step[] = [
  {
    key: "parser",
    title: "Parser",
    script: "bench/parser_bench.ts",
    args: ["--rounds", "15", "--json"],
    quick: ["--rounds", "3", "--scale", "0.25", "--json"],
    json: true,
  },
  {
    key: "encoder",
    title: "Encoder",
    script: "bench/encoder_bench.ts",
    args: [],
    quick: ["--quick"],
    json: false,
  },
  {
    key: "client",
    title: "Client, 100 B events",
    script: "bench/client_bench.ts",
    args: ["--rounds", "9", "--json"],
    quick: ["--rounds", "2", "--events", "10000", "--json"],
    json: true,
  },
  {
    key: "client64k",
    title: "Client, 64 KiB events",
    script: "bench/client_bench.ts",
    args: [
      "--rounds",
      "9",
      "--size",
      "65536",
      "--events",
      "2000",
      "--only",
      "sseclient,fetch,fetch-byob,eventsource-parser",
      "--json",
    ],
    quick: [
      "--rounds",
      "2",
      "--size",
      "65536",
      "--events",
      "200",
      "--only",
      "sseclient,fetch,fetch-byob,eventsource-parser",
      "--json",
    ],
    json: true,
  },
  {
    key: "fanout",
    title: "Fan-out",
    script: "bench/fanout_bench.ts",
    // About 80 s a repetition on 2 cores: 6 of them, or fewer when the
    // machine is slow enough that a 9th minute would be passed.
    args: [
      "--n",
      "1000,10000",
      "--events",
      "10",
      "--reps",
      "6",
      "--budget",
      "540",
    ],
    quick: ["--quick", "--reps", "1", "--events", "3"],
    json: false,
  },
  {
    key: "hotpath",
    title: "Fan-out hot path",
    script: "bench/hot_path_bench.ts",
    args: ["--runs", "7"],
    quick: ["--n", "1000", "--rounds", "20", "--runs", "1"],
    json: false,
  },
  {
    key: "presence",
    title: "Presence and metrics",
    script: "bench/presence_bench.ts",
    flags: ["--v8-flags=--expose-gc"],
    args: ["--n", "10000", "--rounds", "200"],
    quick: ["--n", "1000", "--rounds", "20"],
    json: false,
  },
  {
    key: "broker",
    title: "Brokers",
    script: "bench/broker_bench.ts",
    args: [],
    quick: [
      "--only",
      "memory",
      "--clients",
      "100",
      "--events",
      "100",
      "--paced",
      "50",
    ],
    json: false,
  },
  {
    key: "resume",
    title: "Resume herd",
    script: "bench/resume_bench.ts",
    args: [],
    quick: ["--clients", "100", "--missed", "50"],
    json: false,
  },
];

const RESULTS = new URL("./results.md", import.meta.url);
const RESULTS_JSON = new URL("./results.json", import.meta.url);

async function loadAverage(): Promise<string> {
  try {
    const text = await Deno.readTextFile("/proc/loadavg");
    return text.split(" ").slice(0, 3).join(" ");
  } catch {
    return "unknown";
  }
}

async function cpuModel(): Promise<string> {
  try {
    const text = await Deno.readTextFile("/proc/cpuinfo");
    return text.match(/^model name\s*:\s*(.+)$/m)?.[1]?.trim() ?? "unknown";
  } catch {
    return "unknown";
  }
}

/** The commit measured, with "+ changes" when the checkout has any. */
async function commit(): Promise<string> {
  const git = async (...args: string[]) => {
    const { success, stdout } = await new Deno.Command("git", {
      args,
      cwd: new URL("../", import.meta.url),
      stdout: "piped",
      stderr: "null",
    }).output();
    return success ? new TextDecoder().decode(stdout).trim() : undefined;
  };
  try {
    const head = await git("rev-parse", "--short", "HEAD");
    if (head === undefined) return "unknown";
    // Only what the benchmarks run: the results themselves change as they go.
    const changes = await git(
      "status",
      "--porcelain",
      "--untracked-files=no",
      "--",
      ".",
      ":!bench/results.md",
      ":!bench/results.json",
      ":!README.md",
    );
    return changes === "" ? head : `${head} + changes`;
  } catch {
    return "unknown";
  }
}

function clock(): string {
  return new Date().toISOString().slice(11, 19);
}

async function runStep(
  step: Step,
  quick: boolean,
  commit: string,
): Promise<StepResult> {
  const args = [
    "run",
    "-A",
    ...(step.flags ?? []),
    step.script,
    ...(quick ? step.quick : step.args),
  ];
  const loadBefore = await loadAverage();
  console.error(
    `${clock()} ${step.title}: deno ${args.join(" ")} (load ${loadBefore})`,
  );
  const started = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args,
    cwd: new URL("../", import.meta.url),
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  // The benchmark's progress goes to stderr as it runs; its results are on
  // stdout, shown once it is done.
  const output = await child.output();
  const seconds = (performance.now() - started) / 1000;
  const stdout = new TextDecoder().decode(output.stdout).trimEnd();
  const loadAfter = await loadAverage();
  const result: StepResult = {
    key: step.key,
    title: step.title,
    command: `deno ${args.join(" ")}`,
    loadBefore,
    loadAfter,
    seconds,
    commit,
    ok: output.success,
    stdout,
  };
  if (!output.success) {
    console.error(`${clock()} ${step.title}: FAILED (exit ${output.code})`);
    if (stdout !== "") console.error(stdout);
    return result;
  }
  if (step.json) {
    // The JSON is the last line; anything before it is commentary.
    result.data = JSON.parse(stdout.split("\n").at(-1)!);
  } else {
    console.error(stdout);
  }
  console.error(
    `${clock()} ${step.title}: done in ${seconds.toFixed(0)} s\n`,
  );
  return result;
}

async function previous(): Promise<BenchResults | undefined> {
  try {
    return JSON.parse(await Deno.readTextFile(RESULTS_JSON));
  } catch {
    return undefined;
  }
}

async function write(results: BenchResults): Promise<void> {
  await Deno.writeTextFile(RESULTS, renderResults(results));
  // As `deno fmt` would have them, so that `deno fmt --check` passes.
  const fmt = await new Deno.Command(Deno.execPath(), {
    args: ["fmt", "--quiet", "bench/results.md", "bench/results.json"],
    cwd: new URL("../", import.meta.url),
  }).output();
  if (!fmt.success) throw new Error("deno fmt failed on bench/results.md");
}

async function main(): Promise<void> {
  const args = readArgs({
    render: { type: "boolean" },
    quick: { type: "boolean" },
    only: { type: "string" },
    "no-readme": { type: "boolean" },
  });
  if (args.render === true) {
    const results = await previous();
    if (results === undefined) {
      throw new Error("Cannot render: bench/results.json is missing");
    }
    await write(results);
    await updateReadme();
    console.error("Wrote bench/results.md and the README from results.json");
    return;
  }
  const quick = args.quick === true;
  const only = chooseOnly(
    args.only,
    STEPS.map((step) => step.key),
    "benchmark",
  );
  const chosen = STEPS.filter((step) => only?.includes(step.key) ?? true);
  console.error(
    `Running ${chosen.length} benchmark(s)${
      quick ? " (--quick: a check of the suite, not figures)" : ""
    }: ${chosen.map((step) => step.key).join(", ")}\n`,
  );
  const started = performance.now();
  const measured = await commit();
  const before = only === undefined ? undefined : await previous();
  const steps: StepResult[] = [];
  for (const step of STEPS) {
    if (chosen.includes(step)) steps.push(await runStep(step, quick, measured));
    else {
      const kept = before?.steps.find((s) => s.key === step.key);
      // Kept from an earlier run: at that run's commit.
      if (kept !== undefined) {
        const commit = kept.commit ?? before?.commit;
        steps.push(commit === undefined ? kept : { ...kept, commit });
      }
    }
  }
  const results: BenchResults = {
    date: new Date().toISOString(),
    commit: measured,
    quick,
    machine: {
      cpu: await cpuModel(),
      cores: navigator.hardwareConcurrency,
      os: `${Deno.build.os} ${Deno.osRelease()}`,
      deno: Deno.version.deno,
      v8: Deno.version.v8,
    },
    steps,
  };
  await Deno.writeTextFile(
    RESULTS_JSON,
    JSON.stringify(results, null, 2) + "\n",
  );
  await write(results);
  console.error(
    `Wrote bench/results.md and bench/results.json (${
      ((performance.now() - started) / 60000).toFixed(1)
    } min)`,
  );
  if (args["no-readme"] !== true) {
    await updateReadme();
    console.error("Updated the README's Benchmarks section from it");
  }
  const failed = steps.filter((step) => !step.ok);
  if (failed.length > 0) {
    console.error(
      `Failed: ${failed.map((step) => step.key).join(", ")}`,
    );
    Deno.exit(1);
  }
}

if (import.meta.main) await main();
