// Section 3: the PostgreSQL cache beside Redis. A throwaway redis-server on loopback (no persistence, like a
// cache), driven by ioredis on one connection, with and without auto-pipelining (commands issued in the same
// tick go out in one write: the "client pipelining on one connection" that gives Redis its numbers).
import { execFileSync } from "node:child_process";
import { freePort } from "@repo/db/embedded";
import { Redis } from "ioredis";
import { msText, opsText, ratioText, table } from "./format.ts";
import { compareInterleaved, type Measurement, type Op, pairedRatio, type RepeatOptions } from "./harness.ts";

const throughput = (m: Measurement) => m.opsPerSec;

import type { HotPath } from "./hot-paths.ts";
import { startChild, waitUntil } from "./processes.ts";
import type { Resources } from "./resources.ts";
import type { Fixture } from "./seed.ts";

/** Counter keys INCR cycles over, so concurrent increments contend on a few keys as rate limits do. */
const COUNTER_KEYS = 1000;

const pick = (keys: string[], i: number) => keys[i % keys.length] as string;

/** The Redis counterpart of a cache hot path: what it is called in the tables, and the operation. */
interface RedisEquivalent {
  command: string;
  op: (redis: Redis, keys: string[]) => Op;
}

/** Cache hot paths by name, and the Redis commands that do the same work. */
const REDIS_EQUIVALENT: Record<string, RedisEquivalent> = {
  "cache.get": { command: "GET", op: (redis, keys) => (i) => redis.get(pick(keys, i)) },
  "cache.set": {
    command: "SET",
    op: (redis, keys) => (i) => redis.set(pick(keys, i), JSON.stringify({ n: i, label: `value ${i}` })),
  },
  "cache.increment": { command: "INCR", op: (redis) => (i) => redis.incr(`counter:${i % COUNTER_KEYS}`) },
  // Consumes the seeded keys: once all were taken, later takes find nothing, which costs Redis the same
  // hash lookup (as absent keys do the cache's take).
  "cache.take": { command: "GETDEL", op: (redis, keys) => (i) => redis.getdel(pick(keys, i)) },
  // A fresh key stored then taken, one command after the other, like the hot path of the same name.
  "cache.set+take": {
    command: "SET, GETDEL",
    op: (redis) => async (i) => {
      const key = `take:${i}`;
      await redis.set(key, JSON.stringify({ key }));
      if ((await redis.getdel(key)) === null) throw new Error(`Redis GETDEL found nothing at ${key}`);
    },
  },
};

export interface RedisRow {
  operation: string;
  command: string;
  concurrency: number;
  /** Before: one named prepared statement per call (the floor of section 1: no coalescing). */
  postgresBefore: Measurement;
  /** After: the service, whose reads issued in the same tick share one statement. */
  postgres: Measurement;
  redis: Measurement;
  redisPipelined: Measurement;
  /** PostgreSQL throughput over Redis' without, and with, auto-pipelining; before and after. */
  beforeToRedis: number;
  beforeToRedisPipelined: number;
  postgresToRedis: number;
  postgresToRedisPipelined: number;
}

export type RedisSection = { skipped: string } | { version: string; rows: RedisRow[] };

/** The path of redis-server, or undefined when it is not installed. */
export function findRedisServer(): string | undefined {
  try {
    return execFileSync("sh", ["-c", "command -v redis-server"], { encoding: "utf8" }).trim() || undefined;
  } catch {
    return undefined;
  }
}

function redisVersion(binary: string): string {
  const text = execFileSync(binary, ["--version"], { encoding: "utf8" });
  return /v=(\S+)/.exec(text)?.[1] ?? text.trim();
}

function client(port: number, enableAutoPipelining: boolean, resources: Resources): Redis {
  // No retries: a lost connection during the bench is a failure to report, not to hide.
  const redis = new Redis({
    host: "127.0.0.1",
    port,
    enableAutoPipelining,
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    retryStrategy: () => null,
  });
  redis.on("error", () => {
    // Surfaces as the failure of the command in flight.
  });
  resources.defer(`the redis client (auto-pipelining ${enableAutoPipelining})`, async () => {
    redis.disconnect();
  });
  return redis;
}

