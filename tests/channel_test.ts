// Copyright the sse authors. MIT license.
import assert from "node:assert/strict";
import FakeTimers from "@sinonjs/fake-timers";
import { Hono } from "hono";
import {
  MemoryBroker,
  type SSEBroker,
  type SSEBrokerEntry,
  type SSEBrokerSubscription,
  SSEChannel,
  type SSEMessage,
} from "../server.ts";
import { type SSEEvent, SSEParserStream } from "../parser.ts";
import {
  assertEndedStream,
  Client,
  Counter,
  Lines,
  randomFrom,
  RawClient,
  serve,
  spawnServer,
  test,
  WAIT_MS,
  within,
} from "./_channel.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/**
 * A broker that counts the subscriptions open on it and the history calls
 * made. With `lag`, it behaves like a remote broker: a subscription gets its
 * entries late, from its own timer, `subscribe` itself takes a while, and
 * `history` answers later than it read (so a page can be stale by the time
 * it arrives).
 */
class CountingBroker implements SSEBroker {
  readonly inner = new MemoryBroker();
  active = 0;
  opened = 0;
  historyCalls = 0;
  #random: ((n: number) => number) | undefined;
  #timers = new Set<ReturnType<typeof setTimeout>>();

  constructor(options: { lag?: boolean; seed?: number } = {}) {
    if (options.lag) this.#random = randomFrom(options.seed ?? 7);
  }

  publish(
    name: string,
    entry: { topic: string; message: SSEMessage },
    options: { replay: number },
  ): Promise<string> {
    return this.inner.publish(name, entry, options);
  }

  async subscribe(
    name: string,
    onEntry: (entry: SSEBrokerEntry) => void,
  ): Promise<SSEBrokerSubscription> {
    const random = this.#random;
    let deliver = onEntry;
    let timer: ReturnType<typeof setTimeout> | undefined;
    if (random !== undefined) {
      await this.#later(random(3));
      const queue: SSEBrokerEntry[] = [];
      const flush = () => {
        timer = undefined;
        // Some now, the rest later: order is kept, timing is not.
        for (let n = 1 + random(3); n > 0 && queue.length > 0; n--) {
          onEntry(queue.shift()!);
        }
        if (queue.length > 0) timer = setTimeout(flush, random(2));
      };
      deliver = (entry) => {
        queue.push(entry);
        timer ??= setTimeout(flush, random(2));
      };
    }
    const subscription = await this.inner.subscribe(name, deliver);
    this.active++;
    this.opened++;
    let open = true;
    return {
      unsubscribe: () => {
        if (!open) return;
        open = false;
        this.active--;
        clearTimeout(timer);
        timer = undefined;
        subscription.unsubscribe();
      },
    };
  }

  async history(
    name: string,
    options: { after: string; limit: number },
  ): Promise<SSEBrokerEntry[] | null> {
    this.historyCalls++;
    const page = await this.inner.history(name, options);
    if (this.#random !== undefined) await this.#later(this.#random(3));
    return page;
  }

  close(): Promise<void> {
    for (const timer of this.#timers) clearTimeout(timer);
    return this.inner.close();
  }

  #later(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#timers.delete(timer);
        resolve();
      }, ms);
      this.#timers.add(timer);
    });
  }
}

/**
 * A broker whose shared subscription gets entries only when the test says
 * so (`flush(n)` delivers the next `n` entries queued for it), and whose
 * `history` calls read the history at once but are answered only when the
 * test says so (`answer()` answers the oldest one).
 */
class ManualBroker implements SSEBroker {
  readonly inner = new MemoryBroker();
  readonly queue: SSEBrokerEntry[] = [];
  target: ((entry: SSEBrokerEntry) => void) | undefined;
  readonly asked: {
    page: Promise<SSEBrokerEntry[] | null>;
    resolve: (page: SSEBrokerEntry[] | null) => void;
  }[] = [];
  historyCalls = 0;

  publish(
    name: string,
    entry: { topic: string; message: SSEMessage },
    options: { replay: number },
  ): Promise<string> {
    return this.inner.publish(name, entry, options);
  }

  async subscribe(
    name: string,
    onEntry: (entry: SSEBrokerEntry) => void,
  ): Promise<SSEBrokerSubscription> {
    this.target = onEntry;
    const subscription = await this.inner.subscribe(
      name,
      (entry) => this.queue.push(entry),
    );
    return {
      unsubscribe: () => {
        this.target = undefined;
        subscription.unsubscribe();
      },
    };
  }

  history(
    name: string,
    options: { after: string; limit: number },
  ): Promise<SSEBrokerEntry[] | null> {
    this.historyCalls++;
    const { promise, resolve } = Promise.withResolvers<
      SSEBrokerEntry[] | null
    >();
    this.asked.push({ page: this.inner.history(name, options), resolve });
    return promise;
  }

  /** Delivers the next `count` entries to the shared subscription. */
  flush(count = Infinity): void {
    for (; count > 0 && this.queue.length > 0; count--) {
      this.target?.(this.queue.shift()!);
    }
  }

  /** Resolves once a history call waits for its answer. */
  async asking(): Promise<void> {
    await within(
      (async () => {
        while (this.asked.length === 0) {
          await new Promise((resolve) => setTimeout(resolve, 1));
        }
      })(),
      WAIT_MS,
      "a history call",
    );
  }

  /** Answers the oldest pending history call; fails if none comes. */
  async answer(): Promise<void> {
    await this.asking();
    const { page, resolve } = this.asked.shift()!;
    resolve(await page);
    // Let the channel act on the page.
    await new Promise((resolve) => setTimeout(resolve, 1));
  }

  close(): Promise<void> {
    for (const { resolve } of this.asked.splice(0)) resolve(null);
    return this.inner.close();
  }
}

