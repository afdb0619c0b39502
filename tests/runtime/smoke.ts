// Copyright the sse authors. MIT license.
// The runtime smoke checks: one per library module. Each runs unchanged on
// Deno, Bun, Node and workerd and returns plain JSON data, which
// tests/runtime_test.ts compares with `expected`. To cover a new module, write
// tests/runtime/<module>_smoke.ts and add it to SMOKES below.

import { parserSmoke } from "./parser_smoke.ts";
import { encoderSmoke } from "./encoder_smoke.ts";
import { serverSmoke } from "./server_smoke.ts";
import { clientSmoke } from "./client_smoke.ts";
import { globalScopeSmoke } from "./global_scope_smoke.ts";

/** What a client reads from a response served by the runtime's own server. */
export interface ServedExpectation {
  status: number;
  /** Headers that must be present with these values. */
  headers: Record<string, string>;
  /** The body, parsed by SSEParserStream. */
  events: { type: string; data: string; id: string }[];
  retry: number | null;
}

/** One module's smoke check. */
export interface Smoke {
  /** The library module it covers. */
  module: string;
  /** Runs in the runtime; returns JSON data. */
  run(): Promise<unknown>;
  /** What `run()` returns on a runtime where the module works. */
  expected: unknown;
  /** A response for the runtime's own HTTP server (Bun.serve, workerd). */
  serve?: () => Response;
  /** What a client reads from `serve()`. */
  served?: ServedExpectation;
}

export const SMOKES: Smoke[] = [
  parserSmoke,
  encoderSmoke,
  serverSmoke,
  clientSmoke,
  globalScopeSmoke,
];

/** Runs every check; a check that throws reports the error instead. */
export async function runSmokes(): Promise<Record<string, unknown>> {
  const results: Record<string, unknown> = {};
  for (const smoke of SMOKES) {
    try {
      results[smoke.module] = await smoke.run();
    } catch (error) {
      results[smoke.module] = {
        error: error instanceof Error
          ? `${error.name}: ${error.message}\n${error.stack ?? ""}`
          : String(error),
      };
    }
  }
  return results;
}

/** What a client reads from a served response, as JSON data. */
export async function readServed(
  response: Response,
): Promise<{ status: number; headers: Record<string, string>; body: string }> {
  const headers: Record<string, string> = {};
  response.headers.forEach((value, name) => {
    headers[name] = value;
  });
  return { status: response.status, headers, body: await response.text() };
}
