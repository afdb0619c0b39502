// Copyright the sse authors. MIT license.
// The publishing side of one stream of a DenoKvBroker (kv.ts): a queue of
// publishes committed in order, as many per atomic commit as Deno KV's limits
// allow, after the stream's head; then the trimming of old entries. Private:
// never exported from mod.ts or deno.json.

import {
  entryCost,
  entryId,
  type Head,
  headCost,
  headerTime,
  isBusy,
  KV_MAX_COMMIT,
  KV_MAX_COMMIT_KEYS,
  KV_MAX_MUTATIONS,
  kvErrorMessage,
  listRange,
  setEntry,
  type StreamKeys,
} from "./_kv_store.ts";
import { Pause } from "./_pause.ts";

/** One publish waiting for its commit. */
export interface Pending {
  /** The entry's JSON bytes. */
  bytes: Uint8Array;
  /** How many entries the stream keeps. */
  replay: number;
  resolve: (id: string) => void;
  reject: (error: unknown) => void;
}

/** What a {@linkcode StreamWriter} needs from its broker. */
export interface StreamWriterOptions {
  kv: Deno.Kv;
  /** When the keys written expire, in ms. */
  expireIn: number;
  /** How old an entry beyond `replay` must be to go, in ms. */
  trimDelay: number;
  /** Reads the stream's head (reporting one the broker did not write). */
  readHead: (keys: StreamKeys) => Promise<Head>;
  /** Told the head after each commit. */
  committed: (head: Head) => void;
  /** Reports a failure no caller can be told of. */
  fault: (error: unknown, context: string) => void;
}

/** Commits that lost the race in a row before `publish` gives up. */
const MAX_ATTEMPTS = 50;

/** The publishing side of one stream: its queue, head and trimming state. */
export class StreamWriter {
  #keys: StreamKeys;
  #options: StreamWriterOptions;
  #queue: Pending[] = [];
  #running = false;
  #closed = false;
  /** As left by the last commit; read again when another publisher wrote. */
  #head: Head | undefined;
  /** The incarnation of the entries this writer wrote or trimmed. */
  #inc: string | undefined;
  /** Every entry up to this sequence is known to be deleted. */
  #trimmed = 0;
  /** No entry beyond `replay` is old enough to trim before this time. */
  #trimAt = 0;
  /** The most keys one trimming commit deletes. */
  #deletes: number;
  /** The wait between two attempts, cancelled by `close()`. */
  #pause = new Pause();

