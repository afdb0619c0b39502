// Copyright the sse authors. MIT license.
// Where the demo keeps what a new tab's snapshot shows, and what the demos on
// one store share (sessions, the ticker's lease, who is online): in memory for
// one process, or in Deno KV for every demo on the database.

/** How long a session lasts, in seconds. */
export const SESSION_SECONDS = 7 * 24 * 3600;

/** One chat message, as snapshots show it. */
export interface ChatMessage {
  id: string;
  room: string;
  user: string;
  text: string;
  time: number;
}

/** A user connected to a room, with how many tabs, since when (ms). */
export interface OnlineUser {
  user: string;
  tabs: number;
  since: number;
}

/** One tick of the ticker. */
export interface Tick {
  n: number;
  price: number;
  time: number;
}

/**
 * Where the demo keeps what a new tab's snapshot shows. Every demo on one
 * store shares it: nothing of it is kept in a process.
 */
export interface DemoStore {
  /** A room's chat history, oldest first. */
  chat(room: string): Promise<ChatMessage[]>;
  /** Adds a message to its room's history, which keeps the last `keep`. */
  addChat(message: ChatMessage, keep: number): Promise<void>;
  /** The last tick published, if any. */
  tick(): Promise<Tick | undefined>;
  /** Stores the last tick published. */
  saveTick(tick: Tick): Promise<void>;
  /**
   * Takes the ticker for `owner`, or keeps it, for the next `ms`: one demo
   * per store ticks. Whether `owner` holds it.
   */
  claimTicker(owner: string, ms: number): Promise<boolean>;
  /** Lets the ticker go at once, if `owner` holds it. */
  releaseTicker(owner: string): Promise<void>;
  /**
   * Stores who is connected to `room` on the demo `owner`, for the next `ms`
   * (an empty list removes it).
   */
  savePresence(
    owner: string,
    room: string,
    users: OnlineUser[],
    ms: number,
  ): Promise<void>;
  /** Who is connected to `room`, per demo whose entry is fresh. */
  presence(room: string): Promise<{ owner: string; users: OnlineUser[] }[]>;
  /** The name signed in with a session, or `undefined`. */
  session(id: string): Promise<string | undefined>;
  /** Stores a session (for a week), or deletes it with `undefined`. */
  saveSession(id: string, user: string | undefined): Promise<void>;
}

/**
 * A store in memory: what a restarted demo has forgotten.
 *
 * @returns The store.
 */
export function memoryStore(): DemoStore {
  const sessions = new Map<string, string>();
  const chats = new Map<string, ChatMessage[]>();
  let last: Tick | undefined;
  return {
    chat: (room) => Promise.resolve([...chats.get(room) ?? []]),
    addChat(message, keep) {
      const kept = [...chats.get(message.room) ?? [], message];
      chats.set(message.room, kept.slice(-keep));
      return Promise.resolve();
    },
    tick: () => Promise.resolve(last),
    saveTick(tick) {
      last = tick;
      return Promise.resolve();
    },
    // One process: it always ticks.
    claimTicker: () => Promise.resolve(true),
    releaseTicker: () => Promise.resolve(),
    // One process: its own list, which it reads from its channel.
    savePresence: () => Promise.resolve(),
    presence: () => Promise.resolve([]),
    session: (id) => Promise.resolve(sessions.get(id)),
    saveSession(id, user) {
      if (user === undefined) sessions.delete(id);
      else sessions.set(id, user);
      return Promise.resolve();
    },
  };
}

/**
 * A store in Deno KV, next to the broker's streams: under
 * `["sse-demo", "chat", room]`, `["sse-demo", "tick"]` and
 * `["sse-demo", "session", id]`.
 *
 * @param kv The database (the caller closes it).
 * @returns The store.
 */
