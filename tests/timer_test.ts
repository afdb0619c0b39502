// Copyright the sse authors. MIT license.
// Delays longer than a timer can hold. Deno, Node and Bun store a timer's
// delay in a signed 32-bit integer: a longer one fires after 1 ms and prints a
// TimeoutOverflowWarning on stderr. Every delay the library arms, from an
// option or from a server's `retry` field, goes through _timer.ts, which arms
// nothing for such a delay ("never"). Each check runs in a child process, so
// that its stderr can be read whole.
import assert from "node:assert/strict";
import { test } from "./_sse_server.ts";

const ROOT = new URL("../", import.meta.url);

/**
 * Runs `body` (a module body with `mod` bound to the library's mod.ts and a
 * `serve(handler)` helper) in a child Deno, and returns what it printed.
 */
async function child(
  body: string,
): Promise<{ code: number; result: unknown; stderr: string }> {
  const program = `
    import * as mod from ${JSON.stringify(new URL("mod.ts", ROOT).href)};
    const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
    function serve(handler) {
      const server = Deno.serve(
        { hostname: "127.0.0.1", port: 0, onListen() {} },
        handler,
      );
      server.url = "http://127.0.0.1:" + server.addr.port + "/";
      return server;
    }
    const result = await (async () => { ${body} })();
    console.log(JSON.stringify(result));
  `;
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-check", program],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const text = new TextDecoder();
  const stdout = text.decode(output.stdout).trim();
  return {
    code: output.code,
    result: stdout === "" ? undefined : JSON.parse(stdout.split("\n").at(-1)!),
    stderr: text.decode(output.stderr),
  };
}

// How long each child watches for an early fire: a broken timer fires after
// 1 ms, so this is hundreds of times the delay it would show.
const WATCH = 300;

test("SSEClient with idleTimeout 2 ** 31 keeps a quiet connection, and prints nothing", async () => {
  const { code, result, stderr } = await child(`
    const server = serve(() => new Response(
      new ReadableStream({ start(c) { c.enqueue(new TextEncoder().encode("data: a\\n\\n")); } }),
      { headers: { "content-type": "text/event-stream" } },
    ));
    const errors = [];
    const client = new mod.SSEClient(server.url, {
      idleTimeout: 2 ** 31,
      onError: (error) => errors.push(error.message),
    });
    const iterator = client[Symbol.asyncIterator]();
    const first = await iterator.next();
    await sleep(${WATCH});
    const state = client.readyState;
    client.close();
    await server.shutdown();
    return { first: first.value.data, errors, state };
  `);
  assert.equal(stderr, "");
  assert.equal(code, 0);
  assert.deepEqual(result, { first: "a", errors: [], state: 1 });
});

test("SSEClient and EventSource wait for a server's retry: 4294967296 without reconnecting early, and print nothing", async () => {
  const { code, result, stderr } = await child(`
    let requests = 0;
    const server = serve(() => {
      requests++;
      return new Response("retry: 4294967296\\ndata: a\\n\\n", {
        headers: { "content-type": "text/event-stream" },
      });
    });
    const retries = [];
    const client = new mod.SSEClient(server.url, {
      onRetry: (ms) => retries.push(ms),
    });
    const iterator = client[Symbol.asyncIterator]();
    await iterator.next();
    const next = iterator.next();
    await sleep(${WATCH});
    const clientRequests = requests;
    client.close();
    await next;
    const source = new mod.EventSource(server.url);
    const errors = [];
    source.onerror = () => errors.push(source.readyState);
    await new Promise((resolve) => source.onmessage = resolve);
    await sleep(${WATCH});
    source.close();
    await server.shutdown();
    return { retries, clientRequests, sourceRequests: requests - clientRequests, errors };
  `);
  assert.equal(stderr, "");
  assert.equal(code, 0);
  // One request each: the stream ended and asked for 2^32 ms before the
  // next, which waits as long as a timer can: 2^31 - 1 ms.
  assert.deepEqual(result, {
    retries: [2147483647],
    clientRequests: 1,
    sourceRequests: 1,
    errors: [0],
  });
});

test("sseResponse and SSEChannel with keepAlive 2 ** 32 send no keep-alive, and print nothing", async () => {
  const { code, result, stderr } = await child(`
    async function readFor(response, ms) {
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let text = "";
      const deadline = sleep(ms).then(() => "timeout");
      while (true) {
        const read = await Promise.race([reader.read(), deadline]);
        if (read === "timeout" || read.done) break;
        text += decoder.decode(read.value, { stream: true });
      }
      await reader.cancel();
      return text;
    }
    const response = mod.sseResponse(
      new ReadableStream({ start(c) { c.enqueue({ data: "a" }); } }),
      { keepAlive: 2 ** 32 },
    );
    const single = await readFor(response, ${WATCH});
    const channel = new mod.SSEChannel({ keepAlive: 2 ** 32 });
    const connected = await channel.connect(new Request("http://localhost/events"));
    const broadcast = await readFor(connected, ${WATCH});
    await channel.close();
    return { single, broadcast };
  `);
  assert.equal(stderr, "");
  assert.equal(code, 0);
  const { single, broadcast } = result as { single: string; broadcast: string };
  // The opening comment (no retry), then the message, and no keep-alive.
  assert.equal(single, ":\n\ndata: a\n\n");
  assert.doesNotMatch(broadcast, /keep-alive/);
});

test("A script whose main loop iterates an SSEClient waits out a server's retry: 2147483648 instead of exiting", async () => {
  // The script's only pending work is the iteration: after the stream ends,
  // the reconnection timer is what keeps it alive.
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () =>
      new Response("retry: 2147483648\ndata: a\n\n", {
        headers: { "content-type": "text/event-stream" },
      }),
  );
  const program = `
    import { SSEClient } from ${
    JSON.stringify(new URL("client.ts", ROOT).href)
  };
    const client = new SSEClient("http://127.0.0.1:${server.addr.port}/", {
      onRetry: (ms) => console.log("retry " + ms),
    });
    for await (const event of client) console.log("event " + event.data);
  `;
  const process = new Deno.Command(Deno.execPath(), {
    args: ["eval", "--no-check", program],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const lines = process.stdout.pipeThrough(new TextDecoderStream())
    .getReader();
  let out = "";
  while (!out.includes("retry ")) {
    const { done, value } = await lines.read();
    if (done) break;
    out += value;
  }
  // Before: "Top-level await promise never resolved", exit code 1, at once.
  const exited = await Promise.race([
    process.status.then((status) => `exited with ${status.code}`),
    new Promise((resolve) => setTimeout(resolve, WATCH, "running")),
  ]);
  if (exited === "running") process.kill();
  await process.status;
  await lines.cancel();
  const stderr = await new Response(process.stderr).text();
  await server.shutdown();
  assert.equal(exited, "running", stderr);
  assert.equal(out, "event a\nretry 2147483647\n");
  assert.equal(stderr, "");
});
