/**
 * A minimal Prometheus registry (text exposition format 0.0.4): counters, histograms and gauges read
 * at scrape time. Small enough to own, so the server needs no client library.
 */
type Labels = Record<string, string>;

const escape = (v: string) => v.replaceAll("\\", "\\\\").replaceAll("\n", "\\n").replaceAll('"', '\\"');
const labelText = (l: Labels) => {
  const parts = Object.entries(l).map(([k, v]) => `${k}="${escape(v)}"`);
  return parts.length ? `{${parts.join(",")}}` : "";
};
const num = (n: number) => (Number.isFinite(n) ? String(n) : n > 0 ? "+Inf" : n < 0 ? "-Inf" : "NaN");

interface Metric {
  render(): string;
}

export class Counter implements Metric {
  private readonly values = new Map<string, { labels: Labels; value: number }>();
  constructor(readonly name: string, readonly help: string) {}

  inc(labels: Labels = {}, by = 1) {
    const key = labelText(labels);
    const v = this.values.get(key) ?? { labels, value: 0 };
    v.value += by;
    this.values.set(key, v);
  }

  get(labels: Labels = {}): number {
    return this.values.get(labelText(labels))?.value ?? 0;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} counter`];
    if (this.values.size === 0) lines.push(`${this.name} 0`);
    for (const { labels, value } of this.values.values()) {
      lines.push(`${this.name}${labelText(labels)} ${num(value)}`);
    }
    return lines.join("\n");
  }
}

export class Histogram implements Metric {
  private readonly series = new Map<
    string,
    { labels: Labels; counts: number[]; sum: number; count: number }
  >();
  constructor(readonly name: string, readonly help: string, readonly buckets: number[]) {}

  observe(value: number, labels: Labels = {}) {
    const key = labelText(labels);
    let s = this.series.get(key);
    if (!s) this.series.set(key, s = { labels, counts: this.buckets.map(() => 0), sum: 0, count: 0 });
    this.buckets.forEach((b, i) => {
      if (value <= b) s!.counts[i]++;
    });
    s.sum += value;
    s.count++;
  }

  render(): string {
    const lines = [`# HELP ${this.name} ${this.help}`, `# TYPE ${this.name} histogram`];
    for (const s of this.series.values()) {
      this.buckets.forEach((b, i) =>
        lines.push(`${this.name}_bucket${labelText({ ...s.labels, le: num(b) })} ${s.counts[i]}`)
      );
      lines.push(`${this.name}_bucket${labelText({ ...s.labels, le: "+Inf" })} ${s.count}`);
      lines.push(`${this.name}_sum${labelText(s.labels)} ${num(s.sum)}`);
      lines.push(`${this.name}_count${labelText(s.labels)} ${s.count}`);
    }
    return lines.join("\n");
  }
}

/** A value read when scraped: a gauge (queue depth) or a counter kept elsewhere (evictions). */
export class Gauge implements Metric {
  constructor(
    readonly name: string,
    readonly help: string,
    readonly read: () => number,
    readonly type: "gauge" | "counter" = "gauge",
  ) {}
  render(): string {
    return [
      `# HELP ${this.name} ${this.help}`,
      `# TYPE ${this.name} ${this.type}`,
      `${this.name} ${num(this.read())}`,
    ].join("\n");
  }
}

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];

/** The server's metrics. Gauges read values others own: serverGauges declares them, app.ts wires them. */
export class ServerMetrics {
  readonly requests = new Counter("judgeq_http_requests_total", "HTTP requests by route, method and status.");
  /** By the key's label (--api-keys-file), never the key itself. */
  readonly requestsByKey = new Counter(
    "judgeq_http_requests_by_key_total",
    "Authenticated HTTP requests by API key label.",
  );
  readonly latency = new Histogram(
    "judgeq_http_request_duration_seconds",
    "Time from request to the end of the response body, by route.",
    LATENCY_BUCKETS,
  );
  readonly queueWait = new Histogram(
    "judgeq_queue_wait_seconds",
    "Time jobs waited for the executor.",
    LATENCY_BUCKETS,
  );
  readonly firstToken = new Histogram(
    "judgeq_time_to_first_token_seconds",
    "Time from a job's start on the executor to its first generated token.",
    LATENCY_BUCKETS,
  );
  readonly promptTokens = new Counter(
    "judgeq_prompt_tokens_total",
    "Prompt, context and question tokens read.",
  );
  readonly completionTokens = new Counter("judgeq_completion_tokens_total", "Tokens generated.");
  readonly kvBytesSaved = new Counter(
    "judgeq_kv_bytes_saved_total",
    "KV-cache bytes freed by compression (before minus after).",
  );
  readonly decodeCompressions = new Counter(
    "judgeq_decode_compressions_total",
    "Compressions of the KV cache during decoding (kv_compression.decode).",
  );
  readonly jobs = new Counter(
    "judgeq_jobs_total",
    "Executor jobs by outcome (ok, error, cancelled, time_limit, stalled).",
  );
  readonly rejected = new Counter(
    "judgeq_queue_rejected_total",
    "Requests refused with 429 because the queue was full.",
  );
  private readonly gauges: Gauge[] = [];

  gauge(name: string, help: string, read: () => number, type: "gauge" | "counter" = "gauge") {
    this.gauges.push(new Gauge(name, help, read, type));
  }