/** Starts redis-server on a free loopback port; returns a connected plain client and a pipelining one. */
async function startRedis(binary: string, resources: Resources) {
  const port = await freePort();
  const server = startChild("redis-server", binary, [
    "--port",
    String(port),
    "--bind",
    "127.0.0.1",
    "--save",
    "",
    "--appendonly",
    "no",
    "--protected-mode",
    "yes",
  ]);
  resources.defer("redis-server", () => server.stop());
  const plain = client(port, false, resources);
  const pipelined = client(port, true, resources);
  await waitUntil(server, "accepting connections", async () => {
    await plain.connect();
    return true;
  });
  await pipelined.connect();
  if ((await plain.ping()) !== "PONG") throw new Error("redis-server did not answer PING");
  return { plain, pipelined };
}

/** The same keys and values as the PostgreSQL cache was seeded with. */
async function fill(redis: Redis, fixture: Fixture): Promise<void> {
  const pipeline = redis.pipeline();
  fixture.cacheKeys.forEach((key, n) => {
    pipeline.set(key, JSON.stringify({ n: n + 1, label: `value ${n + 1}` }));
  });
  const results = await pipeline.exec();
  const failed = results?.find(([error]) => error);
  if (failed) throw failed[0];
}

export const REDIS_HEADERS = [
  "operation",
  "redis",
  "conc",
  "pg before ops/s",
  "pg service ops/s",
  "redis ops/s",
  "redis pipelined ops/s",
  "before/redis",
  "before/redis pipelined",
  "service/redis",
  "service/redis pipelined",
  "pg service p99 ms",
  "redis p99 ms",
  "redis pipelined p99 ms",
];

export function redisCells(row: RedisRow): string[] {
  return [
    row.operation,
    row.command,
    String(row.concurrency),
    opsText(row.postgresBefore.opsPerSec),
    opsText(row.postgres.opsPerSec),
    opsText(row.redis.opsPerSec),
    opsText(row.redisPipelined.opsPerSec),
    ratioText(row.beforeToRedis),
    ratioText(row.beforeToRedisPipelined),
    ratioText(row.postgresToRedis),
    ratioText(row.postgresToRedisPipelined),
    msText(row.postgres.p99Ms),
    msText(row.redis.p99Ms),
    msText(row.redisPipelined.p99Ms),
  ];
}

/** Measures each cache hot path's service variant beside Redis, interleaved, at each concurrency. */
export async function cacheVsRedis(
  paths: HotPath[],
  fixture: Fixture,
  concurrencies: number[],
  options: Omit<RepeatOptions, "concurrency">,
  resources: Resources,
  print: (text: string) => void,
): Promise<RedisSection> {
  const binary = findRedisServer();
  if (!binary) return { skipped: "skipped: no redis-server" };
  const cachePaths = paths.filter((path) => REDIS_EQUIVALENT[path.name] !== undefined);
  if (cachePaths.length === 0) return { skipped: "skipped: no cache hot paths" };
  const { plain, pipelined } = await startRedis(binary, resources);
  const rows: RedisRow[] = [];
  for (const path of cachePaths) {
    const { command, op } = REDIS_EQUIVALENT[path.name] as RedisEquivalent;
    const pathRows: RedisRow[] = [];
    for (const concurrency of concurrencies) {
      process.stderr.write(
        `measuring ${path.name} beside Redis ${command} at concurrency ${concurrency}...\n`,
      );
      // Each measurement starts from the full key set, so GET hits and GETDEL has keys to take.
      await fill(plain, fixture);
      const { medians: m, runs } = await compareInterleaved(
        {
          postgresBefore: path.floor,
          postgres: path.service,
          redis: op(plain, fixture.cacheKeys),
          redisPipelined: op(pipelined, fixture.cacheKeys),
        },
        { ...options, concurrency },
      );
      pathRows.push({
        operation: path.name,
        command,
        concurrency,
        postgresBefore: m.postgresBefore,
        postgres: m.postgres,
        redis: m.redis,
        redisPipelined: m.redisPipelined,
        beforeToRedis: pairedRatio(runs.postgresBefore, runs.redis, throughput),
        beforeToRedisPipelined: pairedRatio(runs.postgresBefore, runs.redisPipelined, throughput),
        postgresToRedis: pairedRatio(runs.postgres, runs.redis, throughput),
        postgresToRedisPipelined: pairedRatio(runs.postgres, runs.redisPipelined, throughput),
      });
    }
    print(table(REDIS_HEADERS, pathRows.map(redisCells)));
    rows.push(...pathRows);
  }
  return { version: redisVersion(binary), rows };
}
