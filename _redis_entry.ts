// Copyright the sse authors. MIT license.
// RedisBroker's event ids and stream entries: how an entry id of a Redis
// stream becomes an event id and back, and how a stream entry (which any
// process may have written) becomes an SSEBrokerEntry. Private: never
// exported from mod.ts or deno.json.

import { entryProblem, type SSEBrokerEntry, withoutId } from "./_broker.ts";

/** A stream entry as RESP2 returns it: `[id, [field, value, …]]`. */
export type RawEntry = [string, string[]];

/**
 * `publish`, run by Redis as one step: `XADD … MAXLEN ~ replay *` of the
 * fields `seq`, `topic` and `message`, where `seq` numbers the entries of
 * the stream (1, 2, 3, …), counted in a key of its own (`KEYS[2]`, a
 * string), which outlives the stream's key when only that one is deleted. A
 * reader that gets an entry whose `seq` is not one more than that of the
 * entry before it knows that the entries in between were trimmed (it fell
 * behind by more than the stream keeps) or deleted before it read them, and
 * a `seq` of 1 after others that the stream and its count were dropped
 * (evicted, flushed) and started again: `XREAD` itself just returns what is
 * left. The count is written after the `XADD`, so a publish that fails
 * numbers nothing. When the count is gone but the stream is not (an
 * eviction took one key of the two, or an earlier version wrote the stream),
 * it goes on from the newest entry's `seq`; reading that entry is the only
 * step whose cost grows with the entries' size, and it runs only then.
 *
 * Redis numbers a new stream from its clock (`<ms>-0`), so a stream whose
 * key was deleted (an operator's `DEL`, an eviction under `maxmemory`,
 * `FLUSHALL`) and that starts again within the millisecond of its last
 * entry would issue that entry's id again, or an id below what a reader has
 * read, which the reader would then skip. A key that is gone starts instead
 * at the millisecond after both the clock and the newest id this broker was
 * given (`ARGV[4]`, which covers a stream lost twice within one millisecond,
 * as evictions under load can): after every id the stream issued before, as
 * long as the Redis server's clock does not go back. `KEYS` are the stream
 * and its count; `ARGV` are replay, topic, message and that floor (a number
 * of milliseconds).
 */
export const APPEND = `
local id = '*'
local seq = tonumber(redis.call('GET', KEYS[2]))
if redis.call('EXISTS', KEYS[1]) == 0 then
  local now = redis.call('TIME')
  local ms = math.max(now[1] * 1000 + math.floor(now[2] / 1000), tonumber(ARGV[4]))
  id = string.format('%.0f', ms + 1) .. '-0'
elseif not seq then
  local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)[1]
  if newest then
    local fields = newest[2]
    for i = 1, #fields - 1, 2 do
      if fields[i] == 'seq' then
        seq = tonumber(fields[i + 1])
        break
      end
    end
  end
end
seq = string.format('%.0f', (seq or 0) + 1)
local added = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], id,
  'seq', seq, 'topic', ARGV[2], 'message', ARGV[3])
redis.call('SET', KEYS[2], seq)
return added
`;

/**
 * The key of the count {@linkcode APPEND} keeps for a stream.
 *
 * @param prefix The broker's key prefix.
 * @param name The stream.
 * @returns `prefix + "~seq:" + name`.
 */
export function countKey(prefix: string, name: string): string {
  return `${prefix}~seq:${name}`;
}

const SEQ = /^[1-9]\d{0,15}$/;

/**
 * The sequence number {@linkcode APPEND} stored in an entry.
 *
 * @param fields The entry's fields and values.
 * @returns Its `seq`, or `undefined` for an entry without a valid one
 * (written by an older version, or by hand).
 */
export function entrySeq(fields: string[]): number | undefined {
  for (let i = 0; i + 1 < fields.length; i += 2) {
    if (fields[i] === "seq") {
      const value = fields[i + 1]!;
      return SEQ.test(value) ? Number(value) : undefined;
    }
  }
  return undefined;
}

// Only the canonical spelling: Redis reads "5-01" as "5-1", but never wrote it.
const EVENT_ID = /^((0|[1-9]\d{0,19})-(0|[1-9]\d{0,19}))\.([0-9a-z]+)$/;
const U64_MAX = 2n ** 64n - 1n;

