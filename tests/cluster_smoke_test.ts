/**
 * The cluster as `deno task cluster` starts it (replicas as processes, redis-server, HAProxy) under a
 * small version of `deno task loadtest:cluster`: a replica killed halfway loses no context, answers are
 * the same whichever replica gives them, and no request fails beyond those in flight at the kill.
 * Skipped, saying so, where redis-server or haproxy is absent (apt-get install redis-server haproxy).
 * The balancer's configuration and the --context-store flag are checked here too.
 */
import { findBinary } from "../ops/cluster.ts";
import { runClusterLoad } from "../ops/cluster_loadtest.ts";
import { haproxyConfig } from "../ops/haproxy.ts";
import { contextStoreFlag } from "../server/main.ts";
import { redact } from "../server/contexts/redis.ts";
import { assert, assertEquals } from "./helpers.ts";

function missing(): string | null {
  try {
    findBinary("redis-server", "redis-server");
    findBinary("haproxy", "haproxy");
    return null;
  } catch (e) {
    return (e as Error).message;
  }
}
const why = missing();
if (why) console.warn(`cluster_smoke_test: ${why}: the cluster run is skipped`);

Deno.test({
  name: "cluster: 2 replicas behind haproxy, one killed halfway: no lost context, same answers, no 5xx",
  ignore: why !== null,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async () => {
    const r = await runClusterLoad({
      replicas: 2,
      requests: 48,
      concurrency: 4,
      maxTokens: 8,
      contexts: 4,
      killAt: 0.5,
      replicaArgs: ["--executor", "wasm", "--threads", "1"],
    });
    assertEquals(r.requests, 48);
    assertEquals(r.lost_contexts, 0);
    assertEquals(r.mismatched_answers, 0);
    assert(r.distinct_answers_checked >= 4, JSON.stringify(r));
    assert(r.killed !== null && r.killed.after_requests >= 20, JSON.stringify(r.killed));
    assert(
      r.server_errors === 0, // what the killed replica never answered was retried on the other
      `${r.server_errors} 5xx, ${r.killed!.in_flight} in flight`,
    );
    // An answer the killed replica had begun cannot move; only those in flight at the kill may be cut.
    assert(r.cut_answers + r.cut_streams <= r.killed!.in_flight, JSON.stringify(r));
    assert(r.throughput_rps > 0 && r.latency_ms.p99 >= r.latency_ms.p50, JSON.stringify(r));
  },
});

Deno.test("haproxyConfig: least connections, /healthz checks, retries on refused connections", () => {
  const cfg = haproxyConfig({
    bindHost: "127.0.0.1",
    bindPort: 8000,
    backends: [{ name: "r1", host: "127.0.0.1", port: 9001 }, { name: "r2", host: "127.0.0.1", port: 9002 }],
  });
  for (
    const line of [
      "bind 127.0.0.1:8000",
      "balance leastconn",
      "option httpchk GET /healthz",
      "http-check expect status 200",
      "server r1 127.0.0.1:9001 check",
      "server r2 127.0.0.1:9002 check",
      "retry-on conn-failure empty-response",
      "option redispatch",
      "option http-buffer-request",
      'http-error status 502 content-type application/json string "{\\"error\\":{\\"type\\":\\"bad_gateway\\"',
    ]
  ) assert(cfg.includes(line), `missing "${line}" in\n${cfg}`);
  let err = "";
  try {
    haproxyConfig({ bindHost: "127.0.0.1", bindPort: 1, backends: [] });
  } catch (e) {
    err = (e as Error).message;
  }
  assert(err.includes("at least one backend"), err);
});

Deno.test("--context-store: memory or a redis:// URL; anything else names the flag, without the password", () => {
  assertEquals(contextStoreFlag(undefined), null);
  assertEquals(contextStoreFlag("memory"), null);
  assertEquals(contextStoreFlag("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
  assertEquals(contextStoreFlag("rediss://:pw@cache:6380/2"), "rediss://:pw@cache:6380/2");
  for (const bad of ["http://x:1", "redis://", "127.0.0.1:6379", "postgres://u:secret@h/db"]) {
    let m = "";
    try {
      contextStoreFlag(bad);
    } catch (e) {
      m = (e as Error).message;
    }
    assert(m.startsWith("--context-store: expected 'memory' or redis://"), m);
    assert(!m.includes("secret"), m);
  }
  assertEquals(redact("redis://user:pw@h:1/0"), "redis://user:***@h:1/0");
});
