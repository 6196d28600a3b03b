/**
 * A real redis-server for the tests, on a free loopback port, with its append-only file in a temporary
 * directory (fsync on every write) so that a killed and restarted server comes back with its data.
 * Debian: `apt-get install redis-server` (.ci/run does). Where it is absent the tests skip, saying so.
 */

import { freePort } from "../ops/processes.ts";

/** The path of redis-server, or null. */
export function redisServerPath(): string | null {
  for (const dir of (Deno.env.get("PATH") ?? "/usr/bin:/usr/sbin").split(":")) {
    try {
      const p = `${dir}/redis-server`;
      if (Deno.statSync(p).isFile) return p;
    } catch { /* not here */ }
  }
  return null;
}

export const REDIS_SKIP = "redis-server is not installed (apt-get install redis-server): skipped";

/** Whether a PING gets PONG within `ms`. */
export async function pingRedis(port: number, ms = 500): Promise<boolean> {
  try {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    try {
      await conn.write(new TextEncoder().encode("PING\r\n"));
      const buf = new Uint8Array(16);
      const timer = setTimeout(() => conn.close(), ms);
      const n = await conn.read(buf).catch(() => null);
      clearTimeout(timer);
      return n !== null && new TextDecoder().decode(buf.subarray(0, n)).startsWith("+PONG");
    } finally {
      try {
        conn.close();
      } catch { /* closed by the timer */ }
    }
  } catch {
    return false;
  }
}

export interface TestRedis {
  port: number;
  url: string;
  /** SIGKILL: no goodbye to its clients. */
  kill(): Promise<void>;
  /** Starts it again on the same port and directory (its data comes back from the append-only file). */
  start(): Promise<void>;
  stop(): Promise<void>;
}

export async function startRedis(): Promise<TestRedis> {
  const bin = redisServerPath();
  if (!bin) throw new Error(REDIS_SKIP);
  const port = freePort();
  const dir = await Deno.makeTempDir({ prefix: "judgeq-redis-" });
  let child: Deno.ChildProcess | null = null;
  const start = async () => {
    child = new Deno.Command(bin, {
      args: [
        "--port",
        String(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        dir,
        "--save",
        "",
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
        "--maxmemory-policy",
        "volatile-lru",
      ],
      stdout: "null",
      stderr: "null",
    }).spawn();
    for (let i = 0; i < 100; i++) {
      if (await pingRedis(port)) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`redis-server did not answer on port ${port}`);
  };
  const kill = async () => {
    if (!child) return;
    const c: Deno.ChildProcess = child;
    child = null;
    c.kill("SIGKILL");
    await c.status;
  };
  await start();
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    kill,
    start,
    async stop() {
      await kill();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}

/** Polls `cond` every 50 ms until true (or throws after `ms`). */
export async function waitFor(cond: () => boolean | Promise<boolean>, ms: number, what: string) {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
