// Copyright the sse authors. MIT license.
// How DenoKvBroker (kv.ts) lays a stream out in Deno KV: its keys, its ids,
// an entry split over values, reading entries back and decoding them. Private:
// never exported from mod.ts or deno.json.
//
// Keys, under the broker's prefix, for a stream `name`:
//
//   [...prefix, name, "head"]              { seq, inc, base }: the newest
//                                          entry's number, the incarnation
//   [...prefix, name, "entries", seq]      { time, json, inc, parts }: the
//                                          first bytes
//   [...prefix, name, "entries", seq, i]   the next bytes (Uint8Array), i ≥ 1
//
// where the bytes are the UTF-8 JSON of `{ topic, message }`. Every entry is
// written once, in one atomic commit with the head, so its versionstamp is
// that commit's, and an entry's parts are there whenever its header is.
//
// An incarnation of a stream begins when a publisher finds no head (a new
// stream, one whose head expired, a new database) or one it did not write:
// it draws a random tag (`inc`) and goes on after the newest entry still
// there (`base`). Each entry carries its incarnation's tag, and so does its
// id: versionstamps start over on a new database, and sequence numbers start
// over when a stream expires, so neither alone tells an entry from one of an
// earlier incarnation.

import {
  checkWellFormed,
  entryProblem,
  errorMessage,
  randomId,
  type SSEBrokerEntry,
  withoutId,
} from "./_broker.ts";

/**
 * Deno KV's limits, as Deno 2.9 sets them (`ext/kv/config.rs`) and as
 * measured here: a key of 2048 bytes (tuple-encoded), a value of 65 536 bytes
 * (serialized), 819 200 bytes of keys and values and 1000 mutations in one
 * atomic commit.
 */
export const KV_MAX_VALUE = 65_536;
export const KV_MAX_MUTATIONS = 1_000;
/**
 * What one atomic commit may hold, as Deno KV counts it (`ext/kv`, checked
 * here): every key once, the key of each `set` once more with its value;
 * and, apart, the keys of its `set`s.
 */
export const KV_MAX_COMMIT = 819_200;
export const KV_MAX_COMMIT_KEYS = 81_920;

/** The largest entry stored, in bytes of JSON (768 KiB, 13 values). */
export const MAX_ENTRY_SIZE = 786_432;
/**
 * The longest key of a stream (an entry's part: prefix, name, "entries",
 * sequence, index), in bytes. Keys count twice in a commit's 800 KiB: with
 * keys of up to 1 KiB, the head and an entry of 768 KiB fit in one commit
 * (816 367 bytes at the limit), whatever the stream's name.
 */
export const MAX_STREAM_KEY = 1_024;
/** Room in a commit for an entry's header beyond its first bytes. */
const HEADER_MARGIN = 256;

/**
 * The first bytes of an entry sit in an object with its time, whose
 * serialization adds about 50 bytes to them.
 */
const FIRST_CHUNK = KV_MAX_VALUE - HEADER_MARGIN;
/** No sequence number reaches it: the end of a stream's entry range. */
const END = Infinity;
// `<versionstamp>-<seq>.<inc>`; entries written without an incarnation (by
// an earlier version, or by hand) have ids without `.<inc>`.
const ID = /^([0-9a-f]{20})-([1-9][0-9]{0,15})(?:\.([0-9a-z]{8}))?$/;
const INC = /^[0-9a-z]{8}$/;

const encoder = new TextEncoder();
const decoder = new TextDecoder("utf-8", { fatal: true });

/** A stream's keys. */
export interface StreamKeys {
  name: string;
  head: Deno.KvKey;
  entries: Deno.KvKey;
  /** The bytes the head's key takes. */
  headSize: number;
  /** The bytes an entry's header key takes (a part's takes 9 more). */
  entrySize: number;
}

