/**
 * The load balancer's configuration, as text (pure): HAProxy in HTTP mode, least connections, health
 * checks on /healthz every 500 ms (a replica is out after 2 failures, back after 2 successes), and a
 * request that could not reach a replica (connection refused: it was killed) retried on another one.
 */
export interface Backend {
  name: string;
  host: string;
  port: number;
}

export interface HaproxyOptions {
  bindHost: string;
  bindPort: number;
  backends: Backend[];
  /** Longest a replica may take to answer (generation can be long). */
  serverTimeoutS?: number;
  maxConnections?: number;
}

export function haproxyConfig(o: HaproxyOptions): string {
  if (o.backends.length === 0) throw new Error("haproxyConfig: at least one backend is needed");
  const lines = [
    "global",
    `  maxconn ${o.maxConnections ?? 1024}`,
    "defaults",
    "  mode http",
    "  option httplog",
    "  timeout connect 1s",
    "  timeout client 120s",
    `  timeout server ${o.serverTimeoutS ?? 300}s`,
    "  timeout http-request 30s",
    // A request whose replica refused the connection (killed, restarting) goes to another one.
    "  retries 3",
    "  option redispatch 1",
    "  retry-on conn-failure empty-response",
    "frontend judgeq",
    `  bind ${o.bindHost}:${o.bindPort}`,
    "  default_backend replicas",
    "backend replicas",
    "  balance leastconn",
    "  option httpchk GET /healthz",
    "  http-check expect status 200",
    "  default-server inter 500ms fall 2 rise 2",
    ...o.backends.map((b) => `  server ${b.name} ${b.host}:${b.port} check`),
    "",
  ];
  return lines.join("\n");
}
