// Copyright the sse authors. MIT license.
import assert from "node:assert/strict";
import { SSEClient, type SSEClientOptions, SSEError } from "../client.ts";
import type { SSEEvent } from "../parser.ts";
import {
  assertFailureBackoff,
  type EventStream,
  eventStreamResponse,
  fakeClock,
  foreignFetch,
  Queue,
  test,
  TestServer,
} from "./_sse_server.ts";

// --- helpers ---------------------------------------------------------------

/** A client with every callback recorded. */
function observedClient(url: URL | string, options: SSEClientOptions = {}) {
  const opens = new Queue<Response>();
  const errors = new Queue<Error>();
  const retries = new Queue<number>();
  const client = new SSEClient(url, {
    onOpen: opens.push,
    onError: errors.push,
    onRetry: retries.push,
    ...options,
  });
  return {
    client,
    iterator: client[Symbol.asyncIterator](),
    opens,
    errors,
    retries,
  };
}

async function take(
  iterator: AsyncIterator<SSEEvent>,
  count: number,
): Promise<SSEEvent[]> {
  const events: SSEEvent[] = [];
  while (events.length < count) {
    const result = await iterator.next();
    if (result.done) break;
    events.push(result.value);
  }
  return events;
}

const DONE = { done: true, value: undefined };

function message(data: string, id = ""): SSEEvent {
  return { type: "message", data, id };
}

/** What a value is, as the client's errors name it. */
function describeValue(value: unknown): string {
  if (value === null) return "null";
  if (typeof value === "object") return value.constructor.name;
  return typeof value;
}

function latin1ToUtf8(value: string): string {
  return new TextDecoder().decode(
    Uint8Array.from(value, (c) => c.charCodeAt(0)),
  );
}

// --- requests --------------------------------------------------------------

test("SSEClient reads events and sends Accept: text/event-stream", async () => {
  await using server = new TestServer(() =>
    eventStreamResponse("event: greet\ndata: hello\ndata: world\n\n")
  );
  const client = new SSEClient(server.url);
  const [event] = await take(client[Symbol.asyncIterator](), 1);
  assert.deepEqual(event, {
    type: "greet",
    data: "hello\nworld",
    id: "",
  });
  assert.equal(client.readyState, 1);
  client.close();
  const exchange = await server.request(0);
  assert.equal(exchange.method, "GET");
  assert.equal(exchange.headers.get("accept"), "text/event-stream");
  assert.equal(exchange.headers.get("last-event-id"), null);
});

test("SSEClient exposes an absolute url and starts CONNECTING", async () => {
  await using server = new TestServer(() => eventStreamResponse(""));
  const client = new SSEClient(new URL("/events?x=1", server.url));
  assert.equal(client.url, `${server.url.origin}/events?x=1`);
  assert.equal(client.readyState, 0);
  client.close();
  assert.equal(client.readyState, 2);
});

test("SSEClient sends the lastEventId option as Last-Event-ID, non-ASCII as UTF-8 bytes", async () => {
  await using server = new TestServer(() => eventStreamResponse("data: x\n\n"));
  const seed = "…€ id";
  const client = new SSEClient(server.url, { lastEventId: seed });
  assert.equal(client.lastEventId, seed);
  const [event] = await take(client[Symbol.asyncIterator](), 1);
  client.close();
  // An event without `id` carries the seed.
  assert.deepEqual(event, message("x", seed));
  const header = (await server.request(0)).headers.get("last-event-id");
  assert.ok(header !== null);
  assert.equal(latin1ToUtf8(header), seed);
});

test("SSEClient keeps the user's Accept header when one is given", async () => {
  await using server = new TestServer(() => eventStreamResponse("data: x\n\n"));
  const client = new SSEClient(server.url, {
    headers: { accept: "text/event-stream, application/json;q=0.5" },
  });
  await take(client[Symbol.asyncIterator](), 1);
  client.close();
  assert.equal(
    (await server.request(0)).headers.get("accept"),
    "text/event-stream, application/json;q=0.5",
  );
});

// --- last event ID across connections --------------------------------------

test("SSEClient resumes from the last committed ID after the stream ends", async () => {
  await using server = new TestServer(({ index }) =>
    eventStreamResponse(
      index === 0
        ? "retry: 0\nid: 1\ndata: a\n\ndata: b\n\nid: 2\ndata: partial"
        : "data: c\n\n",
    )
  );
  const client = new SSEClient(server.url);
  const events = await take(client[Symbol.asyncIterator](), 3);
  client.close();
  // The event without `id` after the reconnect carries the previous ID, and
  // the ID inside the event cut off by the end was never committed.
  assert.deepEqual(events, [
    message("a", "1"),
    message("b", "1"),
    message("c", "1"),
  ]);
  assert.equal(
    (await server.request(1)).headers.get("last-event-id"),
    "1",
  );
});

test("SSEClient keeps the last event ID through a connection that commits nothing", async () => {
  await using server = new TestServer(({ index }) => {
    if (index === 0) return eventStreamResponse("retry: 0\nid: …\ndata: a\n\n");
    if (index === 1) return eventStreamResponse(": nothing here\n");
    return eventStreamResponse("data: b\n\n");
  });
  const client = new SSEClient(server.url);
  const events = await take(client[Symbol.asyncIterator](), 2);
  client.close();
  assert.deepEqual(events, [message("a", "…"), message("b", "…")]);
  for (const index of [1, 2]) {
    const header = (await server.request(index)).headers.get(
      "last-event-id",
    );
    assert.equal(latin1ToUtf8(header!), "…");
  }
  assert.equal(client.lastEventId, "…");
});

test("SSEClient's lastEventId is that of the last event taken, not of events still unread in the same chunk", async () => {
  await using server = new TestServer(() =>
    eventStreamResponse(
      "id: 1\ndata: a\n\nid: 2\ndata: b\n\nid: 3\ndata: c\n\n",
    )
  );
  const client = new SSEClient(server.url);
  const iterator = client[Symbol.asyncIterator]();
  // One chunk holds the three events; a consumer that saves lastEventId
  // after each event it handles must never save one it has not seen.
  assert.deepEqual(await take(iterator, 1), [message("a", "1")]);
  assert.equal(client.lastEventId, "1");
  assert.deepEqual(await take(iterator, 1), [message("b", "2")]);
  assert.equal(client.lastEventId, "2");
  client.close();
  assert.equal(client.lastEventId, "2");
  assert.deepEqual(await iterator.next(), DONE);
});

test("SSEClient stops sending Last-Event-ID once the stream resets the ID", async () => {
  await using server = new TestServer(({ index }) =>
    eventStreamResponse(
      index === 0
        ? "retry: 0\nid: 1\ndata: a\n\nid\ndata: b\n\n"
        : "data: c\n\n",
    )
  );
  const client = new SSEClient(server.url, { lastEventId: "0" });
  const events = await take(client[Symbol.asyncIterator](), 3);
  client.close();
  assert.deepEqual(events, [message("a", "1"), message("b"), message("c")]);
  assert.equal(
    (await server.request(0)).headers.get("last-event-id"),
    "0",
  );
  assert.equal(
    (await server.request(1)).headers.get("last-event-id"),
    null,
  );
});

test("SSEClient reconnects without a last event ID it cannot send as a header, and reports it once", async () => {
  await using server = new TestServer(({ index }) =>
    eventStreamResponse(
      index === 0 ? "retry: 0\nid: a\x01b\ndata: x\n\n" : `data: ${index}\n\n`,
    )
  );
  const { client, iterator, errors } = observedClient(server.url);
  assert.deepEqual(await take(iterator, 1), [message("x", "a\x01b")]);
  const next = iterator.next();
  // Reconnection reaches the server, or the client fails locally again.
  const first = await Promise.race([
    server.request(1).then(() => "reached the server"),
    errors.take(2).then(() => "failed twice without reaching the server"),
    next.then(
      () => "delivered without reaching the server",
      (error) => `ended without reaching the server: ${error}`,
    ),
  ]);
  assert.equal(first, "reached the server");
  assert.deepEqual(await next, { done: false, value: message("1", "a\x01b") });
  assert.deepEqual(await take(iterator, 1), [message("2", "a\x01b")]);
  client.close();
  for (const index of [1, 2]) {
    assert.equal(server.requests[index]!.headers.get("last-event-id"), null);
  }
  assert.equal(errors.all.length, 1);
  assert.ok(errors.all[0] instanceof SSEError);
  assert.equal(
    errors.all[0].message,
    'Last event ID "a\\u0001b" cannot be sent as Last-Event-ID (it contains U+0001 at index 1): reconnecting without it',
  );
});

test("SSEClient reconnects without a last event ID that begins or ends with a space or tab, and reports it once", async () => {
  for (
    const [id, where] of [
      [" 5 ", "begins with U+0020"],
      ["5\t", "ends with U+0009"],
    ] as const
  ) {
    await using server = new TestServer(({ index }) =>
      eventStreamResponse(
        index === 0 ? `retry: 0\nid: ${id}\ndata: x\n\n` : `data: ${index}\n\n`,
      )
    );
    const { client, iterator, errors } = observedClient(server.url);
    assert.deepEqual(await take(iterator, 3), [
      message("x", id),
      message("1", id),
      message("2", id),
    ]);
    client.close();
    // Before: Headers strip HTTP whitespace, so the server read "5", an ID
    // it never sent, and nothing was reported.
    for (const index of [1, 2]) {
      assert.equal(server.requests[index]!.headers.get("last-event-id"), null);
    }
    assert.deepEqual(errors.all.map((error) => error.message), [
      `Last event ID ${
        JSON.stringify(id)
      } cannot be sent as Last-Event-ID (it ${where}, which a header value cannot): reconnecting without it`,
    ]);
  }
  // The seed too.
  await using server = new TestServer(() => eventStreamResponse("data: x\n\n"));
  const { client, iterator, errors } = observedClient(server.url, {
    lastEventId: "\t7",
  });
  await take(iterator, 1);
  client.close();
  assert.equal(server.requests[0]!.headers.get("last-event-id"), null);
  assert.equal(errors.all.length, 1);
});