/** What a piece of an atomic commit costs against Deno KV's limits. */
export interface CommitCost {
  /** Against {@linkcode KV_MAX_COMMIT}. */
  bytes: number;
  /** Against {@linkcode KV_MAX_COMMIT_KEYS}. */
  keyBytes: number;
  /** Against {@linkcode KV_MAX_MUTATIONS}. */
  mutations: number;
}

/**
 * A stream's head: the newest entry's sequence, the incarnation's tag, and
 * the sequence after which the incarnation began.
 */
export interface Head {
  seq: number;
  inc: string;
  base: number;
  /** Of the commit that wrote it; `null` when there is none yet. */
  versionstamp: string | null;
}

/** An entry as read: its sequence, its commit, its bytes, or what is wrong. */
export interface RawEntry {
  seq: number;
  versionstamp: string;
  /** Its incarnation; `undefined` for an entry written without one. */
  inc: string | undefined;
  chunks: Uint8Array[];
  /** Why it cannot be decoded, if known already. */
  fault: string | undefined;
}

/**
 * The keys of stream `name` under `prefix`.
 *
 * @param prefix The broker's prefix.
 * @param name The stream.
 * @returns Its keys.
 * @throws {RangeError} When they would be longer than Deno KV allows.
 */
export function streamKeys(prefix: Deno.KvKey, name: string): StreamKeys {
  // The longest key is an entry's part: name, "entries", seq, index.
  const entrySize = keySize([...prefix, name, "entries"]) + 9;
  if (entrySize + 9 > MAX_STREAM_KEY) {
    throw new RangeError(
      `Invalid stream name: its Deno KV keys would take ${
        entrySize + 9
      } bytes, the limit is ${MAX_STREAM_KEY} (with the prefix), so that an entry of 768 KiB fits in one commit`,
    );
  }
  const head: Deno.KvKey = [...prefix, name, "head"];
  return {
    name,
    head,
    entries: [...prefix, name, "entries"],
    headSize: keySize(head),
    entrySize,
  };
}

/**
 * What the head's check and `set` cost in a commit.
 *
 * @param keys The stream's keys.
 * @returns The cost.
 */
export function headCost(keys: StreamKeys): CommitCost {
  // Checked, set (key twice), and a value of a few dozen bytes.
  return {
    bytes: 3 * keys.headSize + 64,
    keyBytes: keys.headSize,
    mutations: 1,
  };
}

/**
 * What an entry of `size` bytes costs in a commit: its header and parts.
 *
 * @param keys The stream's keys.
 * @param size Its bytes of JSON.
 * @returns The cost.
 */
export function entryCost(keys: StreamKeys, size: number): CommitCost {
  const parts = partCount(size);
  const keyBytes = parts * keys.entrySize + (parts - 1) * 9;
  return {
    bytes: size + HEADER_MARGIN + 2 * keyBytes,
    keyBytes,
    mutations: parts,
  };
}

/**
 * The bytes a key takes in Deno KV (tuple encoding: a type byte, the bytes
 * with NUL escaped, a terminating NUL; 9 bytes for a number).
 *
 * @param key A key.
 * @param what What to call it in an error.
 * @returns Its size.
 * @throws {TypeError} For a part that is not a key part, or a string part
 * that is not well-formed Unicode.
 */
export function keySize(key: Deno.KvKey, what = "key"): number {
  let size = 0;
  for (const part of key as unknown[]) size += partSize(part, what);
  return size;
}

function partSize(part: unknown, what: string): number {
  if (typeof part === "string") {
    checkWellFormed(part, what);
    return bytesSize(encoder.encode(part));
  }
  if (part instanceof Uint8Array) return bytesSize(part);
  if (typeof part === "number") return 9;
  if (typeof part === "boolean") return 1;
  if (typeof part === "bigint") {
    return 3 + Math.ceil((part < 0n ? -part : part).toString(16).length / 2);
  }
  throw new TypeError(
    `Invalid ${what}: a Deno KV key part is a string, number, bigint, boolean or Uint8Array, got ${typeof part}`,
  );
}

