/**
 * The load balancer's configuration, as text (pure): HAProxy in HTTP mode, least connections, health
 * checks on /healthz every 500 ms (a replica is out after 2 failures, back after 2 successes), and a
 * request that got no byte back from its replica (the connection refused or closed unanswered: it was
 * killed; or a 503: it is draining) retried on another one. HAProxy's own errors are JSON in the
 * service's shape, never an HTML page.
 */
/** The balancer's own errors, in the service's error shape: their type, and what they mean for a client. */
const BALANCER: Record<number, [string, string]> = {
  502: ["bad_gateway", "the replica serving this request failed before answering it; retry"],
  503: ["service_unavailable", "no replica is available; retry later"],
  504: ["gateway_timeout", "the replica did not answer in time"],
};

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
    // A request whose replica refused the connection (killed, restarting), or closed it without a byte
    // of answer (killed while the request was in flight), goes to another one: nothing was answered, so
    // nothing is repeated to the client. HAProxy can resend only a request it holds whole: a POST body is
    // buffered before a replica is chosen; one larger than its buffer (tune.bufsize, 16 KiB by default)
    // is passed on as it comes and cannot be resent.
    "  retries 3",
    "  option redispatch 1",
    "  option http-buffer-request",
    "  retry-on conn-failure empty-response junk-response 503",
    ...Object.entries(BALANCER).map(([status, [type, message]]) =>
      `  http-error status ${status} content-type application/json string ${
        JSON.stringify(JSON.stringify({ error: { type, message, param: null } }))
      }`
    ),
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
