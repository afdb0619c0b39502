// Copyright the sse authors. MIT license.
import assert from "node:assert/strict";
import fc from "fast-check";
import { type SSEEvent, SSEParserStream } from "../parser.ts";
import { referenceParse, type ReferenceResult } from "./_reference_parser.ts";

const encoder = new TextEncoder();

interface ParseResult extends ReferenceResult {
  retry: number | undefined;
}

async function parseChunks(
  chunks: Uint8Array[],
  options: { lastEventId?: string; maxEventSize?: number } = {},
): Promise<ParseResult> {
  const retries: number[] = [];
  const comments: string[] = [];
  const parser = new SSEParserStream({
    ...options,
    onRetry: (ms) => retries.push(ms),
    onComment: (text) => comments.push(text),
  });
  const events = await Array.fromAsync(
    ReadableStream.from(chunks).pipeThrough(parser),
  );
  return {
    events,
    lastEventId: parser.lastEventId,
    retries,
    comments,
    retry: parser.retry,
  };
}

function splitAt(bytes: Uint8Array, cuts: number[]): Uint8Array[] {
  const points = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((
    a,
    b,
  ) => a - b);
  const chunks: Uint8Array[] = [];
  let from = 0;
  for (const p of points) {
    chunks.push(bytes.slice(from, p));
    from = p;
  }
  chunks.push(bytes.slice(from));
  return chunks;
}

function splitEvery(bytes: Uint8Array, size: number): Uint8Array[] {
  const chunks: Uint8Array[] = [];
  for (let i = 0; i < bytes.length; i += size) {
    chunks.push(bytes.subarray(i, i + size));
  }
  return chunks;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let offset = 0;
  for (const p of parts) {
    out.set(p, offset);
    offset += p.length;
  }
  return out;
}

const bytesOf = (s: string) => encoder.encode(s);

// Values that stress decoding and the field rules: digits (retry), NUL (id),
// U+FEFF, multi-byte and invalid UTF-8, leading spaces, and long runs that
// make chunks take the decode-first path.
const value: fc.Arbitrary<Uint8Array> = fc.oneof(
  fc.constantFrom(
    "",
    " ",
    "x",
    "message",
    "\0",
    "a\0b",
    "\uFEFF",
    "é",
    "日本",
    "🎉",
    " lead",
  )
    .map(bytesOf),
  fc.stringMatching(/^[0-9]{1,7}$/).map(bytesOf),
  fc.string({ unit: "grapheme", maxLength: 10 }).filter((s) =>
    !/[\r\n]/.test(s)
  ).map(bytesOf),
  fc.constantFrom([0x80], [0xc3], [0xe6, 0x97], [0xf0, 0x9f, 0x8e], [0xff], [
    0xef,
    0xbb,
    0xbf,
  ])
    .map((b) => new Uint8Array(b)),
  fc.integer({ min: 100, max: 2500 }).map((n) => bytesOf("v".repeat(n))),
);

// One line of an event stream: a field (known, unknown, or mis-cased), a
// comment, or nothing (a blank line), then a line end of any kind.
const line: fc.Arbitrary<Uint8Array> = fc.tuple(
  fc.constantFrom(
    "data",
    "data",
    "event",
    "id",
    "retry",
    "",
    "Data",
    "foo",
    "da ta",
    "\uFEFFdata",
  ),
  fc.constantFrom(":", ": ", ":  ", "", " :"),
  fc.array(value, { maxLength: 3 }).map(concat),
  fc.constantFrom("\n", "\n", "\r", "\r\n", "\n\n", "\r\n\r\n", "\r\r", "\n\r"),
  fc.boolean(),
).map(([name, sep, v, end, blank]) =>
  blank ? bytesOf(end) : concat([bytesOf(name), bytesOf(sep), v, bytesOf(end)])
);

// Mostly ASCII lines of up to about 100 bytes, as most streams send: invalid
// bytes that decode one for one, now and then a multi-byte character.
const shortLine: fc.Arbitrary<Uint8Array> = fc.tuple(
  fc.constantFrom("data", "data", "data", "id", "event", "retry", "", "x"),
  fc.constantFrom(": ", ":", ""),
  fc.oneof(
    { arbitrary: fc.stringMatching(/^[ -~]{0,80}$/).map(bytesOf), weight: 30 },
    { arbitrary: fc.stringMatching(/^[0-9]{1,5}$/).map(bytesOf), weight: 5 },
    {
      arbitrary: fc.constantFrom([0x80], [0xff], [0xc3, 0xa9], [0xe6, 0x97])
        .map((b) => new Uint8Array(b)),
      weight: 1,
    },
  ),
  fc.constantFrom("\n", "\n", "\n\n", "\r\n", "\r\n\r\n", "\r"),
).map(([name, sep, v, end]) =>
  concat([bytesOf(name), bytesOf(sep), v, bytesOf(end)])
);

