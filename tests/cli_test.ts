// Copyright the sse authors. MIT license.
import assert from "node:assert/strict";
import { formatEvent, parseArgs } from "../cli.ts";
import { SSEParserStream } from "../parser.ts";
import { within } from "./_sse_server.ts";

const sanitize = { sanitizeOps: true, sanitizeResources: true };
const cli = new URL("../cli.ts", import.meta.url).pathname;

interface Seen {
  headers: Headers;
  method: string;
  body: string;
  path?: string;
}

// One event whose type, ID and data hold terminal escape sequences.
const ESCAPES =
  "id: 1\x1b[31m\nevent: e\x1b]0;PWNED\x07\ndata: \x1b[2J\x1b[H cleared\x7f\tok\u009b\n\n";

// A server that streams three events, answers reconnections with 204 and
// /private with 401, and records every request.
function serve(seen: Seen[]) {
  return Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    async (request) => {
      const path = new URL(request.url).pathname;
      seen.push({
        headers: request.headers,
        method: request.method,
        body: await request.text(),
        path,
      });
      if (path === "/private") {
        return Response.json({ error: "invalid_token" }, { status: 401 });
      }
      if (path === "/verbose") {
        const lines = Array.from({ length: 8 }, (_, i) => `line ${i + 1}`);
        lines[1] = "x".repeat(300);
        lines[2] = "\x1b[2Jcleared";
        return new Response(lines.join("\n") + "\n", { status: 403 });
      }
      if (path === "/esc") {
        // Terminal escapes in every field: a title, a colour, a clear screen.
        return new Response(ESCAPES, {
          headers: { "content-type": "text/event-stream" },
        });
      }
      if (path === "/reset") {
        return new Response(
          "id: 1\ndata: a\n\nid\ndata: b\n\ndata: c\n\nid: 4\ndata: d\n\n",
          { headers: { "content-type": "text/event-stream" } },
        );
      }
      if (path === "/flaky") {
        // 503, then a stream that ends, then 204.
        const attempt = seen.filter((s) => s.path === "/flaky").length;
        if (attempt === 1) return new Response("busy", { status: 503 });
        if (attempt === 3) return new Response(null, { status: 204 });
        return new Response("retry: 10\ndata: x\n\n", {
          headers: { "content-type": "text/event-stream" },
        });
      }
      // A reconnection (it carries the last event ID) is told to stop.
      if (request.headers.has("last-event-id")) {
        return new Response(null, { status: 204 });
      }
      const body = "retry: 10\n\n" +
        "event: note\nid: 1\ndata: first\ndata: line\n\n" +
        "data: second\n\n" +
        "id: 3\ndata: [DONE]\n\n";
      return new Response(body, {
        headers: { "content-type": "text/event-stream" },
      });
    },
  );
}

/** Runs sse to the end (killed after 20 s, so that a hang fails the test). */
/** Runs `fn` with the URL of a `serve` server, and shuts it down. */
async function withServer(
  fn: (url: string, seen: Seen[]) => Promise<void>,
): Promise<void> {
  const seen: Seen[] = [];
  const server = serve(seen);
  try {
    await fn(`http://127.0.0.1:${server.addr.port}/`, seen);
  } finally {
    await server.shutdown();
  }
}

async function run(args: string[]) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net=127.0.0.1", cli, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), 20_000);
  try {
    const output = await child.output();
    const decoder = new TextDecoder();
    return {
      code: output.code,
      stdout: decoder.decode(output.stdout),
      stderr: decoder.decode(output.stderr),
    };
  } finally {
    clearTimeout(timer);
  }
}

Deno.test(
  "sse prints every event until the server ends the stream with 204",
  sanitize,
  async () => {
    await withServer(async (url, seen) => {
      const { code, stdout } = await run([
        url,
      ]);
      assert.equal(code, 0);
      assert.equal(
        stdout,
        "event: note\nid: 1\ndata: first\ndata: line\n\n" +
          "event: message\nid: 1\ndata: second\n\n" +
          "event: message\nid: 3\ndata: [DONE]\n\n",
      );
      // It reconnected once (after the 10 ms retry) with the last event ID.
      assert.equal(seen.length, 2);
      assert.equal(seen[1]!.headers.get("last-event-id"), "3");
    });
  },
);

