// Copyright the sse authors. MIT license.
// Conformance of SSEParserStream with the web-platform-tests
// `eventsource/format-*` cases, the examples of the HTML standard (§9.2.1,
// §9.2.6), and the parser rules of DESIGN.md, each run whole, one byte at a
// time, split in two at every position and split in three at a sample of
// position pairs.
//
// The WPT streams are rebuilt byte for byte from the test files and the Python
// resources that serve them:
// - resources/message.py answers `message + newline + "\n"`, where `newline` is
//   "\n\n", or "" with `newline=none`; `message` is the query parameter,
//   percent-decoded to bytes (and "+" to a space, as Python's parse_qsl does).
// - resources/last-event-id.py answers `"id: " + idvalue + "\nretry: 200\ndata:
//   hello\n\n"` (idvalue defaults to "…"), or `"data: " + Last-Event-ID +
//   "\n\n"` when the request carries that header.
// - resources/last-event-id2.py answers one fixed stream per `type`.
// - resources/message2.py writes one fixed sequence of chunks in a loop.
// https://github.com/web-platform-tests/wpt/tree/master/eventsource
//
// The format-mime-* tests check the content type, which is the client's job;
// their body (message.py's default) is parsed here all the same.

import assert from "node:assert/strict";
import { type SSEEvent, SSEParserStream } from "../parser.ts";

type Input = string | number[] | Uint8Array;

interface Case {
  /** What the parser does, as the end of a sentence. */
  title: string;
  /** Where the case comes from. */
  source: string;
  /** The stream; a list gives the chunking used by the "as given" run. */
  input: Input | Input[];
  /** `lastEventId` option: the ID a reconnecting client starts from. */
  seed?: string;
  events: SSEEvent[];
  lastEventId: string;
  /** onRetry calls, in order (none when left out). */
  retries?: number[];
  /** onComment calls, in order (none when left out). */
  comments?: string[];
}

interface Outcome {
  events: SSEEvent[];
  lastEventId: string;
  retry: number | undefined;
  retries: number[];
  comments: string[];
}

const encoder = new TextEncoder();

function bytes(...parts: Input[]): Uint8Array<ArrayBuffer> {
  const arrays = parts.map((part) =>
    typeof part === "string"
      ? encoder.encode(part)
      : part instanceof Uint8Array
      ? part
      : Uint8Array.from(part)
  );
  const out = new Uint8Array(arrays.reduce((n, a) => n + a.length, 0));
  let offset = 0;
  for (const array of arrays) {
    out.set(array, offset);
    offset += array.length;
  }
  return out;
}

/** A query-string value as wptserve hands it to the Python resource. */
function query(value: string): Uint8Array {
  const out: number[] = [];
  for (let i = 0; i < value.length; i++) {
    const c = value[i]!;
    if (c === "%") {
      out.push(parseInt(value.slice(i + 1, i + 3), 16));
      i += 2;
    } else if (c === "+") {
      out.push(0x20);
    } else {
      out.push(...encoder.encode(c));
    }
  }
  return Uint8Array.from(out);
}

/** The body resources/message.py sends for `message`. */
function messagePy(message: Input, newline: "none" | "default" = "default") {
  return bytes(message, newline === "none" ? "" : "\n\n", "\n");
}

/** The body resources/last-event-id.py sends without Last-Event-ID. */
function lastEventIdPy(idvalue: Input = "\u2026"): Uint8Array {
  return bytes("id: ", idvalue, "\nretry: 200\ndata: hello\n\n");
}

function event(data: string, id = "", type = "message"): SSEEvent {
  return { type, data, id };
}

const BOM = [0xef, 0xbb, 0xbf];
const LONG = "x".repeat(2 * 1024);

