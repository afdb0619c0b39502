// Copyright the sse authors. MIT license.
import assert from "node:assert/strict";
import fc from "fast-check";
import { encodeSSE, SSEEncoderStream, type SSEMessage } from "../encoder.ts";
import { type SSEEvent, SSEParserStream } from "../parser.ts";

const encoder = new TextEncoder();
const decoder = new TextDecoder();

// Deno 2.9 runs tests with the op and resource sanitizers off unless asked:
// every test here asks, so leaked timers, reads and sockets fail the test.
const SANITIZED = { sanitizeOps: true, sanitizeResources: true } as const;

interface Parsed {
  events: SSEEvent[];
  retries: number[];
  comments: string[];
  lastEventId: string;
}

/** Parses `bytes`, cut into chunks at `cuts` (any byte offsets). */
async function parse(bytes: Uint8Array, cuts: number[] = []): Promise<Parsed> {
  const offsets = [...new Set(cuts.map((cut) => cut % (bytes.length + 1)))]
    .sort((a, b) => a - b);
  const chunks: Uint8Array[] = [];
  let from = 0;
  for (const offset of offsets) {
    chunks.push(bytes.subarray(from, offset));
    from = offset;
  }
  chunks.push(bytes.subarray(from));
  const retries: number[] = [];
  const comments: string[] = [];
  const parser = new SSEParserStream({
    onRetry: (ms) => retries.push(ms),
    onComment: (text) => comments.push(text),
  });
  const events = await Array.fromAsync(
    ReadableStream.from(chunks).pipeThrough(parser),
  );
  return { events, retries, comments, lastEventId: parser.lastEventId };
}

/** Encodes `messages` through SSEEncoderStream and joins the chunks. */
async function encodeAll(
  messages: SSEMessage[],
): Promise<Uint8Array<ArrayBuffer>> {
  const chunks = await Array.fromAsync(
    ReadableStream.from(messages).pipeThrough(new SSEEncoderStream()),
  );
  const bytes = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const chunk of chunks) {
    bytes.set(chunk, at);
    at += chunk.length;
  }
  return bytes;
}

/** What a spec-conforming client must see for `messages`. */
function expected(messages: SSEMessage[]): Parsed {
  const events: SSEEvent[] = [];
  const retries: number[] = [];
  const comments: string[] = [];
  let lastEventId = "";
  for (const m of messages) {
    if (m.comment !== undefined) {
      comments.push(...m.comment.split(/\r\n|\r|\n/));
    }
    if (m.id !== undefined) lastEventId = String(m.id);
    // -0 is a valid retry and goes on the wire as "0".
    if (m.retry !== undefined) retries.push(m.retry + 0);
    if (m.data !== undefined) {
      const text = typeof m.data === "string" ? m.data : JSON.stringify(m.data);
      events.push({
        // §9.2.6: an empty event type dispatches as "message".
        type: m.event || "message",
        data: text.replace(/\r\n|\r|\n/g, "\n"),
        id: lastEventId,
      });
    }
  }
  return { events, retries, comments, lastEventId };
}

// Strings rich in what breaks framing: every line break form, colons, spaces,
// NUL, BOM, field names, multi-byte and astral characters.
const tricky = fc.string({
  unit: fc.oneof(
    fc.constantFrom(
      "\r",
      "\n",
      "\r\n",
      ":",
      " ",
      "\0",
      "\uFEFF",
      "data:",
      "id: 1",
      "event: x",
      "é",
      "€",
      "😀",
    ),
    fc.string({ unit: "binary", minLength: 1, maxLength: 1 }),
  ),
  maxLength: 12,
}).filter((s) => s.isWellFormed());
const oneLine = tricky.map((s) => s.replace(/[\r\n]/g, ""));
// What a header value can carry: no control character but tab, and no
// space or tab at either end.
const idText = oneLine.map((s) =>
  // deno-lint-ignore no-control-regex
  s.replace(/[\0-\x08\x0a-\x1f\x7f]/g, "").replace(/^[\t ]+|[\t ]+$/g, "")
);
const validMessage: fc.Arbitrary<SSEMessage> = fc.record({
  data: fc.oneof(tricky, fc.jsonValue({ maxDepth: 2 })),
  // "" included: it is written, and read as "message".
  event: oneLine,
  id: fc.oneof(idText, fc.integer()),
  retry: fc.nat(),
  comment: tricky,
}, { requiredKeys: [] })
  .map((m) =>
    m.event !== undefined && m.data === undefined ? { ...m, data: "" } : m
  )
  .filter((m) => Object.keys(m).length > 0);

