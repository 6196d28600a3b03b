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
import { setClientRoom } from "./client_flow.ts";
import { errorBody, HttpError } from "./errors.ts";

export interface FrontOptions {
  /** Public address. */
  hostname: string;
  port: number;
  /** Time for a request's headers, from the connection's accept or the request's first byte; 0: none. */
  headerTimeoutMs: number;
  /** Time a connection may wait for its next request once its answers are delivered; 0: none. */
  idleTimeoutMs: number;
  /**
   * Deno.serve alone on the public address, no front: no deadlines, no connection caps, and a client's
   * disconnect goes unnoticed once its request's body is over a few hundred bytes. Only to measure
   * what the front costs (the load test's --bare); every served configuration keeps the front.
   */
  bare?: boolean;
  /**
   * Connections open at once. At the cap, a newcomer from an address holding fewer than the heaviest
   * address takes the place of that one's oldest idle (or header-waiting) connection; else it is
   * answered 503 (JSON, Retry-After) and closed. 0: no cap.
   */
  maxConnections?: number;
  /** Connections one client address may hold open at once; one more gets the 503. 0: no cap. */
  maxConnectionsPerPeer?: number;
  onError: (e: unknown) => Response | Promise<Response>;
  onListen?: (addr: Deno.NetAddr) => void;
}

export interface FrontedServer {
  /** The public address. */
  addr: Deno.NetAddr;
  /** Stops accepting; resolves once Deno.serve's graceful shutdown is done and every answer relayed. */
  shutdown(): Promise<void>;
  /** Connections open through the front (tests). */
  connections(): Promise<number>;
  /** Connections open, and closed since start to make room for another address's (metrics). */
  stats(): Promise<{ open: number; evicted: number }>;
  /** The private loopback address Deno.serve listens on behind the front (null when bare). */
  inner: Deno.NetAddr | null;
}

/** Statuses the HTTP layer answers on its own, and what they mean in the service's words. */
const LAYER_ERRORS: Record<number, string> = {
  400: "the request line or headers could not be parsed as HTTP/1.1",
  431: "the request headers are too large",
  505: "this HTTP version is not supported",
};

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
export function layerError(status: number): Uint8Array {
  return rawError(new HttpError(status, LAYER_ERRORS[status] ?? "the HTTP layer refused the request"));
}

/** A whole HTTP/1.1 error answer as bytes, closing the connection (the front answers these itself). */
export function rawError(e: HttpError): Uint8Array {
  const status = e.status;
  const body = JSON.stringify(errorBody(e));
  const reason = status === 400
    ? "Bad Request"
    : status === 431
    ? "Request Header Fields Too Large"
    : status === 503
    ? "Service Unavailable"
    : "Error";
  const extra = Object.entries(e.headers).map(([k, v]) => `${k}: ${v}\r\n`).join("");
  return new TextEncoder().encode(
    `HTTP/1.1 ${status} ${reason}\r\ncontent-type: application/json\r\ncontent-length: ${
      new TextEncoder().encode(body).length
    }\r\n${extra}connection: close\r\n\r\n${body}`,
  );
}

/** What the main thread tells the front's worker. */
export type ToFront =
  | {
    type: "start";
    hostname: string;
    port: number;
    innerPort: number;
    headerTimeoutMs: number;
    idleTimeoutMs: number;
    maxConnections: number;
    maxConnectionsPerPeer: number;
  }
  | { type: "begin" | "end"; port: number }
  | { type: "stop" }
  | { type: "count"; id: number };

/** What the front's worker tells the main thread. */
export type FromFront =
  | { type: "listening"; hostname: string; port: number }
  | { type: "error"; message: string }
  | { type: "open" | "closed" | "gone" | "blocked" | "flowing"; port: number }
  | { type: "drained" }
  | { type: "count"; id: number; n: number; evicted: number };

/** How long a request on the private port waits for the front to announce its connection. */
const ANNOUNCE_MS = 1000;

/**
 * Serves `handler` with Deno.serve behind the front. The front (front_worker.ts) runs in a worker, on
 * its own thread and event loop: relaying bytes and keeping time never wait for a job holding the main
 * thread. Timeouts of 0 mean no deadline, not no front: the front is also how a client's disconnect is
 * seen (see `gone` below), whatever the deadlines. `bare` leaves it out.
 */