test("SSEClient sends the methods fetch normalises in upper case (HEAD is refused), and any other as given", async () => {
  await using server = new TestServer(() =>
    new Response(null, { status: 204 })
  );
  const sent: [string, string][] = [];
  for (
    const method of [
      "get",
      "Post",
      "put",
      "delete",
      "options",
      "patch",
      "mkcol",
      "Search",
    ]
  ) {
    const client = new SSEClient(server.url, { method });
    for await (const _ of client) assert.fail("204 has no event");
    sent.push([method, server.requests.at(-1)!.method]);
  }
  // Before: every method was upper-cased (mkcol went out as MKCOL). RFC 9110
  // §9.1: methods are case-sensitive; Fetch normalises only these six.
  assert.deepEqual(sent, [
    ["get", "GET"],
    ["Post", "POST"],
    ["put", "PUT"],
    ["delete", "DELETE"],
    ["options", "OPTIONS"],
    ["patch", "patch"],
    ["mkcol", "mkcol"],
    ["Search", "Search"],
  ]);
  // A body is refused with GET, and HEAD itself, whatever their case.
  assert.throws(
    () => new SSEClient(server.url, { method: "gEt", body: "x" }),
    {
      name: "TypeError",
      message: "Invalid body: a GET request cannot have one",
    },
  );
  assert.throws(() => new SSEClient(server.url, { method: "hEaD" }), {
    name: "TypeError",
    message:
      "Invalid method: a response to HEAD has no body, so no event could ever arrive",
  });
});

test("SSEClient takes a Last-Event-ID header as the seed, then manages the header alone", async () => {
  await using server = new TestServer(({ index }) =>
    eventStreamResponse(
      index === 0
        ? "retry: 0\ndata: a\n\nid: 5\ndata: b\n\n"
        : index === 1
        ? "id\ndata: c\n\n"
        : "data: d\n\n",
    )
  );
  const client = new SSEClient(server.url, {
    headers: { "Last-Event-ID": "41", "x-other": "kept" },
  });
  assert.equal(client.lastEventId, "41");
  const events = await take(client[Symbol.asyncIterator](), 4);
  client.close();
  assert.deepEqual(events, [
    message("a", "41"),
    message("b", "5"),
    message("c"),
    message("d"),
  ]);
  assert.deepEqual(
    server.requests.slice(0, 3).map(({ headers }) => [
      headers.get("last-event-id"),
      headers.get("x-other"),
    ]),
    [["41", "kept"], ["5", "kept"], [null, "kept"]],
  );
});

test("SSEClient reads a non-ASCII Last-Event-ID header seed as UTF-8 bytes", () => {
  const bytes = String.fromCharCode(...new TextEncoder().encode("…€"));
  const client = new SSEClient("http://127.0.0.1:8/", {
    headers: [["last-event-id", bytes]],
    signal: AbortSignal.abort(),
  });
  assert.equal(client.lastEventId, "…€");
});

test("SSEClient refuses a Last-Event-ID header that contradicts the lastEventId option", () => {
  const url = "http://127.0.0.1:8/";
  assert.throws(
    () =>
      new SSEClient(url, {
        lastEventId: "1",
        headers: { "last-event-id": "2" },
      }),
    {
      name: "TypeError",
      message:
        'Invalid headers: Last-Event-ID "2" contradicts the lastEventId option "1": give one of them',
    },
  );
  // The same ID twice is no contradiction.
  new SSEClient(url, {
    lastEventId: "1",
    headers: { "last-event-id": "1" },
    signal: AbortSignal.abort(),
  });
});

test("SSEClient replaces a Last-Event-ID that a headers function returns", async () => {
  await using server = new TestServer(({ index }) =>
    eventStreamResponse(
      index === 0 ? "retry: 0\nid: 7\ndata: a\n\n" : "data: b\n\n",
    )
  );
  const client = new SSEClient(server.url, {
    headers: () => ({ "last-event-id": "stale" }),
  });
  await take(client[Symbol.asyncIterator](), 2);
  client.close();
  assert.deepEqual(
    server.requests.slice(0, 2).map(({ headers }) =>
      headers.get("last-event-id")
    ),
    [null, "7"],
  );
});

// --- reconnection timing ---------------------------------------------------

test("SSEClient waits 3000 ms by default before reconnecting", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer(({ index }) =>
      eventStreamResponse(`data: ${index}\n\n`)
    );
    const { client, iterator, retries } = observedClient(server.url);
    assert.deepEqual(await take(iterator, 1), [message("0")]);
    const next = iterator.next();
    assert.equal(await retries.shift(), 3000);
    assert.equal(client.readyState, 0);
    await clock.tickAsync(2999);
    assert.equal(server.requests.length, 1);
    await clock.tickAsync(1);
    assert.deepEqual(await next, { done: false, value: message("1") });
    assert.equal(server.requests.length, 2);
    client.close();
  } finally {
    clock.uninstall();
  }
});

test("SSEClient takes its initial reconnection time from the retry option, then from the server", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer(({ index }) =>
      eventStreamResponse(
        index === 0 ? "data: 0\n\n" : `retry: 05000\ndata: ${index}\n\n`,
      )
    );
    const { client, iterator, retries } = observedClient(server.url, {
      retry: 250,
    });
    await take(iterator, 1);
    let next = iterator.next();
    assert.equal(await retries.shift(), 250);
    await clock.tickAsync(250);
    assert.deepEqual(await next, { done: false, value: message("1") });
    // The server asked for 5000 ms ("05000" is decimal, not octal).
    next = iterator.next();
    assert.equal(await retries.shift(), 5000);
    await clock.tickAsync(4999);
    assert.equal(server.requests.length, 2);
    await clock.tickAsync(1);
    assert.deepEqual(await next, { done: false, value: message("2") });
    client.close();
  } finally {
    clock.uninstall();
  }
});

for (const retry of ["2147483648", "99999999999999999999"]) {
  test(`SSEClient reconnects after the longest wait a timer holds when the server asks for retry: ${retry}`, async () => {
    const clock = fakeClock();
    try {
      await using server = new TestServer(() =>
        eventStreamResponse(`retry: ${retry}\ndata: x\n\n`)
      );
      const { client, iterator, retries } = observedClient(server.url);
      await iterator.next();
      const next = iterator.next();
      // Before: no timer at all ("never"), so a script whose main loop is
      // this iteration exited with "Top-level await promise never resolved".
      assert.equal(await retries.shift(), 2 ** 31 - 1);
      assert.equal(clock.countTimers(), 1);
      await clock.tickAsync(2 ** 31 - 2);
      assert.equal(server.requests.length, 1);
      await clock.tickAsync(1);
      assert.deepEqual(await next, { done: false, value: message("x") });
      client.close();
    } finally {
      clock.uninstall();
    }
  });
}

test("SSEClient ignores a bogus retry field", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer(({ index }) =>
      eventStreamResponse(
        `retry: 2000\nretry: 1000x\nretry\ndata: ${index}\n\n`,
      )
    );
    const { client, iterator, retries } = observedClient(server.url);
    await take(iterator, 1);
    const next = iterator.next();
    assert.equal(await retries.shift(), 2000);
    await clock.tickAsync(2000);
    assert.deepEqual(await next, { done: false, value: message("1") });
    client.close();
  } finally {
    clock.uninstall();
  }
});

// --- drops -----------------------------------------------------------------

test("SSEClient never delivers an event cut off by a dropped connection", async () => {
  await using server = new TestServer();
  const { client, iterator, errors } = observedClient(server.url, {
    retry: 0,
  });
  const first = server.stream();
  (await server.request(0)).respond(first.response);
  first.send("data: whole\n\ndata: cut");
  assert.deepEqual(await take(iterator, 1), [message("whole")]);
  const next = iterator.next();
  first.send(" off\nid: 7\n");
  first.drop();
  const error = await errors.shift();
  assert.ok(error instanceof SSEError);
  assert.match(error.message, /^Connection lost: /);
  const second = server.stream();
  const exchange = await server.request(1);
  assert.equal(exchange.headers.get("last-event-id"), null);
  exchange.respond(second.response);
  second.send("data: after\n\n");
  assert.deepEqual(await next, { done: false, value: message("after") });
  client.close();
  await second.cancelled;
});

test("SSEClient reconnects when the server ends the stream, without reporting an error", async () => {
  await using server = new TestServer(({ index }) =>
    eventStreamResponse(`retry: 0\ndata: ${index}\n\n`)
  );
  const { client, iterator, errors, opens } = observedClient(server.url);
  assert.deepEqual(await take(iterator, 3), [
    message("0"),
    message("1"),
    message("2"),
  ]);
  client.close();
  assert.equal(opens.all.length, 3);
  assert.equal(errors.all.length, 0);
});

test("SSEClient retries a refused connection with backoff", async () => {
  const clock = fakeClock();
  try {
    // A port nobody listens on any more.
    const closed = new TestServer(() => new Response(null));
    const url = closed.url;
    await closed.close();
    const { client, iterator, errors, retries } = observedClient(url, {
      retry: 1000,
    });
    const next = iterator.next();
    const error = await errors.shift();
    assert.ok(error instanceof SSEError);
    assert.match(error.message, /^Connection failed: /);
    assert.equal(error.status, undefined);
    const delay = await retries.shift();
    assert.ok(delay >= 1000 && delay <= 2000, `delay ${delay}`);
    assert.equal(client.readyState, 0);
    client.close();
    assert.deepEqual(await next, DONE);
  } finally {
    clock.uninstall();
  }
});

// --- backoff ---------------------------------------------------------------

test("SSEClient backs off exponentially with jitter from a server failing constantly", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer(() =>
      new Response("down", { status: 503 })
    );
    const { client, iterator, errors, retries } = observedClient(server.url, {
      retry: 1000,
      maxRetryDelay: 20_000,
    });
    const next = iterator.next();
    const delays: number[] = [];
    for (let failures = 1; failures <= 8; failures++) {
      const error = await errors.shift();
      assert.ok(error instanceof SSEError);
      assert.equal(error.status, 503);
      const delay = await retries.shift();
      const ceiling = Math.min(20_000, 1000 * 2 ** failures);
      assert.ok(
        delay >= ceiling / 2 && delay <= ceiling,
        `failure ${failures}: ${delay} outside [${ceiling / 2}, ${ceiling}]`,
      );
      delays.push(delay);
      // Not one request before the wait is over.
      await clock.tickAsync(delay - 1);
      assert.equal(server.requests.length, failures);
      await clock.tickAsync(1);
      await server.request(failures);
    }
    // 9 requests in all, spread over more than the sum of the lower bounds.
    const lowerBounds = [1, 2, 4, 8, 10, 10, 10, 10].map((s) => s * 1000);
    const elapsed = delays.reduce((a, b) => a + b, 0);
    assert.ok(elapsed >= lowerBounds.reduce((a, b) => a + b, 0));
    assert.equal(server.requests.length, 9);
    client.close();
    assert.deepEqual(await next, DONE);
  } finally {
    clock.uninstall();
  }
});

