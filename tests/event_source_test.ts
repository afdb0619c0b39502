// Copyright the sse authors. MIT license.
// The web-platform-tests `eventsource/` behaviours that apply outside a
// browser, each run against our EventSource and against Deno's built-in one.
// Where the two differ, ours follows the HTML standard and the test says why.
import assert from "node:assert/strict";
import { EventSource as OurEventSource } from "../event_source.ts";
import {
  assertFailureBackoff,
  type EventStream,
  eventStreamResponse,
  fakeClock,
  foreignFetch,
  Queue,
  test,
  TestServer,
  within,
} from "./_sse_server.ts";

// --- helpers ---------------------------------------------------------------

/** What both implementations have in common. */
interface EventSourceLike extends EventTarget {
  readonly url: string;
  readonly readyState: number;
  readonly withCredentials: boolean;
  readonly CONNECTING: 0;
  readonly OPEN: 1;
  readonly CLOSED: 2;
  onopen: ((event: Event) => unknown) | null;
  onmessage: ((event: MessageEvent) => unknown) | null;
  onerror: ((event: Event) => unknown) | null;
  close(): void;
}

interface EventSourceClass {
  new (
    url: string | URL,
    init?: { withCredentials?: boolean },
  ): EventSourceLike;
  readonly CONNECTING: 0;
  readonly OPEN: 1;
  readonly CLOSED: 2;
}

const IMPLEMENTATIONS: {
  name: string;
  EventSource: EventSourceClass;
  native: boolean;
}[] = [
  { name: "EventSource", EventSource: OurEventSource, native: false },
  {
    name: "Deno's built-in EventSource",
    EventSource: globalThis.EventSource as unknown as EventSourceClass,
    native: true,
  },
];

/** An event as a listener saw it, with the readyState at that moment. */
interface Seen {
  type: string;
  readyState: number;
  data?: string;
  lastEventId?: string;
  origin?: string;
}

/** Records every `open`, `message`, `error` (and `types`) event. */
function record(source: EventSourceLike, types: string[] = []): Queue<Seen> {
  const seen = new Queue<Seen>();
  for (const type of ["open", "message", "error", ...types]) {
    source.addEventListener(type, (event) => {
      const entry: Seen = { type: event.type, readyState: source.readyState };
      if (event instanceof MessageEvent) {
        entry.data = event.data;
        entry.lastEventId = event.lastEventId;
        entry.origin = event.origin;
      }
      seen.push(entry);
    });
  }
  return seen;
}

const OPENED: Seen = { type: "open", readyState: 1 };
const RECONNECTING: Seen = { type: "error", readyState: 0 };
const FAILED: Seen = { type: "error", readyState: 2 };

/** Drops `origin` (checked by tests of its own). */
function withoutOrigin(seen: Seen[]): Seen[] {
  return seen.map(({ origin: _, ...rest }) => rest);
}

function message(data: string, lastEventId = ""): Seen {
  return { type: "message", readyState: 1, data, lastEventId };
}

function latin1Bytes(value: string): Uint8Array {
  return Uint8Array.from(value, (c) => c.charCodeAt(0));
}

function concat(...parts: (string | Uint8Array)[]): Uint8Array<ArrayBuffer> {
  const encoder = new TextEncoder();
  const chunks = parts.map((part) =>
    typeof part === "string" ? encoder.encode(part) : part
  );
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
}

// --- the same tests, against both implementations ----------------------------

