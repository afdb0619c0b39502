// Copyright the sse authors. MIT license.
import assert from "node:assert/strict";
import { formatEvent, parseArgs } from "../cli.ts";

const sanitize = { sanitizeOps: true, sanitizeResources: true };
const cli = new URL("../cli.ts", import.meta.url).pathname;

interface Seen {
  headers: Headers;
  method: string;
  body: string;
}

// A server that streams three events, answers reconnections with 204 and
// /private with 401, and records every request.
function serve(seen: Seen[]) {
  return Deno.serve(
    { hostname: "127.0.0.1", port: 0, onListen() {} },
    async (request) => {
      seen.push({
        headers: request.headers,
        method: request.method,
        body: await request.text(),
      });
      const path = new URL(request.url).pathname;
      if (path === "/private") return new Response("no", { status: 401 });
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

async function run(args: string[]) {
  const output = await new Deno.Command(Deno.execPath(), {
    args: ["run", "--allow-net=127.0.0.1", cli, ...args],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

Deno.test(
  "sse prints every event until the server ends the stream with 204",
  sanitize,
  async () => {
    const seen: Seen[] = [];
    const server = serve(seen);
    try {
      const { code, stdout } = await run([
        `http://127.0.0.1:${server.addr.port}/`,
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
    } finally {
      await server.shutdown();
    }
  },
);

Deno.test(
  "sse sends headers, method and body, and stops at --until with --json output",
  sanitize,
  async () => {
    const seen: Seen[] = [];
    const server = serve(seen);
    try {
      const { code, stdout } = await run([
        "-H",
        "authorization: Bearer t0k",
        "-d",
        '{"stream":true}',
        "--json",
        "--until",
        "[DONE]",
        `http://127.0.0.1:${server.addr.port}/`,
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
    } finally {
      await server.shutdown();
    }
  },
);

Deno.test(
  "sse filters by --type and stops after --count events",
  sanitize,
  async () => {
    const seen: Seen[] = [];
    const server = serve(seen);
    try {
      const url = `http://127.0.0.1:${server.addr.port}/`;
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
        `http://127.0.0.1:${server.addr.port}/`,
      ]);
      assert.equal(counted.stdout.trim().split("\n").length, 2);
    } finally {
      await server.shutdown();
    }
  },
);

Deno.test(
  "sse exits 1 with the status when the server refuses the stream",
  sanitize,
  async () => {
    const server = serve([]);
    try {
      const { code, stdout, stderr } = await run([
        `http://127.0.0.1:${server.addr.port}/private`,
      ]);
      assert.equal(code, 1);
      assert.equal(stdout, "");
      assert.match(stderr, /sse: .*401/);
    } finally {
      await server.shutdown();
    }
  },
);

Deno.test(
  "sse exits 2 and names the problem on bad arguments",
  sanitize,
  async () => {
    const missing = await run([]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /Missing URL/);
    const unknown = await run(["--nope", "http://127.0.0.1:1/"]);
    assert.equal(unknown.code, 2);
    assert.match(unknown.stderr, /Unknown option: --nope/);
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
  assert.notEqual(options, "help");
  if (options === "help") return;
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
  assert.throws(() => parseArgs(["-H", "novalue", "u"]), /Invalid header/);
  assert.throws(() => parseArgs(["--retry", "-1", "u"]), /Invalid --retry/);
  assert.throws(() => parseArgs(["--count"]), /Missing value: --count/);
  assert.throws(() => parseArgs(["a", "b"]), /Unexpected argument: b/);
});

Deno.test("formatEvent writes the event-stream form or one JSON line", () => {
  const event = { type: "t", data: "a\nb", id: "" };
  assert.equal(formatEvent(event, false), "event: t\ndata: a\ndata: b\n\n");
  assert.equal(
    formatEvent(event, true),
    '{"type":"t","data":"a\\nb","id":""}\n',
  );
});
