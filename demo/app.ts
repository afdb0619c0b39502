// Copyright the sse authors. MIT license.
// The demo app as a `Request => Response` handler, so that demo/main.ts can
// serve it and tests can drive it:
//
//   GET  /                  the page (demo/page.ts)
//   POST /api/signin        {"user"} → 201 {"user"}, and a session cookie
//   GET  /api/session       {"user"}: the signed-in name, or null
//   POST /api/signout       ends the session, and every stream of it at once,
//                           on every demo on the broker
//                           (a final "signed-out" event; its reconnection
//                           gets 401, so the tab stays away until signed in)
//   GET  /events?room=R     the channel's event stream, for a signed-in
//                           session (else 401): topics "room:R" and "ticker",
//                           decided from the context; a snapshot for a new
//                           connection, a "resumed" note and the missed
//                           events for one that comes back with
//                           Last-Event-ID, or with ?lastEventID= after a
//                           page reload
//   GET  /api/online?room=R who is connected to the room: {"room","users"}
//   POST /api/chat          {"room","user","text"} → 201 {"id"} (the
//                           session's name when signed in)
//   POST /api/complete      {"prompt"} → an LLM-style token stream (sseResponse)
//   POST /api/restart       closes the channel and opens a new one on the same
//                           broker: every stream ends, browsers reconnect and
//                           resume
//   GET  /stats             JSON figures, with the channel's metrics()
//   GET  /metrics           the same for Prometheus (text format)
//
// A JSON body holds at most 64 KiB (above: 413, without reading the rest); a
// session cookie that is not of the form the demo issues is no session.
//
// The events, what a new tab's snapshot shows (each room's chat history and
// the last tick) and the sessions live in the broker and the store it is
// given: with DenoKvBroker and kvStore on one file, a demo started again on
// that file goes on where the previous one stopped, and every open tab
// resumes, still signed in. Several demos on one store (processes on one
// file, instances on Deno Deploy) are one app: snapshots are read from the
// store, and one of them at a time runs the ticker (a lease in the store,
// taken over when its holder stops or stalls).

import {
  type SSEBroker,
  type SSEBrokerSubscription,
  SSEChannel,
  type SSEChannelMetrics,
  type SSEMessage,
  sseResponse,
} from "../server.ts";
import { PAGE } from "./page.ts";
import {
  type DemoStore,
  memoryStore,
  type OnlineUser,
  SESSION_SECONDS,
  type Tick,
} from "./store.ts";

export type { ChatMessage, DemoStore, OnlineUser, Tick } from "./store.ts";

/** The chat rooms. Each is the topic `room:<name>`. */
export const ROOMS: readonly string[] = ["lobby", "random"];
const HISTORY = 50;
const MAX_USER = 32;
const MAX_TEXT = 500;
const MAX_PROMPT = 2000;
// Bytes a JSON request body may hold: far above what any valid one needs.
const MAX_BODY = 64 * 1024;

// The methods of each path (see the table at the top; HEAD with every GET).
const ALLOW: Readonly<Record<string, string>> = {
  "/": "GET, HEAD",
  "/events": "GET, HEAD",
  "/api/signin": "POST",
  "/api/signout": "POST",
  "/api/session": "GET, HEAD",
  "/api/online": "GET, HEAD",
  "/api/chat": "POST",
  "/api/complete": "POST",
  "/api/restart": "POST",
  "/stats": "GET, HEAD",
  "/metrics": "GET, HEAD",
};

/** Options of {@linkcode createDemo}. */
export interface DemoOptions {
  /** Ids, history and fan-out of the demo's channel. The caller closes it. */
  broker: SSEBroker;
  /**
   * Chat histories and the last tick, for new tabs' snapshots.
   *
   * @default {memoryStore()}
   */
  store?: DemoStore;
  /**
   * Milliseconds between ticker events.
   *
   * @default {1000}
   */
  tickerInterval?: number;
  /**
   * Delay between tokens of `/api/complete`, in milliseconds: each token
   * waits between this and twice this.
   *
   * @default {25}
   */
  tokenDelay?: number;
}

