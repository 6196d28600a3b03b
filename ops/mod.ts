/**
 * Operator tools: entry points that run the service as processes and measure it (`deno task loadtest`,
 * `soak`, `cluster`, `loadtest:cluster`). They import server/; nothing in server/ imports them
 * (tests/layout_test.ts). Each is its own entry point; this module gathers what tests reuse.
 *   loadtest.ts          bounded load over loopback: throughput and latency percentiles
 *   loadtest_compare.ts  loadtest --compare: a server process against llama.cpp's on the same load
 *   soak.ts              a seeded request mix against a server process, its resident memory over time;
 *                        the context-cap fill cycle
 *   cluster.ts           N replicas sharing contexts through Redis, behind HAProxy (subprocesses, signals)
 *   cluster_loadtest.ts  load through the balancer, a pool of shared contexts, a replica killed halfway
 *   haproxy.ts           the balancer's configuration, as text (pure)
 *   processes.ts         child processes: a free loopback port, waiting for a ready line
 *   attack_probe.ts      issue 25's larger attack runs against a server process
 */
export { compareOptions } from "./loadtest_compare.ts";
export { runFillCycle, runSoak, type SoakOptions, type SoakReport } from "./soak.ts";
export { type Cluster, type ClusterOptions, findBinary, startCluster } from "./cluster.ts";
export { runClusterLoad } from "./cluster_loadtest.ts";
export { haproxyConfig, type HaproxyOptions } from "./haproxy.ts";
export { freePort, SERVER_V8_FLAGS, watch } from "./processes.ts";
