// Copyright the sse authors. MIT license.
// What the command-line tools (the `sse` command, the demo) say about an
// argument that `node:util`'s `parseArgs` refused: one line naming it,
// whatever parseArgs wrote (its message for a value that starts with "-"
// takes three lines). Private: never exported from mod.ts or deno.json.

/**
 * The message of a `parseArgs` error, in one line that names the argument.
 *
 * @param error What `parseArgs` threw.
 * @returns The line, without a final period.
 */
export function argumentError(error: unknown): string {
  const { code, message = String(error) } = error as {
    code?: string;
    message?: string;
  };
  const name = /'([^']*)'/.exec(message)?.[1];
  if (name !== undefined) {
    if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") {
      return `Unknown option: ${name}`;
    }
    if (message.includes("ambiguous")) {
      return `Ambiguous value for ${name}: write ${name}=<value> for a value that starts with "-"`;
    }
  }
  return message.replace(/\s*\n\s*/g, " ").replace(/\.$/, "");
}
