// Copyright the sse authors. MIT license.
import assert from "node:assert/strict";
import FakeTimers from "@sinonjs/fake-timers";
import { type SSEMessage, sseResponse } from "../server.ts";
import { type SSEEvent, SSEParserStream } from "../parser.ts";
import {
  DEFAULT_KEEP_ALIVE,
  KEEP_ALIVE_FRAME,
  keepAliveInterval,
  KeepAliveTimer,
  OPENING_FRAME,
  sseHeaders,
} from "../_http.ts";

const decoder = new TextDecoder();

// Deno 2.9 runs tests with the op and resource sanitizers off unless asked:
// every test here asks, so leaked timers, reads and sockets fail the test.
const SANITIZED = { sanitizeOps: true, sanitizeResources: true } as const;

/** A fake clock for timers and `performance.now()`; uninstall when done. */
function fakeClock(): ReturnType<typeof FakeTimers.install> {
  return FakeTimers.install({
    toFake: [
      "setTimeout",
      "clearTimeout",
      "setInterval",
      "clearInterval",
      "performance",
      "Date",
    ],
  });
}

/** An async iterator driven by hand, recording how it is used. */
class ManualSource implements AsyncIterableIterator<SSEMessage> {
  nexts = 0;
  returns = 0;
  #waiting: PromiseWithResolvers<IteratorResult<SSEMessage>> | undefined;
  returned: PromiseWithResolvers<void> = Promise.withResolvers();
  #asked: PromiseWithResolvers<void> = Promise.withResolvers();

  [Symbol.asyncIterator](): this {
    return this;
  }
  next(): Promise<IteratorResult<SSEMessage>> {
    this.nexts++;
    this.#waiting = Promise.withResolvers();
    this.#asked.resolve();
    return this.#waiting.promise;
  }
  return(): Promise<IteratorResult<SSEMessage>> {
    this.returns++;
    this.returned.resolve();
    return Promise.resolve({ done: true, value: undefined });
  }
  /** Answers the pending next(). */
  send(message: SSEMessage): void {
    assert.ok(this.#waiting, "no next() is waiting");
    this.#waiting.resolve({ done: false, value: message });
    this.#waiting = undefined;
    this.#asked = Promise.withResolvers();
  }
  end(): void {
    this.#waiting?.resolve({ done: true, value: undefined });
  }
  fail(error: unknown): void {
    this.#waiting?.reject(error);
  }
  /** Resolves once a next() is waiting. */
  asked(): Promise<void> {
    return this.#asked.promise;
  }
  get waiting(): boolean {
    return this.#waiting !== undefined;
  }
}

async function readText(
  reader: ReadableStreamDefaultReader<Uint8Array>,
): Promise<string | undefined> {
  const { done, value } = await reader.read();
  return done ? undefined : decoder.decode(value);
}

/**
 * The body of a response without `retry`, read from here: checks that it
 * starts with the opening comment, which asks nothing of the source.
 */
async function opened(
  response: Response,
): Promise<ReadableStreamDefaultReader<Uint8Array>> {
  const reader = response.body!.getReader();
  assert.equal(await readText(reader), OPENING_FRAME);
  return reader;
}

/** Serves `handler` on 127.0.0.1 with a random port. */
function serve(handler: (request: Request) => Response) {
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    handler,
  );
  return { server, url: `http://127.0.0.1:${server.addr.port}/` };
}

// ---------------------------------------------------------------- _http.ts

Deno.test("sseHeaders sets the three event-stream headers", SANITIZED, () => {
  assert.deepEqual([...sseHeaders()], [
    ["cache-control", "no-cache"],
    ["content-type", "text/event-stream; charset=utf-8"],
    ["x-accel-buffering", "no"],
  ]);
});

Deno.test(
  "sseHeaders merges user headers and lets them override cache-control and x-accel-buffering",
  SANITIZED,
  () => {
    const headers = sseHeaders([
      ["cache-control", "no-store"],
      ["x-accel-buffering", "yes"],
      ["access-control-allow-origin", "*"],
      ["set-cookie", "a=1"],
      ["set-cookie", "b=2"],
    ]);
    assert.equal(headers.get("cache-control"), "no-store");
    assert.equal(headers.get("x-accel-buffering"), "yes");
    assert.equal(headers.get("access-control-allow-origin"), "*");
    assert.deepEqual(headers.getSetCookie(), ["a=1", "b=2"]);
  },
);

