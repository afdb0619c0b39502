// Copyright the sse authors. MIT license.
// A literal, deliberately naive transcription of WHATWG HTML §9.2.5–9.2.6,
// used as the oracle in property tests. It decodes the whole stream at once and
// walks it line by line, so it shares no code or strategy with the parser.

import type { SSEEvent } from "../parser.ts";

export interface ReferenceResult {
  events: SSEEvent[];
  lastEventId: string;
  retries: number[];
  comments: string[];
}

export function referenceParse(bytes: Uint8Array, seed = ""): ReferenceResult {
  // §9.2.5: UTF-8 decode (replacement on errors), one leading BOM ignored.
  let text = new TextDecoder("utf-8", { ignoreBOM: true }).decode(bytes);
  if (text.startsWith("\uFEFF")) text = text.slice(1);
  const events: SSEEvent[] = [];
  const retries: number[] = [];
  const comments: string[] = [];
  let data = "";
  let type = "";
  let idBuffer = seed;
  let lastEventId = seed;
  // Lines end with CRLF, LF or CR; text after the last line end is an
  // unfinished line that the end of the stream discards.
  const lines: string[] = [];
  let current = "";
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === "\r") {
      lines.push(current);
      current = "";
      if (text[i + 1] === "\n") i++;
    } else if (c === "\n") {
      lines.push(current);
      current = "";
    } else {
      current += c;
    }
  }
  for (const line of lines) {
    if (line === "") {
      lastEventId = idBuffer;
      if (data === "") {
        type = "";
        continue;
      }
      if (data.endsWith("\n")) data = data.slice(0, -1);
      events.push({
        type: type === "" ? "message" : type,
        data,
        id: lastEventId,
      });
      data = "";
      type = "";
      continue;
    }
    if (line.startsWith(":")) {
      comments.push(line.slice(1).replace(/^ /, ""));
      continue;
    }
    const colon = line.indexOf(":");
    let name = line;
    let value = "";
    if (colon !== -1) {
      name = line.slice(0, colon);
      value = line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
    }
    if (name === "event") type = value;
    else if (name === "data") data += value + "\n";
    else if (name === "id") {
      if (!value.includes("\0")) idBuffer = value;
    } else if (name === "retry") {
      if (/^[0-9]+$/.test(value)) retries.push(Number(value));
    }
  }
  return { events, lastEventId, retries, comments };
}