for (const { name, EventSource, native } of IMPLEMENTATIONS) {
  // --- interface -----------------------------------------------------------

  test(`${name} has CONNECTING, OPEN and CLOSED on the class and its instances`, async () => {
    await using server = new TestServer(() => eventStreamResponse(""));
    const source = new EventSource(server.url);
    source.close();
    for (const target of [EventSource, source]) {
      assert.equal(target.CONNECTING, 0);
      assert.equal(target.OPEN, 1);
      assert.equal(target.CLOSED, 2);
    }
    // WebIDL constants are read-only, enumerable, non-configurable data
    // properties; Deno's are non-enumerable on the class and accessors on the
    // prototype.
    if (!native) {
      for (const target of [EventSource, Object.getPrototypeOf(source)]) {
        assert.deepEqual(Object.getOwnPropertyDescriptor(target, "OPEN"), {
          value: 1,
          writable: false,
          enumerable: true,
          configurable: false,
        });
      }
    }
    assert.ok(source instanceof EventTarget);
  });

  test(`${name} exposes withCredentials`, async () => {
    await using server = new TestServer(() => eventStreamResponse(""));
    const plain = new EventSource(server.url);
    const credentialed = new EventSource(server.url, { withCredentials: true });
    plain.close();
    credentialed.close();
    assert.equal(plain.withCredentials, false);
    assert.equal(credentialed.withCredentials, true);
  });

  // eventsource-url
  test(`${name} exposes its URL, absolute and serialized`, async () => {
    await using server = new TestServer(() => eventStreamResponse(""));
    const path = "resources/../message?x=1";
    const source = new EventSource(new URL(path, server.url).href);
    source.close();
    assert.equal(source.url, `${server.url.origin}/message?x=1`);
    assert.ok(source.url.endsWith("/message?x=1"));
  });

  // eventsource-constructor-url-bogus
  test(`${name} throws a SyntaxError DOMException for a URL that cannot be parsed`, () => {
    assert.throws(
      () => new EventSource("http://this is invalid/"),
      (error: unknown) =>
        error instanceof DOMException && error.name === "SyntaxError",
    );
  });

  // --- eventsource-close ---------------------------------------------------

  test(`${name} is CONNECTING, then OPEN, then CLOSED as soon as close() is called`, async () => {
    await using server = new TestServer(() =>
      eventStreamResponse("data: data\n\n")
    );
    const source = new EventSource(server.url);
    const states = [source.readyState];
    await new Promise<void>((resolve) => {
      source.onopen = () => {
        states.push(source.readyState);
        source.close();
        states.push(source.readyState);
        resolve();
      };
    });
    assert.deepEqual(states, [0, 1, 2]);
  });

  test(`${name} reconnects after the stream ends and stops on 204 (eventsource-close events)`, async () => {
    await using server = new TestServer(({ index }) => {
      if (index === 0) return eventStreamResponse("retry: 2\ndata: opened\n\n");
      if (index === 1) return eventStreamResponse("data: reconnected\n\n");
      return new Response(null, {
        status: 204,
        headers: { "content-type": "text/event-stream" },
      });
    });
    const source = new EventSource(server.url);
    const seen = record(source);
    assert.deepEqual(withoutOrigin(await seen.take(7)), [
      OPENED,
      message("opened"),
      RECONNECTING,
      OPENED,
      message("reconnected"),
      RECONNECTING,
      FAILED,
    ]);
    assert.equal(source.readyState, 2);
    assert.equal(server.requests.length, 3);
  });

  test(`${name} dispatches nothing after close(), not even the rest of the same chunk`, async () => {
    await using server = new TestServer();
    const source = new EventSource(server.url);
    const seen = record(source, ["custom"]);
    source.onmessage = () => source.close();
    const stream = server.stream();
    (await server.request(0)).respond(stream.response);
    stream.send("data: 1\n\ndata: 2\n\nevent: custom\ndata: 3\n\n");
    await stream.cancelled;
    assert.deepEqual(withoutOrigin(seen.all), [OPENED, message("1")]);
  });

  test(`${name} does not reconnect when an error listener closes it`, async () => {
    await using server = new TestServer(() =>
      eventStreamResponse("retry: 0\ndata: x\n\n")
    );
    const source = new EventSource(server.url);
    const seen = record(source);
    source.onerror = () => source.close();
    assert.deepEqual((await seen.take(3)).map((s) => s.type), [
      "open",
      "message",
      "error",
    ]);
    assert.equal(source.readyState, 2);
    assert.equal(server.requests.length, 1);
  });

  // --- eventsource-reconnect -------------------------------------------------

  test(`${name} reconnects when a 200 stream ends before any message`, async () => {
    await using server = new TestServer(({ index }) =>
      eventStreamResponse(index === 0 ? "retry: 2\n" : "data: data\n\n")
    );
    const source = new EventSource(server.url);
    const seen = record(source);
    assert.deepEqual(withoutOrigin(await seen.take(4)), [
      OPENED,
      RECONNECTING,
      OPENED,
      message("data"),
    ]);
    source.close();
  });

  test(`${name} fires error with readyState CONNECTING, then reconnects (reconnection events)`, async () => {
    await using server = new TestServer(({ index }) =>
      eventStreamResponse(
        index === 0 ? "retry: 2\ndata: ok\n\n" : "data: data\n\n",
      )
    );
    const source = new EventSource(server.url);
    const seen = record(source);
    assert.deepEqual(withoutOrigin(await seen.take(5)), [
      OPENED,
      message("ok"),
      RECONNECTING,
      OPENED,
      message("data"),
    ]);
    source.close();
  });

  test(`${name} reconnects after a dropped connection, with the last event ID, and drops the cut-off event`, async () => {
    await using server = new TestServer();
    const source = new EventSource(server.url);
    const seen = record(source);
    const first = server.stream();
    (await server.request(0)).respond(first.response);
    first.send("retry: 2\nid: 1\ndata: a\n\ndata: cut");
    assert.deepEqual(withoutOrigin(await seen.take(2)), [
      OPENED,
      message("a", "1"),
    ]);
    first.send(" off\nid: 2\n");
    first.drop();
    assert.deepEqual(await seen.shift(), RECONNECTING);
    const exchange = await server.request(1);
    assert.equal(exchange.headers.get("last-event-id"), "1");
    exchange.respond(eventStreamResponse("data: b\n\n"));
    assert.deepEqual(withoutOrigin(await seen.take(2)), [
      OPENED,
      message("b", "1"),
    ]);
    source.close();
  });

  test(`${name} treats a refused connection as a network error: error with readyState CONNECTING`, async () => {
    const closed = new TestServer(() => new Response(null));
    const url = closed.url;
    await closed.close();
    const source = new EventSource(url);
    const seen = record(source);
    assert.deepEqual(await seen.shift(), RECONNECTING);
    source.close();
  });

  // --- eventsource-onmessage, eventsource-eventtarget --------------------------

  test(`${name} calls onmessage with a MessageEvent, this being the source`, async () => {
    await using server = new TestServer(() =>
      eventStreamResponse("data: data\n\n\n")
    );
    const source = new EventSource(server.url);
    const { event, self } = await new Promise<
      { event: MessageEvent; self: unknown }
    >((resolve) => {
      source.onmessage = function (this: unknown, event) {
        resolve({ event, self: this });
      };
    });
    source.close();
    assert.ok(event instanceof MessageEvent);
    assert.equal(event.type, "message");
    assert.equal(event.data, "data");
    assert.equal(self, source);
    assert.equal(event.target, source);
  });

  test(`${name} dispatches messages to addEventListener listeners`, async () => {
    await using server = new TestServer(() =>
      eventStreamResponse("data: data\n\n")
    );
    const source = new EventSource(server.url);
    const event = await new Promise<Event>((resolve) => {
      source.addEventListener("message", resolve);
    });
    source.close();
    assert.ok(event instanceof MessageEvent);
    assert.equal(event.data, "data");
    assert.equal(event.currentTarget, null); // dispatch is over
    assert.equal(event.target, source);
  });

  test(`${name} sends custom event types only to their addEventListener listeners`, async () => {
    await using server = new TestServer(() =>
      eventStreamResponse("event: update\ndata: u\n\ndata: m\n\n")
    );
    const source = new EventSource(server.url);
    const calls: string[] = [];
    source.onmessage = (event) => calls.push(`onmessage ${event.data}`);
    source.addEventListener("update", (event) => {
      calls.push(`update ${(event as MessageEvent).data}`);
    });
    const done = new Promise<void>((resolve) => {
      source.addEventListener("message", () => resolve());
    });
    await done;
    source.close();
    assert.deepEqual(calls, ["update u", "onmessage m"]);
  });

  test(`${name} runs event handler attributes alongside listeners, in registration order`, async () => {
    await using server = new TestServer(() =>
      eventStreamResponse("data: x\n\n")
    );
    const source = new EventSource(server.url);
    const calls: string[] = [];
    source.onmessage = () => calls.push("first handler");
    source.addEventListener("message", () => calls.push("listener"));
    // Replacing a handler keeps its place; clearing one removes it.
    source.onmessage = () => calls.push("second handler");
    source.onopen = () => calls.push("onopen");
    source.onerror = () => calls.push("onerror");
    source.onerror = null;
    const done = new Promise<void>((resolve) => {
      source.addEventListener("message", () => resolve());
    });
    await done;
    source.close();
    assert.deepEqual(calls, ["onopen", "second handler", "listener"]);
    assert.equal(source.onerror, null);
    assert.equal(typeof source.onmessage, "function");
  });

  // --- requests ----------------------------------------------------------------

  // request-accept
  test(`${name} sends Accept: text/event-stream`, async () => {
    await using server = new TestServer(({ headers }) =>
      eventStreamResponse(`data: ${headers.get("accept")}\n\n`)
    );
    const source = new EventSource(server.url);
    const seen = record(source);
    assert.deepEqual(withoutOrigin(await seen.take(2)), [
      OPENED,
      message("text/event-stream"),
    ]);
    source.close();
  });

  // request-cache-control, run twice as the original does
  test(`${name} sends Cache-Control: no-cache${native ? " (Deno's does not)" : ""}`, async () => {
    await using server = new TestServer(({ headers }) =>
      eventStreamResponse(`data: ${headers.get("cache-control")}\n\n`)
    );
    for (let run = 0; run < 2; run++) {
      const source = new EventSource(server.url);
      const seen = record(source);
      const [, event] = await seen.take(2);
      source.close();
      // The standard fetches with cache mode "no-store", for which Fetch adds
      // `Cache-Control: no-cache`; Deno's fetch ignores the cache mode, so its
      // EventSource sends no Cache-Control at all.
      assert.equal(event!.data, native ? "null" : "no-cache");
    }
  });

  // request-redirect
  for (const status of [301, 302, 303, 307, 308]) {
    test(`${name} follows a ${status} redirect and opens`, async () => {
      await using server = new TestServer(({ url }) =>
        url.pathname === "/redirect"
          ? new Response(null, { status, headers: { location: "/message" } })
          : eventStreamResponse("data: data\n\n")
      );
      const source = new EventSource(new URL("/redirect", server.url));
      const seen = record(source);
      assert.deepEqual(withoutOrigin(await seen.take(2)), [
        OPENED,
        message("data"),
      ]);
      source.close();
      assert.deepEqual(
        server.requests.map((exchange) => exchange.url.pathname),
        ["/redirect", "/message"],
      );
    });
  }

  test(
    `${name} sets origin to ${
      native ? "the whole final URL (Deno's)" : "the origin of the final URL"
    }`,
    async () => {
      await using target = new TestServer(() =>
        eventStreamResponse("data: data\n\n")
      );
      const final = new URL("/stream?x=1", target.url);
      await using server = new TestServer(() =>
        new Response(null, { status: 307, headers: { location: final.href } })
      );
      const source = new EventSource(new URL("/start", server.url));
      const seen = record(source);
      const [, event] = await seen.take(2);
      source.close();
      // §9.2.6: "the serialization of the origin of the event source's final
      // URL": scheme, host and port, after redirects. Deno's EventSource puts
      // the whole final URL there.
      assert.equal(event!.origin, native ? final.href : target.url.origin);
      assert.notEqual(event!.origin, server.url.origin);
    },
  );

  // request-status-error
  for (const status of [204, 205, 210, 299, 404, 410, 503]) {
    test(`${name} fails the connection on status ${status}, releases the body and never reconnects`, async () => {
      await using server = new TestServer();
      const source = new EventSource(server.url);
      const seen = record(source);
      const headers = { "content-type": "text/event-stream" };
      if (status === 204 || status === 205) {
        (await server.request(0)).respond(
          new Response(null, { status, headers }),
        );
        assert.deepEqual(await seen.shift(), FAILED);
      } else {
        // A body the server never ends: the client must cancel it.
        const stream = server.stream({ status, headers });
        (await server.request(0)).respond(stream.response);
        stream.send("data: x\n\n");
        assert.deepEqual(await seen.shift(), FAILED);
        // Deno's EventSource keeps the rejected body open, although it is
        // CLOSED already, until close() is called; ours releases it at once.
        if (native) source.close();
        await stream.cancelled;
      }
      assert.equal(source.readyState, 2);
      assert.equal(server.requests.length, 1);
      assert.equal(seen.all.length, 1);
    });
  }

  // --- format-mime-* -----------------------------------------------------------

  for (const type of ["text/x-bogus", "text/plain", "x/x", null]) {
    test(`${name} fails the connection on content type ${type ?? "(none)"} and releases the body`, async () => {
      await using server = new TestServer();
      const source = new EventSource(server.url);
      const failed = new Promise<Event>((resolve) => {
        source.onerror = resolve;
      });
      const stream = server.stream({
        headers: type === null ? {} : { "content-type": type },
      });
      if (type === null) stream.response.headers.delete("content-type");
      (await server.request(0)).respond(stream.response);
      stream.send("data: data\n\n");
      const event = await failed;
      assert.equal(source.readyState, 2);
      // As for a status: Deno's holds the body until close().
      if (native) source.close();
      await stream.cancelled;
      // A simple event, not a MessageEvent.
      assert.equal(Object.getPrototypeOf(event), Event.prototype);
      assert.equal("data" in event, false);
      assert.equal(event.bubbles, false);
      assert.equal(event.cancelable, false);
      assert.equal(server.requests.length, 1);
    });
  }

  for (
    const type of [
      "text/event-stream;",
      "text/event-stream; charset=utf-8",
      "Text/Event-Stream",
    ]
  ) {
    test(`${name} accepts the content type ${type}`, async () => {
      await using server = new TestServer(() =>
        new Response("data: data\n\n", { headers: { "content-type": type } })
      );
      const source = new EventSource(server.url);
      const seen = record(source);
      assert.deepEqual(withoutOrigin(await seen.take(2)), [
        OPENED,
        message("data"),
      ]);
      source.close();
    });
  }

  // --- format-field-id* ----------------------------------------------------------

  // format-field-id and format-field-id-2: the server echoes Last-Event-ID.
  test(`${name} sends the last event ID as UTF-8 and keeps it through connections that commit nothing`, async () => {
    await using server = new TestServer(({ headers }) => {
      const id = headers.get("last-event-id");
      // Deno's server reads header bytes as Latin-1: echo the raw bytes.
      return id !== null
        ? new Response(concat("data: ", latin1Bytes(id), "\n\n"), {
          headers: { "content-type": "text/event-stream" },
        })
        : eventStreamResponse("id: …\nretry: 2\ndata: hello\n\n");
    });
    const source = new EventSource(server.url);
    const seen = record(source);
    const messages = (await seen.take(8)).filter((s) => s.type === "message");
    source.close();
    assert.deepEqual(withoutOrigin(messages), [
      message("hello", "…"),
      message("…", "…"),
      message("…", "…"),
    ]);
  });

  // format-field-id-3
  for (
    const [title, body, ids] of [
      ["persists", "id: 1\ndata: 1\n\ndata:2\n\n", ["1", "1"]],
      [
        "changes and persists",
        "id: 1\ndata: 1\n\nid: 2\ndata:2\n\ndata:3\n\n",
        ["1", "2", "2"],
      ],
      ["resets", "id: 1\ndata: 1\n\nid:\ndata:2\n\ndata:3\n\n", ["1", "", ""]],
      [
        "resets without a colon",
        "id: 1\ndata: 1\n\nid\ndata:2\n\ndata:3\n\n",
        ["1", "", ""],
      ],
    ] as const
  ) {
    test(`${name} gives each message the last event ID, which ${title}`, async () => {
      await using server = new TestServer(() => eventStreamResponse(body));
      const source = new EventSource(server.url);
      const seen = record(source);
      const events = await seen.take(1 + ids.length);
      source.close();
      assert.deepEqual(
        events.slice(1).map((event) => event.lastEventId),
        ids,
      );
    });
  }

  // format-field-id-null
  for (const id of ["\0\0", "\0x", "x\0", "x\0x", " \0"]) {
    test(`${name} ignores an id containing U+0000 (${JSON.stringify(id)})`, async () => {
      await using server = new TestServer(({ headers }) => {
        const last = headers.get("last-event-id");
        return eventStreamResponse(
          last !== null
            ? `data: ${last}\n\n`
            : `id: ${id}\nretry: 2\ndata: hello\n\n`,
        );
      });
      const source = new EventSource(server.url);
      const seen = record(source);
      const messages = (await seen.take(5)).filter((s) => s.type === "message");
      source.close();
      // No ID was set, so the reconnection carries no Last-Event-ID.
      assert.deepEqual(withoutOrigin(messages), [
        message("hello"),
        message("hello"),
      ]);
    });
  }

  // --- format-field-retry* --------------------------------------------------------

  for (
    const [title, body] of [
      ["decimal even with a leading zero", "retry: 0200\ndata: x\n\n"],
      [
        "set by a valid field, not by a bogus one",
        "retry:200\nretry:100x\ndata:x\n\n",
      ],
    ] as const
  ) {
    test(`${name} waits the reconnection time of the retry field, ${title}`, async () => {
      await using server = new TestServer(() => eventStreamResponse(body));
      const source = new EventSource(server.url);
      const opens: number[] = [];
      await new Promise<void>((resolve) => {
        source.onopen = () => {
          opens.push(performance.now());
          if (opens.length === 2) resolve();
        };
      });
      source.close();
      const elapsed = opens[1]! - opens[0]!;
      // 200 ms, not 128 (octal) nor 100 (the bogus field); the upper bound
      // only guards against a much longer default.
      assert.ok(elapsed >= 195 && elapsed < 1500, `elapsed ${elapsed} ms`);
    });
  }
}

