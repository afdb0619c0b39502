// Copyright the sse authors. MIT license.
/**
 * Test helper: a real `redis-server` (the Debian package; `.ci/setup` installs
 * it) on 127.0.0.1 with a random free port, in its own temporary directory.
 *
 * Outside CI a missing `redis-server` makes the Redis tests skip with a clear
 * message ({@linkcode REDIS_SKIP}); in CI (`CI=true`) it is a failure.
 *
 * @module
 */

import { createClient } from "@redis/client";

/** Why the Redis tests are skipped, or `undefined` when they can run. */
export const REDIS_SKIP: string | undefined = await findRedisServer();

async function findRedisServer(): Promise<string | undefined> {
  try {
    const { success } = await new Deno.Command("redis-server", {
      args: ["--version"],
      stdin: "null",
      stdout: "null",
      stderr: "null",
    }).output();
    if (success) return undefined;
  } catch (error) {
    if (!(error instanceof Deno.errors.NotFound)) throw error;
  }
  if (Deno.env.get("CI") === "true") {
    throw new Error(
      "redis-server not found: CI must install it (.ci/setup does)",
    );
  }
  const message =
    "redis-server not found: Redis tests skipped (run .ci/setup or apt-get install redis-server)";
  console.warn(`%c${message}`, "color: yellow");
  return message;
}

/** Options of {@linkcode startRedis}. */
export interface RedisServerOptions {
  /**
   * Persist every write before replying (`--appendonly yes --appendfsync
   * always`), so that {@linkcode RedisServer.restart} loses nothing.
   * @default {false}
   */
  persistent?: boolean;
  /**
   * More `redis-server` arguments, such as `["--maxmemory", "4mb"]`.
   * @default {[]}
   */
  args?: string[];
}

