// Copyright the sse authors. MIT license.
// Helpers for the runtime smoke checks. They use only what every target
// runtime has (Node 20 lacks ReadableStream.from and Array.fromAsync).

/** Bytes of UTF-8 text and raw byte values, joined. */
export function bytes(
  ...parts: (string | number[])[]
): Uint8Array<ArrayBuffer> {
  const encoder = new TextEncoder();
  const arrays = parts.map((part) =>
    typeof part === "string" ? encoder.encode(part) : Uint8Array.from(part)
  );
  const out = new Uint8Array(arrays.reduce((n, a) => n + a.length, 0));
  let offset = 0;
  for (const array of arrays) {
    out.set(array, offset);
    offset += array.length;
  }
  return out;
}

/** A stream of the given chunks. */
export function streamOf<T>(chunks: T[]): ReadableStream<T> {
  return new ReadableStream<T>({
    start(controller) {
      for (const chunk of chunks) controller.enqueue(chunk);
      controller.close();
    },
  });
}

/** Everything a stream yields. */
export async function collect<T>(stream: ReadableStream<T>): Promise<T[]> {
  const reader = stream.getReader();
  const out: T[] = [];
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return out;
    out.push(value);
  }
}

/** The name of what `fn` throws, or "none". */
export function thrown(fn: () => unknown): string {
  try {
    fn();
    return "none";
  } catch (error) {
    return error instanceof Error ? error.name : typeof error;
  }
}