Deno.test(
  "encodeSSE writes each field as `name: value` in a fixed order",
  SANITIZED,
  () => {
    assert.equal(
      encodeSSE({ data: "d", event: "e", id: "i", retry: 5, comment: "c" }),
      ": c\nevent: e\nid: i\nretry: 5\ndata: d\n\n",
    );
  },
);

Deno.test(
  "encodeSSE splits data at CRLF, CR and LF into data lines",
  SANITIZED,
  () => {
    assert.equal(
      encodeSSE({ data: "a\r\nb\rc\nd" }),
      "data: a\ndata: b\ndata: c\ndata: d\n\n",
    );
    assert.equal(encodeSSE({ data: "\n" }), "data: \ndata: \n\n");
    assert.equal(encodeSSE({ data: "x\r" }), "data: x\ndata: \n\n");
    assert.equal(
      encodeSSE({ data: "\r\r\n\n" }),
      "data: \ndata: \ndata: \ndata: \n\n",
    );
  },
);

Deno.test(
  "encodeSSE keeps values that begin with a space or a colon",
  SANITIZED,
  async () => {
    const bytes = encoder.encode(
      encodeSSE({ event: " e", id: ":1", data: " a\n:b\n  c" }),
    );
    assert.deepEqual((await parse(bytes)).events, [
      { type: " e", data: " a\n:b\n  c", id: ":1" },
    ]);
  },
);

Deno.test("encodeSSE JSON-encodes data that is not a string", SANITIZED, () => {
  assert.equal(encodeSSE({ data: { a: "x\ny" } }), 'data: {"a":"x\\ny"}\n\n');
  assert.equal(encodeSSE({ data: [1, "2"] }), 'data: [1,"2"]\n\n');
  assert.equal(encodeSSE({ data: 0 }), "data: 0\n\n");
  assert.equal(encodeSSE({ data: null }), "data: null\n\n");
  assert.equal(encodeSSE({ data: false }), "data: false\n\n");
  assert.equal(
    encodeSSE({ data: { toJSON: () => "line\r\nbreak" } }),
    'data: "line\\r\\nbreak"\n\n',
  );
  // JSON.stringify escapes a lone surrogate, so it survives as text.
  assert.equal(encodeSSE({ data: ["\uD800"] }), 'data: ["\\ud800"]\n\n');
});

Deno.test(
  "encodeSSE writes an empty data line for empty data, which dispatches",
  SANITIZED,
  async () => {
    assert.equal(encodeSSE({ data: "" }), "data: \n\n");
    const { events } = await parse(encoder.encode(encodeSSE({ data: "" })));
    assert.deepEqual(events, [{ type: "message", data: "", id: "" }]);
  },
);

Deno.test("encodeSSE treats undefined fields as absent", SANITIZED, () => {
  assert.equal(
    encodeSSE({ data: "x", event: undefined, id: undefined, retry: undefined }),
    "data: x\n\n",
  );
  assert.equal(encodeSSE({ data: undefined, id: "7" }), "id: 7\n\n");
});

Deno.test("encodeSSE ignores properties that are not fields", SANITIZED, () => {
  const message = { data: "x", topic: "news", date: 1 } as SSEMessage;
  assert.equal(encodeSSE(message), "data: x\n\n");
});

Deno.test(
  "encodeSSE writes a comment on one line per line, with every line break form",
  SANITIZED,
  () => {
    assert.equal(encodeSSE({ comment: "" }), ": \n\n");
    assert.equal(encodeSSE({ comment: "ping" }), ": ping\n\n");
    assert.equal(
      encodeSSE({ comment: "a\r\nb\rc\nd" }),
      ": a\n: b\n: c\n: d\n\n",
    );
  },
);

Deno.test("a comment-only message dispatches nothing", SANITIZED, async () => {
  const parsed = await parse(
    encoder.encode(
      encodeSSE({ comment: "one\ntwo" }) + encodeSSE({ data: "x" }),
    ),
  );
  assert.deepEqual(parsed.comments, ["one", "two"]);
  assert.deepEqual(parsed.events, [{ type: "message", data: "x", id: "" }]);
});

Deno.test(
  "an id-only message commits the id without dispatching",
  SANITIZED,
  async () => {
    const parsed = await parse(
      encoder.encode(encodeSSE({ id: "5" }) + encodeSSE({ data: "x" })),
    );
    assert.deepEqual(parsed.events, [{ type: "message", data: "x", id: "5" }]);
    assert.equal(parsed.lastEventId, "5");
  },
);