export function kvStore(kv: Deno.Kv): DemoStore {
  const lease = ["sse-demo", "ticker"];
  return {
    async chat(room) {
      const { value } = await kv.get<ChatMessage[]>(["sse-demo", "chat", room]);
      return Array.isArray(value) ? value : [];
    },
    async addChat(message, keep) {
      // Read, add, write only if no other demo wrote meanwhile; else again.
      const key = ["sse-demo", "chat", message.room];
      for (;;) {
        const entry = await kv.get<ChatMessage[]>(key);
        const kept = Array.isArray(entry.value) ? entry.value : [];
        const next = [...kept, message].slice(-keep);
        if ((await kv.atomic().check(entry).set(key, next).commit()).ok) return;
      }
    },
    async tick() {
      const { value } = await kv.get<Tick>(["sse-demo", "tick"]);
      return value ?? undefined;
    },
    async saveTick(tick) {
      await kv.set(["sse-demo", "tick"], tick);
    },
    async claimTicker(owner, ms) {
      const entry = await kv.get<{ owner: string; until: number }>(lease);
      const held = entry.value;
      const now = Date.now();
      if (held !== null && held.owner !== owner && held.until > now) {
        return false;
      }
      const { ok } = await kv.atomic().check(entry)
        .set(lease, { owner, until: now + ms }).commit();
      return ok;
    },
    async savePresence(owner, room, users, ms) {
      const key = ["sse-demo", "online", room, owner];
      if (users.length === 0) await kv.delete(key);
      // expireIn is a bound on what a killed demo leaves; `until` is what
      // readers go by (KV deletes expired keys lazily).
      else {await kv.set(key, { users, until: Date.now() + ms }, {
          expireIn: ms,
        });}
    },
    async presence(room) {
      const lists: { owner: string; users: OnlineUser[] }[] = [];
      const now = Date.now();
      const entries = kv.list<{ users: OnlineUser[]; until: number }>({
        prefix: ["sse-demo", "online", room],
      });
      for await (const { key, value } of entries) {
        if (value.until > now && Array.isArray(value.users)) {
          lists.push({ owner: String(key.at(-1)), users: value.users });
        }
      }
      return lists;
    },
    async releaseTicker(owner) {
      const entry = await kv.get<{ owner: string }>(lease);
      if (entry.value?.owner !== owner) return;
      await kv.atomic().check(entry).delete(lease).commit();
    },
    async session(id) {
      const { value } = await kv.get<string>(["sse-demo", "session", id]);
      return typeof value === "string" ? value : undefined;
    },
    async saveSession(id, user) {
      const key = ["sse-demo", "session", id];
      if (user === undefined) await kv.delete(key);
      else await kv.set(key, user, { expireIn: SESSION_SECONDS * 1000 });
    },
  };
}

/** Sends one Redis command and resolves with its reply (RESP2). */
export type RedisSend = (args: string[]) => Promise<unknown>;

// The ticker's lease: taken when free or already ours, for `ms`.
const CLAIM = `local held = redis.call("GET", KEYS[1])
if held == false or held == ARGV[1] then
  redis.call("SET", KEYS[1], ARGV[1], "PX", ARGV[2])
  return 1
end
return 0`;

// Let go only if ours.
const RELEASE = `if redis.call("GET", KEYS[1]) == ARGV[1] then
  return redis.call("DEL", KEYS[1])
end
return 0`;

/**
 * A store in Redis, next to RedisBroker's streams, under `sse-demo:*` keys:
 * what several demos on one Redis (servers behind a load balancer) share.
 *
 * @param send Sends a command (a node-redis client's `sendCommand`, RESP2).
 * @returns The store.
 */
export function redisStore(send: RedisSend): DemoStore {
  const chatKey = (room: string) => `sse-demo:chat:${room}`;
  const presenceKey = (room: string) => `sse-demo:online:${room}`;
  return {
    async chat(room) {
      const items = await send(["LRANGE", chatKey(room), "0", "-1"]);
      return (items as string[]).map((item) => JSON.parse(item));
    },
    async addChat(message, keep) {
      const key = chatKey(message.room);
      await send(["RPUSH", key, JSON.stringify(message)]);
      await send(["LTRIM", key, String(-keep), "-1"]);
    },
    async tick() {
      const value = await send(["GET", "sse-demo:tick"]);
      return typeof value === "string" ? JSON.parse(value) : undefined;
    },
    async saveTick(tick) {
      await send(["SET", "sse-demo:tick", JSON.stringify(tick)]);
    },
    async claimTicker(owner, ms) {
      const claimed = await send([
        "EVAL",
        CLAIM,
        "1",
        "sse-demo:ticker",
        owner,
        String(Math.ceil(ms)),
      ]);
      return Number(claimed) === 1;
    },
    async releaseTicker(owner) {
      await send(["EVAL", RELEASE, "1", "sse-demo:ticker", owner]);
    },
    async session(id) {
      const value = await send(["GET", `sse-demo:session:${id}`]);
      return typeof value === "string" ? value : undefined;
    },
    async saveSession(id, user) {
      const key = `sse-demo:session:${id}`;
      if (user === undefined) await send(["DEL", key]);
      else await send(["SET", key, user, "EX", String(SESSION_SECONDS)]);
    },
    async savePresence(owner, room, users, ms) {
      const key = presenceKey(room);
      if (users.length === 0) {
        await send(["HDEL", key, owner]);
        return;
      }
      const value = JSON.stringify({ users, until: Date.now() + ms });
      await send(["HSET", key, owner, value]);
      // What a killed demo leaves goes with the hash, once nobody refreshes it.
      await send(["PEXPIRE", key, String(Math.ceil(ms))]);
    },
    async presence(room) {
      const flat = await send(["HGETALL", presenceKey(room)]) as string[];
      const lists: { owner: string; users: OnlineUser[] }[] = [];
      const now = Date.now();
      for (let i = 0; i + 1 < flat.length; i += 2) {
        const { users, until } = JSON.parse(flat[i + 1]!);
        if (until > now && Array.isArray(users)) {
          lists.push({ owner: flat[i]!, users });
        }
      }
      return lists;
    },
  };
}
