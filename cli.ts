// Copyright the sse authors. MIT license.
/**
 * `sse`: follow a Server-Sent Events stream from the command line, with the
 * resumable {@linkcode SSEClient} (reconnects with `Last-Event-ID`, honours
 * `retry`, backs off on failures).
 *
 * ```sh
 * deno run --allow-net jsr:@sse/sse/cli https://example.com/events
 * deno run --allow-net jsr:@sse/sse/cli --json --count=10 -H "authorization: Bearer x" URL
 * deno run --allow-net jsr:@sse/sse/cli -X POST -d '{"stream":true}' --until '[DONE]' URL
 * ```
 *
 * Each event is printed as `event: <type>`, `id: <id>` (when set; an empty
 * `id:` when the stream reset it, so that the output parses back to the same
 * IDs) and its `data` lines followed by a blank line, or, with `--json`, as
 * one JSON object per line. On a terminal, control characters from the server
 * (C0 but tab, DEL, C1: the escape sequences that set a terminal's title or
 * clear its screen) are shown escaped, as `\x1b` (`\u007f` in JSON); to a pipe
 * or a file they are written as they came. Options are read by `node:util`'s
 * `parseArgs`: `--count=3`, `-n3` and `--` work as usual.
 *
 * Standard error gets one line per reconnection, saying why (`sse:
 * reconnecting in 250 ms (Unexpected status 503: retrying)`), and, on an
 * error that ends the stream, its message and the first lines of what the
 * server said (the response body, at most 5 lines of 200 characters), with
 * control characters escaped as `\xNN`.
 *
 * Exit status: 0 when the stream ends for good (204, `--count` reached,
 * `--until` seen, a stream with a request body ended, or the reader of the
 * output went away, as with `| head`), 1 on an error such as a 401, 2 on a bad
 * argument (one line on stderr names it), 130 on Ctrl-C.
 *
 * @example Run it from code
 * ```ts ignore
 * import { main } from "@sse/sse/cli";
 *
 * Deno.exit(await main(["--count", "1", "http://127.0.0.1:8000/events"]));
 * ```
 *
 * @module
 */

import { parseArgs as parseCommandLine } from "node:util";
import { argumentError } from "./_args.ts";
import { SSEClient, type SSEClientOptions, SSEError } from "./client.ts";
import type { SSEEvent } from "./parser.ts";

export type { ResponseVerdict, SSEClientOptions } from "./client.ts";
export type { SSEEvent } from "./parser.ts";

// The package version, checked against deno.json by the tests.
const VERSION = "0.1.0";

const USAGE = `Usage: sse [options] <url>

Follows a Server-Sent Events stream and prints its events.

Options:
  -H, --header "name: value"  request header (repeatable)
  -X, --method METHOD         request method (default GET, POST with -d)
  -d, --data BODY             request body, sent once (see --resend)
      --resend                with -d: reconnect, sending the body again
      --last-event-id ID      resume after this event ID
      --retry MS              initial reconnection delay (default 3000)
      --idle-timeout MS       reconnect after this long without any byte
      --max-retries N         give up after N failed attempts in a row
  -n, --count N               exit after N events
      --until DATA            exit after an event whose data is exactly DATA
  -t, --type TYPE             print only events of this type (repeatable)
      --json                  one JSON object per event: {"type","data","id"}
  -h, --help                  show this help
  -V, --version               show the version

Exit status: 0 done, 1 error, 2 bad argument, 130 interrupted.
`;

/** What {@linkcode parseArgs} understood from the command line. */
export interface CLIOptions {
  /** The stream's URL. */
  url: string;
  /** Options for the {@linkcode SSEClient}. */
  client: SSEClientOptions;
  /** Exit after this many printed events. */
  count?: number;
  /** Exit after an event whose data is exactly this. */
  until?: string;
  /** Print only these event types (all when empty). */
  types: string[];
  /** Print JSON lines instead of the event-stream form. */
  json: boolean;
}

const OPTIONS = {
  header: { type: "string", short: "H", multiple: true },
  method: { type: "string", short: "X" },
  data: { type: "string", short: "d" },
  resend: { type: "boolean" },
  "last-event-id": { type: "string" },
  retry: { type: "string" },
  "idle-timeout": { type: "string" },
  "max-retries": { type: "string" },
  count: { type: "string", short: "n" },
  until: { type: "string" },
  type: { type: "string", short: "t", multiple: true },
  json: { type: "boolean" },
  help: { type: "boolean", short: "h" },
  version: { type: "boolean", short: "V" },
} as const;

