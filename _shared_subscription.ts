// Copyright the sse authors. MIT license.
// An SSEChannel's one live subscription to its broker stream, shared by all
// its clients: subscribed for the first connection, again for the next one
// after a failure, and never able to hold a connection or close() when the
// broker stops answering. Private: used by _channel.ts, never exported from
// mod.ts or deno.json.

import { errorMessage, type SSEBrokerSubscription } from "./_broker.ts";
import type { ChannelSettings } from "./_channel_options.ts";
import { ignore } from "./_connecting.ts";
import { type Fanout, subscriptionOf } from "./_fanout.ts";

/** The channel's subscription to its stream, for all its clients. */
export class SharedSubscription<C> {
  #settings: ChannelSettings<C>;
  #fanout: Fanout<C>;
  /** While subscribing or subscribed. */
  #shared: Promise<SSEBrokerSubscription> | undefined;
  /** Once subscribed. */
  #subscription: SSEBrokerSubscription | undefined;
  #closed = false;

  /**
   * @param settings The channel's settings (its broker, name and reporter).
   * @param fanout Where live entries and gaps go.
   */
  constructor(settings: ChannelSettings<C>, fanout: Fanout<C>) {
    this.#settings = settings;
    this.#fanout = fanout;
  }

  /**
   * The subscription, subscribing once for all clients. A subscribe that
   * fails or has not answered within `drainTimeout` fails the connections
   * waiting for it (reported once, however many waited), and the next call
   * subscribes again; one that answers after that, or after `close()`, is
   * released at once, and delivers nothing meanwhile.
   *
   * @returns The subscription, once the broker answered.
   */
  get(): Promise<SSEBrokerSubscription> {
    if (this.#shared !== undefined) return this.#shared;
    const { broker, name } = this.#settings;
    const fanout = this.#fanout;
    // Given up (failed, or not answered in time) or closed: a broker may
    // deliver before its subscribe resolves, even synchronously.
    let givenUp = false;
    const current = () => !givenUp && !this.#closed;
    const subscribing = subscriptionOf(broker, name, (entry) => {
      if (current()) fanout.deliver(entry);
    }, { onGap: () => current() && fanout.gap() });
    const shared = fanout.bound(subscribing, "subscribe");
    this.#shared = shared;
    subscribing.then((subscription) => {
      if (current()) this.#subscription = subscription;
      else this.#unsubscribe(subscription);
    }, ignore);
    shared.catch((error: unknown) => {
      givenUp = true;
      if (this.#shared === shared) this.#shared = undefined;
      if (this.#closed) return;
      this.#settings.report(
        new Error(
          `Ended the clients connecting: the broker's subscribe failed: ${
            errorMessage(error)
          }`,
          { cause: error },
        ),
      );
    });
    return shared;
  }

  /**
   * Stops delivery for good and releases the subscription; a subscribe
   * still in progress is released when it answers, not waited for: a
   * broker that stopped answering cannot hold `close()`.
   */
  close(): void {
    this.#closed = true;
    const subscription = this.#subscription;
    this.#shared = undefined;
    this.#subscription = undefined;
    if (subscription !== undefined) this.#unsubscribe(subscription);
  }

  /** Releases a subscription; what its `unsubscribe` throws is reported. */
  #unsubscribe(subscription: SSEBrokerSubscription): void {
    try {
      subscription.unsubscribe();
    } catch (error) {
      this.#settings.report(
        new Error(`unsubscribe threw: ${errorMessage(error)}`, {
          cause: error,
        }),
      );
    }
  }
}
