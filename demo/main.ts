// Copyright the sse authors. MIT license.
// `deno task demo`: the demo app on http://127.0.0.1:8000 (see demo/app.ts).
//
//   deno run --allow-net=127.0.0.1 --allow-env=PORT demo/main.ts [--port 8000]
//     [--tick 1000] [--token-delay 25]
//
// The port comes from --port, else the PORT environment variable, else 8000;
// 0 picks a free one. --tick is the ticker's interval and --token-delay the
// base delay between tokens of /api/complete, both in milliseconds. The first line on stdout is the page's URL. SIGINT and
// SIGTERM end every stream and stop the server cleanly.

import { createDemo, type Demo } from "./app.ts";

/** The value of `--name value` or `--name=value`, if given. */
function option(name: string): string | undefined {
  let value: string | undefined;
  for (const [index, arg] of Deno.args.entries()) {
    if (arg === `--${name}`) value = Deno.args[index + 1] ?? "";
    else if (arg.startsWith(`--${name}=`)) value = arg.slice(name.length + 3);
  }
  return value;
}

function integer(name: string, raw: string, max: number): number {
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || value > max) {
    throw new RangeError(
      `Invalid ${name}: expected an integer from 0 to ${max}, got "${raw}"`,
    );
  }
  return value;
}

function parsePort(): number {
  let raw = option("port");
  if (raw === undefined) {
    const permission = Deno.permissions.querySync({
      name: "env",
      variable: "PORT",
    });
    raw = permission.state === "granted" ? Deno.env.get("PORT") : undefined;
  }
  if (raw === undefined || raw === "") return 8000;
  return integer("port", raw, 65535);
}

let port: number;
let demo: Demo;
try {
  port = parsePort();
  const tick = option("tick");
  const tokenDelay = option("token-delay");
  demo = createDemo({
    ...(tick === undefined
      ? {}
      : { tickerInterval: integer("tick", tick, 3_600_000) }),
    ...(tokenDelay === undefined
      ? {}
      : { tokenDelay: integer("token-delay", tokenDelay, 10_000) }),
  });
} catch (error) {
  console.error((error as Error).message);
  Deno.exit(2);
}

const server = Deno.serve({
  hostname: "127.0.0.1",
  port,
  onListen({ port }) {
    console.log(`SSE demo on http://127.0.0.1:${port}/`);
  },
}, demo.handler);

let stopping: Promise<void> | undefined;
function stop(): void {
  stopping ??= (async () => {
    Deno.removeSignalListener("SIGINT", stop);
    Deno.removeSignalListener("SIGTERM", stop);
    // Streams end first: the server's shutdown waits for open responses.
    await demo.close();
    await server.shutdown();
  })();
}
Deno.addSignalListener("SIGINT", stop);
Deno.addSignalListener("SIGTERM", stop);
await server.finished;
await stopping;