const WPT_CASES: Case[] = [
  {
    title: "drops one leading BOM and reads a later U+FEFF as part of a name",
    source: "WPT eventsource/format-bom.any.js",
    input: messagePy(
      query("%EF%BB%BFdata%3A1%0A%0A%EF%BB%BFdata%3A2%0A%0Adata%3A3"),
    ),
    events: [event("1"), event("3")],
    lastEventId: "",
  },
  {
    title: "drops only the first of two leading BOMs",
    source: "WPT eventsource/format-bom-2.any.js",
    input: messagePy(
      query("%EF%BB%BF%EF%BB%BFdata%3A1%0A%0Adata%3A2%0A%0Adata%3A3"),
    ),
    events: [event("2"), event("3")],
    lastEventId: "",
  },
  {
    title: "skips comment lines of any length between data lines",
    source: "WPT eventsource/format-comments.any.js",
    input: messagePy(
      "data:1\r:\0\n:\r\ndata:2\n:" + LONG + "\rdata:3\n:data:fail\r:" + LONG +
        "\ndata:4\n",
      "none",
    ),
    events: [event("1\n2\n3\n4")],
    lastEventId: "",
    comments: ["\0", "", LONG, "data:fail", LONG],
  },
  {
    title: "discards an event cut off by the end of the stream with its id",
    source: "WPT eventsource/format-data-before-final-empty-line.any.js",
    input: messagePy("retry:1000\ndata:test1\n\nid:test\ndata:test2", "none"),
    events: [event("test1")],
    lastEventId: "",
    retries: [1000],
  },
  {
    title: "dispatches an empty data field as an empty string",
    source: "WPT eventsource/format-field-data.any.js",
    input: messagePy(query("data%3A%0A%0Adata%0Adata%0A%0Adata%3Atest")),
    events: [event(""), event("\n"), event("test")],
    lastEventId: "",
  },
  {
    title: "gives an event its custom type, then resets the type",
    source: "WPT eventsource/format-field-event.any.js",
    input: messagePy(query("event%3Atest%0Adata%3Ax%0A%0Adata%3Ax")),
    events: [event("x", "", "test"), event("x")],
    lastEventId: "",
  },
  {
    title: "dispatches an empty event type as message",
    source: "WPT eventsource/format-field-event-empty.any.js",
    input: messagePy(query("event%3A%20%0Adata%3Adata")),
    events: [event("data")],
    lastEventId: "",
  },
  {
    title: "carries a non-ASCII id and reads the retry field",
    source:
      "WPT eventsource/format-field-id.any.js, first response of resources/last-event-id.py",
    input: lastEventIdPy(),
    events: [event("hello", "\u2026")],
    lastEventId: "\u2026",
    retries: [200],
  },
  {
    title: "keeps a seeded last event ID for id-less events after a reconnect",
    source:
      "WPT eventsource/format-field-id.any.js and format-field-id-2.any.js, resources/last-event-id.py answering Last-Event-ID: \u2026",
    input: bytes("data: \u2026\n\n"),
    seed: "\u2026",
    events: [event("\u2026", "\u2026")],
    lastEventId: "\u2026",
  },
  {
    title: "lets the last event ID persist until another id field",
    source:
      "WPT eventsource/format-field-id-3.window.js, resources/last-event-id2.py?type=1",
    input: "id: 1\ndata: 1\n\ndata: 2\n\nid: 2\ndata:3\n\ndata:4\n\n",
    events: [
      event("1", "1"),
      event("2", "1"),
      event("3", "2"),
      event("4", "2"),
    ],
    lastEventId: "2",
  },
  {
    title: "resets the last event ID with an empty id field",
    source:
      "WPT eventsource/format-field-id-3.window.js, resources/last-event-id2.py?type=2",
    input: "id: 1\ndata: 1\n\nid:\ndata:2\n\ndata:3\n\n",
    events: [event("1", "1"), event("2"), event("3")],
    lastEventId: "",
  },
  {
    title: "resets the last event ID with an id line without a colon",
    source:
      "WPT eventsource/format-field-id-3.window.js, resources/last-event-id2.py?type=3",
    input: "id: 1\ndata: 1\n\nid\ndata:2\n\ndata:3\n\n",
    events: [event("1", "1"), event("2"), event("3")],
    lastEventId: "",
  },
  ...["%00%00", "x%00", "%00x", "x%00x", "%20%00"].map((idvalue): Case => ({
    title: `ignores an id field set to ${idvalue}`,
    source:
      `WPT eventsource/format-field-id-null.window.js, resources/last-event-id.py?idvalue=${idvalue}`,
    input: lastEventIdPy(query(idvalue)),
    events: [event("hello")],
    lastEventId: "",
    retries: [200],
  })),
  {
    title:
      "matches field names exactly, splits at the first colon and drops one space",
    source: "WPT eventsource/format-field-parsing.any.js",
    input: messagePy(
      "data:\0\ndata:  2\rData:1\ndata\0:2\ndata:1\r\0data:4\nda-ta:3\rdata_5\ndata:3\rdata:\r\n data:32\ndata:4\n",
      "none",
    ),
    events: [event("\0\n 2\n1\n3\n\n4")],
    lastEventId: "",
  },
  {
    title: "reads a retry field with a leading zero in base ten",
    source: "WPT eventsource/format-field-retry.any.js",
    input: messagePy(query("retry%3A03000%0Adata%3Ax")),
    events: [event("x")],
    lastEventId: "",
    retries: [3000],
  },
  {
    title: "ignores a retry field that is not all digits",
    source: "WPT eventsource/format-field-retry-bogus.any.js",
    input: messagePy(query("retry%3A3000%0Aretry%3A1000x%0Adata%3Ax")),
    events: [event("x")],
    lastEventId: "",
    retries: [3000],
  },
  {
    title: "ignores an empty retry field",
    source: "WPT eventsource/format-field-retry-empty.any.js",
    input: messagePy(query("retry%0Adata%3Atest")),
    events: [event("test")],
    lastEventId: "",
  },
  {
    title: "ignores unknown fields and names with a leading space",
    source: "WPT eventsource/format-field-unknown.any.js",
    input: messagePy(
      query(
        "data%3Atest%0A%20data%0Adata%0Afoobar%3Axxx%0Ajustsometext%0A%3Athisisacommentyay%0Adata%3Atest",
      ),
    ),
    events: [event("test\n\ntest")],
    lastEventId: "",
    comments: ["thisisacommentyay"],
  },
  {
    title: "drops a space but not a tab after the colon",
    source: "WPT eventsource/format-leading-space.any.js",
    input: messagePy(query("data%3A%09test%0Ddata%3A%20%0Adata%3Atest")),
    events: [event("\ttest\n\ntest")],
    lastEventId: "",
  },
  {
    title: "accepts CRLF, LF and CR line ends in one stream",
    source: "WPT eventsource/format-newlines.any.js",
    input: messagePy(
      query("data%3Atest%0D%0Adata%0Adata%3Atest%0D%0A%0D"),
      "none",
    ),
    events: [event("test\n\ntest")],
    lastEventId: "",
  },
  {
    title: "keeps a NUL character in data",
    source: "WPT eventsource/format-null-character.any.js",
    input: messagePy(query("data%3A%00%0A%0A")),
    events: [event("\0")],
    lastEventId: "",
  },
  {
    title: "decodes UTF-8 whatever the declared charset",
    source: "WPT eventsource/format-utf-8.any.js",
    input: messagePy(query("data%3Aok%E2%80%A6")),
    events: [event("ok\u2026")],
    lastEventId: "",
  },
  {
    title: "parses the default body of resources/message.py",
    source:
      "WPT eventsource/format-mime-trailing-semicolon.any.js (body only; MIME checks belong to the client)",
    input: messagePy("data: data"),
    events: [event("data")],
    lastEventId: "",
  },
  {
    title: "parses one round of resources/message2.py, chunked as written",
    source: "WPT eventsource/event-data.any.js, resources/message2.py",
    input: [
      "data:msg",
      "\n",
      "data: msg",
      "\n\n",
      ":",
      "\n",
      "falsefield:msg",
      "\n\n",
      "falsefield:msg",
      "\n",
      "Data:data",
      "\n\n",
      "data",
      "\n\n",
      "data:end",
      "\n\n",
    ],
    events: [event("msg\nmsg"), event(""), event("end")],
    lastEventId: "",
    comments: [""],
  },
  {
    title: "parses the first answer of resources/reconnect-fail.py",
    source:
      "WPT eventsource/eventsource-reconnect, resources/reconnect-fail.py",
    input: "retry: 2\ndata: opened\n\n",
    events: [event("opened")],
    lastEventId: "",
    retries: [2],
  },
];