/**
 * Parses the command line of `sse`, with `node:util`'s `parseArgs`.
 *
 * @example Parse a command line
 * ```ts
 * import { parseArgs } from "@sse/sse/cli";
 * import assert from "node:assert/strict";
 *
 * const options = parseArgs(["-n3", "--json", "http://127.0.0.1:8000/events"]);
 * assert.ok(typeof options === "object");
 * assert.equal(options.count, 3);
 * assert.equal(options.json, true);
 * ```
 *
 * @param args The arguments, without the program name.
 * @returns The options, or `"help"` or `"version"` when those were asked for.
 * @throws {TypeError} On an unknown option, a missing or malformed value, a
 * missing URL or one that is not http: or https:, or a second URL. Each
 * message is one line that names the argument.
 */
export function parseArgs(args: string[]): CLIOptions | "help" | "version" {
  let parsed;
  try {
    parsed = parseCommandLine({
      args,
      options: OPTIONS,
      allowPositionals: true,
      strict: true,
    });
  } catch (error) {
    throw new TypeError(argumentError(error));
  }
  const { values, positionals } = parsed;
  if (values.help) return "help";
  if (values.version) return "version";

  const [url, extra] = positionals;
  if (url === undefined) {
    throw new TypeError("Missing URL: sse [options] <url>");
  }
  if (extra !== undefined) {
    throw new TypeError(`Unexpected argument: ${extra} (the URL is ${url})`);
  }
  let parsedURL: URL;
  try {
    parsedURL = new URL(url);
  } catch {
    throw new TypeError(`Invalid URL: ${url}`);
  }
  if (parsedURL.protocol !== "http:" && parsedURL.protocol !== "https:") {
    throw new TypeError(
      `Invalid URL: expected http: or https:, got ${parsedURL.protocol}`,
    );
  }

  const headers = new Headers();
  for (const header of values.header ?? []) {
    const colon = header.indexOf(":");
    if (colon <= 0) {
      throw new TypeError(
        `Invalid --header: expected "name: value", got ${
          JSON.stringify(header)
        }`,
      );
    }
    try {
      headers.append(
        header.slice(0, colon).trim(),
        header.slice(colon + 1).trim(),
      );
    } catch (error) {
      throw new TypeError(
        `Invalid --header ${JSON.stringify(header)}: ${
          (error as Error).message
        }`,
      );
    }
  }
  if (values.resend && values.data === undefined) {
    throw new TypeError(
      "Invalid --resend: it sends the body again, so it needs --data",
    );
  }
  const client: SSEClientOptions = { headers };
  if (values.method !== undefined) client.method = values.method;
  if (values.data !== undefined) {
    client.body = values.data;
    client.method ??= "POST";
  }
  const lastEventId = values["last-event-id"];
  if (lastEventId !== undefined) {
    if (/[\0\n\r]/.test(lastEventId)) {
      throw new TypeError(
        `Invalid --last-event-id: an ID cannot contain NUL, CR or LF, got ${
          JSON.stringify(lastEventId)
        }`,
      );
    }
    const header = headers.get("last-event-id");
    if (header !== null && header !== lastEventId) {
      throw new TypeError(
        `Invalid --last-event-id: ${
          JSON.stringify(lastEventId)
        } contradicts the Last-Event-ID header given with --header (${
          JSON.stringify(header)
        }): give one of them`,
      );
    }
    client.lastEventId = lastEventId;
  }
  if (values.retry !== undefined) {
    client.retry = milliseconds("--retry", values.retry, 0);
  }
  if (values["idle-timeout"] !== undefined) {
    client.idleTimeout = milliseconds(
      "--idle-timeout",
      values["idle-timeout"],
      Number.MIN_VALUE,
    );
  }
  if (values["max-retries"] !== undefined) {
    client.maxRetries = integer("--max-retries", values["max-retries"]);
  } else if (values.data !== undefined && !values.resend) {
    // A body (a prompt, an order) is sent once unless asked otherwise: not
    // again when the stream ends, nor after a failure.
    client.maxRetries = 0;
  }

  const options: CLIOptions = {
    url,
    client,
    types: values.type ?? [],
    json: values.json ?? false,
  };
  if (values.count !== undefined) {
    options.count = integer("--count", values.count);
  }
  if (values.until !== undefined) options.until = values.until;
  return options;
}

function integer(name: string, text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(n)) {
    throw new TypeError(
      `Invalid ${name}: expected a non-negative integer, got ${
        JSON.stringify(text)
      }`,
    );
  }
  return n;
}