// A whole stream: maybe a BOM (or two), lines, maybe an unfinished last line.
const stream: fc.Arbitrary<Uint8Array> = fc.tuple(
  fc.constantFrom("", "", "\uFEFF", "\uFEFF\uFEFF").map(bytesOf),
  fc.array(line, { maxLength: 40 }),
  fc.oneof(
    fc.constant(new Uint8Array(0)),
    line.map((l) => l.subarray(0, l.length >> 1)),
  ),
).map(([bom, lines, tail]) => concat([bom, ...lines, tail]));

// Without the long values: small enough to feed one byte at a time.
const shortStream: fc.Arbitrary<Uint8Array> = stream.filter((b) =>
  b.length < 1500
);

Deno.test("SSEParserStream matches a literal reading of the standard for any stream and any chunking", async () => {
  await fc.assert(
    fc.asyncProperty(
      stream,
      fc.array(fc.nat(), { maxLength: 30 }),
      fc.constantFrom("", "seed", "42"),
      async (bytes, cuts, seed) => {
        const expected = referenceParse(bytes, seed);
        const actual = await parseChunks(splitAt(bytes, cuts), {
          lastEventId: seed,
        });
        assert.deepEqual(actual.events, expected.events);
        assert.equal(actual.lastEventId, expected.lastEventId);
        assert.deepEqual(actual.retries, expected.retries);
        assert.deepEqual(actual.comments, expected.comments);
        assert.equal(actual.retry, expected.retries.at(-1));
      },
    ),
    { numRuns: 600 },
  );
});

