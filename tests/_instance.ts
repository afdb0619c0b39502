// Copyright the sse authors. MIT license.
/**
 * Test and benchmark helpers for multi-instance runs: start
 * `tests/fixtures/instance_server.ts` as a separate process, and read an
 * instance's event stream.
 *
 * @module
 */

import { type SSEEvent, SSEParserStream } from "../parser.ts";

const SERVER = new URL("./fixtures/instance_server.ts", import.meta.url);

/** Options of {@linkcode startInstance}. */
export interface InstanceOptions {
  /**
   * `redis` (needs `redisUrl`), `kv` (needs `kvPath`) or `memory`.
   * @default {"redis"}
   */
  broker?: "redis" | "kv" | "memory";
  redisUrl?: string;
  /** The Deno KV file of a `kv` instance. */
  kvPath?: string;
  /** A `kv` instance's `pollInterval`, in ms. @default {1000} */
  pollInterval?: number;
  /** The channel's replay window. @default {1000} */
  replay?: number;
}

/** A running instance process. */
export interface Instance {
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  /** Everything it wrote on stderr so far. */
  readonly stderr: string;
  /** Publishes one message; resolves to the response (200 with `{id}`, or 503). */
  publish(
    message: Record<string, unknown>,
    topic?: string,
  ): Promise<Response>;
  /** Stops it: SIGTERM (graceful) or SIGKILL; waits until it has exited. */
  stop(signal?: "SIGTERM" | "SIGKILL"): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Starts an instance process on a free port of 127.0.0.1.
 *
 * @param options Broker and replay window.
 * @returns Once it listens.
 */
export async function startInstance(
  options: InstanceOptions = {},
): Promise<Instance> {
  const args = ["run", "-A", "--unstable-kv", SERVER.href, "--port", "0"];
  args.push("--broker", options.broker ?? "redis");
  if (options.redisUrl !== undefined) {
    args.push("--redis-url", options.redisUrl);
  }
  if (options.kvPath !== undefined) args.push("--kv", options.kvPath);
  if (options.pollInterval !== undefined) {
    args.push("--poll-interval", String(options.pollInterval));
  }
  args.push("--replay", String(options.replay ?? 1000));
  const child = new Deno.Command(Deno.execPath(), {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();

  let stdout = "";
  let stderr = "";
  const { promise: listening, resolve: onListening } = Promise
    .withResolvers<number>();
  const drain = async (
    stream: ReadableStream<Uint8Array>,
    onText: (text: string) => void,
  ) => {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      onText(text);
    }
  };
  const drained = Promise.all([
    drain(child.stdout, (text) => {
      stdout += text;
      const line = /^\{"port":(\d+)\}$/m.exec(stdout);
      if (line) onListening(Number(line[1]));
    }),
    drain(child.stderr, (text) => stderr += text),
  ]);
  const exited = drained.then(() => child.status);
  const port = await Promise.race([listening, exited]);
  if (typeof port !== "number") {
    throw new Error(
      `Instance exited with code ${port.code} before listening: ${stderr}`,
    );
  }
  const url = `http://127.0.0.1:${port}`;
  let stopped: Promise<void> | undefined;
  const stop = (signal: "SIGTERM" | "SIGKILL" = "SIGTERM") => {
    stopped ??= (async () => {
      try {
        child.kill(signal);
      } catch {
        // Already exited.
      }
      await child.status;
      await drained;
    })();
    return stopped;
  };
  return {
    url,
    get stderr() {
      return stderr;
    },
    publish(message, topic) {
      const query = topic === undefined
        ? ""
        : `?topic=${encodeURIComponent(topic)}`;
      return fetch(`${url}/publish${query}`, {
        method: "POST",
        body: JSON.stringify(message),
      });
    },
    stop,
    [Symbol.asyncDispose]: () => stop("SIGTERM"),
  };
}

/** Reads one event stream and lets a test wait for events. */
export class EventReader {
  readonly events: SSEEvent[] = [];
  /** Settles when the stream ends, normally or not. */
  readonly ended: Promise<void>;
  #reader: ReadableStreamDefaultReader<SSEEvent>;
  #waiters: (() => void)[] = [];
  #done = false;

  private constructor(body: ReadableStream<Uint8Array>) {
    this.#reader = body.pipeThrough(new SSEParserStream()).getReader();
    this.ended = this.#pump();
  }

  /**
   * Connects to an instance's `/events`.
   *
   * @param url The instance's base URL.
   * @param lastEventId Sent as `Last-Event-ID` when given.
   * @returns Once the response headers are in.
   */
  static async open(url: string, lastEventId?: string): Promise<EventReader> {
    const headers = lastEventId === undefined
      ? undefined
      : { "last-event-id": lastEventId };
    const response = await fetch(`${url}/events`, headers && { headers });
    if (response.status !== 200 || response.body === null) {
      await response.body?.cancel();
      throw new Error(`GET /events answered ${response.status}`);
    }
    return new EventReader(response.body);
  }

  get ids(): string[] {
    return this.events.map((event) => event.id);
  }

  get data(): string[] {
    return this.events.map((event) => event.data);
  }

  async #pump(): Promise<void> {
    try {
      for (;;) {
        const { done, value } = await this.#reader.read();
        if (done) break;
        this.events.push(value);
        this.#wake();
      }
    } catch {
      // The connection broke (the instance was killed): the stream ends.
    } finally {
      this.#done = true;
      this.#wake();
    }
  }

  #wake(): void {
    for (const wake of this.#waiters.splice(0)) wake();
  }

  /**
   * Resolves once `count` events have arrived; rejects if the stream ends
   * first or after 15 s.
   */
  async until(count: number): Promise<void> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () =>
          reject(
            new Error(
              `Expected ${count} events within 15 s, got ${this.events.length}`,
            ),
          ),
        15_000,
      );
    });
    try {
      while (this.events.length < count) {
        if (this.#done) {
          throw new Error(
            `Stream ended after ${this.events.length} of ${count} events`,
          );
        }
        await Promise.race([
          new Promise<void>((resolve) => this.#waiters.push(resolve)),
          timeout,
        ]);
      }
    } finally {
      clearTimeout(timer);
    }
  }

  /** Stops reading and releases the connection. */
  async close(): Promise<void> {
    await this.#reader.cancel().catch(() => {});
    await this.ended;
  }
}
