/**
 * deno task cluster: N replicas of the service on loopback ports, sharing their contexts through Redis,
 * behind HAProxy (least connections, health checks on /healthz). For local trials and the cluster load
 * test; Debian packages `redis-server` and `haproxy` (apt-get install redis-server haproxy).
 *   deno task cluster [--replicas 3] [--port 8000] [--redis redis://HOST:PORT] [--executor wasm] [--threads 1]
 *                     [-- FLAGS FOR EVERY REPLICA]
 * Prints one ready line (the balancer's URL, the replicas', Redis's); SIGINT/SIGTERM stop everything.
 */
import { executorFlags, parseFlags, threadsFlag, usage, UsageError } from "../io/flags.ts";
import { type Backend, haproxyConfig } from "./haproxy.ts";
import { freePort, startServer, stopProcess, watch } from "./processes.ts";
import { isRedisUrl, redact } from "../server/contexts/redis.ts";

const SPEC = {
  replicas: { kind: "int", help: "replicas to start (default 3)", default: 3 },
  port: { kind: "int", help: "the load balancer's port, 0 = any free port (default 8000)", default: 8000 },
  redis: {
    kind: "string",
    help: "use this Redis (redis://HOST:PORT) instead of starting redis-server on a free port",
  },
  ...executorFlags("wasm", " of every replica"),
  help: { kind: "boolean", help: "show this help" },
} as const;

export interface ClusterOptions {
  replicas: number;
  /** The balancer's port (0: a free one). */
  port: number;
  /** An existing Redis; default: start redis-server on a free port. */
  redisUrl?: string;
  /** Flags every replica gets (--executor, --threads, ...). */
  replicaArgs?: string[];
  log?: (line: string) => void;
}

export interface Replica {
  name: string;
  port: number;
  url: string;
  child: Deno.ChildProcess;
  alive: boolean;
}

export interface Cluster {
  url: string;
  redisUrl: string;
  replicas: Replica[];
  /** SIGKILL one replica (no draining: its in-flight requests fail). */
  kill(index: number): Promise<void>;
  stop(): Promise<void>;
}

/** The first binary of `names` found on PATH (or /usr/sbin), or a UsageError saying how to install it. */
export function findBinary(name: string, pkg: string): string {
  const dirs = [...(Deno.env.get("PATH") ?? "").split(":"), "/usr/sbin", "/usr/bin"];
  for (const dir of dirs.filter(Boolean)) {
    try {
      if (Deno.statSync(`${dir}/${name}`).isFile) return `${dir}/${name}`;
    } catch { /* not here */ }
  }
  throw new UsageError(`${name} is not installed: apt-get install ${pkg}`);
}