const SPEC_CASES: Case[] = [
  {
    title: "parses the three messages of the introduction",
    source: "HTML §9.2.1",
    input:
      "data: This is the first message.\n\ndata: This is the second message, it\ndata: has two lines.\n\ndata: This is the third message.\n\n",
    events: [
      event("This is the first message."),
      event("This is the second message, it\nhas two lines."),
      event("This is the third message."),
    ],
    lastEventId: "",
  },
  {
    title: "parses the add and remove events of the introduction",
    source: "HTML §9.2.1",
    input:
      "event: add\ndata: 73857293\n\nevent: remove\ndata: 2153\n\nevent: add\ndata: 113411\n\n",
    events: [
      event("73857293", "", "add"),
      event("2153", "", "remove"),
      event("113411", "", "add"),
    ],
    lastEventId: "",
  },
  {
    title: "joins the data lines of the stock ticker example with LF",
    source: "HTML §9.2.6, YHOO example",
    input: "data: YHOO\ndata: +2\ndata: 10\n\n",
    events: [event("YHOO\n+2\n10")],
    lastEventId: "",
  },
  {
    title: "sets and resets the last event ID as in the four-block example",
    source: "HTML §9.2.6, test stream example",
    input:
      ": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n\n",
    events: [
      event("first event", "1"),
      event("second event"),
      event(" third event"),
    ],
    lastEventId: "",
    comments: ["test stream"],
  },
  {
    title: "does not dispatch the four-block example's last block at the end",
    source:
      "HTML §9.2.6, test stream example: the end of the stream is not enough",
    input:
      ": test stream\n\ndata: first event\nid: 1\n\ndata:second event\nid\n\ndata:  third event\n",
    events: [event("first event", "1"), event("second event")],
    lastEventId: "",
    comments: ["test stream"],
  },
  {
    title: "fires two events for the empty data example",
    source: "HTML §9.2.6, data/data data/data: example",
    input: "data\n\ndata\ndata\n\ndata:",
    events: [event(""), event("\n")],
    lastEventId: "",
  },
  {
    title: "fires two identical events for data:test and data: test",
    source: "HTML §9.2.6, space after the colon example",
    input: "data:test\n\ndata: test\n\n",
    events: [event("test"), event("test")],
    lastEventId: "",
  },
];

