// Copyright the sse authors. MIT license.
// Child processes for the fan-out bench and probes: JSON lines on stdout read
// in the background, stderr kept, and an awaited stop on every path.

const ROOT = new URL("../../", import.meta.url);

/**
 * The lines a child reads from its stdin (its parent's commands), trimmed,
 * one at a time, until the parent closes it.
 */
export async function* stdinLines(): AsyncGenerator<string> {
  let pending = "";
  for await (
    const text of Deno.stdin.readable.pipeThrough(new TextDecoderStream())
  ) {
    pending += text;
    let newline: number;
    while ((newline = pending.indexOf("\n")) !== -1) {
      yield pending.slice(0, newline).trim();
      pending = pending.slice(newline + 1);
    }
  }
}

/** Every child still running, so that Ctrl-C can end them too. */
export const live: Set<Child> = new Set();

/** A child process whose stdout is JSON lines, read in the background. */
export class Child {
  readonly name: string;
  #process: Deno.ChildProcess;
  #messages: Record<string, unknown>[] = [];
  #waiters = new Set<() => void>();
  #stderr = "";
  #done: Promise<unknown>;
  #ended = false;
  #stdin: WritableStreamDefaultWriter<Uint8Array>;

  constructor(name: string, argv: string[]) {
    this.name = name;
    // The file-descriptor limit goes to the hard limit in the child's own
    // shell: 10 000 sockets need more than the usual soft limit of 1 024.
    this.#process = new Deno.Command("bash", {
      args: ["-c", 'ulimit -n "$(ulimit -Hn)" && exec "$@"', "bash", ...argv],
      cwd: ROOT,
      stdin: "piped",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    this.#stdin = this.#process.stdin.getWriter();
    live.add(this);
    // Settles, never rejects, once the process has exited and both pipes ended.
    this.#done = Promise.allSettled([
      this.#readStdout(),
      this.#readStderr(),
      this.#process.status,
    ]).then(() => {
      this.#ended = true;
      live.delete(this);
      this.#wake();
    });
  }

  get stderr(): string {
    return this.#stderr;
  }

  async #readStdout(): Promise<void> {
    let pending = "";
    for await (
      const text of this.#process.stdout.pipeThrough(new TextDecoderStream())
    ) {
      pending += text;
      let newline: number;
      while ((newline = pending.indexOf("\n")) !== -1) {
        const line = pending.slice(0, newline);
        pending = pending.slice(newline + 1);
        if (!line.startsWith("{")) continue;
        this.#messages.push(JSON.parse(line));
        this.#wake();
      }
    }
  }

  async #readStderr(): Promise<void> {
    for await (
      const text of this.#process.stderr.pipeThrough(new TextDecoderStream())
    ) {
      if (this.#stderr.length < 20_000) this.#stderr += text;
    }
  }

  #wake(): void {
    for (const waiter of this.#waiters) waiter();
  }

  /** Resolves with the first stdout message of `type`, or rejects after `ms`. */
  async message(type: string, ms: number): Promise<Record<string, unknown>> {
    const deadline = Date.now() + ms;
    while (true) {
      const index = this.#messages.findIndex((message) =>
        message.type === type
      );
      if (index !== -1) return this.#messages.splice(index, 1)[0]!;
      if (this.#ended) {
        throw new Error(
          `${this.name} exited before "${type}": ${this.#stderr}`,
        );
      }
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`${this.name}: no "${type}" in ${ms} ms`);
      const { promise, resolve } = Promise.withResolvers<void>();
      const timer = setTimeout(resolve, left);
      this.#waiters.add(resolve);
      await promise;
      clearTimeout(timer);
      this.#waiters.delete(resolve);
    }
  }

  async send(line: string): Promise<void> {
    if (this.#ended) return;
    await this.#stdin.write(new TextEncoder().encode(line + "\n")).catch(
      () => {},
    );
  }

  /**
   * Ends the process and awaits it: stdin closed, `graceMs` to exit on its own,
   * then SIGTERM, then SIGKILL.
   */
  async stop(graceMs: number): Promise<void> {
    await this.#stdin.close().catch(() => {});
    const settled = async (ms: number) => {
      let timer: ReturnType<typeof setTimeout> | undefined;
      const timeout = new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), ms);
      });
      const done = await Promise.race([this.#done.then(() => true), timeout]);
      clearTimeout(timer);
      return done;
    };
    if (await settled(graceMs)) return;
    for (const signal of ["SIGTERM", "SIGKILL"] as const) {
      try {
        this.#process.kill(signal);
      } catch {
        // Already gone.
      }
      if (await settled(5000)) return;
    }
    await this.#done;
  }
}