Deno.test(
  "sseHeaders keeps its content-type whatever the user passes",
  SANITIZED,
  () => {
    const headers = sseHeaders({ "Content-Type": "application/json" });
    assert.equal(
      headers.get("content-type"),
      "text/event-stream; charset=utf-8",
    );
  },
);

Deno.test(
  "sseHeaders drops hop-by-hop headers, those named by connection, and content-length",
  SANITIZED,
  () => {
    const headers = sseHeaders({
      "Connection": "keep-alive, X-Hop",
      "Keep-Alive": "timeout=5",
      "Proxy-Connection": "keep-alive",
      "Transfer-Encoding": "chunked",
      "Upgrade": "h2c",
      "TE": "trailers",
      "Content-Length": "10",
      "X-Hop": "1",
      "X-Kept": "1",
    });
    assert.deepEqual([...headers.keys()], [
      "cache-control",
      "content-type",
      "x-accel-buffering",
      "x-kept",
    ]);
  },
);

Deno.test(
  "keepAliveInterval defaults to 15 s, turns off at 0 and Infinity, and refuses a non-number or anything below 1000 ms",
  SANITIZED,
  () => {
    assert.equal(keepAliveInterval(undefined), DEFAULT_KEEP_ALIVE);
    assert.equal(DEFAULT_KEEP_ALIVE, 15_000);
    assert.equal(keepAliveInterval(0), 0);
    assert.equal(keepAliveInterval(Infinity), 0);
    assert.equal(keepAliveInterval(1000), 1000);
    assert.equal(keepAliveInterval(2500.5), 2500.5);
    for (const value of [-1, 0.0001, 250, 999.9]) {
      assert.throws(() => keepAliveInterval(value), {
        name: "RangeError",
        message:
          `Invalid keepAlive: expected 0 or Infinity (off), or at least 1000 milliseconds, got ${value}`,
      });
    }
    assert.throws(() => keepAliveInterval(NaN), RangeError);
    assert.throws(() => keepAliveInterval("15000"), {
      name: "TypeError",
      message:
        "Invalid keepAlive: expected a number of milliseconds, got string",
    });
  },
);

Deno.test(
  "KeepAliveTimer fires after the interval without a write, and every write restarts the wait",
  SANITIZED,
  async () => {
    const clock = fakeClock();
    try {
      let idle = 0;
      const timer = new KeepAliveTimer(1000, () => idle++);
      await clock.tickAsync(999);
      assert.equal(idle, 0);
      timer.touch(); // at 999
      await clock.tickAsync(999); // 1998
      assert.equal(idle, 0);
      await clock.tickAsync(1); // 1999: 1000 ms since the write
      assert.equal(idle, 1);
      await clock.tickAsync(999);
      assert.equal(idle, 1);
      await clock.tickAsync(1); // the keep-alive counted as a write
      assert.equal(idle, 2);
      timer.stop();
      assert.equal(clock.countTimers(), 0);
      await clock.tickAsync(10_000);
      assert.equal(idle, 2);
    } finally {
      clock.uninstall();
    }
  },
);

Deno.test(
  "KeepAliveTimer with interval 0 never sets a timer",
  SANITIZED,
  () => {
    const clock = fakeClock();
    try {
      const timer = new KeepAliveTimer(0, () => assert.fail("fired"));
      assert.equal(clock.countTimers(), 0);
      timer.touch();
      timer.stop();
    } finally {
      clock.uninstall();
    }
  },
);

Deno.test(
  "KeepAliveTimer stays stopped when onIdle stops it",
  SANITIZED,
  async () => {
    const clock = fakeClock();
    try {
      let idle = 0;
      const timers: KeepAliveTimer[] = [];
      timers.push(
        new KeepAliveTimer(10, () => {
          idle++;
          timers[0]!.stop();
        }),
      );
      await clock.tickAsync(100);
      assert.equal(idle, 1);
      assert.equal(clock.countTimers(), 0);
    } finally {
      clock.uninstall();
    }
  },
);

// ------------------------------------------------------ sseResponse, direct

