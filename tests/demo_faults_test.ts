// Copyright the sse authors. MIT license.
// The demo app against hostile clients: its handler served by a real
// Deno.serve on 127.0.0.1, on a Deno KV file as `deno task demo` keeps it
// (DenoKvBroker and kvStore), driven over real sockets.

import assert from "node:assert/strict";
import { DenoKvBroker } from "../kv.ts";
import { MemoryBroker } from "../server.ts";
import { createDemo } from "../demo/app.ts";
import { type DemoStore, kvStore, memoryStore } from "../demo/store.ts";
import { until } from "./_channel.ts";

const SANITIZED = { sanitizeOps: true, sanitizeResources: true } as const;

/**
 * Runs `body` against the demo on a KV file in a temporary directory, with
 * the errors its handler threw to Deno.serve (each one a 500 and a stack
 * trace on stderr, as `deno task demo` prints them).
 */
async function withKvDemo(
  body: (url: string, thrown: unknown[]) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir();
  const kv = await Deno.openKv(`${dir}/demo.sqlite3`);
  const broker = new DenoKvBroker({ kv });
  const demo = await createDemo({ broker, store: kvStore(kv) });
  const thrown: unknown[] = [];
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onListen() {},
    onError(error) {
      thrown.push(error);
      return new Response("Internal Server Error", { status: 500 });
    },
  }, demo.handler);
  try {
    await body(`http://127.0.0.1:${server.addr.port}/`, thrown);
  } finally {
    await demo.close();
    await server.shutdown();
    await broker.close();
    kv.close();
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test(
  "The demo answers a session cookie it never issued as no session, whatever its size",
  SANITIZED,
  async () => {
    await withKvDemo(async (url, thrown) => {
      // Deno KV refuses keys above 2 KiB: a cookie this long reached
      // kv.get and each request threw (500, a stack trace on stderr).
      for (const forged of ["x".repeat(3000), "é".repeat(1500), "forged"]) {
        const cookie = `sse-demo-session=${encodeURIComponent(forged)}`;
        const events = await fetch(`${url}events?room=lobby`, {
          headers: { cookie },
        });
        assert.equal(events.status, 401);
        assert.deepEqual(await events.json(), { error: "Not signed in" });
        const session = await fetch(`${url}api/session`, {
          headers: { cookie },
        });
        assert.equal(session.status, 200);
        assert.deepEqual(await session.json(), { user: null });
        const signOut = await fetch(`${url}api/signout`, {
          method: "POST",
          headers: { cookie },
        });
        assert.equal(signOut.status, 200);
        assert.deepEqual(await signOut.json(), { disconnected: 0 });
        const chat = await fetch(`${url}api/chat`, {
          method: "POST",
          headers: { cookie, "content-type": "application/json" },
          body: JSON.stringify({ room: "lobby", user: "bo", text: "hi" }),
        });
        assert.equal(chat.status, 201);
        await chat.body?.cancel();
      }
      assert.deepEqual(thrown.map(String), []);
    });
  },
);

/**
 * A request body of `total` bytes of JSON (a string that never ends),
 * streamed in 64 KiB chunks, counting what the server has pulled.
 */
function endlessJson(total: number): {
  body: ReadableStream<Uint8Array>;
  sent: () => number;
} {
  const chunk = new Uint8Array(64 * 1024).fill(0x61); // "a"
  let sent = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (sent === 0) {
        controller.enqueue(new TextEncoder().encode('{"prompt":"'));
      }
      if (sent >= total) return controller.close();
      sent += chunk.byteLength;
      controller.enqueue(chunk);
    },
  }, { highWaterMark: 0 });
  return { body, sent: () => sent };
}

Deno.test(
  "The demo refuses a JSON body above 64 KiB with 413 without reading it all",
  SANITIZED,
  async () => {
    await withKvDemo(async (url, thrown) => {
      const total = 256 * 1024 * 1024;
      for (const path of ["api/signin", "api/chat", "api/complete"]) {
        // Declared: refused from its Content-Length.
        const declared = await fetch(`${url}${path}`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ prompt: "a".repeat(100 * 1024) }),
        });
        assert.equal(declared.status, 413, path);
        assert.match((await declared.json()).error, /Invalid body: .*65536/);
        // Streamed with no length: read up to the limit, then refused.
        const { body, sent } = endlessJson(total);
        const streamed = await fetch(`${url}${path}`, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body,
        }).catch((error: unknown) => error);
        if (streamed instanceof Response) {
          assert.equal(streamed.status, 413, path);
          await streamed.body?.cancel();
        }
        // Before, the demo read all 256 MiB into memory; socket buffers
        // hold a few MiB at most.
        assert.ok(sent() < 32 * 1024 * 1024, `${path}: ${sent()} bytes read`);
        await body.cancel().catch(() => {});
      }
      // A body within the limit still works.
      const small = await fetch(`${url}api/signin`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ user: "ann", padding: "a".repeat(60 * 1024) }),
      });
      assert.equal(small.status, 201);
      await small.body?.cancel();
      assert.deepEqual(thrown.map(String), []);
    });
  },
);

/**
 * A store whose session lookups wait until `open()`: connections to the
 * event stream held inside `onConnect`, as a slow store holds them.
 */
