// Copyright the sse authors. MIT license.
// What the README's Install section promises: every `@sse/sse` specifier in
// the README and the examples names an export of the package (so it resolves
// after `deno add jsr:@sse/sse` or `npx jsr add @sse/sse`), and every relative
// link and image in the README resolves to a file the package ships (JSR shows
// the README on the package page, where files that `publish.exclude` drops do
// not exist).

import assert from "node:assert/strict";

// Deno 2.9 runs tests with the op and resource sanitizers off unless asked.
const SANITIZED = { sanitizeOps: true, sanitizeResources: true } as const;
const ROOT = new URL("../", import.meta.url);

interface Config {
  name: string;
  exports: Record<string, string>;
  publish: { exclude: string[] };
}

const config = JSON.parse(
  await Deno.readTextFile(new URL("deno.json", ROOT)),
) as Config;
const readme = await Deno.readTextFile(new URL("README.md", ROOT));

/** The files under `dir` (a path from the root) whose names end in `ext`. */
async function filesUnder(dir: string, ext: string): Promise<string[]> {
  const found: string[] = [];
  for await (const entry of Deno.readDir(new URL(`${dir}/`, ROOT))) {
    const path = `${dir}/${entry.name}`;
    if (entry.isDirectory) found.push(...await filesUnder(path, ext));
    else if (entry.name.endsWith(ext)) found.push(path);
  }
  return found;
}

/** Every `@sse/sse...` module specifier in `text`, with or without `jsr:`. */
function specifiers(text: string): string[] {
  const pattern = new RegExp(
    `(?:jsr:)?${config.name.replace("/", "\\/")}(?:\\/[\\w-]+)?(?=["'\\s]|$)`,
    "gm",
  );
  return [...text.matchAll(pattern)].map((match) =>
    match[0].replace(/^jsr:/, "")
  );
}

/** Whether `publish.exclude` drops `path` ("!path" entries keep it). */
function shipped(path: string): boolean {
  const matches = (pattern: string) =>
    pattern.endsWith("/") ? path.startsWith(pattern) : path === pattern;
  const excluded = config.publish.exclude.filter((p) => !p.startsWith("!"));
  const kept = config.publish.exclude.filter((p) => p.startsWith("!"))
    .map((p) => p.slice(1));
  return !excluded.some(matches) || kept.some(matches);
}

Deno.test(
  "every @sse/sse specifier in the README and the examples is an export of the package",
  SANITIZED,
  async () => {
    const exported = new Set(
      Object.keys(config.exports).map((key) =>
        key === "." ? config.name : `${config.name}/${key.slice(2)}`
      ),
    );
    const sources: [string, string][] = [["README.md", readme]];
    for (const path of await filesUnder("examples", ".ts")) {
      sources.push([path, await Deno.readTextFile(new URL(path, ROOT))]);
    }
    let count = 0;
    for (const [path, text] of sources) {
      for (const specifier of specifiers(text)) {
        count++;
        assert.ok(
          exported.has(specifier),
          `${path}: ${specifier} is not an export (${
            [...exported].join(", ")
          })`,
        );
      }
    }
    assert.ok(count >= 15, `only ${count} specifiers found`);
  },
);

Deno.test(
  "every relative link and image in the README resolves to a file the package ships",
  SANITIZED,
  async () => {
    const targets = [...readme.matchAll(/!?\[[^\]]*\]\(([^)\s]+)\)/g)]
      .map((match) => match[1]!)
      .filter((target) => !/^(?:[a-z]+:|#)/.test(target));
    assert.ok(targets.length >= 3, `relative links: ${targets.join(", ")}`);
    for (const target of targets) {
      const path = target.replace(/^\.\//, "").replace(/#.*$/, "");
      const stat = await Deno.stat(new URL(path, ROOT));
      assert.ok(stat.isFile, `${target} is not a file`);
      assert.ok(shipped(path), `${target} is dropped by publish.exclude`);
    }
  },
);
