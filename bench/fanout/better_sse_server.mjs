// Copyright the sse authors. MIT license.
// The peer: better-sse on Node's `http`, one channel, default session options
// (keep-alive every 10 s, an initial `retry`), as its documentation sets it up.
// The control surface is the same as bench/fanout/_serve.ts.
//
//   npm install --prefix .cache/bench better-sse@0.16.1
//   node --expose-gc bench/fanout/better_sse_server.mjs [--port 0] [--prefix .cache/bench]

import { createServer } from "node:http";
import { createRequire } from "node:module";
import { resolve } from "node:path";
import process from "node:process";

function option(name, fallback) {
  const index = process.argv.indexOf(`--${name}`);
  return index === -1 ? fallback : process.argv[index + 1];
}

const prefix = resolve(option("prefix", ".cache/bench"));
const require = createRequire(resolve(prefix, "package.json"));
const { createChannel, createSession } = require("better-sse");

const channel = createChannel();

function stats(collect = true) {
  // CPU first: the GC below is the reading's cost, not the server's.
  const cpu = process.cpuUsage();
  if (collect) globalThis.gc?.();
  const memory = process.memoryUsage();
  return {
    rss: memory.rss,
    heapUsed: memory.heapUsed,
    external: memory.external,
    connected: channel.sessionCount,
    cpu: (cpu.user + cpu.system) / 1000,
  };
}

const before = stats();
const server = createServer(async (req, res) => {
  const url = new URL(req.url ?? "/", "http://127.0.0.1");
  try {
    if (url.pathname === "/sse") {
      const session = await createSession(req, res);
      channel.register(session);
      return;
    }
    if (url.pathname === "/publish" && req.method === "POST") {
      const t = Number(
        url.searchParams.get("t") ?? performance.timeOrigin + performance.now(),
      );
      const seq = Number(url.searchParams.get("seq") ?? 0);
      channel.broadcast({ t, seq });
      res.writeHead(204).end();
      return;
    }
    if (url.pathname === "/stats") {
      const reading = stats(url.searchParams.get("gc") !== "0");
      console.log(JSON.stringify({ type: "stats", ...reading }));
      res.writeHead(200, { "content-type": "application/json" });
      res.end(JSON.stringify(reading));
      return;
    }
    res.writeHead(404).end("Not found");
  } catch (error) {
    console.error("server error:", error);
    if (!res.headersSent) res.writeHead(500).end("Internal error");
  }
});
server.on("clientError", (error, socket) => {
  // A load client killed mid-request resets its socket: not a server error.
  if (error.code !== "ECONNRESET") console.error("client error:", error);
  socket.destroy();
});
server.listen(Number(option("port", "0")), "127.0.0.1", () => {
  const { port } = server.address();
  console.log(JSON.stringify({ type: "listening", port, rss: before.rss }));
});
