/**
 * The TCP front's worker (see front.ts): accepts connections on the public address, relays their bytes
 * unparsed to Deno.serve on the private loopback port, and closes a connection past its header or idle
 * deadline. The main thread says when a connection's request reached the handler ("begin") and when its
 * answer was delivered ("end"); this thread, free of the jobs that hold the main one, keeps the time.
 */
/// <reference lib="deno.worker" />
import { HttpError } from "../errors.ts";
import { type FromFront, layerAnswer, layerError, rawError, type ToFront } from "./front.ts";

type Start = Extract<ToFront, { type: "start" }>;
type Phase = "head" | "busy" | "idle";

const post = (m: FromFront) => self.postMessage(m);

/** A write to a client pending this long means its socket is full: it is not reading. */
const BLOCKED_AFTER_MS = 20;

/** Per direction and connection: small, as connections held open until their deadline each hold two. */
const RELAY_BUFFER_BYTES = 16 << 10;

class Relay {
  phase: Phase = "head";
  inFlight = 0;
  /** Client bytes of a request that got no answer byte yet (a request the HTTP layer may drop unanswered). */
  unanswered = false;
  /** The client's side ended (it closed or failed): its requests' jobs are cancelled. */
  gone = false;
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

  /** Whether closing it cuts no request being handled (idle, or its headers not yet complete). */
  get evictable(): boolean {
    return this.phase !== "busy";
  }

  private arm(ms: number) {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (ms > 0 && !this.closed) this.timer = setTimeout(() => this.close(), ms);
  }

  /** Client bytes: the first of a new request starts its header deadline. */
  fromClient() {
    this.unanswered = true;
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

/** One accepted connection, from accept (before its relay exists) to its close. */
interface Entry {
  client: Deno.Conn;
  peer: string;
  relay: Relay | null;
}

const byPeer = new Map<string, Set<Entry>>(); // every open connection, by the client's address

function track(e: Entry): () => void {
  let set = byPeer.get(e.peer);
  if (!set) byPeer.set(e.peer, set = new Set());
  set.add(e);
  return () => {
    set!.delete(e);
    if (set!.size === 0) byPeer.delete(e.peer);
  };
}

/** The client's address: the unit of the per-peer cap and of eviction. */
const peerOf = (c: Deno.Conn) => (c.remoteAddr as Deno.NetAddr).hostname;

/**
 * At the global cap, a place for a newcomer from `peer`: the oldest connection of the address holding
 * the most, if that is another address holding more than `peer` does, is closed, idle keep-alive
 * connections before ones waiting for headers, never one whose request is being handled. True when a
 * place was made; false leaves the newcomer refused. So one address holding every place (a slowloris)
 * gives them up to everyone else, one by one, while it can never take another's.
 */
function evictFor(peer: string): boolean {
  const own = byPeer.get(peer)?.size ?? 0;
  let heaviest: Set<Entry> | null = null;
  for (const [p, set] of byPeer) {
    if (p !== peer && set.size > own + 1 && (!heaviest || set.size > heaviest.size)) heaviest = set;
  }
  if (!heaviest) return false;
  // Sets keep insertion order: the first found of each kind is its oldest.
  let victim: Entry | null = null;
  for (const e of heaviest) {
    if (!e.relay || !e.relay.evictable) continue;
    if (e.relay.phase === "idle") {
      victim = e;
      break;
    }
    victim ??= e;
  }
  if (!victim) return false;
  evicted++;
  victim.relay!.close();
  return true;
}

let evicted = 0;

async function relayConnection(client: Deno.Conn, o: Start, entry: Entry) {
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
  entry.relay = relay;
  post({ type: "open", port }); // the main thread serves this port's requests once it knows it
  /** Relays the client's bytes; false when the client failed (gone), true when it ended or upstream refused. */
  const toUpstream = async (): Promise<boolean> => {
    const buf = new Uint8Array(RELAY_BUFFER_BYTES);
    for (;;) {
      let n: number | null, failed = false;
      try {
        n = await client.read(buf);
      } catch {
        n = null;
        failed = true;
      }
      if (n === null) {
        // The client closed or failed: whatever it asked is not wanted any more (Deno.serve's own
        // request.signal misses this once a body is over a few hundred bytes).
        relay.gone = true;
        if (relay.inFlight > 0 || relay.unanswered) post({ type: "gone", port });
        if (failed) return false;
        break;
      }
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
  /**
   * A write the client's socket does not take at once (it is not reading): the main thread hears
   * "blocked", and the stream being answered waits, off the executor, until "flowing".
   */
  const writeToClient = async (bytes: Uint8Array) => {
    let blocked = false;
    const timer = setTimeout(() => {
      blocked = true;
      post({ type: "blocked", port });
    }, BLOCKED_AFTER_MS);
    try {
      await writeAll(client, bytes);
    } finally {
      clearTimeout(timer);
      if (blocked) post({ type: "flowing", port });
    }
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
      relay.unanswered = false;
      await writeToClient(buf.subarray(0, n));
    }
    // The HTTP layer closed the connection without a byte for a request it had (a chunk size it could
    // not parse, or a body it could not read): the client still gets a JSON 400 if it is there.
    if (relay.unanswered && !relay.gone && !stopping) {
      await writeAll(client, rawError(new HttpError(400, UNREADABLE)));
    }
  };
  // The client's end of input is passed on (the HTTP layer then ends the connection, as it would
  // facing the client); the connection ends when the answers do, or when either side fails.
  const answers = toClient().catch(() => {});
  await Promise.race([toUpstream().then((relayAnswers) => relayAnswers ? answers : undefined), answers]);
  relay.close();
}

const UNREADABLE =
  "the request could not be read as HTTP/1.1 (a malformed chunked body, or a body that does not match its framing)";

/** A connection beyond a cap: a 503 the client can read, then closed (never relayed, never queued). */
function refuse(client: Deno.Conn, message: string) {
  const e = new HttpError(503, `${message}; retry later`, null, { "retry-after": "1" });
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
      const peer = peerOf(client);
      if (o.maxConnectionsPerPeer > 0 && (byPeer.get(peer)?.size ?? 0) >= o.maxConnectionsPerPeer) {
        refuse(client, `this address holds its maximum of ${o.maxConnectionsPerPeer} connections`);
        continue;
      }
      if (o.maxConnections > 0 && open.size >= o.maxConnections && !evictFor(peer)) {
        refuse(client, `the server holds its maximum of ${o.maxConnections} connections`);
        continue;
      }
      const entry: Entry = { client, peer, relay: null };
      const untrack = track(entry);
      const relayed = relayConnection(client, o, entry).catch(() => {}).finally(untrack);
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
      post({ type: "count", id: m.id, n: relays.size, evicted });
      break;
  }
};
