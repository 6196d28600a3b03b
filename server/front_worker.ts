/**
 * The TCP front's worker (see front.ts): accepts connections on the public address, relays their bytes
 * unparsed to Deno.serve on the private loopback port, and closes a connection past its header or idle
 * deadline. The main thread says when a connection's request reached the handler ("begin") and when its
 * answer was delivered ("end"); this thread, free of the jobs that hold the main one, keeps the time.
 */
/// <reference lib="deno.worker" />
import { HttpError } from "./errors.ts";
import { type FromFront, layerAnswer, layerError, rawError, type ToFront } from "./front.ts";

type Start = Extract<ToFront, { type: "start" }>;
type Phase = "head" | "busy" | "idle";

const post = (m: FromFront) => self.postMessage(m);

/** Per direction and connection: small, as connections held open until their deadline each hold two. */
const RELAY_BUFFER_BYTES = 16 << 10;

class Relay {
  phase: Phase = "head";
  inFlight = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private closed = false;

  constructor(
    readonly client: Deno.Conn,
    readonly upstream: Deno.Conn,
    readonly o: Start,
    readonly onClose: () => void,
  ) {
    this.arm(o.headerTimeoutMs); // the first request's headers, from accept
  }

  private arm(ms: number) {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (ms > 0 && !this.closed) this.timer = setTimeout(() => this.close(), ms);
  }

  /** Client bytes: the first of a new request starts its header deadline. */
  fromClient() {
    if (this.phase === "idle") {
      this.phase = "head";
      this.arm(this.o.headerTimeoutMs);
    }
  }

  /** The handler got a request of this connection: its headers are in. */
  begin() {
    this.inFlight++;
    this.phase = "busy";
    this.arm(0);
  }

  /** A response of this connection was delivered (or failed). */
  end() {
    if (--this.inFlight > 0 || this.closed) return;
    this.phase = "idle";
    this.arm(this.o.idleTimeoutMs);
  }

  close() {
    if (this.closed) return;
    this.closed = true;
    this.arm(0);
    for (const c of [this.client, this.upstream]) {
      try {
        c.close();
      } catch { /* already closed */ }
    }
    this.onClose();
  }
}

async function writeAll(to: Deno.Conn, bytes: Uint8Array) {
  for (let at = 0; at < bytes.length;) at += await to.write(bytes.subarray(at));
}

const relays = new Map<number, Relay>(); // by the local port of their connection to the private port
const open = new Set<Promise<void>>(); // connections being relayed
let listener: Deno.Listener | null = null;
let stopping = false;

async function relayConnection(client: Deno.Conn, o: Start) {
  let upstream: Deno.Conn;
  try {
    upstream = await Deno.connect({ hostname: "127.0.0.1", port: o.innerPort });
  } catch {
    client.close();
    return;
  }
  // Small writes (an answer's head, an event) go out at once: no Nagle delay on a relayed byte.
  for (const c of [client, upstream] as Deno.TcpConn[]) c.setNoDelay(true);
  const port = (upstream.localAddr as Deno.NetAddr).port;
  const relay = new Relay(client, upstream, o, () => {
    relays.delete(port);
    post({ type: "closed", port });
  });
  relays.set(port, relay);
  post({ type: "open", port }); // the main thread serves this port's requests once it knows it
  /** Relays the client's bytes; false when the client failed (gone), true when it ended or upstream refused. */
  const toUpstream = async (): Promise<boolean> => {
    const buf = new Uint8Array(RELAY_BUFFER_BYTES);
    for (;;) {
      let n: number | null;
      try {
        n = await client.read(buf);
      } catch {
        return false;
      }
      if (n === null) break;
      relay.fromClient();
      try {
        await writeAll(upstream, buf.subarray(0, n));
      } catch {
        return true; // the HTTP layer stopped reading (a request it refused): its answer follows
      }
    }
    await upstream.closeWrite().catch(() => {});
    return true;
  };
  const toClient = async () => {
    const buf = new Uint8Array(RELAY_BUFFER_BYTES);
    for (let n = await upstream.read(buf); n !== null; n = await upstream.read(buf)) {
      const own = layerAnswer(buf.subarray(0, n));
      if (own) {
        // The HTTP layer's own answer to a request it could not parse: the service's JSON error
        // instead (the layer closes the connection after it).
        await writeAll(client, buf.subarray(0, own.at));
        await writeAll(client, layerError(own.status));
        return;
      }
      await writeAll(client, buf.subarray(0, n));
    }
  };
  // The client's end of input is passed on (the HTTP layer then ends the connection, as it would
  // facing the client); the connection ends when the answers do, or when either side fails.
  const answers = toClient().catch(() => {});
  await Promise.race([toUpstream().then((relayAnswers) => relayAnswers ? answers : undefined), answers]);
  relay.close();
}

/** A connection beyond the cap: a 503 the client can read, then closed (never relayed, never queued). */
function refuse(client: Deno.Conn, most: number) {
  const e = new HttpError(503, `the server holds its maximum of ${most} connections; retry later`, null, {
    "retry-after": "1",
  });
  writeAll(client, rawError(e)).catch(() => {}).finally(() => {
    try {
      client.close();
    } catch { /* already closed */ }
  });
}

async function start(o: Start) {
  try {
    listener = Deno.listen({ hostname: o.hostname, port: o.port, transport: "tcp" });
  } catch (e) {
    post({ type: "error", message: `cannot listen on ${o.hostname}:${o.port}: ${(e as Error).message}` });
    return;
  }
  const addr = listener.addr as Deno.NetAddr;
  post({ type: "listening", hostname: addr.hostname, port: addr.port });
  try {
    for await (const client of listener) {
      if (o.maxConnections > 0 && open.size >= o.maxConnections) {
        refuse(client, o.maxConnections);
        continue;
      }
      const relayed = relayConnection(client, o).catch(() => {});
      open.add(relayed);
      relayed.finally(() => open.delete(relayed));
    }
  } catch { /* closed */ }
}

async function stop() {
  stopping = true;
  try {
    listener?.close();
  } catch { /* closed */ }
  await Promise.all(open);
  post({ type: "drained" });
}

self.onmessage = (ev: MessageEvent<ToFront>) => {
  const m = ev.data;
  switch (m.type) {
    case "start":
      start(m);
      break;
    case "begin":
      relays.get(m.port)?.begin();
      break;
    case "end":
      relays.get(m.port)?.end();
      break;
    case "stop":
      if (!stopping) stop();
      break;
    case "count":
      post({ type: "count", id: m.id, n: relays.size });
      break;
  }
};
