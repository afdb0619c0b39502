// Copyright the sse authors. MIT license.
// The demo app as a `Request => Response` handler, so that demo/main.ts can
// serve it and tests can drive it:
//
//   GET  /                  the page (demo/page.ts)
//   GET  /events?room=R     the channel's event stream: topics "room:R" and
//                           "ticker"; a snapshot for a new connection, a
//                           "resumed" note and the missed events for one that
//                           comes back with Last-Event-ID
//   POST /api/chat          {"room","user","text"} → 201 {"id"}
//   POST /api/complete      {"prompt"} → an LLM-style token stream (sseResponse)
//   POST /api/restart       closes the channel and opens a new one on the same
//                           broker: every stream ends, browsers reconnect and
//                           resume
//   GET  /stats             JSON figures
//
// The events, and what a new tab's snapshot shows (each room's chat history
// and the last tick), live in the broker and the store it is given: with
// DenoKvBroker and kvStore on one file, a demo started again on that file
// goes on where the previous one stopped, and every open tab resumes.

import {
  type SSEBroker,
  SSEChannel,
  type SSEMessage,
  sseResponse,
} from "../server.ts";
import { PAGE } from "./page.ts";

/** The chat rooms. Each is the topic `room:<name>`. */
export const ROOMS: readonly string[] = ["lobby", "random"];
const HISTORY = 50;
const MAX_USER = 32;
const MAX_TEXT = 500;
const MAX_PROMPT = 2000;

/** Where the demo keeps what a new tab's snapshot shows. */
export interface DemoStore {
  /** Each room's chat history (oldest first) and the last tick, if any. */
  load(): Promise<{ history: Map<string, ChatMessage[]>; tick?: Tick }>;
  /** Stores a room's chat history. */
  saveChat(room: string, messages: ChatMessage[]): Promise<void>;
  /** Stores the last tick published. */
  saveTick(tick: Tick): Promise<void>;
}

/**
 * A store in memory: what a restarted demo has forgotten.
 *
 * @returns The store.
 */
export function memoryStore(): DemoStore {
  return {
    load: () => Promise.resolve({ history: new Map() }),
    saveChat: () => Promise.resolve(),
    saveTick: () => Promise.resolve(),
  };
}

/**
 * A store in Deno KV, next to the broker's streams: under
 * `["sse-demo", "chat", room]` and `["sse-demo", "tick"]`.
 *
 * @param kv The database (the caller closes it).
 * @returns The store.
 */
export function kvStore(kv: Deno.Kv): DemoStore {
  return {
    async load() {
      const history = new Map<string, ChatMessage[]>();
      for (const room of ROOMS) {
        const { value } = await kv.get<ChatMessage[]>([
          "sse-demo",
          "chat",
          room,
        ]);
        if (Array.isArray(value)) history.set(room, value);
      }
      const { value: tick } = await kv.get<Tick>(["sse-demo", "tick"]);
      return tick === null ? { history } : { history, tick };
    },
    async saveChat(room, messages) {
      await kv.set(["sse-demo", "chat", room], messages);
    },
    async saveTick(tick) {
      await kv.set(["sse-demo", "tick"], tick);
    },
  };
}

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

/** One chat message, as snapshots show it. */
export interface ChatMessage {
  id: string;
  room: string;
  user: string;
  text: string;
  time: number;
}

/** One tick of the ticker. */
export interface Tick {
  n: number;
  price: number;
  time: number;
}

