// Copyright the sse authors. MIT license.
// SSEChannel's connections from the request to the end: the hooks (sync,
// async, or any thenable, resolving or rejecting), close() and disconnect()
// racing a connection still in progress, a refusal made by another library's
// Response, and the options and methods a new user gets wrong. Each scenario
// runs over a real Deno.serve on 127.0.0.1 with real sockets.
import assert from "node:assert/strict";
import FakeTimers from "@sinonjs/fake-timers";
import { chromium } from "playwright-core";
import { EventSource as OurEventSource } from "../event_source.ts";
import { CHROMIUM, CHROMIUM_ARGS } from "../demo/screenshot.ts";
import {
  MemoryBroker,
  SSEChannel,
  type SSEChannelOptions,
  type SSEDisconnectReason,
  sseResponse,
} from "../server.ts";
import {
  assertEndedStream,
  Client,
  Counter,
  peek,
  RawClient,
  serve,
  test,
  until,
  WAIT_MS,
  within,
} from "./_channel.ts";

/** One turn of the event loop: unhandled rejections surface by then. */
function turn(): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/** A thenable that is no Promise (a query builder, another library's promise). */
class Thenable<T> implements PromiseLike<T> {
  #settle: ((value: T) => void)[] = [];
  #fail: ((reason: unknown) => void)[] = [];

  then<R1 = T, R2 = never>(
    resolve?: ((value: T) => R1 | PromiseLike<R1>) | null,
    reject?: ((reason: unknown) => R2 | PromiseLike<R2>) | null,
  ): PromiseLike<R1 | R2> {
    if (resolve) this.#settle.push(resolve as (value: T) => void);
    if (reject) this.#fail.push(reject as (reason: unknown) => void);
    return this as unknown as PromiseLike<R1 | R2>;
  }