test("SSEClient resets the backoff after a successful open", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer(({ index }) =>
      index < 3
        ? new Response(null, { status: 500 })
        : eventStreamResponse(`data: ${index}\n\n`)
    );
    const { client, iterator, retries } = observedClient(server.url, {
      retry: 1000,
    });
    const first = iterator.next();
    for (let failures = 1; failures <= 3; failures++) {
      const delay = await retries.shift();
      assert.ok(delay >= 2 ** (failures - 1) * 1000, `delay ${delay}`);
      await clock.tickAsync(delay);
    }
    assert.deepEqual(await first, { done: false, value: message("3") });
    // The stream ends: back to the plain reconnection time.
    const second = iterator.next();
    assert.equal(await retries.shift(), 1000);
    await clock.tickAsync(1000);
    assert.deepEqual(await second, { done: false, value: message("4") });
    client.close();
  } finally {
    clock.uninstall();
  }
});

test("SSEClient grows the backoff from at least 100 ms when the server asks for retry: 0", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer(({ index }) =>
      index === 0
        ? eventStreamResponse("retry: 0\ndata: x\n\n")
        : new Response(null, { status: 502 })
    );
    const { client, iterator, retries } = observedClient(server.url);
    await take(iterator, 1);
    const next = iterator.next();
    assert.equal(await retries.shift(), 0);
    await clock.tickAsync(0); // a timer even for 0
    for (let failures = 1; failures <= 4; failures++) {
      const delay = await retries.shift();
      const ceiling = 100 * 2 ** failures;
      assert.ok(delay >= ceiling / 2 && delay <= ceiling, `delay ${delay}`);
      await clock.tickAsync(delay);
    }
    client.close();
    assert.deepEqual(await next, DONE);
  } finally {
    clock.uninstall();
  }
});

test("SSEClient retries 5xx, 429 and 408 and reports each with its status", async () => {
  const clock = fakeClock();
  try {
    const statuses = [500, 502, 503, 504, 429, 408];
    await using server = new TestServer(({ index }) =>
      index < statuses.length
        ? new Response("no", { status: statuses[index]! })
        : eventStreamResponse("data: finally\n\n")
    );
    const { client, iterator, errors, retries } = observedClient(server.url, {
      retry: 10,
      maxRetryDelay: 100,
    });
    const next = iterator.next();
    for (const status of statuses) {
      const error = await errors.shift();
      assert.ok(error instanceof SSEError);
      assert.equal(error.status, status);
      assert.equal(error.message, `Unexpected status ${status}: retrying`);
      await clock.tickAsync(await retries.shift());
    }
    assert.deepEqual(await next, { done: false, value: message("finally") });
    client.close();
  } finally {
    clock.uninstall();
  }
});

test("SSEClient honours Retry-After in seconds and as an HTTP date, up to maxRetryDelay", async () => {
  const clock = fakeClock();
  try {
    const start = Date.now();
    const retryAfter = [
      "12",
      new Date(start + 20_000).toUTCString(),
      "3600",
      "not a date",
    ];
    await using server = new TestServer(({ index }) =>
      index < retryAfter.length
        ? new Response(null, {
          status: 503,
          headers: { "retry-after": retryAfter[index]! },
        })
        : eventStreamResponse("data: ok\n\n")
    );
    const { client, iterator, retries } = observedClient(server.url, {
      retry: 100,
      maxRetryDelay: 30_000,
    });
    const next = iterator.next();
    assert.equal(await retries.shift(), 12_000);
    await clock.tickAsync(12_000);
    // The date is 20 s after the start, and 12 s have passed.
    assert.equal(await retries.shift(), 8_000);
    await clock.tickAsync(8_000);
    // An hour is more than maxRetryDelay allows.
    assert.equal(await retries.shift(), 30_000);
    await clock.tickAsync(30_000);
    // Unreadable: plain backoff (4th failure: ceiling 100 * 2^4).
    const delay = await retries.shift();
    assert.ok(delay >= 800 && delay <= 1600, `delay ${delay}`);
    await clock.tickAsync(delay);
    assert.deepEqual(await next, { done: false, value: message("ok") });
    client.close();
  } finally {
    clock.uninstall();
  }
});

// --- no reconnect storm -------------------------------------------------------

/**
 * A server that sends `retry: <retry>` once, then closes every stream right
 * after its headers: each connection opens, and delivers nothing.
 */
function emptyStreamsServer(retry: number): TestServer {
  return new TestServer(({ index }) =>
    eventStreamResponse(index === 0 ? `retry: ${retry}\n\n` : "")
  );
}

for (const retry of [0, 1]) {
  test(`SSEClient backs off from a server that sends retry: ${retry} and then closes every stream before an event`, async () => {
    const clock = fakeClock();
    try {
      await using server = emptyStreamsServer(retry);
      const { client, iterator, retries } = observedClient(server.url);
      const next = iterator.next();
      // Follow the waits the client asks for through 2 s of (fake) time, or
      // 50 of them if they do not add up to that.
      const delays: number[] = [];
      let elapsed = 0;
      while (delays.length < 50) {
        const delay = await retries.shift();
        delays.push(delay);
        elapsed += delay;
        if (elapsed > 2000) break;
        await clock.tickAsync(delay);
        await server.request(delays.length);
      }
      client.close();
      assert.deepEqual(await next, DONE);
      // Each connection counts as a failure: the waits grow from 100 ms at
      // least (the floor of a retry that delivered nothing), so 2 s hold at
      // most 5 attempts after the first (100 + 200 + 400 + 800 < 2000).
      assertFailureBackoff(delays, server.requests.length);
    } finally {
      clock.uninstall();
    }
  });
}

test("SSEClient resets the backoff once a stream delivers an event, and then waits exactly the server's retry", async () => {
  const clock = fakeClock();
  try {
    // Two empty streams, one with an event, then empty ones again.
    await using server = new TestServer(({ index }) =>
      eventStreamResponse(
        index === 0 ? "retry: 500\n\n" : index === 2 ? "data: 2\n\n" : "",
      )
    );
    const { client, iterator, retries } = observedClient(server.url);
    const next = iterator.next();
    let delay = await retries.shift(); // after stream 0: failure 1
    assert.ok(delay >= 500 && delay <= 1000, `delay ${delay}`);
    await clock.tickAsync(delay);
    delay = await retries.shift(); // after stream 1: failure 2
    assert.ok(delay >= 1000 && delay <= 2000, `delay ${delay}`);
    await clock.tickAsync(delay);
    assert.deepEqual(await next, { done: false, value: message("2") });
    const after = iterator.next();
    // Stream 2 delivered an event: exactly the server's retry.
    assert.equal(await retries.shift(), 500);
    await clock.tickAsync(500);
    await server.request(3);
    // Stream 3 delivered nothing: failure 1 again, not 3.
    delay = await retries.shift();
    assert.ok(delay >= 500 && delay <= 1000, `delay ${delay}`);
    client.close();
    assert.deepEqual(await after, DONE);
  } finally {
    clock.uninstall();
  }
});

test("SSEClient with maxRetries stops reconnecting to streams that deliver nothing", async () => {
  const clock = fakeClock();
  try {
    await using server = emptyStreamsServer(0);
    const { client, iterator, retries } = observedClient(server.url, {
      maxRetries: 3,
    });
    const next = iterator.next();
    for (let attempt = 1; attempt <= 3; attempt++) {
      await clock.tickAsync(await retries.shift());
    }
    const outcome = await Promise.race([
      next,
      retries.shift().then((delay) => `a 4th retry in ${delay} ms`),
    ]);
    client.close();
    assert.deepEqual(outcome, DONE);
    assert.equal(server.requests.length, 4);
    assert.equal(client.readyState, 2);
  } finally {
    clock.uninstall();
  }
});

/**
 * Reads every event of `iterator` until it ends, and counts them: a storm
 * test's reader.
 */
async function drain(iterator: AsyncIterator<SSEEvent>): Promise<number> {
  let events = 0;
  while (!(await iterator.next()).done) events++;
  return events;
}

for (const retry of [0, 10]) {
  test(`SSEClient backs off from a server whose every connection delivers one event and closes at once (retry: ${retry})`, async () => {
    const clock = fakeClock();
    try {
      await using server = new TestServer(() =>
        eventStreamResponse(`retry: ${retry}\nid: 1\ndata: snapshot\n\n`)
      );
      const { client, iterator, retries } = observedClient(server.url);
      const reading = drain(iterator);
      // Before: 2 200-3 000 requests/s at retry: 0 (no timer at all), about
      // 400/s at retry: 1, the same snapshot handed out each time.
      const delays: number[] = [];
      let elapsed = 0;
      while (delays.length < 50) {
        const delay = await retries.shift();
        delays.push(delay);
        elapsed += delay;
        if (elapsed > 2000) break;
        // A timer is armed even for a wait of 0: no request before it fires.
        assert.equal(server.requests.length, delays.length);
        await clock.tickAsync(delay);
        await server.request(delays.length);
      }
      client.close();
      await reading;
      // Three short connections in a row reconnect after exactly the
      // server's retry (what the web-platform-tests check); from the fourth,
      // the waits grow as after failures, from 100 ms at least.
      assert.deepEqual(delays.slice(0, 3), [retry, retry, retry]);
      assertFailureBackoff(delays.slice(3), server.requests.length - 3);
    } finally {
      clock.uninstall();
    }
  });
}

test("SSEClient reconnects after exactly the server's retry again once a connection lived 1 s", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer();
    const { client, iterator, retries } = observedClient(server.url);
    const long = server.stream();
    const delays: number[] = [];
    let pending = iterator.next();
    for (let index = 0; index < 6; index++) {
      const exchange = await server.request(index);
      if (index === 4) {
        exchange.respond(long.response);
        long.send("data: long\n\n");
        await pending; // open, and read
        await clock.tickAsync(1000);
        long.end();
      } else {
        exchange.respond(eventStreamResponse(`retry: 0\ndata: ${index}\n\n`));
        await pending;
      }
      pending = iterator.next();
      const delay = await retries.shift();
      delays.push(delay);
      await clock.tickAsync(delay);
    }
    client.close();
    assert.deepEqual(await pending, DONE);
    const [first, second, third, fourth, afterLong, next] = delays;
    assert.deepEqual([first, second, third], [0, 0, 0]);
    assert.ok(fourth! >= 100 && fourth! <= 200, `fourth wait ${fourth}`);
    // The connection that lived 1 s ends the run of short ones.
    assert.deepEqual([afterLong, next], [0, 0]);
  } finally {
    clock.uninstall();
  }
});