Deno.test(
  "sseResponse answers 200 with the event-stream headers and the user's",
  SANITIZED,
  async () => {
    const response = sseResponse(ReadableStream.from<SSEMessage>([]), {
      headers: { "x-request-id": "7", connection: "keep-alive" },
    });
    assert.equal(response.status, 200);
    assert.equal(
      response.headers.get("content-type"),
      "text/event-stream; charset=utf-8",
    );
    assert.equal(response.headers.get("cache-control"), "no-cache");
    assert.equal(response.headers.get("x-accel-buffering"), "no");
    assert.equal(response.headers.get("x-request-id"), "7");
    assert.equal(response.headers.has("connection"), false);
    assert.equal(response.headers.has("transfer-encoding"), false);
    // The opening comment, so that the head leaves at once on every runtime.
    assert.equal(await response.text(), OPENING_FRAME);
    assert.equal(OPENING_FRAME, ":\n\n");
  },
);

Deno.test(
  "sseResponse writes the retry hint first, then one encodeSSE frame per message",
  SANITIZED,
  async () => {
    async function* messages(): AsyncGenerator<SSEMessage> {
      yield { data: "a\nb" };
      yield { id: 1 };
      yield { event: "e", data: { x: 1 } };
    }
    const reader = sseResponse(messages(), { retry: 1500 }).body!.getReader();
    assert.equal(await readText(reader), "retry: 1500\n\n");
    assert.equal(await readText(reader), "data: a\ndata: b\n\n");
    assert.equal(await readText(reader), "id: 1\n\n");
    assert.equal(await readText(reader), 'event: e\ndata: {"x":1}\n\n');
    assert.equal(await readText(reader), undefined);
  },
);

Deno.test(
  "sseResponse accepts a ReadableStream of messages",
  SANITIZED,
  async () => {
    const source = ReadableStream.from<SSEMessage>([{ data: "x" }, {
      data: "y",
    }]);
    assert.equal(
      await sseResponse(source).text(),
      OPENING_FRAME + "data: x\n\ndata: y\n\n",
    );
  },
);

Deno.test(
  "sseResponse refuses a bad source or bad options before touching the source",
  SANITIZED,
  () => {
    const source = new ManualSource();
    assert.throws(() => sseResponse(source, { retry: -1 }), {
      name: "RangeError",
      message: /^Invalid retry: /,
    });
    assert.throws(() => sseResponse(source, { keepAlive: -5 }), RangeError);
    assert.throws(
      // deno-lint-ignore no-explicit-any
      () => sseResponse(source, { onError: "log" as any }),
      {
        name: "TypeError",
        message: "Invalid onError: expected a function, got string",
      },
    );
    assert.throws(
      // deno-lint-ignore no-explicit-any
      () => sseResponse(source, { signal: {} as any }),
      { name: "TypeError", message: "Invalid signal: expected an AbortSignal" },
    );
    assert.throws(
      // deno-lint-ignore no-explicit-any
      () => sseResponse([{ data: "x" }] as any),
      {
        name: "TypeError",
        message:
          "Invalid source: expected an async iterable or a ReadableStream of messages",
      },
    );
    assert.equal(source.nexts, 0);
    assert.equal(source.returns, 0);
  },
);

Deno.test(
  "sseResponse reads the source only when the client reads",
  SANITIZED,
  async () => {
    const source = new ManualSource();
    const reader = await opened(sseResponse(source, { keepAlive: 0 }));
    await Promise.resolve();
    assert.equal(source.nexts, 0);
    const first = reader.read();
    await Promise.resolve();
    assert.equal(source.nexts, 1);
    source.send({ data: "1" });
    assert.equal(decoder.decode((await first).value), "data: 1\n\n");
    // The client has not asked again: the source is not asked either.
    for (let i = 0; i < 10; i++) await Promise.resolve();
    assert.equal(source.nexts, 1);
    const second = reader.read();
    await Promise.resolve();
    assert.equal(source.nexts, 2);
    source.end();
    assert.equal((await second).done, true);
    assert.equal(source.returns, 0); // it ended by itself
  },
);

Deno.test(
  "sseResponse calls return() at once when the client cancels, even while next() is pending",
  SANITIZED,
  async () => {
    const source = new ManualSource();
    const reader = await opened(sseResponse(source));
    const read = reader.read();
    await Promise.resolve();
    assert.ok(source.waiting);
    await reader.cancel(new Error("client left"));
    assert.equal(source.returns, 1);
    assert.equal((await read).done, true);
    // What the source says afterwards goes nowhere.
    source.send({ data: "late" });
  },
);

