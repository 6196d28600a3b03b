/**
 * Child processes of the service's tools (deno task cluster, deno task soak): a free loopback port, and
 * waiting for a process's ready line while its output keeps being drained.
 */

export function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (l.addr as Deno.NetAddr).port;
  l.close();
  return port;
}

/** Reads a child's output line by line: resolves with the first line matching `ready` (or rejects). */
export function watch(
  child: Deno.ChildProcess,
  ready: RegExp,
  what: string,
  timeoutMs: number,
): Promise<string> {
  const found = Promise.withResolvers<string>();
  const tail: string[] = [];
  const pump = async (stream: ReadableStream<Uint8Array>) => {
    let buf = "";
    const text = new TextDecoder();
    for await (const chunk of stream) {
      buf += text.decode(chunk, { stream: true });
      let nl;
      while ((nl = buf.indexOf("\n")) >= 0) {
        const line = buf.slice(0, nl);
        buf = buf.slice(nl + 1);
        tail.push(line);
        if (tail.length > 20) tail.shift();
        if (ready.test(line)) found.resolve(line);
      }
    }
  };
  Promise.all([pump(child.stdout), pump(child.stderr)]).then(() =>
    found.reject(new Error(`${what} exited before it was ready:\n${tail.join("\n")}`))
  );
  const timer = setTimeout(
    () => found.reject(new Error(`${what} not ready after ${timeoutMs} ms:\n${tail.join("\n")}`)),
    timeoutMs,
  );
  return found.promise.finally(() => clearTimeout(timer));
}