const RULE_CASES: Case[] = [
  {
    title: "joins a CR ending one chunk and an LF starting the next",
    source: "DESIGN.md: CR at a chunk's end + LF at the next one's start",
    input: ["data: a\r", "\ndata: b\r", "\n\r", "\n"],
    events: [event("a\nb")],
    lastEventId: "",
  },
  {
    title: "ends lines at a CR followed by more of the same chunk",
    source: "DESIGN.md: CR, LF and CRLF line ends at any chunking",
    input: ["data: a\rdata: b", "\n\ndata: c\r", "\r"],
    events: [event("a\nb"), event("c")],
    lastEventId: "",
  },
  {
    title: "reads CR CR as a line end and a blank line",
    source: "HTML §9.2.6 line ends",
    input: "data: a\r\rdata: b\r\r",
    events: [event("a"), event("b")],
    lastEventId: "",
  },
  {
    title: "keeps a pending CR across empty chunks",
    source: "DESIGN.md: CR at a chunk's end + LF at the next one's start",
    input: ["data: a\r", "", "\n", "\r", "", "\n", "data: b\n\n"],
    events: [event("a"), event("b")],
    lastEventId: "",
  },
  {
    title: "dispatches at a final CR that ends a blank line",
    source: "HTML §9.2.6: a CR not followed by LF ends a line",
    input: "data: a\r\n\r",
    events: [event("a")],
    lastEventId: "",
  },
  {
    title: "treats U+2028, U+2029, NEL and form feed as ordinary characters",
    source: "HTML §9.2.5 ABNF: only CR and LF end lines",
    input: "data: a\u2028b\u2029c\u0085d\fe\vf\n\n",
    events: [event("a\u2028b\u2029c\u0085d\fe\vf")],
    lastEventId: "",
  },
  {
    title: "drops a BOM split over the first three chunks",
    source: "DESIGN.md: exactly one BOM, only at the very start",
    input: [[0xef], [0xbb], bytes([0xbf], "data: a\n\n")],
    events: [event("a")],
    lastEventId: "",
  },
  {
    title: "drops a BOM that is the whole first chunk",
    source: "DESIGN.md: exactly one BOM, only at the very start",
    input: [BOM, "data: a\n\n"],
    events: [event("a")],
    lastEventId: "",
  },
  {
    title: "keeps U+FEFF at the start of a second chunk that starts a line",
    source: "DESIGN.md: later U+FEFF are ordinary characters",
    input: ["data: a\n", "\uFEFFdata: b\n\n"],
    events: [event("a")],
    lastEventId: "",
  },
  {
    title: "keeps U+FEFF at the start of a second chunk inside a value",
    source: "DESIGN.md: later U+FEFF are ordinary characters",
    input: ["data: a", "\uFEFFb\n\n"],
    events: [event("a\uFEFFb")],
    lastEventId: "",
  },
  {
    title: "keeps U+FEFF that is a whole value in its own chunk",
    source: "DESIGN.md: later U+FEFF are ordinary characters",
    input: ["data: ", "\uFEFF", "\n\n", "\uFEFF\uFEFF", "data:\uFEFF\n\n"],
    events: [event("\uFEFF")],
    lastEventId: "",
  },
  {
    title: "dispatches nothing for a stream that is only a BOM",
    source: "DESIGN.md: exactly one BOM, only at the very start",
    input: [BOM],
    events: [],
    lastEventId: "",
  },
  {
    title: "reads a BOM followed by blank lines",
    source: "DESIGN.md: exactly one BOM, only at the very start",
    input: [bytes(BOM, "\n\ndata: x\n\n")],
    events: [event("x")],
    lastEventId: "",
  },
  {
    title: "decodes half a BOM as U+FFFD, a field name",
    source: "HTML §9.2.6: UTF-8 decode; DESIGN.md: invalid UTF-8 is U+FFFD",
    input: [[0xef, 0xbb], "\ndata: x\n\n"],
    events: [event("x")],
    lastEventId: "",
  },
  {
    title: "decodes an invalid byte as U+FFFD",
    source: "DESIGN.md: invalid UTF-8 becomes U+FFFD",
    input: [bytes("data: a", [0xff], "b\n\n")],
    events: [event("a\uFFFDb")],
    lastEventId: "",
  },
  {
    title: "decodes a sequence cut off by a line end as one U+FFFD",
    source: "DESIGN.md: invalid UTF-8 becomes U+FFFD",
    input: [bytes("data: ", [0xe2, 0x82], "\ndata: ", [0xc3], "\r\n\r\n")],
    events: [event("\uFFFD\n\uFFFD")],
    lastEventId: "",
  },
  {
    title: "decodes surrogates, overlong forms and out-of-range code points",
    source: "DESIGN.md: invalid UTF-8 becomes U+FFFD (WHATWG Encoding)",
    input: [
      bytes(
        "data: ",
        [0xed, 0xa0, 0x80, 0xc0, 0xaf, 0xf4, 0x90, 0x80, 0x80],
        "\n\n",
      ),
    ],
    events: [event("\uFFFD".repeat(9))],
    lastEventId: "",
  },
  {
    title: "decodes multi-byte characters split across chunks whole",
    source: "DESIGN.md: multi-byte characters split across chunks decode whole",
    input: ["data: \u00e9\u20ac\u{1F600}\u4e2d\n\n"],
    events: [event("\u00e9\u20ac\u{1F600}\u4e2d")],
    lastEventId: "",
  },
  {
    title: "decodes invalid UTF-8 in event types and ids as U+FFFD",
    source: "DESIGN.md: invalid UTF-8 becomes U+FFFD",
    input: [bytes("event: ", [0xff], "\nid: ", [0xfe], "\ndata: x\n\n")],
    events: [event("x", "\uFFFD", "\uFFFD")],
    lastEventId: "\uFFFD",
  },
  {
    title: "keeps the previous last event ID when an id contains NUL",
    source: "DESIGN.md: an id containing U+0000 is ignored",
    input: "id: 1\ndata: a\n\nid: 2\0\ndata: b\n\n",
    events: [event("a", "1"), event("b", "1")],
    lastEventId: "1",
  },
  {
    title: "accepts a retry field only when it is all ASCII digits",
    source: "DESIGN.md: retry only when all ASCII digits",
    input:
      "retry: 100\nretry: -1\nretry: 1.5\nretry: 1e3\nretry:  200\nretry: \u0663\nretry: +5\nretry: 5 \nretry\nretry:\nretry: 0\nretry: 7\n\n",
    events: [],
    lastEventId: "",
    retries: [100, 0, 7],
  },
  {
    title: "applies a retry field at its line, not at dispatch",
    source: "HTML §9.2.6: fields are processed line by line",
    input: "retry: 10\n\nretry: 20\nretry: 30",
    events: [],
    lastEventId: "",
    retries: [10, 20],
  },
  {
    title: "commits an id at a blank line without dispatching",
    source: "DESIGN.md: an id line commits at the next blank line",
    input: "id: 1\n\nid: 2\nevent: x\n\ndata: y\n\n",
    events: [event("y", "2")],
    lastEventId: "2",
  },
  {
    title: "commits an id at the final blank line of the stream",
    source: "DESIGN.md: an id line commits at the next blank line",
    input: "data: a\n\nid: 7\n\n",
    events: [event("a")],
    lastEventId: "7",
  },
  {
    title: "never commits an id of an event cut off by the end of the stream",
    source: "DESIGN.md: an id inside an event cut off is never committed",
    input: "id: 1\n\nid: 2\ndata: x\n",
    events: [],
    lastEventId: "1",
  },
  {
    title: "never commits an id line cut off by the end of the stream",
    source: "DESIGN.md: an id inside an event cut off is never committed",
    input: "id: 1\n\nid: 2",
    events: [],
    lastEventId: "1",
  },
  {
    title: "starts from the seed and follows the ids of the stream",
    source: "DESIGN.md: lastEventId seed",
    input: "data: a\n\nid: 42\ndata: b\n\nid\n\ndata: c\n\n",
    seed: "41",
    events: [event("a", "41"), event("b", "42"), event("c")],
    lastEventId: "",
  },
  {
    title: "keeps the seed when the only id is cut off",
    source: "DESIGN.md: lastEventId seed",
    input: "id: 42\ndata: x",
    seed: "41",
    events: [],
    lastEventId: "41",
  },
  {
    title: "dispatches data fields without a value as empty strings",
    source: "DESIGN.md: data with no value dispatches an empty string",
    input: "data\n\ndata:\n\ndata: \n\n",
    events: [event(""), event(""), event("")],
    lastEventId: "",
  },
  {
    title: "resets the event type after a block without data",
    source: "DESIGN.md: a block without data dispatches nothing, resets type",
    input: "event: a\n\ndata: x\n\nevent: b\nid: 3\n\ndata: y\n\n",
    events: [event("x"), event("y", "3")],
    lastEventId: "3",
  },
  {
    title: "discards an event whose last line has a line end but no blank line",
    source: "DESIGN.md: the end of the stream discards an incomplete event",
    input: "data: a\n\ndata: b\n",
    events: [event("a")],
    lastEventId: "",
  },
  {
    title: "discards an event whose last line has no line end",
    source: "DESIGN.md: the end of the stream discards an incomplete event",
    input: "data: a\n\nevent: c\ndata: b",
    events: [event("a")],
    lastEventId: "",
  },
  {
    title: "discards an event ending in a single CR",
    source: "DESIGN.md: the end of the stream discards an incomplete event",
    input: "data: a\r\rdata: b\r",
    events: [event("a")],
    lastEventId: "",
  },
  {
    title: "reports comments with one leading space removed",
    source: "SSEParserOptions.onComment",
    input: ":\n: a\n:  b\n:\tc\n:no space\n:data: x\n",
    events: [],
    lastEventId: "",
    comments: ["", "a", " b", "\tc", "no space", "data: x"],
  },
  {
    title: "matches field names exactly and keeps later colons in the value",
    source: "HTML §9.2.6: field names are compared literally",
    input: "DATA: x\nData: x\ndata : x\n data: x\ndata:x:y\n\n",
    events: [event("x:y")],
    lastEventId: "",
  },
  {
    title: "keeps spaces and colons in ids and event types",
    source: "HTML §9.2.6: only one leading space is removed",
    input: "id:  a: b \nevent:  spaced\ndata: x\n\nevent\ndata: y\n\n",
    events: [event("x", " a: b ", " spaced"), event("y", " a: b ")],
    lastEventId: " a: b ",
  },
  {
    title: "reads blank CRLF lines before the first event",
    source: "HTML §9.2.6 line ends",
    input: "\r\n\r\n\r\ndata: x\r\n\r\n",
    events: [event("x")],
    lastEventId: "",
  },
  {
    title: "collects a long line split across many chunks",
    source: "DESIGN.md: one huge line split into thousands of chunks",
    input: Array.from(
      { length: 300 },
      (_, i) => i === 0 ? "data: " : i === 299 ? "z\n\n" : "0123456789",
    ),
    events: [event("0123456789".repeat(298) + "z")],
    lastEventId: "",
  },
];