Deno.test(
  "sseResponse runs an async generator's finally block when the client cancels",
  SANITIZED,
  async () => {
    const cleaned = Promise.withResolvers<void>();
    async function* ticks(): AsyncGenerator<SSEMessage> {
      try {
        for (let i = 0;; i++) yield { data: String(i) };
      } finally {
        cleaned.resolve();
      }
    }
    const reader = await opened(sseResponse(ticks()));
    assert.equal(await readText(reader), "data: 0\n\n");
    assert.equal(await readText(reader), "data: 1\n\n");
    await reader.cancel();
    await cleaned.promise;
  },
);

Deno.test(
  "sseResponse cancels a ReadableStream source with the client's reason, even while a read is pending",
  SANITIZED,
  async () => {
    const cancelled = Promise.withResolvers<unknown>();
    const source = new ReadableStream<SSEMessage>({
      pull() {
        return new Promise(() => {}); // never has anything
      },
      cancel: (reason) => cancelled.resolve(reason),
    }, { highWaterMark: 0 });
    const reader = await opened(sseResponse(source));
    const read = reader.read();
    const reason = new Error("client left");
    await reader.cancel(reason);
    assert.equal(await cancelled.promise, reason);
    assert.equal((await read).done, true);
  },
);

Deno.test(
  "sseResponse ends the stream cleanly and closes the source when the signal aborts",
  SANITIZED,
  async () => {
    const source = new ManualSource();
    const abort = new AbortController();
    const reader = await opened(sseResponse(source, { signal: abort.signal }));
    const first = reader.read();
    await Promise.resolve();
    source.send({ data: "1" });
    assert.equal(decoder.decode((await first).value), "data: 1\n\n");
    const second = reader.read();
    await Promise.resolve();
    abort.abort();
    assert.equal((await second).done, true);
    assert.equal(source.returns, 1);
    await reader.closed;
  },
);

Deno.test(
  "sseResponse with an already aborted signal closes the source and sends nothing but the retry hint",
  SANITIZED,
  async () => {
    const source = new ManualSource();
    const response = sseResponse(source, {
      signal: AbortSignal.abort(),
      retry: 10,
    });
    assert.equal(await response.text(), "retry: 10\n\n");
    assert.equal(source.nexts, 0);
    assert.equal(source.returns, 1);
  },
);

Deno.test(
  "sseResponse ends cleanly when the source throws, and reports the error through onError",
  SANITIZED,
  async () => {
    const errors: unknown[] = [];
    const failure = new Error("upstream failed");
    async function* failing(): AsyncGenerator<SSEMessage> {
      yield { data: "before" };
      throw failure;
    }
    const response = sseResponse(failing(), { onError: (e) => errors.push(e) });
    assert.equal(await response.text(), OPENING_FRAME + "data: before\n\n");
    assert.deepEqual(errors, [failure]);
  },
);

Deno.test(
  "sseResponse ends cleanly on a message encodeSSE refuses, reports it and closes the source",
  SANITIZED,
  async () => {
    const errors: unknown[] = [];
    let closed = false;
    async function* messages(): AsyncGenerator<SSEMessage> {
      try {
        yield { data: "ok" };
        yield { event: "bad\nevent", data: "x" };
        yield { data: "never" };
      } finally {
        closed = true;
      }
    }
    const response = sseResponse(messages(), {
      onError: (e) => errors.push(e),
    });
    assert.equal(await response.text(), OPENING_FRAME + "data: ok\n\n");
    assert.equal(errors.length, 1);
    assert.ok(errors[0] instanceof TypeError);
    assert.match(errors[0].message, /^Invalid event: must not contain LF/);
    assert.ok(closed);
  },
);

