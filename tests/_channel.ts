// Copyright the sse authors. MIT license.
// Helpers of the SSEChannel tests (channel_test.ts, channel_faults_test.ts):
// a real server, a real client that records what it reads, and waiting for
// things without sleeping.

import assert from "node:assert/strict";
import { type SSEEvent, SSEParserStream } from "../parser.ts";

// Deno 2.9 runs tests with the op and resource sanitizers off unless asked:
// every test here asks, so leaked timers, reads and sockets fail the test.
export const SANITIZED = {
  sanitizeOps: true,
  sanitizeResources: true,
} as const;

/** How long a test waits for something it expects before failing. */
export const WAIT_MS = 10_000;

export function test(name: string, fn: () => Promise<void>): void {
  Deno.test({ name, ...SANITIZED, fn });
}

/**
 * `promise`, or a rejection naming `what` after `ms` milliseconds of real
 * time: for an event that must come, so that a failing test fails instead of
 * hanging. The timer is cleared as soon as the promise settles.
 */
export async function within<T>(
  promise: Promise<T>,
  ms: number,
  what: string,
): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new Error(`Timed out after ${ms} ms: ${what}`)),
      ms,
    );
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Asserts that `response` is what `close()` gives a connection still in
 * progress: 200 and an event stream that ends (so that its client
 * reconnects; on a 503 a browser's EventSource stops for good), within
 * WAIT_MS.
 *
 * @returns The stream's text (the retry hint, if the channel has one).
 */
export async function assertEndedStream(
  response: Response,
  what: string,
): Promise<string> {
  const text = await within(response.text(), WAIT_MS, `${what}: its end`);
  assert.equal(response.status, 200, `${what}: ${text}`);
  assert.match(
    response.headers.get("content-type") ?? "",
    /^text\/event-stream/,
    what,
  );
  return text;
}

/** A message of `size` bytes of data that starts with its number. */
export function numbered(i: number, size: number): { data: string } {
  return { data: String(i).padStart(8, "0") + "x".repeat(size - 8) };
}

/** Resolves once `done()` holds, checking every few milliseconds. */
export async function until(done: () => boolean, what: string): Promise<void> {
  await within(
    (async () => {
      while (!done()) await new Promise((resolve) => setTimeout(resolve, 5));
    })(),
    WAIT_MS,
    what,
  );
}

/**
 * Runs a test module as a server process of its own, with `--expose-gc` so
 * that it can measure its memory after a full collection, network access to
 * 127.0.0.1 only, and its stdin and stdout piped.
 *
 * @param module The test module's URL (`import.meta.url`).
 * @param args Its arguments: which server to run, and how.
 */
export function spawnServer(module: string, args: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--v8-flags=--expose-gc",
      "--allow-net=127.0.0.1",
      `--config=${new URL("../deno.json", import.meta.url).pathname}`,
      new URL(module).pathname,
      ...args,
    ],
    stdin: "piped",
    stdout: "piped",
  }).spawn();
}

/** A `Deno.serve` on 127.0.0.1, port 0, that records `onError` calls. */
export function serve(
  handler: (request: Request) => Response | Promise<Response>,
): { url: string; errors: unknown[]; shutdown(): Promise<void> } {
  const errors: unknown[] = [];
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen() {},
    onError(error) {
      errors.push(error);
      return new Response("Internal Server Error", { status: 500 });
    },
  }, handler);
  return {
    url: `http://127.0.0.1:${server.addr.port}`,
    errors,
    shutdown: () => server.shutdown(),
  };
}

/** What a client read, in order. */
export type Item =
  | { kind: "event"; event: SSEEvent }
  | { kind: "comment"; text: string }
  | { kind: "retry"; ms: number };

/**
 * A real client: `fetch`, then `SSEParserStream`, read continuously in the
 * background into `log`.
 */
export class Client {
  readonly response: Response;
  readonly log: Item[] = [];
  #events: SSEEvent[] = [];
  ended = false;
  error: unknown;
  #reader: ReadableStreamDefaultReader<SSEEvent>;
  #pump: Promise<void>;
  #wake: (() => void) | undefined;

  static async open(
    url: string,
    headers: Record<string, string> = {},
  ): Promise<Client> {
    const response = await fetch(url, { headers });
    assert.equal(response.status, 200, await peek(response));
    return new Client(response);
  }

  constructor(response: Response) {
    this.response = response;
    const parser = new SSEParserStream({
      onComment: (text) => this.#push({ kind: "comment", text }),
      onRetry: (ms) => this.#push({ kind: "retry", ms }),
    });
    this.#reader = response.body!.pipeThrough(parser).getReader();
    this.#pump = this.#run();
  }

  /** The events in the log, in order (a copy). */
  get events(): SSEEvent[] {
    return this.#events.slice();
  }

  get data(): string[] {
    return this.events.map((event) => event.data);
  }