Deno.test(
  "an empty id resets the client's last event ID",
  SANITIZED,
  async () => {
    assert.equal(encodeSSE({ id: "" }), "id: \n\n");
    const parsed = await parse(encoder.encode(
      encodeSSE({ id: "5", data: "a" }) + encodeSSE({ id: "", data: "b" }),
    ));
    assert.deepEqual(parsed.events, [
      { type: "message", data: "a", id: "5" },
      { type: "message", data: "b", id: "" },
    ]);
  },
);

Deno.test(
  "encodeSSE writes a numeric id in its shortest decimal form",
  SANITIZED,
  () => {
    assert.equal(encodeSSE({ id: 42 }), "id: 42\n\n");
    assert.equal(encodeSSE({ id: -0 }), "id: 0\n\n");
    assert.equal(encodeSSE({ id: 1.5 }), "id: 1.5\n\n");
  },
);

Deno.test(
  "encodeSSE accepts every integer from 0 to 2^31 - 1 as retry, the longest wait a client's timer holds",
  SANITIZED,
  () => {
    assert.equal(encodeSSE({ retry: 0 }), "retry: 0\n\n");
    assert.equal(encodeSSE({ retry: 2 ** 31 - 1 }), "retry: 2147483647\n\n");
    // Before: accepted up to 2^53 - 1, a wait no client can arm.
    for (const retry of [2 ** 31, Number.MAX_SAFE_INTEGER]) {
      assert.throws(() => encodeSSE({ retry }), {
        name: "RangeError",
        message:
          `Invalid retry: ${retry} ms is more than a client can wait (2147483647 ms, about 24.8 days)`,
      });
    }
  },
);

// [message, error class, message pattern]
const refused: [unknown, typeof TypeError | typeof RangeError, RegExp][] = [
  [null, TypeError, /^Invalid SSE message: expected an object, got null$/],
  [42, TypeError, /^Invalid SSE message: expected an object, got number$/],
  [
    "data: x",
    TypeError,
    /^Invalid SSE message: expected an object, got string$/,
  ],
  [[], TypeError, /^Invalid SSE message: expected an object, got array$/],
  [{}, TypeError, /^Invalid SSE message: no field to write/],
  [{ data: undefined }, TypeError, /^Invalid SSE message: no field to write/],
  [{ date: "typo" }, TypeError, /^Invalid SSE message: no field to write/],
  [
    { event: "a\nb", data: "" },
    TypeError,
    /^Invalid event: must not contain LF: found at index 1$/,
  ],
  [
    { event: "a\rb", data: "" },
    TypeError,
    /^Invalid event: must not contain CR: found at index 1$/,
  ],
  [
    { event: 1, data: "" },
    TypeError,
    /^Invalid event: expected a string, got number$/,
  ],
  [
    { event: "x" },
    TypeError,
    /^Invalid SSE message: event without data dispatches nothing/,
  ],
  [{ event: "x", id: "1" }, TypeError, /event without data/],
  [
    { id: "1\n" },
    TypeError,
    /^Invalid id: must not contain LF: found at index 1$/,
  ],
  [
    { id: "\r" },
    TypeError,
    /^Invalid id: must not contain CR: found at index 0$/,
  ],
  [
    { id: "a\0" },
    TypeError,
    /^Invalid id: must not contain NUL: found at index 1$/,
  ],
  // A client sends the ID back as a header, which cannot hold the other
  // control characters either.
  [
    { id: "a\x01b" },
    TypeError,
    /^Invalid id: must not contain U\+0001, which Last-Event-ID cannot carry: found at index 1$/,
  ],
  [
    { id: "\x1f" },
    TypeError,
    /^Invalid id: must not contain U\+001F, which Last-Event-ID cannot carry: found at index 0$/,
  ],
  [
    { id: "x\x7f" },
    TypeError,
    /^Invalid id: must not contain U\+007F, which Last-Event-ID cannot carry: found at index 1$/,
  ],
  // Nor a leading or trailing space or tab, which a header value loses: the
  // server would read another ID (" 5 " comes back as "5").
  [
    { id: " 5" },
    TypeError,
    /^Invalid id: must not begin or end with a space or tab, which Last-Event-ID cannot carry: found U\+0020 at index 0$/,
  ],
  [
    { id: "5\t" },
    TypeError,
    /^Invalid id: must not begin or end with a space or tab, which Last-Event-ID cannot carry: found U\+0009 at index 1$/,
  ],
  [
    { id: {} },
    TypeError,
    /^Invalid id: expected a string or a number, got Object$/,
  ],
  [
    { id: 1n },
    TypeError,
    /^Invalid id: expected a string or a number, got bigint$/,
  ],
  [{ id: NaN }, RangeError, /^Invalid id: expected a finite number, got NaN$/],
  [
    { id: Infinity },
    RangeError,
    /^Invalid id: expected a finite number, got Infinity$/,
  ],
  [
    { retry: -1 },
    RangeError,
    /^Invalid retry: expected a non-negative integer of milliseconds, got -1$/,
  ],
  [{ retry: 1.5 }, RangeError, /^Invalid retry: .* got 1.5$/],
  [{ retry: NaN }, RangeError, /^Invalid retry: .* got NaN$/],
  [{ retry: Infinity }, RangeError, /^Invalid retry: .* got Infinity$/],
  [{ retry: 2 ** 53 }, RangeError, /^Invalid retry: .* got 9007199254740992$/],
  [{ retry: 2 ** 31 }, RangeError, /^Invalid retry: 2147483648 ms is more/],
  [
    { retry: "3000" },
    TypeError,
    /^Invalid retry: expected a number of milliseconds, got string$/,
  ],
  [
    { comment: 1 },
    TypeError,
    /^Invalid comment: expected a string, got number$/,
  ],
  [
    { data: () => 1 },
    TypeError,
    /^Invalid data: cannot be encoded as JSON: function$/,
  ],
  [
    { data: Symbol("s") },
    TypeError,
    /^Invalid data: cannot be encoded as JSON: symbol$/,
  ],
  [
    { data: 1n },
    TypeError,
    /^Invalid data: cannot be encoded as JSON: .*BigInt/,
  ],
  // One line: V8's message for a cycle takes three.
  [
    {
      data: (() => {
        const cycle: Record<string, unknown> = {};
        cycle.self = cycle;
        return cycle;
      })(),
    },
    TypeError,
    /^Invalid data: cannot be encoded as JSON: Converting circular structure to JSON [^\n]*'self' closes the circle$/,
  ],
  [
    { data: { toJSON: () => undefined } },
    TypeError,
    /^Invalid data: cannot be encoded as JSON: Object$/,
  ],
  [
    { data: "\uD800" },
    TypeError,
    /^Invalid data: contains a lone surrogate, which UTF-8 cannot encode: found at index 0$/,
  ],
  [
    { data: "a\n😀\uDC00" },
    TypeError,
    /^Invalid data: contains a lone surrogate.*index 4$/,
  ],
  [
    { event: "x\uDBFF", data: "" },
    TypeError,
    /^Invalid event: contains a lone surrogate.*index 1$/,
  ],
  [{ id: "\uDC00" }, TypeError, /^Invalid id: contains a lone surrogate/],
  [
    { comment: "\uD83D" },
    TypeError,
    /^Invalid comment: contains a lone surrogate/,
  ],
];

