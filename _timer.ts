// Copyright the sse authors. MIT license.
// Every timer the library arms goes through here. Deno, Node, Bun and workerd
// store a timer's delay in a signed 32-bit integer: a longer delay (from an
// option, or from a server's `retry` field) fires after 1 ms, with a warning
// on stderr. A delay that long (about 24.8 days) is "never" for every timer
// here, so it arms no timer at all. Private: never exported from mod.ts or
// deno.json.

/** The longest delay a timer can hold, in milliseconds (2^31 - 1). */
export const MAX_DELAY = 2 ** 31 - 1;

/** What `setTimeout` and `setInterval` return, on every runtime. */
export type Timer = ReturnType<typeof setTimeout>;

/**
 * The delay to arm a timer with.
 *
 * @param ms The wanted delay in milliseconds: any number.
 * @returns `ms` when a timer can hold it; 0 for a negative delay or NaN (as
 * `setTimeout` reads them); `undefined` for a delay beyond
 * {@linkcode MAX_DELAY} (`Infinity` included), which means never.
 */
export function timerDelay(ms: number): number | undefined {
  if (!(ms >= 0)) return 0;
  return ms > MAX_DELAY ? undefined : ms;
}

/**
 * `setTimeout` through {@linkcode timerDelay}.
 *
 * @param callback Called once, after the delay.
 * @param ms The delay in milliseconds.
 * @returns The timer, or `undefined` when the delay means never (nothing was
 * armed, so there is nothing to clear).
 */
export function startTimeout(
  callback: () => void,
  ms: number,
): Timer | undefined {
  const delay = timerDelay(ms);
  return delay === undefined ? undefined : setTimeout(callback, delay);
}

/**
 * `setInterval` through {@linkcode timerDelay}. A period of 0 would spin, so
 * it arms nothing either: callers treat 0 as "off" before they get here.
 *
 * @param callback Called every period.
 * @param ms The period in milliseconds.
 * @returns The timer, or `undefined` when the period is 0 or means never.
 */
export function startInterval(
  callback: () => void,
  ms: number,
): Timer | undefined {
  const delay = timerDelay(ms);
  return delay === undefined || delay === 0
    ? undefined
    : setInterval(callback, delay);
}