Deno.test(
  "sse sends headers, method and body, and stops at --until with --json output",
  sanitize,
  async () => {
    await withServer(async (url, seen) => {
      const { code, stdout } = await run([
        "-H",
        "authorization: Bearer t0k",
        "-d",
        '{"stream":true}',
        "--json",
        "--until",
        "[DONE]",
        url,
      ]);
      assert.equal(code, 0);
      assert.deepEqual(
        stdout.trim().split("\n").map((line) => JSON.parse(line)),
        [
          { type: "note", data: "first\nline", id: "1" },
          { type: "message", data: "second", id: "1" },
          { type: "message", data: "[DONE]", id: "3" },
        ],
      );
      assert.equal(seen.length, 1);
      assert.equal(seen[0]!.method, "POST");
      assert.equal(seen[0]!.body, '{"stream":true}');
      assert.equal(seen[0]!.headers.get("authorization"), "Bearer t0k");
      assert.equal(seen[0]!.headers.get("accept"), "text/event-stream");
    });
  },
);

Deno.test(
  "sse filters by --type and stops after --count events",
  sanitize,
  async () => {
    await withServer(async (url) => {
      const typed = await run(["-t", "note", "-n", "1", url]);
      assert.equal(typed.code, 0);
      assert.equal(
        typed.stdout,
        "event: note\nid: 1\ndata: first\ndata: line\n\n",
      );
      const counted = await run([
        "--count",
        "2",
        "--json",
        url,
      ]);
      assert.equal(counted.stdout.trim().split("\n").length, 2);
    });
  },
);

Deno.test(
  "sse exits 1 with the status and the start of what the server said when it refuses the stream",
  sanitize,
  async () => {
    await withServer(async (url) => {
      const { code, stdout, stderr } = await run([
        new URL("/private", url).href,
      ]);
      assert.equal(code, 1);
      assert.equal(stdout, "");
      // Before: the status line alone.
      assert.equal(
        stderr,
        "sse: Unexpected status 401: expected 200 with text/event-stream\n" +
          'sse: response body: {"error":"invalid_token"}\n',
      );
      // A longer body: its first lines, each cut short, controls escaped.
      const verbose = await run([new URL("/verbose", url).href]);
      assert.equal(verbose.code, 1);
      assert.equal(
        verbose.stderr,
        "sse: Unexpected status 403: expected 200 with text/event-stream\n" +
          "sse: response body (5 of 8 lines):\n" +
          "  line 1\n" +
          `  ${"x".repeat(199)}…\n` +
          "  \\x1b[2Jcleared\n" +
          "  line 4\n" +
          "  line 5\n",
      );
    });
  },
);

Deno.test(
  "sse says in one line why it reconnects",
  sanitize,
  async () => {
    await withServer(async (url) => {
      const { code, stdout, stderr } = await run([
        "--retry",
        "10",
        new URL("/flaky", url).href,
      ]);
      assert.equal(code, 0, stderr);
      assert.equal(stdout, "event: message\ndata: x\n\n");
      // Before: "sse: reconnecting in N ms", and never why. The first wait
      // after a failure is 100-200 ms inclusive (equal jitter over 200 ms).
      const lines = stderr.trimEnd().split("\n");
      assert.equal(lines.length, 2, stderr);
      assert.match(
        lines[0]!,
        /^sse: reconnecting in (1\d\d|200) ms \(Unexpected status 503: retrying\)$/,
      );
      assert.equal(lines[1], "sse: reconnecting in 10 ms (the stream ended)");
    });
  },
);

