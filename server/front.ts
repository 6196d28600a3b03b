/**
 * A TCP front for Deno.serve, which has no header or idle timeouts (Deno 2.9: a connection that sends
 * nothing, trickles its headers a byte at a time, or idles between keep-alive requests is held open
 * forever). The front accepts connections on the public address and relays their bytes, unparsed, to
 * Deno.serve on a private loopback port; it only watches time:
 *
 * - from accept, and from the first byte of each later request, the request's headers must be complete
 *   (the handler called) within `headerTimeoutMs`;
 * - once every response on a connection is delivered, the next request must start within
 *   `idleTimeoutMs`;
 * - while a request is being handled (its body read, its answer computed or streamed) neither runs:
 *   the body has its own deadline (408, --body-timeout), and a long generation is not cut.
 *
 * A connection past a deadline is closed. The handler learns which connection a request came through
 * from the relay's loopback port (the request's remote address); a request that did not come through
 * the front (someone connecting to the private port directly) gets a 403.
 *
 * The HTTP layer answers a request it cannot parse (a broken request line or header) itself, with an
 * empty 400, before any handler runs (onError is not called). The front recognises that answer by its
 * shape (layerAnswer) and sends the service's JSON error with the same status instead.
 */
import { errorBody, HttpError } from "./errors.ts";

export interface FrontOptions {
  /** Public address. */
  hostname: string;
  port: number;
  /** Time for a request's headers, from the connection's accept or the request's first byte; 0: none. */
  headerTimeoutMs: number;
  /** Time a connection may wait for its next request once its answers are delivered; 0: none. */
  idleTimeoutMs: number;
  onError: (e: unknown) => Response | Promise<Response>;
  onListen?: (addr: Deno.NetAddr) => void;
}

export interface FrontedServer {
  /** The public address. */
  addr: Deno.NetAddr;
  /** Stops accepting; resolves once Deno.serve's graceful shutdown is done and every answer relayed. */
  shutdown(): Promise<void>;
  /** Connections open through the front (tests). */
  readonly connections: number;
  /** The private loopback address Deno.serve listens on behind the front (null without a front). */
  inner: Deno.NetAddr | null;
}

/** Statuses the HTTP layer answers on its own, and what they mean in the service's words. */
const LAYER_ERRORS: Record<number, string> = {
  400: "the request line or headers could not be parsed as HTTP/1.1",
  431: "the request headers are too large",
  505: "this HTTP version is not supported",
};

type Phase = "head" | "busy" | "idle";

class Relay {
  phase: Phase = "head";
  inFlight = 0;
  private timer: ReturnType<typeof setTimeout> | null = null;
  private closed = false;