async function waitHttp(url: string, timeoutMs: number) {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    const ok = await fetch(url).then(async (r) => (await r.body?.cancel(), r.ok), () => false);
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} did not answer 200 within ${timeoutMs} ms`);
}

export async function startCluster(o: ClusterOptions): Promise<Cluster> {
  if (!Number.isInteger(o.replicas) || o.replicas < 1 || o.replicas > 64) {
    throw new UsageError(`--replicas: expected 1 to 64, got '${o.replicas}'`);
  }
  if (!Number.isInteger(o.port) || o.port < 0 || o.port > 65535) {
    throw new UsageError(`--port: expected 0..65535, got '${o.port}'`);
  }
  if (o.redisUrl !== undefined && !isRedisUrl(o.redisUrl)) {
    throw new UsageError(`--redis: expected redis://HOST:PORT, got '${redact(o.redisUrl)}'`);
  }
  const log = o.log ?? ((l: string) => console.error(l));
  const haproxyBin = findBinary("haproxy", "haproxy");
  const children: Deno.ChildProcess[] = [];
  const dir = await Deno.makeTempDir({ prefix: "judgeq-cluster-" });
  const stopAll = async () => {
    await Promise.all(children.map((c) => stopProcess(c, "SIGTERM")));
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  };
  try {
    let redisUrl = o.redisUrl;
    if (!redisUrl) {
      const port = freePort();
      const redis = new Deno.Command(findBinary("redis-server", "redis-server"), {
        args: [
          "--port",
          String(port),
          "--bind",
          "127.0.0.1",
          "--save",
          "",
          "--appendonly",
          "no",
          "--dir",
          dir,
        ],
        stdout: "piped",
        stderr: "piped",
      }).spawn();
      children.push(redis);
      await watch(redis, /Ready to accept connections/, "redis-server", 10_000);
      redisUrl = `redis://127.0.0.1:${port}`;
      log(`redis-server on ${redisUrl}`);
    }
    const replicas = await Promise.all(Array.from({ length: o.replicas }, async (_, i) => {
      const { child, base: url } = await startServer(
        ["--context-store", redisUrl!, ...(o.replicaArgs ?? [])],
        { what: `replica r${i + 1}`, spawned: (c) => children.push(c) },
      );
      const port = Number(new URL(url).port);
      log(`replica r${i + 1} on ${url}`);
      return { name: `r${i + 1}`, port, url, child, alive: true };
    }));
    const port = o.port === 0 ? freePort() : o.port;
    const backends: Backend[] = replicas.map((r) => ({ name: r.name, host: "127.0.0.1", port: r.port }));
    const cfg = `${dir}/haproxy.cfg`;
    await Deno.writeTextFile(cfg, haproxyConfig({ bindHost: "127.0.0.1", bindPort: port, backends }));
    const lb = new Deno.Command(haproxyBin, { args: ["-db", "-f", cfg], stdout: "piped", stderr: "piped" })
      .spawn();
    children.push(lb);
    // Drain its output (it logs nothing in -db mode without a log target, but never block on a pipe).
    watch(lb, /$^/, "haproxy", 2 ** 31 - 1).catch(() => {});
    const url = `http://127.0.0.1:${port}`;
    await waitHttp(`${url}/healthz`, 10_000);
    return {
      url,
      redisUrl,
      replicas,
      async kill(index: number) {
        const r = replicas[index];
        if (!r.alive) return;
        r.alive = false;
        await stopProcess(r.child);
      },
      stop: stopAll,
    };
  } catch (e) {
    await stopAll();
    throw e;
  }
}

async function main(argv: string[]): Promise<number> {
  const split = argv.indexOf("--");
  const f = parseFlags(split >= 0 ? argv.slice(0, split) : argv, SPEC);
  if (f.help) {
    console.log(
      usage("deno task cluster", SPEC) + "\n  -- FLAGS: passed to every replica (deno task start's)",
    );
    return 0;
  }
  if (f._.length) throw new UsageError(`unexpected argument '${f._[0]}'`);
  const threads = threadsFlag(f.threads);
  const replicaArgs = [
    "--executor",
    String(f.executor),
    ...(threads !== undefined ? ["--threads", String(threads)] : []),
    ...(f.weights !== undefined ? ["--weights", String(f.weights)] : []),
    ...(split >= 0 ? argv.slice(split + 1) : []),
  ];
  const c = await startCluster({
    replicas: f.replicas as number,
    port: f.port as number,
    redisUrl: f.redis as string | undefined,
    replicaArgs,
  });
  console.log(
    `judgeq cluster: ${c.replicas.length} replicas behind haproxy at ${c.url} (contexts in ${c.redisUrl}) - ` +
      `replicas ${c.replicas.map((r) => r.url).join(" ")}`,
  );
  const done = Promise.withResolvers<void>();
  for (const s of ["SIGINT", "SIGTERM"] as const) Deno.addSignalListener(s, () => done.resolve());
  await done.promise;
  console.error("stopping the cluster");
  await c.stop();
  return 0;
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    if (e instanceof UsageError) console.error(`error: ${e.message}\n${usage("deno task cluster", SPEC)}`);
    else console.error(`error: ${e instanceof Error ? e.message : String(e)}`);
    Deno.exit(2);
  }
}
