// Copyright the sse authors. MIT license.
// encoder.ts on every runtime: framing, refusals, and the stream, read back by
// the parser.

import { encodeSSE, SSEEncoderStream } from "../../encoder.ts";
import { SSEParserStream } from "../../parser.ts";
import type { Smoke } from "./smoke.ts";
import { collect, streamOf, thrown } from "./_streams.ts";

export const encoderSmoke: Smoke = {
  module: "encoder.ts",
  async run() {
    const frames = [
      encodeSSE({
        event: "update",
        id: 7,
        retry: 1000,
        data: "line 1\r\nline 2\rline 3\nline 4",
      }),
      encodeSSE({ comment: "two\nlines" }),
      encodeSSE({ data: { n: 1, text: "caf\u00e9" } }),
    ];
    const refused = [
      thrown(() => encodeSSE({ event: "a\nb", data: "" })),
      thrown(() => encodeSSE({ id: "a\0b", data: "" })),
      thrown(() => encodeSSE({ retry: -1 })),
    ];
    const [forText, forParser] = streamOf([
      { data: "a" },
      { id: "x", event: "e", data: " b\nc" },
    ]).pipeThrough(new SSEEncoderStream()).tee();
    const decoder = new TextDecoder();
    const text =
      (await collect(forText)).map((chunk) =>
        decoder.decode(chunk, { stream: true })
      ).join("") + decoder.decode();
    const events = await collect(forParser.pipeThrough(new SSEParserStream()));
    return { frames, refused, text, events };
  },
  expected: {
    frames: [
      "event: update\nid: 7\nretry: 1000\ndata: line 1\ndata: line 2\ndata: line 3\ndata: line 4\n\n",
      ": two\n: lines\n\n",
      'data: {"n":1,"text":"caf\u00e9"}\n\n',
    ],
    refused: ["TypeError", "TypeError", "RangeError"],
    text: "data: a\n\nevent: e\nid: x\ndata:  b\ndata: c\n\n",
    events: [
      { type: "message", data: "a", id: "" },
      { type: "e", data: " b\nc", id: "x" },
    ],
  },
};
