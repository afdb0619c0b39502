// Copyright the sse authors. MIT license.
// Message data as JSON, and how a value is named in an error message: shared
// by encoder.ts and _channel.ts, so that both refuse the same data with the
// same words. Private: never exported from mod.ts or deno.json.

/**
 * `JSON.stringify(data)`, or a `TypeError` when JSON cannot represent it: a
 * cycle or a `BigInt` (the error `JSON.stringify` throws is the cause), or a
 * value with no JSON form at all (a function, a symbol, `undefined`).
 *
 * @param data Any value.
 * @returns Its JSON text: one line, as JSON escapes CR, LF and lone surrogates.
 */
export function json(data: unknown): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(data);
  } catch (cause) {
    throw new TypeError(
      // One line: V8 words a cycle over three.
      `Invalid data: cannot be encoded as JSON: ${
        (cause instanceof Error ? cause.message : String(cause))
          .replace(/\s*\n\s*/g, " ")
      }`,
      { cause },
    );
  }
  if (text === undefined) {
    throw new TypeError(
      `Invalid data: cannot be encoded as JSON: ${describe(data)}`,
    );
  }
  return text;
}

/**
 * What a value is, for an error message: `"null"`, `"array"`, an object's
 * constructor name, or its `typeof`.
 *
 * @param value Any value.
 * @returns A short name of its kind.
 */
export function describe(value: unknown): string {
  if (value === null) return "null";
  if (Array.isArray(value)) return "array";
  if (typeof value === "object") {
    return (value as { constructor?: { name?: string } }).constructor?.name ??
      "object";
  }
  return typeof value;
}
