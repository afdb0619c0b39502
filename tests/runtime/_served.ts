// Copyright the sse authors. MIT license.
// What tests/runtime/sse_app.ts must do on every runtime that serves it, as
// test steps run from Deno over real sockets: headers and events flow at once
// (nothing waits for a later write), a client that leaves is noticed, resume
// with Last-Event-ID, a one-off sseResponse stream, and a client that stops
// reading: SSEChannel drops it while a reader keeps receiving everything,
// and sseResponse stops reading its source for it.

import assert from "node:assert/strict";
import { type SSEEvent, SSEParserStream } from "../../parser.ts";
import type { Stats } from "./sse_app.ts";

/** How long one step may wait for what it expects. */
const WAIT = 10_000;
/** How long a client that never reads may take to be dropped. */
const STALL_WAIT = 20_000;

/** `promise`, or a rejection naming `what` after `ms`. */
async function within<T>(promise: Promise<T>, ms: number, what: string) {
  let timer: ReturnType<typeof setTimeout> | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(
          () => reject(new Error(`Timed out after ${ms} ms: ${what}`)),
          ms,
        );
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function stats(base: string): Promise<Stats> {
  const response = await fetch(`${base}/stats`);
  assert.equal(response.status, 200);
  return await response.json() as Stats;
}

/** Polls /stats until `ok` holds; fails naming `what` after `ms`. */
async function statsUntil(
  base: string,
  what: string,
  ok: (stats: Stats) => boolean,
  ms = WAIT,
): Promise<Stats> {
  const deadline = Date.now() + ms;
  for (;;) {
    const current = await stats(base);
    if (ok(current)) return current;
    if (Date.now() > deadline) {
      throw new Error(
        `Timed out after ${ms} ms: ${what}; stats: ${JSON.stringify(current)}`,
      );
    }
    await delay(20);
  }
}

async function flood(base: string, count: number, size: number) {
  const response = await fetch(`${base}/flood?count=${count}&size=${size}`, {
    method: "POST",
  });
  assert.equal(response.status, 200);
  return (await response.json() as { ids: string[] }).ids;
}

/**
 * An event stream read with SSEParserStream. The request goes out at once;
 * `headers()` waits for the response head, `next()` for an event.
 */
class Events {
  #path: string;
  #abort = new AbortController();
  #response: Promise<Response>;
  #reader?: ReadableStreamDefaultReader<SSEEvent>;

  constructor(base: string, path: string, headers: HeadersInit = {}) {
    this.#path = path;
    this.#response = fetch(`${base}${path}`, {
      headers,
      signal: this.#abort.signal,
    });
    // Observed here; close() and headers() report the outcome.
    this.#response.catch(() => {});
  }

  /** The response head, checked; fails naming `what` after WAIT ms. */
  async headers(what = `the response head of ${this.#path}`) {
    const response = await within(this.#response, WAIT, what);
    assert.equal(response.status, 200, `${this.#path}: status`);
    assert.equal(
      response.headers.get("content-type"),
      "text/event-stream; charset=utf-8",
    );
    return response;
  }

  async #read(): Promise<ReadableStreamReadResult<SSEEvent>> {
    this.#reader ??= (await this.headers()).body!
      .pipeThrough(new SSEParserStream()).getReader();
    return await this.#reader.read();
  }

  async next(what: string): Promise<SSEEvent> {
    const { value, done } = await within(this.#read(), WAIT, what);
    assert.ok(!done, `the stream ended before ${what}`);
    return value;
  }

  /** Reads until the stream ends or is cancelled; `onEvent` sees each. */
  async drain(onEvent: (event: SSEEvent) => void): Promise<void> {
    try {
      for (;;) {
        const { value, done } = await this.#read();
        if (done) return;
        onEvent(value);
      }
    } catch {
      // Cancelled by close().
    }
  }

  /** Leaves: cancels the body, which closes the connection. */
  async close(): Promise<void> {
    this.#abort.abort();
    if (this.#reader) await this.#reader.cancel().catch(() => {});
    else {
      await this.#response.then((r) => r.body?.cancel(), () => {});
    }
  }
}

/**
 * A raw HTTP/1.1 client that sends a request for `path`, then never reads
 * (not even the response head).
 */
async function stalledClient(base: string, path: string): Promise<Deno.Conn> {
  const { hostname, port } = new URL(base);
  const conn = await Deno.connect({ hostname, port: Number(port) });
  try {
    await conn.write(
      new TextEncoder().encode(
        `GET ${path} HTTP/1.1\r\nhost: ${hostname}:${port}\r\naccept: text/event-stream\r\n\r\n`,
      ),
    );
    return conn;
  } catch (error) {
    conn.close();
    throw error;
  }
}

/** One scenario, run as a test step against a served sse_app. */
export interface Scenario {
  name: string;
  run(base: string): Promise<void>;
}

/**
 * The response head comes before any event: a client's `open` does not wait
 * for the first publish (Node holds it unless flushHeaders is called; Bun
 * 1.4.5 holds the end of the head until the first body byte).
 */
export const HEAD_BEFORE_EVENTS: Scenario = {
  name:
    "SSEChannel's response head arrives before any event is published, and a published event at once",
  async run(base) {
    const events = new Events(base, "/events?name=first");
    try {
      await events.headers(
        "the response head of /events, before any event is published",
      );
      const [id] = await flood(base, 1, 10);
      const event = await events.next("the published event");
      assert.equal(event.id, id);
      assert.match(event.data, /^\d+ x{10}$/);
    } finally {
      await events.close();
    }
    await statsUntil(
      base,
      "the client that left is released",
      (s) => s.size === 0 && s.disconnected.includes("first"),
    );
  },
};

/** Every scenario, in the order they run. */
export const SCENARIOS: Scenario[] = [
  HEAD_BEFORE_EVENTS,
  {
    name:
      "SSEChannel notices a client that leaves (size drops, onDisconnect runs) and keeps serving the other",
    async run(base) {
      const leaving = new Events(base, "/events?name=leaving");
      const staying = new Events(base, "/events?name=staying");
      try {
        await statsUntil(base, "two clients", (s) => s.size === 2);
        const [first] = await flood(base, 1, 1);
        assert.equal((await leaving.next("the first event")).id, first);
        assert.equal((await staying.next("the first event")).id, first);
        await leaving.close();
        const after = await statsUntil(
          base,
          "the client that left is noticed",
          (s) => s.size === 1 && s.disconnected.includes("leaving"),
        );
        assert.ok(!after.disconnected.includes("staying"));
        assert.equal(after.reasons.leaving, "client-closed");
        const [second] = await flood(base, 1, 1);
        assert.equal((await staying.next("the second event")).id, second);
      } finally {
        await leaving.close();
        await staying.close();
      }
      await statsUntil(base, "no client left", (s) => s.size === 0);
    },
  },
  {
    name:
      "SSEChannel resumes a client that sends Last-Event-ID with exactly what it missed",
    async run(base) {
      const [seen, missed1, missed2] = await flood(base, 3, 1);
      const events = new Events(base, "/events?name=resuming", {
        "last-event-id": seen!,
      });
      try {
        await statsUntil(base, "the client", (s) => s.size === 1);
        assert.equal((await events.next("the first missed event")).id, missed1);
        assert.equal(
          (await events.next("the second missed event")).id,
          missed2,
        );
        const [live] = await flood(base, 1, 1);
        assert.equal((await events.next("the live event")).id, live);
      } finally {
        await events.close();
      }
      await statsUntil(base, "no client left", (s) => s.size === 0);
    },
  },
  {
    name:
      "sseResponse streams each event as it is produced and closes its source when the client leaves",
    async run(base) {
      const before = await stats(base);
      const events = new Events(base, "/stream?every=20");
      try {
        for (const id of ["0", "1", "2"]) {
          assert.equal((await events.next(`event ${id}`)).id, id);
        }
      } finally {
        await events.close();
      }
      await statsUntil(
        base,
        "the source is closed",
        (s) =>
          s.streams.started === before.streams.started + 1 &&
          s.streams.closed === before.streams.closed + 1,
      );
    },
  },
  {
    name:
      "SSEChannel drops a client that stops reading while a reader receives every event",
    async run(base) {
      const reader = new Events(base, "/events?name=reader");
      const received: string[] = [];
      const reading = reader.drain((event) => received.push(event.id));
      const stalled = await stalledClient(base, "/events?name=stalled");
      const published: string[] = [];
      try {
        await statsUntil(base, "both clients", (s) => s.size === 2);
        // Rounds of 32 KiB, half the app's maxQueue, every 10 ms, until the
        // stalled client is dropped: the kernel's and the runtime's buffers
        // fill first (a few MiB), then bytes wait in the channel, and the
        // client is dropped once its queue stayed above maxQueue for
        // drainTimeout (1 s in the app).
        const deadline = Date.now() + STALL_WAIT;
        for (;;) {
          published.push(...await flood(base, 4, 8 * 1024));
          await delay(10);
          const now = await stats(base);
          if (now.disconnected.includes("stalled")) break;
          if (Date.now() > deadline) {
            throw new Error(
              `The stalled client was not dropped within ${STALL_WAIT} ms (${published.length} events of 8 KiB published): ${
                JSON.stringify(now)
              }`,
            );
          }
        }
        const after = await statsUntil(
          base,
          "the reader stays connected",
          (s) => s.size === 1,
        );
        assert.ok(!after.disconnected.includes("reader"), "reader dropped");
        // Dropped by the channel, not closed by the runtime.
        assert.equal(after.reasons.stalled, "slow");
        const [last] = await flood(base, 1, 1);
        published.push(last!);
        const deadline2 = Date.now() + WAIT;
        while (received.length < published.length && Date.now() < deadline2) {
          await delay(20);
        }
        assert.deepEqual(received, published, "what the reader received");
      } finally {
        stalled.close();
        await reader.close();
        await reading;
      }
      await statsUntil(base, "no client left", (s) => s.size === 0);
    },
  },
  {
    name:
      "sseResponse reads its source only as fast as the client reads, and closes it when a stalled client leaves",
    async run(base) {
      const before = await stats(base);
      const size = 16 * 1024;
      const stalled = await stalledClient(
        base,
        `/stream?every=0&size=${size}`,
      );
      let yielded: number;
      try {
        // Until the source stops being read: no new event for 300 ms.
        let last = -1;
        const deadline = Date.now() + WAIT;
        for (;;) {
          yielded = (await stats(base)).streams.yielded -
            before.streams.yielded;
          if (yielded === last || Date.now() > deadline) break;
          last = yielded;
          await delay(300);
        }
      } finally {
        stalled.close();
      }
      // What the kernel and the runtime buffer: a few MiB, not the 10 s of
      // events an unbounded reader would have pulled.
      assert.ok(
        yielded * size < 32 * 1024 * 1024,
        `${yielded} events of ${size} bytes read for a client that reads none`,
      );
      await statsUntil(
        base,
        "the source is closed",
        (s) => s.streams.closed === before.streams.closed + 1,
      );
    },
  },
];

/** Runs the scenarios as steps of `t` against the app served at `base`. */
export async function runScenarios(
  t: Deno.TestContext,
  base: string,
  scenarios: Scenario[] = SCENARIOS,
): Promise<void> {
  for (const scenario of scenarios) {
    const ok = await t.step(scenario.name, () => scenario.run(base));
    if (!ok) break;
  }
}