// --- our EventSource only: exact timing on a fake clock, extras ---------------

/**
 * The waits of our EventSource between the connections to `server`, through
 * 2 s of (fake) time, or 50 of them; then it is closed.
 */
async function followWaits(
  server: TestServer,
  clock: ReturnType<typeof fakeClock>,
): Promise<number[]> {
  const source = new OurEventSource(server.url);
  const errors = new Queue<number>();
  source.addEventListener("error", () => errors.push(source.readyState));
  const start = Date.now();
  const delays: number[] = [];
  while (delays.length < 50 && Date.now() - start <= 2000) {
    assert.equal(await errors.shift(), 0);
    const before = Date.now();
    await clock.nextAsync();
    delays.push(Date.now() - before);
    await server.request(delays.length);
  }
  source.close();
  return delays;
}

test("EventSource waits exactly the reconnection time (fake clock)", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer(({ index }) =>
      eventStreamResponse(
        index === 0 ? "retry: 02000\ndata: 0\n\n" : `data: ${index}\n\n`,
      )
    );
    const source = new OurEventSource(server.url);
    const seen = record(source);
    assert.deepEqual(withoutOrigin(await seen.take(3)), [
      OPENED,
      message("0"),
      RECONNECTING,
    ]);
    await clock.tickAsync(1999);
    assert.equal(server.requests.length, 1);
    await clock.tickAsync(1);
    assert.deepEqual(withoutOrigin(await seen.take(2)), [
      OPENED,
      message("1"),
    ]);
    // The server did not send retry again: 2000 ms still.
    assert.deepEqual(await seen.shift(), RECONNECTING);
    await clock.tickAsync(1999);
    assert.equal(server.requests.length, 2);
    await clock.tickAsync(1);
    await server.request(2);
    source.close();
  } finally {
    clock.uninstall();
  }
});