/** The demo: a handler and its shutdown. */
export interface Demo {
  /** Answers one request. */
  handler: (request: Request) => Promise<Response>;
  /**
   * Ends every stream and stops the ticker; resolves once all is released
   * (the broker and the store stay open: they are the caller's).
   */
  close: () => Promise<void>;
}

/** A connection: its room, and who signed in with which session. */
interface Context {
  room: string;
  user: string;
  session: string;
}

const SESSION_COOKIE = "sse-demo-session";
// Browsers reconnect after this many ms (their default is about 3 s).
const RETRY = 1000;
// How long what a demo says about who is connected to it holds, in ms: it
// says it again every third of that.
const PRESENCE_TTL = 3000;
// The broker stream on which a demo tells the others on the broker that a
// session signed out, so that each ends that session's streams.
const SIGNOUTS = "sse-demo-signouts";

/**
 * Creates the demo app: the channel on the broker, the ticker, the chat
 * history and the token streams, going on from what the store holds.
 *
 * @param options Broker, store, ticker interval and token delay.
 * @returns The handler and its `close`.
 */
export async function createDemo(options: DemoOptions): Promise<Demo> {
  const tickerInterval = options.tickerInterval ?? 1000;
  const tokenDelay = options.tokenDelay ?? 25;
  if (!Number.isFinite(tickerInterval) || tickerInterval < 10) {
    throw new RangeError(
      `Invalid tickerInterval: expected at least 10 ms, got ${tickerInterval}`,
    );
  }
  if (!Number.isFinite(tokenDelay) || tokenDelay < 0) {
    throw new RangeError(
      `Invalid tokenDelay: expected a non-negative number of ms, got ${tokenDelay}`,
    );
  }
  const started = Date.now();
  // The broker outlives channels (and, on a shared store, processes): a
  // restarted channel on it still resumes clients from ids handed out before.
  const { broker, store = memoryStore() } = options;
  const shutdown = new AbortController();
  // This demo among those on the store, for the ticker's lease.
  const owner = crypto.randomUUID();
  // Whether this demo ticked last: if not, it goes on from the store's tick.
  let ticking = false;
  let lastTick: Tick | undefined = await store.tick();
  let price = lastTick?.price ?? 100;
  let restarts = 0;
  let published = 0;
  let completions = 0;
  let closed = false;

  function createChannel(): SSEChannel<Context> {
    return new SSEChannel<Context>({
      broker,
      replay: 1000,
      retry: RETRY,
      async onConnect(request) {
        const room = new URL(request.url).searchParams.get("room") ?? "lobby";
        if (!ROOMS.includes(room)) {
          return Response.json(
            {
              error: `Unknown room: ${room} (expected one of ${
                ROOMS.join(", ")
              })`,
            },
            { status: 400 },
          );
        }
        const session = sessionOf(request);
        const user = session === undefined
          ? undefined
          : await store.session(session);
        if (session === undefined || user === undefined) {
          // Final for EventSource: a signed-out tab stays away until the
          // page signs in again and opens a new one.
          return Response.json({ error: "Not signed in" }, { status: 401 });
        }
        return { room, user, session };
      },
      // Topics from the context: no second look at the request.
      topics: ({ room }) => [`room:${room}`, "ticker"],
      async init({ room }, lastEventId, { resumed }): Promise<SSEMessage[]> {
        // Resumed: the channel replays exactly what was missed, after this.
        if (resumed) {
          return [{ event: "resumed", data: { from: lastEventId, room } }];
        }
        // New, or too far behind: the current state instead.
        return [{
          event: "snapshot",
          data: {
            room,
            messages: await store.chat(room),
            tick: await store.tick() ?? null,
            lastEventId,
          },
        }];
      },
    });
  }
  let channel = createChannel();

  /** Ends the streams of a session here, with a final event: how many. */
  function signedOut(session: string, user: string | null): number {
    return channel.disconnect(
      (client) => client.context.session === session,
      { message: { event: "signed-out", data: { user } } },
    );
  }
  // Sign-outs made on the other demos on the broker. A broker that cannot
  // be reached yet (a Redis still starting) is tried again every 2 s: it
  // reports the outage itself.
  let signouts: SSEBrokerSubscription | undefined;
  let resubscribe: ReturnType<typeof setTimeout> | undefined;
  async function listen(): Promise<void> {
    try {
      const subscription = await broker.subscribe(SIGNOUTS, ({ message }) => {
        try {
          const { session, user } = JSON.parse(String(message.data));
          if (typeof session === "string") signedOut(session, user ?? null);
        } catch {
          // Not one of ours: nothing to end.
        }
      });
      if (closed) subscription.unsubscribe();
      else signouts = subscription;
    } catch {
      if (!closed) resubscribe = setTimeout(listen, 2000);
    }
  }
  await listen();

  async function tick(): Promise<void> {
    // Long enough that a busy holder keeps it, short enough that another
    // demo takes over soon after the holder is killed.
    if (!await store.claimTicker(owner, Math.max(3 * tickerInterval, 2000))) {
      ticking = false;
      return;
    }
    if (!ticking) {
      // Taken over (or started): from the last tick any demo published.
      lastTick = await store.tick() ?? lastTick;
      price = lastTick?.price ?? price;
      ticking = true;
    }
    price = Math.max(1, price * (1 + (Math.random() - 0.5) * 0.01));
    const next: Tick = {
      n: (lastTick?.n ?? 0) + 1,
      price: round(price),
      time: Date.now(),
    };
    lastTick = next;
    await channel.publish({ event: "tick", data: next }, { topic: "ticker" });
    published++;
    // Stored after it is published: a demo killed in between publishes this
    // tick again (a tab takes it for the one it has), never skips one.
    await store.saveTick(next);
  }
  // Who is connected here, for the other demos on the store, refreshed well
  // within its time to live; removed on close.
  let sharing: Promise<void> = Promise.resolve();
  const presenceTimer = setInterval(() => {
    sharing = sharing.then(sharePresence).catch((error) => {
      if (!closed) {
        console.error(`demo: presence was not stored: ${error.message}`);
      }
    });
  }, PRESENCE_TTL / 3);

  // The tick in flight, which close() waits for before letting the ticker go.
  let ticked: Promise<void> = Promise.resolve();
  let inFlight = false;
  const ticker = setInterval(() => {
    // A slow store skips a beat rather than run two ticks at once, which
    // could publish their numbers out of order.
    if (inFlight) return;
    inFlight = true;
    ticked = tick().catch((error) => {
      if (!closed) {
        console.error(`demo: a tick was not published: ${error.message}`);
      }
    }).finally(() => inFlight = false);
  }, tickerInterval);

  async function chat(
    request: Request,
    session: string | undefined,
  ): Promise<Response> {
    const body = await readJson(request);
    if (body instanceof Response) return body;
    const signedIn = session === undefined
      ? undefined
      : await store.session(session);
    const { room, text } = body as Record<string, unknown>;
    const user = signedIn ?? (body as Record<string, unknown>).user ?? "guest";
    if (typeof room !== "string" || !ROOMS.includes(room)) {
      return badRequest(`Invalid room: expected one of ${ROOMS.join(", ")}`);
    }
    if (
      typeof user !== "string" || user.trim() === "" || user.length > MAX_USER
    ) {
      return badRequest(`Invalid user: expected 1 to ${MAX_USER} characters`);
    }
    if (
      typeof text !== "string" || text.trim() === "" || text.length > MAX_TEXT
    ) {
      return badRequest(`Invalid text: expected 1 to ${MAX_TEXT} characters`);
    }
    const message = {
      room,
      user: user.trim(),
      text: text.trim(),
      time: Date.now(),
    };
    const id = await channel.publish({ event: "chat", data: message }, {
      topic: `room:${room}`,
    });
    published++;
    await store.addChat({ id, ...message }, HISTORY);
    return Response.json({ id }, { status: 201 });
  }

  async function complete(request: Request): Promise<Response> {
    const body = await readJson(request);
    if (body instanceof Response) return body;
    const { prompt } = body as Record<string, unknown>;
    if (typeof prompt !== "string" || prompt.length > MAX_PROMPT) {
      return badRequest(
        `Invalid prompt: expected a string of at most ${MAX_PROMPT} characters`,
      );
    }
    completions++;
    return sseResponse(tokens(prompt, tokenDelay), { signal: shutdown.signal });
  }

  /**
   * The event stream, from the channel open now. A closed channel ends the
   * streams of the connections still in progress (they reconnect), but
   * answers 503, which EventSource takes as final (the tab would stay
   * closed until reloaded), to a connection that reaches it after its
   * `close()`: such a connection is taken to the new channel after a
   * restart, and after the demo's own close (Ctrl+C) gets a stream that
   * ends at once, so that the browser reconnects, to this demo started
   * again on its store.
   */
  async function events(request: Request): Promise<Response> {
    for (;;) {
      const used = channel;
      const response = await used.connect(request);
      if (response.status !== 503 || (used === channel && !closed)) {
        return response;
      }
      await response.body?.cancel();
      if (closed) {
        return sseResponse(ReadableStream.from<SSEMessage>([]), {
          retry: RETRY,
        });
      }
    }
  }

  async function restart(): Promise<Response> {
    // Swap first, so that reconnecting browsers reach the new channel, then
    // end every stream of the old one.
    const old = channel;
    channel = createChannel();
    restarts++;
    await old.close();
    return Response.json({ restarts });
  }

  async function signIn(request: Request): Promise<Response> {
    const body = await readJson(request);
    if (body instanceof Response) return body;
    const { user } = body as Record<string, unknown>;
    if (
      typeof user !== "string" || user.trim() === "" || user.length > MAX_USER
    ) {
      return badRequest(`Invalid user: expected 1 to ${MAX_USER} characters`);
    }
    const session = crypto.randomUUID();
    await store.saveSession(session, user.trim());
    return Response.json({ user: user.trim() }, {
      status: 201,
      headers: {
        "set-cookie":
          `${SESSION_COOKIE}=${session}; Path=/; HttpOnly; SameSite=Strict; Max-Age=${SESSION_SECONDS}`,
      },
    });
  }

  async function signOut(request: Request): Promise<Response> {
    const session = sessionOf(request);
    let disconnected = 0;
    if (session !== undefined) {
      const user = await store.session(session);
      // Revoked first, so that the tabs' reconnections are refused (401).
      await store.saveSession(session, undefined);
      disconnected = signedOut(session, user ?? null);
      // And on every other demo on the broker (they share the store).
      await broker.publish(SIGNOUTS, {
        topic: "",
        message: { data: JSON.stringify({ session, user: user ?? null }) },
      }, { replay: 0 });
    }
    return Response.json({ disconnected }, {
      headers: {
        "set-cookie":
          `${SESSION_COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0`,
      },
    });
  }

  async function whoAmI(request: Request): Promise<Response> {
    const session = sessionOf(request);
    const user = session === undefined
      ? undefined
      : await store.session(session);
    return Response.json({ user: user ?? null });
  }

  /** Who is connected to `room` here: one entry per user, however many tabs. */
  function localPresence(room: string): OnlineUser[] {
    const users = new Map<string, OnlineUser>();
    for (const { context, connectedAt } of channel.clients(`room:${room}`)) {
      const seen = users.get(context.user);
      if (seen === undefined) {
        users.set(context.user, {
          user: context.user,
          tabs: 1,
          since: connectedAt,
        });
      } else {
        seen.tabs++;
        seen.since = Math.min(seen.since, connectedAt);
      }
    }
    return [...users.values()];
  }

  /** Stores who is connected here, for the other demos on the store. */
  async function sharePresence(): Promise<void> {
    for (const room of ROOMS) {
      await store.savePresence(owner, room, localPresence(room), PRESENCE_TTL);
    }
  }

  async function online(request: Request): Promise<Response> {
    const room = new URL(request.url).searchParams.get("room") ?? "lobby";
    if (!ROOMS.includes(room)) {
      return badRequest(`Invalid room: expected one of ${ROOMS.join(", ")}`);
    }
    // Here, as it is now; then the other demos on the store, as they last
    // said: each user once, with the tabs of every demo, since the first.
    const users = new Map(
      localPresence(room).map((entry) => [entry.user, entry]),
    );
    for (const shared of await store.presence(room)) {
      if (shared.owner === owner) continue; // this demo's, older
      for (const other of shared.users) {
        const seen = users.get(other.user);
        if (seen === undefined) users.set(other.user, { ...other });
        else {
          seen.tabs += other.tabs;
          seen.since = Math.min(seen.since, other.since);
        }
      }
    }
    const merged = [...users.values()].sort((x, y) => x.since - y.since);
    return Response.json({ room, users: merged });
  }

  async function stats(): Promise<Response> {
    const messages: Record<string, number> = {};
    for (const room of ROOMS) messages[room] = (await store.chat(room)).length;
    return Response.json({
      clients: channel.size,
      uptimeSeconds: Math.round((Date.now() - started) / 1000),
      // The store's: any demo on it may have ticked last.
      ticks: (await store.tick())?.n ?? 0,
      messages,
      published,
      completions,
      channelRestarts: restarts,
      rssBytes: Deno.memoryUsage().rss,
      channel: channel.metrics(),
    });
  }

  async function handler(request: Request): Promise<Response> {
    const { pathname } = new URL(request.url);
    // RFC 9110 §9.3.2: HEAD is GET without the content (which Deno.serve
    // leaves out; the channel answers HEAD itself).
    const method = request.method === "HEAD" ? "GET" : request.method;
    switch (`${method} ${pathname}`) {
      case "GET /":
        return new Response(PAGE, {
          headers: {
            "content-type": "text/html; charset=utf-8",
            "cache-control": "no-cache",
          },
        });
      case "GET /events":
        return await events(request);
      case "POST /api/signin":
        return await signIn(request);
      case "POST /api/signout":
        return await signOut(request);
      case "GET /api/session":
        return await whoAmI(request);
      case "GET /api/online":
        return await online(request);
      case "POST /api/chat":
        return await chat(request, sessionOf(request));
      case "POST /api/complete":
        return await complete(request);
      case "POST /api/restart":
        return await restart();
      case "GET /stats":
        return await stats();
      case "GET /metrics":
        return new Response(prometheus(channel.metrics()), {
          headers: { "content-type": "text/plain; version=0.0.4" },
        });
    }
    const allow = ALLOW[pathname];
    if (allow !== undefined) {
      // RFC 9110 §15.5.6: a 405 lists the methods the resource allows.
      return new Response("Method not allowed", {
        status: 405,
        headers: { allow },
      });
    }
    return new Response("Not found", { status: 404 });
  }

  async function close(): Promise<void> {
    if (closed) return;
    closed = true;
    clearTimeout(resubscribe);
    signouts?.unsubscribe();
    clearInterval(ticker);
    shutdown.abort();
    await ticked;
    // Another demo on the store takes the ticker over at once.
    await store.releaseTicker(owner).catch(() => {});
    clearInterval(presenceTimer);
    await sharing;
    for (const room of ROOMS) {
      await store.savePresence(owner, room, [], 0).catch(() => {});
    }
    await channel.close();
  }

  return { handler, close };
}