  render(): string {
    const all: Metric[] = [
      this.requests,
      this.requestsByKey,
      this.latency,
      this.queueWait,
      this.firstToken,
      this.promptTokens,
      this.completionTokens,
      this.kvBytesSaved,
      this.decodeCompressions,
      this.jobs,
      this.rejected,
      ...this.gauges,
    ];
    return all.map((m) => m.render()).join("\n") + "\n";
  }
}

/** What the server's gauges read, at scrape time (app.ts hands them the service's parts). */
export interface GaugeSources {
  queue: { readonly depth: number; readonly inFlight: number };
  contexts: {
    readonly size: number;
    readonly bytes: number;
    readonly evicted: number;
    readonly expired: number;
  };
  httpInFlight: () => number;
  stalledStreams: () => number;
  restoredContexts: () => number;
  deviceLost: () => boolean;
}

/** Declares the server's gauges on `m`, each reading its value from `s` when scraped. */
export function serverGauges(m: ServerMetrics, s: GaugeSources) {
  m.gauge("judgeq_queue_depth", "Jobs waiting for a stream slot.", () => s.queue.depth);
  m.gauge(
    "judgeq_jobs_in_flight",
    "Jobs running: their streams' rows share the batch scheduler's steps (parked streams not counted).",
    () => s.queue.inFlight,
  );
  m.gauge(
    "judgeq_http_requests_in_flight",
    "HTTP requests being handled, streams until they end (scrapes not counted).",
    s.httpInFlight,
  );
  m.gauge(
    "judgeq_streams_stalled",
    "Streaming jobs waiting, off their slot, for their client to read (their buffer full).",
    s.stalledStreams,
  );
  m.gauge("judgeq_contexts", "Compressed contexts kept.", () => s.contexts.size);
  m.gauge(
    "judgeq_contexts_kv_bytes",
    "Bytes kept contexts hold allocated (KV storage with its room, positions, logits): what --context-max-mb caps.",
    () => s.contexts.bytes,
  );
  m.gauge(
    "judgeq_contexts_evicted_total",
    "Contexts evicted under the memory cap.",
    () => s.contexts.evicted,
    "counter",
  );
  m.gauge(
    "judgeq_contexts_expired_total",
    "Contexts expired by TTL.",
    () => s.contexts.expired,
    "counter",
  );
  m.gauge(
    "judgeq_contexts_restored_total",
    "Contexts restored from the shared context store (another replica made them, or this one evicted them).",
    s.restoredContexts,
    "counter",
  );
  m.gauge(
    "judgeq_device_lost",
    "1 once the executor's device is lost.",
    () => (s.deviceLost() ? 1 : 0),
  );
  // The process's own memory where the runtime tells it (Deno, Node); absent on edge runtimes.
  const memory =
    (globalThis as { Deno?: { memoryUsage?: () => { rss: number; heapUsed: number; external: number } } })
      .Deno?.memoryUsage;
  if (memory) {
    m.gauge("process_resident_memory_bytes", "Resident memory of the process.", () => memory().rss);
    m.gauge("judgeq_js_heap_used_bytes", "JavaScript heap in use.", () => memory().heapUsed);
    m.gauge(
      "judgeq_external_memory_bytes",
      "Memory outside the JavaScript heap held by its objects (typed arrays, WebAssembly memory).",
      () => memory().external,
    );
  }
}

/** Reads one sample from exposition text (tests, load test): `name{labels}` exactly, or 0. */
export function sampleValue(text: string, series: string): number {
  for (const line of text.split("\n")) {
    if (line.startsWith(series + " ")) return Number(line.slice(series.length + 1));
  }
  return 0;
}

/** What the batch scheduler's gauges read (server/batch_scheduler.ts's BatchScheduler). */
export interface BatchSources {
  readonly limits: { readonly maxBatchTokens: number; readonly kvCapBytes: number | null };
  readonly last: { readonly streams: number; readonly rows: number };
  readonly steps: number;
  readonly rows: number;
  readonly kvReserved: number;
  readonly kvWaiting: number;
  kvAllocated(): number;
}

/** Declares the batch scheduler's gauges and the limits in force on `m`. */
export function batchGauges(m: ServerMetrics, s: BatchSources, maxStreams: number) {
  m.gauge("judgeq_batch_max_streams", "Streams that may run at once (--max-streams).", () => maxStreams);
  m.gauge(
    "judgeq_batch_max_rows",
    "Rows one batched step may run (--max-batch-tokens).",
    () => s.limits.maxBatchTokens,
  );
  m.gauge("judgeq_batch_streams", "Streams (sessions) in the last batched step.", () => s.last.streams);
  m.gauge(
    "judgeq_batch_rows",
    "Rows (decode tokens + prefill tokens) in the last batched step.",
    () => s.last.rows,
  );
  m.gauge("judgeq_batch_steps_total", "Batched steps run.", () => s.steps, "counter");
  m.gauge("judgeq_batch_rows_total", "Rows run in batched steps.", () => s.rows, "counter");
  m.gauge(
    "judgeq_kv_bytes_in_use",
    "KV-cache bytes live streams and kept contexts hold allocated.",
    () => s.kvAllocated(),
  );
  m.gauge(
    "judgeq_kv_bytes_reserved",
    "KV-cache bytes reserved by live streams and kept contexts.",
    () => s.kvReserved,
  );
  m.gauge(
    "judgeq_kv_bytes_free",
    "KV-cache bytes left under --kv-cache-mb (+Inf without a cap).",
    () => (s.limits.kvCapBytes ?? Infinity) - s.kvReserved,
  );
  m.gauge("judgeq_kv_waiting", "Streams waiting for KV-cache room.", () => s.kvWaiting);
}
