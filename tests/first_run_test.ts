// Copyright the sse authors. MIT license.
// A first run downloads only what it uses. Each test gives Deno an empty cache
// (DENO_DIR) and checks that nothing came from npm:
//
// - `deno task demo`: `deno task` installs every npm package of the lockfile
//   before any task when Deno manages the packages itself, so deno.json sets
//   `"nodeModulesDir": "manual"` and the development tasks run `deno install`
//   first;
// - importing every entry point of the library but `redis.ts` (whose one
//   dependency is the npm Redis client), as a program outside this
//   repository does.

import assert from "node:assert/strict";

// Deno 2.9 runs tests with the op and resource sanitizers off unless asked.
const SANITIZED = { sanitizeOps: true, sanitizeResources: true } as const;
const ROOT = new URL("../", import.meta.url);
const WAIT = 60_000;

/** The npm packages a Deno cache holds (`npm/<registry>/<name>`). */
async function npmPackages(denoDir: string): Promise<string[]> {
  const names: string[] = [];
  async function list(dir: string, depth: number): Promise<void> {
    try {
      for await (const entry of Deno.readDir(dir)) {
        if (!entry.isDirectory) continue;
        const path = `${dir}/${entry.name}`;
        // A scope (`@redis`) holds packages one level deeper.
        if (depth === 1 && entry.name.startsWith("@")) {
          for await (const scoped of Deno.readDir(path)) {
            names.push(`${entry.name}/${scoped.name}`);
          }
        } else if (depth === 1) names.push(entry.name);
        else await list(path, depth + 1);
      }
    } catch (error) {
      if (!(error instanceof Deno.errors.NotFound)) throw error;
    }
  }
  await list(`${denoDir}/npm`, 0);
  return names.sort();
}

/** Runs `fn` with an empty Deno cache, removed afterwards. */
async function withEmptyCache<T>(fn: (dir: string) => Promise<T>): Promise<T> {
  const dir = await Deno.makeTempDir({ prefix: "sse-deno-dir-" });
  try {
    return await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test(
  "deno task demo downloads nothing from npm on a fresh cache",
  SANITIZED,
  async () => {
    await withEmptyCache(async (denoDir) => {
      const child = new Deno.Command(Deno.execPath(), {
        args: ["task", "demo", "--port", "0"],
        cwd: ROOT,
        env: { DENO_DIR: denoDir, NO_COLOR: "1" },
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      const timer = setTimeout(() => child.kill("SIGKILL"), WAIT);
      const stderr = new Response(child.stderr).text();
      let stdout = "";
      try {
        const reader = child.stdout.pipeThrough(new TextDecoderStream())
          .getReader();
        while (!/http:\/\/127\.0\.0\.1:\d+\//.test(stdout)) {
          const { value, done } = await reader.read();
          if (done) break;
          stdout += value;
        }
        if (/http:\/\/127\.0\.0\.1:\d+\//.test(stdout)) child.kill("SIGTERM");
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          stdout += value;
        }
      } finally {
        clearTimeout(timer);
        await child.status;
      }
      const log = await stderr;
      assert.match(stdout, /http:\/\/127\.0\.0\.1:\d+\//, `${stdout}\n${log}`);
      assert.deepEqual(await npmPackages(denoDir), [], log);
      assert.doesNotMatch(log, /Download/, "what deno printed");
    });
  },
);

Deno.test(
  "every entry point but redis.ts loads from a fresh cache with no npm download",
  SANITIZED,
  async () => {
    const config = JSON.parse(
      await Deno.readTextFile(new URL("deno.json", ROOT)),
    ) as { exports: Record<string, string> };
    const entries = Object.entries(config.exports)
      .filter(([name]) => name !== "./redis")
      .map(([, path]) => new URL(path, ROOT).href);
    assert.ok(entries.length >= 7, `entry points: ${entries.join(", ")}`);
    await withEmptyCache(async (denoDir) => {
      // From outside the repository, with no config: as a program that
      // imports the library does.
      const cwd = await Deno.makeTempDir({ prefix: "sse-consumer-" });
      try {
        const program = entries.map((url) => `import ${JSON.stringify(url)};`)
          .join("\n") + '\nconsole.log("loaded");\n';
        await Deno.writeTextFile(`${cwd}/main.ts`, program);
        const { code, stdout, stderr } = await new Deno.Command(
          Deno.execPath(),
          {
            args: ["run", "--no-config", "--no-lock", "main.ts"],
            cwd,
            env: { DENO_DIR: denoDir, NO_COLOR: "1" },
            stdin: "null",
          },
        ).output();
        const out = new TextDecoder().decode(stdout);
        const log = new TextDecoder().decode(stderr);
        assert.equal(code, 0, log);
        assert.equal(out.trim(), "loaded");
        assert.deepEqual(await npmPackages(denoDir), [], log);
      } finally {
        await Deno.remove(cwd, { recursive: true });
      }
    });
  },
);