function bytesSize(bytes: Uint8Array): number {
  let size = bytes.length + 2;
  for (const byte of bytes) if (byte === 0) size++;
  return size;
}

/**
 * An entry's id: the versionstamp of its commit, a dash, its sequence, a
 * dot and its incarnation's tag (no dot and tag for an entry without one).
 *
 * @param versionstamp The commit's versionstamp (20 hex digits).
 * @param seq The entry's sequence in its stream.
 * @param inc Its incarnation's tag.
 * @returns The id.
 */
export function entryId(
  versionstamp: string,
  seq: number,
  inc: string | undefined,
): string {
  return inc === undefined
    ? `${versionstamp}-${seq}`
    : `${versionstamp}-${seq}.${inc}`;
}

/**
 * The parts of an id as {@linkcode entryId} writes them.
 *
 * @param id Any string.
 * @returns Versionstamp, sequence and incarnation, or `undefined` when it is
 * no such id.
 */
export function parseId(
  id: string,
): { versionstamp: string; seq: number; inc: string | undefined } | undefined {
  const match = ID.exec(id);
  if (match === null) return undefined;
  const seq = Number(match[2]);
  return Number.isSafeInteger(seq)
    ? { versionstamp: match[1]!, seq, inc: match[3] }
    : undefined;
}

/**
 * A new incarnation's tag: eight random characters of `[0-9a-z]`.
 *
 * @returns The tag.
 */
export function newIncarnation(): string {
  return randomId();
}

/**
 * The entry's JSON bytes.
 *
 * @param topic The topic.
 * @param message The message, without id.
 * @returns The UTF-8 JSON of `{ topic, message }`.
 */
export function encodeEntry(topic: string, message: object): Uint8Array {
  return encoder.encode(JSON.stringify({ topic, message }));
}

/**
 * How many values an entry of `size` bytes takes.
 *
 * @param size Its bytes.
 * @returns Header and parts.
 */
export function partCount(size: number): number {
  return size <= FIRST_CHUNK
    ? 1
    : 1 + Math.ceil((size - FIRST_CHUNK) / KV_MAX_VALUE);
}

/**
 * Adds an entry to an atomic operation: its header and parts.
 *
 * @param operation The commit being built.
 * @param keys The stream's keys.
 * @param seq The entry's sequence.
 * @param entry Its bytes, the time it is published (for trimming) and its
 * incarnation.
 * @param expireIn When its keys expire, in ms.
 */
export function setEntry(
  operation: Deno.AtomicOperation,
  keys: StreamKeys,
  seq: number,
  entry: { bytes: Uint8Array; time: number; inc: string },
  expireIn: number,
): void {
  const { bytes, time, inc } = entry;
  // slice, not subarray: a view would serialize its whole buffer.
  operation.set([...keys.entries, seq], {
    time,
    json: bytes.slice(0, FIRST_CHUNK),
    inc,
    parts: partCount(bytes.length) - 1,
  }, { expireIn });
  for (
    let i = 1, at = FIRST_CHUNK;
    at < bytes.length;
    i++, at += KV_MAX_VALUE
  ) {
    operation.set(
      [...keys.entries, seq, i],
      bytes.slice(at, at + KV_MAX_VALUE),
      { expireIn },
    );
  }
}

/**
 * The sequence in a head's value, if it has one: a head this version writes,
 * or one an earlier version (`{ seq }`) or another program wrote.
 *
 * @param value The head's value.
 * @returns Its `seq`.
 */
export function headSeq(value: unknown): number | undefined {
  const seq = (value as { seq?: unknown } | null)?.seq;
  return typeof seq === "number" && Number.isSafeInteger(seq) && seq >= 0
    ? seq
    : undefined;
}

/**
 * A head as stored, if it is one this version writes: `{ seq, inc, base }`.
 *
 * @param entry The head's key as read (by `get` or `watch`).
 * @returns The head, or `undefined` when there is none or it is not one.
 */