export async function serveFronted(
  o: FrontOptions,
  handler: (req: Request) => Promise<Response>,
): Promise<FrontedServer> {
  if (o.bare) {
    const listening = Promise.withResolvers<Deno.NetAddr>();
    const server = Deno.serve({
      hostname: o.hostname,
      port: o.port,
      onError: o.onError,
      onListen: (a) => listening.resolve(a as Deno.NetAddr),
    }, handler);
    const addr = await listening.promise;
    o.onListen?.(addr);
    return {
      addr,
      shutdown: () => server.shutdown(),
      connections: () => Promise.resolve(0),
      stats: () => Promise.resolve({ open: 0, evicted: 0 }),
      inner: null,
    };
  }

  const known = new Set<number>(); // the front's connections to the private port, by local port
  // Requests being handled, by connection: aborted when the front sees their client go.
  const handling = new Map<number, Set<AbortController>>();
  const gone = new Set<number>(); // connections whose client went, until they close
  // Connections whose client is not reading (the front's write to it pending), and who waits for them.
  const blocked = new Map<number, PromiseWithResolvers<void>>();
  const unblock = (port: number) => {
    blocked.get(port)?.resolve();
    blocked.delete(port);
  };
  const announced = new Map<number, () => void>();
  const counts = new Map<number, (n: { open: number; evicted: number }) => void>();
  const drained = Promise.withResolvers<void>();
  const listening = Promise.withResolvers<Deno.NetAddr>();
  const worker = new Worker(new URL("./front_worker.ts", import.meta.url), { type: "module" });
  const post = (m: ToFront) => worker.postMessage(m);
  worker.onmessage = (ev: MessageEvent<FromFront>) => {
    const m = ev.data;
    if (m.type === "open") {
      known.add(m.port);
      announced.get(m.port)?.();
    } else if (m.type === "closed") {
      known.delete(m.port);
      gone.delete(m.port);
      unblock(m.port);
    } else if (m.type === "blocked") {
      if (!blocked.has(m.port)) blocked.set(m.port, Promise.withResolvers<void>());
    } else if (m.type === "flowing") unblock(m.port);
    else if (m.type === "gone") {
      unblock(m.port);
      gone.add(m.port);
      for (const ac of handling.get(m.port) ?? []) {
        ac.abort(new DOMException("client disconnected", "AbortError"));
      }
    } else if (m.type === "listening") {
      listening.resolve({ transport: "tcp", hostname: m.hostname, port: m.port });
    } else if (m.type === "error") listening.reject(new Error(m.message));
    else if (m.type === "drained") drained.resolve();
    else if (m.type === "count") counts.get(m.id)?.({ open: m.n, evicted: m.evicted });
  };
  worker.onerror = (e) => {
    e.preventDefault();
    listening.reject(new Error(`the TCP front failed: ${e.message}`));
    drained.resolve();
  };

  /** Whether `port` is (or within ANNOUNCE_MS becomes) one of the front's connections. */
  const fromFront = async (port: number): Promise<boolean> => {
    if (known.has(port)) return true;
    const { promise, resolve } = Promise.withResolvers<void>();
    announced.set(port, resolve);
    const timer = setTimeout(resolve, ANNOUNCE_MS);
    await promise;
    clearTimeout(timer);
    announced.delete(port);
    return known.has(port);
  };

  const inner = Promise.withResolvers<Deno.NetAddr>();
  const server = Deno.serve({
    hostname: "127.0.0.1",
    port: 0,
    onError: o.onError,
    onListen: (a) => inner.resolve(a as Deno.NetAddr),
  }, async (req, info) => {
    const port = (info.remoteAddr as Deno.NetAddr).port;
    if (!await fromFront(port)) {
      await req.body?.cancel();
      const e = new HttpError(403, "connect through the server's public address");
      return new Response(JSON.stringify(errorBody(e)), {
        status: 403,
        headers: { "content-type": "application/json" },
      });
    }
    post({ type: "begin", port }); // the request's headers are in: no deadline while it is handled
    // The request's signal also aborts when the front sees its client go: Deno's own misses that for
    // bodies over a few hundred bytes, which would leave a job running for nobody.
    const ac = new AbortController();
    if (gone.has(port)) ac.abort(new DOMException("client disconnected", "AbortError"));
    let set = handling.get(port);
    if (!set) handling.set(port, set = new Set());
    set.add(ac);
    info.completed.catch(() => {}).finally(() => {
      set!.delete(ac);
      if (set!.size === 0 && handling.get(port) === set) handling.delete(port);
      post({ type: "end", port });
    });
    const relayed = new Request(req, { signal: AbortSignal.any([req.signal, ac.signal]) });
    setClientRoom(relayed, () => blocked.get(port)?.promise ?? null);
    return await handler(relayed);
  });
  const innerAddr = await inner.promise;
  post({
    type: "start",
    hostname: o.hostname,
    port: o.port,
    innerPort: innerAddr.port,
    headerTimeoutMs: o.headerTimeoutMs,
    idleTimeoutMs: o.idleTimeoutMs,
    maxConnections: o.maxConnections ?? 0,
    maxConnectionsPerPeer: o.maxConnectionsPerPeer ?? 0,
  });
  let addr: Deno.NetAddr;
  try {
    addr = await listening.promise;
  } catch (e) {
    worker.terminate();
    await server.shutdown();
    throw e;
  }
  o.onListen?.(addr);
  let nextCount = 0;
  const stats = () => {
    const id = nextCount++;
    const { promise, resolve } = Promise.withResolvers<{ open: number; evicted: number }>();
    counts.set(id, resolve);
    post({ type: "count", id });
    return promise.finally(() => counts.delete(id));
  };

  return {
    addr,
    inner: innerAddr,
    connections: () => stats().then((s) => s.open),
    stats,
    async shutdown() {
      post({ type: "stop" }); // stop accepting
      await server.shutdown(); // closes idle connections, lets requests in progress finish
      await drained.promise; // and their last bytes reach the clients
      worker.terminate();
    },
  };
}
