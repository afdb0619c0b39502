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
import { within } from "../_channel.ts";

/** How long one step may wait for what it expects. */
const WAIT = 10_000;
/** How long a client that never reads may take to be dropped. */
const STALL_WAIT = 20_000;
/**
 * How long after dropping a client as slow the channel cuts its connection
 * (errors its stream), plus a margin for a loaded machine: the app's
 * drainTimeout (1 s), checked every 250 ms. Where the cut can be seen, the
 * test polls for it up to twice as long (a deadline, not a wait).
 */
const CUT_WAIT = 3000;

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

export async function stats(base: string): Promise<Stats> {
  const response = await fetch(`${base}/stats`);
  assert.equal(response.status, 200);
  return await response.json() as Stats;
}

/**
 * Polls `get` until what it resolves to satisfies `ok`; fails naming `what`
 * (and the last value) after `ms`.
 */
export async function pollUntil<T>(
  get: () => Promise<T>,
  what: string,
  ok: (value: T) => boolean,
  ms = WAIT,
): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const current = await get();
    if (ok(current)) return current;
    if (Date.now() > deadline) {
      throw new Error(
        `Timed out after ${ms} ms: ${what}; stats: ${JSON.stringify(current)}`,
      );
    }
    await delay(20);
  }
}

/** Polls /stats until `ok` holds; fails naming `what` after `ms`. */
export function statsUntil(
  base: string,
  what: string,
  ok: (stats: Stats) => boolean,
  ms = WAIT,
): Promise<Stats> {
  return pollUntil(() => stats(base), what, ok, ms);
}

export async function flood(
  base: string,
  count: number,
  size: number,
): Promise<string[]> {
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
export class Events {
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
      await this.#response.then(
        (r) => r.body?.cancel().catch(() => {}),
        () => {},
      );
    }
  }
}

/**
 * Whether the server process still holds the socket of the connection from
 * local port `client` to port `server` on 127.0.0.1: Linux lists it in
 * /proc/net/tcp with the inode of its file; a socket the process closed is
 * gone from there, or left to the kernel (inode 0) to finish sending.
 * `undefined` where /proc/net/tcp cannot be read.
 */
function serverHolds(server: number, client: number): boolean | undefined {
  let table: string;
  try {
    table = Deno.readTextFileSync("/proc/net/tcp");
  } catch {
    return undefined;
  }
  const hex = (port: number) =>
    port.toString(16).toUpperCase().padStart(4, "0");
  const local = `0100007F:${hex(server)}`;
  const remote = `0100007F:${hex(client)}`;
  return table.split("\n").some((line) => {
    const fields = line.trim().split(/\s+/);
    return fields[1] === local && fields[2] === remote && fields[9] !== "0";
  });
}

/**
 * A raw HTTP/1.1 client that sends a request for `path` (with `headers`),
 * then never reads (not even the response head).
 */
export async function stalledClient(
  base: string,
  path: string,
  headers: Record<string, string> = {},
): Promise<Deno.Conn> {
  const { hostname, port } = new URL(base);
  const conn = await Deno.connect({ hostname, port: Number(port) });
  try {
    await conn.write(
      new TextEncoder().encode(
        `GET ${path} HTTP/1.1\r\nhost: ${hostname}:${port}\r\naccept: text/event-stream\r\n${
          Object.entries(headers).map(([name, value]) =>
            `${name}: ${value}\r\n`
          )
            .join("")
        }\r\n`,
      ),
    );
    return conn;
  } catch (error) {
    conn.close();
    throw error;
  }
}

/**
 * Opens the one-off stream at `path`, runs `use` on it, leaves, and waits
 * until the server has closed its source.
 *
 * @returns The server's stats before, and once the source is closed.
 */
async function oneOff(
  base: string,
  path: string,
  use: (events: Events) => Promise<unknown>,
): Promise<{ before: Stats; after: Stats }> {
  const before = await stats(base);
  const events = new Events(base, path);
  try {
    await use(events);
  } finally {
    await events.close();
  }
  const after = await statsUntil(
    base,
    "the source is closed",
    (s) =>
      s.streams.started === before.streams.started + 1 &&
      s.streams.closed === before.streams.closed + 1,
  );
  return { before, after };
}

/** What the scenarios need to know of the runtime serving the app. */
export interface Served {
  /**
   * Whether it closes a connection as soon as the response's body stream
   * errors, even while its write to a peer that never reads is pending:
   * Node's http does. Deno 2.9.6 and Bun 1.4.5 notice the error only once
   * that write completes, that is when the peer reads.
   */
  cutsPendingWrite: boolean;
}