Deno.test(
  "sseResponse ends cleanly when an iterator breaks its protocol, and closes it",
  SANITIZED,
  async () => {
    const errors: unknown[] = [];
    let returns = 0;
    const broken = {
      [Symbol.asyncIterator]: () => ({
        next: () =>
          Promise.resolve(undefined as unknown as IteratorResult<SSEMessage>),
        return: () => {
          returns++;
          return Promise.resolve({ done: true as const, value: undefined });
        },
      }),
    };
    const response = sseResponse(broken, { onError: (e) => errors.push(e) });
    assert.equal(await response.text(), OPENING_FRAME);
    assert.equal(errors.length, 1);
    assert.ok(errors[0] instanceof TypeError);
    assert.equal(
      errors[0].message,
      "Invalid source: next() resolved to undefined, not an iterator result",
    );
    assert.equal(returns, 1);
  },
);

Deno.test(
  "sseResponse reports an error from closing the source",
  SANITIZED,
  async () => {
    const errors: unknown[] = [];
    const failure = new Error("cleanup failed");
    async function* messages(): AsyncGenerator<SSEMessage> {
      try {
        yield { data: "1" };
        yield { data: "2" };
      } finally {
        // deno-lint-ignore no-unsafe-finally
        throw failure;
      }
    }
    const reader = await opened(
      sseResponse(messages(), { onError: (e) => errors.push(e) }),
    );
    assert.equal(await readText(reader), "data: 1\n\n");
    await reader.cancel();
    assert.deepEqual(errors, [failure]);
  },
);

Deno.test(
  "sseResponse logs source errors with console.error by default, and what a throwing onError threw",
  SANITIZED,
  async () => {
    const logged: unknown[][] = [];
    const original = console.error;
    console.error = (...args: unknown[]) => logged.push(args);
    try {
      const failure = new Error("boom");
      const failing = {
        [Symbol.asyncIterator]: () => ({ next: () => Promise.reject(failure) }),
      };
      assert.equal(await sseResponse(failing).text(), OPENING_FRAME);
      assert.equal(logged.length, 1);
      assert.equal(logged[0]!.at(-1), failure);

      const thrown = new Error("onError is broken");
      const response = sseResponse(failing, {
        onError() {
          throw thrown;
        },
      });
      assert.equal(await response.text(), OPENING_FRAME);
      assert.equal(logged.length, 2);
      assert.ok(logged[1]!.includes(thrown));
      assert.ok(logged[1]!.includes(failure));
    } finally {
      console.error = original;
    }
  },
);

// ------------------------------------------------ sseResponse, keep-alive

Deno.test(
  "sseResponse sends a keep-alive comment after keepAlive ms idle, and none while busy",
  SANITIZED,
  async () => {
    const clock = fakeClock();
    try {
      const source = new ManualSource();
      const abort = new AbortController();
      const reader = await opened(sseResponse(source, {
        keepAlive: 1000,
        signal: abort.signal,
      }));
      const chunks: string[] = [];
      const pump = (async () => {
        for (let text; (text = await readText(reader)) !== undefined;) {
          chunks.push(text);
        }
      })();
      await clock.tickAsync(999);
      assert.equal(chunks.length, 0);
      await clock.tickAsync(1);
      assert.deepEqual(chunks, [KEEP_ALIVE_FRAME]);
      assert.equal(KEEP_ALIVE_FRAME, ": keep-alive\n\n");
      // Busy: a message every 600 ms for 6 s, so no keep-alive.
      for (let i = 0; i < 10; i++) {
        await clock.tickAsync(600);
        source.send({ data: String(i) });
        await clock.tickAsync(0);
      }
      assert.equal(chunks.length, 11);
      assert.ok(chunks.slice(1).every((chunk) => chunk.startsWith("data: ")));
      // Idle again: the wait runs from the last write.
      await clock.tickAsync(999);
      assert.equal(chunks.length, 11);
      await clock.tickAsync(1);
      assert.equal(chunks.at(-1), KEEP_ALIVE_FRAME);
      await clock.tickAsync(1000);
      assert.equal(chunks.length, 13);
      abort.abort();
      await pump;
      assert.equal(clock.countTimers(), 0);
    } finally {
      clock.uninstall();
    }
  },
);

Deno.test(
  "sseResponse with keepAlive 0 never sends a keep-alive nor sets a timer",
  SANITIZED,
  async () => {
    const clock = fakeClock();
    try {
      const source = new ManualSource();
      const reader = await opened(sseResponse(source, { keepAlive: 0 }));
      const read = reader.read();
      await clock.tickAsync(0);
      assert.equal(clock.countTimers(), 0);
      await clock.tickAsync(DEFAULT_KEEP_ALIVE * 10);
      source.send({ data: "x" });
      assert.equal(decoder.decode((await read).value), "data: x\n\n");
      await reader.cancel();
    } finally {
      clock.uninstall();
    }
  },
);