test("SSEClient with maxRetries stops reconnecting to a server whose every connection delivers one event and closes at once", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer(() =>
      eventStreamResponse("retry: 10\ndata: x\n\n")
    );
    const { client, iterator, retries } = observedClient(server.url, {
      maxRetries: 2,
    });
    const reading = drain(iterator);
    // Before: each event reset the count, so the client never gave up (235
    // to 656 requests in 8 s). Now a connection in a storm is no progress:
    // three short ones, then two attempts that count.
    for (let attempt = 0; attempt < 20; attempt++) {
      const outcome = await Promise.race([
        reading.then(() => "ended"),
        retries.shift(),
      ]);
      if (outcome === "ended") break;
      await clock.tickAsync(outcome as number);
    }
    client.close();
    assert.equal(await reading, 5);
    assert.equal(server.requests.length, 5);
    assert.equal(client.readyState, 2);
  } finally {
    clock.uninstall();
  }
});

test("SSEClient refuses option values of the wrong type with a TypeError naming the option", () => {
  const url = "http://127.0.0.1:9/";
  // Before: `retry: null` (from a JSON config, say) was read as 0, and
  // `maxRetryDelay: null` or 0 removed the 100 ms floor after a failure:
  // 5 000-5 800 requests/s.
  for (
    const [name, value, expected] of [
      ["retry", null, "a number of milliseconds"],
      ["retry", false, "a number of milliseconds"],
      ["retry", "10", "a number of milliseconds"],
      ["maxRetryDelay", null, "a number of milliseconds"],
      ["idleTimeout", null, "a number of milliseconds"],
      ["backoffFactor", "2", "a number"],
      ["maxRetries", null, "a number"],
      ["maxEventSize", null, "a number"],
    ] as const
  ) {
    assert.throws(() => new SSEClient(url, { [name]: value }), {
      name: "TypeError",
      message: `Invalid ${name}: expected ${expected}, got ${
        value === null ? "null" : typeof value
      }`,
    });
  }
  // Siblings: a lastEventId that is not a string, a signal that is not an
  // AbortSignal (before: "signal?.addEventListener is not a function"), a
  // callback that is not a function (before: accepted, and thrown when
  // called).
  for (
    const [name, value, expected] of [
      ["lastEventId", null, "a string"],
      ["signal", {}, "an AbortSignal"],
      ["onError", "x", "a function"],
      ["onRetry", 1, "a function"],
      ["onOpen", null, "a function"],
      ["onComment", {}, "a function"],
      ["onResponse", true, "a function"],
    ] as const
  ) {
    assert.throws(() => new SSEClient(url, { [name]: value }), {
      name: "TypeError",
      message: `Invalid ${name}: expected ${expected}, got ${
        describeValue(value)
      }`,
    }, name);
  }
  for (const maxRetryDelay of [0, 99]) {
    assert.throws(() => new SSEClient(url, { maxRetryDelay }), {
      name: "RangeError",
      message:
        `Invalid maxRetryDelay: expected at least 100 ms (the least wait after a failed attempt), got ${maxRetryDelay}`,
    });
  }
});

// --- maxRetries ----------------------------------------------------------------

test("SSEClient with maxRetries 0 ends the iteration when the stream ends, without a second request", async () => {
  await using server = new TestServer(() =>
    eventStreamResponse("retry: 0\ndata: done\n\n")
  );
  const { client, iterator, retries } = observedClient(server.url, {
    method: "POST",
    body: "prompt",
    maxRetries: 0,
  });
  assert.deepEqual(await take(iterator, 2), [message("done")]);
  assert.equal(client.readyState, 2);
  assert.equal(server.requests.length, 1);
  assert.equal(retries.all.length, 0);
});

test("SSEClient with maxRetries 0 throws when the connection drops", async () => {
  await using server = new TestServer();
  const { client, iterator, errors } = observedClient(server.url, {
    maxRetries: 0,
  });
  const stream = server.stream();
  (await server.request(0)).respond(stream.response);
  stream.send("data: a\n\ndata: cut");
  assert.deepEqual(await take(iterator, 1), [message("a")]);
  const next = iterator.next();
  stream.drop();
  await assert.rejects(next, {
    name: "SSEError",
    message: /^Connection lost: /,
  });
  assert.equal(client.readyState, 2);
  assert.equal(errors.all.length, 1);
  assert.equal(server.requests.length, 1);
});

test("SSEClient with maxRetries 0 throws the first retryable status", async () => {
  await using server = new TestServer(() =>
    new Response(null, { status: 503 })
  );
  const client = new SSEClient(server.url, { maxRetries: 0 });
  await assert.rejects(client[Symbol.asyncIterator]().next(), {
    name: "SSEError",
    status: 503,
    message: "Unexpected status 503: no retries left",
  });
  assert.equal(server.requests.length, 1);
});

test("SSEClient gives up after maxRetries failed reconnections in a row", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer(({ index }) =>
      index === 0 || index === 2
        ? eventStreamResponse(`retry: 10\ndata: ${index}\n\n`)
        : new Response(null, { status: 500 })
    );
    const { client, iterator, retries } = observedClient(server.url, {
      maxRetries: 2,
    });
    assert.deepEqual(await take(iterator, 1), [message("0")]);
    // Retry 1 (the stream ended) fails, retry 2 opens: the count restarts.
    let next = iterator.next();
    await clock.tickAsync(await retries.shift());
    await clock.tickAsync(await retries.shift());
    assert.deepEqual(await next, { done: false, value: message("2") });
    // Then retries 1 and 2 fail, and a third is not allowed.
    next = iterator.next();
    await clock.tickAsync(await retries.shift());
    await clock.tickAsync(await retries.shift());
    await assert.rejects(next, {
      name: "SSEError",
      status: 500,
      message: "Unexpected status 500: no retries left",
    });
    assert.equal(server.requests.length, 5);
    assert.equal(client.readyState, 2);
    await clock.runAllAsync();
    assert.equal(server.requests.length, 5);
  } finally {
    clock.uninstall();
  }
});

test("SSEClient with maxRetries gives up on a refused connection", async () => {
  const closed = new TestServer(() => new Response(null));
  const url = closed.url;
  await closed.close();
  const client = new SSEClient(url, { maxRetries: 0 });
  await assert.rejects(client[Symbol.asyncIterator]().next(), {
    name: "SSEError",
    message: /^Connection failed: .*: no retries left$/,
  });
});

// --- what can never succeed ---------------------------------------------------

/** Location headers that are not URLs, relative or absolute. */
const UNPARSABLE_LOCATIONS = [
  "http://[::1/",
  "http://127.0.0.1:99999/",
  "http://%zz/",
  "//",
  "http://exa mple.com/",
];

/**
 * A server that redirects: /loop to itself, /file, /blocked and /data away,
 * /unparsable/<n> to the n-th of {@linkcode UNPARSABLE_LOCATIONS}.
 */
function redirectingServer(): TestServer {
  return new TestServer(({ url }) => {
    const unparsable = /^\/unparsable\/(\d+)$/.exec(url.pathname);
    const location = unparsable === null
      ? {
        "/loop": "/loop",
        "/file": "file:///etc/passwd",
        "/blocked": "http://127.0.0.1:10080/",
        "/data": "data:text/event-stream,data:%20x%0A%0A",
      }[url.pathname]
      : UNPARSABLE_LOCATIONS[Number(unparsable[1])];
    return location === undefined
      ? eventStreamResponse("data: x\n\n")
      : new Response(null, { status: 302, headers: { location } });
  });
}

/**
 * Whether the first attempt ends the iteration ("ended: <error>") or is
 * retried ("retried"), decided by whichever comes first: no sleep.
 */
async function firstOutcome(
  url: URL | string,
  options: SSEClientOptions = {},
): Promise<{ outcome: string; error: unknown; client: SSEClient }> {
  const { client, iterator, retries } = observedClient(url, {
    retry: 0,
    ...options,
  });
  let error: unknown = undefined;
  const outcome = await Promise.race([
    iterator.next().then(
      (result) => `ended: done ${result.done}`,
      (thrown) => {
        error = thrown;
        return "ended with an error";
      },
    ),
    retries.shift().then(() => "retried"),
  ]);
  client.close();
  return { outcome, error, client };
}

test("SSEClient refuses at once a method or header value that fetch can never send, and HEAD, whose response has no body", () => {
  const fetch = () => assert.fail("no request may be made");
  const url = "http://127.0.0.1:8/";
  for (
    const [options, message] of [
      [
        { method: "BAD METHOD" },
        'Invalid method: "BAD METHOD" is not an HTTP token',
      ],
      [{ method: "" }, 'Invalid method: "" is not an HTTP token'],
      [
        { method: "CONNECT" },
        "Invalid method: CONNECT is forbidden by the Fetch standard",
      ],
      [
        { method: "trace" },
        "Invalid method: TRACE is forbidden by the Fetch standard",
      ],
      [
        { method: "Track" },
        "Invalid method: TRACK is forbidden by the Fetch standard",
      ],
      [
        { method: "head" },
        "Invalid method: a response to HEAD has no body, so no event could ever arrive",
      ],
      [
        { headers: { "x-a": "a\x01b" } },
        "Invalid header x-a: its value contains U+0001 at index 1, which fetch cannot send",
      ],
      [
        { headers: [["x-b", "ok\x7f"]] },
        "Invalid header x-b: its value contains U+007F at index 2, which fetch cannot send",
      ],
    ] as [SSEClientOptions, string][]
  ) {
    assert.throws(() => new SSEClient(url, { ...options, fetch }), {
      name: "TypeError",
      message,
    }, JSON.stringify(options));
  }
  // A tab is a legal header value character.
  new SSEClient(url, { headers: { x: "a\tb" }, signal: AbortSignal.abort() });
});

test("SSEClient ends the iteration with an SSEError on a redirect loop, after one attempt", async () => {
  await using server = redirectingServer();
  const { outcome, error, client } = await firstOutcome(
    new URL("/loop", server.url),
  );
  assert.equal(outcome, "ended with an error");
  assert.ok(error instanceof SSEError);
  assert.match(error.message, /^Request refused: .*redirects/);
  assert.equal(error.status, undefined);
  assert.equal(client.readyState, 2);
  // One attempt: the request and the 20 redirects fetch follows.
  assert.equal(server.requests.length, 21);
});

test("SSEClient ends the iteration with an SSEError on a redirect fetch never follows", async () => {
  await using server = redirectingServer();
  for (
    const [path, message] of [
      ["/file", /^Request refused: .*non HTTP\(s\) url/],
      ["/data", /^Request refused: .*non HTTP\(s\) url/],
      ["/blocked", /^Request refused: .*port 10080 .*blocked/],
    ] as const
  ) {
    const before = server.requests.length;
    const { outcome, error } = await firstOutcome(new URL(path, server.url));
    assert.equal(outcome, "ended with an error", path);
    assert.ok(error instanceof SSEError);
    assert.match(error.message, message);
    assert.equal(server.requests.length, before + 1);
  }
});