Deno.test("SSEParserStream gives the same events whole, byte by byte, and in fixed-size chunks", async () => {
  await fc.assert(
    fc.asyncProperty(
      shortStream,
      fc.integer({ min: 1, max: 600 }),
      async (bytes, size) => {
        const whole = await parseChunks([bytes]);
        const single = await parseChunks(
          splitAt(bytes, Array.from(bytes, (_, i) => i)),
        );
        const sized: Uint8Array[] = [];
        for (let i = 0; i < bytes.length; i += size) {
          sized.push(
            bytes.subarray(i, i + size),
          );
        }
        assert.deepEqual(single, whole);
        assert.deepEqual(await parseChunks(sized), whole);
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("SSEParserStream matches a literal reading of the standard with chunks of 256 B to 2 KiB that end mid-line or mid-character", async () => {
  // The chunking of a network stream of small events: a chunk rarely ends
  // at a line end, and mostly ASCII text decodes one character per byte.
  await fc.assert(
    fc.asyncProperty(
      fc.oneof(
        fc.array(stream, { minLength: 2, maxLength: 8 }).map(concat),
        fc.array(shortLine, { minLength: 20, maxLength: 150 }).map(concat),
      ),
      fc.array(fc.integer({ min: 256, max: 2048 }), {
        minLength: 1,
        maxLength: 8,
      }),
      async (bytes, sizes) => {
        const chunks: Uint8Array[] = [];
        for (let i = 0, k = 0; i < bytes.length; k++) {
          const size = sizes[k % sizes.length]!;
          chunks.push(bytes.slice(i, i + size));
          i += size;
        }
        const expected = referenceParse(bytes);
        const actual = await parseChunks(chunks);
        assert.deepEqual(actual.events, expected.events);
        assert.equal(actual.lastEventId, expected.lastEventId);
        assert.deepEqual(actual.retries, expected.retries);
        assert.deepEqual(actual.comments, expected.comments);
      },
    ),
    { numRuns: 200 },
  );
});

Deno.test("SSEParserStream joins a CRLF split across chunks into one line end", async () => {
  for (const size of [3, 300]) {
    const head = "data: a".padEnd(size, "a");
    const { events } = await parseChunks([
      encoder.encode(`${head}\r`),
      encoder.encode(`\ndata: b\r`),
      encoder.encode(`\n\r`),
      encoder.encode(`\n`),
    ]);
    assert.deepEqual(events, [{
      type: "message",
      data: `${head.slice(6)}\nb`,
      id: "",
    }]);
  }
});

Deno.test("SSEParserStream strips one BOM at the very start only, even split across chunks", async () => {
  const bom = [0xef, 0xbb, 0xbf];
  const body = [...encoder.encode("data: x\n\n")];
  for (const cut of [1, 2, 3]) {
    const bytes = new Uint8Array([...bom, ...body]);
    const { events } = await parseChunks([
      bytes.slice(0, cut),
      bytes.slice(cut),
    ]);
    assert.deepEqual(events, [{ type: "message", data: "x", id: "" }]);
  }
  // A second BOM is an ordinary character: here it starts the field name.
  const twice = await parseChunks([new Uint8Array([...bom, ...bom, ...body])]);
  assert.deepEqual(twice.events, []);
  // A U+FEFF that begins a later chunk is data, whatever the chunk size.
  for (const size of [8, 400]) {
    const first = encoder.encode("data: ".padEnd(size, " "));
    const { events } = await parseChunks([
      first,
      encoder.encode("\uFEFFz\n\n"),
    ]);
    assert.equal(events[0]?.data, " ".repeat(size - 6) + "\uFEFFz");
  }
});

Deno.test("SSEParserStream decodes multi-byte characters split across chunks and replaces invalid UTF-8", async () => {
  const text = encoder.encode("data: 日本🎉é\n\n");
  for (let cut = 0; cut <= text.length; cut++) {
    const { events } = await parseChunks([text.slice(0, cut), text.slice(cut)]);
    assert.deepEqual(events, [{ type: "message", data: "日本🎉é", id: "" }]);
  }
  const invalid = new Uint8Array([
    ...encoder.encode("data: a"),
    0xff,
    0xe6,
    0x97,
    ...encoder.encode("\n\n"),
  ]);
  const { events } = await parseChunks([invalid]);
  assert.deepEqual(events, [{
    type: "message",
    data: "a\uFFFD\uFFFD",
    id: "",
  }]);
});

Deno.test("SSEParserStream commits an id at a blank line without an event, never from a cut-off event", async () => {
  const parsed = await parseChunks([
    encoder.encode("id: 1\n\ndata: a\n\nid: 2\ndata: b"),
  ]);
  assert.deepEqual(parsed.events, [{ type: "message", data: "a", id: "1" }]);
  assert.equal(parsed.lastEventId, "1");
  const nul = await parseChunks([
    encoder.encode("id: 3\n\nid: 4\0\ndata: c\n\n"),
  ]);
  assert.deepEqual(nul.events, [{ type: "message", data: "c", id: "3" }]);
});

Deno.test("SSEParserStream seeds the last event ID for a reconnecting client", async () => {
  const parser = new SSEParserStream({ lastEventId: "7" });
  assert.equal(parser.lastEventId, "7");
  const events = await Array.fromAsync(
    ReadableStream.from([encoder.encode("data: a\n\nid\n\ndata: b\n\n")])
      .pipeThrough(parser),
  );
  assert.deepEqual(events, [
    { type: "message", data: "a", id: "7" },
    { type: "message", data: "b", id: "" },
  ]);
  assert.equal(parser.lastEventId, "");
});

Deno.test("SSEParserStream reports retry and comments in order through its options", async () => {
  const parsed = await parseChunks([
    encoder.encode(
      ": hello\n:  two spaces\n:\nretry: 1500\nretry: 1x\nretry\nretry: 20\n\n",
    ),
  ]);
  assert.deepEqual(parsed.comments, ["hello", " two spaces", ""]);
  assert.deepEqual(parsed.retries, [1500, 20]);
  assert.equal(parsed.retry, 20);
  assert.deepEqual(parsed.events, []);
});

Deno.test("SSEParserStream resets the event type after a block without data", async () => {
  const { events } = await parseChunks([
    encoder.encode("event: x\n\ndata\n\nevent: y\ndata:\n\n"),
  ]);
  assert.deepEqual(events, [
    { type: "message", data: "", id: "" },
    { type: "y", data: "", id: "" },
  ]);
});

Deno.test("SSEParserStream errors with a RangeError naming the limit when a line exceeds maxEventSize", async () => {
  for (const size of [10, 1000]) {
    const line = encoder.encode("data: " + "x".repeat(2000));
    const chunks: Uint8Array[] = [];
    for (let i = 0; i < line.length; i += size) {
      chunks.push(line.subarray(i, i + size));
    }
    await assert.rejects(
      parseChunks(chunks, { maxEventSize: 1024 }),
      (error: unknown) => {
        assert.ok(error instanceof RangeError);
        assert.match(error.message, /maxEventSize/);
        assert.match(error.message, /1024/);
        return true;
      },
    );
  }
});

Deno.test("SSEParserStream errors when the data of one event exceeds maxEventSize across many lines", async () => {
  const lines = "data: 0123456789\n".repeat(200);
  await assert.rejects(
    parseChunks([encoder.encode(lines)], { maxEventSize: 1000 }),
    RangeError,
  );
  // The same lines split into events stay within the limit.
  const events = "data: 0123456789\n\n".repeat(200);
  const { events: parsed } = await parseChunks([encoder.encode(events)], {
    maxEventSize: 1000,
  });
  assert.equal(parsed.length, 200);
});

Deno.test("SSEParserStream counts maxEventSize in UTF-8 bytes, not characters", async () => {
  const limit = { maxEventSize: 1000 };
  const chunkings: [string, (bytes: Uint8Array) => Uint8Array[]][] = [
    ["one chunk", (bytes) => [bytes]],
    ["7-byte chunks", (bytes) => splitEvery(bytes, 7)],
    ["300-byte chunks", (bytes) => splitEvery(bytes, 300)],
  ];
  // 2, 3 and 4 bytes each (4 in two UTF-16 code units).
  for (const char of ["é", "中", "😀"]) {
    const bytes = encoder.encode(char).length;
    // Under 1000 characters (code units), over 1000 bytes.
    const count = Math.floor(990 / char.length);
    const over = char.repeat(count);
    assert.ok(over.length < 1000 && count * bytes > 1000);
    // Under 1000 bytes, line included.
    const under = char.repeat(Math.floor(980 / bytes));
    for (const [name, split] of chunkings) {
      const where = `${char} in ${name}`;
      for (
        const input of [
          `data: ${over}`, // an unfinished line
          `data: ${over}\n\n`, // a whole event
          `data: ${over.slice(0, over.length / 2)}\ndata: ${
            over.slice(over.length / 2)
          }\n\n`, // data over two lines
        ]
      ) {
        await assert.rejects(
          parseChunks(split(encoder.encode(input)), limit),
          /maxEventSize: more than 1000 bytes/,
          `${where}: ${input.length} characters, ${
            encoder.encode(input).length
          } bytes`,
        );
      }
      const { events } = await parseChunks(
        split(encoder.encode(`data: ${under}\n\ndata: ${under}\n\n`)),
        limit,
      );
      assert.deepEqual(
        events.map((event) => event.data),
        [under, under],
        where,
      );
    }
  }
});

Deno.test("SSEParserStream accepts events up to the default limit of 16 MiB and refuses larger", async () => {
  const ok = encoder.encode(`data: ${"x".repeat(15 * 1024 * 1024)}\n\n`);
  const chunks: Uint8Array[] = [];
  for (let i = 0; i < ok.length; i += 65536) {
    chunks.push(ok.subarray(i, i + 65536));
  }
  const { events } = await parseChunks(chunks);
  assert.equal(events[0]?.data.length, 15 * 1024 * 1024);
  const tooBig = encoder.encode(`data: ${"x".repeat(17 * 1024 * 1024)}`);
  await assert.rejects(
    parseChunks([tooBig]),
    /maxEventSize: more than 16777216 bytes/,
  );
});

Deno.test("SSEParserStream refuses chunks that are not bytes and invalid options", async () => {
  const writable = new SSEParserStream();
  const writer = writable.writable.getWriter();
  const reading = writable.readable.getReader().read();
  await assert.rejects(
    writer.write("data: x\n\n" as unknown as Uint8Array),
    /SSEParserStream expects Uint8Array chunks: received string/,
  );
  await assert.rejects(reading, TypeError);
  assert.throws(() => new SSEParserStream({ maxEventSize: 0 }), RangeError);
  assert.throws(
    () => new SSEParserStream({ maxEventSize: Number.NaN }),
    RangeError,
  );
});

/**
 * Milliseconds to parse one `data:` line of `total` bytes sent in chunks of
 * `size`: "x" bytes, or "é" (two bytes each) with `multiByte`.
 */
async function timeLine(
  total: number,
  size: number,
  { maxEventSize = Infinity, multiByte = false } = {},
): Promise<number> {
  const chunk = new Uint8Array(size);
  if (multiByte) {
    for (let j = 0; j < size; j += 2) chunk.set([0xc3, 0xa9], j);
  } else {
    chunk.fill(0x78);
  }
  const count = Math.floor(total / size);
  let i = 0;
  const source = new ReadableStream<Uint8Array>({
    start(controller) {
      controller.enqueue(encoder.encode("data: "));
    },
    pull(controller) {
      // Fresh views of the same bytes: what matters is the parser's work.
      for (let k = 0; k < 64 && i < count; k++, i++) {
        controller.enqueue(chunk.subarray(0));
      }
      if (i === count) {
        controller.enqueue(encoder.encode("\n\n"));
        controller.close();
      }
    },
  });
  const start = performance.now();
  const events: SSEEvent[] = await Array.fromAsync(
    source.pipeThrough(new SSEParserStream({ maxEventSize })),
  );
  const elapsed = performance.now() - start;
  assert.equal(
    events[0]?.data.length,
    multiByte ? count * size / 2 : count * size,
  );
  return elapsed;
}

// Cost must be linear in the input also for one huge line in tiny chunks: the
// unfinished line is collected as bytes and decoded once, never re-joined.
Deno.test("SSEParserStream parses a 50 MB line in linear time at every chunk size", async () => {
  const time = (total: number, size: number) => timeLine(total, size);
  // 50 MB against 1 MB at every chunk size, from 1 byte to 64 KiB.
  const cases: [number, number, number][] = [1, 16, 1024, 65536].map((size) => [
    size,
    1_000_000,
    50_000_000,
  ]);
  const median = (values: number[]) =>
    values.sort((a, b) => a - b)[values.length >> 1]!;
  for (const [size, small, large] of cases) {
    // A 1 MB run in large chunks takes about a millisecond, where one garbage
    // collection can double it: take the median of five. The 50 MB run takes
    // the best of three where that is cheap (not at one byte per chunk).
    const bases: number[] = [];
    for (let k = 0; k < 5; k++) bases.push(await time(small, size));
    const base = median(bases);
    const runs: number[] = [];
    for (let k = 0; k < (size >= 1024 ? 3 : 1); k++) {
      runs.push(await time(large, size));
    }
    const big = Math.min(...runs);
    const ratio = big / base;
    // Linear: ~50× the work. A 1 MB run fits in the CPU's caches and a 50 MB
    // one does not, and only the large one meets large-object GC: measured
    // 30-200× here, 368× with four CPU hogs on two cores (the 0.5 ms base
    // ran between time slices, the 50 MB runs did not). Quadratic would be
    // ≥ 2500×.
    assert.ok(
      ratio < 1500,
      `chunk ${size}: ${large} B took ${ratio.toFixed(1)}× the ${small} B run`,
    );
  }
});

// Counting bytes for maxEventSize must stay linear too: the line is counted
// once when it is large enough to matter, then piece by piece.
Deno.test("SSEParserStream counts a huge multi-byte line against maxEventSize in linear time", async () => {
  const median = (values: number[]) =>
    values.sort((a, b) => a - b)[values.length >> 1]!;
  const cases: [number, number, number][] = [
    [16, 200_000, 10_000_000],
    [1024, 1_000_000, 50_000_000],
    [65536, 1_000_000, 50_000_000],
  ];
  for (const [size, small, large] of cases) {
    // A limit above each line (2 bytes a character) but below 3 bytes a
    // character: the line is counted from 80 % of it.
    const bases: number[] = [];
    for (let k = 0; k < 5; k++) {
      bases.push(
        await timeLine(small, size, {
          maxEventSize: small * 1.2,
          multiByte: true,
        }),
      );
    }
    const big = await timeLine(large, size, {
      maxEventSize: large * 1.2,
      multiByte: true,
    });
    const ratio = big / median(bases);
    // Linear: ~50x the work; quadratic would be >= 2500x. The bound leaves
    // room for load, which slows the one large run more than the median of
    // five small ones (see above).
    assert.ok(
      ratio < 1500,
      `chunk ${size}: ${large} B took ${ratio.toFixed(1)}x the ${small} B run`,
    );
  }
});