/** One scenario, run as a test step against a served sse_app. */
export interface Scenario {
  name: string;
  run(base: string, served: Served): Promise<void>;
}

/**
 * Reads a raw connection to its end (or reset); whether the chunked
 * response on it had ended with its last chunk: a stream that was closed,
 * not cut.
 */
async function endedCleanly(conn: Deno.Conn): Promise<boolean> {
  const buffer = new Uint8Array(1024 * 1024);
  let tail = "";
  const read = async () => {
    for (;;) {
      let n: number | null;
      try {
        n = await conn.read(buffer);
      } catch (error) {
        if (error instanceof Deno.errors.ConnectionReset) return;
        throw error;
      }
      if (n === null) return;
      tail = (tail +
        new TextDecoder().decode(buffer.subarray(Math.max(0, n - 16), n)))
        .slice(-16);
    }
  };
  await within(read(), WAIT, "the end of the connection");
  return tail.endsWith("\r\n0\r\n\r\n");
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

/**
 * A client that stops reading is dropped as slow while a reader receives
 * every event; then its connection is cut: at once where the runtime closes
 * a connection whose write is pending (Linux: /proc/net/tcp says the server
 * no longer holds the socket), else when the peer reads again.
 */
export const STALLED_READER: Scenario = {
  name:
    "SSEChannel drops a client that stops reading while a reader receives every event, then cuts its connection",
  async run(base, served) {
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
      // Its stream was closed, but the runtime cannot send the rest to a
      // peer that never reads: after another drainTimeout the channel
      // errors it, so that the runtime closes the connection.
      const server = Number(new URL(base).port);
      const client = (stalled.localAddr as Deno.NetAddr).port;
      const dropped = Date.now();
      if (served.cutsPendingWrite) {
        while (serverHolds(server, client)) {
          if (Date.now() - dropped > 2 * CUT_WAIT) {
            throw new Error(
              `The server still holds the socket of the client it dropped as slow ${
                2 * CUT_WAIT
              } ms ago`,
            );
          }
          await delay(50);
        }
      } else {
        // Nothing to wait for: the cut happens in the server, unseen.
        await delay(CUT_WAIT);
        assert.notEqual(
          serverHolds(server, client),
          false,
          "the runtime closed a connection whose write was pending: set cutsPendingWrite",
        );
      }
      // What was on its way, then the end of the connection without the
      // response's last chunk: the stream was cut, not closed.
      assert.equal(await endedCleanly(stalled), false, "a clean end");
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
};

/**
 * sseResponse's head comes before its source's first message: a client's
 * `open` does not wait for a model's first token (Bun 1.4.5 holds the end of
 * the head until the first body byte).
 */
export const HEAD_BEFORE_SOURCE: Scenario = {
  name: "sseResponse's response head arrives before its source yields anything",
  async run(base) {
    // The source's first message comes after a minute: never, here.
    const { before, after } = await oneOff(
      base,
      "/late?first=60000",
      (events) =>
        events.headers(
          "the response head of /late, before its source yields anything",
        ),
    );
    assert.equal(after.streams.yielded, before.streams.yielded);
  },
};

/** Every scenario, in the order they run. */
export const SCENARIOS: Scenario[] = [
  HEAD_BEFORE_EVENTS,
  HEAD_BEFORE_SOURCE,
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
      await oneOff(base, "/stream?every=20", async (events) => {
        for (const id of ["0", "1", "2"]) {
          assert.equal((await events.next(`event ${id}`)).id, id);
        }
      });
    },
  },
  STALLED_READER,
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

/**
 * Runs the scenarios as steps of `t` against the app served at `base`.
 *
 * @param served What the scenarios need to know of the runtime.
 */
export async function runScenarios(
  t: Deno.TestContext,
  base: string,
  served: Served,
  scenarios: Scenario[] = SCENARIOS,
): Promise<void> {
  for (const scenario of scenarios) {
    const ok = await t.step(scenario.name, () => scenario.run(base, served));
    if (!ok) break;
  }
}

/**
 * The lines a server process printed, but its `{"port":N}` line.
 *
 * @param output What it printed (stdout and stderr).
 * @returns Its other lines.
 */
export function printed(output: string): string[] {
  return output.split("\n").filter((line) =>
    line !== "" && !line.startsWith('{"port":')
  );
}

/** What Deno.serve and Node (@hono/node-server) print when a stream is cut. */
export const CUT_LINE =
  "[SSEChannel: cut a connection whose client has not read the end of its stream within 1000 ms]";