test("SSEClient ends the iteration with an SSEError on a redirect to a Location that is not a URL", async () => {
  await using server = redirectingServer();
  for (const [index, location] of UNPARSABLE_LOCATIONS.entries()) {
    const before = server.requests.length;
    const { outcome, error } = await firstOutcome(
      new URL(`/unparsable/${index}`, server.url),
    );
    // Before: retried forever as "Connection failed: Invalid URL: …".
    assert.equal(outcome, "ended with an error", location);
    assert.ok(error instanceof SSEError);
    assert.match(error.message, /^Request refused: Invalid URL: /);
    assert.equal(server.requests.length, before + 1);
  }
});

test("SSEClient ends the iteration with an SSEError on a blocked port, without a request", async () => {
  for (const port of [10080, 6697, 1]) {
    let calls = 0;
    const { outcome, error } = await firstOutcome(`http://127.0.0.1:${port}/`, {
      fetch: (input, init) => {
        calls++;
        return fetch(input, init);
      },
    });
    assert.equal(outcome, "ended with an error", `port ${port}`);
    assert.ok(error instanceof SSEError);
    assert.equal(
      error.message,
      `Request refused: port ${port} is blocked by the Fetch standard (a bad port)`,
    );
    assert.equal(calls, 0);
  }
});

test("SSEClient ends the iteration with an SSEError when a headers function returns what fetch cannot send", async () => {
  await using server = new TestServer(() => eventStreamResponse("data: x\n\n"));
  for (
    const [headers, message] of [
      [
        { authorization: "Bearer a\x01b" },
        "Request refused: Invalid header authorization: its value contains U+0001 at index 8, which fetch cannot send",
      ],
      [{ "bad name": "x" }, /^Request refused: /],
    ] as const
  ) {
    const { outcome, error } = await firstOutcome(server.url, {
      headers: () => headers,
    });
    assert.equal(outcome, "ended with an error");
    assert.ok(error instanceof SSEError);
    if (typeof message === "string") assert.equal(error.message, message);
    else assert.match(error.message, message);
  }
  assert.equal(server.requests.length, 0);
});

// Node and Bun word these failures differently from Deno (and from each
// other): the same client, run there, must tell them apart too.
for (
  const [runtime, path, args] of [
    ["Node 22", "node_modules/.bin/node", [
      "--experimental-strip-types",
      "--input-type=module",
      "-e",
    ]],
    ["Bun", "node_modules/.bin/bun", ["-e"]],
  ] as const
) {
  test(`SSEClient on ${runtime} gives up on a redirect loop, a redirect to file: and one to a Location that is not a URL, and retries a refused connection`, async () => {
    const bin = new URL(`../.cache/runtimes/${path}`, import.meta.url);
    try {
      Deno.statSync(bin);
    } catch {
      if (Deno.env.get("CI") === "true") throw new Error(`${runtime} missing`);
      console.log(`${runtime} not installed (.ci/runtimes): skipped`);
      return;
    }
    await using server = redirectingServer();
    const closed = new TestServer(() => new Response(null));
    const refused = closed.url.href;
    await closed.close();
    const client = new URL("../client.ts", import.meta.url).href;
    const script = `
      import { SSEClient } from ${JSON.stringify(client)};
      const out = {};
      for (const url of ${
      JSON.stringify([
        new URL("/loop", server.url).href,
        new URL("/file", server.url).href,
        new URL("/unparsable/0", server.url).href,
        refused,
      ])
    }) {
        const client = new SSEClient(url, {
          retry: 0,
          onRetry: () => { out[url] = "retried"; client.close(); },
        });
        try {
          await client[Symbol.asyncIterator]().next();
          out[url] ??= "ended";
        } catch (error) {
          out[url] = error.name + ": " + error.message;
        }
      }
      console.log(JSON.stringify(out));
    `;
    const { code, stdout, stderr } = await new Deno.Command(bin, {
      args: [...args, script],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder();
    assert.equal(code, 0, text.decode(stderr));
    const out = JSON.parse(text.decode(stdout).trim().split("\n").at(-1)!);
    assert.match(
      out[new URL("/loop", server.url).href],
      /^SSEError: Request refused: /,
    );
    assert.match(
      out[new URL("/file", server.url).href],
      /^SSEError: Request refused: /,
    );
    assert.match(
      out[new URL("/unparsable/0", server.url).href],
      /^SSEError: Request refused: /,
    );
    assert.equal(out[refused], "retried");
  });
}

test("SSEClient still retries what may work next time: a refused connection, a reset, 5xx", async () => {
  // A port nobody listens on any more.
  const closed = new TestServer(() => new Response(null));
  const url = closed.url;
  await closed.close();
  assert.equal((await firstOutcome(url)).outcome, "retried");
  // A server that closes every connection before answering.
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const accepting = (async () => {
    for await (const connection of listener) connection.close();
  })();
  try {
    assert.equal(
      (await firstOutcome(`http://127.0.0.1:${listener.addr.port}/`)).outcome,
      "retried",
    );
  } finally {
    listener.close();
    await accepting;
  }
  await using server = new TestServer(() =>
    new Response(null, { status: 503 })
  );
  assert.equal((await firstOutcome(server.url)).outcome, "retried");
});

// --- final outcomes ----------------------------------------------------------

test("SSEClient ends the iteration normally on 204 and does not reconnect", async () => {
  await using server = new TestServer(() =>
    new Response(null, { status: 204 })
  );
  const { client, iterator, errors } = observedClient(server.url, {
    retry: 0,
  });
  assert.deepEqual(await iterator.next(), DONE);
  assert.deepEqual(await iterator.next(), DONE);
  assert.equal(client.readyState, 2);
  assert.equal(server.requests.length, 1);
  assert.equal(errors.all.length, 0);
});

for (const status of [201, 301, 304, 400, 401, 403, 404, 410]) {
  test(`SSEClient throws an SSEError with status ${status} and does not reconnect`, async () => {
    await using server = new TestServer(() =>
      new Response(status === 304 ? null : "nope", {
        status,
        headers: status === 301 ? {} : { "content-type": "text/event-stream" },
      })
    );
    const { client, iterator, errors } = observedClient(server.url, {
      retry: 0,
    });
    const error = await iterator.next().then(
      () => assert.fail("iteration did not throw"),
      (error) => error,
    );
    assert.ok(error instanceof SSEError);
    assert.equal(error.status, status);
    assert.equal(
      error.message,
      `Unexpected status ${status}: expected 200 with text/event-stream`,
    );
    assert.equal(client.readyState, 2);
    // Thrown once; the iteration is over.
    assert.deepEqual(await iterator.next(), DONE);
    assert.equal(server.requests.length, 1);
    assert.deepEqual(errors.all, [error]);
  });
}

// --- what the server said ------------------------------------------------------

test("SSEError carries the status, the headers and the body of a refused response", async () => {
  const body = JSON.stringify({ error: "invalid_token", detail: "expired" });
  await using server = new TestServer(() =>
    new Response(body, {
      status: 401,
      headers: {
        "content-type": "application/json",
        "www-authenticate": 'Bearer error="invalid_token"',
      },
    })
  );
  const error = await new SSEClient(server.url)[Symbol.asyncIterator]().next()
    .then(() => assert.fail("iteration did not throw"), (error) => error);
  assert.ok(error instanceof SSEError);
  assert.equal(error.status, 401);
  assert.equal(
    error.headers?.get("www-authenticate"),
    'Bearer error="invalid_token"',
  );
  assert.equal(error.body, body);
  assert.equal(
    error.message,
    "Unexpected status 401: expected 200 with text/event-stream",
  );
});

test("SSEError carries the body of a retried status, and of a wrong content type", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer(({ index }) =>
      index === 0
        ? new Response("overloaded, try later", {
          status: 503,
          headers: { "retry-after": "1" },
        })
        : new Response("<html>login</html>", {
          headers: { "content-type": "text/html" },
        })
    );
    const { iterator, errors, retries } = observedClient(server.url);
    const next = iterator.next();
    const retried = await errors.shift();
    assert.ok(retried instanceof SSEError);
    assert.equal(retried.status, 503);
    assert.equal(retried.body, "overloaded, try later");
    assert.equal(retried.headers?.get("retry-after"), "1");
    await clock.tickAsync(await retries.shift());
    const final = await next.then(() => assert.fail("no error"), (e) => e);
    assert.ok(final instanceof SSEError);
    assert.equal(final.status, 200);
    assert.equal(final.body, "<html>login</html>");
  } finally {
    clock.uninstall();
  }
});

test("SSEError keeps the first 64 KiB of a body, and what came of one that stalls", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer();
    // A large body: the first 64 KiB, a character cut at the end dropped.
    const large = "é" + "x".repeat(65534) + "€" + "y".repeat(100_000);
    let client = new SSEClient(server.url);
    let next = client[Symbol.asyncIterator]().next();
    const big = server.stream({
      status: 400,
      headers: { "content-type": "text/plain" },
    });
    (await server.request(0)).respond(big.response);
    big.send(large);
    let error = await next.then(() => assert.fail("no error"), (e) => e);
    assert.equal(error.body, "é" + "x".repeat(65534));
    await big.cancelled;
    // A body that stalls: what came within 5 s.
    client = new SSEClient(server.url);
    next = client[Symbol.asyncIterator]().next();
    const stalled = server.stream({
      status: 400,
      headers: { "content-type": "text/plain" },
    });
    (await server.request(1)).respond(stalled.response);
    stalled.send("partial");
    // Time passes (fake) until the client gives up on the rest.
    let settled = false;
    next.then(() => settled = true, () => settled = true);
    const start = Date.now();
    while (!settled) await clock.tickAsync(500);
    assert.ok(Date.now() - start >= 5000);
    error = await next.then(() => assert.fail("no error"), (e) => e);
    assert.equal(error.status, 400);
    assert.equal(error.body, "partial");
    await stalled.cancelled;
  } finally {
    clock.uninstall();
  }
});

