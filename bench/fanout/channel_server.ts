// Copyright the sse authors. MIT license.
// SSEChannel from server.ts with its defaults (MemoryBroker, replay window of
// 1 000, one keep-alive timer for the channel, 1 MiB maxQueue per client):
// every publish goes through the broker, gets an id, is encoded once and
// enqueued to every client. `--module` loads SSEChannel from another copy of
// the library (an older commit, to compare in one run).
//
//   deno run --allow-net=127.0.0.1 --allow-read --v8-flags=--expose-gc \
//     bench/fanout/channel_server.ts [--module /path/to/server.ts]

import type { SSEChannel as Channel } from "../../server.ts";
import { readArgs } from "../_args.ts";
import { serveFanout } from "./_serve.ts";

const args = readArgs({
  module: { type: "string" },
  port: { type: "string" },
});
const module = args.module === undefined
  ? "../../server.ts"
  : new URL(args.module, `file://${Deno.cwd()}/`).href;
const { SSEChannel } = await import(module) as {
  SSEChannel: typeof Channel;
};
const channel = new SSEChannel();

serveFanout({
  connect: (request) => channel.connect(request),
  publish: (data) => channel.publish({ data }),
  connected: () => channel.size,
}, args.port);
