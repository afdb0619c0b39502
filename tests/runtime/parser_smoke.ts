// Copyright the sse authors. MIT license.
// parser.ts on every runtime: a BOM, a CRLF split across chunks, multi-byte
// characters split across chunks, invalid UTF-8, a later U+FEFF, ids, a custom
// type, retry, a comment, a seed, and an event cut off by the end.

import { SSEParserStream } from "../../parser.ts";
import type { Smoke } from "./smoke.ts";
import { bytes, collect, streamOf } from "./_streams.ts";

const CHUNKS = [
  // A BOM, and a CR that ends the chunk: its LF starts the next one.
  bytes([0xef, 0xbb, 0xbf], "data: seeded\r"),
  // "é" is C3 A9: split between this chunk and the next.
  bytes("\n\r\nevent: greet\nid: 1\ndata: caf", [0xc3]),
  // "😀" is F0 9F 98 80: split in the middle.
  bytes([0xa9], "\n\n: keep-alive\nretry: 2500\ndata: ", [0xf0, 0x9f]),
  // An invalid byte, a U+FEFF that is data, and an event the end cuts off.
  bytes([0x98, 0x80], " ", [0xff], "\ndata: \uFEFFx\n\nid: 2\ndata: cut off"),
];

export const parserSmoke: Smoke = {
  module: "parser.ts",
  async run() {
    const comments: string[] = [];
    const retries: number[] = [];
    const parser = new SSEParserStream({
      lastEventId: "0",
      onComment: (text) => comments.push(text),
      onRetry: (ms) => retries.push(ms),
    });
    const events = await collect(streamOf(CHUNKS).pipeThrough(parser));
    return {
      events,
      lastEventId: parser.lastEventId,
      retry: parser.retry ?? null,
      retries,
      comments,
    };
  },
  expected: {
    events: [
      { type: "message", data: "seeded", id: "0" },
      { type: "greet", data: "caf\u00e9", id: "1" },
      { type: "message", data: "\u{1F600} \uFFFD\n\uFEFFx", id: "1" },
    ],
    lastEventId: "1",
    retry: 2500,
    retries: [2500],
    comments: ["keep-alive"],
  },
};
