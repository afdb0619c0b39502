// Copyright the sse authors. MIT license.
// `deno task demo`: the demo app on http://127.0.0.1:8000 (see demo/app.ts).
//
//   deno task demo [--port 8000] [--kv PATH | --memory | --redis URL]
//                  [--tick 1000] [--token-delay 25]
//
// By default the events, and the chat history and ticker that new tabs'
// snapshots show, are kept in a Deno KV file (demo/.data/demo.sqlite3, or
// --kv PATH) through DenoKvBroker: stop the demo and start it again, and every
// open tab resumes with nothing missed. --memory keeps them in the process
// (MemoryBroker: a restart forgets them); --redis URL publishes through
// RedisBroker, keeping the snapshots and sessions in that Redis too (so that
// demos on several servers behind one Redis are one app).
//
// The port comes from --port, else the PORT environment variable, else 8000;
// 0 picks a free one. --tick is the ticker's interval and --token-delay the
// base delay between tokens of /api/complete, both in milliseconds. The first
// line on stdout is the page's URL. SIGINT (Ctrl+C) and SIGTERM end every
// stream and stop the server cleanly. A busy port or a bad option is one line
// on stderr and exit code 2.
//
// The task allows the network on 127.0.0.1, reading and writing demo/.data,
// and the PORT variable, nothing else: a --kv file elsewhere, or a Redis on
// another host, needs its own flags, e.g.
//
//   deno run --unstable-kv --allow-net=127.0.0.1 --allow-read=/tmp/sse \
//     --allow-write=/tmp/sse demo/main.ts --kv /tmp/sse/demo.sqlite3

import { dirname } from "node:path";
import { parseArgs } from "node:util";
import { argumentError } from "../_args.ts";
import { DenoKvBroker } from "../kv.ts";
import { MemoryBroker, type SSEBroker } from "../server.ts";
import { createDemo, type Demo } from "./app.ts";
import { type DemoStore, kvStore, memoryStore, redisStore } from "./store.ts";

const DEFAULT_KV = new URL("./.data/demo.sqlite3", import.meta.url).pathname;

const HELP = `SSE demo: chat rooms, a ticker and a token stream on one page.

Usage: deno task demo [options]

  --port N          port on 127.0.0.1 (default: $PORT, else 8000; 0: any free one)
  --kv PATH         keep events and snapshots in this Deno KV file
                    (default: demo/.data/demo.sqlite3)
  --memory          keep them in the process only (MemoryBroker)
  --redis URL       publish through Redis (RedisBroker), e.g. redis://127.0.0.1:6379
  --tick MS         ticker interval (default 1000)
  --token-delay MS  base delay between tokens of /api/complete (default 25)
  -h, --help        show this help

Ctrl+C stops it.`;

/** A mistake on the command line: reported in one line, exit code 2. */
class UsageError extends Error {}

/** Where the events and the snapshots' state live. */
type Backend =
  | { kind: "kv"; path: string }
  | { kind: "memory" }
  | { kind: "redis"; url: string };

interface Settings {
  port: number;
  backend: Backend;
  tickerInterval?: number;
  tokenDelay?: number;
}

// `name` as the user wrote it: an option ("--port") or a variable ("PORT").
function integer(name: string, raw: string, max: number): number {
  const value = Number(raw);
  if (!/^\d+$/.test(raw) || value > max) {
    throw new UsageError(
      `Invalid ${name}: expected an integer from 0 to ${max}, got "${raw}"`,
    );
  }
  return value;
}