Deno.test(
  "sse prints one line naming each bad argument and exits 2",
  sanitize,
  async () => {
    const url = "http://127.0.0.1:8/";
    const cases: [string[], string][] = [
      [[], "sse: Missing URL: sse [options] <url>"],
      [["--nope", url], "sse: Unknown option: --nope"],
      [["-q", url], "sse: Unknown option: -q"],
      [["--count"], "sse: Option '-n, --count <value>' argument missing"],
      [
        ["--max-retries", "1.5", url],
        'sse: Invalid --max-retries: expected a non-negative integer, got "1.5"',
      ],
      [
        ["--idle-timeout", "0", url],
        'sse: Invalid --idle-timeout: expected a positive number of milliseconds, got "0"',
      ],
      [
        ["--retry=-1", url],
        'sse: Invalid --retry: expected a non-negative number of milliseconds, got "-1"',
      ],
      [
        ["--retry", "-1", url],
        'sse: Ambiguous value for --retry: write --retry=<value> for a value that starts with "-"',
      ],
      [
        ["--count", "two", url],
        'sse: Invalid --count: expected a non-negative integer, got "two"',
      ],
      [
        ["-X", "GET", "-d", "body", url],
        "sse: Invalid body: a GET request cannot have one",
      ],
      [
        ["-X", "BAD METHOD", url],
        'sse: Invalid method: "BAD METHOD" is not an HTTP token',
      ],
      [
        ["-H", "Last-Event-ID: 5", "--last-event-id", "6", url],
        'sse: Invalid --last-event-id: "6" contradicts the Last-Event-ID header given with --header ("5"): give one of them',
      ],
      [
        ["--resend", url],
        "sse: Invalid --resend: it sends the body again, so it needs --data",
      ],
      [
        ["-X", "HEAD", url],
        "sse: Invalid method: a response to HEAD has no body, so no event could ever arrive",
      ],
      [
        ["-H", "x: a\x01b", url],
        "sse: Invalid header x: its value contains U+0001 at index 1, which fetch cannot send",
      ],
      [
        ["--last-event-id", "a\nb", url],
        'sse: Invalid --last-event-id: an ID cannot contain NUL, CR or LF, got "a\\nb"',
      ],
      [
        ["-H", "novalue", url],
        'sse: Invalid --header: expected "name: value", got "novalue"',
      ],
      [
        ["ftp://example.com/"],
        "sse: Invalid URL: expected http: or https:, got ftp:",
      ],
      [["not a url"], "sse: Invalid URL: not a url"],
      [
        [url, "extra"],
        "sse: Unexpected argument: extra (the URL is http://127.0.0.1:8/)",
      ],
    ];
    for (const [args, line] of cases) {
      const { code, stdout, stderr } = await run(args);
      assert.equal(code, 2, `${args.join(" ")}: exit ${code}\n${stderr}`);
      assert.equal(stdout, "");
      assert.equal(stderr, `${line}\n`, args.join(" "));
    }
  },
);

Deno.test(
  "sse reads --count=3, -n3 and -- as parseArgs does, and prints --version",
  sanitize,
  async () => {
    await withServer(async (url) => {
      for (
        const args of [["--count=2", url], ["-n2", url], ["-n", "2", "--", url]]
      ) {
        const { code, stdout } = await run(["--json", ...args]);
        assert.equal(code, 0, args.join(" "));
        assert.equal(stdout.trim().split("\n").length, 2, args.join(" "));
      }
    });
    const version = await run(["--version"]);
    const config = JSON.parse(
      await Deno.readTextFile(new URL("../deno.json", import.meta.url)),
    );
    assert.equal(version.code, 0);
    assert.equal(version.stdout, `sse ${config.version}\n`);
  },
);

Deno.test(
  "sse --count 0 prints no event and makes no request",
  sanitize,
  async () => {
    await withServer(async (url, seen) => {
      const { code, stdout } = await run([
        "--count",
        "0",
        url,
      ]);
      assert.equal(code, 0);
      assert.equal(stdout, "");
      assert.equal(seen.length, 0);
    });
  },
);

Deno.test(
  "sse with a request body sends it once, unless --resend",
  sanitize,
  async () => {
    const seen: Seen[] = [];
    // Every request gets two events and the stream ends normally.
    const server = Deno.serve(
      { hostname: "127.0.0.1", port: 0, onListen() {} },
      async (request) => {
        seen.push({
          headers: request.headers,
          method: request.method,
          body: await request.text(),
        });
        return new Response(`retry: 10\ndata: ${seen.length}\n\n`, {
          headers: { "content-type": "text/event-stream" },
        });
      },
    );
    try {
      const url = `http://127.0.0.1:${server.addr.port}/`;
      const once = await run(["-d", "prompt", "--json", url]);
      assert.equal(once.code, 0, once.stderr);
      assert.equal(once.stdout, '{"type":"message","data":"1","id":""}\n');
      assert.equal(seen.length, 1);
      const again = await run(["-d", "prompt", "--resend", "-n", "3", url]);
      assert.equal(again.code, 0, again.stderr);
      assert.equal(seen.length, 4);
      assert.deepEqual(seen.slice(1).map((s) => s.body), [
        "prompt",
        "prompt",
        "prompt",
      ]);
    } finally {
      await server.shutdown();
    }
  },
);

