// Copyright the sse authors. MIT license.
import { RedisBroker } from "../redis.ts";
import { testBrokerContract } from "./_broker_contract.ts";
import { REDIS_SKIP, startRedis } from "./_redis.ts";

testBrokerContract({
  name: "RedisBroker",
  ignore: REDIS_SKIP !== undefined,
  // MAXLEN ~ trims whole radix-tree nodes (100 entries by default).
  publishesToTrim: 250,
  numRuns: 15,
  async open() {
    const redis = await startRedis();
    const broker = new RedisBroker({ url: redis.url });
    const peer = new RedisBroker({ url: redis.url });
    return {
      broker,
      peer,
      async close() {
        await Promise.all([broker.close(), peer.close()]);
        await redis.close();
      },
    };
  },
});