function topicsOf(request: Request): { topics?: string[] } {
  const topics = new URL(request.url).searchParams.getAll("topic");
  return topics.length === 0 ? {} : { topics };
}

function frame(id: string, body: string): string {
  return `id: ${id}\n${body}`;
}

/** A Last-Event-ID header value: UTF-8 bytes, one character per byte. */
function byteString(text: string): string {
  return String.fromCharCode(...encoder.encode(text));
}

test("SSEChannel delivers every message to every client, in publish order, with the id publish resolved to", async () => {
  const channel = new SSEChannel();
  const server = serve((request) => channel.connect(request));
  const clients = await Promise.all(
    [1, 2, 3].map(() => Client.open(server.url)),
  );
  try {
    assert.equal(channel.size, 3);
    const messages: SSEMessage[] = [];
    for (let i = 0; i < 50; i++) {
      messages.push(
        i % 3 === 0
          ? { data: { i, text: "jsön" } }
          : i % 3 === 1
          ? { event: "line", data: `line ${i}\nsecond\r\nthird` }
          : { data: "", comment: "comment" },
      );
    }
    const ids: string[] = [];
    for (const message of messages) ids.push(await channel.publish(message));
    assert.equal(new Set(ids).size, ids.length);
    const expected = messages.map((message, i) => ({
      type: message.event ?? "message",
      data: typeof message.data === "string"
        ? message.data.replace(/\r\n|\r/g, "\n")
        : JSON.stringify(message.data),
      id: ids[i],
    }));
    for (const client of clients) {
      assert.deepEqual(await client.take(50), expected);
      assert.equal(
        client.response.headers.get("content-type"),
        "text/event-stream; charset=utf-8",
      );
      assert.equal(client.response.headers.get("cache-control"), "no-cache");
      assert.equal(client.response.headers.get("x-accel-buffering"), "no");
    }
  } finally {
    await Promise.all(clients.map((client) => client.close()));
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel enqueues one encoded chunk that reaches two clients byte for byte", async () => {
  const channel = new SSEChannel({ keepAlive: 0 });
  const server = serve((request) => channel.connect(request));
  const responses = await Promise.all(
    [1, 2].map(() => fetch(server.url)),
  );
  try {
    const first = await channel.publish({ event: "ü", data: "😀\nline" });
    const second = await channel.publish({ data: { n: 1 } });
    // The opening comment (nothing else went first), then the frames.
    const expected = ":\n\n" +
      frame(first, "event: ü\ndata: 😀\ndata: line\n\n") +
      frame(second, 'data: {"n":1}\n\n');
    const bodies = await Promise.all(responses.map(async (response) => {
      const reader = response.body!.getReader();
      let bytes = new Uint8Array(0);
      while (bytes.length < encoder.encode(expected).length) {
        const { done, value } = await within(reader.read(), WAIT_MS, "body");
        if (done) break;
        bytes = new Uint8Array([...bytes, ...value]);
      }
      await reader.cancel();
      return bytes;
    }));
    assert.deepEqual(bodies[0], bodies[1]);
    assert.equal(decoder.decode(bodies[0]), expected);
  } finally {
    await Promise.all(responses.map((r) => r.body?.cancel().catch(() => {})));
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel sends a client only its topics, several per connection, and every topic without topics", async () => {
  const channel = new SSEChannel();
  const server = serve((request) =>
    channel.connect(request, topicsOf(request))
  );
  const everything = await Client.open(server.url);
  const a = await Client.open(`${server.url}/?topic=a`);
  const ab = await Client.open(`${server.url}/?topic=a&topic=b&topic=a`);
  const none = await Client.open(`${server.url}/?topic=`);
  try {
    await channel.publish({ data: "to a" }, { topic: "a" });
    await channel.publish({ data: "to b" }, { topic: "b" });
    await channel.publish({ data: "to c" }, { topic: "c" });
    await channel.publish({ data: "to none" });
    await channel.publish({ data: "end" }, { topic: "a" });
    await channel.publish({ data: "end" }, { topic: "" });
    await channel.publish({ data: "end" }, { topic: "b" });
    assert.deepEqual((await everything.take(7)).map((e) => e.data), [
      "to a",
      "to b",
      "to c",
      "to none",
      "end",
      "end",
      "end",
    ]);
    assert.deepEqual((await a.take(2)).map((e) => e.data), ["to a", "end"]);
    assert.deepEqual((await ab.take(4)).map((e) => e.data), [
      "to a",
      "to b",
      "end",
      "end",
    ]);
    assert.deepEqual((await none.take(2)).map((e) => e.data), [
      "to none",
      "end",
    ]);
    // Nothing more arrived after each client's last "end".
    assert.equal(a.events.length, 2);
    assert.equal(none.events.length, 2);
  } finally {
    await Promise.all([everything, a, ab, none].map((c) => c.close()));
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel resumes from Last-Event-ID with exactly the events missed, then live ones, and hands the client to the shared subscription", async () => {
  const broker = new CountingBroker();
  const inits: [string, boolean][] = [];
  const channel = new SSEChannel({
    broker,
    init(_context, lastEventId, { resumed }) {
      inits.push([lastEventId, resumed]);
    },
  });
  const server = serve((request) => channel.connect(request));
  const first = await Client.open(server.url);
  let second: Client | undefined;
  try {
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) {
      ids.push(await channel.publish({ data: String(i) }));
    }
    await first.take(5);
    await first.close();
    for (let i = 5; i < 7; i++) {
      ids.push(await channel.publish({ data: String(i) }));
    }
    second = await Client.open(server.url, { "last-event-id": ids[2]! });
    ids.push(await channel.publish({ data: "7" }));
    assert.deepEqual(await second.take(5), [
      { type: "message", data: "3", id: ids[3] },
      { type: "message", data: "4", id: ids[4] },
      { type: "message", data: "5", id: ids[5] },
      { type: "message", data: "6", id: ids[6] },
      { type: "message", data: "7", id: ids[7] },
    ]);
    assert.deepEqual(inits, [["", false], [ids[2], true]]);
    // Caught up: the shared subscription feeds it, history is not read.
    assert.equal(broker.active, 1);
    const calls = broker.historyCalls;
    ids.push(await channel.publish({ data: "8" }));
    assert.deepEqual((await second.take(6)).at(-1)?.data, "8");
    assert.equal(second.events.length, 6);
    assert.equal(broker.historyCalls, calls);
  } finally {
    await first.close();
    await second?.close();
    await channel.close();
    await server.shutdown();
    await broker.close();
  }
  assert.equal(broker.active, 0);
});

test("SSEChannel tells init when a Last-Event-ID is unknown or older than the replay window, so it can send a snapshot", async () => {
  const seen: [string, boolean][] = [];
  const channel = new SSEChannel({
    replay: 3,
    init(_context, lastEventId, { resumed }) {
      seen.push([lastEventId, resumed]);
      return resumed ? [] : [{ event: "snapshot", data: "state" }];
    },
  });
  const server = serve((request) => channel.connect(request));
  const clients: Client[] = [];
  try {
    const ids: string[] = [];
    for (let i = 0; i < 10; i++) {
      ids.push(await channel.publish({ data: String(i) }));
    }
    for (const lastEventId of [ids[5]!, "unknown", ids[6]!, ids[9]!]) {
      clients.push(
        await Client.open(server.url, { "last-event-id": lastEventId }),
      );
    }
    const live = await channel.publish({ data: "live" });
    const data = await Promise.all(clients.map(async (client, i) => {
      await client.until(
        () => client.events.at(-1)?.id === live,
        `client ${i} to get the live event`,
      );
      return client.data;
    }));
    assert.deepEqual(data, [
      ["state", "live"], // entry 6 was dropped: snapshot, no replay
      ["state", "live"],
      ["7", "8", "9", "live"], // everything after 6 is kept
      ["live"],
    ]);
    assert.deepEqual(seen, [
      [ids[5], false],
      ["unknown", false],
      [ids[6], true],
      [ids[9], true],
    ]);
  } finally {
    await Promise.all(clients.map((client) => client.close()));
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel decodes a UTF-8 Last-Event-ID sent as bytes before it calls init", async () => {
  const seen: string[] = [];
  const channel = new SSEChannel({
    init(_context, lastEventId) {
      seen.push(lastEventId);
      return [{ data: "hello" }];
    },
  });
  const server = serve((request) => channel.connect(request));
  const client = await Client.open(server.url, {
    "last-event-id": byteString("évé 😀"),
  });
  try {
    await client.take(1);
    assert.deepEqual(seen, ["évé 😀"]);
  } finally {
    await client.close();
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel writes the retry hint, then init's messages, then replayed, then live ones, holding what is published during init", async () => {
  const gate = Promise.withResolvers<void>();
  const initCalled = Promise.withResolvers<void>();
  const channel = new SSEChannel({
    retry: 1234,
    async init(_context, lastEventId) {
      if (lastEventId === "") return;
      initCalled.resolve();
      await gate.promise;
      return [{ event: "snapshot", data: "s1" }, { comment: "c" }];
    },
  });
  const server = serve((request) => channel.connect(request));
  let client: Client | undefined;
  try {
    const ids = [
      await channel.publish({ data: "1" }),
      await channel.publish({ data: "2" }),
      await channel.publish({ data: "3" }),
    ];
    const opening = Client.open(server.url, { "last-event-id": ids[0]! });
    await within(initCalled.promise, WAIT_MS, "init");
    ids.push(await channel.publish({ data: "4" }));
    gate.resolve();
    client = await opening;
    ids.push(await channel.publish({ data: "5" }));
    await client.take(5);
    assert.deepEqual(client.log, [
      { kind: "retry", ms: 1234 },
      { kind: "comment", text: "c" },
      { kind: "event", event: { type: "snapshot", data: "s1", id: "" } },
      { kind: "event", event: { type: "message", data: "2", id: ids[1] } },
      { kind: "event", event: { type: "message", data: "3", id: ids[2] } },
      { kind: "event", event: { type: "message", data: "4", id: ids[3] } },
      { kind: "event", event: { type: "message", data: "5", id: ids[4] } },
    ]);
  } finally {
    await client?.close();
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel refuses a connection with the Response onConnect returns, and passes its context to the other hooks", async () => {
  const disconnected = new Counter();
  const contexts: string[] = [];
  const channel = new SSEChannel({
    async onConnect(request) {
      await Promise.resolve();
      const user = request.headers.get("x-user");
      if (user === null) {
        return new Response("Unauthorized", {
          status: 401,
          headers: { "www-authenticate": "Bearer" },
        });
      }
      return { user };
    },
    init: (context) => [{ event: "hello", data: context.user }],
    filter: (context, message) =>
      message.event !== "secret" || context.user === "admin",
    onDisconnect(context) {
      contexts.push(context.user);
      disconnected.hit();
    },
  });
  const server = serve((request) => channel.connect(request));
  const refused = await fetch(server.url);
  assert.equal(refused.status, 401);
  assert.equal(refused.headers.get("www-authenticate"), "Bearer");
  assert.equal(await refused.text(), "Unauthorized");
  assert.equal(channel.size, 0);
  const admin = await Client.open(server.url, { "x-user": "admin" });
  const guest = await Client.open(server.url, { "x-user": "guest" });
  try {
    await channel.publish({ event: "secret", data: "s" });
    await channel.publish({ data: "public" });
    assert.deepEqual((await admin.take(3)).map((e) => e.data), [
      "admin",
      "s",
      "public",
    ]);
    assert.deepEqual((await guest.take(2)).map((e) => e.data), [
      "guest",
      "public",
    ]);
  } finally {
    await admin.close();
    await guest.close();
    await disconnected.reach(2, "both disconnects");
    await channel.close();
    await server.shutdown();
  }
  assert.deepEqual(contexts.sort(), ["admin", "guest"]);
});

test("SSEChannel rejects connect when a hook throws or init returns an unframeable message, and releases the client", async () => {
  const disconnected = new Counter();
  const channel = new SSEChannel<string>({
    onConnect: (request) => new URL(request.url).pathname,
    init(path) {
      if (path === "/throw") throw new Error("init failed");
      if (path === "/bad") return [{ event: "a\nb", data: "x" }];
      return [{ data: "ok" }];
    },
    onDisconnect: disconnected.hit,
  });
  const server = serve((request) => channel.connect(request));
  try {
    const failed = await fetch(`${server.url}/throw`);
    assert.equal(failed.status, 500);
    await failed.body?.cancel();
    const bad = await fetch(`${server.url}/bad`);
    assert.equal(bad.status, 500);
    await bad.body?.cancel();
    assert.equal(channel.size, 0);
    assert.equal(disconnected.count, 2);
    assert.equal((server.errors[0] as Error).message, "init failed");
    assert.ok(server.errors[1] instanceof TypeError);
    await assert.rejects(
      channel.connect(new Request("http://localhost/"), {
        topics: "a" as unknown as string[],
      }),
      { name: "TypeError", message: /topics/ },
    );
    await assert.rejects(
      channel.connect(new Request("http://localhost/"), {
        topics: ["a", 1 as unknown as string],
      }),
      TypeError,
    );
    await assert.rejects(
      channel.connect("http://localhost/" as unknown as Request),
      { name: "TypeError", message: /Request/ },
    );
  } finally {
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel ends the stream of a client whose filter throws, reports it, and keeps everyone else", async () => {
  const disconnected = new Counter();
  const reasons: [string, string][] = [];
  const reported: Error[] = [];
  const channel = new SSEChannel<string>({
    onConnect: (request) => request.headers.get("x-user") ?? "",
    filter(user, message) {
      if (user === "buggy" && message.data === "b") {
        throw new Error("filter bug");
      }
      return true;
    },
    onDisconnect(user, { reason }) {
      reasons.push([user, reason]);
      disconnected.hit();
    },
    onError: (error) => reported.push(error),
  });
  const server = serve((request) => channel.connect(request));
  const buggy = await Client.open(server.url, { "x-user": "buggy" });
  const fine = await Client.open(server.url, { "x-user": "fine" });
  try {
    await channel.publish({ data: "a" });
    await channel.publish({ data: "b" });
    await disconnected.reach(1, "the buggy client to be dropped");
    // It gets what came before, then a clean end: it reconnects from "a".
    await buggy.closed();
    assert.equal(buggy.error, undefined);
    assert.deepEqual(buggy.data, ["a"]);
    await channel.publish({ data: "c" });
    assert.deepEqual((await fine.take(3)).map((e) => e.data), ["a", "b", "c"]);
    assert.equal(channel.size, 1);
    assert.deepEqual(reasons, [["buggy", "filter-error"]]);
    assert.deepEqual(reported.map((error) => error.message), [
      "filter threw: filter bug",
    ]);
    assert.equal((reported[0]!.cause as Error).message, "filter bug");
  } finally {
    await buggy.close();
    await fine.close();
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel publish refuses an unframeable message before anything is stored or sent", async () => {
  const broker = new MemoryBroker();
  const stored: SSEBrokerEntry[] = [];
  const watcher = await broker.subscribe("default", (e) => stored.push(e));
  const channel = new SSEChannel({ broker });
  const server = serve((request) => channel.connect(request));
  const client = await Client.open(server.url);
  try {
    const refusals: [SSEMessage, unknown, { topic?: string }?][] = [
      [{ event: "a\nb", data: "x" }, { name: "TypeError", message: /event/ }],
      [{ data: "x", id: "mine" }, { name: "TypeError", message: /id/ }],
      [{ data: "x", id: 7 }, TypeError],
      [{ data: "x", retry: -1 }, RangeError],
      [{ data: "x", retry: 1.5 }, RangeError],
      [{ data: 1n }, { name: "TypeError", message: /JSON/ }],
      [{ data: () => {} }, { name: "TypeError", message: /JSON/ }],
      [{ data: "\ud800" }, { name: "TypeError", message: /surrogate/ }],
      [{ comment: "a", event: "e" }, TypeError],
      [{}, TypeError],
      [null as unknown as SSEMessage, TypeError],
      [{ data: "x" }, TypeError, { topic: 1 as unknown as string }],
    ];
    for (const [message, error, options] of refusals) {
      await assert.rejects(channel.publish(message, options), error as Error);
    }
    const id = await channel.publish({ data: "valid" });
    assert.deepEqual(await client.take(1), [
      { type: "message", data: "valid", id },
    ]);
    assert.deepEqual(stored.map((entry) => entry.id), [id]);
  } finally {
    watcher.unsubscribe();
    await client.close();
    await channel.close();
    await server.shutdown();
    await broker.close();
  }
});

test("SSEChannel close ends every stream, answers new connections 503, refuses publish and is idempotent", async () => {
  const disconnected = new Counter();
  const broker = new CountingBroker();
  const channel = new SSEChannel({ broker, onDisconnect: disconnected.hit });
  const server = serve((request) => channel.connect(request));
  const clients = [
    await Client.open(server.url),
    await Client.open(server.url),
  ];
  try {
    await channel.publish({ data: "last" });
    await Promise.all(clients.map((client) => client.take(1)));
    const closing = [channel.close(), channel.close()];
    assert.equal(closing[0], closing[1]);
    await Promise.all(closing);
    for (const client of clients) {
      await client.closed();
      assert.equal(client.error, undefined);
      assert.deepEqual(client.data, ["last"]);
    }
    assert.equal(channel.size, 0);
    assert.equal(disconnected.count, 2);
    assert.equal(broker.active, 0);
    const refused = await fetch(server.url);
    assert.equal(refused.status, 503);
    await refused.body?.cancel();
    await assert.rejects(channel.publish({ data: "late" }), {
      name: "TypeError",
      message: /closed/,
    });
    // A broker passed in may serve others: the channel leaves it open.
    const id = await broker.publish("other", {
      topic: "",
      message: { data: "x" },
    }, { replay: 1 });
    assert.match(id, /-/);
  } finally {
    await Promise.all(clients.map((client) => client.close()));
    await channel.close();
    await server.shutdown();
    await broker.close();
  }
});

test("SSEChannel ends the streams of connections still in onConnect or init when it closes", async () => {
  const gate = Promise.withResolvers<void>();
  const waiting = new Counter();
  const disconnected = new Counter();
  const channel = new SSEChannel<string>({
    async onConnect(request) {
      const path = new URL(request.url).pathname;
      if (path === "/on-connect") {
        waiting.hit();
        await gate.promise;
      }
      return path;
    },
    async init(path) {
      if (path === "/init") {
        waiting.hit();
        await gate.promise;
      }
    },
    onDisconnect: disconnected.hit,
  });
  const server = serve((request) => channel.connect(request));
  try {
    const pending = ["/on-connect", "/init"].map((path) =>
      fetch(server.url + path)
    );
    await waiting.reach(2, "both connections to wait");
    assert.equal(channel.size, 1); // the one in init is counted
    await channel.close();
    assert.equal(disconnected.count, 1);
    gate.resolve();
    for (const response of await Promise.all(pending)) {
      await assertEndedStream(response, response.url);
    }
    assert.equal(channel.size, 0);
  } finally {
    gate.resolve();
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel notices a disconnect at once and releases the subscription and the timer", async () => {
  const disconnected = new Counter();
  const broker = new CountingBroker();
  const channel = new SSEChannel({
    broker,
    keepAlive: 60_000,
    onDisconnect: disconnected.hit,
  });
  const server = serve((request) => channel.connect(request));
  try {
    const id = await channel.publish({ data: "a" });
    const resuming = await Client.open(server.url, { "last-event-id": id });
    assert.equal(broker.active, 1);
    const plain = await Client.open(server.url);
    assert.equal(channel.size, 2);
    const started = performance.now();
    await resuming.close();
    await plain.close();
    await disconnected.reach(2, "both disconnects");
    assert.ok(performance.now() - started < 2000);
    assert.equal(channel.size, 0);
    assert.equal(broker.active, 1); // the channel's shared one
    // The sanitizer fails this test if the keep-alive interval outlived them.
  } finally {
    await channel.close();
    await server.shutdown();
    await broker.close();
  }
});

test("SSEChannel is back to size 0 with nothing leaked after 2000 connect, read, disconnect cycles", async () => {
  const disconnected = new Counter();
  const broker = new CountingBroker();
  const channel = new SSEChannel({
    broker,
    init: () => [{ data: "hello" }],
    onDisconnect: disconnected.hit,
  });
  const server = serve((request) => channel.connect(request));
  const CYCLES = 2000;
  const WORKERS = 20;
  let lastId = await channel.publish({ data: "first" });
  try {
    const started = performance.now();
    await Promise.all(
      Array.from({ length: WORKERS }, async (_, worker) => {
        for (let i = worker; i < CYCLES; i += WORKERS) {
          // Every fourth connection resumes, to cycle those subscriptions too.
          const headers: Record<string, string> = i % 4 === 0
            ? { "last-event-id": lastId }
            : {};
          const client = await Client.open(server.url, headers);
          await client.take(1);
          await client.close();
          if (i % 100 === 0) lastId = await channel.publish({ data: "more" });
        }
      }),
    );
    await disconnected.reach(CYCLES, "every disconnect");
    const seconds = (performance.now() - started) / 1000;
    assert.ok(seconds < 60, `took ${seconds} s`);
    assert.equal(channel.size, 0);
    assert.equal(broker.active, 1);
  } finally {
    await channel.close();
    await server.shutdown();
    await broker.close();
  }
  assert.equal(broker.active, 0);
});

/**
 * Clients that follow a channel by reconnecting with Last-Event-ID over and
 * over, while messages are published, must see every message of their topics
 * exactly once, in order.
 */
async function reconnectRace(
  broker: CountingBroker,
  options: { total?: number; away?: number } = {},
): Promise<void> {
  const disconnected = new Counter();
  const channel = new SSEChannel({
    broker,
    keepAlive: 0,
    onDisconnect: disconnected.hit,
  });
  const server = serve((request) =>
    channel.connect(request, topicsOf(request))
  );
  const TOTAL = options.total ?? 300;
  /** Messages published while a follower is away between connections. */
  const away = options.away ?? 0;
  let connections = 0;
  let published = 0;
  const random = randomFrom(42);
  const publisher = (async () => {
    for (; published < TOTAL; published++) {
      await channel.publish({ data: String(published) }, {
        topic: published % 2 ? "odd" : "even",
      });
      // Let connections, reads and disconnects interleave with publishes.
      if (random(3) === 0) await new Promise((r) => setTimeout(r, 0));
    }
  })();
  const follow = async (query: string, keep: (n: number) => boolean) => {
    const seen: number[] = [];
    let lastEventId = "";
    let attempts = 0;
    while (seen.length === 0 || seen.at(-1)! < TOTAL - 2) {
      attempts++;
      connections++;
      const client = await Client.open(
        server.url + query,
        lastEventId === "" ? {} : { "last-event-id": lastEventId },
      );
      const want = 1 + random(12);
      try {
        await client.until(
          () =>
            client.events.length >= want ||
            Number(client.events.at(-1)?.data) >= TOTAL - 2,
          `${want} events`,
        );
      } finally {
        await client.close();
      }
      for (const event of client.events) {
        seen.push(Number(event.data));
        lastEventId = event.id;
      }
      const back = Math.min(seen.at(-1)! + away, TOTAL);
      while (published < back) await new Promise((r) => setTimeout(r, 1));
    }
    const expected = [];
    for (let n = seen[0]!; n < TOTAL; n++) if (keep(n)) expected.push(n);
    assert.deepEqual(seen, expected.slice(0, seen.length));
    assert.ok(attempts > 3, `only ${attempts} connections`);
  };
  try {
    await Promise.all([
      publisher,
      follow("/", () => true),
      follow("/", () => true),
      follow("/?topic=odd", (n) => n % 2 === 1),
      follow("/?topic=even&topic=odd", () => true),
    ]);
    // Resuming connections read the history.
    assert.ok(broker.historyCalls > 10, `only ${broker.historyCalls} pages`);
    await disconnected.reach(connections, "every disconnect");
    assert.equal(channel.size, 0);
    assert.equal(broker.active, 1);
  } finally {
    await channel.close();
    await server.shutdown();
    await broker.close();
  }
}

test("SSEChannel leaves no gap and no duplicate for clients that reconnect while messages are published", async () => {
  await reconnectRace(new CountingBroker());
});

test("SSEChannel leaves no gap and no duplicate on a broker whose subscription and history answer late", async () => {
  await reconnectRace(new CountingBroker({ lag: true }));
});

test("SSEChannel leaves no gap and no duplicate for clients that come back pages behind, while messages are published", async () => {
  await reconnectRace(new CountingBroker(), { total: 1200, away: 250 });
  await reconnectRace(new CountingBroker({ lag: true, seed: 5 }), {
    total: 1200,
    away: 250,
  });
});

test("SSEChannel leaves no gap and no duplicate on a lagging broker, whatever the timing", async () => {
  for (const seed of [1, 2, 3]) {
    await reconnectRace(new CountingBroker({ lag: true, seed }));
  }
});

test("SSEChannel hands a resuming client over from history to the shared subscription whichever of the two is ahead", async () => {
  // Each scenario: what happens once "1" is published and a client resumes
  // after it, with the shared subscription and the history fed by hand.
  // `connect` resolves once the first page is answered.
  type Step = {
    broker: ManualBroker;
    publish: (data: string) => Promise<string>;
    /** Connects; `meanwhile` runs once the first page is read. */
    connect: (meanwhile?: () => Promise<void>) => Promise<void>;
  };
  const scenarios: Record<string, (step: Step) => Promise<void>> = {
    async "level: the page ends at the shared one's newest"(step) {
      await step.publish("2");
      step.broker.flush();
      await step.connect(); // page [2]: level, hand over
    },
    async "shared one ahead by one page"(step) {
      await step.publish("2");
      await step.publish("3");
      step.broker.flush(); // shared at 3
      await step.connect(async () => {
        // The page [2, 3] is read; the shared one moves on to 4 before it
        // arrives: the page is behind, merge up to 4.
        await step.publish("4");
        step.broker.flush();
      });
      await step.broker.asking(); // the next page is read: [4]
      await step.publish("5");
      step.broker.flush(); // 5 is collected for the client
      await step.broker.answer(); // page [4]: the merge ends, then 5
    },
    async "shared one behind the client"(step) {
      await step.publish("2");
      await step.publish("3");
      await step.connect(); // page [2, 3], shared has not delivered them
      await step.broker.answer(); // page []: wait for the shared one
      step.broker.flush(1); // shared delivers 2, which the client has
      step.broker.flush(1); // 3: level, hand over
    },
    async "shared one behind the Last-Event-ID"(step) {
      step.broker.queue.length = 0; // it never delivered 1
      await step.connect(); // page []: wait
      await step.publish("2");
      step.broker.flush(); // something new: read history again
      await step.broker.answer(); // page [2]: level
    },
  };
  for (const [name, scenario] of Object.entries(scenarios)) {
    const broker = new ManualBroker();
    const channel = new SSEChannel({ broker, keepAlive: 0 });
    const server = serve((request) => channel.connect(request));
    const watcher = await Client.open(server.url);
    let resuming: Client | undefined;
    try {
      const first = await channel.publish({ data: "1" });
      if (!name.endsWith("Last-Event-ID")) {
        broker.flush();
        await watcher.take(1);
      }
      const ids = [first];
      await scenario({
        broker,
        async publish(data) {
          const id = await channel.publish({ data });
          ids.push(id);
          return id;
        },
        async connect(meanwhile) {
          const opening = Client.open(server.url, { "last-event-id": first });
          await broker.asking();
          await meanwhile?.();
          await broker.answer();
          resuming = await opening;
        },
      });
      // Handed over: a live entry comes from the shared subscription alone.
      assert.equal(broker.asked.length, 0, `${name}: no history call waits`);
      const calls = broker.historyCalls;
      ids.push(await channel.publish({ data: "live" }));
      broker.flush();
      const events = await resuming!.take(ids.length - 1);
      assert.deepEqual(
        events,
        ids.slice(1).map((id, i) => ({
          type: "message",
          data: i === ids.length - 2 ? "live" : String(i + 2),
          id,
        })),
        name,
      );
      assert.equal(broker.historyCalls, calls, `${name}: handed over`);
      // The watcher has what the shared subscription delivered.
      const dropped = name.endsWith("Last-Event-ID") ? 1 : 0;
      await watcher.take(ids.length - dropped);
      assert.equal(resuming!.events.length, ids.length - 1, name);
    } finally {
      await watcher.close();
      await resuming?.close();
      await channel.close();
      await server.shutdown();
      await broker.close();
    }
  }
});

test("SSEChannel channels sharing a broker and a name are one stream, as processes sharing a broker are", async () => {
  const broker = new MemoryBroker();
  const one = new SSEChannel({ broker, name: "news" });
  const two = new SSEChannel({ broker, name: "news" });
  const other = new SSEChannel({ broker, name: "other" });
  const servers = [one, two, other].map((channel) =>
    serve((request) => channel.connect(request))
  );
  const clients = await Promise.all(servers.map((s) => Client.open(s.url)));
  let resumed: Client | undefined;
  try {
    const a = await one.publish({ data: "a" });
    const b = await two.publish({ data: "b" });
    await other.publish({ data: "elsewhere" });
    for (const client of clients.slice(0, 2)) {
      assert.deepEqual(await client.take(2), [
        { type: "message", data: "a", id: a },
        { type: "message", data: "b", id: b },
      ]);
    }
    assert.deepEqual((await clients[2]!.take(1)).map((e) => e.data), [
      "elsewhere",
    ]);
    // An id assigned through one channel resumes on the other.
    resumed = await Client.open(servers[1]!.url, { "last-event-id": a });
    assert.deepEqual(await resumed.take(1), [
      { type: "message", data: "b", id: b },
    ]);
  } finally {
    await Promise.all([...clients, resumed].map((client) => client?.close()));
    for (const channel of [one, two, other]) await channel.close();
    for (const server of servers) await server.shutdown();
    await broker.close();
  }
});

test("SSEChannel sends keep-alive comments only to idle clients, from one timer", async () => {
  const clock = FakeTimers.install({
    toFake: ["setInterval", "clearInterval"],
  });
  const channel = new SSEChannel<string>({
    keepAlive: 1000,
    onConnect: (request) => request.headers.get("x-name") ?? "",
    filter: (name) => name === "busy",
  });
  const server = serve((request) => channel.connect(request));
  const idle = await Client.open(server.url, { "x-name": "idle" });
  const busy = await Client.open(server.url, { "x-name": "busy" });
  try {
    assert.equal(clock.countTimers(), 1);
    const comments = (client: Client) =>
      client.log.filter((item) =>
        item.kind === "comment" && item.text === "keep-alive"
      ).length;
    clock.tick(500); // first tick: both were just written to (connected)
    clock.tick(500); // second tick: nothing written since the first
    await idle.until(() => comments(idle) === 1, "a keep-alive");
    await busy.until(() => comments(busy) === 1, "a keep-alive");
    // The opening comment (nothing else went first), then the keep-alive.
    assert.deepEqual(idle.log, [{ kind: "comment", text: "" }, {
      kind: "comment",
      text: "keep-alive",
    }]);
    // From now on busy gets a message every 500 ms and needs no keep-alive,
    // while idle still gets one every 1000 ms.
    for (let i = 0; i < 6; i++) {
      await channel.publish({ data: String(i) });
      clock.tick(500);
    }
    await busy.take(6);
    await idle.until(() => comments(idle) === 4, "three more keep-alives");
    assert.equal(comments(busy), 1);
    assert.deepEqual(busy.log[1], { kind: "comment", text: "keep-alive" });
  } finally {
    await idle.close();
    await busy.close();
    await channel.close();
    await server.shutdown();
    assert.equal(clock.countTimers(), 0);
    clock.uninstall();
  }
});

// The slow-client test: 64 MiB published (1024 messages of 64 KiB) while
// one client stalls on a raw socket and another reads everything. The server
// runs in a process of its own, started with --expose-gc, so that its memory
// can be measured after a full garbage collection, apart from the clients'.
// drainTimeout is short (100 ms) so that the stalled client is dropped while
// the test runs: until then it holds at most maxQueue (1 MiB) of what was
// published meanwhile (it falls behind, and keeps only its position).
const STALL_COUNT = 1024;
const STALL_SIZE = 64 * 1024;
/** Messages published ahead of the reading client's acknowledgements. */
const STALL_WINDOW = 8;
const MiB = 1024 * 1024;

/** The server side of the slow-client test (see above). */
async function stallServer(): Promise<void> {
  const gc = (globalThis as { gc?: () => void }).gc;
  assert.ok(gc, "run with --v8-flags=--expose-gc");
  const input = new Lines(Deno.stdin.readable);
  const print = (value: unknown) => console.log(JSON.stringify(value));
  const dropped: string[] = [];
  const connected = new Counter();
  const gone = new Counter();
  const channel = new SSEChannel<string>({
    maxQueue: MiB,
    drainTimeout: 100,
    replay: 4,
    keepAlive: 0,
    onConnect: (request) => request.headers.get("x-client") ?? "",
    onDisconnect(client, { reason }) {
      dropped.push(`${client}: ${reason}`);
      gone.hit();
    },
  });
  const server = serve(async (request) => {
    const response = await channel.connect(request);
    connected.hit();
    return response;
  });
  print({ url: server.url });
  await connected.reach(2, "both clients");
  gc();
  const before = Deno.memoryUsage();
  const filler = "x".repeat(STALL_SIZE - 8);
  let acknowledged = 0;
  for (let i = 0; i < STALL_COUNT; i++) {
    while (i - acknowledged >= STALL_WINDOW) {
      acknowledged = Number(await input.next());
    }
    await channel.publish({ data: String(i).padStart(8, "0") + filler });
  }
  while (acknowledged < STALL_COUNT) acknowledged = Number(await input.next());
  await gone.reach(1, "the stalled client to be dropped");
  // V8 frees the buffers of a collected ArrayBuffer a task after the
  // collection: collect, let that run, collect again.
  gc();
  await new Promise((resolve) => setTimeout(resolve, 50));
  gc();
  const after = Deno.memoryUsage();
  print({
    size: channel.size,
    dropped,
    errors: server.errors.map(String),
    heapAndExternal: after.heapUsed + after.external -
      (before.heapUsed + before.external),
    rss: after.rss - before.rss,
  });
  await input.drain();
  await channel.close();
  await server.shutdown();
}

if (import.meta.main && Deno.args[0] === "--stall-server") await stallServer();

test("SSEChannel drops a client that stops reading, without slowing others, and memory stays bounded", async () => {
  const child = spawnServer(import.meta.url, ["--stall-server"]);
  const output = new Lines(child.stdout);
  const acknowledge = child.stdin.getWriter();
  let stalled: Deno.TcpConn | undefined;
  let reader: ReadableStreamDefaultReader<SSEEvent> | undefined;
  try {
    const { url } = JSON.parse((await within(output.next(), WAIT_MS, "url"))!);
    const { hostname, port } = new URL(url);
    // Sends its request, then never reads.
    stalled = await Deno.connect({ hostname, port: Number(port) });
    await stalled.write(encoder.encode(
      `GET / HTTP/1.1\r\nhost: ${hostname}\r\nx-client: stalled\r\n\r\n`,
    ));
    const response = await fetch(url, { headers: { "x-client": "normal" } });
    const events = response.body!.pipeThrough(new SSEParserStream())
      .getReader();
    reader = events;
    const ids = new Set<string>();
    for (let i = 0; i < STALL_COUNT; i++) {
      const { done, value } = await within(
        events.read(),
        WAIT_MS,
        `event ${i}`,
      );
      assert.equal(done, false, `the stream ended after ${i} events`);
      assert.equal(value!.data.length, STALL_SIZE);
      assert.equal(value!.data.slice(0, 8), String(i).padStart(8, "0"));
      ids.add(value!.id);
      await acknowledge.write(encoder.encode(`${i + 1}\n`));
    }
    assert.equal(ids.size, STALL_COUNT);
    const result = JSON.parse(
      (await within(output.next(), WAIT_MS, "result"))!,
    );
    assert.equal(result.size, 1);
    assert.deepEqual(result.dropped, ["stalled: slow"]);
    assert.deepEqual(result.errors, []);
    console.log(
      `    64 MiB published past a stalled socket: heap and buffers ${
        (result.heapAndExternal / MiB).toFixed(1)
      } MiB, RSS ${(result.rss / MiB).toFixed(1)} MiB more than before`,
    );
    // Had the stalled client's queue been kept, about 60 MiB would remain.
    assert.ok(
      result.heapAndExternal < 16 * MiB,
      `JS heap and buffers grew by ${
        (result.heapAndExternal / MiB).toFixed(1)
      } MiB`,
    );
    // The process as a whole (the runtime's buffers and the allocator's
    // retention of the peak included) stays bounded.
    assert.ok(
      result.rss < 96 * MiB,
      `the process grew by ${(result.rss / MiB).toFixed(1)} MiB`,
    );
    // The stalled socket gets what was on its way (the kernel's buffers and
    // a little more), then the end of the connection: with the response's
    // last chunk when the runtime had taken the whole stream when it was
    // closed, else without (it took nothing for another drainTimeout, so
    // the stream was cut).
    const raw = new RawClient(stalled);
    await raw.readUntil(() => raw.ended, "the end");
    assert.ok(
      raw.text.length < 16 * MiB,
      `the stalled client got ${raw.text.length} bytes`,
    );
  } finally {
    stalled?.close();
    await reader?.cancel();
    await acknowledge.close();
    await output.drain();
    const status = await child.status;
    assert.equal(status.code, 0);
  }
});

test("SSEChannel serves from Hono with c.req.raw", async () => {
  const channel = new SSEChannel({
    onConnect: (request) =>
      request.headers.has("authorization")
        ? undefined
        : new Response("Unauthorized", { status: 401 }),
  });
  const app = new Hono();
  app.get("/events", (c) => {
    const topics = c.req.queries("topic");
    return channel.connect(c.req.raw, topics ? { topics } : {});
  });
  const server = serve(app.fetch);
  const refused = await fetch(`${server.url}/events`);
  assert.equal(refused.status, 401);
  await refused.body?.cancel();
  const auth = { authorization: "Bearer t" };
  const all = await Client.open(`${server.url}/events`, auth);
  const b = await Client.open(`${server.url}/events?topic=b`, auth);
  try {
    const a = await channel.publish({ data: "to a" }, { topic: "a" });
    const toB = await channel.publish({ data: { to: "b" } }, { topic: "b" });
    assert.deepEqual(await all.take(2), [
      { type: "message", data: "to a", id: a },
      { type: "message", data: '{"to":"b"}', id: toB },
    ]);
    assert.deepEqual(await b.take(1), [
      { type: "message", data: '{"to":"b"}', id: toB },
    ]);
  } finally {
    await all.close();
    await b.close();
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel validates its options", () => {
  const cases: [unknown, unknown][] = [
    [{ name: 1 }, TypeError],
    [{ replay: -1 }, RangeError],
    [{ replay: 1.5 }, RangeError],
    [{ maxQueue: 0 }, RangeError],
    [{ keepAlive: -1 }, RangeError],
    [{ keepAlive: "1" }, TypeError],
    [{ retry: -1 }, RangeError],
    [{ broker: {} }, { name: "TypeError", message: /broker/ }],
    [{ onConnect: "x" }, { name: "TypeError", message: /onConnect/ }],
    [{ filter: 1 }, TypeError],
  ];
  for (const [options, error] of cases) {
    assert.throws(
      () =>
        new SSEChannel(options as ConstructorParameters<typeof SSEChannel>[0]),
      error as Error,
      JSON.stringify(options),
    );
  }
  return Promise.resolve();
});
