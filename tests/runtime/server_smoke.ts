// Copyright the sse authors. MIT license.
// server.ts on every runtime: sseResponse's headers and frames, a
// ReadableStream source, keep-alive comments, an abort that closes the
// source, and an SSEChannel with live fan-out, resume and close. serve() is
// also sent by the runtime's own HTTP server.

import { SSEChannel, sseResponse } from "../../server.ts";
import { SSEParserStream } from "../../parser.ts";
import type { Smoke } from "./smoke.ts";
import { collect } from "./_streams.ts";

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** A channel: a live client, a resuming one, then close(). */
async function channel() {
  const channel = new SSEChannel({ keepAlive: 0 });
  const before = await channel.publish({ data: "before" });
  const live = (await channel.connect(new Request("https://example.com/")))
    .body!.pipeThrough(new SSEParserStream()).getReader();
  const news = await channel.publish({ event: "news", data: "hello" });
  const liveEvent = (await live.read()).value;
  const resuming = (await channel.connect(
    new Request("https://example.com/", {
      headers: { "last-event-id": before },
    }),
  )).body!.pipeThrough(new SSEParserStream()).getReader();
  const replayed = (await resuming.read()).value;
  const size = channel.size;
  await channel.close();
  // close() ends every stream.
  const ended = (await live.read()).done && (await resuming.read()).done;
  return {
    live: [liveEvent?.type, liveEvent?.data, liveEvent?.id === news],
    replayed: [replayed?.type, replayed?.data, replayed?.id === news],
    size,
    ended,
    sizeAfterClose: channel.size,
  };
}

async function* greetings() {
  yield { data: "hello" };
  yield { event: "done", id: "1", data: "" };
}

export const serverSmoke: Smoke = {
  module: "server.ts",
  async run() {
    // Headers and frames; hop-by-hop headers are dropped.
    const response = sseResponse(greetings(), {
      retry: 2000,
      keepAlive: 0,
      headers: { "x-smoke": "yes", connection: "keep-alive" },
    });
    const headers = [
      "content-type",
      "cache-control",
      "x-accel-buffering",
      "x-smoke",
      "connection",
    ].map((name) => [name, response.headers.get(name)]);
    const text = await response.text();

    // A ReadableStream source.
    const fromStream = await sseResponse(
      new ReadableStream({
        start(controller) {
          controller.enqueue({ data: [1, 2] });
          controller.close();
        },
      }),
      { keepAlive: 0 },
    ).text();

    // The opening comment, then keep-alive comments while the source is
    // idle (1000 ms is the shortest keep-alive there is).
    const comments: string[] = [];
    const idle = await collect(
      sseResponse(
        (async function* () {
          await sleep(1500);
          yield { data: "late" };
        })(),
        { keepAlive: 1000 },
      ).body!.pipeThrough(
        new SSEParserStream({ onComment: (text) => comments.push(text) }),
      ),
    );

    // An abort ends the body and closes the source (its finally runs).
    let sourceClosed!: () => void;
    const closed = new Promise<void>((resolve) => sourceClosed = resolve);
    const abort = new AbortController();
    const ticking = sseResponse(
      (async function* () {
        try {
          for (let i = 0;; i++) {
            yield { data: String(i) };
            await sleep(1);
          }
        } finally {
          sourceClosed();
        }
      })(),
      { keepAlive: 0, signal: abort.signal },
    );
    const reader = ticking.body!.pipeThrough(new SSEParserStream())
      .getReader();
    const first = await reader.read();
    abort.abort();
    let after = 0;
    while (!(await reader.read()).done) after++;
    await closed;

    return {
      channel: await channel(),
      status: response.status,
      headers,
      text,
      fromStream,
      keepAlive: {
        events: idle.map((event) => event.data),
        opened: comments[0] === "",
        pinged: comments.length > 1 &&
          comments.slice(1).every((comment) => comment === "keep-alive"),
      },
      // Frames are produced only on demand, so nothing follows the abort.
      abort: { first: first.value?.data ?? null, eventsAfterAbort: after },
    };
  },
  expected: {
    channel: {
      live: ["news", "hello", true],
      replayed: ["news", "hello", true],
      size: 2,
      ended: true,
      sizeAfterClose: 0,
    },
    status: 200,
    headers: [
      ["content-type", "text/event-stream; charset=utf-8"],
      ["cache-control", "no-cache"],
      ["x-accel-buffering", "no"],
      ["x-smoke", "yes"],
      ["connection", null],
    ],
    text: "retry: 2000\n\ndata: hello\n\nevent: done\nid: 1\ndata: \n\n",
    // Without retry, an empty comment goes first.
    fromStream: ":\n\ndata: [1,2]\n\n",
    keepAlive: { events: ["late"], opened: true, pinged: true },
    abort: { first: "0", eventsAfterAbort: 0 },
  },
  serve() {
    return sseResponse(
      (async function* () {
        yield { data: "one" };
        yield { event: "two", id: "2", data: "a\nb" };
        yield { comment: "bye" };
      })(),
      { retry: 1500, keepAlive: 0, headers: { "x-smoke": "served" } },
    );
  },
  served: {
    status: 200,
    headers: {
      "content-type": "text/event-stream; charset=utf-8",
      "cache-control": "no-cache",
      "x-accel-buffering": "no",
      "x-smoke": "served",
    },
    events: [
      { type: "message", data: "one", id: "" },
      { type: "two", data: "a\nb", id: "2" },
    ],
    retry: 1500,
  },
};
