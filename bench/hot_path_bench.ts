// Copyright the sse authors. MIT license.
// The fan-out's hot path on Deno, Node and Bun, without sockets: CPU time per
// client per event of SSEChannel against a hand-written loop, in one process
// per runtime (bench/fanout/hot_path.mjs), so that what the library itself
// costs shows apart from the HTTP server and the kernel, which the end-to-end
// fan-out (bench/fanout_bench.ts) counts too.
//
//   deno run -A bench/hot_path_bench.ts [--n 10000] [--rounds 100] [--runs 7]
//
// Each runtime runs `--runs` interleaved runs of each variant, each run
// `--rounds` events to `--n` clients after a warm-up; the figure is the
// median run, with the lowest and highest. Deno runs server.ts itself; Node
// and Bun its bundle (`deno bundle`), as bench/fanout_bench.ts does.

import { positive, readArgs } from "./_args.ts";
import {
  BUN,
  bundleLibrary,
  ensureRuntimes,
  NODE,
  version,
} from "./fanout/_runtimes.ts";

const ROOT = new URL("../", import.meta.url);
const HOT_PATH = new URL("fanout/hot_path.mjs", import.meta.url).pathname;

interface Variant {
  ns: number;
  min: number;
  max: number;
}

async function measure(
  argv: string[],
  library: string,
  settings: string[],
): Promise<{ hand: Variant; channel: Variant }> {
  const [command, ...args] = argv;
  const { success, stdout, stderr } = await new Deno.Command(command!, {
    args: [...args, HOT_PATH, "--library", library, ...settings],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(stdout).trim();
  if (!success) {
    throw new Error(
      `${command} ${HOT_PATH} failed: ${new TextDecoder().decode(stderr)}`,
    );
  }
  return JSON.parse(text.split("\n").at(-1)!);
}

const ARGS = readArgs({
  n: { type: "string" },
  rounds: { type: "string" },
  runs: { type: "string" },
});
const explain = { explain: true };
const n = positive(ARGS.n, "n", 10_000, explain);
const rounds = positive(ARGS.rounds, "rounds", 100, explain);
const runs = positive(ARGS.runs, "runs", 7, explain);
const settings = [
  "--n",
  String(n),
  "--rounds",
  String(rounds),
  "--runs",
  String(runs),
];
const runtimes: [string, string[], string][] = [[
  `Deno ${Deno.version.deno}`,
  [Deno.execPath(), "run", "-A"],
  new URL("server.ts", ROOT).pathname,
]];
const dir = await Deno.makeTempDir({ prefix: "sse-hot-path-" });
try {
  if (await ensureRuntimes()) {
    const bundle = await bundleLibrary(
      dir,
      new URL("server.ts", ROOT).pathname,
      "server.js",
    );
    runtimes.push(
      [`Node ${await version(NODE.pathname)}`, [NODE.pathname], bundle],
      [`Bun ${await version(BUN.pathname)}`, [BUN.pathname], bundle],
    );
  } else {
    console.error("Bun and Node are missing: measuring Deno alone");
  }
  const range = (v: Variant) => `${v.ns} (${v.min}–${v.max})`;
  const lines = [
    `${
      n.toLocaleString("en-US")
    } clients, one event to all, ${rounds} events a run, ${runs} run${
      runs === 1 ? "" : "s"
    } interleaved; load average ${
      Deno.loadavg().map((x) => x.toFixed(2)).join(", ")
    }`,
    "",
    "| runtime | hand-written loop ns | SSEChannel ns | SSEChannel / loop |",
    "| --- | ---: | ---: | ---: |",
  ];
  for (const [name, argv, library] of runtimes) {
    console.error(`hot path: ${name}`);
    const { hand, channel } = await measure(argv, library, settings);
    lines.push(
      `| ${name} | ${range(hand)} | ${range(channel)} | ${
        (channel.ns / hand.ns).toFixed(2)
      }× |`,
    );
  }
  lines.push(
    "",
    "ns: CPU time (user and system) per client per event, the median run " +
      "and the lowest and highest.",
  );
  console.log(lines.join("\n"));
} finally {
  await Deno.remove(dir, { recursive: true });
}
