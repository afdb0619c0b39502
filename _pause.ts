// Copyright the sse authors. MIT license.
// A cancellable wait, for the pauses between attempts: SSEClient and
// EventSource before reconnecting, RedisBroker before reading again. Private:
// never exported from mod.ts or deno.json.

/** `setTimeout` cannot wait longer than this: longer delays fire at once. */
const MAX_TIMER_DELAY = 2 ** 31 - 1;

/**
 * A cancellable wait: the pause between attempts. `cancel()` clears the timer
 * and resolves the wait at once, so that closing the owner leaves no timer.
 */
export class Pause {
  #timer: ReturnType<typeof setTimeout> | undefined = undefined;
  #wake: (() => void) | undefined = undefined;

  /**
   * Waits, or until {@linkcode Pause.cancel}.
   *
   * @param ms How long, in milliseconds (at most 2^31 - 1, the most a timer
   * can wait).
   * @returns Resolves when the time is up or the wait is cancelled.
   */
  wait(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      this.#wake = resolve;
      this.#timer = setTimeout(() => {
        this.#timer = undefined;
        this.#wake = undefined;
        resolve();
      }, Math.min(ms, MAX_TIMER_DELAY));
    });
  }

  /** Ends the current wait now. */
  cancel(): void {
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    const wake = this.#wake;
    this.#wake = undefined;
    wake?.();
  }
}