/** A server that streams events for ever, as fast as they are read. */
function firehose() {
  let pulled = 0;
  let lastPull = performance.now();
  const line = `data: ${"x".repeat(1000)}\n\n`;
  const bytes = new TextEncoder().encode(line.repeat(16));
  const server = Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    () =>
      new Response(
        new ReadableStream<Uint8Array>({
          pull(controller) {
            pulled += bytes.length;
            lastPull = performance.now();
            controller.enqueue(bytes);
          },
        }),
        { headers: { "content-type": "text/event-stream" } },
      ),
  );
  return {
    server,
    url: `http://127.0.0.1:${server.addr.port}/`,
    get pulled() {
      return pulled;
    },
    get sinceLastPull() {
      return performance.now() - lastPull;
    },
  };
}

function spawn(args: string[]): Deno.ChildProcess {
  return new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net=127.0.0.1", cli, ...args],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

Deno.test(
  "sse | head -1 exits 0 quietly when its reader goes away",
  sanitize,
  async () => {
    const hose = firehose();
    try {
      const child = spawn([hose.url]);
      // Read the first line, then close the pipe, as head does.
      const reader = child.stdout.getReader();
      const first = await reader.read();
      assert.ok(!first.done);
      await reader.cancel();
      const [status, stderr] = await Promise.all([
        child.status,
        new Response(child.stderr).text(),
      ]);
      assert.equal(stderr, "");
      assert.equal(status.code, 0);
    } finally {
      await hose.server.shutdown();
    }
  },
);

Deno.test(
  "sse exits at once on Ctrl-C while its output is blocked",
  sanitize,
  async () => {
    const hose = firehose();
    const child = spawn([hose.url]);
    try {
      // Nobody reads its stdout: once the pipe and the socket buffers are
      // full, the server is no longer asked for more.
      while (hose.pulled < 1024 * 1024 || hose.sinceLastPull < 300) {
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const start = performance.now();
      child.kill("SIGINT");
      const status = await within(child.status, 5000, "sse exited");
      const elapsed = performance.now() - start;
      assert.ok(elapsed < 2000, `exited after ${elapsed.toFixed(0)} ms`);
      assert.equal(status.code, 130);
      assert.equal(await new Response(child.stderr).text(), "");
    } finally {
      try {
        child.kill("SIGKILL");
      } catch {
        // It has exited.
      }
      await child.status;
      await child.stdout.cancel().catch(() => {});
      await child.stderr.cancel().catch(() => {});
      await hose.server.shutdown();
    }
  },
);

Deno.test("parseArgs reads every option and refuses malformed ones", () => {
  const options = parseArgs([
    "-X",
    "PUT",
    "-H",
    "x-a: 1",
    "--header",
    "x-b:2",
    "--last-event-id",
    "41",
    "--retry",
    "500",
    "--idle-timeout",
    "2000",
    "--max-retries",
    "3",
    "-t",
    "a",
    "--type",
    "b",
    "http://127.0.0.1:1/x",
  ]);
  assert.ok(typeof options === "object");
  assert.equal(options.url, "http://127.0.0.1:1/x");
  assert.equal(options.client.method, "PUT");
  assert.equal(
    new Headers(options.client.headers as HeadersInit).get("x-b"),
    "2",
  );
  assert.equal(options.client.lastEventId, "41");
  assert.equal(options.client.retry, 500);
  assert.equal(options.client.idleTimeout, 2000);
  assert.equal(options.client.maxRetries, 3);
  assert.deepEqual(options.types, ["a", "b"]);
  assert.equal(parseArgs(["--help"]), "help");
  assert.equal(parseArgs(["--version"]), "version");
  const url = "http://127.0.0.1:1/";
  assert.throws(() => parseArgs(["-H", "novalue", url]), /Invalid --header/);
  assert.throws(() => parseArgs(["--retry=-1", url]), /Invalid --retry/);
  assert.throws(
    () => parseArgs(["--count"]),
    /--count <value>' argument missing/,
  );
  assert.throws(() => parseArgs(["a", "b"]), /Unexpected argument: b/);
  // A body is sent once unless asked otherwise.
  const once = parseArgs(["-d", "x", "http://127.0.0.1:1/"]);
  assert.ok(typeof once === "object");
  assert.equal(once.client.maxRetries, 0);
  assert.equal(once.client.method, "POST");
  const resend = parseArgs(["-d", "x", "--resend", "http://127.0.0.1:1/"]);
  assert.ok(typeof resend === "object");
  assert.equal(resend.client.maxRetries, undefined);
});

Deno.test("formatEvent writes the event-stream form or one JSON line", () => {
  const event = { type: "t", data: "a\nb", id: "" };
  assert.equal(formatEvent(event, false), "event: t\ndata: a\ndata: b\n\n");
  assert.equal(
    formatEvent(event, true),
    '{"type":"t","data":"a\\nb","id":""}\n',
  );
});

/**
 * Runs sse with a terminal as its standard output (through `script`), and
 * returns what it printed there; `undefined` where `script` is missing.
 */
async function runOnTerminal(args: string[]): Promise<string | undefined> {
  const command = [
    Deno.execPath(),
    "run",
    "--allow-net=127.0.0.1",
    cli,
    ...args,
  ]
    .map((arg) => `'${arg.replaceAll("'", "'\\''")}'`).join(" ");
  let output: Deno.CommandOutput;
  try {
    output = await new Deno.Command("script", {
      args: ["-qec", command, "/dev/null"],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
      env: { NO_COLOR: "1" },
    }).output();
  } catch (error) {
    if (error instanceof Deno.errors.NotFound) return undefined;
    throw error;
  }
  assert.equal(output.code, 0, new TextDecoder().decode(output.stderr));
  // The terminal turns each line feed into CR LF.
  return new TextDecoder().decode(output.stdout).replaceAll("\r\n", "\n");
}

Deno.test(
  "sse shows control characters escaped on a terminal, and writes them as they came to a pipe",
  sanitize,
  async () => {
    await withServer(async (url) => {
      const esc = new URL("/esc", url).href;
      const piped = await run(["-n", "1", esc]);
      assert.equal(piped.code, 0, piped.stderr);
      assert.equal(
        piped.stdout,
        "event: e\x1b]0;PWNED\x07\nid: 1\x1b[31m\n" +
          "data: \x1b[2J\x1b[H cleared\x7f\tok\u009b\n\n",
      );
      const shown = await runOnTerminal(["-n", "1", esc]);
      if (shown === undefined) {
        console.log("script (util-linux) missing: terminal output not checked");
        return;
      }
      // Before: the escapes reached the terminal, which set its title,
      // changed colour and cleared the screen.
      assert.equal(
        shown,
        "event: e\\x1b]0;PWNED\\x07\nid: 1\\x1b[31m\n" +
          "data: \\x1b[2J\\x1b[H cleared\\x7f\tok\\x9b\n\n",
      );
      const json = await runOnTerminal(["--json", "-n", "1", esc]);
      assert.equal(
        json,
        '{"type":"e\\u001b]0;PWNED\\u0007","data":"\\u001b[2J\\u001b[H cleared\\u007f\\tok\\u009b","id":"1\\u001b[31m"}\n',
      );
      assert.deepEqual(JSON.parse(json!), {
        type: "e\x1b]0;PWNED\x07",
        data: "\x1b[2J\x1b[H cleared\x7f\tok\u009b",
        id: "1\x1b[31m",
      });
    });
  },
);

Deno.test(
  "sse writes an empty id: line when the stream resets the ID, so that its output parses back to the same IDs",
  sanitize,
  async () => {
    await withServer(async (url) => {
      const { code, stdout, stderr } = await run([
        "-n",
        "4",
        new URL("/reset", url).href,
      ]);
      assert.equal(code, 0, stderr);
      // Before: no line for the reset, so "b" parsed back with ID "1".
      assert.equal(
        stdout,
        "event: message\nid: 1\ndata: a\n\n" +
          "event: message\nid:\ndata: b\n\n" +
          "event: message\ndata: c\n\n" +
          "event: message\nid: 4\ndata: d\n\n",
      );
      const parsed = await Array.fromAsync(
        ReadableStream.from([new TextEncoder().encode(stdout)])
          .pipeThrough(new SSEParserStream()),
      );
      assert.deepEqual(parsed.map((event) => [event.data, event.id]), [
        ["a", "1"],
        ["b", ""],
        ["c", ""],
        ["d", "4"],
      ]);
    });
  },
);