for (const retry of [0, 1]) {
  test(`EventSource backs off from a server that sends retry: ${retry} and then closes every stream before an event`, async () => {
    const clock = fakeClock();
    try {
      await using server = new TestServer(({ index }) =>
        eventStreamResponse(index === 0 ? `retry: ${retry}\n\n` : "")
      );
      const delays = await followWaits(server, clock);
      // The standard lets a user agent wait longer after a failed attempt:
      // a connection that delivers nothing counts as one, and the waits grow
      // from 100 ms at least.
      assertFailureBackoff(delays, server.requests.length);
    } finally {
      clock.uninstall();
    }
  });
}

test("EventSource backs off from a server whose every connection delivers one event and closes at once", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer(() =>
      eventStreamResponse("retry: 0\nid: 1\ndata: snapshot\n\n")
    );
    // Before: about 380 requests/s.
    const delays = await followWaits(server, clock);
    // Three short connections in a row reconnect after exactly the
    // reconnection time; from the fourth, the waits grow as after failures
    // (§9.2.3 "reestablish the connection" step 3: "optionally, wait some
    // more").
    assert.deepEqual(delays.slice(0, 3), [0, 0, 0]);
    assertFailureBackoff(delays.slice(3), server.requests.length - 3);
  } finally {
    clock.uninstall();
  }
});

