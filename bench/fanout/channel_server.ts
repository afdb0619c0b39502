// Copyright the sse authors. MIT license.
// SSEChannel from server.ts with its defaults (MemoryBroker, replay window of
// 1 000, one keep-alive timer for the channel, 1 MiB maxQueue per client):
// every publish goes through the broker, gets an id, is encoded once and
// enqueued to every client.
//
//   deno run --allow-net=127.0.0.1 --v8-flags=--expose-gc bench/fanout/channel_server.ts

import { SSEChannel } from "../../server.ts";
import { serveFanout } from "./_serve.ts";

const channel = new SSEChannel();

serveFanout({
  connect: (request) => channel.connect(request),
  publish: (data) => channel.publish({ data }),
  connected: () => channel.size,
});
