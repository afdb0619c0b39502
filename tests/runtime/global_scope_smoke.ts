// Copyright the sse authors. MIT license.
// Objects made at a module's top level, as a Worker makes them. workerd
// refuses random values, timers and I/O in global scope ("Disallowed operation
// called within global scope"), so constructors must leave those to first
// use. This module's top level runs when the Worker starts: if a constructor
// broke that rule, the Worker would not start at all.

import {
  BroadcastChannelBroker,
  MemoryBroker,
  SSEChannel,
} from "../../server.ts";
import { SSEParserStream } from "../../parser.ts";
import type { Smoke } from "./smoke.ts";

const channel = new SSEChannel({ keepAlive: 0 });
const broker = new MemoryBroker();
// Constructed only: workerd has no BroadcastChannel to use it with.
const broadcast = new BroadcastChannelBroker();

export const globalScopeSmoke: Smoke = {
  module: "global scope",
  async run() {
    const live = (await channel.connect(new Request("https://example.com/")))
      .body!.pipeThrough(new SSEParserStream()).getReader();
    const id = await channel.publish({ data: "hello" });
    const event = (await live.read()).value;
    await channel.close();
    const ended = (await live.read()).done;

    const first = await broker.publish("s", {
      topic: "",
      message: { data: "a" },
    }, { replay: 10 });
    const second = await broker.publish("s", {
      topic: "",
      message: { data: "b" },
    }, { replay: 10 });
    const page = await broker.history("s", { after: first, limit: 10 });
    const replayed = page?.map((entry) => entry.id) ?? [];
    await broker.close();
    await broadcast.close();

    return {
      channel: [event?.data, event?.id === id, ended],
      // Ids keep their form: a random prefix, a dash, a sequence number.
      ids: [/^m[0-9a-z]{8}-1$/.test(first), /-2$/.test(second)],
      resumed: page !== null,
      replayed: replayed.length === 1 && replayed[0] === second,
    };
  },
  expected: {
    channel: ["hello", true, true],
    ids: [true, true],
    resumed: true,
    replayed: true,
  },
};
