// Copyright the sse authors. MIT license.
// SSEChannel for real apps, as a notifications server uses it: topics decided
// from the authenticated context, presence, disconnecting a client (logout,
// ban), resuming from a query parameter (a browser's EventSource cannot set
// headers), and metrics. Each scenario runs over a real Deno.serve with real
// clients: fetch and SSEParserStream, the library's SSEClient, and Deno's
// built-in EventSource.
import assert from "node:assert/strict";
import { SSEChannel } from "../server.ts";
import { Client, Counter, serve, test } from "./_channel.ts";

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

test("SSEChannel answers 503 at once to a connection whose topics hook is still pending when the channel closes", async () => {
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
  assert.equal((await answer).status, 503);
  assert.equal(channel.size, 0);
});
