// Copyright the sse authors. MIT license.
// Bun, Node and @hono/node-server from `.cache/runtimes` (installed by
// `.ci/runtimes`), and the library bundled for them: shared by the
// benchmarks that run the library on every runtime.

import {
  BUN,
  NODE22 as NODE,
  ROOT,
  RUNTIMES,
} from "../../tests/runtime/_runtimes.ts";

export { BUN, NODE, RUNTIMES };
/** The library bundled into one ESM file (see the tests' `bundle`). */
export { bundle as bundleLibrary } from "../../tests/runtime/_runtimes.ts";
const HONO_NODE_SERVER = new URL(
  "node_modules/@hono/node-server/package.json",
  RUNTIMES,
);

/** Whether a file exists. */
export async function exists(url: URL): Promise<boolean> {
  try {
    await Deno.stat(url);
    return true;
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return false;
    throw error;
  }
}

/** The first line a command's `--version` prints, or "missing". */
export async function version(command: string): Promise<string> {
  try {
    const { stdout } = await new Deno.Command(command, { args: ["--version"] })
      .output();
    return new TextDecoder().decode(stdout).split("\n")[0]!.trim();
  } catch {
    return "missing";
  }
}

/** Runs `.ci/runtimes` when Bun, Node or @hono/node-server is missing. */
export async function ensureRuntimes(): Promise<boolean> {
  const present = async () =>
    await exists(BUN) && await exists(NODE) && await exists(HONO_NODE_SERVER);
  if (await present()) return true;
  console.error("Installing Bun, Node and @hono/node-server: .ci/runtimes");
  try {
    await new Deno.Command("bash", {
      args: [new URL(".ci/runtimes", ROOT).pathname],
      cwd: ROOT,
      stdout: "null",
      stderr: "inherit",
    }).output();
  } catch {
    return false;
  }
  return await present();
}
