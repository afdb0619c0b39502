// Copyright the sse authors. MIT license.
// SSEChannel for real apps, as a notifications server uses it: topics decided
// from the authenticated context, presence, disconnecting a client (logout,
// ban), resuming from a query parameter (a browser's EventSource cannot set
// headers), and metrics. Each scenario runs over a real Deno.serve with real
// clients: fetch and SSEParserStream, the library's SSEClient, and Deno's
// built-in EventSource.
import assert from "node:assert/strict";
import { SSEChannel, type SSEChannelClient } from "../server.ts";
import { SSEClient, SSEError } from "../client.ts";
import type { SSEEvent } from "../parser.ts";
import {
  assertEndedStream,
  Client,
  Counter,
  serve,
  test,
  until,
  WAIT_MS,
  within,
} from "./_channel.ts";

interface User {
  name: string;
}

const USERS = new Map<string, User>([
  ["token-ada", { name: "ada" }],
  ["token-bo", { name: "bo" }],
]);

/** onConnect of the tests: the user of the `token` query parameter, or 401. */
function authenticate(request: Request): User | Response {
  const token = new URL(request.url).searchParams.get("token") ?? "";
  return USERS.get(token) ?? new Response("Unauthorized", { status: 401 });
}

test("SSEChannel takes each client's topics from its context, so that per-user topics authenticate once", async () => {
  const authentications = new Counter();
  const channel = new SSEChannel<User>({
    onConnect(request) {
      authentications.hit();
      return authenticate(request);
    },
    // Async, as a lookup of the user's subscriptions would be.
    topics: async (user, request) => {
      await Promise.resolve();
      assert.ok(request instanceof Request);
      return [`user:${user.name}`, "news"];
    },
  });
  const server = serve((request) => channel.connect(request));
  const ada = await Client.open(`${server.url}/?token=token-ada`);
  const bo = await Client.open(`${server.url}/?token=token-bo`);
  try {
    await channel.publish({ data: "for ada" }, { topic: "user:ada" });
    await channel.publish({ data: "for bo" }, { topic: "user:bo" });
    await channel.publish({ data: "for all" }, { topic: "news" });
    await channel.publish({ data: "untopical" });
    await channel.publish({ data: "end" }, { topic: "news" });
    assert.deepEqual((await ada.take(3)).map((e) => e.data), [
      "for ada",
      "for all",
      "end",
    ]);
    assert.deepEqual((await bo.take(3)).map((e) => e.data), [
      "for bo",
      "for all",
      "end",
    ]);
    assert.equal(authentications.count, 2, "one onConnect per connection");
    assert.equal(ada.events.length, 3);
  } finally {
    await Promise.all([ada.close(), bo.close()]);
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel lets connect's topics win over the topics hook, which is then not called, and reads undefined from the hook as every topic", async () => {
  const asked: string[] = [];
  const channel = new SSEChannel<User>({
    onConnect: authenticate,
    topics(user) {
      asked.push(user.name);
      return user.name === "bo" ? undefined : [`user:${user.name}`];
    },
  });
  const server = serve((request) => {
    const given = new URL(request.url).searchParams.getAll("topic");
    return channel.connect(request, given.length > 0 ? { topics: given } : {});
  });
  // ada asks for "b" herself: connect's topics win.
  const given = await Client.open(`${server.url}/?token=token-ada&topic=b`);
  const hooked = await Client.open(`${server.url}/?token=token-ada`);
  const every = await Client.open(`${server.url}/?token=token-bo`);
  try {
    await channel.publish({ data: "to ada" }, { topic: "user:ada" });
    await channel.publish({ data: "to b" }, { topic: "b" });
    assert.deepEqual((await given.take(1)).map((e) => e.data), ["to b"]);
    assert.deepEqual((await hooked.take(1)).map((e) => e.data), ["to ada"]);
    assert.deepEqual((await every.take(2)).map((e) => e.data), [
      "to ada",
      "to b",
    ]);
    assert.deepEqual(asked, ["ada", "bo"], "the hook ran for two of three");
    assert.equal(given.events.length, 1);
  } finally {
    await Promise.all([given.close(), hooked.close(), every.close()]);
    await channel.close();
    await server.shutdown();
  }
});

test("SSEChannel rejects connect with a clear error when the topics hook returns no array of strings or throws, holding nothing", async () => {
  const disconnects: string[] = [];
  let answer: unknown;
  const channel = new SSEChannel<User>({
    onConnect: authenticate,
    topics: () => {
      if (answer instanceof Error) throw answer;
      return answer as string[];
    },
    onDisconnect: (_user, { reason }) => disconnects.push(reason),
  });
  const request = () => new Request("http://localhost/?token=token-ada");
  try {
    const cases: [unknown, RegExp][] = [
      [
        "news",
        /^TypeError: Invalid topics: the topics hook returned string, expected an array of strings or undefined$/,
      ],
      [
        ["news", 7],
        /^TypeError: Invalid topics: the topics hook returned an array holding number, expected strings only$/,
      ],
      [null, /^TypeError: Invalid topics: the topics hook returned null/],
      [new Error("no such user"), /^Error: no such user$/],
    ];
    for (const [value, expected] of cases) {
      answer = value;
      await assert.rejects(channel.connect(request()), (error: Error) => {
        assert.match(`${error.name}: ${error.message}`, expected);
        return true;
      });
    }
    assert.equal(channel.size, 0);
    assert.deepEqual(disconnects, [], "no client was created");
    // A HEAD answers as GET would, without asking for topics.
    const head = await channel.connect(
      new Request("http://localhost/?token=token-ada", { method: "HEAD" }),
    );
    assert.equal(head.status, 200);
    // connect's own topics are checked as before.
    await assert.rejects(
      channel.connect(request(), { topics: "news" as unknown as string[] }),
      /^TypeError: Invalid topics: expected an array of strings, got string$/,
    );
    assert.throws(
      () => new SSEChannel({ topics: ["news"] as unknown as () => string[] }),
      /^TypeError: Invalid topics: expected a function, got array$/,
    );
  } finally {
    await channel.close();
  }
});

test("SSEChannel ends at once the stream of a connection whose topics hook is still pending when the channel closes", async () => {
  const asked = new Counter();
  const channel = new SSEChannel({
    topics: () => {
      asked.hit();
      return new Promise<string[]>(() => {});
    },
  });
  const answer = channel.connect(new Request("http://localhost/"));
  await asked.reach(1, "the topics hook");
  await channel.close();
  // Before: 503, on which a browser's EventSource stops for good.
  assert.equal(await assertEndedStream(await answer, "the answer"), "");
  assert.equal(channel.size, 0);
});

/** A channel of users (onConnect: `authenticate`) on a real server. */
function serveUsers(
  options: ConstructorParameters<typeof SSEChannel<User>>[0] = {},
): { channel: SSEChannel<User>; url: string; shutdown(): Promise<void> } {
  const channel = new SSEChannel<User>({ onConnect: authenticate, ...options });
  const server = serve((request) => {
    const topics = new URL(request.url).searchParams.getAll("topic");
    return channel.connect(request, topics.length > 0 ? { topics } : {});
  });
  return {
    channel,
    url: server.url,
    async shutdown() {
      await channel.close();
      await server.shutdown();
    },
  };
}

test("SSEChannel lists who is connected, with their contexts, topics and connection time, and counts per topic as clients come and go", async () => {
  const left = new Counter();
  const { channel, url, shutdown } = serveUsers({ onDisconnect: left.hit });
  const before = Date.now();
  const ada = await Client.open(`${url}/?token=token-ada&topic=news&topic=a`);
  const bo = await Client.open(`${url}/?token=token-bo&topic=news`);
  const everything = await Client.open(`${url}/?token=token-bo`);
  const after = Date.now();
  try {
    const listed = channel.clients();
    assert.deepEqual(
      listed.map((client) => [client.context.name, client.topics]),
      [["ada", ["news", "a"]], ["bo", ["news"]], ["bo", null]],
    );
    for (const client of listed) {
      assert.ok(
        client.connectedAt >= before && client.connectedAt <= after,
        `connectedAt ${client.connectedAt} in [${before}, ${after}]`,
      );
    }
    assert.deepEqual(
      channel.clients("news").map((client) => client.context.name),
      ["ada", "bo"],
    );
    assert.deepEqual(channel.clients("nobody's"), []);
    assert.deepEqual(
      [channel.count("news"), channel.count("a"), channel.count("b")],
      [2, 1, 0],
    );
    // The same object for the whole connection: a WeakMap key.
    assert.equal(channel.clients()[0], listed[0]);

    await ada.close();
    await left.reach(1, "ada's disconnect");
    assert.deepEqual(
      channel.clients().map((client) => client.context.name),
      ["bo", "bo"],
    );
    assert.deepEqual([channel.count("news"), channel.count("a")], [1, 0]);
    assert.equal(channel.size, 2);
  } finally {
    await Promise.all([ada.close(), bo.close(), everything.close()]);
    await shutdown();
  }
});

test("SSEChannel hands out presence that its callers cannot change", async () => {
  const { channel, url, shutdown } = serveUsers();
  const ada = await Client.open(`${url}/?token=token-ada&topic=news`);
  try {
    const listed = channel.clients();
    const [client] = listed as [SSEChannelClient<User>];
    assert.ok(Object.isFrozen(client));
    assert.ok(Object.isFrozen(client.topics));
    assert.throws(() => {
      (client as { topics: string[] | null }).topics = null;
    }, TypeError);
    assert.throws(() => (client.topics as string[]).push("secret"), TypeError);
    listed.length = 0;
    assert.equal(channel.clients().length, 1, "a fresh array on each call");
    // Still subscribed to news only.
    await channel.publish({ data: "secret" }, { topic: "secret" });
    await channel.publish({ data: "news" }, { topic: "news" });
    assert.deepEqual((await ada.take(1)).map((e) => e.data), ["news"]);
    assert.throws(
      () => channel.clients(7 as unknown as string),
      /^TypeError: Invalid topic: expected a string, got number$/,
    );
    assert.throws(
      () => channel.count(undefined as unknown as string),
      /^TypeError: Invalid topic: expected a string, got undefined$/,
    );
  } finally {
    await ada.close();
    await shutdown();
  }
});

/** A gate that hooks wait at until it is opened, counting who arrived. */
function gate(): { arrived: Counter; open(): void; pass(): Promise<void> } {
  const arrived = new Counter();
  let open!: () => void;
  const opened = new Promise<void>((resolve) => open = resolve);
  return {
    arrived,
    open,
    async pass() {
      arrived.hit();
      await opened;
    },
  };
}

test("SSEChannel lists a client that is still in init, and forgets one whose connect failed", async () => {
  const init = gate();
  const { channel, url, shutdown } = serveUsers({
    async init(user) {
      if (user.name === "bo") throw new Error("no snapshot for bo");
      await init.pass();
    },
    onError() {},
  });
  const opening = Client.open(`${url}/?token=token-ada&topic=news`);
  try {
    await init.arrived.reach(1, "ada's init");
    assert.deepEqual(channel.clients().map((c) => c.context.name), ["ada"]);
    assert.equal(channel.count("news"), 1);
    const failed = await fetch(`${url}/?token=token-bo&topic=news`);
    assert.equal(failed.status, 500);
    await failed.body?.cancel();
    assert.deepEqual(channel.clients().map((c) => c.context.name), ["ada"]);
    assert.equal(channel.count("news"), 1);
  } finally {
    init.open();
    await (await opening).close();
    await shutdown();
  }
});

test("SSEChannel.disconnect ends the matching streams at once after what they were sent and a final message, tells onDisconnect why, and keeps everyone else", async () => {
  const reasons: [string, string][] = [];
  const { channel, url, shutdown } = serveUsers({
    keepAlive: 0,
    onDisconnect: (user, { reason }) => reasons.push([user.name, reason]),
  });
  const ada1 = await Client.open(`${url}/?token=token-ada`);
  const ada2 = await Client.open(`${url}/?token=token-ada&topic=news`);
  const bo = await Client.open(`${url}/?token=token-bo`);
  try {
    const id = await channel.publish({ data: "before" }, { topic: "news" });
    const ended = channel.disconnect(
      (client) => client.context.name === "ada",
      { message: { event: "signed-out", data: "bye", retry: 60_000 } },
    );
    assert.equal(ended, 2);
    assert.equal(channel.size, 1);
    assert.deepEqual(reasons, [["ada", "disconnected"], [
      "ada",
      "disconnected",
    ]]);
    for (const ada of [ada1, ada2]) {
      await ada.closed();
      assert.deepEqual(
        ada.events.map((e) => [e.type, e.data, e.id]),
        [["message", "before", id], ["signed-out", "bye", id]],
        "the final message keeps the client's last event id",
      );
      // (The parser reports a retry as it reads it, before the events of
      // the same chunk are taken: only its presence is certain.)
      assert.deepEqual(
        ada.log.filter((item) => item.kind === "retry"),
        [{ kind: "retry", ms: 60_000 }],
      );
    }
    await channel.publish({ data: "after" }, { topic: "news" });
    assert.deepEqual((await bo.take(2)).map((e) => e.data), [
      "before",
      "after",
    ]);
    assert.equal(channel.disconnect(() => false), 0);
  } finally {
    await Promise.all([ada1.close(), ada2.close(), bo.close()]);
    await shutdown();
  }
});

test("SSEChannel.disconnect refuses a bad predicate or message before ending anyone", async () => {
  const { channel, url, shutdown } = serveUsers();
  const ada = await Client.open(`${url}/?token=token-ada`);
  try {
    const cases: [() => number, RegExp][] = [
      [
        () => channel.disconnect("ada" as unknown as () => boolean),
        /^TypeError: Invalid predicate: expected a function, got string$/,
      ],
      [
        () =>
          channel.disconnect(
            (() => Promise.resolve(true)) as unknown as () => boolean,
          ),
        /^TypeError: Invalid predicate result: expected a boolean, got Promise \(the predicate must be synchronous\): nobody was disconnected$/,
      ],
      [
        () =>
          channel.disconnect(() => {
            throw new Error("lookup failed");
          }),
        /^Error: lookup failed$/,
      ],
      [
        () => channel.disconnect(() => true, { message: { id: "1" } }),
        /^TypeError: Invalid message: a disconnect message carries no id/,
      ],
      [
        () => channel.disconnect(() => true, { message: { event: "a\nb" } }),
        /^TypeError: /,
      ],
      [
        () =>
          channel.disconnect(() => true, {
            message: "bye" as unknown as { data: string },
          }),
        /^TypeError: Invalid message: expected an SSE message object, got string$/,
      ],
    ];
    for (const [call, expected] of cases) {
      assert.throws(call, (error: Error) => {
        assert.match(`${error.name}: ${error.message}`, expected);
        return true;
      });
    }
    assert.equal(channel.size, 1);
    await channel.publish({ data: "still here" });
    assert.deepEqual((await ada.take(1)).map((e) => e.data), ["still here"]);
  } finally {
    await ada.close();
    await shutdown();
  }
});

test("SSEChannel.disconnect answers a client still in init with its stream, holding the final message and ended", async () => {
  const init = gate();
  const reasons: string[] = [];
  const { channel, url, shutdown } = serveUsers({
    retry: 5000,
    async init() {
      await init.pass();
      return [{ event: "snapshot", data: "never sent" }];
    },
    onDisconnect: (_user, { reason }) => reasons.push(reason),
  });
  try {
    const opening = Client.open(`${url}/?token=token-ada`);
    await init.arrived.reach(1, "init");
    assert.equal(
      channel.disconnect(() => true, {
        message: { event: "banned", data: "" },
      }),
      1,
    );
    init.open();
    const ada = await opening;
    await ada.closed();
    assert.deepEqual(ada.log, [
      { kind: "retry", ms: 5000 },
      { kind: "event", event: { type: "banned", data: "", id: "" } },
    ]);
    assert.deepEqual(reasons, ["disconnected"]);
    assert.equal(channel.size, 0);
  } finally {
    init.open();
    await shutdown();
  }
});

/** Sessions that `disconnect` revokes: onConnect refuses them with `refusal`. */
function serveSessions(refusal: 204 | 401) {
  const sessions = new Map([["s-ada", "ada"], ["s-bo", "bo"]]);
  const refused = new Counter();
  const channel = new SSEChannel<{ session: string; name: string }>({
    retry: 20,
    onConnect(request) {
      const session = new URL(request.url).searchParams.get("session") ?? "";
      const name = sessions.get(session);
      if (name !== undefined) return { session, name };
      refused.hit();
      return new Response(null, { status: refusal });
    },
  });
  const server = serve((request) => channel.connect(request));
  return {
    channel,
    url: server.url,
    refused,
    /** Revokes the session, then ends its streams with a final event. */
    signOut(session: string): number {
      sessions.delete(session);
      return channel.disconnect(
        (client) => client.context.session === session,
        { message: { event: "signed-out", data: session } },
      );
    },
    async shutdown() {
      await channel.close();
      await server.shutdown();
    },
  };
}

test("An SSEClient signed out by disconnect gets the final event, reconnects once, and stops for good on 204 or throws on 401", async () => {
  for (const refusal of [204, 401] as const) {
    const { channel, url, refused, signOut, shutdown } = serveSessions(
      refusal,
    );
    const opened = new Counter();
    const options = { retry: 10, onOpen: opened.hit };
    const ada = new SSEClient(`${url}/?session=s-ada`, options);
    const bo = new SSEClient(`${url}/?session=s-bo`, options);
    try {
      const reading = (async () => {
        const events: SSEEvent[] = [];
        try {
          for await (const event of ada) {
            events.push(event);
            if (event.data === "first") signOut("s-ada");
          }
          return { events, error: undefined };
        } catch (error) {
          return { events, error };
        }
      })();
      const boEvents = bo[Symbol.asyncIterator]();
      const boFirst = boEvents.next();
      await opened.reach(2, "both streams open");
      await channel.publish({ data: "first" });
      const { events, error } = await within(reading, WAIT_MS, "ada's end");
      assert.deepEqual(
        events.map((event) => [event.type, event.data]),
        [["message", "first"], ["signed-out", "s-ada"]],
      );
      assert.equal(refused.count, 1, "one reconnection, refused");
      if (refusal === 204) {
        assert.equal(error, undefined, "204 ends the iteration quietly");
      } else {
        assert.ok(error instanceof SSEError);
        assert.equal(error.status, 401);
      }
      assert.equal(ada.readyState, 2);
      // bo is still connected and reading.
      assert.equal((await boFirst).value?.data, "first");
      assert.deepEqual(
        channel.clients().map((client) => client.context.name),
        ["bo"],
      );
    } finally {
      ada.close();
      bo.close();
      await shutdown();
    }
  }
});

test("Deno's EventSource signed out by disconnect gets the final event, reconnects once, and closes for good on 204 or 401", async () => {
  for (const refusal of [204, 401] as const) {
    const { channel, url, refused, signOut, shutdown } = serveSessions(
      refusal,
    );
    const source = new EventSource(`${url}/?session=s-ada`);
    try {
      const seen: string[] = [];
      const opened = new Counter();
      const closed = new Promise<void>((resolve) => {
        source.onopen = () => {
          seen.push("open");
          opened.hit();
        };
        source.onmessage = (event) => {
          seen.push(`message ${event.data}`);
          signOut("s-ada");
        };
        source.addEventListener("signed-out", (event) => {
          seen.push(`signed-out ${(event as MessageEvent).data}`);
        });
        source.onerror = () => {
          seen.push(`error ${source.readyState}`);
          if (source.readyState === EventSource.CLOSED) resolve();
        };
      });
      await opened.reach(1, "the stream to open");
      await channel.publish({ data: "first" });
      await within(closed, WAIT_MS, "the EventSource to close");
      assert.deepEqual(seen, [
        "open",
        "message first",
        "signed-out s-ada",
        "error 0", // the stream ended: it reconnects, as any EventSource does
        "error 2", // the reconnection was refused: closed for good
      ]);
      assert.equal(refused.count, 1);
      assert.equal(channel.size, 0);
    } finally {
      source.close();
      await shutdown();
    }
  }
});

/**
 * A channel whose init records what it was told, with `count` messages
 * published, on a real server.
 */
async function serveResumable(
  count: number,
  options: { lastEventIdParam?: string | null } = {},
) {
  const inits: [string, boolean][] = [];
  const channel = new SSEChannel({
    ...options,
    init(_context, lastEventId, { resumed }) {
      inits.push([lastEventId, resumed]);
      return resumed ? [] : [{ event: "snapshot", data: "" }];
    },
  });
  const server = serve((request) => channel.connect(request));
  const ids: string[] = [];
  for (let i = 0; i < count; i++) {
    ids.push(await channel.publish({ data: String(i) }));
  }
  return {
    channel,
    url: server.url,
    ids,
    inits,
    /** What a client that opens `path` (with `headers`) reads first. */
    async first(
      path: string,
      headers: Record<string, string> = {},
      events = 1,
    ): Promise<string[]> {
      const client = await Client.open(`${server.url}${path}`, headers);
      try {
        return (await client.take(events)).map((e) => `${e.type} ${e.data}`);
      } finally {
        await client.close();
      }
    },
    async shutdown() {
      await channel.close();
      await server.shutdown();
    },
  };
}

test("SSEChannel resumes from the lastEventID query parameter when no Last-Event-ID header is sent, with exactly what was missed", async () => {
  const { channel, url, ids, inits, shutdown } = await serveResumable(5);
  // What a page reload does: a new EventSource, whose URL carries the id.
  const back = await Client.open(
    `${url}/?lastEventID=${encodeURIComponent(ids[2]!)}`,
  );
  try {
    const live = await channel.publish({ data: "live" });
    assert.deepEqual(await back.take(3), [
      { type: "message", data: "3", id: ids[3] },
      { type: "message", data: "4", id: ids[4] },
      { type: "message", data: "live", id: live },
    ]);
    assert.deepEqual(inits, [[ids[2], true]]);
  } finally {
    await back.close();
    await shutdown();
  }
});

test("SSEChannel prefers the Last-Event-ID header to the query parameter, as an EventSource reconnecting from a resumed URL sends both", async () => {
  const { ids, inits, first, shutdown } = await serveResumable(5);
  try {
    // The URL still names where the page started; the header is newer.
    assert.deepEqual(
      await first(`/?lastEventID=${ids[0]}`, { "last-event-id": ids[3]! }),
      ["message 4"],
    );
    // An empty header is no header.
    assert.deepEqual(
      await first(`/?lastEventID=${ids[2]}`, { "last-event-id": "" }),
      ["message 3"],
    );
    assert.deepEqual(inits, [[ids[3], true], [ids[2], true]]);
  } finally {
    await shutdown();
  }
});

test("SSEChannel checks a query-parameter id as it checks the header: a foreign, malformed or empty one gets init's snapshot", async () => {
  const { ids, inits, first, shutdown } = await serveResumable(3);
  const other = new SSEChannel({ name: "other" });
  try {
    const foreign = await other.publish({ data: "elsewhere" });
    const cases = [
      `/?lastEventID=${encodeURIComponent(foreign)}`,
      `/?lastEventID=${encodeURIComponent(ids[2]! + "\n")}`,
      `/?lastEventID=not-an-id`,
      `/?lastEventID=`,
      `/?other=1`,
    ];
    for (const path of cases) {
      assert.deepEqual(await first(path), ["snapshot "], path);
    }
    assert.deepEqual(inits, [
      [foreign, false],
      [ids[2] + "\n", false],
      ["not-an-id", false],
      ["", false],
      ["", false],
    ]);
  } finally {
    await other.close();
    await shutdown();
  }
});

test("SSEChannel reads the resume id from the query parameter its lastEventIdParam names, and from none with null", async () => {
  const named = await serveResumable(3, { lastEventIdParam: "since" });
  const off = await serveResumable(3, { lastEventIdParam: null });
  try {
    assert.deepEqual(await named.first(`/?since=${named.ids[1]}`), [
      "message 2",
    ]);
    assert.deepEqual(await named.first(`/?lastEventID=${named.ids[1]}`), [
      "snapshot ",
    ]);
    assert.deepEqual(await off.first(`/?lastEventID=${off.ids[1]}`), [
      "snapshot ",
    ]);
    assert.deepEqual(off.inits, [["", false]]);
    // The header still resumes.
    assert.deepEqual(
      await off.first("/", { "last-event-id": off.ids[1]! }),
      ["message 2"],
    );
    for (const value of ["", 7]) {
      assert.throws(
        () => new SSEChannel({ lastEventIdParam: value as unknown as string }),
        /^TypeError: Invalid lastEventIdParam: expected a non-empty string or null, got /,
      );
    }
  } finally {
    await named.shutdown();
    await off.shutdown();
  }
});

/** Reads a response's body as text until `done(text)` holds. */
async function readUntil(
  response: Response,
  done: (text: string) => boolean,
): Promise<{ text: string; cancel(): Promise<void> }> {
  const reader = response.body!.pipeThrough(new TextDecoderStream())
    .getReader();
  let text = "";
  await within(
    (async () => {
      while (!done(text)) {
        const { value, done: ended } = await reader.read();
        if (ended) throw new Error(`The stream ended: ${text}`);
        text += value;
      }
    })(),
    WAIT_MS,
    "the events",
  );
  return { text, cancel: () => reader.cancel() };
}

/** Counts as `metrics().topics` gives them: an object without a prototype. */
function counts(entries: Record<string, number>): Record<string, number> {
  return Object.assign(Object.create(null), entries);
}

test("SSEChannel's metrics().topics holds nothing but topics: constructor, toString and __proto__ are topics like any other", async () => {
  const { channel, url, shutdown } = serveUsers({ keepAlive: 0 });
  try {
    // Before: metrics().topics.constructor was Object, a function, for a
    // topic nobody asked for.
    assert.equal(channel.metrics().topics.constructor, undefined);
    assert.equal(channel.metrics().topics.toString, undefined);
    const response = await fetch(
      `${url}/?token=token-ada&topic=__proto__&topic=constructor`,
    );
    await until(() => channel.size === 1, "the client");
    const { topics } = channel.metrics();
    // (A computed key: `"__proto__": 1` in a literal sets the prototype.)
    assert.deepEqual(topics, counts({ ["__proto__"]: 1, constructor: 1 }));
    assert.deepEqual(Object.keys(topics), ["__proto__", "constructor"]);
    assert.equal(topics.toString, undefined);
    await response.body?.cancel();
  } finally {
    await shutdown();
  }
});

test("SSEChannel counts in metrics() its clients, per-topic counts, messages published, received and delivered, bytes sent, resumes and disconnects by reason", async () => {
  const left = new Counter();
  const { channel, url, shutdown } = serveUsers({
    keepAlive: 0,
    retry: 1000,
    init: (_user, _id, { resumed }) =>
      resumed ? [] : [{ event: "hello", data: "" }],
    onDisconnect: left.hit,
  });
  const zero = channel.metrics();
  assert.deepEqual(zero, {
    clients: 0,
    everyTopic: 0,
    topics: counts({}),
    connections: 0,
    published: 0,
    received: 0,
    delivered: 0,
    bytesSent: 0,
    resumed: 0,
    resumeFallbacks: 0,
    fellBehind: 0,
    disconnects: {
      "client-closed": 0,
      slow: 0,
      disconnected: 0,
      "channel-closed": 0,
      "filter-error": 0,
      "replay-lost": 0,
      "broker-error": 0,
      "connect-failed": 0,
    },
  });
  const news = await fetch(`${url}/?token=token-ada&topic=news&topic=a`);
  const every = await fetch(`${url}/?token=token-bo`);
  const ids = [
    await channel.publish({ data: "n1" }, { topic: "news" }),
    await channel.publish({ data: "x" }, { topic: "other" }),
    await channel.publish({ data: "n2" }, { topic: "news" }),
  ];
  // Everything each client was sent, read to its last byte.
  const newsRead = await readUntil(news, (text) => text.includes("n2\n\n"));
  const everyRead = await readUntil(every, (text) => text.includes("n2\n\n"));
  let m = channel.metrics();
  assert.equal(m.clients, 2);
  assert.equal(m.everyTopic, 1);
  assert.deepEqual(m.topics, counts({ news: 1, a: 1 }));
  assert.equal(m.connections, 2);
  assert.equal(m.published, 3);
  assert.equal(m.received, 3);
  assert.equal(m.delivered, 2 + 3);
  const bytes = (text: string) => new TextEncoder().encode(text).byteLength;
  assert.equal(m.bytesSent, bytes(newsRead.text) + bytes(everyRead.text));

  // A snapshot is the caller's: changing it changes nothing.
  m.topics.news = 99;
  m.disconnects.slow = 99;
  assert.equal(channel.metrics().topics.news, 1);
  assert.equal(channel.metrics().disconnects.slow, 0);

  // Two resumes, one served from history, one that falls back to init.
  const resumed = await fetch(`${url}/?token=token-bo`, {
    headers: { "last-event-id": ids[0]! },
  });
  const resumedRead = await readUntil(resumed, (text) => text.includes("n2"));
  const fallback = await fetch(`${url}/?token=token-bo&lastEventID=nope`);
  const fallbackRead = await readUntil(fallback, (t) => t.includes("hello"));
  m = channel.metrics();
  assert.equal(m.resumed, 1);
  assert.equal(m.resumeFallbacks, 1);
  assert.equal(m.delivered, 5 + 2, "two replayed to the resumed client");

  await newsRead.cancel();
  await left.reach(1, "the news client's disconnect");
  assert.equal(channel.disconnect((c) => c.topics === null), 3);
  await everyRead.cancel();
  await resumedRead.cancel();
  await fallbackRead.cancel();
  m = channel.metrics();
  assert.equal(m.clients, 0);
  assert.deepEqual(m.topics, counts({}));
  assert.equal(m.everyTopic, 0);
  assert.equal(m.disconnects["client-closed"], 1);
  assert.equal(m.disconnects.disconnected, 3);
  assert.equal(
    m.connections,
    m.clients + Object.values(m.disconnects).reduce((a, b) => a + b),
  );
  await shutdown();
  assert.equal(channel.metrics().disconnects["channel-closed"], 0);
});

test("SSEChannel.disconnect counts only the clients it ended when onDisconnect closes the channel", async () => {
  const reasons: string[] = [];
  const { channel, url, shutdown } = serveUsers({
    onDisconnect(_user, { reason }) {
      reasons.push(reason);
      // The first one ended closes everything (an admin's "sign out all").
      if (reasons.length === 1) channel.close();
    },
  });
  try {
    const clients = await Promise.all(
      ["token-ada", "token-bo", "token-ada"].map((token) =>
        Client.open(`${url}/?token=${token}`)
      ),
    );
    // Before: 3, of which 2 had ended as "channel-closed".
    assert.equal(channel.disconnect(() => true), 1);
    assert.deepEqual(reasons, [
      "disconnected",
      "channel-closed",
      "channel-closed",
    ]);
    await Promise.all(clients.map((client) => client.closed()));
  } finally {
    await shutdown();
  }
});
