// Copyright the sse authors. MIT license.
// server.ts on every runtime: sseResponse's headers and frames, a
// ReadableStream source, keep-alive comments, and an abort that closes the
// source. serve() is also sent by the runtime's own HTTP server.

import { sseResponse } from "../../server.ts";
import { SSEParserStream } from "../../parser.ts";
import type { Smoke } from "./smoke.ts";
import { collect } from "./_streams.ts";

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
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

    // Keep-alive comments while the source is idle.
    const comments: string[] = [];
    const idle = await collect(
      sseResponse(
        (async function* () {
          await sleep(80);
          yield { data: "late" };
        })(),
        { keepAlive: 10 },
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
      status: response.status,
      headers,
      text,
      fromStream,
      keepAlive: {
        events: idle.map((event) => event.data),
        pinged: comments.length > 0 &&
          comments.every((comment) => comment === "keep-alive"),
      },
      // Frames are produced only on demand, so nothing follows the abort.
      abort: { first: first.value?.data ?? null, eventsAfterAbort: after },
    };
  },
  expected: {
    status: 200,
    headers: [
      ["content-type", "text/event-stream; charset=utf-8"],
      ["cache-control", "no-cache"],
      ["x-accel-buffering", "no"],
      ["x-smoke", "yes"],
      ["connection", null],
    ],
    text: "retry: 2000\n\ndata: hello\n\nevent: done\nid: 1\ndata: \n\n",
    fromStream: "data: [1,2]\n\n",
    keepAlive: { events: ["late"], pinged: true },
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