const CASES: Case[] = [...WPT_CASES, ...SPEC_CASES, ...RULE_CASES];

// Deno 2.9 runs tests with the op and resource sanitizers off unless asked.
const SANITIZED = { sanitizeOps: true, sanitizeResources: true } as const;

// --- the runner --------------------------------------------------------------

function chunksOf(input: Input | Input[]): Uint8Array[] {
  if (Array.isArray(input) && input.some((part) => typeof part !== "number")) {
    return (input as Input[]).map((part) => bytes(part));
  }
  return [bytes(input as Input)];
}

async function parse(
  chunks: Uint8Array[],
  seed: string | undefined,
): Promise<Outcome> {
  const retries: number[] = [];
  const comments: string[] = [];
  const parser = new SSEParserStream({
    ...(seed === undefined ? {} : { lastEventId: seed }),
    onRetry: (ms) => retries.push(ms),
    onComment: (text) => comments.push(text),
  });
  const events = await Array.fromAsync(
    ReadableStream.from(chunks).pipeThrough(parser),
  );
  return {
    events,
    lastEventId: parser.lastEventId,
    retry: parser.retry,
    retries,
    comments,
  };
}

function expected(c: Case): Outcome {
  const retries = c.retries ?? [];
  return {
    events: c.events,
    lastEventId: c.lastEventId,
    retry: retries.at(-1),
    retries,
    comments: c.comments ?? [],
  };
}

