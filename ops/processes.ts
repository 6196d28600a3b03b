/**
 * Child processes of the service's tools (deno task cluster, deno task soak): a server process on a free
 * port, a free loopback port, and waiting for a process's ready line while its output keeps being drained.
 */

/**
 * V8 flags the server process runs with (deno task start, the soak, the cluster's replicas, the
 * Dockerfile). V8 grows its young generation with the allocation rate, up to tens of MB per semi-space,
 * and keeps those pages resident: a second fill of a 32 MiB context cap, after every context was
 * deleted, grew the process by 14% while the arena reused its freed KV space (its memory unchanged).
 * 8 MiB semi-spaces bound that (+5.5% measured, +1.1% at 256 MiB).
 */
export const SERVER_V8_FLAGS = ["--v8-flags=--max-semi-space-size=8"];

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

/** Kills a child (SIGKILL unless told otherwise) and waits for it to be reaped; one already gone is fine. */
export async function stopProcess(child: Deno.ChildProcess, signal: Deno.Signal = "SIGKILL"): Promise<void> {
  try {
    child.kill(signal);
  } catch { /* already gone */ }
  await child.status;
}

/** A server process started by startServer: the child and the base URL it announced. */
export interface ServerProcess {
  child: Deno.ChildProcess;
  base: string;
}

export interface StartServerOptions {
  /** Names it in errors (default "the server"). */
  what?: string;
  /** Hears of the child at once (a caller starting several can then stop them all when one fails). */
  spawned?: (child: Deno.ChildProcess) => void;
}

/**
 * Starts `deno run -A server/main.ts --port 0 ARGS` with the server's V8 flags and resolves once it prints
 * its ready line (within 120 s), with the URL from that line; on failure the child is killed before the error is thrown.
 */
export async function startServer(args: string[], o: StartServerOptions = {}): Promise<ServerProcess> {
  const what = o.what ?? "the server";
  const main = new URL("../server/main.ts", import.meta.url).pathname;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...SERVER_V8_FLAGS, main, "--port", "0", ...args],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  o.spawned?.(child);
  try {
    const ready = await watch(child, /^judgeq serving .* at http:\/\//, what, 120_000);
    const base = /at (http:\/\/[^ ]+)/.exec(ready)?.[1];
    if (!base) throw new Error(`${what}: no URL in its ready line: ${ready}`);
    return { child, base };
  } catch (e) {
    await stopProcess(child);
    throw e;
  }
}