test("EventSource reconnects after the longest wait a timer holds when the server asks for retry: 2147483648", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer(() =>
      eventStreamResponse("retry: 2147483648\ndata: x\n\n")
    );
    const source = new OurEventSource(server.url);
    const seen = record(source);
    assert.deepEqual(withoutOrigin(await seen.take(3)), [
      OPENED,
      message("x"),
      RECONNECTING,
    ]);
    // Before: no timer at all, and the source went quiet for good.
    assert.equal(clock.countTimers(), 1);
    await clock.tickAsync(2 ** 31 - 2);
    assert.equal(server.requests.length, 1);
    await clock.tickAsync(1);
    await server.request(1);
    source.close();
  } finally {
    clock.uninstall();
  }
});

test("EventSource waits 3000 ms when the stream never set a valid retry (format-field-retry-empty)", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer(() =>
      eventStreamResponse("retry\ndata: test\n\n")
    );
    const source = new OurEventSource(server.url);
    const seen = record(source);
    await seen.take(3);
    await clock.tickAsync(2999);
    assert.equal(server.requests.length, 1);
    await clock.tickAsync(1);
    await server.request(1);
    source.close();
  } finally {
    clock.uninstall();
  }
});

test("EventSource close() while waiting to reconnect clears the timer, and no request follows", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer(() =>
      eventStreamResponse("data: x\n\n")
    );
    const source = new OurEventSource(server.url);
    const seen = record(source);
    await seen.take(3);
    assert.equal(clock.countTimers(), 1);
    source.close();
    assert.equal(clock.countTimers(), 0);
    await clock.runAllAsync();
    assert.equal(server.requests.length, 1);
    assert.equal(seen.all.length, 3);
  } finally {
    clock.uninstall();
  }
});