function gatedStore(): {
  store: DemoStore;
  waiting: () => number;
  open: () => void;
} {
  const inner = memoryStore();
  let waiting = 0;
  let open!: () => void;
  const gate = new Promise<void>((resolve) => open = resolve);
  const store: DemoStore = {
    ...inner,
    async session(id) {
      waiting++;
      await gate;
      return inner.session(id);
    },
  };
  return { store, waiting: () => waiting, open };
}

/** Signs in through the demo: the session's cookie, as a header. */
async function signIn(url: string): Promise<{ cookie: string }> {
  const response = await fetch(`${url}api/signin`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user: "ann" }),
  });
  assert.equal(response.status, 201);
  await response.body?.cancel();
  return { cookie: response.headers.get("set-cookie")!.split(";")[0]! };
}

for (const how of ["restarted", "closed"] as const) {
  Deno.test(
    `The demo never answers 503, final for EventSource, to a tab connecting while the channel is ${how}`,
    SANITIZED,
    async () => {
      const gated = gatedStore();
      const broker = new MemoryBroker();
      const demo = await createDemo({ broker, store: gated.store });
      const server = Deno.serve(
        { hostname: "127.0.0.1", port: 0, onListen() {} },
        demo.handler,
      );
      const url = `http://127.0.0.1:${server.addr.port}/`;
      const open: Response[] = [];
      try {
        // Signing in reads no session; every tab then waits in onConnect.
        const headers = await signIn(url);
        const tabs = Array.from(
          { length: 5 },
          () => fetch(`${url}events?room=lobby`, { headers }),
        );
        await until(() => gated.waiting() === 5, "5 tabs in onConnect");
        if (how === "restarted") {
          const restarted = await fetch(`${url}api/restart`, {
            method: "POST",
          });
          assert.equal(restarted.status, 200);
          await restarted.body?.cancel();
        } else {
          // As Ctrl+C does, before the server stops.
          await demo.close();
        }
        gated.open();
        for (const tab of await Promise.all(tabs)) {
          open.push(tab);
          // Before, every one: 503, and each tab's EventSource closed for
          // good (the page showed "closed" until it was reloaded).
          assert.equal(tab.status, 200);
          assert.equal(
            tab.headers.get("content-type"),
            "text/event-stream; charset=utf-8",
          );
        }
        // A stream that ends at once, as the old channel's open streams do:
        // the browser reconnects.
        for (const tab of open) {
          assert.equal(await tab.text(), "retry: 1000\n\n");
        }
        if (how === "restarted") {
          // The reconnection reaches the new channel: its snapshot first.
          const again = await fetch(`${url}events?room=lobby`, { headers });
          open.push(again);
          const reader = again.body!.getReader();
          const { value } = await reader.read();
          await reader.cancel();
          assert.match(
            new TextDecoder().decode(value),
            /^retry: 1000\n\nevent: snapshot\n/,
          );
        }
      } finally {
        gated.open();
        await Promise.all(
          open.filter((tab) => !tab.bodyUsed).map((tab) => tab.body?.cancel()),
        );
        await demo.close();
        await server.shutdown();
        await broker.close();
      }
    },
  );
}

Deno.test(
  "The demo answers HEAD as GET without a body, and a wrong method with 405 and the methods it allows",
  SANITIZED,
  async () => {
    const broker = new MemoryBroker();
    const demo = await createDemo({ broker });
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      demo.handler,
    );
    const url = `http://127.0.0.1:${server.addr.port}/`;
    try {
      const headers = await signIn(url);
      // RFC 9110 §9.1: a general-purpose server supports GET and HEAD.
      // Before, HEAD of every route was 405.
      for (
        const [path, type] of [
          ["", "text/html; charset=utf-8"],
          ["stats", "application/json"],
          ["metrics", "text/plain; version=0.0.4"],
          ["api/session", "application/json"],
          ["api/online?room=lobby", "application/json"],
          ["events?room=lobby", "text/event-stream; charset=utf-8"],
        ] as const
      ) {
        const head = await fetch(`${url}${path}`, { method: "HEAD", headers });
        assert.equal(head.status, 200, path);
        assert.equal(head.headers.get("content-type"), type, path);
        assert.equal(await head.text(), "", path);
      }
      // RFC 9110 §15.5.6: a 405 lists the methods the resource allows.
      // Before, it had no Allow header.
      for (
        const [method, path, allow] of [
          ["DELETE", "api/chat", "POST"],
          ["GET", "api/signin", "POST"],
          ["PUT", "", "GET, HEAD"],
          ["POST", "stats", "GET, HEAD"],
        ] as const
      ) {
        const wrong = await fetch(`${url}${path}`, { method });
        assert.equal(wrong.status, 405, `${method} /${path}`);
        assert.equal(wrong.headers.get("allow"), allow, `${method} /${path}`);
        await wrong.body?.cancel();
      }
      // The event stream's own 405 says so too (the channel answers it).
      const post = await fetch(`${url}events`, { method: "POST" });
      assert.equal(post.status, 405);
      assert.equal(post.headers.get("allow"), "GET, HEAD");
      await post.body?.cancel();
    } finally {
      await demo.close();
      await server.shutdown();
      await broker.close();
    }
  },
);
