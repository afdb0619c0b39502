// Copyright the sse authors. MIT license.
// A Cloudflare Worker (module syntax) for workerd: GET /smoke answers the smoke
// results as JSON; GET /serve/<module> answers that check's `serve()`.

import { runSmokes, SMOKES } from "./smoke.ts";

export default {
  async fetch(request: Request): Promise<Response> {
    const path = new URL(request.url).pathname;
    if (path === "/smoke") return Response.json(await runSmokes());
    for (const smoke of SMOKES) {
      if (smoke.serve && path === `/serve/${smoke.module}`) {
        return smoke.serve();
      }
    }
    return new Response("not found", { status: 404 });
  },
};