test("EventSource close() while connecting aborts the request", async () => {
  await using server = new TestServer();
  const source = new OurEventSource(server.url);
  const seen = record(source);
  await server.request(0);
  source.close();
  assert.equal(source.readyState, 2);
  const stream = server.stream();
  server.requests[0]!.respond(stream.response);
  await stream.cancelled.catch(() => {});
  assert.deepEqual(seen.all, []);
});

test("EventSource close() on an open stream cancels the body", async () => {
  await using server = new TestServer();
  const source = new OurEventSource(server.url);
  const seen = record(source);
  const stream = server.stream();
  (await server.request(0)).respond(stream.response);
  assert.deepEqual(await seen.shift(), OPENED);
  source.close();
  await stream.cancelled;
  assert.equal(seen.all.length, 1);
});

test("EventSource cancels the body of a response it rejects", async () => {
  for (
    const [status, type] of [[503, "text/event-stream"], [200, "text/html"]]
  ) {
    await using server = new TestServer();
    const source = new OurEventSource(server.url);
    const seen = record(source);
    const stream = server.stream({
      status: status as number,
      headers: { "content-type": type as string },
    });
    (await server.request(0)).respond(stream.response);
    stream.send("data: never read\n\n");
    assert.deepEqual(await seen.shift(), FAILED);
    await stream.cancelled;
  }
});

/** What a test finds at a close point. */
interface Reached {
  /** The stream the server answered with, to be cancelled by close(). */
  stream?: EventStream;
  /** A step to run after close(). */
  after?: () => unknown;
}

// Every place our EventSource can be waiting when close() is called: each
// time, on the server, a stream that was answered is cancelled, and no
// request is made after close().
const CLOSE_POINTS: {
  name: string;
  /** Closed in the same task as the constructor: reach() is not awaited. */
  immediate?: boolean;
  init?: (
    gate: Promise<void>,
  ) => ConstructorParameters<typeof OurEventSource>[1];
  reach(
    server: TestServer,
    seen: Queue<Seen>,
  ): Reached | Promise<Reached>;
}[] = [
  {
    name: "right after the constructor",
    immediate: true,
    // A fetch that ignores its signal: a response would arrive after close().
    init: (gate) => ({
      fetch: async (input) => {
        await gate;
        return await fetch(input);
      },
    }),
    reach() {
      return {};
    },
  },
  {
    name: "while the headers function is pending",
    init: (gate) => ({ headers: () => gate.then(() => ({})) }),
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
    name: "while reading the open stream",
    async reach(server, seen) {
      const stream = server.stream();
      (await server.request(0)).respond(stream.response);
      stream.send("data: 1\n\n");
      await seen.take(2);
      return { stream };
    },
  },
  {
    name: "while waiting to reconnect",
    async reach(server, seen) {
      const stream = server.stream();
      (await server.request(0)).respond(stream.response);
      stream.send("retry: 60000\ndata: 1\n\n");
      await seen.take(2);
      stream.end();
      await seen.shift(); // error, CONNECTING
      return {};
    },
  },
];

for (const point of CLOSE_POINTS) {
  test(`EventSource closed ${point.name} leaves nothing open on the server`, async () => {
    await using server = new TestServer();
    let open!: () => void;
    const gate = new Promise<void>((resolve) => open = resolve);
    let fetches = 0;
    const init = point.init?.(gate) ?? {};
    const inner = init.fetch ?? fetch;
    const source = new OurEventSource(server.url, {
      ...init,
      fetch: (input, options) => {
        fetches++;
        return inner(input, options);
      },
    });
    const seen = record(source);
    const { stream, after } = point.immediate
      ? {}
      : await point.reach(server, seen);
    const before = fetches;
    const dispatched = seen.all.length;
    source.close();
    assert.equal(source.readyState, 2);
    open();
    await after?.();
    if (stream !== undefined) {
      await within(
        stream.cancelled,
        2000,
        "the stream cancelled on the server",
      );
    }
    // Nothing follows close() (every continuation has run by the next
    // macrotask).
    await new Promise((resolve) => setTimeout(resolve, 0));
    assert.equal(fetches, before, "a request was made after close()");
    assert.equal(seen.all.length, dispatched, "an event after close()");
  });
}