export function parseHead(entry: Deno.KvEntryMaybe<unknown>): Head | undefined {
  const { value, versionstamp } = entry;
  if (versionstamp === null) return undefined;
  const seq = headSeq(value);
  const { inc, base } = value as { inc?: unknown; base?: unknown };
  if (
    seq === undefined || typeof inc !== "string" || !INC.test(inc) ||
    typeof base !== "number" || !Number.isSafeInteger(base) || base < 0 ||
    base > seq
  ) {
    return undefined;
  }
  return { seq, inc, base, versionstamp };
}

/**
 * The time a header carries, if it is one a broker wrote.
 *
 * @param value A header's value.
 * @returns Its `time`.
 */
export function headerTime(value: unknown): number | undefined {
  const time = (value as { time?: unknown } | null)?.time;
  return typeof time === "number" ? time : undefined;
}

/**
 * The stream's head as a publisher goes on from: the stored one, or a new
 * incarnation when there is none that this version wrote (a new stream, one
 * whose head expired, a head an earlier version or another program wrote).
 * A new incarnation goes on after the newest entry still there, so that a
 * new entry never lands among expired ones that are still visible, nor
 * before an entry written by hand.
 *
 * @param kv The database.
 * @param keys The stream's keys.
 * @returns The head, whether it is the stored one (not a new
 * incarnation's), and what is wrong with the stored one when it was neither
 * absent nor a head (`undefined` otherwise).
 */
export async function readHead(
  kv: Deno.Kv,
  keys: StreamKeys,
): Promise<Head & { stored: boolean; problem: string | undefined }> {
  const stored = await kv.get(keys.head);
  const head = parseHead(stored);
  if (head !== undefined) return { ...head, stored: true, problem: undefined };
  let last = 0;
  const newest = kv.list({
    start: [...keys.entries, 1],
    end: [...keys.entries, END],
  }, { reverse: true, limit: 1 });
  for await (const entry of newest) {
    last = entry.key[keys.entries.length] as number;
  }
  const seq = headSeq(stored.value);
  let problem: string | undefined;
  if (stored.versionstamp !== null && seq === undefined) {
    problem = "expected { seq, inc, base }";
  } else if (seq !== undefined && seq < last) {
    problem = `it says entry ${seq} is the newest, but entry ${last} is there`;
  }
  const base = Math.max(last, seq ?? 0);
  return {
    seq: base,
    inc: newIncarnation(),
    base,
    versionstamp: stored.versionstamp,
    stored: false,
    problem,
  };
}

/**
 * The keys of the entries of a stream from `from` to `to` (both included),
 * oldest first: for trimming.
 *
 * @param kv The database.
 * @param keys The stream's keys.
 * @param range Sequences `from` and `to`, and `limit` on the keys listed.
 * @returns The listing (values included).
 */
export function listRange(
  kv: Deno.Kv,
  keys: StreamKeys,
  range: { from: number; to: number; limit: number },
): Deno.KvListIterator<unknown> {
  return kv.list({
    start: [...keys.entries, range.from],
    end: [...keys.entries, range.to + 1],
  }, { limit: range.limit, batchSize: Math.min(range.limit, 500) });
}

/**
 * The entries of a stream from sequence `from` to `to`, each with its parts,
 * read in pages of `batchSize` keys (each page one snapshot).
 *
 * @param kv The database.
 * @param keys The stream's keys.
 * @param range The first and last sequence (`Infinity` for no bound) and
 * the keys per page.
 * @returns The entries, oldest first. One whose parts are not all there
 * (trimmed while the read went on, or written by hand) has a `fault`, and
 * `incomplete` set.
 */
