// Copyright the sse authors. MIT license.
// Entry point for Node and Bun: prints the smoke results as one JSON line.
// On Bun, the responses of `serve()` also go through Bun.serve and fetch.

import { readServed, runSmokes, SMOKES } from "./smoke.ts";

interface BunServer {
  port: number;
  stop(closeActiveConnections?: boolean): Promise<void> | void;
}
interface BunRuntime {
  serve(options: {
    hostname: string;
    port: number;
    fetch(request: Request): Response;
  }): BunServer;
}

async function serveWithBun(
  bun: BunRuntime,
): Promise<Record<string, unknown>> {
  const byPath = new Map<string, () => Response>();
  for (const smoke of SMOKES) {
    if (smoke.serve) byPath.set(`/serve/${smoke.module}`, smoke.serve);
  }
  const server = bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    fetch(request) {
      const serve = byPath.get(new URL(request.url).pathname);
      return serve ? serve() : new Response("not found", { status: 404 });
    },
  });
  try {
    const served: Record<string, unknown> = {};
    for (const path of byPath.keys()) {
      const response = await fetch(`http://127.0.0.1:${server.port}${path}`);
      served[path.slice("/serve/".length)] = await readServed(response);
    }
    return served;
  } finally {
    await server.stop(true);
  }
}

const bun = (globalThis as { Bun?: BunRuntime }).Bun;
const output = {
  smokes: await runSmokes(),
  served: bun ? await serveWithBun(bun) : {},
};
console.log(JSON.stringify(output));
