// Copyright the sse authors. MIT license.
// Memory per idle streaming connection on Deno, variant by variant (see
// probe_server.ts): RSS, JS heap and V8 external growth divided by N.
//
//   deno run -A bench/fanout/memory_probe.ts [--n 10000] [--variants tcp,stream,...]
//     [--accept-encoding "gzip, deflate, br, zstd"] [--publish 3]
//     [--deno-flags="--v8-flags=..."] (the server's, with "=" as they start with "-")
//
// Every figure is growth per connection, in KiB, between N/10 and N clients
// (so one-time costs of the first connections are left out): "idle" once the
// N clients have idled 1 s, "after events" once `--publish` small events have
// gone to every client. A GC runs before each reading.

import { readArgs } from "../_args.ts";
import { Child, live } from "./_child.ts";

const FANOUT = new URL("./", import.meta.url);
const ALL = [
  "tcp",
  "pending",
  "stream",
  "hwm0",
  "bytes",
  "signal",
  "headers",
  "timer",
  "transform",
  "encoder",
  "closures",
  "notransform",
  "channel",
];

const args = readArgs({
  n: { type: "string" },
  variants: { type: "string" },
  "accept-encoding": { type: "string" },
  publish: { type: "string" },
  "deno-flags": { type: "string" },
});
const n = Number(args.n ?? 10000);
const variants = args.variants?.split(",") ?? ALL;
const acceptEncoding = args["accept-encoding"];
const publishes = Number(args.publish ?? 3);
const extraFlags = args["deno-flags"]?.split(" ").filter(Boolean) ?? [];

interface Reading {
  rss: number;
  heapUsed: number;
  heapTotal: number;
  external: number;
  connected: number;
}

async function probe(variant: string): Promise<string> {
  const server = new Child(variant, [
    Deno.execPath(),
    "run",
    "--allow-net=127.0.0.1",
    "--v8-flags=--expose-gc",
    ...extraFlags,
    new URL("probe_server.ts", FANOUT).pathname,
    "--variant",
    variant,
  ]);
  let clients: Child | undefined;
  const stats = async () => {
    await server.send("stats");
    return await server.message("stats", 10_000) as unknown as Reading;
  };
  const settle = (ms: number) =>
    new Promise((resolve) => setTimeout(resolve, ms));
  try {
    const { port } = await server.message("listening", 30_000);
    clients = new Child("clients", [
      Deno.execPath(),
      "run",
      "--allow-net=127.0.0.1",
      new URL("clients.ts", FANOUT).pathname,
      ...["--port", String(port), "--n", String(n), "--events", "0"],
      ...["--pause-at", String(Math.floor(n / 10))],
      ...(acceptEncoding === undefined
        ? []
        : ["--accept-encoding", acceptEncoding]),
      ...(variant === "pending" ? ["--no-head", "1"] : []),
    ]);
    // From N/10 to N clients: the cost of one more, without one-time costs.
    const paused = await clients.message("paused", 120_000);
    await settle(1000);
    const before = await stats();
    await clients.send("continue");
    const opened = await clients.message("connected", 120_000);
    await settle(1000);
    const idle = await stats();
    for (let i = 0; i < publishes; i++) {
      await server.send("publish");
      await settle(300);
    }
    await settle(700);
    const after = await stats();
    const added = (opened.connected as number) - (paused.connected as number);
    const per = (reading: Reading, key: keyof Reading) =>
      ((reading[key] - before[key]) / added / 1024).toFixed(1);
    const compressed = opened.compressed as number;
    return `| ${variant} | ${opened.connected}/${idle.connected}${
      compressed > 0 ? ` (${compressed} compressed)` : ""
    } | ${per(idle, "rss")} | ${per(idle, "heapUsed")} | ${
      per(idle, "heapTotal")
    } | ${per(after, "rss")} | ${per(after, "heapUsed")} |`;
  } finally {
    await clients?.stop(0);
    await server.stop(0);
    if (server.stderr.trim()) {
      console.error(`${variant}: ${server.stderr.trim()}`);
    }
  }
}

console.log(
  `N = ${n}, accept-encoding ${acceptEncoding ?? "(none)"}, load average ${
    Deno.loadavg().map((value) => value.toFixed(2)).join(", ")
  }`,
);
console.log(
  "| variant | clients/held | idle RSS KiB/conn | idle JS heap used | " +
    "idle JS heap committed | RSS after events | JS heap used after |",
);
console.log("|" + " --- |".repeat(7));
for (const variant of variants) {
  try {
    console.log(await probe(variant));
  } catch (error) {
    console.log(
      `| ${variant} | failed: ${(error as Error).message} | | | | | |`,
    );
  }
}
if (live.size > 0) await Promise.all([...live].map((child) => child.stop(0)));