  constructor(
    readonly client: Deno.Conn,
    readonly upstream: Deno.Conn,
    readonly o: FrontOptions,
    readonly onClose: () => void,
  ) {
    this.arm(o.headerTimeoutMs);
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

const latin1 = new TextDecoder("latin1");

/**
 * Where `chunk` ends with an answer of the HTTP layer's own (a request it could not parse), and its
 * status; else null. Deno's (hyper's) is `HTTP/1.1 400 Bad Request`, `content-length: 0`, `date`,
 * `connection: close` and nothing else, written at once, and the connection closes after it. No answer
 * of the service has that shape: every error has a JSON body and a content-type, and none asks to close
 * the connection; nor can one hold those bytes in its body (JSON and server-sent events escape CR and LF).
 */
export function layerAnswer(chunk: Uint8Array): { at: number; status: number } | null {
  const n = chunk.length;
  if (n < 4 || chunk[n - 4] !== 13 || chunk[n - 3] !== 10 || chunk[n - 2] !== 13 || chunk[n - 1] !== 10) {
    return null;
  }
  const tail = latin1.decode(chunk.subarray(Math.max(0, n - 512)));
  const start = tail.lastIndexOf("HTTP/1.");
  if (start < 0) return null;
  const head = tail.slice(start, -4).split("\r\n");
  const status = /^HTTP\/1\.[01] ([45]\d\d) [^\r\n]*$/.exec(head[0]);
  if (!status) return null;
  const fields = new Map(
    head.slice(1).map((line) => {
      const colon = line.indexOf(":");
      return [line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim().toLowerCase()];
    }),
  );
  const own = fields.get("content-length") === "0" && fields.get("connection") === "close" &&
    [...fields.keys()].every((k) => ["content-length", "connection", "date"].includes(k));
  return own ? { at: n - (tail.length - start), status: Number(status[1]) } : null;
}

/** The JSON answer that replaces the HTTP layer's empty one: same status, the service's error shape. */
function layerError(status: number): Uint8Array {
  const e = new HttpError(status, LAYER_ERRORS[status] ?? "the HTTP layer refused the request");
  const body = JSON.stringify(errorBody(e));
  const reason = status === 400
    ? "Bad Request"
    : status === 431
    ? "Request Header Fields Too Large"
    : "Error";
  return new TextEncoder().encode(
    `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${
      new TextEncoder().encode(body).length
    }\r\nconnection: close\r\n\r\n${body}`,
  );
}

/**
 * Serves `handler` with Deno.serve behind the front. With both timeouts 0 it is Deno.serve alone on the
 * public address (no front, no deadlines).
 */
export async function serveFronted(
  o: FrontOptions,
  handler: (req: Request) => Promise<Response>,
): Promise<FrontedServer> {
  if (o.headerTimeoutMs <= 0 && o.idleTimeoutMs <= 0) {
    const listening = Promise.withResolvers<Deno.NetAddr>();
    const server = Deno.serve({
      hostname: o.hostname,
      port: o.port,
      onError: o.onError,
      onListen: (a) => listening.resolve(a as Deno.NetAddr),
    }, handler);
    const addr = await listening.promise;
    o.onListen?.(addr);
    return { addr, shutdown: () => server.shutdown(), connections: 0, inner: null };
  }

  const relays = new Map<number, Relay>(); // by the relay's loopback port, as Deno.serve sees it
  const inner = Promise.withResolvers<Deno.NetAddr>();
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onError: o.onError,
    onListen: (a) => inner.resolve(a as Deno.NetAddr),
  }, async (req, info) => {
    const relay = relays.get((info.remoteAddr as Deno.NetAddr).port);
    if (!relay) {
      await req.body?.cancel();
      const e = new HttpError(403, "connect through the server's public address");
      return new Response(JSON.stringify(errorBody(e)), {
        status: 403,
        headers: { "content-type": "application/json" },
      });
    }
    relay.begin();
    info.completed.catch(() => {}).finally(() => relay.end());
    return await handler(req);
  });
  const innerAddr = await inner.promise;

  const listener = Deno.listen({ hostname: o.hostname, port: o.port, transport: "tcp" });
  const addr = listener.addr as Deno.NetAddr;
  o.onListen?.(addr);

  const relayConnection = async (client: Deno.Conn) => {
    let upstream: Deno.Conn;
    try {
      upstream = await Deno.connect({ hostname: "127.0.0.1", port: innerAddr.port });
    } catch {
      client.close();
      return;
    }
    const port = (upstream.localAddr as Deno.NetAddr).port;
    const relay = new Relay(client, upstream, o, () => relays.delete(port));
    relays.set(port, relay); // before any byte is relayed: the handler always finds it
    /** Relays the client's bytes; false when the client failed (gone), true when it ended or upstream refused. */
    const toUpstream = async (): Promise<boolean> => {
      const buf = new Uint8Array(64 << 10);
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
      const buf = new Uint8Array(64 << 10);
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
  };

  let accepting = true;
  const open = new Set<Promise<void>>(); // connections being relayed
  (async () => {
    for await (const client of listener) {
      if (!accepting) {
        client.close();
        continue;
      }
      const relayed = relayConnection(client).catch(() => {});
      open.add(relayed);
      relayed.finally(() => open.delete(relayed));
    }
  })().catch(() => {});

  return {
    addr,
    inner: innerAddr,
    get connections() {
      return relays.size;
    },
    async shutdown() {
      accepting = false;
      try {
        listener.close();
      } catch { /* closed */ }
      await server.shutdown(); // closes idle connections, lets requests in progress finish
      await Promise.all(open); // and their last bytes reach the clients
    },
  };
}