// A small deterministic generator, so that a failure can be replayed.
function random(seed: number): () => number {
  let state = seed >>> 0 || 1;
  return () => {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    return (state >>> 0) / 0x1_0000_0000;
  };
}

/** The chunkings every case runs under, with a label for failures. */
function* chunkings(c: Case): Generator<[string, Uint8Array[]]> {
  const given = chunksOf(c.input);
  const whole = bytes(...given);
  const n = whole.length;
  if (given.length > 1) yield ["as given", given];
  yield ["whole", [whole]];
  yield ["one byte at a time", Array.from(whole, (b) => Uint8Array.of(b))];
  for (let i = 0; i <= n; i++) {
    yield [`split at ${i}`, [whole.subarray(0, i), whole.subarray(i)]];
  }
  const pairs = new Set<string>();
  if (n <= 24) {
    for (let i = 0; i <= n; i++) {
      for (let j = i; j <= n; j++) pairs.add(`${i},${j}`);
    }
  } else {
    const next = random(n * 7919 + c.title.length);
    while (pairs.size < 200) {
      const a = Math.floor(next() * (n + 1));
      const b = Math.floor(next() * (n + 1));
      pairs.add(a <= b ? `${a},${b}` : `${b},${a}`);
    }
    // A middle chunk of one byte around every line end and non-ASCII byte.
    for (let k = 0; k < n; k++) {
      const byte = whole[k]!;
      if (byte === 10 || byte === 13 || byte >= 0x80) {
        pairs.add(`${k},${k + 1}`);
      }
    }
  }
  for (const pair of pairs) {
    const [i, j] = pair.split(",").map(Number) as [number, number];
    yield [`split at ${i} and ${j}`, [
      whole.subarray(0, i),
      whole.subarray(i, j),
      whole.subarray(j),
    ]];
  }
}

