/**
 * Whether a request's client is taking what is written to it, as the TCP front (front.ts) sees it: the
 * service asks before generating more of a stream. Its own module so that the app (embedded without
 * the front: serve.ts, edge runtimes) does not import the front.
 */
const rooms = new WeakMap<Request, () => Promise<void> | null>();

/** The front registers, for a request it relays, how to tell whether its client's socket is full. */
export function setClientRoom(req: Request, full: () => Promise<void> | null) {
  rooms.set(req, full);
}

/**
 * Null while the client of `req` takes what is written to it; else a promise resolved once it reads
 * again (or goes). Always null without the front: Deno.serve alone cannot tell.
 */
export function clientFull(req: Request): Promise<void> | null {
  return rooms.get(req)?.() ?? null;
}
