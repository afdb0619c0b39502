// Copyright the sse authors. MIT license.
// SSEChannel keeps listening to `connect`'s `signal` once the client is
// answered (workerd tells a leave only through it: tests/workers_faults_test.ts).
// Over Deno.serve with `request.signal` passed, as the README says: a client
// that leaves is released once, as "client-closed"; clients the channel ends
// keep their own reason, each reported once, whatever the signal does after.

import assert from "node:assert/strict";
import { SSEChannel } from "../server.ts";
import { SSEParserStream } from "../parser.ts";
import { serve, test, until } from "./_channel.ts";

test("SSEChannel with request.signal releases a client that leaves once answered, and keeps the reason of those it ends", async () => {
  const reasons: string[] = [];
  const channel = new SSEChannel<string>({
    keepAlive: 0,
    onConnect: (request) => new URL(request.url).searchParams.get("name")!,
    onDisconnect: (name, { reason }) => reasons.push(`${name}: ${reason}`),
  });
  const server = serve((request) =>
    channel.connect(request, { signal: request.signal })
  );
  const open = async (name: string) => {
    const abort = new AbortController();
    const response = await fetch(`${server.url}/?name=${name}`, {
      signal: abort.signal,
    });
    assert.equal(response.status, 200);
    return {
      abort,
      reader: response.body!.pipeThrough(new SSEParserStream()).getReader(),
    };
  };
  try {
    const [ended, leaving, closed] = [
      await open("ended"),
      await open("leaving"),
      await open("closed"),
    ];
    await until(() => channel.size === 3, "three clients");
    const id = await channel.publish({ data: "1" });
    for (const client of [ended, leaving, closed]) {
      assert.equal((await client.reader.read()).value?.id, id);
    }
    assert.equal(channel.disconnect((client) => client.context === "ended"), 1);
    assert.equal((await ended.reader.read()).done, true);
    await leaving.reader.cancel();
    leaving.abort.abort();
    await until(() => channel.size === 1, "the client that left is released");
    await channel.close();
    assert.equal((await closed.reader.read()).done, true);
    // Whatever fires late (the signals of responses that completed) ends
    // nothing more.
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.deepEqual(reasons, [
      "ended: disconnected",
      "leaving: client-closed",
      "closed: channel-closed",
    ]);
    assert.equal(channel.size, 0);
  } finally {
    await channel.close();
    await server.shutdown();
  }
});