function milliseconds(name: string, text: string, least: number): number {
  const n = Number(text);
  if (text.trim() === "" || !(n >= least) || n === Infinity) {
    const kind = least > 0 ? "positive" : "non-negative";
    throw new TypeError(
      `Invalid ${name}: expected a ${kind} number of milliseconds, got ${
        JSON.stringify(text)
      }`,
    );
  }
  return n;
}

/** How {@linkcode formatEvent} writes an event. */
export interface FormatOptions {
  /**
   * One JSON object per line instead of the event-stream form.
   *
   * @default {false}
   */
  json?: boolean;
  /**
   * The ID of the event printed before, if any: when the event's ID is `""`
   * and this one is not, an empty `id:` line says that the stream reset it,
   * so that the output parses back to the same IDs.
   *
   * @default {""}
   */
  previousId?: string;
  /**
   * Writes control characters (C0 but tab, DEL, C1) visibly, for a terminal,
   * which would otherwise obey the escape sequences a server sends (set its
   * title, clear its screen): `\x1b` in the event-stream form, `\u007f` in
   * JSON (which escapes C0 itself).
   *
   * @default {false}
   */
  escape?: boolean;
}

/**
 * Formats one event as `sse` prints it.
 *
 * @example Format an event
 * ```ts
 * import { formatEvent } from "@sse/sse/cli";
 * import assert from "node:assert/strict";
 *
 * const event = { type: "message", data: "a\nb", id: "7" };
 * assert.equal(formatEvent(event, false), "event: message\nid: 7\ndata: a\ndata: b\n\n");
 * assert.equal(formatEvent(event, true), '{"type":"message","data":"a\\nb","id":"7"}\n');
 * // The stream reset the ID: an empty id line says so.
 * assert.equal(
 *   formatEvent({ type: "message", data: "c", id: "" }, { previousId: "7" }),
 *   "event: message\nid:\ndata: c\n\n",
 * );
 * ```
 *
 * @param event The event.
 * @param options How to write it; `true` or `false` is `{ json }`.
 * @returns The text to print, ending with a line break.
 */
export function formatEvent(
  event: SSEEvent,
  options: boolean | FormatOptions,
): string {
  const { json = false, previousId = "", escape = false } =
    typeof options === "boolean" ? { json: options } : options;
  if (json) {
    const line = JSON.stringify({
      type: event.type,
      data: event.data,
      id: event.id,
    });
    // JSON escapes C0 (tab too); DEL and C1 are left to escape here.
    return (escape ? line.replace(UNESCAPED_BY_JSON, unicodeEscape) : line) +
      "\n";
  }
  const show = escape ? visible : (text: string) => text;
  let out = `event: ${show(event.type)}\n`;
  if (event.id !== "") out += `id: ${show(event.id)}\n`;
  else if (previousId !== "") out += "id:\n";
  for (const line of event.data.split("\n")) out += `data: ${show(line)}\n`;
  return out + "\n";
}

/**
 * Runs `sse` with the given arguments, printing events to standard output
 * and one line per problem to standard error.
 *
 * @example Print the first event of a stream
 * ```ts ignore
 * import { main } from "@sse/sse/cli";
 *
 * const code = await main(["-n1", "http://127.0.0.1:8000/events"]);
 * ```
 *
 * @param args The arguments, without the program name.
 * @param signal Stops following the stream when aborted, at once, even while
 * standard output is blocked (exit code 0).
 * @returns The exit code: 0 done (also when standard output was closed), 1
 * error, 2 bad argument.
 */