Deno.test(
  "encodeSSE writes an empty event type, which clients read as message",
  SANITIZED,
  async () => {
    const frame = encodeSSE({ event: "", data: "x" });
    assert.equal(frame, "event: \ndata: x\n\n");
    assert.deepEqual((await parse(encoder.encode(frame))).events, [
      { type: "message", data: "x", id: "" },
    ]);
  },
);

Deno.test(
  "encodeSSE writes an id with a tab, and any character but the control ones",
  SANITIZED,
  () => {
    assert.equal(encodeSSE({ id: "a\tb é 😀 ~" }), "id: a\tb é 😀 ~\n\n");
  },
);

Deno.test(
  "encodeSSE refuses what it cannot frame, naming the field and the problem",
  SANITIZED,
  () => {
    for (const [message, type, pattern] of refused) {
      assert.throws(
        () => encodeSSE(message as SSEMessage),
        (error: unknown) => {
          assert.ok(
            error instanceof type,
            `${Deno.inspect(message)}: ${error}`,
          );
          assert.match(error.message, pattern, Deno.inspect(message));
          return true;
        },
      );
    }
  },
);

Deno.test("encodeSSE keeps the JSON error as the cause", SANITIZED, () => {
  const cyclic: Record<string, unknown> = {};
  cyclic.self = cyclic;
  assert.throws(
    () => encodeSSE({ data: cyclic }),
    (error: unknown) =>
      error instanceof TypeError && error.cause instanceof TypeError &&
      error.message.startsWith("Invalid data: cannot be encoded as JSON: "),
  );
});

Deno.test(
  "SSEEncoderStream writes one UTF-8 chunk per message",
  SANITIZED,
  async () => {
    const chunks = await Array.fromAsync(
      ReadableStream.from<SSEMessage>([{ data: "é" }, { id: 1 }])
        .pipeThrough(new SSEEncoderStream()),
    );
    assert.equal(chunks.length, 2);
    assert.ok(chunks.every((chunk) => chunk instanceof Uint8Array));
    assert.deepEqual(chunks.map((chunk) => decoder.decode(chunk)), [
      "data: é\n\n",
      "id: 1\n\n",
    ]);
  },
);

