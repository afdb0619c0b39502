// Copyright the sse authors. MIT license.
// Deno-side helpers for the tests that run the library on other runtimes:
// where `.ci/runtimes` put them, a one-file bundle for the runtimes that cannot
// read TypeScript, and a server process that announces its port.
//
// A missing runtime is skipped with a message, except in CI (CI=true), where
// its tests fail.

import assert from "node:assert/strict";

export const ROOT: URL = new URL("../../", import.meta.url);
export const RUNTIMES: URL = new URL(".cache/runtimes/", ROOT);
export const IN_CI: boolean = Deno.env.get("CI") === "true";

export const BUN: URL = new URL("node_modules/.bin/bun", RUNTIMES);
export const NODE22: URL = new URL("node_modules/.bin/node", RUNTIMES);
export const NODE20: URL = new URL("node20/node_modules/.bin/node", RUNTIMES);

/** A package installed in .cache/runtimes by `.ci/runtimes`. */
export function runtimePackage(name: string): URL {
  return new URL(`node_modules/${name}/package.json`, RUNTIMES);
}

function exists(url: URL): boolean {
  try {
    Deno.statSync(url);
    return true;
  } catch {
    return false;
  }
}

/**
 * Whether tests that need `needs` should be ignored: outside CI when one is
 * missing (with a message saying which). In CI nothing is ignored, and the
 * test fails on {@linkcode assertPresent}.
 */
export function ignoreWithout(what: string, needs: URL[]): boolean {
  const absent = needs.filter((url) => !exists(url));
  if (absent.length === 0 || IN_CI) return false;
  console.warn(
    `skipping "${what}": ${
      absent.map((url) => url.pathname).join(", ")
    } not found; run .ci/runtimes`,
  );
  return true;
}

/** Fails when one of `needs` is missing (in CI, where nothing is skipped). */
export function assertPresent(needs: URL[]): void {
  assert.deepEqual(
    needs.filter((url) => !exists(url)).map((url) => url.pathname),
    [],
    "runtimes missing in CI: run .ci/runtimes first",
  );
}

/**
 * Bundles `entry` (a path from the repository root) into one ESM file named
 * `name` in `dir`, for the runtimes that cannot read TypeScript; its path.
 * Also used by the benchmarks that run the library on Bun and Node.
 *
 * @throws {Error} When `deno bundle` fails, with what it printed.
 */
export async function bundle(
  dir: string,
  entry: string,
  name: string,
): Promise<string> {
  const output = `${dir}/${name}`;
  const { success, stderr } = await new Deno.Command(Deno.execPath(), {
    args: [
      "bundle",
      "--quiet",
      "--platform",
      "browser",
      "--output",
      output,
      entry,
    ],
    cwd: ROOT,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  }).output();
  if (!success) {
    throw new Error(
      `deno bundle ${entry} failed:\n${new TextDecoder().decode(stderr)}`,
    );
  }
  return output;
}

/**
 * Bundles `entry` (a path from the repository root) into one ESM file named
 * `name` in a temporary folder, for `fn` only.
 */
export async function withBundle<T>(
  entry: string,
  name: string,
  fn: (path: string) => Promise<T>,
): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "sse-runtime-" });
  try {
    return await fn(await bundle(dir, entry, name));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** A server process that printed `{"port":N}` as its first line. */
export interface ServerProcess {
  /** `http://127.0.0.1:N` */
  readonly url: string;
  /** Kills it and waits; resolves to what it printed. */
  stop(): Promise<string>;
}

/** Options of {@linkcode startServer}. */
export interface StartOptions {
  /** How long it may take to print its port (ms). @default {30000} */
  wait?: number;
  /**
   * The signal `stop()` sends first; SIGKILL follows after 5 s. A process
   * with children of its own (Miniflare's workerd) needs SIGTERM to end them.
   * @default {"SIGKILL"}
   */
  stopSignal?: Deno.Signal;
}

/**
 * Starts `bin args` from the repository root and waits for the `{"port":N}`
 * line it prints once listening.
 */
export async function startServer(
  bin: URL | string,
  args: string[],
  { wait = 30_000, stopSignal = "SIGKILL" }: StartOptions = {},
): Promise<ServerProcess> {
  const child = new Deno.Command(bin, {
    args,
    cwd: ROOT,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const stdout = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let text = "";
  let port: number | undefined;
  const timer = setTimeout(() => child.kill("SIGKILL"), wait);
  try {
    while (port === undefined) {
      const { value, done } = await stdout.read();
      if (done) break;
      text += value;
      const match = text.match(/\{"port":(\d+)\}/);
      if (match) port = Number(match[1]);
    }
  } finally {
    clearTimeout(timer);
  }
  // The rest of stdout, until the process ends.
  const rest = (async () => {
    for (;;) {
      const { value, done } = await stdout.read();
      if (done) return text;
      text += value;
    }
  })();
  const command = `${bin instanceof URL ? bin.pathname : bin} ${
    args.join(" ")
  }`;
  function kill(signal: Deno.Signal): void {
    try {
      child.kill(signal);
    } catch {
      // It has already exited.
    }
  }
  async function stop(): Promise<string> {
    kill(stopSignal);
    const timer = setTimeout(() => kill("SIGKILL"), 5000);
    await child.status;
    clearTimeout(timer);
    return `${await rest}${await stderr}`;
  }
  if (port === undefined) {
    throw new Error(`${command} did not start:\n${await stop()}`);
  }
  return { url: `http://127.0.0.1:${port}`, stop };
}
