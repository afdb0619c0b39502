// Copyright the sse authors. MIT license.
// SSEChannel and sseResponse served by Bun.serve from the TypeScript sources
// (tests/runtime/bun_serve.ts): every scenario of tests/runtime/_served.ts
// over real sockets (disconnects noticed, resume with Last-Event-ID, a client
// that stops reading dropped while a reader gets everything, sseResponse read
// only as fast as its client), and Bun's idle timeout: Bun.serve closes a
// connection idle for `idleTimeout` seconds (10 by default), an event stream
// waiting for events too, unless `idleTimeout` is 0.
//
// Bun comes from `.ci/runtimes`.

import assert from "node:assert/strict";
import { SSEParserStream } from "../parser.ts";
import {
  assertPresent,
  BUN,
  ignoreWithout,
  startServer,
} from "./runtime/_runtimes.ts";
import {
  HEAD_BEFORE_EVENTS,
  printed,
  runScenarios,
  SCENARIOS,
} from "./runtime/_served.ts";

// Deno 2.9 runs tests with the op and resource sanitizers off unless asked.
const SANITIZED = { sanitizeOps: true, sanitizeResources: true } as const;
const SERVE = "tests/runtime/bun_serve.ts";

function bunTest(
  name: string,
  fn: (t: Deno.TestContext) => Promise<void>,
) {
  Deno.test({
    name,
    ...SANITIZED,
    ignore: ignoreWithout(name, [BUN]),
    async fn(t) {
      assertPresent([BUN]);
      await fn(t);
    },
  });
}

/**
 * Runs `scenarios` against sse_app served by Bun.serve with `args`; Bun
 * prints nothing meanwhile (a stream the channel cuts included: its reason
 * is `undefined` on Bun, for which Bun prints nothing).
 */
async function serveScenarios(
  t: Deno.TestContext,
  scenarios = SCENARIOS,
  args: string[] = [],
) {
  const server = await startServer(BUN, [SERVE, ...args]);
  let output: string | undefined;
  try {
    await runScenarios(t, server.url, { cutsPendingWrite: false }, scenarios);
  } finally {
    output = await server.stop();
  }
  assert.deepEqual(printed(output), []);
}

bunTest(
  "Bun.serve serves SSEChannel and sseResponse from the TypeScript sources",
  (t) =>
    serveScenarios(
      t,
      SCENARIOS.filter((scenario) => scenario !== HEAD_BEFORE_EVENTS),
    ),
);

// Bun 1.4.5's Bun.serve writes the status line and headers of a streaming
// response but holds the blank line that ends them until the first body
// byte. SSEChannel writes an empty comment at connect when nothing else goes
// first (no `retry`, no `init` message, nothing to replay), and sseResponse
// when it has no `retry` (the scenario "sseResponse's response head arrives
// before its source yields anything" above); before, a client's `open`
// waited for the first event or keep-alive comment (15 s by default).
bunTest(
  "Bun.serve sends SSEChannel's response head before any event is published",
  (t) => serveScenarios(t, [HEAD_BEFORE_EVENTS]),
);

// With a retry, the retry field goes first.
bunTest(
  "Bun.serve sends SSEChannel's response head before any event is published when the channel has a retry",
  (t) => serveScenarios(t, [HEAD_BEFORE_EVENTS], ["10", "0", "3000"]),
);

/**
 * How long the idle streams wait: Bun checks timeouts every 4 s or so, so a
 * stream idle for 1 s may be closed up to 5 s after it opened, later on a
 * busy machine.
 */
const IDLE_WAIT = 9000;

/**
 * Opens an SSEChannel event stream (no keep-alive) on Bun.serve with
 * `idleTimeout` (s), waits IDLE_WAIT ms with nothing published, and resolves
 * to whether the stream is still open.
 */
async function openAfterIdle(idleTimeout: number): Promise<boolean> {
  const server = await startServer(BUN, [SERVE, String(idleTimeout), "0"]);
  try {
    const abort = new AbortController();
    let ended = false;
    let reader: ReadableStreamDefaultReader<unknown> | undefined;
    // The head may come only with the first body byte (see above).
    const reading = fetch(`${server.url}/events?name=idle`, {
      signal: abort.signal,
    }).then(async (response) => {
      reader = response.body!.pipeThrough(new SSEParserStream()).getReader();
      ended = (await reader.read()).done;
    }).catch(() => ended = true);
    await new Promise((resolve) => setTimeout(resolve, IDLE_WAIT));
    const open = !ended;
    abort.abort();
    await reader?.cancel().catch(() => {});
    await reading;
    return open;
  } finally {
    await server.stop();
  }
}

bunTest(
  "Bun.serve closes an SSEChannel stream idle for its idleTimeout, and keeps it with idleTimeout 0",
  async () => {
    const [closing, disabled] = await Promise.all([
      openAfterIdle(1),
      openAfterIdle(0),
    ]);
    assert.equal(closing, false, "idleTimeout 1: the stream is still open");
    assert.equal(disabled, true, "idleTimeout 0: the stream was closed");
  },
);