  /** Resolves once `done()` holds; fails if the stream ends first. */
  async until(done: () => boolean, what: string): Promise<void> {
    const wait = async () => {
      while (!done()) {
        if (this.ended) {
          throw new Error(
            `Stream ended (${String(this.error ?? "normally")}) before ${what}`,
          );
        }
        await new Promise<void>((resolve) => this.#wake = resolve);
      }
    };
    await within(wait(), WAIT_MS, what);
  }

  /** The first `count` events, once they have arrived. */
  async take(count: number): Promise<SSEEvent[]> {
    // Checked after every event: a count, not a copy of the log (which made
    // 16 384 events cost 10 s on a loaded machine).
    await this.until(() => this.#events.length >= count, `${count} events`);
    return this.#events.slice(0, count);
  }

  /** Resolves once the server has ended the stream. */
  async closed(): Promise<void> {
    await within(this.#pump, WAIT_MS, "the end of the stream");
    assert.equal(this.ended, true);
  }

  /** Goes away: cancels the body, which closes the connection. */
  async close(): Promise<void> {
    await this.#reader.cancel().catch(() => {});
    await this.#pump;
  }

  #push(item: Item): void {
    this.log.push(item);
    if (item.kind === "event") this.#events.push(item.event);
    this.#wake?.();
  }

  async #run(): Promise<void> {
    try {
      for (;;) {
        const { done, value } = await this.#reader.read();
        if (done) break;
        this.#push({ kind: "event", event: value });
      }
    } catch (error) {
      this.error = error;
    } finally {
      this.ended = true;
      this.#wake?.();
    }
  }
}

export async function peek(response: Response): Promise<string> {
  if (response.status === 200) return "";
  return `status ${response.status}: ${await response.text()}`;
}

/** A small deterministic generator, so a failure replays the same way. */
export function randomFrom(seed: number): (n: number) => number {
  return (n) => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed % n;
  };
}

/** Counts calls and lets a test wait for the n-th. */
export class Counter {
  count = 0;
  #waiters: { n: number; resolve: () => void }[] = [];

  readonly hit = (): void => {
    this.count++;
    this.#waiters = this.#waiters.filter((waiter) => {
      if (this.count < waiter.n) return true;
      waiter.resolve();
      return false;
    });
  };

  reach(n: number, what: string): Promise<void> {
    if (this.count >= n) return Promise.resolve();
    const { promise, resolve } = Promise.withResolvers<void>();
    this.#waiters.push({ n, resolve });
    return within(promise, WAIT_MS, what);
  }
}

/** Reads a stream of text lines, one `next()` at a time. */
export class Lines {
  #reader: ReadableStreamDefaultReader<string>;
  #buffer = "";

  constructor(stream: ReadableStream<Uint8Array>) {
    this.#reader = stream.pipeThrough(new TextDecoderStream()).getReader();
  }

  /** The next line, or `null` at the end of the stream. */
  async next(): Promise<string | null> {
    for (;;) {
      const end = this.#buffer.indexOf("\n");
      if (end >= 0) {
        const line = this.#buffer.slice(0, end);
        this.#buffer = this.#buffer.slice(end + 1);
        return line;
      }
      const { done, value } = await this.#reader.read();
      if (done) return null;
      this.#buffer += value;
    }
  }

  /** Reads to the end. */
  async drain(): Promise<void> {
    while (await this.next() !== null) { /* discard */ }
  }
}

/**
 * A client on a raw TCP socket, which reads only when told: a stalled or
 * paused reader, as a phone that went into a tunnel is.
 */
export class RawClient {
  readonly conn: Deno.TcpConn;
  /** Bytes read so far, as text (the chunked HTTP response). */
  text = "";
  #decoder = new TextDecoder();
  #buffer = new Uint8Array(256 * 1024);

  static async open(
    url: string,
    headers: Record<string, string> = {},
  ): Promise<RawClient> {
    const { hostname, port, pathname } = new URL(url);
    const conn = await Deno.connect({ hostname, port: Number(port) });
    const lines = [`GET ${pathname} HTTP/1.1`, `host: ${hostname}`];
    for (const [name, value] of Object.entries(headers)) {
      lines.push(`${name}: ${value}`);
    }
    await conn.write(new TextEncoder().encode(lines.join("\r\n") + "\r\n\r\n"));
    return new RawClient(conn);
  }

  constructor(conn: Deno.TcpConn) {
    this.conn = conn;
  }

  /**
   * Reads until `done()` holds; resolves to `false` if the connection ends
   * first.
   */
  async readUntil(done: () => boolean, what: string): Promise<boolean> {
    const read = async () => {
      while (!done()) {
        let n: number | null;
        try {
          n = await this.conn.read(this.#buffer);
        } catch (error) {
          if (error instanceof Deno.errors.ConnectionReset) return false;
          throw error;
        }
        if (n === null) return false;
        this.text += this.#decoder.decode(this.#buffer.subarray(0, n), {
          stream: true,
        });
      }
      return true;
    };
    return await within(read(), WAIT_MS, what);
  }

  /** Whether the chunked response has ended (its last, empty chunk). */
  get ended(): boolean {
    return this.text.endsWith("\r\n0\r\n\r\n");
  }

  close(): void {
    try {
      this.conn.close();
    } catch {
      // Already closed.
    }
  }
}