test("EventSource takes the non-standard fetch and headers options", async () => {
  await using server = new TestServer(({ index }) =>
    eventStreamResponse(`retry: 0\ndata: ${index}\n\n`)
  );
  let tokens = 0;
  const urls: string[] = [];
  const source = new OurEventSource(server.url, {
    fetch: (input, init) => {
      urls.push(String(input));
      return fetch(input, init);
    },
    headers: () => ({
      authorization: `Bearer ${++tokens}`,
      accept: "application/json", // the standard's Accept wins
    }),
  });
  const seen = record(source);
  await seen.take(5);
  source.close();
  assert.deepEqual(urls.slice(0, 2), [server.url.href, server.url.href]);
  assert.deepEqual(
    server.requests.slice(0, 2).map((exchange) => [
      exchange.headers.get("authorization"),
      exchange.headers.get("accept"),
      exchange.headers.get("cache-control"),
    ]),
    [
      ["Bearer 1", "text/event-stream", "no-cache"],
      ["Bearer 2", "text/event-stream", "no-cache"],
    ],
  );
});

test("EventSource reads a Response-shaped object from a custom fetch", async () => {
  await using server = new TestServer(() =>
    eventStreamResponse("retry: 0\ndata: hello\n\n")
  );
  const source = new OurEventSource(server.url, { fetch: foreignFetch });
  const seen = record(source);
  assert.deepEqual(withoutOrigin(await seen.take(4)), [
    OPENED,
    message("hello"),
    RECONNECTING,
    OPENED,
  ]);
  source.close();
});

test("EventSource fails the connection when a custom fetch resolves to something that is not a Response", async () => {
  for (const value of [undefined, null, "data: x\n\n", {}]) {
    let calls = 0;
    const source = new OurEventSource("http://127.0.0.1:8000/", {
      fetch: () => {
        calls++;
        return Promise.resolve(value as unknown as Response);
      },
    });
    const seen = record(source);
    // Before: undefined crashed the process from a detached promise.
    assert.deepEqual(await seen.shift(), FAILED, String(value));
    assert.equal(calls, 1);
    source.close();
  }
});

test("EventSource reestablishes the connection after a network-error response (Response.error()) from a custom fetch", async () => {
  const clock = fakeClock();
  try {
    await using server = new TestServer(() =>
      eventStreamResponse("data: ok\n\n")
    );
    let calls = 0;
    const source = new OurEventSource(server.url, {
      fetch: (input, init) =>
        ++calls === 1 ? Promise.resolve(Response.error()) : fetch(input, init),
    });
    const seen = record(source);
    // Before: a status other than 200, so the connection failed for good.
    assert.deepEqual(await seen.shift(), RECONNECTING);
    await clock.nextAsync();
    assert.deepEqual(withoutOrigin(await seen.take(2)), [
      OPENED,
      message("ok"),
    ]);
    source.close();
  } finally {
    clock.uninstall();
  }
});

test("EventSource fails the connection when its headers function throws", async () => {
  await using server = new TestServer(() => eventStreamResponse("data: x\n\n"));
  const source = new OurEventSource(server.url, {
    headers: () => {
      throw new Error("no token");
    },
  });
  const seen = record(source);
  assert.deepEqual(await seen.shift(), FAILED);
  assert.equal(server.requests.length, 0);
});

test("EventSource fails the connection on an event over 16 MiB", async () => {
  await using server = new TestServer();
  const source = new OurEventSource(server.url);
  const seen = record(source);
  const stream = server.stream();
  (await server.request(0)).respond(stream.response);
  stream.send("data: small\n\ndata: ");
  const mebibyte = new Uint8Array(1024 * 1024).fill(120);
  for (let i = 0; i < 17; i++) stream.send(mebibyte);
  assert.deepEqual(withoutOrigin(await seen.take(3)), [
    OPENED,
    message("small"),
    FAILED,
  ]);
  await stream.cancelled;
  assert.equal(server.requests.length, 1);
});

test("EventSource resolves its origin from the request URL when an injected fetch gives none", async () => {
  const source = new OurEventSource("https://example.com:8443/a/b", {
    fetch: () =>
      Promise.resolve(
        new Response("data: x\n\n", {
          headers: { "content-type": "text/event-stream" },
        }),
      ),
  });
  const event = await new Promise<MessageEvent>((resolve) => {
    source.onmessage = resolve;
  });
  source.close();
  assert.equal(event.origin, "https://example.com:8443");
});

test("EventSource sets lastEventId and origin where MessageEvent ignores them in its init, as on Cloudflare Workers", async () => {
  const Native = globalThis.MessageEvent;
  // A MessageEvent like workerd's: `data` honoured, the rest left empty.
  class WorkerdMessageEvent<T> extends Event {
    data: T | null;
    lastEventId = "";
    origin: string | null = null;
    constructor(type: string, init: MessageEventInit<T> = {}) {
      super(type);
      this.data = init.data ?? null;
    }
  }
  globalThis.MessageEvent = WorkerdMessageEvent as unknown as typeof Native;
  try {
    const source = new OurEventSource("https://example.com/events", {
      fetch: () =>
        Promise.resolve(
          new Response("id: 5\ndata: x\n\n", {
            headers: { "content-type": "text/event-stream" },
          }),
        ),
    });
    const event = await new Promise<MessageEvent>((resolve) => {
      source.onmessage = resolve;
    });
    source.close();
    assert.ok(event instanceof WorkerdMessageEvent);
    assert.equal(event.data, "x");
    assert.equal(event.lastEventId, "5");
    assert.equal(event.origin, "https://example.com");
  } finally {
    globalThis.MessageEvent = Native;
  }
});

