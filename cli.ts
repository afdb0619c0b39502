// Copyright the sse authors. MIT license.
/**
 * `sse`: follow a Server-Sent Events stream from the command line, with the
 * resumable {@linkcode SSEClient} (reconnects with `Last-Event-ID`, honours
 * `retry`, backs off on failures).
 *
 * ```sh
 * deno run --allow-net jsr:@sse/sse/cli https://example.com/events
 * deno run --allow-net jsr:@sse/sse/cli --json --count 10 -H "authorization: Bearer x" URL
 * deno run --allow-net jsr:@sse/sse/cli -X POST -d '{"stream":true}' --until '[DONE]' URL
 * ```
 *
 * Each event is printed as `event: <type>`, `id: <id>` (when set) and its
 * `data` lines followed by a blank line, or, with `--json`, as one JSON object
 * per line. Exits 0 when the stream ends for good (204, `--count` reached,
 * `--until` seen), 1 on an error such as a 401, 2 on bad arguments.
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

import { SSEClient, type SSEClientOptions } from "./client.ts";
import type { SSEEvent } from "./parser.ts";

const USAGE = `Usage: sse [options] <url>

Follows a Server-Sent Events stream and prints its events.

Options:
  -H, --header "name: value"  request header (repeatable)
  -X, --method METHOD         request method (default GET)
  -d, --data BODY             request body, sent again on every attempt
      --last-event-id ID      resume after this event ID
      --retry MS              initial reconnection delay (default 3000)
      --idle-timeout MS       reconnect after this long without any byte
      --max-retries N         give up after N failed attempts in a row
  -n, --count N               exit after N events
      --until DATA            exit after an event whose data is exactly DATA
  -t, --type TYPE             print only events of this type (repeatable)
      --json                  one JSON object per event: {"type","data","id"}
  -h, --help                  show this help
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

/**
 * Parses the command line of `sse`.
 *
 * @example Parse a command line
 * ```ts
 * import { parseArgs } from "@sse/sse/cli";
 * import assert from "node:assert/strict";
 *
 * const options = parseArgs(["-n", "3", "--json", "http://127.0.0.1:8000/events"]);
 * assert.ok(options !== "help");
 * assert.equal(options.count, 3);
 * assert.equal(options.json, true);
 * ```
 *
 * @param args The arguments, without the program name.
 * @returns The options, or `"help"` when help was asked for.
 * @throws {TypeError} On an unknown option, a missing value or a missing URL.
 */
export function parseArgs(args: string[]): CLIOptions | "help" {
  const headers = new Headers();
  const client: SSEClientOptions = { headers };
  const types: string[] = [];
  let url: string | undefined;
  let count: number | undefined;
  let until: string | undefined;
  let json = false;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    const value = (): string => {
      const next = args[++i];
      if (next === undefined) {
        throw new TypeError(`Missing value: ${arg} needs one`);
      }
      return next;
    };
    const number = (): number => {
      const text = value();
      const n = Number(text);
      if (text.trim() === "" || !Number.isFinite(n) || n < 0) {
        throw new TypeError(
          `Invalid ${arg}: expected a non-negative number, got "${text}"`,
        );
      }
      return n;
    };
    switch (arg) {
      case "-h":
      case "--help":
        return "help";
      case "-H":
      case "--header": {
        const header = value();
        const colon = header.indexOf(":");
        if (colon <= 0) {
          throw new TypeError(
            `Invalid header: expected "name: value", got "${header}"`,
          );
        }
        headers.append(
          header.slice(0, colon).trim(),
          header.slice(colon + 1).trim(),
        );
        break;
      }
      case "-X":
      case "--method":
        client.method = value();
        break;
      case "-d":
      case "--data":
        client.body = value();
        if (client.method === undefined) client.method = "POST";
        break;
      case "--last-event-id":
        client.lastEventId = value();
        break;
      case "--retry":
        client.retry = number();
        break;
      case "--idle-timeout":
        client.idleTimeout = number();
        break;
      case "--max-retries":
        client.maxRetries = number();
        break;
      case "-n":
      case "--count":
        count = number();
        break;
      case "--until":
        until = value();
        break;
      case "-t":
      case "--type":
        types.push(value());
        break;
      case "--json":
        json = true;
        break;
      default:
        if (arg.startsWith("-")) throw new TypeError(`Unknown option: ${arg}`);
        if (url !== undefined) {
          throw new TypeError(
            `Unexpected argument: ${arg} (the URL is ${url})`,
          );
        }
        url = arg;
    }
  }
  if (url === undefined) {
    throw new TypeError("Missing URL: sse [options] <url>");
  }
  const options: CLIOptions = { url, client, types, json };
  if (count !== undefined) options.count = count;
  if (until !== undefined) options.until = until;
  return options;
}

/**
 * Formats one event as `sse` prints it.
 *
 * @param event The event.
 * @param json One JSON object per line instead of the event-stream form.
 * @returns The text to print, ending with a line break.
 */
export function formatEvent(event: SSEEvent, json: boolean): string {
  if (json) {
    return JSON.stringify({
      type: event.type,
      data: event.data,
      id: event.id,
    }) + "\n";
  }
  let out = `event: ${event.type}\n`;
  if (event.id !== "") out += `id: ${event.id}\n`;
  for (const line of event.data.split("\n")) out += `data: ${line}\n`;
  return out + "\n";
}

/**
 * Runs `sse` with the given arguments, printing to standard output and errors
 * to standard error.
 *
 * @param args The arguments, without the program name.
 * @param signal Stops following the stream when aborted (exit code 0).
 * @returns The exit code: 0 done, 1 error, 2 bad arguments.
 */
export async function main(
  args: string[],
  signal?: AbortSignal,
): Promise<number> {
  let options: CLIOptions | "help";
  try {
    options = parseArgs(args);
  } catch (error) {
    console.error(`sse: ${(error as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (options === "help") {
    console.log(USAGE);
    return 0;
  }
  const encoder = new TextEncoder();
  const client = new SSEClient(options.url, {
    ...options.client,
    ...(signal ? { signal } : {}),
    onRetry: (ms) => console.error(`sse: reconnecting in ${ms} ms`),
  });
  let printed = 0;
  try {
    for await (const event of client) {
      if (options.types.length > 0 && !options.types.includes(event.type)) {
        continue;
      }
      await Deno.stdout.write(encoder.encode(formatEvent(event, options.json)));
      printed++;
      if (options.count !== undefined && printed >= options.count) break;
      if (options.until !== undefined && event.data === options.until) break;
    }
    return 0;
  } catch (error) {
    if (signal?.aborted) return 0;
    console.error(`sse: ${(error as Error).message}`);
    return 1;
  } finally {
    client.close();
  }
}

if (import.meta.main) {
  const controller = new AbortController();
  Deno.addSignalListener("SIGINT", () => controller.abort());
  Deno.exit(await main(Deno.args, controller.signal));
}