Deno.test(
  "sseResponse uses a 15 s keep-alive by default",
  SANITIZED,
  async () => {
    const clock = fakeClock();
    try {
      const source = new ManualSource();
      const reader = await opened(sseResponse(source));
      const read = reader.read();
      await clock.tickAsync(14_999);
      await clock.tickAsync(1);
      assert.equal(decoder.decode((await read).value), KEEP_ALIVE_FRAME);
      await reader.cancel();
      assert.equal(clock.countTimers(), 0);
    } finally {
      clock.uninstall();
    }
  },
);

Deno.test(
  "sseResponse queues at most one keep-alive for a client that is not reading",
  SANITIZED,
  async () => {
    const clock = fakeClock();
    try {
      const source = new ManualSource();
      const reader = await opened(sseResponse(source, { keepAlive: 1000 }));
      const first = reader.read();
      await clock.tickAsync(0);
      source.send({ data: "1" });
      assert.equal(decoder.decode((await first).value), "data: 1\n\n");
      // No read for a long while.
      await clock.tickAsync(10_000);
      assert.equal(await readText(reader), KEEP_ALIVE_FRAME);
      const next = reader.read();
      await clock.tickAsync(0);
      source.send({ data: "2" });
      assert.equal(decoder.decode((await next).value), "data: 2\n\n");
      await reader.cancel();
      assert.equal(clock.countTimers(), 0);
    } finally {
      clock.uninstall();
    }
  },
);

Deno.test(
  "sseResponse clears the keep-alive timer on every way the stream ends",
  SANITIZED,
  async () => {
    const clock = fakeClock();
    try {
      const ends: Record<
        string,
        (s: ManualSource, a: AbortController) => void
      > = {
        "source ends": (s) => s.end(),
        "source throws": (s) => s.fail(new Error("x")),
        "signal aborts": (_, a) => a.abort(),
        "bad message": (s) => s.send({ retry: -1 }),
      };
      for (const [name, end] of Object.entries(ends)) {
        const source = new ManualSource();
        const abort = new AbortController();
        const response = sseResponse(source, {
          keepAlive: 1000,
          signal: abort.signal,
          onError() {},
        });
        const text = response.text();
        await clock.tickAsync(0);
        assert.equal(clock.countTimers(), 1, name);
        end(source, abort);
        assert.equal(await text, OPENING_FRAME, name);
        assert.equal(clock.countTimers(), 0, name);
      }
    } finally {
      clock.uninstall();
    }
  },
);

// ------------------------------------------------ sseResponse on Deno.serve

Deno.test(
  "sseResponse on Deno.serve streams events that a client parses",
  SANITIZED,
  async () => {
    async function* tokens(): AsyncGenerator<SSEMessage> {
      for (const token of ["Hel", "lo", "\n", "!"]) yield { data: { token } };
      yield { event: "done", id: "end", data: "" };
    }
    const { server, url } = serve(() => sseResponse(tokens(), { retry: 500 }));
    try {
      const response = await fetch(url);
      assert.equal(
        response.headers.get("content-type"),
        "text/event-stream; charset=utf-8",
      );
      assert.equal(response.headers.has("connection"), false);
      let retry: number | undefined;
      const events = await Array.fromAsync(
        response.body!.pipeThrough(
          new SSEParserStream({ onRetry: (ms) => retry = ms }),
        ),
      );
      assert.equal(retry, 500);
      assert.deepEqual(events, [
        { type: "message", data: '{"token":"Hel"}', id: "" },
        { type: "message", data: '{"token":"lo"}', id: "" },
        { type: "message", data: '{"token":"\\n"}', id: "" },
        { type: "message", data: '{"token":"!"}', id: "" },
        { type: "done", data: "", id: "end" },
      ]);
    } finally {
      await server.shutdown();
    }
  },
);

