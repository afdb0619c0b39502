// Copyright the sse authors. MIT license.
// The README's Benchmarks section is generated: the part of bench/results.md
// between its readme markers, copied between the README's bench markers.
//
//   deno run -A bench/readme.ts           copy it (bench/run.ts does this)
//   deno run -A bench/readme.ts --check   fail if the README differs from it

import { readArgs } from "./_args.ts";
import { README_END, README_START } from "./_results.ts";

const ROOT = new URL("../", import.meta.url);
const README = new URL("README.md", ROOT);
const RESULTS = new URL("bench/results.md", ROOT);

export const BENCH_START = "<!-- bench:start -->";
export const BENCH_END = "<!-- bench:end -->";

function between(text: string, start: string, end: string, file: string) {
  const from = text.indexOf(start);
  const to = text.indexOf(end);
  if (from < 0 || to < from) {
    throw new SyntaxError(
      `Invalid ${file}: expected ${start} followed by ${end}`,
    );
  }
  return { before: text.slice(0, from), after: text.slice(to + end.length) };
}

async function format(text: string): Promise<string> {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["fmt", "--ext", "md", "-"],
    cwd: ROOT,
    stdin: "piped",
    stdout: "piped",
  }).spawn();
  const writer = output.stdin.getWriter();
  await writer.write(new TextEncoder().encode(text));
  await writer.close();
  const { success, stdout } = await output.output();
  if (!success) throw new Error("deno fmt failed on the generated README");
  return new TextDecoder().decode(stdout);
}

/** The README with its Benchmarks section taken from bench/results.md. */
export async function generatedReadme(): Promise<string> {
  const results = await Deno.readTextFile(RESULTS);
  const readme = await Deno.readTextFile(README);
  const from = results.indexOf(README_START);
  const to = results.indexOf(README_END);
  if (from < 0 || to < from) {
    throw new SyntaxError(
      `Invalid bench/results.md: expected ${README_START} followed by ${README_END}`,
    );
  }
  const body = results.slice(from + README_START.length, to).trim();
  const { before, after } = between(
    readme,
    BENCH_START,
    BENCH_END,
    "README.md",
  );
  return await format(
    `${before}${BENCH_START}\n\n${body}\n\n${BENCH_END}${after}`,
  );
}

/** Copies bench/results.md's section into the README. */
export async function updateReadme(): Promise<void> {
  await Deno.writeTextFile(README, await generatedReadme());
}

if (import.meta.main) {
  if (readArgs({ check: { type: "boolean" } }).check === true) {
    if (await generatedReadme() !== await Deno.readTextFile(README)) {
      console.error(
        "README.md's Benchmarks section differs from bench/results.md: run `deno run -A bench/readme.ts`",
      );
      Deno.exit(1);
    }
    console.error("README.md's Benchmarks section matches bench/results.md");
  } else {
    await updateReadme();
  }
}