Deno.test(
  "SSEEncoderStream errors on a refused message without writing any part of its frame",
  SANITIZED,
  async () => {
    const stream = new SSEEncoderStream();
    const writer = stream.writable.getWriter();
    const reader = stream.readable.getReader();
    const written = writer.write({ comment: "before", data: "ok" });
    assert.equal(
      decoder.decode((await reader.read()).value),
      ": before\ndata: ok\n\n",
    );
    await written;
    // The comment and event are valid and come first in the frame; the id is
    // not. Nothing of this frame may come out.
    const refusedWrite = writer.write({
      comment: "c",
      event: "e",
      data: "d",
      id: "1\n2",
    });
    await assert.rejects(
      reader.read(),
      /^TypeError: Invalid id: must not contain LF/,
    );
    await assert.rejects(refusedWrite, TypeError);
    await assert.rejects(writer.closed, TypeError);
  },
);

Deno.test(
  "any messages survive SSEEncoderStream then SSEParserStream at any chunking",
  SANITIZED,
  async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(validMessage, { maxLength: 8 }),
        fc.array(fc.nat(), { maxLength: 10 }),
        async (messages, cuts) => {
          const bytes = await encodeAll(messages);
          assert.deepEqual(await parse(bytes, cuts), expected(messages));
        },
      ),
      { numRuns: 300 },
    );
  },
);

Deno.test(
  "encodeSSE either refuses a message or writes one that parses back exactly",
  SANITIZED,
  async () => {
    // Any shape at all: wrong types, forbidden characters, lone surrogates.
    const anyString = fc.string({ unit: "binary", maxLength: 6 });
    const anything = fc.oneof(
      anyString,
      tricky,
      fc.integer(),
      fc.double(),
      fc.constant(undefined),
      fc.constant(null),
      fc.jsonValue({ maxDepth: 1 }),
    );
    const message = fc.oneof(
      fc.record({
        data: anything,
        event: anything,
        id: anything,
        retry: anything,
        comment: anything,
      }, { requiredKeys: [] }),
      anything,
    );
    await fc.assert(
      fc.asyncProperty(message, async (message) => {
        let frame: string;
        try {
          frame = encodeSSE(message as SSEMessage);
        } catch (error) {
          assert.ok(
            error instanceof TypeError || error instanceof RangeError,
            String(error),
          );
          return;
        }
        const m = message as SSEMessage;
        assert.deepEqual(await parse(encoder.encode(frame)), expected([m]));
        assert.ok(frame.endsWith("\n\n"));
      }),
      { numRuns: 1000 },
    );
  },
);

Deno.test(
  "Deno's EventSource reads the same events from the encoded bytes",
  SANITIZED,
  async () => {
    let body = new Uint8Array(0);
    const server = Deno.serve({
      hostname: "127.0.0.1",
      port: 0,
      onListen() {},
    }, () =>
      new Response(body, {
        headers: { "content-type": "text/event-stream" },
      }));
    const url = `http://127.0.0.1:${server.addr.port}/`;
    // EventSource fires its own "open" and "error" events: keep those names out.
    const message = validMessage.filter((m) =>
      m.event !== "open" && m.event !== "error"
    );
    try {
      await fc.assert(
        fc.asyncProperty(
          fc.array(message, { maxLength: 6 }),
          async (messages) => {
            // A last event that tells the client the stream is done.
            const sentinel: SSEMessage = { event: "open", data: "end" };
            body = await encodeAll([...messages, sentinel]);
            const want = expected(messages).events;
            const got: SSEEvent[] = [];
            const source = new EventSource(url);
            try {
              await new Promise<void>((resolve, reject) => {
                const listener = (event: Event) => {
                  const { data, lastEventId } = event as MessageEvent<string>;
                  got.push({ type: event.type, data, id: lastEventId });
                };
                for (const type of new Set(want.map((event) => event.type))) {
                  source.addEventListener(type, listener);
                }
                source.addEventListener("open", (event) => {
                  // The connection's own open event is not a MessageEvent.
                  if (event instanceof MessageEvent) resolve();
                });
                source.onerror = () => reject(new Error("EventSource error"));
              });
            } finally {
              source.close();
            }
            assert.deepEqual(got, want);
          },
        ),
        { numRuns: 20 },
      );
    } finally {
      await server.shutdown();
    }
  },
);