function show(chunks: Uint8Array[]): string {
  const text = JSON.stringify(chunks.map((c) => new TextDecoder().decode(c)));
  return text.length > 160 ? text.slice(0, 160) + "…" : text;
}

async function check(c: Case): Promise<void> {
  const want = expected(c);
  const failures: { label: string; chunks: Uint8Array[]; got: Outcome }[] = [];
  let total = 0;
  for (const [label, chunks] of chunkings(c)) {
    total++;
    const got = await parse(chunks, c.seed);
    try {
      assert.deepEqual(got, want);
    } catch {
      failures.push({ label, chunks, got });
    }
  }
  if (failures.length > 0) {
    const first = failures[0]!;
    assert.deepEqual(
      first.got,
      want,
      `${c.source}: ${failures.length} of ${total} chunkings differ, e.g. ${
        failures.slice(0, 3).map((f) => f.label).join("; ")
      }; first: ${show(first.chunks)}`,
    );
  }
}

for (const c of CASES) {
  Deno.test(
    `SSEParserStream ${c.title} (${c.source})`,
    SANITIZED,
    () => check(c),
  );
}

// --- an independent implementation: Deno's built-in EventSource -------------

// Prepended to a served stream so that Deno's EventSource reconnects at once
// and reveals its last event ID in the Last-Event-ID header. Neutral for every
// stream that does not start with a BOM: it is one field line of its own.
const FAST_RETRY = "retry: 1\n";