/**
 * The event id of a stream entry: its Redis id, a dot, the stream's tag.
 *
 * @param rawId The Redis entry id, `<ms>-<seq>`.
 * @param tag The stream's {@linkcode streamTag}.
 * @returns The event id, printable ASCII.
 */
export function eventId(rawId: string, tag: string): string {
  return `${rawId}.${tag}`;
}

/**
 * The Redis entry id inside an event id of the stream tagged `tag`.
 *
 * @param id An event id, as a client sent it back.
 * @param tag The stream's {@linkcode streamTag}.
 * @returns The `<ms>-<seq>` part, as Redis writes ids (unsigned 64-bit
 * decimal integers without leading zeros, not `0-0`, which Redis never
 * assigns), when `id` is one of this stream's; `undefined` for anything
 * else: another stream's id, a malformed one.
 */
export function redisIdOf(id: string, tag: string): string | undefined {
  const match = EVENT_ID.exec(id);
  if (match === null || match[4] !== tag || match[1] === "0-0") {
    return undefined;
  }
  if (BigInt(match[2]!) > U64_MAX || BigInt(match[3]!) > U64_MAX) {
    return undefined;
  }
  return match[1];
}

const tags = new Map<string, string>();
const TAGS_MAX = 10_000;

/**
 * The tag of a stream's event ids: FNV-1a (32 bits) of its key's UTF-8, in
 * base 36. Redis numbers each stream on its own, so two streams often hold
 * the same entry id (any two entries added in the same millisecond); the tag
 * tells their events apart. Two keys share a tag with odds of one in four
 * billion, and even then only an entry id that matches too is mistaken.
 * Every instance computes the same tag, with no state in Redis.
 *
 * @param key The stream's Redis key.
 * @returns One to seven characters of `[0-9a-z]`.
 */
export function streamTag(key: string): string {
  let tag = tags.get(key);
  if (tag === undefined) {
    let hash = 0x811c9dc5;
    for (const byte of new TextEncoder().encode(key)) {
      hash = Math.imul(hash ^ byte, 0x01000193);
    }
    tag = (hash >>> 0).toString(36);
    if (tags.size >= TAGS_MAX) tags.clear();
    tags.set(key, tag);
  }
  return tag;
}

/**
 * Decodes a stream entry, as another process may have written it.
 *
 * @param raw The entry as Redis returned it.
 * @param tag The stream's {@linkcode streamTag}.
 * @returns The entry, or why it is not one the broker could have written:
 * fields `topic` (a string) and `message` (JSON of an object whose fields
 * have the types of an `SSEMessage`).
 */
export function decodeEntry(
  [rawId, fields]: RawEntry,
  tag: string,
): SSEBrokerEntry | string {
  let topic: string | undefined;
  let json: string | undefined;
  for (let i = 0; i + 1 < fields.length; i += 2) {
    if (fields[i] === "topic") topic = fields[i + 1];
    else if (fields[i] === "message") json = fields[i + 1];
  }
  if (topic === undefined) return 'the field "topic" is missing';
  if (json === undefined) return 'the field "message" is missing';
  let message: unknown;
  try {
    message = JSON.parse(json);
  } catch {
    return "the message is not JSON";
  }
  if (Array.isArray(message)) return "the message is not an object";
  const entry = { id: eventId(rawId, tag), topic, message } as SSEBrokerEntry;
  const problem = entryProblem(entry);
  if (problem !== undefined) return problem;
  // The event id is the broker's, whatever a hand-written entry says.
  entry.message = withoutId(entry.message);
  return entry;
}

/**
 * The length of a string in UTF-8, without encoding it.
 *
 * @param text A string (a lone surrogate counts as U+FFFD, three bytes).
 * @returns Its bytes in UTF-8.
 */
export function utf8Length(text: string): number {
  let bytes = text.length;
  for (let i = 0; i < text.length; i++) {
    const unit = text.charCodeAt(i);
    if (unit < 0x80) continue;
    if (unit < 0x800) {
      bytes += 1;
    } else if (unit >= 0xd800 && unit < 0xdc00 && i + 1 < text.length) {
      const next = text.charCodeAt(i + 1);
      // A surrogate pair: four bytes for two units.
      if (next >= 0xdc00 && next < 0xe000) {
        bytes += 2;
        i++;
      } else {
        bytes += 2;
      }
    } else {
      bytes += 2;
    }
  }
  return bytes;
}