test("EventSource fails the connection for good on a request that can never succeed", async () => {
  await using server = new TestServer(({ url }) => {
    const location = {
      "/loop": "/loop",
      "/file": "file:///etc/passwd",
      "/blocked": "http://127.0.0.1:10080/",
      "/unparsable": "http://[::1/",
    }[url.pathname];
    return location === undefined
      ? eventStreamResponse("data: x\n\n")
      : new Response(null, { status: 302, headers: { location } });
  });
  const cases: [string, ConstructorParameters<typeof OurEventSource>[1]][] = [
    [new URL("/loop", server.url).href, {}],
    [new URL("/file", server.url).href, {}],
    [new URL("/blocked", server.url).href, {}],
    [new URL("/unparsable", server.url).href, {}],
    ["http://127.0.0.1:10080/", {}],
    ["ftp://127.0.0.1/", {}],
    [server.url.href, { headers: () => ({ authorization: "a\x01b" }) }],
  ];
  for (const [url, init] of cases) {
    const source = new OurEventSource(url, init);
    const seen = record(source);
    // Retried, it would be `error` with readyState CONNECTING.
    assert.deepEqual(await seen.shift(), FAILED, url);
    assert.equal(source.readyState, 2);
  }
  // 21 requests for the loop (one attempt), 1 for each other redirect.
  assert.equal(server.requests.length, 24);
});

test("EventSource refuses a headers option that fetch can never send, at once", () => {
  assert.throws(
    () => new OurEventSource("http://127.0.0.1:8/", { headers: { x: "\x1f" } }),
    {
      name: "TypeError",
      message:
        "Invalid header x: its value contains U+001F at index 0, which fetch cannot send",
    },
  );
});

test("EventSource reconnects without a last event ID it cannot send as a header", async () => {
  await using server = new TestServer(({ index }) =>
    eventStreamResponse(
      index === 0 ? "retry: 0\nid: a\x01b\ndata: x\n\n" : `data: ${index}\n\n`,
    )
  );
  const source = new OurEventSource(server.url);
  const seen = record(source);
  assert.deepEqual(withoutOrigin(await seen.take(3)), [
    OPENED,
    message("x", "a\x01b"),
    RECONNECTING,
  ]);
  // Reconnection reaches the server, or the source fails locally again.
  const errors = new Queue<number>();
  source.addEventListener("error", () => errors.push(source.readyState));
  const first = await Promise.race([
    server.request(1).then(() => "reached the server"),
    errors.shift().then(() => "error without reaching the server"),
  ]);
  assert.equal(first, "reached the server");
  assert.deepEqual(withoutOrigin(await seen.take(2)), [
    OPENED,
    message("1", "a\x01b"),
  ]);
  source.close();
  assert.equal(server.requests[1]!.headers.get("last-event-id"), null);
});

test("EventSource reconnects without a last event ID that begins or ends with a space or tab", async () => {
  await using server = new TestServer(({ index }) =>
    eventStreamResponse(
      index === 0 ? "retry: 0\nid:  5 \ndata: x\n\n" : `data: ${index}\n\n`,
    )
  );
  const source = new OurEventSource(server.url);
  const seen = record(source);
  assert.deepEqual(withoutOrigin(await seen.take(5)), [
    OPENED,
    message("x", " 5 "),
    RECONNECTING,
    OPENED,
    message("1", " 5 "),
  ]);
  source.close();
  // Before: "5", an ID the server never sent.
  assert.equal(server.requests[1]!.headers.get("last-event-id"), null);
});

test("EventSource ignores a Last-Event-ID in its headers option: the header is the protocol's", async () => {
  for (
    const headers of [
      { "last-event-id": "stale" },
      () => ({ "Last-Event-ID": "stale" }),
    ]
  ) {
    await using server = new TestServer(({ index }) =>
      eventStreamResponse(
        index === 0
          ? "retry: 0\nid: 5\ndata: a\n\n"
          : index === 1
          ? "id\ndata: b\n\n"
          : "data: c\n\n",
      )
    );
    const source = new OurEventSource(server.url, { headers });
    const seen = record(source);
    // open, a, error, open, b, error, open, c
    await seen.take(8);
    source.close();
    assert.deepEqual(
      server.requests.slice(0, 3).map((exchange) =>
        exchange.headers.get("last-event-id")
      ),
      [null, "5", null],
    );
  }
});

test("EventSource rejects a fetch option that is not a function", () => {
  assert.throws(
    () =>
      new OurEventSource("http://127.0.0.1:9/", {
        fetch: "nope" as unknown as typeof fetch,
      }),
    {
      name: "TypeError",
      message: "Invalid fetch: expected a function, got string",
    },
  );
});