export async function main(
  args: string[],
  signal?: AbortSignal,
): Promise<number> {
  let options: CLIOptions | "help" | "version";
  let client: SSEClient;
  try {
    options = parseArgs(args);
    if (options === "help" || options === "version") {
      await write(new TextEncoder().encode(
        options === "help" ? USAGE : `sse ${VERSION}\n`,
      ));
      return 0;
    }
    if (options.count === 0) return 0;
    // Each reconnection is one line saying why. An error that no retry
    // follows at once (an ID left out of Last-Event-ID) gets its own line;
    // the one that ends the stream is printed below.
    const explained = new WeakSet<Error>();
    client = new SSEClient(options.url, {
      ...options.client,
      ...(signal ? { signal } : {}),
      onRetry: (ms, error) => {
        if (error !== undefined) explained.add(error);
        console.error(
          `sse: reconnecting in ${ms} ms (${
            error === undefined ? "the stream ended" : visible(error.message)
          })`,
        );
      },
      onError: (error) => {
        if (client.readyState === 2) return;
        // onRetry, when one follows, is called in the same turn.
        queueMicrotask(() => {
          if (!explained.has(error)) {
            console.error(`sse: ${visible(error.message)}`);
          }
        });
      },
    });
  } catch (error) {
    if (error instanceof Deno.errors.BrokenPipe) return 0;
    // The client's own checks (method, headers, body) are argument errors too.
    console.error(`sse: ${(error as Error).message}`);
    return 2;
  }
  const encoder = new TextEncoder();
  const stopped = signal === undefined
    ? undefined
    : new Promise<"stopped">((resolve) => {
      if (signal.aborted) resolve("stopped");
      else signal.addEventListener("abort", () => resolve("stopped"));
    });
  let printed = 0;
  const format: FormatOptions = {
    json: options.json,
    previousId: "",
    // Escape sequences from a server reach a terminal only as text.
    escape: Deno.stdout.isTerminal(),
  };
  try {
    for await (const event of client) {
      if (options.types.length > 0 && !options.types.includes(event.type)) {
        continue;
      }
      const text = formatEvent(event, format);
      format.previousId = event.id;
      const written = write(encoder.encode(text));
      // A blocked output must not hold up a stop.
      if (
        stopped !== undefined &&
        await Promise.race([written, stopped]) === "stopped"
      ) {
        written.catch(() => {});
        return 0;
      }
      await written;
      printed++;
      if (options.count !== undefined && printed >= options.count) break;
      if (options.until !== undefined && event.data === options.until) break;
    }
    return 0;
  } catch (error) {
    // The reader of the output went away (`sse … | head -1`): done.
    if (error instanceof Deno.errors.BrokenPipe) return 0;
    if (signal?.aborted) return 0;
    console.error(`sse: ${visible((error as Error).message)}`);
    // What the server said (a JSON error, an HTML page): its first lines.
    if (error instanceof SSEError && error.body !== undefined) {
      for (const line of bodyLines(error.body)) console.error(line);
    }
    return 1;
  } finally {
    client.close();
  }
}

// How much of a refused response's body is printed.
const BODY_LINES = 5;
const BODY_LINE_LENGTH = 200;

// The start of a response body, as lines for standard error: one line when
// it is one line, else a heading and its first lines, indented; each cut at
// BODY_LINE_LENGTH characters, control characters escaped.
function bodyLines(body: string): string[] {
  const lines = body.replace(/\s+$/, "").split(/\r\n|\r|\n/);
  if (lines.length === 1 && lines[0] === "") return [];
  const shown = lines.slice(0, BODY_LINES).map((line) => visible(cut(line)));
  if (lines.length === 1) return [`sse: response body: ${shown[0]}`];
  const heading = lines.length > BODY_LINES
    ? `sse: response body (${BODY_LINES} of ${lines.length} lines):`
    : "sse: response body:";
  return [heading, ...shown.map((line) => `  ${line}`)];
}

function cut(line: string): string {
  if (line.length <= BODY_LINE_LENGTH) return line;
  let end = BODY_LINE_LENGTH - 1;
  // Not between the two halves of a surrogate pair.
  const code = line.charCodeAt(end - 1);
  if (code >= 0xd800 && code <= 0xdbff) end--;
  return line.slice(0, end) + "…";
}

// deno-lint-ignore no-control-regex
const CONTROL = /[\x00-\x08\x0a-\x1f\x7f-\x9f]/g;
const UNESCAPED_BY_JSON = /[\x7f-\x9f]/g;

// Text a server sent, made harmless for a terminal: each control character
// but tab (C0, DEL and C1: ESC sequences can set a terminal's title, clear
// its screen, …) written as \xNN.
function visible(text: string): string {
  return text.replace(
    CONTROL,
    (char) => `\\x${char.charCodeAt(0).toString(16).padStart(2, "0")}`,
  );
}

function unicodeEscape(char: string): string {
  return `\\u${char.charCodeAt(0).toString(16).padStart(4, "0")}`;
}

// Writes all of `bytes` to standard output.
async function write(bytes: Uint8Array): Promise<void> {
  let offset = 0;
  while (offset < bytes.length) {
    offset += await Deno.stdout.write(bytes.subarray(offset));
  }
}

if (import.meta.main) {
  const controller = new AbortController();
  Deno.addSignalListener("SIGINT", () => {
    controller.abort();
    // 128 + SIGINT, as a process interrupted by Ctrl-C reports.
    Deno.exit(130);
  });
  Deno.exit(await main(Deno.args, controller.signal));
}