test("SSEClient onResponse refreshes a token after a 401 and asks for one retry, which succeeds", async () => {
  await using server = new TestServer(({ headers }) =>
    headers.get("authorization") === "Bearer fresh"
      ? eventStreamResponse("data: welcome\n\n")
      : new Response("expired", { status: 401 })
  );
  let token = "stale";
  const seen: number[] = [];
  const { client, iterator, errors, retries } = observedClient(server.url, {
    headers: () => ({ authorization: `Bearer ${token}` }),
    onResponse: async (response) => {
      seen.push(response.status);
      if (response.status === 401) {
        assert.equal(await response.text(), "expired");
        token = "fresh";
        return "retry";
      }
    },
  });
  assert.deepEqual(await take(iterator, 1), [message("welcome")]);
  client.close();
  assert.deepEqual(seen, [401, 200]);
  assert.equal(server.requests.length, 2);
  // Asked for: not a failure, and no wait.
  assert.deepEqual(errors.all, []);
  assert.deepEqual(retries.all, [0]);
});

test("SSEClient onResponse gets one retry in a row: a second 401 ends the iteration", async () => {
  await using server = new TestServer(() =>
    new Response("still no", { status: 401 })
  );
  let calls = 0;
  const client = new SSEClient(server.url, {
    onResponse: () => {
      calls++;
      return "retry";
    },
  });
  const error = await client[Symbol.asyncIterator]().next().then(
    () => assert.fail("no error"),
    (error) => error,
  );
  assert.ok(error instanceof SSEError);
  assert.equal(error.status, 401);
  assert.equal(error.body, "still no");
  assert.equal(calls, 2);
  assert.equal(server.requests.length, 2);
});

test("SSEClient onResponse that throws ends the iteration with its error and releases the body", async () => {
  await using server = new TestServer();
  const client = new SSEClient(server.url, {
    onResponse: (response) => {
      if (response.headers.get("x-version") !== "2") {
        throw new Error("server too old");
      }
    },
  });
  const next = client[Symbol.asyncIterator]().next();
  const stream = server.stream();
  (await server.request(0)).respond(stream.response);
  stream.send("data: never read\n\n");
  await assert.rejects(next, { message: "server too old" });
  assert.equal(client.readyState, 2);
  await stream.cancelled;
});

test("SSEClient throws an SSEError naming a content type that is not text/event-stream", async () => {
  for (const type of ["text/plain", "text/x-bogus", "text/event-stream2"]) {
    await using server = new TestServer(() =>
      new Response("data: x\n\n", { headers: { "content-type": type } })
    );
    const client = new SSEClient(server.url, { retry: 0 });
    await assert.rejects(
      client[Symbol.asyncIterator]().next(),
      (error: unknown) => {
        assert.ok(error instanceof SSEError);
        assert.equal(error.status, 200);
        assert.equal(
          error.message,
          `Unexpected content type "${type}": expected text/event-stream`,
        );
        return true;
      },
    );
    assert.equal(server.requests.length, 1);
  }
  await using server = new TestServer(() =>
    new Response(new Blob(["data: x\n\n"]).stream())
  );
  await assert.rejects(
    new SSEClient(server.url)[Symbol.asyncIterator]().next(),
    { name: "SSEError", message: /^Unexpected content type \(none\)/ },
  );
});

test("SSEClient accepts content-type parameters and any case", async () => {
  for (
    const type of [
      "text/event-stream; charset=utf-8",
      "Text/Event-Stream",
      "text/event-stream;",
      " TEXT/EVENT-STREAM ;charset=UTF-8",
    ]
  ) {
    await using server = new TestServer(() =>
      new Response("data: x\n\n", { headers: { "content-type": type } })
    );
    const client = new SSEClient(server.url);
    assert.deepEqual(await take(client[Symbol.asyncIterator](), 1), [
      message("x"),
    ]);
    client.close();
  }
});

// --- options ---------------------------------------------------------------

test("SSEClient sends method and body again on every attempt", async () => {
  await using server = new TestServer(({ index }) =>
    eventStreamResponse(`retry: 0\ndata: ${index}\n\n`)
  );
  const body = JSON.stringify({ prompt: "hi", stream: true });
  const client = new SSEClient(server.url, {
    method: "post",
    headers: { "content-type": "application/json" },
    body,
  });
  await take(client[Symbol.asyncIterator](), 3);
  client.close();
  for (const exchange of server.requests.slice(0, 3)) {
    assert.equal(exchange.method, "POST");
    assert.equal(
      exchange.headers.get("content-type"),
      "application/json",
    );
    assert.equal(exchange.body, body);
  }
});

test("SSEClient awaits a headers function before every attempt", async () => {
  await using server = new TestServer(({ index }) =>
    eventStreamResponse(`retry: 0\ndata: ${index}\n\n`)
  );
  let calls = 0;
  const client = new SSEClient(server.url, {
    headers: async () => {
      await Promise.resolve();
      calls++;
      return { authorization: `Bearer token-${calls}` };
    },
  });
  await take(client[Symbol.asyncIterator](), 3);
  client.close();
  assert.deepEqual(
    server.requests.slice(0, 3).map((exchange) =>
      exchange.headers.get("authorization")
    ),
    ["Bearer token-1", "Bearer token-2", "Bearer token-3"],
  );
});

test("SSEClient ends the iteration with the error a headers function throws", async () => {
  await using server = new TestServer(() => eventStreamResponse("data: x\n\n"));
  const client = new SSEClient(server.url, {
    headers: () => Promise.reject(new Error("no token")),
  });
  await assert.rejects(client[Symbol.asyncIterator]().next(), {
    message: "no token",
  });
  assert.equal(client.readyState, 2);
  assert.equal(server.requests.length, 0);
});

test("SSEClient uses an injected fetch", async () => {
  await using server = new TestServer(() => eventStreamResponse("data: x\n\n"));
  const seen: { url: string; init: RequestInit | undefined }[] = [];
  const client = new SSEClient(server.url, {
    fetch: (input, init) => {
      seen.push({ url: String(input), init });
      return fetch(input, init);
    },
  });
  await take(client[Symbol.asyncIterator](), 1);
  client.close();
  assert.equal(seen.length, 1);
  assert.equal(seen[0]!.url, server.url.href);
  assert.ok(seen[0]!.init?.signal instanceof AbortSignal);
  assert.equal(seen[0]!.init?.signal?.aborted, true);
});

test("SSEClient reads a Response-shaped object from a custom fetch, and waits the reconnection time after it", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer(() =>
      eventStreamResponse("data: hello\n\n")
    );
    const { client, iterator, retries, errors } = observedClient(server.url, {
      fetch: foreignFetch,
    });
    // Before: not `instanceof Response`, so read as a retry with no wait, and
    // the client looped with no timer (17 108 requests in 2 s).
    const first = await Promise.race([
      iterator.next(),
      server.request(3).then(() => "a reconnect storm"),
    ]);
    assert.deepEqual(first, { done: false, value: message("hello") });
    const next = iterator.next();
    assert.equal(await retries.shift(), 3000);
    await clock.tickAsync(2999);
    assert.equal(server.requests.length, 1);
    await clock.tickAsync(1);
    assert.deepEqual(await next, { done: false, value: message("hello") });
    assert.equal(errors.all.length, 0);
    client.close();
  } finally {
    clock.uninstall();
  }
});

test("SSEClient judges a Response-shaped object's status as a Response's: 503 retried, 401 final with its body", async () => {
  await using server = new TestServer(({ index }) =>
    index === 0
      ? new Response("busy", { status: 503 })
      : new Response('{"error":"invalid_token"}', { status: 401 })
  );
  const { iterator, errors } = observedClient(server.url, {
    fetch: foreignFetch,
    retry: 0,
  });
  await assert.rejects(iterator.next(), {
    name: "SSEError",
    status: 401,
    body: '{"error":"invalid_token"}',
  });
  assert.equal(errors.all[0]?.message, "Unexpected status 503: retrying");
  assert.equal(server.requests.length, 2);
});

test("SSEClient ends the iteration with an SSEError when a custom fetch resolves to something that is not a Response", async () => {
  for (
    const [value, what] of [
      [undefined, "undefined"],
      [null, "null"],
      ["data: x\n\n", "string"],
      [{}, "Object"],
      [{ status: 200, headers: new Headers(), body: "data: x\n\n" }, "Object"],
    ] as const
  ) {
    let calls = 0;
    const { iterator, client, retries } = observedClient(
      "http://127.0.0.1:8000/",
      {
        retry: 0,
        // A wrapper that forgets `return`, or returns what it should not.
        fetch: () => {
          calls++;
          return Promise.resolve(value as unknown as Response);
        },
      },
    );
    // Before: undefined crashed the process from a detached promise; the
    // others ended with "Cannot read properties of undefined (reading
    // 'locked')".
    const outcome = await Promise.race([
      iterator.next().then(() => "ended", (error) => error),
      retries.shift().then(() => "retried"),
    ]);
    assert.ok(outcome instanceof SSEError, `${what}: ${outcome}`);
    assert.equal(
      outcome.message,
      `Invalid response: the fetch option resolved to ${what}, not a Response (status, headers and a body stream)`,
    );
    assert.ok(outcome.cause instanceof TypeError);
    assert.equal(calls, 1);
    assert.equal(client.readyState, 2);
  }
});

test("SSEClient retries a network-error response (Response.error()) from a custom fetch", async () => {
  await using server = new TestServer(() =>
    eventStreamResponse("data: ok\n\n")
  );
  let calls = 0;
  const { client, iterator, errors } = observedClient(server.url, {
    retry: 0,
    fetch: (input, init) =>
      ++calls === 1 ? Promise.resolve(Response.error()) : fetch(input, init),
  });
  // Before: "Unexpected status 0", final.
  assert.deepEqual(await iterator.next(), {
    done: false,
    value: message("ok"),
  });
  assert.match(
    errors.all[0]?.message ?? "",
    /^Connection failed: Network error: the fetch option resolved to a network error response/,
  );
  client.close();
});

test("SSEClient ends the iteration with an SSEError when onResponse leaves the stream's body locked", async () => {
  await using server = new TestServer(() => eventStreamResponse("data: x\n\n"));
  const { iterator, retries } = observedClient(server.url, {
    retry: 0,
    onResponse: (response) => {
      response.body!.getReader();
    },
  });
  // Before: retried forever as "Connection lost: ReadableStream is locked".
  const outcome = await Promise.race([
    iterator.next().then(() => "ended", (error) => error),
    retries.shift().then(() => "retried"),
  ]);
  assert.ok(outcome instanceof SSEError, String(outcome));
  assert.equal(
    outcome.message,
    "Unreadable stream: its body was locked or read before the client could read it (by onResponse?)",
  );
  assert.equal(outcome.status, 200);
  assert.equal(server.requests.length, 1);
});