interface Context {
  room: string;
}

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
  const saved = await store.load();
  const history = new Map<string, ChatMessage[]>(
    ROOMS.map((room) => [room, saved.history.get(room) ?? []]),
  );
  const shutdown = new AbortController();
  let lastTick: Tick | undefined = saved.tick;
  let price = saved.tick?.price ?? 100;
  let restarts = 0;
  let published = 0;
  let completions = 0;
  let closed = false;

  function createChannel(): SSEChannel<Context> {
    return new SSEChannel<Context>({
      broker,
      replay: 1000,
      // Browsers reconnect after this many ms (their default is about 3 s).
      retry: 1000,
      onConnect(request) {
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
        return { room };
      },
      init({ room }, lastEventId, { resumed }): SSEMessage[] {
        // Resumed: the channel replays exactly what was missed, after this.
        if (resumed) {
          return [{ event: "resumed", data: { from: lastEventId, room } }];
        }
        // New, or too far behind: the current state instead.
        return [{
          event: "snapshot",
          data: {
            room,
            messages: history.get(room),
            tick: lastTick ?? null,
            lastEventId,
          },
        }];
      },
    });
  }
  let channel = createChannel();

  async function tick(): Promise<void> {
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
  const ticker = setInterval(() => {
    tick().catch((error) => {
      if (!closed) {
        console.error(`demo: a tick was not published: ${error.message}`);
      }
    });
  }, tickerInterval);

  async function chat(request: Request): Promise<Response> {
    const body = await readJson(request);
    if (body instanceof Response) return body;
    const { room, user = "guest", text } = body as Record<string, unknown>;
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
    const kept = history.get(room)!;
    kept.push({ id, ...message });
    if (kept.length > HISTORY) kept.shift();
    await store.saveChat(room, kept);
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

  async function restart(): Promise<Response> {
    // Swap first, so that reconnecting browsers reach the new channel, then
    // end every stream of the old one.
    const old = channel;
    channel = createChannel();
    restarts++;
    await old.close();
    return Response.json({ restarts });
  }

  function stats(): Response {
    return Response.json({
      clients: channel.size,
      uptimeSeconds: Math.round((Date.now() - started) / 1000),
      ticks: lastTick?.n ?? 0,
      messages: Object.fromEntries(
        ROOMS.map((room) => [room, history.get(room)!.length]),
      ),
      published,
      completions,
      channelRestarts: restarts,
      rssBytes: Deno.memoryUsage().rss,
    });
  }

  async function handler(request: Request): Promise<Response> {
    const { pathname } = new URL(request.url);
    const route = `${request.method} ${pathname}`;
    switch (route) {
      case "GET /":
        return new Response(PAGE, {
          headers: {
            "content-type": "text/html; charset=utf-8",
            "cache-control": "no-cache",
          },
        });
      case "GET /events":
        return await channel.connect(request, {
          topics: [`room:${roomOf(request)}`, "ticker"],
        });
      case "POST /api/chat":
        return await chat(request);
      case "POST /api/complete":
        return await complete(request);
      case "POST /api/restart":
        return await restart();
      case "GET /stats":
        return stats();
    }
    const known = [
      "/",
      "/events",
      "/api/chat",
      "/api/complete",
      "/api/restart",
      "/stats",
    ];
    if (known.includes(pathname)) {
      return new Response("Method not allowed", { status: 405 });
    }
    return new Response("Not found", { status: 404 });
  }

  async function close(): Promise<void> {
    if (closed) return;
    closed = true;
    clearInterval(ticker);
    shutdown.abort();
    await channel.close();
  }

  return { handler, close };
}

// The room is checked again by onConnect, which answers 400 for a bad one.
function roomOf(request: Request): string {
  return new URL(request.url).searchParams.get("room") ?? "lobby";
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

async function readJson(request: Request): Promise<unknown> {
  const type = request.headers.get("content-type") ?? "";
  if (!type.startsWith("application/json")) {
    return badRequest("Invalid body: expected content-type application/json");
  }
  try {
    const body = await request.json();
    if (typeof body !== "object" || body === null || Array.isArray(body)) {
      return badRequest("Invalid body: expected a JSON object");
    }
    return body;
  } catch {
    return badRequest("Invalid body: not JSON");
  }
}

function badRequest(error: string): Response {
  return Response.json({ error }, { status: 400 });
}

function round(value: number): number {
  return Math.round(value * 100) / 100;
}