Deno.test(
  "sseResponse on Deno.serve closes a busy source when the client disconnects mid-stream",
  SANITIZED,
  async () => {
    const cleaned = Promise.withResolvers<number>();
    async function* counter(): AsyncGenerator<SSEMessage> {
      let i = 0;
      try {
        for (;; i++) yield { id: i, data: "x".repeat(100) };
      } finally {
        cleaned.resolve(i);
      }
    }
    const { server, url } = serve(() => sseResponse(counter()));
    try {
      const abort = new AbortController();
      const response = await fetch(url, { signal: abort.signal });
      const events = response.body!.pipeThrough(new SSEParserStream())
        .getReader();
      for (let i = 0; i < 5; i++) {
        assert.equal((await events.read()).value?.id, String(i));
      }
      abort.abort();
      await events.closed.catch(() => {});
      const sent = await cleaned.promise;
      assert.ok(sent >= 5, `the source stopped after ${sent} messages`);
    } finally {
      await server.shutdown();
    }
  },
);

Deno.test(
  "sseResponse on Deno.serve closes an idle source and its keep-alive timer when the client disconnects",
  SANITIZED,
  async () => {
    const source = new ManualSource();
    const { server, url } = serve(() =>
      sseResponse(source, { keepAlive: 60_000 })
    );
    try {
      const reader = await opened(await fetch(url));
      const first = reader.read();
      await source.asked();
      source.send({ data: "hi" });
      assert.equal(decoder.decode((await first).value), "data: hi\n\n");
      await reader.cancel();
      // The server notices the closed connection and cancels the body; the
      // sanitizers then prove the 60 s keep-alive timer is gone.
      await source.returned.promise;
      assert.equal(source.returns, 1);
    } finally {
      await server.shutdown();
    }
  },
);

Deno.test(
  "sseResponse on Deno.serve sends keep-alive comments while idle",
  SANITIZED,
  async () => {
    const clock = fakeClock();
    const source = new ManualSource();
    const { server, url } = serve(() =>
      sseResponse(source, { keepAlive: 1000 })
    );
    try {
      const response = await fetch(url);
      const comments: string[] = [];
      const gotTwo = Promise.withResolvers<void>();
      const events = response.body!.pipeThrough(
        new SSEParserStream({
          onComment(text) {
            if (comments.push(text) === 3) gotTwo.resolve();
          },
        }),
      );
      const reading = Array.fromAsync(events);
      while (comments.length < 3) await clock.tickAsync(500);
      await gotTwo.promise;
      // The opening comment, then keep-alives.
      assert.deepEqual(comments, ["", "keep-alive", "keep-alive"]);
      source.end();
      assert.deepEqual(await reading, []);
    } finally {
      await server.shutdown();
      clock.uninstall();
    }
  },
);

Deno.test(
  "sseResponse on Deno.serve ends the response when the signal aborts",
  SANITIZED,
  async () => {
    const abort = new AbortController();
    const cleaned = Promise.withResolvers<void>();
    async function* forever(): AsyncGenerator<SSEMessage> {
      try {
        yield { data: "first" };
        await new Promise<void>((resolve) =>
          abort.signal.addEventListener("abort", () => resolve(), {
            once: true,
          })
        );
        yield { data: "never sent" };
      } finally {
        cleaned.resolve();
      }
    }
    const { server, url } = serve(() =>
      sseResponse(forever(), { signal: abort.signal })
    );
    try {
      const response = await fetch(url);
      const events = response.body!.pipeThrough(new SSEParserStream())
        .getReader();
      assert.equal((await events.read()).value?.data, "first");
      abort.abort();
      assert.equal((await events.read()).done, true);
      await cleaned.promise;
    } finally {
      await server.shutdown();
    }
  },
);

Deno.test(
  "sseResponse on Deno.serve ends the response cleanly when the source throws",
  SANITIZED,
  async () => {
    const reported = Promise.withResolvers<unknown>();
    const failure = new Error("model crashed");
    async function* failing(): AsyncGenerator<SSEMessage> {
      yield { data: "partial" };
      throw failure;
    }
    const { server, url } = serve(() =>
      sseResponse(failing(), { onError: (error) => reported.resolve(error) })
    );
    try {
      const response = await fetch(url);
      const events: SSEEvent[] = await Array.fromAsync(
        response.body!.pipeThrough(new SSEParserStream()),
      );
      assert.deepEqual(events, [{ type: "message", data: "partial", id: "" }]);
      assert.equal(await reported.promise, failure);
    } finally {
      await server.shutdown();
    }
  },
);