function startsWithBOM(data: Uint8Array): boolean {
  return data[0] === 0xef && data[1] === 0xbb && data[2] === 0xbf;
}

/** Reads an event stream with Deno's EventSource until it ends. */
function readWithEventSource(
  url: string,
  types: Iterable<string>,
  untilReconnect: boolean,
  sources: EventSource[],
): Promise<SSEEvent[]> {
  return new Promise((resolve) => {
    const source = new EventSource(url);
    sources.push(source);
    const events: SSEEvent[] = [];
    for (const type of types) {
      source.addEventListener(type, (e) => {
        events.push({ type: e.type, data: e.data, id: e.lastEventId });
      });
    }
    // The error event is queued after every event of the stream; after the
    // reconnection, the server's 204 closes the source for good.
    source.onerror = () => {
      if (!untilReconnect || source.readyState === EventSource.CLOSED) {
        source.close();
        resolve(events);
      }
    };
  });
}

Deno.test(
  "Deno's built-in EventSource reads the conformance streams as SSEParserStream does",
  SANITIZED,
  async () => {
    // A seed cannot be handed to EventSource, so seeded cases stay out.
    const cases = CASES.filter((c) => c.seed === undefined);
    const served = await Promise.all(cases.map(async (c) => {
      const plain = bytes(...chunksOf(c.input));
      const data = startsWithBOM(plain) ? plain : bytes(FAST_RETRY, plain);
      const ours = await parse([data], undefined);
      // Waiting out a long retry field would make this test slow.
      const untilReconnect = data !== plain && (ours.retry ?? 0) <= 1000;
      return {
        c,
        data,
        ours,
        untilReconnect,
        header: null as string | null,
      };
    }));
    const controller = new AbortController();
    const requests = new Map<number, number>();
    const server = Deno.serve({
      hostname: "127.0.0.1",
      port: 0,
      signal: controller.signal,
      onListen() {},
    }, (request) => {
      const index = Number(new URL(request.url).pathname.slice(1));
      const entry = served[index]!;
      const count = (requests.get(index) ?? 0) + 1;
      requests.set(index, count);
      if (count > 1) {
        // A header value is a byte string: read it back as UTF-8.
        const raw = request.headers.get("last-event-id");
        entry.header = raw === null ? null : new TextDecoder().decode(
          Uint8Array.from(raw, (ch) => ch.charCodeAt(0)),
        );
        return new Response(null, { status: 204 });
      }
      return new Response(entry.data, {
        headers: { "content-type": "text/event-stream" },
      });
    });
    const sources: EventSource[] = [];
    let timer: ReturnType<typeof setTimeout> | undefined;
    try {
      const base = `http://127.0.0.1:${server.addr.port}/`;
      const results = await Promise.race([
        Promise.all(served.map((entry, index) =>
          readWithEventSource(
            base + index,
            new Set(["message", ...entry.c.events.map((e) => e.type)]),
            entry.untilReconnect,
            sources,
          )
        )),
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () => reject(new Error("Deno's EventSource took over 10 s")),
            10_000,
          );
        }),
      ]);
      for (const [index, entry] of served.entries()) {
        const label = `${entry.c.title} (${entry.c.source})`;
        // The neutral prefix changes nothing but the retry calls.
        assert.deepEqual(entry.ours.events, entry.c.events, label);
        assert.equal(entry.ours.lastEventId, entry.c.lastEventId, label);
        assert.deepEqual(results[index], entry.ours.events, `events: ${label}`);
        if (entry.untilReconnect) {
          // Fetch normalizes header values: leading and trailing HTTP
          // whitespace does not survive the trip.
          assert.equal(
            entry.header ?? "",
            entry.ours.lastEventId.replace(/^[\t\n\r ]+|[\t\n\r ]+$/g, ""),
            `Last-Event-ID: ${label}`,
          );
        }
      }
      // Enough of the cases check the last event ID through a reconnection.
      assert.ok(served.filter((entry) => entry.untilReconnect).length >= 30);
    } finally {
      clearTimeout(timer);
      for (const source of sources) source.close();
      controller.abort();
      await server.finished;
    }
  },
);