test("SSEClient replaces a connection idle for idleTimeout; comments count as activity", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer();
    const comments = new Queue<string>();
    const { client, iterator, errors, retries } = observedClient(server.url, {
      idleTimeout: 1000,
      retry: 500,
      onComment: comments.push,
    });
    const first = server.stream();
    (await server.request(0)).respond(first.response);
    first.send("data: a\n\n");
    assert.deepEqual(await take(iterator, 1), [message("a")]);
    const next = iterator.next();
    await clock.tickAsync(900);
    first.send(": keep-alive\n");
    assert.equal(await comments.shift(), "keep-alive");
    await clock.tickAsync(999);
    assert.equal(errors.all.length, 0);
    await clock.tickAsync(1);
    const error = await errors.shift();
    assert.ok(error instanceof SSEError);
    assert.equal(
      error.message,
      "Connection lost: No bytes received for 1000 ms",
    );
    await first.cancelled;
    assert.equal(await retries.shift(), 500);
    await clock.tickAsync(500);
    const second = server.stream();
    (await server.request(1)).respond(second.response);
    second.send("data: b\n\n");
    assert.deepEqual(await next, { done: false, value: message("b") });
    client.close();
    await second.cancelled;
  } finally {
    clock.uninstall();
  }
});

test("SSEClient applies idleTimeout to a server that never answers", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer();
    const { client, iterator, errors } = observedClient(server.url, {
      idleTimeout: 5000,
    });
    const next = iterator.next();
    await server.request(0);
    await clock.tickAsync(5000);
    const error = await errors.shift();
    assert.equal(
      error.message,
      "Connection failed: No bytes received for 5000 ms",
    );
    client.close();
    assert.deepEqual(await next, DONE);
  } finally {
    clock.uninstall();
  }
});

test("SSEClient applies idleTimeout to a headers function that never settles, then tries again", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer(() =>
      eventStreamResponse("data: x\n\n")
    );
    let calls = 0;
    const { client, iterator, errors, retries } = observedClient(server.url, {
      idleTimeout: 1000,
      retry: 10,
      headers: () => {
        calls++;
        // The first token request hangs for ever; the next one answers.
        return calls === 1 ? new Promise<HeadersInit>(() => {}) : {};
      },
    });
    const next = iterator.next();
    await clock.tickAsync(999);
    assert.equal(errors.all.length, 0);
    await clock.tickAsync(1);
    assert.equal(errors.all.length, 1, "no error after idleTimeout");
    const error = await errors.shift();
    assert.ok(error instanceof SSEError);
    assert.equal(
      error.message,
      "Connection failed: The headers function did not settle within 1000 ms",
    );
    await clock.tickAsync(await retries.shift());
    assert.deepEqual(await next, { done: false, value: message("x") });
    assert.equal(calls, 2);
    assert.equal(server.requests.length, 1);
    client.close();
  } finally {
    clock.uninstall();
  }
});

test("SSEClient throws a RangeError for an event larger than maxEventSize", async () => {
  await using server = new TestServer(() =>
    eventStreamResponse(`data: ok\n\ndata: ${"x".repeat(2000)}\n\n`)
  );
  const client = new SSEClient(server.url, { maxEventSize: 1000, retry: 0 });
  const iterator = client[Symbol.asyncIterator]();
  // Events parsed before the limit was hit are still delivered.
  assert.deepEqual(await iterator.next(), {
    done: false,
    value: message("ok"),
  });
  await assert.rejects(iterator.next(), RangeError);
  assert.equal(client.readyState, 2);
  assert.equal(server.requests.length, 1);
});

test("SSEClient counts maxEventSize in bytes: 1806 bytes of é are over 1000", async () => {
  for (const text of ["é".repeat(903), "中".repeat(902)]) {
    await using server = new TestServer(() =>
      eventStreamResponse(`data: ok\n\ndata: ${text}`)
    );
    const client = new SSEClient(server.url, { maxEventSize: 1000 });
    const iterator = client[Symbol.asyncIterator]();
    assert.deepEqual(await iterator.next(), {
      done: false,
      value: message("ok"),
    });
    await assert.rejects(iterator.next(), {
      name: "RangeError",
      message: "Event exceeds maxEventSize: more than 1000 bytes are pending",
    });
    assert.equal(server.requests.length, 1);
  }
});

// --- closing ----------------------------------------------------------------

test("SSEClient close() ends a pending next() while connecting", async () => {
  await using server = new TestServer();
  const { client, iterator, errors } = observedClient(server.url);
  const next = iterator.next();
  await server.request(0);
  client.close();
  assert.deepEqual(await next, DONE);
  assert.equal(client.readyState, 2);
  assert.equal(errors.all.length, 0);
});

test("SSEClient close() ends a pending next() on an open stream and cancels the body", async () => {
  await using server = new TestServer();
  const { client, iterator, opens } = observedClient(server.url);
  const stream = server.stream();
  (await server.request(0)).respond(stream.response);
  stream.send(": hello\n");
  const next = iterator.next();
  await opens.shift();
  assert.equal(client.readyState, 1);
  client.close();
  assert.deepEqual(await next, DONE);
  await stream.cancelled;
});

test("SSEClient close() ends a pending next() while waiting to retry, and no request follows", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer(() =>
      new Response(null, { status: 503 })
    );
    const { client, iterator, retries } = observedClient(server.url);
    const next = iterator.next();
    await retries.shift();
    client.close();
    assert.deepEqual(await next, DONE);
    await clock.runAllAsync();
    assert.equal(clock.countTimers(), 0);
    assert.equal(server.requests.length, 1);
  } finally {
    clock.uninstall();
  }
});

test("SSEClient close() ends a pending next() while a headers function is pending", async () => {
  let calls = 0;
  const client = new SSEClient("http://127.0.0.1:9/", {
    headers: () => {
      calls++;
      return new Promise<HeadersInit>(() => {});
    },
    fetch: () => assert.fail("no request may be made"),
  });
  const next = client[Symbol.asyncIterator]().next();
  client.close();
  assert.deepEqual(await next, DONE);
  assert.equal(calls, 1);
});

test("SSEClient close() ends a pending next() even if an injected fetch ignores its signal", async () => {
  await using server = new TestServer();
  let release!: () => void;
  const released = new Promise<void>((resolve) => release = resolve);
  const client = new SSEClient(server.url, {
    fetch: async (input) => {
      await released;
      return fetch(input); // no signal
    },
  });
  const next = client[Symbol.asyncIterator]().next();
  client.close();
  assert.deepEqual(await next, DONE);
  release();
  // The response that arrives after close() is released unread.
  const stream = server.stream();
  (await server.request(0)).respond(stream.response);
  await stream.cancelled;
});

// Every place the client can be waiting when it is stopped, by close() or by
// its signal: each time, on the server, a stream that was answered is
// cancelled, and no request is made after the stop.
interface StopPoint {
  name: string;
  /**
   * Brings the client to the point. Returns the stream the server answered
   * with (if any) and a step to run after the stop (if any).
   */
  reach(
    server: TestServer,
    client: SSEClient,
    iterator: AsyncIterator<SSEEvent>,
    gate: Gate,
  ): Reached | Promise<Reached>;
  options?: (gate: Gate) => SSEClientOptions;
  /** Whether a next() call is pending at the point (default true). */
  waiting?: boolean;
}

/** What a test finds at a stop point. */
interface Reached {
  /** The stream the server answered with, to be cancelled by the stop. */
  stream?: EventStream;
  /** A step to run after the stop. */
  after?: () => unknown;
}