// The form of the session ids signIn issues (crypto.randomUUID()).
const SESSION_ID =
  /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/**
 * The session id in the request's cookie, if it has the form of one the
 * demo issues: anything else is no session, and never reaches the store (a
 * Deno KV key holds at most 2 KiB, and a longer one threw).
 */
function sessionOf(request: Request): string | undefined {
  const cookie = request.headers.get("cookie") ?? "";
  for (const part of cookie.split(";")) {
    const [name, value] = part.trim().split("=", 2);
    if (name === SESSION_COOKIE && value && SESSION_ID.test(value)) {
      return value;
    }
  }
  return undefined;
}

/**
 * A Prometheus label value: the text format escapes backslash, double quote
 * and line feed, and nothing else (JSON's other escapes are refused).
 */
function label(value: string): string {
  return value.replace(/[\\"\n]/g, (c) => c === "\n" ? "\\n" : "\\" + c);
}

/**
 * The channel's metrics in Prometheus' text format: a gauge of clients (and
 * per topic), and counters.
 */
function prometheus(m: SSEChannelMetrics): string {
  const lines = [
    "# TYPE sse_clients gauge",
    `sse_clients ${m.clients}`,
    ...Object.entries(m.topics).map(([topic, n]) =>
      `sse_topic_clients{topic="${label(topic)}"} ${n}`
    ),
  ];
  const counters: [string, number][] = [
    ["connections", m.connections],
    ["published", m.published],
    ["delivered", m.delivered],
    ["sent_bytes", m.bytesSent],
    ["resumed", m.resumed],
    ["resume_fallbacks", m.resumeFallbacks],
  ];
  for (const [name, value] of counters) {
    lines.push(
      `# TYPE sse_${name}_total counter`,
      `sse_${name}_total ${value}`,
    );
  }
  lines.push("# TYPE sse_disconnects_total counter");
  for (const [reason, n] of Object.entries(m.disconnects)) {
    lines.push(`sse_disconnects_total{reason="${reason}"} ${n}`);
  }
  return lines.join("\n") + "\n";
}

const ANSWER = "Server-Sent Events keep one HTTP response open and write " +
  "events into it as lines of text: an id, an event type and data, then a " +
  "blank line. The browser's EventSource parses them, reconnects by itself " +
  "when the stream ends, and sends the last id it saw as Last-Event-ID, so " +
  "the server can replay what was missed. No WebSocket upgrade, no special " +
  "proxy rules: it is plain HTTP, one direction, and this answer arrives " +
  "word by word over exactly such a stream.";

/** An LLM-style stream: the answer, one word at a time, then `done`. */
async function* tokens(
  prompt: string,
  delay: number,
): AsyncGenerator<SSEMessage> {
  const words = [
    `You asked: “${prompt.trim() || "nothing"}”.`,
    ...ANSWER.split(" "),
  ];
  let count = 0;
  for (const [index, word] of words.entries()) {
    await new Promise((resolve) =>
      setTimeout(resolve, delay + Math.random() * delay)
    );
    // Tokens carry their leading space, as LLM tokens do.
    yield { event: "token", data: index === 0 ? word : ` ${word}` };
    count++;
  }
  yield { event: "done", data: { tokens: count } };
}

/**
 * The request's JSON object, or the answer refusing it: 400 for another
 * content type or anything but a JSON object, 413 for a body above
 * MAX_BODY bytes, refused from its Content-Length or once that much has
 * been read (nothing more is buffered).
 */
async function readJson(request: Request): Promise<unknown> {
  const type = request.headers.get("content-type") ?? "";
  if (!type.startsWith("application/json")) {
    return badRequest("Invalid body: expected content-type application/json");
  }
  const tooLarge = () =>
    Response.json(
      { error: `Invalid body: expected at most ${MAX_BODY} bytes` },
      { status: 413 },
    );
  if (Number(request.headers.get("content-length")) > MAX_BODY) {
    await request.body?.cancel().catch(() => {});
    return tooLarge();
  }
  try {
    const bytes = await readBody(request);
    if (bytes === undefined) return tooLarge();
    const body = JSON.parse(new TextDecoder().decode(bytes));
    if (typeof body !== "object" || body === null || Array.isArray(body)) {
      return badRequest("Invalid body: expected a JSON object");
    }
    return body;
  } catch {
    return badRequest("Invalid body: not JSON");
  }
}

/**
 * The request's body, or `undefined` (and the rest unread) above MAX_BODY;
 * rejects when the client breaks it off.
 */
async function readBody(request: Request): Promise<Uint8Array | undefined> {
  const chunks: Uint8Array[] = [];
  let size = 0;
  if (request.body === null) return new Uint8Array();
  const reader = request.body.getReader();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > MAX_BODY) {
      await reader.cancel().catch(() => {});
      return undefined;
    }
    chunks.push(value);
  }
  const bytes = new Uint8Array(size);
  let offset = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, offset);
    offset += chunk.byteLength;
  }
  return bytes;
}

function badRequest(error: string): Response {
  return Response.json({ error }, { status: 400 });
}

function round(value: number): number {
  return Math.round(value * 100) / 100;
}
