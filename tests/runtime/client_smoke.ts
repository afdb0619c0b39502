// Copyright the sse authors. MIT license.
// client.ts on every runtime, against an in-memory server given as `fetch`:
// reconnection after the server's retry, a non-ASCII Last-Event-ID sent as
// UTF-8 bytes, an event cut off by the end never delivered, 204 ending the
// iteration, and close() cancelling an endless body.

import { SSEClient } from "../../client.ts";
import type { Smoke } from "./smoke.ts";
import { bytes } from "./_streams.ts";

const HEADERS = { "content-type": "text/event-stream" };

/** A header value is a byte string; read it back as UTF-8. */
function utf8(value: string | null): string | null {
  if (value === null) return null;
  return new TextDecoder().decode(
    Uint8Array.from(value, (c) => c.charCodeAt(0)),
  );
}

async function resume() {
  const requests: { accept: string | null; lastEventId: string | null }[] = [];
  const bodies = [
    bytes("retry: 5\nid: \u2026\ndata: first\n\ndata: cut off"),
    bytes("data: second\n\n"),
  ];
  const client = new SSEClient("https://example.com/events", {
    fetch: (_input, init) => {
      const headers = new Headers(init?.headers);
      requests.push({
        accept: headers.get("accept"),
        lastEventId: utf8(headers.get("last-event-id")),
      });
      const body = bodies.shift();
      return Promise.resolve(
        body === undefined
          ? new Response(null, { status: 204 })
          : new Response(body, { headers: HEADERS }),
      );
    },
  });
  const events = [];
  for await (const event of client) events.push(event);
  return {
    events,
    requests,
    readyState: client.readyState,
    lastEventId: client.lastEventId,
  };
}

async function closeEndless() {
  let cancelled!: () => void;
  const bodyCancelled = new Promise<void>((resolve) => cancelled = resolve);
  const client = new SSEClient("https://example.com/events", {
    fetch: () =>
      Promise.resolve(
        new Response(
          new ReadableStream<Uint8Array>({
            start(controller) {
              controller.enqueue(bytes("data: only\n\n"));
            },
            cancel() {
              cancelled();
            },
          }),
          { headers: HEADERS },
        ),
      ),
  });
  const data = [];
  for await (const event of client) {
    data.push(event.data);
    client.close();
  }
  await bodyCancelled;
  return { data, readyState: client.readyState };
}

export const clientSmoke: Smoke = {
  module: "client.ts",
  async run() {
    return { resume: await resume(), closeEndless: await closeEndless() };
  },
  expected: {
    resume: {
      events: [
        { type: "message", data: "first", id: "\u2026" },
        { type: "message", data: "second", id: "\u2026" },
      ],
      requests: [
        { accept: "text/event-stream", lastEventId: null },
        { accept: "text/event-stream", lastEventId: "\u2026" },
        { accept: "text/event-stream", lastEventId: "\u2026" },
      ],
      readyState: 2,
      lastEventId: "\u2026",
    },
    closeEndless: { data: ["only"], readyState: 2 },
  },
};