  resolve(value: T): void {
    for (const settle of this.#settle.splice(0)) settle(value);
  }

  reject(reason: unknown): void {
    for (const fail of this.#fail.splice(0)) fail(reason);
  }
}

/** An async hook (written as a database call would be) that rejects. */
function rejecting(message: string): () => Promise<never> {
  return async () => {
    await Promise.resolve();
    throw new Error(message);
  };
}

/**
 * A hook that waits on a gate the test opens (a Promise, or a thenable that
 * is no Promise), and counts its calls.
 */
function gated<T>(kind: "promise" | "thenable" = "promise") {
  const gate = kind === "promise" ? Promise.withResolvers<T>() : (() => {
    const thenable = new Thenable<T>();
    return {
      promise: thenable as unknown as Promise<T>,
      resolve: (value: T) => thenable.resolve(value),
      reject: (reason: unknown) => thenable.reject(reason),
    };
  })();
  const called = new Counter();
  const hook = (): Promise<T> => {
    called.hit();
    return gate.promise;
  };
  return { gate, called, hook };
}

/** A channel served on a real Deno.serve, and what its hooks reported. */
function served<C>(options: SSEChannelOptions<C>) {
  const errors: string[] = [];
  const reasons: SSEDisconnectReason[] = [];
  const left = new Counter();
  const channel = new SSEChannel<C>({
    onError: (error) => errors.push(error.message),
    ...options,
    onDisconnect(context, info) {
      reasons.push(info.reason);
      left.hit();
      return options.onDisconnect?.(context, info);
    },
  });
  const server = serve((request) => channel.connect(request));
  return {
    channel,
    server,
    url: server.url,
    errors,
    reasons,
    left,
    async shutdown() {
      await channel.close();
      await server.shutdown();
    },
  };
}

// ------------------------------------------------ hooks that return promises

test("SSEChannel fails closed on an async filter that rejects, reports it once, and the process carries on", async () => {
  const { url, channel, errors, shutdown } = served<string>({
    onConnect: () => "u",
    filter: rejecting("acl service down") as unknown as () => boolean,
  });
  const client = await Client.open(url);
  try {
    await channel.publish({ data: "private" });
    await channel.publish({ data: "also private" });
    await turn();
    assert.deepEqual(client.data, []);
    assert.deepEqual(errors, [
      "filter returned Promise, not a boolean: only true delivers (a filter must be synchronous)",
    ]);
    assert.equal(channel.size, 1);
  } finally {
    await client.close();
    await shutdown();
  }
});

test("SSEChannel reports an async onDisconnect that rejects, as one that throws", async () => {
  const { url, errors, left, shutdown } = served<string>({
    onConnect: () => "u",
    onDisconnect: rejecting("db down while marking offline") as unknown as () =>
      void,
  });
  try {
    const client = await Client.open(url);
    await client.close();
    await left.reach(1, "onDisconnect");
    await turn();
    assert.deepEqual(errors, [
      "onDisconnect rejected: db down while marking offline",
    ]);
  } finally {
    await shutdown();
  }
});

test("SSEChannel.disconnect refuses an async predicate with a TypeError and observes its rejection", async () => {
  const { url, channel, shutdown } = served<string>({ onConnect: () => "u" });
  const client = await Client.open(url);
  try {
    assert.throws(
      () =>
        channel.disconnect(
          rejecting("session store down") as unknown as () => boolean,
        ),
      {
        name: "TypeError",
        message:
          "Invalid predicate result: expected a boolean, got Promise (the predicate must be synchronous): nobody was disconnected",
      },
    );
    await turn();
    assert.equal(channel.size, 1);
  } finally {
    await client.close();
    await shutdown();
  }
});

test("SSEChannel reports an async onError that rejects on stderr, one line for the error and one for the rejection", async () => {
  const lines: string[] = [];
  const error = console.error;
  console.error = (line: string) => lines.push(line);
  const channel = new SSEChannel<string>({
    onConnect: () => "u",
    filter: () => {
      throw new Error("filter bug");
    },
    onError: rejecting("log sink down"),
  });
  const server = serve((request) => channel.connect(request));
  try {
    const client = await Client.open(server.url);
    await channel.publish({ data: "x" });
    await client.closed();
    await turn();
    assert.deepEqual(lines, [
      "SSEChannel: filter threw: filter bug",
      "SSEChannel: onError rejected: log sink down",
    ]);
  } finally {
    console.error = error;
    await channel.close();
    await server.shutdown();
  }
});

test("sseResponse logs an async onError that rejects, and the process carries on", async () => {
  const lines: unknown[][] = [];
  const error = console.error;
  console.error = (...args: unknown[]) => lines.push(args);
  const server = serve(() =>
    sseResponse(
      (async function* () {
        yield { data: "one" };
        throw new Error("feed down");
      })(),
      { onError: rejecting("log sink down") },
    )
  );
  try {
    const client = await Client.open(server.url);
    await client.closed();
    assert.deepEqual(client.data, ["one"]);
    await turn();
    assert.equal(lines.length, 1);
    assert.equal(lines[0]![0], "sseResponse: onError rejected");
    assert.equal((lines[0]![1] as Error).message, "log sink down");
    assert.equal((lines[0]![3] as Error).message, "feed down");
  } finally {
    console.error = error;
    await server.shutdown();
  }
});

test("SSEChannel.close() ends at once the stream of a connection waiting on onConnect, the topics hook or init, a promise or any thenable, and observes its later rejection", async () => {
  for (const kind of ["promise", "thenable"] as const) {
    for (const hook of ["onConnect", "topics", "init"] as const) {
      const what = `${kind} ${hook}`;
      const { gate, called, hook: wait } = gated<never>(kind);
      const { url, channel, shutdown } = served<string>(
        hook === "onConnect"
          ? { onConnect: wait }
          : hook === "topics"
          ? { onConnect: () => "u", topics: wait }
          : { onConnect: () => "u", init: wait },
      );
      try {
        const answer = fetch(url);
        await called.reach(1, `${what} called`);
        await channel.close();
        const response = await within(answer, WAIT_MS, `${what}: the answer`);
        await assertEndedStream(response, what);
        gate.reject(new Error(`${what} failed late`));
        await turn();
        assert.equal(channel.size, 0, what);
      } finally {
        await shutdown();
      }
    }
  }
});

// ------------------------------------------------ close() racing connect

test("SSEChannel holds nothing for a connection whose hook resolves just before close(): an ended stream, no client, no timer", async () => {
  const cases = {
    "async onConnect": (gate: Promise<void>) => ({
      onConnect: async () => {
        await gate;
        return "u";
      },
    }),
    "async topics hook": (gate: Promise<void>) => ({
      onConnect: () => "u",
      topics: async () => {
        await gate;
        return ["a"];
      },
    }),
    "thenable onConnect": (gate: Promise<void>) => ({
      onConnect: () => {
        const thenable = new Thenable<string>();
        gate.then(() => thenable.resolve("u"));
        return thenable as unknown as Promise<string>;
      },
    }),
    "thenable topics hook": (gate: Promise<void>) => ({
      onConnect: () => "u",
      topics: () => {
        const thenable = new Thenable<string[]>();
        gate.then(() => thenable.resolve(["a"]));
        return thenable as unknown as Promise<string[]>;
      },
    }),
  };
  for (const [name, options] of Object.entries(cases)) {
    const gate = Promise.withResolvers<void>();
    const called = new Counter();
    const { onConnect, topics } = options(gate.promise) as SSEChannelOptions<
      string
    >;
    const { url, channel, reasons, shutdown } = served<string>({
      onConnect: (request) => {
        if (topics === undefined) called.hit();
        return onConnect!(request);
      },
      ...(topics === undefined ? {} : {
        topics: (context: string, request: Request) => {
          called.hit();
          return topics(context, request);
        },
      }),
    });
    try {
      const answer = fetch(url);
      await called.reach(1, `${name}: the hook`);
      // close() in the microtasks right after the hook's value is known.
      gate.promise.then(() => channel.close());
      gate.resolve();
      const response = await within(answer, WAIT_MS, `${name}: the answer`);
      await assertEndedStream(response, name);
      assert.equal(channel.size, 0, name);
      assert.deepEqual(channel.clients(), [], name);
      assert.equal(channel.count("a"), 0, name);
      const { connections, disconnects } = channel.metrics();
      const ended = Object.values(disconnects).reduce((a, b) => a + b, 0);
      assert.equal(connections, ended, `${name}: every connection ended`);
      assert.equal(reasons.length, ended, name);
    } finally {
      await shutdown();
    }
  }
});

// An instance replaced (a restart, a Deploy eviction) while clients connect.
for (
  const [kind, Source] of [
    ["Deno's EventSource", globalThis.EventSource],
    ["our EventSource", OurEventSource],
  ] as const
) {
  test(`SSEChannel.close() during a connect lets ${kind} reconnect to the channel that replaces it`, async () => {
    const signIn = Promise.withResolvers<string>();
    const signingIn = new Counter();
    let current = new SSEChannel<string>({
      retry: 1000,
      onConnect: () => {
        signingIn.hit();
        return signIn.promise;
      },
    });
    const server = serve((request) => current.connect(request));
    const source = new Source(server.url);
    try {
      const message = Promise.withResolvers<string>();
      source.onmessage = (event) => message.resolve(event.data);
      await signingIn.reach(1, "the sign-in");
      const old = current;
      current = new SSEChannel<string>({ onConnect: () => "u" });
      await old.close();
      // Before: 503, and the EventSource closed for good (readyState 2).
      // Now 200 (an open) and a stream that ends, then, after the retry
      // hint, a connection to the new channel (a second open).
      const opened = new Counter();
      source.onopen = opened.hit;
      await opened.reach(2, `${kind}: reconnected`);
      await until(() => current.size === 1, `${kind}: on the new channel`);
      await current.publish({ data: "after the restart" });
      assert.equal(
        await within(message.promise, WAIT_MS, `${kind}: the message`),
        "after the restart",
      );
      assert.equal(source.readyState, 1);
    } finally {
      source.close();
      signIn.resolve("late");
      await current.close();
      await server.shutdown();
    }
  });
}

// ------------------------------------------------ disconnect() racing connect

test("SSEChannel.disconnect ends a connection still in its topics hook: it gets the final message, then the end, and never a later event", async () => {
  const sessions = new Set(["s1"]);
  const lookup = Promise.withResolvers<void>();
  const looking = new Counter();
  const { url, channel, reasons, shutdown } = served<string>({
    onConnect: (request) => {
      const session = request.headers.get("x-session") ?? "";
      return sessions.has(session)
        ? session
        : new Response(null, { status: 401 });
    },
    // A database lookup of the user's subscriptions.
    topics: async (session) => {
      looking.hit();
      await lookup.promise;
      return [`user:${session}`];
    },
  });
  try {
    const answer = fetch(url, { headers: { "x-session": "s1" } });
    await looking.reach(1, "the topics hook");
    sessions.delete("s1");
    const seen: unknown[] = [];
    const ended = channel.disconnect((client) => {
      seen.push(client.topics);
      return client.context === "s1";
    }, { message: { event: "signed-out", data: "" } });
    assert.equal(ended, 1);
    // Its topics are not decided yet.
    assert.deepEqual(seen, [null]);
    const client = new Client(await within(answer, WAIT_MS, "the answer"));
    assert.equal(client.response.status, 200);
    await client.closed();
    lookup.resolve();
    await channel.publish({ data: "private for s1" }, { topic: "user:s1" });
    assert.deepEqual(client.events.map((event) => event.type), ["signed-out"]);
    assert.deepEqual(reasons, ["disconnected"]);
    assert.equal(channel.size, 0);
    assert.equal(channel.metrics().disconnects.disconnected, 1);
  } finally {
    lookup.resolve();
    await shutdown();
  }
});

test("SSEChannel.disconnect answers at once a connection whose init is still running", async () => {
  const { gate: init, called: started, hook } = gated<never[]>();
  const { url, channel, reasons, shutdown } = served<string>({
    onConnect: () => "u",
    init: hook,
  });
  try {
    const answer = fetch(url);
    await started.reach(1, "init");
    assert.equal(
      channel.disconnect(() => true, { message: { event: "bye", data: "" } }),
      1,
    );
    const client = new Client(await within(answer, WAIT_MS, "the answer"));
    assert.equal(client.response.status, 200);
    await client.closed();
    assert.deepEqual(client.events.map((event) => event.type), ["bye"]);
    assert.deepEqual(reasons, ["disconnected"]);
  } finally {
    init.resolve([]);
    await shutdown();
  }
});

test("SSEChannel.disconnect answers at once a resuming connection whose broker's history is still pending", async () => {
  const history = Promise.withResolvers<void>();
  const asked = new Counter();
  class SlowHistory extends MemoryBroker {
    override async history(
      ...args: Parameters<MemoryBroker["history"]>
    ): ReturnType<MemoryBroker["history"]> {
      asked.hit();
      await history.promise;
      return await super.history(...args);
    }
  }
  const broker = new SlowHistory();
  const { url, channel, reasons, shutdown } = served<string>({
    onConnect: () => "u",
    broker,
  });
  try {
    const id = await channel.publish({ data: "seen" });
    const answer = fetch(url, { headers: { "last-event-id": id } });
    await asked.reach(1, "history");
    assert.equal(channel.disconnect(() => true), 1);
    const response = await within(answer, WAIT_MS, "the answer");
    assert.equal(response.status, 200);
    assert.equal(await response.text(), "");
    assert.deepEqual(reasons, ["disconnected"]);
  } finally {
    history.resolve();
    await shutdown();
    await broker.close();
  }
});

test("SSEChannel.disconnect does not see a connection still in onConnect: its context is not known yet", async () => {
  const { gate, called, hook } = gated<string>();
  const { url, channel, shutdown } = served<string>({ onConnect: hook });
  try {
    const answer = fetch(url);
    await called.reach(1, "onConnect");
    assert.equal(channel.disconnect(() => true), 0);
    gate.resolve("u");
    const client = new Client(await within(answer, WAIT_MS, "the answer"));
    assert.equal(client.response.status, 200);
    assert.equal(channel.size, 1);
    await client.close();
  } finally {
    await shutdown();
  }
});

// ------------------------------------------------ ended before the answer

test("SSEChannel answers 200 and ends the stream of a connection whose filter threw during init: 503 is for a closed channel only", async () => {
  const { gate: init, called: started, hook } = gated<
    { event: string; data: string }[]
  >();
  const { url, channel, errors, reasons, shutdown } = served<string>({
    onConnect: () => "u",
    retry: 2000,
    init: hook,
    filter: (_user, message) => {
      if (message.data === "bad") throw new Error("filter bug");
      return true;
    },
  });
  try {
    const answer = fetch(url);
    await started.reach(1, "init");
    await channel.publish({ data: "bad" });
    const client = new Client(await within(answer, WAIT_MS, "the answer"));
    assert.equal(client.response.status, 200, await peek(client.response));
    await client.closed();
    assert.deepEqual(client.log, [{ kind: "retry", ms: 2000 }]);
    assert.deepEqual(reasons, ["filter-error"]);
    assert.deepEqual(errors, ["filter threw: filter bug"]);
    // The channel is open: the next connection is served.
    init.resolve([{ event: "snapshot", data: "" }]);
    const next = await Client.open(url);
    await next.take(1);
    await next.close();
  } finally {
    init.resolve([]);
    await shutdown();
  }
});

// ------------------------------------------------ a client that leaves early

test("SSEChannel releases at once a client that leaves while its connection is in onConnect, the topics hook or init, when connect is given the request's signal", async () => {
  for (const hook of ["onConnect", "topics", "init"] as const) {
    const { gate, called, hook: wait } = gated<never>();
    const reasons: SSEDisconnectReason[] = [];
    const left = new Counter();
    const answered = new Counter();
    const channel = new SSEChannel<string>({
      ...(hook === "onConnect"
        ? { onConnect: wait }
        : hook === "topics"
        ? { onConnect: () => "u", topics: wait }
        : { onConnect: () => "u", init: wait }),
      onDisconnect(_context, { reason }) {
        reasons.push(reason);
        left.hit();
      },
    });
    const server = serve(async (request) => {
      const response = await channel.connect(request, {
        signal: request.signal,
      });
      answered.hit();
      return response;
    });
    try {
      const abort = new AbortController();
      const answer = fetch(server.url, { signal: abort.signal }).catch(
        (error) => error,
      );
      await called.reach(1, `${hook} called`);
      abort.abort();
      await answer;
      // connect answers at once, without waiting for the hook.
      await answered.reach(1, `${hook}: connect answered`);
      if (hook === "init") {
        // Accepted already: released, and told.
        await left.reach(1, "onDisconnect");
        assert.deepEqual(reasons, ["client-closed"]);
      } else {
        assert.deepEqual(reasons, []);
      }
      assert.equal(channel.size, 0, hook);
      assert.deepEqual(channel.clients(), [], hook);
      assert.equal(channel.metrics().connections, reasons.length, hook);
    } finally {
      gate.reject(new Error("late"));
      await channel.close();
      await server.shutdown();
    }
  }
});

test("SSEChannel.connect refuses a signal that is not an AbortSignal with a TypeError", async () => {
  const channel = new SSEChannel();
  try {
    await assert.rejects(
      channel.connect(new Request("http://x/"), {
        signal: "abort" as unknown as AbortSignal,
      }),
      {
        name: "TypeError",
        message: "Invalid signal: expected an AbortSignal, got string",
      },
    );
    assert.equal(channel.size, 0);
  } finally {
    await channel.close();
  }
});

// ------------------------------------------------ a Response from elsewhere

/**
 * A Response as another library makes it (npm undici's on Node): no
 * instance of this realm's; its body a stream of this realm, or with
 * `foreignBody` one of another (a reader, no ReadableStream).
 */
class ForeignResponse {
  readonly status: number;
  readonly statusText: string;
  readonly headers: Headers;
  readonly body: ReadableStream<Uint8Array> | null;
  readonly bodyUsed = false;
  readonly ok: boolean;
  constructor(
    text: string | null,
    status: number,
    headers: HeadersInit,
    foreignBody = false,
  ) {
    this.status = status;
    this.ok = status >= 200 && status < 300;
    this.statusText = status === 401 ? "Unauthorized" : "";
    this.headers = new Headers(headers);
    const body = text === null ? null : new Response(text).body!;
    this.body = body !== null && foreignBody
      ? { getReader: () => body.getReader() } as ReadableStream<Uint8Array>
      : body;
  }
  get [Symbol.toStringTag](): string {
    return "Response";
  }
}

test("SSEChannel refuses a connection with what onConnect returned when it is a Response made by another library", async () => {
  const cases: [ForeignResponse, number, string][] = [
    [
      new ForeignResponse("Unauthorized", 401, {
        "www-authenticate": "Bearer",
      }),
      401,
      "Unauthorized",
    ],
    [new ForeignResponse(null, 204, {}), 204, ""],
    [new ForeignResponse("Forbidden", 403, {}, true), 403, "Forbidden"],
  ];
  for (const [refusal, status, body] of cases) {
    const { url, channel, reasons, shutdown } = served<unknown>({
      onConnect: () => refusal,
    });
    try {
      assert.ok(!(refusal instanceof Response));
      const response = await fetch(url);
      assert.equal(response.status, status);
      assert.equal(await response.text(), body);
      if (status === 401) {
        assert.equal(response.headers.get("www-authenticate"), "Bearer");
      }
      assert.equal(channel.size, 0);
      assert.equal(channel.metrics().connections, 0);
      assert.deepEqual(reasons, []);
    } finally {
      await shutdown();
    }
  }
});

test("SSEChannel takes a context that merely has a status for a context, not a Response", async () => {
  const context = { status: 401, headers: { get: "not a function" } };
  const { url, channel, shutdown } = served<unknown>({
    onConnect: () => context,
  });
  try {
    const client = await Client.open(url);
    assert.equal(channel.clients()[0]?.context, context);
    await client.close();
  } finally {
    await shutdown();
  }
});

// ------------------------------------------------ methods and options

test("SSEChannel answers a POST 405 before looking at its topics", async () => {
  const channel = new SSEChannel();
  const server = serve((request) =>
    channel.connect(request, { topics: [1 as unknown as string] })
  );
  try {
    const response = await fetch(server.url, { method: "POST", body: "x" });
    const text = await response.text();
    assert.equal(response.status, 405, text);
    assert.equal(response.headers.get("allow"), "GET, HEAD");
    assert.deepEqual(server.errors, []);
  } finally {
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel and sseResponse refuse a keepAlive below 1000 ms with a RangeError naming the floor; 0 and Infinity turn it off", async () => {
  for (const keepAlive of [0.0001, 1, 999, -1, NaN]) {
    const message =
      `Invalid keepAlive: expected 0 or Infinity (off), or at least 1000 milliseconds, got ${keepAlive}`;
    assert.throws(() => new SSEChannel({ keepAlive }), {
      name: "RangeError",
      message,
    });
    assert.throws(() => sseResponse(new ReadableStream(), { keepAlive }), {
      name: "RangeError",
      message,
    });
  }
  const clock = FakeTimers.install({
    toFake: ["setInterval", "clearInterval"],
  });
  try {
    for (const keepAlive of [0, Infinity, 1000, 15_000]) {
      const channel = new SSEChannel({ keepAlive });
      const response = await channel.connect(new Request("http://x/"));
      assert.equal(
        clock.countTimers(),
        keepAlive === 0 || keepAlive === Infinity ? 0 : 1,
        String(keepAlive),
      );
      await response.body!.cancel();
      await channel.close();
      assert.equal(clock.countTimers(), 0);
    }
  } finally {
    clock.uninstall();
  }
});

test("SSEChannel with drainTimeout: Infinity never drops a client that stops reading", async () => {
  const clock = FakeTimers.install({
    toFake: ["setInterval", "clearInterval"],
  });
  const { url, channel, reasons, left, shutdown } = served<string>({
    onConnect: () => "stalled",
    keepAlive: 0,
    drainTimeout: Infinity,
  });
  const stalled = await RawClient.open(url);
  try {
    await stalled.readUntil(() => stalled.text.includes(":\n\n"), "the head");
    // Far more than the socket buffers take: the stream stays full.
    const filler = "x".repeat(64 * 1024);
    for (let i = 0; i < 128; i++) await channel.publish({ data: filler });
    assert.equal(clock.countTimers(), 0);
    clock.tick(24 * 3600 * 1000);
    await turn();
    assert.deepEqual(reasons, []);
    assert.equal(channel.size, 1);
  } finally {
    stalled.close();
    await left.reach(1, "the stalled client's end");
    assert.deepEqual(reasons, ["client-closed"]);
    await shutdown();
    clock.uninstall();
  }
});

// ------------------------------------------------ CORS, as the README shows

/**
 * The README's handler for a cross-origin `SSEClient`: the channel's
 * responses allow the page's origin, and the app answers the preflight that
 * `Last-Event-ID` (not a CORS-safelisted header) makes the browser send.
 */
function corsApp(origin: string) {
  const channel = new SSEChannel({
    headers: { "access-control-allow-origin": origin, vary: "origin" },
  });
  const handler = (request: Request): Promise<Response> | Response => {
    if (request.method === "OPTIONS") {
      return new Response(null, {
        status: 204,
        headers: {
          "access-control-allow-origin": origin,
          "access-control-allow-methods": "GET",
          "access-control-allow-headers": "last-event-id",
          "access-control-max-age": "86400",
          vary: "origin",
        },
      });
    }
    return channel.connect(request);
  };
  return { channel, handler };
}

test("SSEChannel serves a cross-origin client that resumes with Last-Event-ID once the app answers its preflight as the README shows", async () => {
  const page = "http://app.example";
  const { channel, handler } = corsApp(page);
  const server = serve(handler);
  try {
    const seen = await channel.publish({ data: "seen" });
    await channel.publish({ data: "missed" });
    // What a browser asks before a fetch with Last-Event-ID, and checks.
    const preflight = await fetch(server.url, {
      method: "OPTIONS",
      headers: {
        origin: page,
        "access-control-request-method": "GET",
        "access-control-request-headers": "last-event-id",
      },
    });
    await preflight.body?.cancel();
    assert.equal(preflight.status, 204);
    assert.equal(preflight.headers.get("access-control-allow-origin"), page);
    assert.match(
      preflight.headers.get("access-control-allow-methods") ?? "",
      /\bGET\b/,
    );
    assert.match(
      preflight.headers.get("access-control-allow-headers") ?? "",
      /\blast-event-id\b/i,
    );
    const client = await Client.open(server.url, {
      origin: page,
      "last-event-id": seen,
    });
    assert.equal(
      client.response.headers.get("access-control-allow-origin"),
      page,
    );
    assert.deepEqual((await client.take(1)).map((event) => event.data), [
      "missed",
    ]);
    await client.close();
  } finally {
    await channel.close();
    await server.shutdown();
  }
});

const hasChromium = (() => {
  try {
    return Deno.statSync(CHROMIUM).isFile;
  } catch {
    return false;
  }
})();

Deno.test({
  name:
    "SSEChannel serves Chromium's cross-origin fetch with Last-Event-ID once the app answers the preflight, and Chromium refuses it without",
  ignore: !hasChromium && Deno.env.get("CI") !== "true",
  sanitizeOps: true,
  sanitizeResources: true,
  async fn() {
    // The page's origin and the events' origin differ by their port.
    const site = serve(() =>
      new Response("<!doctype html><title>app</title>", {
        headers: { "content-type": "text/html" },
      })
    );
    const { channel, handler } = corsApp(site.url);
    const events = serve(handler);
    const bare = serve((request) =>
      request.method === "OPTIONS"
        ? new Response(null, { status: 405 })
        : handler(request)
    );
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: CHROMIUM_ARGS,
      headless: true,
    });
    try {
      const seen = await channel.publish({ data: "seen" });
      await channel.publish({ data: "missed" });
      const page = await browser.newPage();
      await page.goto(site.url);
      // As SSEClient does: fetch with Last-Event-ID, read the stream.
      const read = (url: string) =>
        page.evaluate(async ([url, id]) => {
          try {
            const response = await fetch(url!, {
              headers: { "last-event-id": id!, accept: "text/event-stream" },
            });
            const reader = response.body!.pipeThrough(new TextDecoderStream())
              .getReader();
            let text = "";
            while (!text.includes("data: missed\n")) {
              const { done, value } = await reader.read();
              if (done) break;
              text += value;
            }
            await reader.cancel();
            return text.includes("data: missed\n") ? "missed" : text;
          } catch (error) {
            return `refused: ${(error as Error).message}`;
          }
        }, [url, seen]);
      assert.equal(await read(events.url), "missed");
      assert.match(await read(bare.url), /^refused: /);
    } finally {
      await browser.close();
      await channel.close();
      await site.shutdown();
      await events.shutdown();
      await bare.shutdown();
    }
  },
});