/** A running `redis-server` owned by a test. */
export interface RedisServer {
  /** `redis://127.0.0.1:<port>` */
  readonly url: string;
  readonly port: number;
  /** Whether the process is currently running. */
  readonly running: boolean;
  /** Stops the process (SIGTERM, so an append-only file is flushed), keeping the data directory. */
  stop(): Promise<void>;
  /** Starts it again on the same port and data directory. */
  start(): Promise<void>;
  /** `stop()` then `start()`. */
  restart(): Promise<void>;
  /**
   * Freezes the process (SIGSTOP): connections stay open, nothing answers,
   * as with a Redis stuck on a slow disk or a paused VM. It thaws by itself
   * after `limit` ms, so that code which waits for Redis fails a test
   * instead of hanging it.
   */
  freeze(limit?: number): void;
  /** Lets a frozen process run again (SIGCONT). */
  thaw(): void;
  /** Stops the process and removes its directory. Idempotent. */
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/**
 * Starts a `redis-server` on 127.0.0.1 with a free port, no RDB snapshots and
 * (unless `persistent`) no append-only file, in a fresh temporary directory.
 *
 * @param options Persistence.
 * @returns The running server; `close()` it (or `await using`) at the end.
 */
export async function startRedis(
  options: RedisServerOptions = {},
): Promise<RedisServer> {
  if (REDIS_SKIP !== undefined) throw new Error(REDIS_SKIP);
  const dir = await Deno.makeTempDir({ prefix: "sse-redis-" });
  try {
    for (let attempt = 1;; attempt++) {
      const port = freePort();
      try {
        const process = await spawnRedis(port, dir, options);
        return new Server(port, dir, options, process);
      } catch (error) {
        // Another process may take the port between freePort() and bind.
        if (attempt >= 5 || !String(error).includes("in use")) throw error;
      }
    }
  } catch (error) {
    await Deno.remove(dir, { recursive: true });
    throw error;
  }
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = listener.addr;
  listener.close();
  return port;
}

interface RedisProcess {
  child: Deno.ChildProcess;
  /** Resolves when the output is fully read, i.e. the process has exited. */
  drained: Promise<void>;
}

async function spawnRedis(
  port: number,
  dir: string,
  options: RedisServerOptions,
): Promise<RedisProcess> {
  const args = [
    "--port",
    String(port),
    "--bind",
    "127.0.0.1",
    "--dir",
    dir,
    "--save",
    "",
    "--logfile",
    "",
    "--daemonize",
    "no",
  ];
  if (options.persistent) {
    args.push("--appendonly", "yes", "--appendfsync", "always");
  } else {
    args.push("--appendonly", "no");
  }
  args.push(...options.args ?? []);
  const child = new Deno.Command("redis-server", {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();

  // Redis logs to stdout and reports fatal configuration errors on stderr;
  // both are read to the end (so the pipes never fill), and the log is kept
  // for the error message if the server does not become ready.
  let log = "";
  let onReady: () => void = () => {};
  const ready = new Promise<void>((resolve) => onReady = resolve);
  const read = async (stream: ReadableStream<Uint8Array>) => {
    for await (const text of stream.pipeThrough(new TextDecoderStream())) {
      log += text;
      if (log.includes("Ready to accept connections")) onReady();
      if (log.length > 64_000) log = log.slice(-32_000);
    }
  };
  const drained = Promise.all([read(child.stdout), read(child.stderr)])
    .then(() => {});
  const exited = drained.then(() => child.status);
  const first = await Promise.race([ready.then(() => undefined), exited]);
  if (first !== undefined) {
    throw new Error(
      `redis-server exited with code ${first.code} before it was ready: ${log.trim()}`,
    );
  }
  return { child, drained };
}

class Server implements RedisServer {
  readonly url: string;
  readonly port: number;
  #dir: string;
  #options: RedisServerOptions;
  #process: RedisProcess | undefined;
  #thawTimer: ReturnType<typeof setTimeout> | undefined;
  #closed = false;

  constructor(
    port: number,
    dir: string,
    options: RedisServerOptions,
    process: RedisProcess,
  ) {
    this.port = port;
    this.url = `redis://127.0.0.1:${port}`;
    this.#dir = dir;
    this.#options = options;
    this.#process = process;
  }

  get running(): boolean {
    return this.#process !== undefined;
  }

  freeze(limit = 15_000): void {
    if (this.#process === undefined) {
      throw new Error("Cannot freeze: the server is not running");
    }
    this.#process.child.kill("SIGSTOP");
    clearTimeout(this.#thawTimer);
    this.#thawTimer = setTimeout(() => this.thaw(), limit);
  }

  thaw(): void {
    clearTimeout(this.#thawTimer);
    this.#thawTimer = undefined;
    this.#process?.child.kill("SIGCONT");
  }

  async stop(): Promise<void> {
    const process = this.#process;
    if (process === undefined) return;
    this.#process = undefined;
    // A frozen process would not act on SIGTERM until thawed.
    clearTimeout(this.#thawTimer);
    process.child.kill("SIGCONT");
    process.child.kill("SIGTERM");
    await process.child.status;
    await process.drained;
  }

  async start(): Promise<void> {
    if (this.#closed) throw new Error("Cannot start: the server is closed");
    if (this.#process !== undefined) return;
    // While it was stopped, another socket (an outgoing connection given it
    // as its local port) may hold the port for a while: try again for 5 s.
    for (const deadline = Date.now() + 5_000;;) {
      try {
        this.#process = await spawnRedis(this.port, this.#dir, this.#options);
        return;
      } catch (error) {
        if (Date.now() > deadline || !String(error).includes("in use")) {
          throw error;
        }
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
    }
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.stop();
    await Deno.remove(this.#dir, { recursive: true });
  }

  [Symbol.asyncDispose](): Promise<void> {
    return this.close();
  }
}

/** A raw node-redis connection, for what a test writes or reads behind the broker. */
export interface RawClient {
  send(args: string[]): Promise<unknown>;
  close(): Promise<void>;
}

/**
 * Opens a raw RESP2 connection to look at what a broker stored, or to store
 * what another program would.
 *
 * @param url The server's URL.
 * @returns Once connected; `close()` it at the end.
 */
export async function rawClient(url: string): Promise<RawClient> {
  const client = createClient({ url, RESP: 2 });
  client.on("error", () => {}); // the tests restart Redis under it
  await client.connect();
  return {
    send: (args) => client.sendCommand(args),
    close: () => client.close(),
  };
}

/**
 * Retries `publish` until it resolves, while Redis is coming back: publish
 * rejects while it is unreachable, and retrying is the application's call.
 *
 * @param publish One attempt.
 * @returns The id, once an attempt succeeds; rejects after 10 s of failures.
 */
export async function publishWhenUp(
  publish: () => Promise<string>,
): Promise<string> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      return await publish();
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
  }
}

/**
 * Registers a test that needs `redis-server` (skipped without it, outside
 * CI), with the op and resource sanitizers on.
 *
 * @param name What it shows, as a sentence.
 * @param fn The test.
 */
export function redisTest(name: string, fn: () => Promise<void>): void {
  Deno.test({
    name,
    ignore: REDIS_SKIP !== undefined,
    sanitizeOps: true,
    sanitizeResources: true,
    fn,
  });
}

/**
 * The URL of a port on 127.0.0.1 where a Redis just ran and nothing listens
 * any more: connecting is refused at once.
 *
 * @returns `redis://127.0.0.1:<port>`
 */
export async function unreachableRedisUrl(): Promise<string> {
  const redis = await startRedis();
  await redis.close();
  return redis.url;
}

/**
 * Runs Redis commands from another process (`redis-cli`) while this process
 * is held back: its event loop waits for them, as under a CPU-heavy request
 * or a long garbage collection, so that a broker here reads nothing until
 * they are all done. Each command is `[repeat, ...args]`: run `repeat`
 * times in a row.
 *
 * @param redis The server.
 * @param commands The commands, in order.
 */
export function runWhileHeld(
  redis: RedisServer,
  ...commands: [number, ...string[]][]
): void {
  for (const [repeat, ...args] of commands) {
    const { success, stderr } = new Deno.Command("redis-cli", {
      args: ["-p", String(redis.port), "-r", String(repeat), ...args],
      stdin: "null",
      stdout: "null",
      stderr: "piped",
    }).outputSync();
    if (!success) {
      throw new Error(`redis-cli failed: ${new TextDecoder().decode(stderr)}`);
    }
  }
}