  /**
   * A writer for one stream.
   *
   * @param keys The stream's keys.
   * @param options What it needs from its broker.
   */
  constructor(keys: StreamKeys, options: StreamWriterOptions) {
    this.#keys = keys;
    this.#options = options;
    // A delete counts its key against the commit's bytes: long keys allow
    // fewer than the 1 000 mutations.
    this.#deletes = Math.min(
      KV_MAX_MUTATIONS,
      Math.floor(KV_MAX_COMMIT / (keys.entrySize + 9)),
    );
  }

  /**
   * Queues a publish.
   *
   * @param pending The entry and how to settle its promise.
   * @returns The work started for the queue, when none was running: the
   * broker waits for it on close.
   */
  publish(pending: Pending): Promise<void> | undefined {
    this.#queue.push(pending);
    if (this.#running) return undefined;
    return this.#write();
  }

  /** Whether it has nothing to commit: it can be dropped. */
  get idle(): boolean {
    return !this.#running && this.#queue.length === 0;
  }

  /** Rejects what is queued and cuts a wait short; a commit in flight ends. */
  close(): void {
    this.#closed = true;
    this.#pause.cancel();
    for (const pending of this.#queue.splice(0)) {
      pending.reject(new TypeError("Cannot publish: broker is closed"));
    }
  }

  /** Commits the queued publishes, as many per commit as fit. */
  async #write(): Promise<void> {
    this.#running = true;
    try {
      while (this.#queue.length > 0) {
        const batch = this.#batch();
        let ids: string[];
        try {
          ids = await this.#commit(batch);
        } catch (error) {
          const failure = this.#closed
            ? new TypeError("Cannot publish: broker is closed")
            : new Error(
              `Cannot publish to ${JSON.stringify(this.#keys.name)}: ${
                kvErrorMessage(error)
              }`,
              { cause: error },
            );
          for (const pending of batch) pending.reject(failure);
          continue;
        }
        for (const [i, pending] of batch.entries()) pending.resolve(ids[i]!);
        this.#options.committed(this.#head!);
        if (!this.#closed) await this.#trim(batch.at(-1)!.replay);
      }
    } finally {
      this.#running = false;
    }
  }

  /**
   * Takes the queued publishes that fit in one commit, as Deno KV counts
   * it: its bytes (keys twice), its keys, its mutations.
   */
  #batch(): Pending[] {
    let { bytes, keyBytes, mutations } = headCost(this.#keys);
    let count = 0;
    for (const pending of this.#queue) {
      const cost = entryCost(this.#keys, pending.bytes.length);
      if (
        count > 0 && (bytes + cost.bytes > KV_MAX_COMMIT ||
          keyBytes + cost.keyBytes > KV_MAX_COMMIT_KEYS ||
          mutations + cost.mutations > KV_MAX_MUTATIONS)
      ) break;
      bytes += cost.bytes;
      keyBytes += cost.keyBytes;
      mutations += cost.mutations;
      count++;
    }
    return this.#queue.splice(0, count);
  }

  /**
   * Commits the batch after the stream's head, retrying while another
   * publisher moved the head meanwhile, or held the database (SQLite answers
   * "database is locked" when two connections write at once): both pass.
   */
  async #commit(batch: Pending[]): Promise<string[]> {
    for (let attempt = 1;; attempt++) {
      let ids: string[] | undefined;
      try {
        ids = await this.#attempt(batch);
      } catch (error) {
        if (!isBusy(error) || attempt === MAX_ATTEMPTS) throw error;
      }
      if (ids !== undefined) return ids;
      this.#head = undefined;
      if (this.#closed) throw new TypeError("Cannot publish: broker is closed");
      if (attempt === MAX_ATTEMPTS) {
        throw new Error(
          `${attempt} commits in a row lost the race to other publishers`,
        );
      }
      await this.#pause.wait(Math.random() * Math.min(2 ** attempt, 100));
    }
  }

  /**
   * One atomic commit of the batch after the head this writer knows, checked
   * against the head's versionstamp.
   *
   * @returns The ids, or `undefined` when the head moved.
   */
  async #attempt(batch: Pending[]): Promise<string[] | undefined> {
    const keys = this.#keys;
    const { kv, expireIn } = this.#options;
    const head = this.#head ??= await this.#readHead();
    const { inc, base } = head;
    const operation = kv.atomic().check({
      key: keys.head,
      versionstamp: head.versionstamp,
    });
    let seq = head.seq;
    const seqs: number[] = [];
    const time = Date.now();
    for (const { bytes } of batch) {
      seqs.push(++seq);
      setEntry(operation, keys, seq, { bytes, time, inc }, expireIn);
    }
    operation.set(keys.head, { seq, inc, base }, { expireIn });
    const result = await operation.commit();
    if (!result.ok) return undefined;
    const { versionstamp } = result;
    this.#head = { seq, inc, base, versionstamp };
    return seqs.map((seq) => entryId(versionstamp, seq, inc));
  }

  /** The head as stored (or a new incarnation's), for the next commit. */
  async #readHead(): Promise<Head> {
    const head = await this.#options.readHead(this.#keys);
    // Another incarnation: its entries are numbered from its base again, so
    // what was trimmed of the previous one says nothing about them.
    if (head.inc !== this.#inc) {
      this.#inc = head.inc;
      this.#trimmed = Math.min(this.#trimmed, head.base);
      this.#trimAt = 0;
    }
    return head;
  }

  /**
   * Deletes the entries beyond the newest `replay` that are at least
   * `trimDelay` old, once a tenth of `replay` (at least one) can go, oldest
   * first, at most one commit's worth at a time: an entry still there is
   * followed by every later one.
   */
  async #trim(replay: number): Promise<void> {
    const { kv, trimDelay } = this.#options;
    const floor = this.#head!.seq - replay;
    const step = Math.max(1, Math.ceil(replay / 10));
    const now = Date.now();
    if (floor - this.#trimmed < step || now < this.#trimAt) return;
    const depth = this.#keys.entries.length;
    const old = now - trimDelay;
    let doomed: Deno.KvKey[] = [];
    // Everything up to `floor` goes, unless the scan stops earlier.
    let last = floor;
    try {
      const list = listRange(kv, this.#keys, {
        from: this.#trimmed + 1,
        to: floor,
        limit: this.#deletes,
      });
      for await (const { key, value } of list) {
        const time = headerTime(value);
        // An entry dated more than trimDelay ahead was written by a clock
        // this one cannot compare with (set back since, or another
        // instance's, running fast): its age is unknown, so it counts as
        // old. Else no trim would run here until this clock caught up (an
        // hour after a clock set back an hour), the stream growing meanwhile.
        if (
          key.length === depth + 1 && time !== undefined && time > old &&
          time <= now + trimDelay
        ) {
          // Too young: try again when it is old enough.
          this.#trimAt = time + trimDelay;
          last = (key[depth] as number) - 1;
          break;
        }
        doomed.push(key);
      }
      if (last === floor && doomed.length === this.#deletes) {
        // A full page: its last entry may have more parts; it goes next time.
        last = (doomed.at(-1)![depth] as number) - 1;
        doomed = doomed.filter((key) => (key[depth] as number) <= last);
      }
      if (doomed.length > 0) {
        const operation = kv.atomic();
        for (const key of doomed) operation.delete(key);
        await operation.commit();
      }
      this.#trimmed = Math.max(this.#trimmed, last);
    } catch (error) {
      this.#options.fault(
        error,
        `Cannot trim ${JSON.stringify(this.#keys.name)}`,
      );
    }
  }
}
