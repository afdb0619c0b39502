// Copyright the sse authors. MIT license.
// The Cloudflare Workers example (examples/cloudflare/worker.ts), bundled and
// run in workerd through Miniflare (tests/runtime/miniflare_serve.mjs), driven
// over real sockets: an SSEChannel in one Durable Object per channel, with
// requests routed to it by name, and a plain Worker answering a one-off
// sseResponse.
//
// Node and Miniflare come from `.ci/runtimes`.

import assert from "node:assert/strict";
import { type SSEEvent, SSEParserStream } from "../parser.ts";
import {
  assertPresent,
  ignoreWithout,
  NODE22,
  runtimePackage,
  RUNTIMES,
  type ServerProcess,
  startServer,
  withBundle,
} from "./runtime/_runtimes.ts";

// Deno 2.9 runs tests with the op and resource sanitizers off unless asked.
const SANITIZED = { sanitizeOps: true, sanitizeResources: true } as const;
const WORKER = "examples/cloudflare/worker.ts";
const SERVE = "tests/runtime/miniflare_serve.mjs";
const NEEDS = [NODE22, runtimePackage("miniflare")];
const WAIT = 10_000;

/** Reads one event, or fails naming `what` after WAIT ms. */
async function next(
  reader: ReadableStreamDefaultReader<SSEEvent>,
  what: string,
): Promise<SSEEvent> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    const { value, done } = await Promise.race([
      reader.read(),
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`Timed out after ${WAIT} ms: ${what}`)),
          WAIT,
        );
      }),
    ]);
    assert.ok(!done, `the stream ended before ${what}`);
    return value;
  } finally {
    clearTimeout(timer);
  }
}

/** Opens an event stream; resolves once its response head arrived. */
async function open(
  url: string,
  headers: HeadersInit = {},
): Promise<ReadableStreamDefaultReader<SSEEvent>> {
  const response = await fetch(url, { headers });
  assert.equal(response.status, 200);
  assert.equal(
    response.headers.get("content-type"),
    "text/event-stream; charset=utf-8",
  );
  return response.body!.pipeThrough(new SSEParserStream()).getReader();
}

async function publish(base: string, channel: string, data: string) {
  const response = await fetch(`${base}/channels/${channel}/publish`, {
    method: "POST",
    body: data,
  });
  assert.equal(response.status, 200);
  return (await response.json() as { id: string }).id;
}

/** Runs `fn` against the example served by workerd. */
function workersTest(
  name: string,
  fn: (base: string) => Promise<void>,
): void {
  Deno.test({
    name,
    ...SANITIZED,
    ignore: ignoreWithout(name, NEEDS),
    async fn() {
      assertPresent(NEEDS);
      await withBundle(WORKER, "worker.js", async (bundle) => {
        const server: ServerProcess = await startServer(
          NODE22,
          [SERVE, RUNTIMES.pathname, bundle],
          { stopSignal: "SIGTERM" },
        );
        try {
          await fn(server.url);
        } finally {
          await server.stop();
        }
      });
    },
  });
}

workersTest(
  "two clients of a channel's Durable Object receive a publish made through another request, and another channel's client does not",
  async (base) => {
    const first = await open(`${base}/channels/news/events`);
    const second = await open(`${base}/channels/news/events`);
    const other = await open(`${base}/channels/sport/events`);
    try {
      const id = await publish(base, "news", "hello");
      for (const reader of [first, second]) {
        assert.deepEqual(await next(reader, "the news"), {
          type: "message",
          data: "hello",
          id,
        });
      }
      const sport = await publish(base, "sport", "goal");
      assert.deepEqual(await next(other, "the sport event"), {
        type: "message",
        data: "goal",
        id: sport,
      });
    } finally {
      await Promise.all([first, second, other].map((r) => r.cancel()));
    }
  },
);

workersTest(
  "a client that reconnects to a channel's Durable Object with Last-Event-ID gets exactly what it missed",
  async (base) => {
    const seen = await publish(base, "news", "one");
    const missed = [
      await publish(base, "news", "two"),
      await publish(base, "news", "three"),
    ];
    const reader = await open(`${base}/channels/news/events`, {
      "last-event-id": seen,
    });
    try {
      assert.deepEqual(await next(reader, "the first missed event"), {
        type: "message",
        data: "two",
        id: missed[0],
      });
      assert.deepEqual(await next(reader, "the second missed event"), {
        type: "message",
        data: "three",
        id: missed[1],
      });
      const live = await publish(base, "news", "four");
      assert.equal((await next(reader, "the live event")).id, live);
    } finally {
      await reader.cancel();
    }
  },
);

workersTest(
  "the plain Worker streams a one-off sseResponse, token by token",
  async (base) => {
    const reader = await open(`${base}/stream?q=workerd`);
    const events: SSEEvent[] = [];
    for (;;) {
      const event = await next(reader, "the next token");
      events.push(event);
      if (event.type === "done") break;
    }
    await reader.cancel();
    assert.deepEqual(events.map((event) => event.id), [
      "0",
      "1",
      "2",
      "3",
      "4",
      "4",
    ]);
    assert.equal(
      events.slice(0, -1).map((event) => JSON.parse(event.data).token).join(
        "",
      ),
      "Hello from a Worker: workerd",
    );
  },
);