export async function* readEntries(
  kv: Deno.Kv,
  keys: StreamKeys,
  range: { from: number; to: number; batchSize: number },
): AsyncGenerator<RawEntry & { incomplete: boolean }> {
  const depth = keys.entries.length;
  let current: (RawEntry & { incomplete: boolean }) | undefined;
  /** How many parts follow the current header, when it says. */
  let parts: number | undefined;
  const finish = () => {
    const entry = current!;
    const missing = parts !== undefined && entry.chunks.length <= parts &&
      entry.fault === undefined;
    if (missing) {
      entry.fault = `part ${entry.chunks.length} of ${parts} is missing`;
      entry.incomplete = true;
    }
    return entry;
  };
  const list = kv.list({
    start: [...keys.entries, range.from],
    end: [...keys.entries, range.to + 1],
  }, { batchSize: range.batchSize });
  for await (const { key, value, versionstamp } of list) {
    const seq = key[depth];
    if (typeof seq !== "number" || !Number.isSafeInteger(seq) || seq < 1) {
      continue; // not a key a broker writes
    }
    if (key.length === depth + 1) {
      if (current !== undefined) yield finish();
      const header = (value ?? {}) as {
        json?: unknown;
        inc?: unknown;
        parts?: unknown;
      };
      const { json, inc } = header;
      parts = Number.isSafeInteger(header.parts) && header.parts as number >= 0
        ? header.parts as number
        : undefined;
      current = {
        seq,
        versionstamp,
        inc: typeof inc === "string" && INC.test(inc) ? inc : undefined,
        chunks: [],
        fault: undefined,
        incomplete: false,
      };
      if (headerTime(value) === undefined || !(json instanceof Uint8Array)) {
        current.fault = "expected { time, json }";
      } else {
        current.chunks.push(json);
      }
    } else if (current?.seq === seq && current.fault === undefined) {
      const index = key[depth + 1];
      // Parts beyond the count its header gives were not written with it.
      if (parts !== undefined && (index as number) > parts) continue;
      if (!(value instanceof Uint8Array) || index !== current.chunks.length) {
        current.fault = `part ${String(index)} is not the next bytes`;
      } else {
        current.chunks.push(value);
      }
    }
  }
  if (current !== undefined) yield finish();
}

/**
 * An entry as read, decoded.
 *
 * @param raw The entry as read.
 * @returns The entry, or why it cannot be one.
 */
export function decodeEntry(
  raw: RawEntry,
): { entry: SSEBrokerEntry } | { fault: string } {
  if (raw.fault !== undefined) return { fault: raw.fault };
  try {
    const { topic, message } = JSON.parse(decode(raw.chunks));
    const entry = {
      id: entryId(raw.versionstamp, raw.seq, raw.inc),
      topic,
      message,
    };
    const fault = entryProblem(entry);
    if (fault !== undefined) return { fault };
    // The event id is the broker's, whatever a hand-written entry says.
    entry.message = withoutId(entry.message);
    return { entry };
  } catch (error) {
    return { fault: errorMessage(error) };
  }
}

/**
 * The message of a failed database operation, for an error of the broker's:
 * a `Deno.Kv` its caller closed under the broker says so, rather than the
 * runtime's "Bad resource ID".
 *
 * @param error What the operation threw.
 * @returns The message.
 */
export function kvErrorMessage(error: unknown): string {
  if ((error as { name?: unknown } | null)?.name === "BadResource") {
    return "its Deno.Kv is closed (close the broker before it)";
  }
  return errorMessage(error);
}

/**
 * Whether an error is SQLite's "database is locked": another connection was
 * writing, so the same operation may succeed a moment later.
 *
 * @param error What was thrown.
 * @returns `true` when it is worth retrying.
 */
export function isBusy(error: unknown): boolean {
  return /database is locked|database is busy/i.test(errorMessage(error));
}

/** The UTF-8 text of the chunks; a character may span two of them. */
function decode(chunks: Uint8Array[]): string {
  if (chunks.length === 1) return decoder.decode(chunks[0]);
  const stream = new TextDecoder("utf-8", { fatal: true });
  let text = "";
  for (const [i, chunk] of chunks.entries()) {
    text += stream.decode(chunk, { stream: i < chunks.length - 1 });
  }
  return text;
}
