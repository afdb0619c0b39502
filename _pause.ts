// Copyright the sse authors. MIT license.
// A cancellable wait, for the pauses between attempts: SSEClient and
// EventSource before reconnecting, RedisBroker before reading again. Private:
// never exported from mod.ts or deno.json.

import { MAX_DELAY, startTimeout, type Timer } from "./_timer.ts";

/**
 * A cancellable wait: the pause between attempts. `cancel()` clears the timer
 * and resolves the wait at once, so that closing the owner leaves no timer.
 */
export class Pause {
  #timer: Timer | undefined = undefined;
  #wake: (() => void) | undefined = undefined;

  /**
   * Waits, or until {@linkcode Pause.cancel}.
   *
   * @param ms How long, in milliseconds. A delay longer than a timer can
   * hold is cut to {@linkcode MAX_DELAY} (about 24.8 days): a pause that
   * armed no timer would let a process whose only work is waiting exit.
   * @returns Resolves when the time is up or the wait is cancelled.
   */
  wait(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      this.#wake = resolve;
      this.#timer = startTimeout(() => {
        this.#timer = undefined;
        this.#wake = undefined;
        resolve();
      }, Math.min(ms, MAX_DELAY));
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
