/**
 * The larger runs of issue 25's attacks against a real server process on loopback (tests/server_attacks_test.ts
 * runs small ones): made-up HTTP methods (the size of /metrics and its scrape time after them), clients that
 * send a body and hang up (the statuses counted), and one address holding more connections than the cap while
 * another sends requests (their statuses). The attacking address is 127.0.0.2 (Linux routes all of 127/8 to
 * loopback). --url probes a server already running (its resident memory is then not read).
 *   deno run -A ops/attack_probe.ts [--methods 20000] [--hangups 2000] [--hold 1100] [--legit 105]
 *                                      [--max-connections 1024] [--executor wasm] [--url URL]
 */
import net from "node:net";
import { executorFlag, executorFlags, parseFlags, usage, UsageError } from "../io/flags.ts";
import { startServer, stopProcess } from "./processes.ts";
import { residentBytes } from "./soak.ts";

const SPEC = {
  methods: { kind: "int", help: "requests with made-up methods (default 20000)", default: 20000 },
  hangups: { kind: "int", help: "clients that send a body and hang up (default 2000)", default: 2000 },
  hold: { kind: "int", help: "connections the attacker holds, from 127.0.0.2 (default 1100)", default: 1100 },
  legit: { kind: "int", help: "requests from 127.0.0.1 meanwhile (default 105)", default: 105 },
  "max-connections": { kind: "int", help: "--max-connections of the server (default 1024)", default: 1024 },
  url: { kind: "string", help: "probe this running server (loopback) instead of starting one" },
  ...executorFlags("wasm", " of the server it starts"),
  help: { kind: "boolean", help: "show this help" },
} as const;

const enc = new TextEncoder(), dec = new TextDecoder();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Sends `text` on a new connection and reads until the server closes it. */
async function exchange(port: number, text: string): Promise<string> {
  const c = await Deno.connect({ hostname: "127.0.0.1", port });
  let got = "";
  try {
    await c.write(enc.encode(text));
    const buf = new Uint8Array(8192);
    for (let n = await c.read(buf); n !== null; n = await c.read(buf)) got += dec.decode(buf.subarray(0, n));
  } catch { /* reset */ }
  try {
    c.close();
  } catch { /* closed */ }
  return got;
}

const mb = (b: number) => Math.round(b / 2 ** 20 * 10) / 10;

async function probe(port: number, pid: number | null, f: Record<string, unknown>) {
  const metrics = async () => {
    const t0 = performance.now();
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    return { bytes: text.length, ms: Math.round((performance.now() - t0) * 10) / 10, text };
  };
  const rss = () => (pid === null ? null : mb(residentBytes(pid)));
  const report: Record<string, unknown> = {};

  const n = f.methods as number, m0 = await metrics(), r0 = rss();
  for (let i = 0; i < n; i += 50) {
    await Promise.all(Array.from({ length: Math.min(50, n - i) }, (_, j) =>
      exchange(
        port,
        `Z${
          (i + j).toString(16).padStart(800, "0")
        } /healthz HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n`,
      )));
  }
  const m1 = await metrics();
  report.methods = {
    requests: n,
    metrics_bytes: [m0.bytes, m1.bytes],
    scrape_ms: m1.ms,
    rss_mb: [r0, rss()],
  };

  const body = JSON.stringify({ prompt: "Once upon a time", max_tokens: 4 });
  const h = f.hangups as number;
  for (let i = 0; i < h; i += 20) {
    await Promise.all(Array.from({ length: Math.min(20, h - i) }, async (_, j) => {
      const c = await Deno.connect({ hostname: "127.0.0.1", port });
      const length = (i + j) % 2 ? body.length : body.length + 20; // whole, or cut short
      await c.write(enc.encode(
        `POST /v1/generate HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: ${length}\r\n\r\n${body}`,
      )).catch(() => {});
      c.close();
    }));
  }
  await sleep(1000);
  const statuses: Record<string, number> = {};
  for (const line of (await metrics()).text.split("\n")) {
    const s = /^judgeq_http_requests_total\{route="\/v1\/generate",method="POST",status="(\d+)"\} (\d+)$/
      .exec(line);
    if (s) statuses[s[1]] = Number(s[2]);
  }
  report.hangups = { clients: h, statuses };

  let attacking = true, opened = 0;
  const held = new Set<net.Socket>();
  const open = () => {
    if (!attacking) return;
    opened++;
    const c = net.connect({ host: "127.0.0.1", port, localAddress: "127.0.0.2" });
    held.add(c);
    c.on("error", () => {});
    c.on("close", () => {
      held.delete(c);
      setTimeout(open, 5);
    });
  };
  for (let i = 0; i < (f.hold as number); i++) open();
  await sleep(3000);
  const legit: Record<string, number> = {};
  for (let i = 0; i < (f.legit as number); i++) {
    const a = await exchange(port, "GET /healthz HTTP/1.1\r\nHost: x\r\nconnection: close\r\n\r\n");
    const s = a.slice(9, 12) || "no answer";
    legit[s] = (legit[s] ?? 0) + 1;
  }
  attacking = false;
  for (const c of held) c.destroy();
  report.slowloris = { held: f.hold, attacker_connects: opened, legit_statuses: legit };
  return report;
}

async function main(argv: string[]): Promise<number> {
  const f = parseFlags(argv, SPEC);
  if (f.help) {
    console.log(usage("deno run -A ops/attack_probe.ts", SPEC));
    return 0;
  }
  for (const k of ["methods", "hangups", "hold", "legit", "max-connections"] as const) {
    if (!((f[k] as number) >= 0)) throw new UsageError(`--${k}: expected a number >= 0, got '${f[k]}'`);
  }
  if (f.url !== undefined) {
    const u = new URL(f.url as string);
    if (!["127.0.0.1", "localhost"].includes(u.hostname)) throw new UsageError("--url: loopback only");
    console.log(JSON.stringify(await probe(Number(u.port), null, f), null, 2));
    return 0;
  }
  const { child, base } = await startServer([
    "--adapter",
    "none",
    "--executor",
    executorFlag(f.executor),
    "--max-connections",
    String(f["max-connections"]),
  ]);
  try {
    console.log(JSON.stringify(await probe(Number(new URL(base).port), child.pid, f), null, 2));
    return 0;
  } finally {
    await stopProcess(child);
  }
}

if (import.meta.main) {
  try {
    Deno.exit(await main(Deno.args));
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`error: ${e.message}\n${usage("deno run -A ops/attack_probe.ts", SPEC)}`);
    } else console.error(`error: ${e instanceof Error ? e.message : String(e)}`);
    Deno.exit(2);
  }
}
