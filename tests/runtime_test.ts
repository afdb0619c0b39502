// Copyright the sse authors. MIT license.
// The library runs unchanged on Bun, Node (20 and 22) and Cloudflare Workers
// (workerd): the smoke checks of tests/runtime/ run on each, and what they
// return must equal their `expected` values, as it does on Deno.
//
// - Bun runs the TypeScript sources as they are.
// - Node 22 runs them with type stripping, and runs the bundle.
// - Node 20 runs the bundle (`deno bundle`, one ESM file).
// - workerd runs the bundled Worker (tests/runtime/worker.ts) through
//   Miniflare, whose HTTP layer also sends a response made by sseResponse.
//
// The runtimes come from `.ci/runtimes` (into .cache/runtimes). A missing one
// is skipped with a message, except in CI (CI=true), where it fails.

import assert from "node:assert/strict";
import { SSEParserStream } from "../parser.ts";
import {
  assertPresent,
  BUN,
  ignoreWithout,
  NODE20,
  NODE22,
  ROOT,
  runtimePackage,
  RUNTIMES,
  withBundle,
} from "./runtime/_runtimes.ts";
import { runSmokes, type ServedExpectation, SMOKES } from "./runtime/smoke.ts";

// Deno 2.9 runs tests with the op and resource sanitizers off unless asked.
const SANITIZED = { sanitizeOps: true, sanitizeResources: true } as const;

const TIMEOUT = 30_000;
const MINIFLARE_PACKAGE = runtimePackage("miniflare");

const MAIN = "tests/runtime/main.ts";
const WORKER = "tests/runtime/worker.ts";
const MINIFLARE = "tests/runtime/miniflare.mjs";

/** What a runtime prints: smoke results, and responses its server sent. */
interface Output {
  smokes: Record<string, unknown>;
  served: Record<
    string,
    { status: number; headers: Record<string, string>; body: string }
  >;
}

interface Target {
  name: string;
  /** The executables it needs. */
  needs: URL[];
  /** Whether its own HTTP server sends the `serve()` responses. */
  serves: boolean;
  /** Runs the smoke checks. */
  run(): Promise<Output>;
}

/** Runs a command from the repository root and parses its last line. */
async function runJson(bin: URL | string, args: string[]): Promise<Output> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), TIMEOUT);
  try {
    const { code, stdout, stderr } = await new Deno.Command(bin, {
      args,
      cwd: ROOT,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      signal: abort.signal,
      env: { NO_COLOR: "1" },
    }).output();
    const out = new TextDecoder().decode(stdout).trim();
    const err = new TextDecoder().decode(stderr).trim();
    const command = `${bin instanceof URL ? bin.pathname : bin} ${
      args.join(" ")
    }`;
    assert.equal(
      code,
      0,
      `${command} exited with ${code}${
        abort.signal.aborted ? ` (killed after ${TIMEOUT} ms)` : ""
      }:\n${err}\n${out}`,
    );
    const last = out.split("\n").at(-1) ?? "";
    try {
      return JSON.parse(last) as Output;
    } catch {
      throw new Error(`${command} printed no JSON:\n${out}\n${err}`);
    }
  } finally {
    clearTimeout(timer);
  }
}

const TARGETS: Target[] = [
  {
    name:
      "the library runs on Bun from its TypeScript sources, and Bun.serve sends its responses",
    needs: [BUN],
    serves: true,
    run: () => runJson(BUN, [MAIN]),
  },
  {
    name:
      "the library runs on Node 22 from its TypeScript sources (type stripping)",
    needs: [NODE22],
    serves: false,
    run: () => runJson(NODE22, ["--experimental-strip-types", MAIN]),
  },
  {
    name: "the library runs on Node 22 as one bundled ESM file",
    needs: [NODE22],
    serves: false,
    run: () => withBundle(MAIN, "main.mjs", (js) => runJson(NODE22, [js])),
  },
  {
    name: "the library runs on Node 20 as one bundled ESM file",
    needs: [NODE20],
    serves: false,
    run: () => withBundle(MAIN, "main.mjs", (js) => runJson(NODE20, [js])),
  },
  {
    name:
      "the library runs on workerd in a bundled Worker, and workerd sends its responses",
    needs: [NODE22, MINIFLARE_PACKAGE],
    serves: true,
    run: () =>
      withBundle(WORKER, "worker.js", (js) =>
        runJson(NODE22, [
          MINIFLARE,
          RUNTIMES.pathname,
          js,
          ...SMOKES.filter((smoke) => smoke.serve).map((smoke) => smoke.module),
        ])),
  },
];

/** Parses a served body as a client would. */
async function parseBody(body: string) {
  const parser = new SSEParserStream();
  const events = await Array.fromAsync(
    new Response(body).body!.pipeThrough(parser),
  );
  return { events, retry: parser.retry ?? null };
}

async function checkServed(
  runtime: string,
  module: string,
  got: Output["served"][string] | undefined,
  want: ServedExpectation,
): Promise<void> {
  assert.ok(got, `${runtime} served nothing for ${module}`);
  assert.equal(got.status, want.status, `${runtime}: ${module} status`);
  for (const [name, value] of Object.entries(want.headers)) {
    assert.equal(got.headers[name], value, `${runtime}: ${module} ${name}`);
  }
  assert.deepEqual(
    await parseBody(got.body),
    { events: want.events, retry: want.retry },
    `${runtime}: what ${module} served`,
  );
}

Deno.test(
  "the runtime smoke checks return their expected values on Deno",
  SANITIZED,
  async () => {
    const results = await runSmokes();
    for (const smoke of SMOKES) {
      assert.deepEqual(results[smoke.module], smoke.expected, smoke.module);
    }
  },
);

for (const target of TARGETS) {
  Deno.test({
    name: target.name,
    ...SANITIZED,
    ignore: ignoreWithout(target.name, target.needs),
    async fn() {
      assertPresent(target.needs);
      const output = await target.run();
      assert.deepEqual(
        Object.keys(output.smokes),
        SMOKES.map((smoke) => smoke.module),
      );
      for (const smoke of SMOKES) {
        assert.deepEqual(
          output.smokes[smoke.module],
          smoke.expected,
          `${target.name}: ${smoke.module}`,
        );
      }
      if (target.serves) {
        for (const smoke of SMOKES) {
          if (smoke.served === undefined) continue;
          await checkServed(
            target.name,
            smoke.module,
            output.served[smoke.module],
            smoke.served,
          );
        }
      }
    },
  });
}