function readSettings(args: string[]): Settings | "help" {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        port: { type: "string" },
        kv: { type: "string" },
        memory: { type: "boolean" },
        redis: { type: "string" },
        tick: { type: "string" },
        "token-delay": { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (error) {
    throw new UsageError(`${argumentError(error)} (see --help)`);
  }
  if (values.help) return "help";
  const chosen = ["kv", "memory", "redis"].filter((name) =>
    values[name as "kv"] !== undefined
  );
  if (chosen.length > 1) {
    throw new UsageError(
      `Choose one of --kv, --memory and --redis, got ${
        chosen.map((name) => `--${name}`).join(" and ")
      }`,
    );
  }
  let backend: Backend = { kind: "kv", path: values.kv ?? DEFAULT_KV };
  if (values.memory) backend = { kind: "memory" };
  if (values.redis !== undefined) {
    if (!/^rediss?:\/\//.test(values.redis)) {
      throw new UsageError(
        `Invalid --redis: expected a redis:// or rediss:// URL, got "${values.redis}"`,
      );
    }
    backend = { kind: "redis", url: values.redis };
  }
  if (backend.kind === "kv" && backend.path === "") {
    throw new UsageError("Invalid --kv: expected a file path");
  }
  let port = values.port;
  let portName = "--port";
  if (port === undefined) {
    portName = "PORT";
    const permission = Deno.permissions.querySync({
      name: "env",
      variable: "PORT",
    });
    port = permission.state === "granted" ? Deno.env.get("PORT") : undefined;
  }
  const settings: Settings = {
    port: port === undefined || port === ""
      ? 8000
      : integer(portName, port, 65535),
    backend,
  };
  if (values.tick !== undefined) {
    settings.tickerInterval = integer("--tick", values.tick, 3_600_000);
    if (settings.tickerInterval < 10) {
      throw new UsageError(
        `Invalid --tick: expected at least 10 ms, got ${values.tick}`,
      );
    }
  }
  if (values["token-delay"] !== undefined) {
    settings.tokenDelay = integer(
      "--token-delay",
      values["token-delay"],
      10_000,
    );
  }
  return settings;
}

/** The broker and store of a backend, and how to release them. */
interface Opened {
  broker: SSEBroker;
  store: DemoStore;
  close(): Promise<void>;
}

async function open(backend: Backend): Promise<Opened> {
  if (backend.kind === "memory") {
    const broker = new MemoryBroker();
    return { broker, store: memoryStore(), close: () => broker.close() };
  }
  if (backend.kind === "redis") {
    // Loaded only when asked for: the npm Redis client is not needed else.
    const { RedisBroker } = await import("../redis.ts");
    const { createClient } = await import("@redis/client");
    const broker = new RedisBroker({ url: backend.url });
    // The store's own connection: node-redis reconnects it by itself, and
    // the broker reports the outage, so its errors are not printed again.
    const client = createClient({ url: backend.url, RESP: 2 });
    client.on("error", () => {});
    try {
      await client.connect();
    } catch (error) {
      await broker.close();
      throw new UsageError(
        `Cannot reach ${backend.url}: ${(error as Error).message}`,
      );
    }
    return {
      broker,
      store: redisStore((args) => client.sendCommand(args)),
      async close() {
        await broker.close();
        await client.close();
      },
    };
  }
  let kv: Deno.Kv;
  try {
    await Deno.mkdir(dirname(backend.path), { recursive: true });
    kv = await Deno.openKv(backend.path);
  } catch (error) {
    if (
      error instanceof Deno.errors.NotCapable ||
      error instanceof Deno.errors.PermissionDenied
    ) {
      throw new UsageError(
        `Cannot open ${backend.path}: allow reading and writing ${
          dirname(backend.path)
        } (--allow-read, --allow-write; the task allows demo/.data)`,
      );
    }
    throw new UsageError(
      `Cannot open ${backend.path}: ${(error as Error).message}`,
    );
  }
  const broker = new DenoKvBroker({ kv });
  return {
    broker,
    store: kvStore(kv),
    async close() {
      await broker.close();
      kv.close();
    },
  };
}

let settings: Settings | "help";
let opened: Opened | undefined;
let demo: Demo;
try {
  settings = readSettings(Deno.args);
  if (settings === "help") {
    console.log(HELP);
    Deno.exit(0);
  }
  opened = await open(settings.backend);
  demo = await createDemo({
    broker: opened.broker,
    store: opened.store,
    ...(settings.tickerInterval === undefined
      ? {}
      : { tickerInterval: settings.tickerInterval }),
    ...(settings.tokenDelay === undefined
      ? {}
      : { tokenDelay: settings.tokenDelay }),
  });
} catch (error) {
  await opened?.close();
  // One line, never a stack trace.
  console.error(
    error instanceof UsageError
      ? error.message
      : `demo: ${(error as Error).message}`,
  );
  Deno.exit(2);
}

let server: Deno.HttpServer;
try {
  server = Deno.serve({
    hostname: "127.0.0.1",
    port: settings.port,
    onListen({ port }) {
      console.log(`SSE demo on http://127.0.0.1:${port}/`);
      const where = settings.backend.kind === "kv"
        ? `kept in ${settings.backend.path} (Deno KV)`
        : settings.backend.kind === "redis"
        ? `published through ${settings.backend.url}`
        : "kept in memory";
      console.log(`Events ${where}. Ctrl+C stops it.`);
    },
  }, demo.handler);
} catch (error) {
  await demo.close();
  await opened.close();
  console.error(
    error instanceof Deno.errors.AddrInUse
      ? `port ${settings.port} is in use: pass --port`
      : `demo: cannot listen on 127.0.0.1:${settings.port}: ${
        (error as Error).message
      }`,
  );
  Deno.exit(2);
}

/** Milliseconds Ctrl+C waits for open connections once every stream ended. */
const SHUTDOWN_GRACE = 1_000;
let stopping: Promise<void> | undefined;
function stop(): void {
  stopping ??= (async () => {
    Deno.removeSignalListener("SIGINT", stop);
    Deno.removeSignalListener("SIGTERM", stop);
    // Streams end first: the server's shutdown waits for open responses.
    await demo.close();
    // The channel cuts a stream whose peer never reads, but Deno closes
    // that connection only once the peer reads again: wait for the server
    // at most SHUTDOWN_GRACE ms, then leave without it.
    let timer: ReturnType<typeof setTimeout> | undefined;
    const late = await Promise.race([
      server.shutdown().then(() => false),
      new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(true), SHUTDOWN_GRACE);
      }),
    ]);
    clearTimeout(timer);
    if (late) {
      console.error(
        `demo: stopped without waiting for a client that does not read`,
      );
      await opened?.close();
      Deno.exit(0);
    }
  })();
}
Deno.addSignalListener("SIGINT", stop);
Deno.addSignalListener("SIGTERM", stop);
await server.finished;
await stopping;
await opened.close();