/** Promises a test settles itself. */
class Gate {
  #open!: () => void;
  readonly opened = new Promise<void>((resolve) => this.#open = resolve);
  open = (): void => this.#open();
}

const STOP_POINTS: StopPoint[] = [
  {
    name: "right after the constructor, before fetch resolves",
    // A fetch that ignores its signal: the response arrives after the stop.
    options: (gate) => ({
      fetch: async (input) => {
        await gate.opened;
        return await fetch(input, { headers: { accept: "text/event-stream" } });
      },
    }),
    reach(server) {
      // The request goes out once the gate opens, after the stop; the
      // response that comes back is released unread.
      const stream = server.stream();
      return {
        stream,
        after: async () => (await server.request(0)).respond(stream.response),
      };
    },
  },
  {
    name: "while a headers function is pending",
    options: (gate) => ({
      headers: async () => {
        await gate.opened;
        return {};
      },
    }),
    reach() {
      return {};
    },
  },
  {
    name: "while waiting for the response",
    async reach(server) {
      await server.request(0);
      const stream = server.stream();
      return {
        stream,
        after: () => server.requests[0]!.respond(stream.response),
      };
    },
  },
  {
    name: "while onResponse is pending",
    options: (gate) => ({ onResponse: () => gate.opened }),
    async reach(server) {
      const stream = server.stream();
      (await server.request(0)).respond(stream.response);
      return { stream };
    },
  },
  {
    name: "while reading the body of a refused response",
    async reach(server) {
      const stream = server.stream({ status: 403 });
      (await server.request(0)).respond(stream.response);
      stream.send("forbidden, and more to come");
      return { stream };
    },
  },
  {
    name: "while reading the open stream",
    async reach(server, _client, iterator) {
      const stream = server.stream();
      (await server.request(0)).respond(stream.response);
      stream.send("data: 1\n\n");
      await iterator.next();
      return { stream };
    },
  },
  {
    name: "with events parsed and not yet handed out",
    waiting: false,
    async reach(server, _client, iterator) {
      const stream = server.stream();
      (await server.request(0)).respond(stream.response);
      stream.send("data: 1\n\ndata: 2\n\ndata: 3\n\n");
      await iterator.next();
      return { stream };
    },
  },
  {
    name: "while waiting to retry",
    async reach(server, _client, iterator) {
      const stream = server.stream();
      (await server.request(0)).respond(stream.response);
      stream.send("retry: 60000\ndata: 1\n\n");
      await iterator.next();
      stream.end();
      return {};
    },
  },
];

for (const point of STOP_POINTS) {
  for (const how of ["close()", "its signal"]) {
    test(`SSEClient stopped by ${how} ${point.name} leaves nothing open on the server`, async () => {
      await using server = new TestServer();
      const gate = new Gate();
      const controller = new AbortController();
      let fetches = 0;
      const extra = point.options?.(gate) ?? {};
      const inner = extra.fetch ?? fetch;
      const client = new SSEClient(server.url, {
        retry: 0,
        ...extra,
        signal: controller.signal,
        fetch: (input, init) => {
          fetches++;
          return inner(input, init);
        },
      });
      const iterator = client[Symbol.asyncIterator]();
      const { stream, after } = await point.reach(
        server,
        client,
        iterator,
        gate,
      );
      const pending = point.waiting === false ? undefined : iterator.next();
      const before = fetches;
      if (how === "close()") client.close();
      else controller.abort();
      assert.deepEqual(await (pending ?? iterator.next()), DONE);
      assert.equal(client.readyState, 2);
      gate.open();
      await after?.();
      if (stream !== undefined) await stream.cancelled;
      // Nothing follows the stop (every continuation has run by the next
      // macrotask).
      await new Promise((resolve) => setTimeout(resolve, 0));
      assert.equal(fetches, before);
    });
  }
}

test("SSEClient discards events already received when closed", async () => {
  await using server = new TestServer(() =>
    eventStreamResponse("data: 1\n\ndata: 2\n\ndata: 3\n\n")
  );
  const client = new SSEClient(server.url);
  const seen: string[] = [];
  for await (const event of client) {
    seen.push(event.data);
    client.close();
  }
  assert.deepEqual(seen, ["1"]);
});

test("SSEClient hands out no event after a callback closes it, not even the rest of the chunk", async () => {
  // One chunk: an event, a comment, two more events.
  const body =
    "data: before\n\n: stop here\ndata: after 1\n\ndata: after 2\n\n";
  for (
    const [name, stopsAfter] of [
      ["onComment", ["before"]],
      ["onOpen", []],
      ["onResponse", []],
    ] as const
  ) {
    await using server = new TestServer(() => eventStreamResponse(body));
    const client: SSEClient = new SSEClient(server.url, {
      [name]: () => client.close(),
    });
    const seen: string[] = [];
    // Before: close() from onComment still let "after 1" out, with
    // readyState 2.
    for await (const event of client) {
      seen.push(`${event.data} (readyState ${client.readyState})`);
    }
    assert.deepEqual(
      seen,
      stopsAfter.map((data) => `${data} (readyState 1)`),
      name,
    );
    assert.equal(server.requests.length, 1, name);
  }
});

test("SSEClient closes when a for await loop is left", async () => {
  await using server = new TestServer();
  const client = new SSEClient(server.url);
  const stream = server.stream();
  (await server.request(0)).respond(stream.response);
  stream.send("data: 1\n\ndata: 2\n\n");
  for await (const event of client) {
    assert.equal(event.data, "1");
    break;
  }
  assert.equal(client.readyState, 2);
  await stream.cancelled;
});

test("SSEClient stops when its signal aborts, in any state", async () => {
  await using server = new TestServer();
  const controller = new AbortController();
  const client = new SSEClient(server.url, { signal: controller.signal });
  const stream = server.stream();
  (await server.request(0)).respond(stream.response);
  stream.send("data: 1\n\n");
  const iterator = client[Symbol.asyncIterator]();
  assert.deepEqual(await take(iterator, 1), [message("1")]);
  const next = iterator.next();
  controller.abort();
  assert.deepEqual(await next, DONE);
  assert.equal(client.readyState, 2);
  await stream.cancelled;
});

test("SSEClient throws the reason its signal aborts with, unless it is the default AbortError", async () => {
  const timeout = new DOMException("Signal timed out.", "TimeoutError");
  const custom = new Error("the user left");
  for (
    const [name, reason, outcome] of [
      ["no reason (AbortError)", undefined, "done"],
      ["an AbortError", new DOMException("stop", "AbortError"), "done"],
      ["a TimeoutError", timeout, timeout],
      ["an Error", custom, custom],
      ["a string", "stop", "stop"],
    ] as const
  ) {
    await using server = new TestServer();
    const controller = new AbortController();
    const errors: unknown[] = [];
    const client = new SSEClient(server.url, {
      signal: controller.signal,
      onError: (error) => errors.push(error),
    });
    const stream = server.stream();
    (await server.request(0)).respond(stream.response);
    stream.send("data: 1\n\n");
    const iterator = client[Symbol.asyncIterator]();
    assert.deepEqual(await take(iterator, 1), [message("1")]);
    // A token on its way, when the signal aborts.
    const next = iterator.next();
    controller.abort(reason);
    // Before: every abort ended the loop as a complete stream does.
    const result = await next.then(
      (result) => (result.done ? "done" : result),
      (error) => error,
    );
    assert.equal(result, outcome, name);
    assert.equal(client.readyState, 2);
    // Thrown once; the iteration is over after it.
    assert.deepEqual(await iterator.next(), DONE);
    assert.deepEqual(errors, outcome instanceof Error ? [outcome] : [], name);
    await stream.cancelled;
  }
});

test("SSEClient throws the reason of a signal aborted before it was created, unless it is the default AbortError", async () => {
  const timeout = new DOMException("Signal timed out.", "TimeoutError");
  for (
    const [signal, outcome] of [
      [AbortSignal.abort(), "done"],
      [AbortSignal.abort(timeout), timeout],
    ] as const
  ) {
    const client = new SSEClient("http://127.0.0.1:9/", {
      signal,
      fetch: () => assert.fail("no request may be made"),
    });
    const result = await client[Symbol.asyncIterator]().next().then(
      (result) => (result.done ? "done" : result),
      (error) => error,
    );
    assert.equal(result, outcome);
  }
});

test("SSEClient throws a TimeoutError when AbortSignal.timeout() fires mid-stream", async () => {
  await using server = new TestServer();
  const client = new SSEClient(server.url, {
    signal: AbortSignal.timeout(100),
  });
  const stream = server.stream();
  (await server.request(0)).respond(stream.response);
  stream.send("data: token 1\n\n");
  const tokens: string[] = [];
  // The answer stalls after its first token: the timeout fires.
  await assert.rejects(
    async () => {
      for await (const { data } of client) tokens.push(data);
    },
    { name: "TimeoutError" },
  );
  assert.deepEqual(tokens, ["token 1"]);
  await stream.cancelled;
});

test("SSEClient makes no request when its signal is already aborted", async () => {
  let calls = 0;
  const client = new SSEClient("http://127.0.0.1:9/", {
    signal: AbortSignal.abort(),
    fetch: () => {
      calls++;
      return Promise.reject(new Error("unreachable"));
    },
  });
  assert.equal(client.readyState, 2);
  assert.deepEqual(await client[Symbol.asyncIterator]().next(), DONE);
  assert.equal(calls, 0);
});

// --- observing state -------------------------------------------------------

test("SSEClient reports open, error and retry through its callbacks", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer(({ index }) =>
      index === 1
        ? new Response(null, { status: 500 })
        : eventStreamResponse(`data: ${index}\n\n`)
    );
    const log: string[] = [];
    const retries = new Queue<number>();
    const client: SSEClient = new SSEClient(server.url, {
      retry: 100,
      onOpen: (response) =>
        log.push(`open ${response.status} ${client.readyState}`),
      onError: (error) =>
        log.push(`error ${error.message} ${client.readyState}`),
      onRetry: (delay) => {
        log.push(`retry ${client.readyState}`);
        retries.push(delay);
      },
    });
    const iterator = client[Symbol.asyncIterator]();
    await take(iterator, 1);
    const next = iterator.next();
    assert.equal(client.readyState, 1);
    await clock.tickAsync(await retries.shift()); // the stream ended
    await clock.tickAsync(await retries.shift()); // the 500
    assert.deepEqual(await next, { done: false, value: message("2") });
    client.close();
    assert.deepEqual(log, [
      "open 200 1",
      "retry 0",
      "error Unexpected status 500: retrying 0",
      "retry 0",
      "open 200 1",
    ]);
  } finally {
    clock.uninstall();
  }
});

test("SSEClient ends the iteration with the error a callback throws", async () => {
  await using server = new TestServer(() => eventStreamResponse("data: x\n\n"));
  const client = new SSEClient(server.url, {
    onOpen: () => {
      throw new Error("callback failed");
    },
  });
  await assert.rejects(client[Symbol.asyncIterator]().next(), {
    message: "callback failed",
  });
  assert.equal(client.readyState, 2);
});

test("SSEClient resolves concurrent next() calls in order", async () => {
  await using server = new TestServer();
  const client = new SSEClient(server.url);
  const iterator = client[Symbol.asyncIterator]();
  const stream = server.stream();
  (await server.request(0)).respond(stream.response);
  const results = [iterator.next(), iterator.next(), iterator.next()];
  stream.send("data: 1\n\n");
  stream.send(": just a comment\n");
  stream.send("data: 2\n\ndata: 3\n\n");
  assert.deepEqual(
    (await Promise.all(results)).map((result) => result.value?.data),
    ["1", "2", "3"],
  );
  client.close();
});

// --- input validation ------------------------------------------------------

test("SSEClient rejects invalid options at once", () => {
  const url = "http://127.0.0.1:9/";
  assert.throws(() => new SSEClient("http://exa mple.com/"), {
    name: "TypeError",
    message: "Invalid URL: http://exa mple.com/",
  });
  assert.throws(() => new SSEClient("ftp://example.com/"), {
    name: "TypeError",
    message: "Invalid URL: expected http: or https:, got ftp:",
  });
  // A Request, as fetch takes: its method, headers (a Last-Event-ID among
  // them) and body would be lost; before: "Invalid URL: [object Request]".
  assert.throws(
    () => new SSEClient(new Request(url) as unknown as string),
    {
      name: "TypeError",
      message:
        "Invalid URL: expected a string or a URL, got a Request (pass request.url, and its method, headers and body as options)",
    },
  );
  assert.throws(() => new SSEClient(url, { retry: -1 }), {
    name: "RangeError",
    message:
      "Invalid retry: expected a non-negative number of milliseconds, got -1",
  });
  assert.throws(() => new SSEClient(url, { maxRetryDelay: NaN }), RangeError);
  assert.throws(() => new SSEClient(url, { backoffFactor: 0.5 }), RangeError);
  assert.throws(() => new SSEClient(url, { maxRetries: 1.5 }), {
    name: "RangeError",
    message:
      "Invalid maxRetries: expected a non-negative integer or Infinity, got 1.5",
  });
  assert.throws(() => new SSEClient(url, { maxRetries: -1 }), RangeError);
  assert.throws(() => new SSEClient(url, { idleTimeout: 0 }), RangeError);
  assert.throws(() => new SSEClient(url, { maxEventSize: 0 }), RangeError);
  assert.throws(() => new SSEClient(url, { body: "x" }), {
    name: "TypeError",
    message: "Invalid body: a GET request cannot have one",
  });
  assert.throws(
    () =>
      new SSEClient(url, {
        method: "POST",
        body: new Blob([]).stream() as unknown as Blob,
      }),
    TypeError,
  );
  assert.throws(() => new SSEClient(url, { lastEventId: "a\nb" }), TypeError);
  assert.throws(
    () => new SSEClient(url, { headers: { "bad header": "x" } }),
    TypeError,
  );
});
