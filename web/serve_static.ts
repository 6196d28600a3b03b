/**
 * A static file server for the demo page and the browser test: `deno run --allow-net=127.0.0.1
 * --allow-read web/serve_static.ts [--port 8080] [--dist DIR]`, then open http://127.0.0.1:8080/web/.
 * Serves web/ and the model directories under fixtures/models/ (nothing else), and the bundle at
 * /web/dist/ from DIR (default web/dist, written by `deno task bundle`). Every response is
 * cross-origin isolated (COOP/COEP), which SharedArrayBuffer, and so the fast CPU executor, needs.
 */
import { parseArgs } from "node:util";

const ROOT = new URL("../", import.meta.url);
const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
  json: "application/json",
  svg: "image/svg+xml",
  png: "image/png",
};
export const ISOLATION = {
  "cross-origin-opener-policy": "same-origin",
  "cross-origin-embedder-policy": "require-corp",
  "cross-origin-resource-policy": "same-origin",
};

export interface StaticServerOptions {
  port?: number;
  /** Where the bundle is (served at /web/dist/); default web/dist. */
  dist?: string;
}

/** Starts the server on 127.0.0.1; `port: 0` picks a free port. */
export function serveStatic(o: StaticServerOptions = {}): Deno.HttpServer<Deno.NetAddr> {
  const dist = o.dist ? o.dist.replace(/\/+$/, "") : decodeURIComponent(new URL("web/dist", ROOT).pathname);
  const root = decodeURIComponent(ROOT.pathname).replace(/\/+$/, "");
  return Deno.serve({ hostname: "127.0.0.1", port: o.port ?? 8080, onListen() {} }, async (req) => {
    const path = decodeURIComponent(new URL(req.url).pathname);
    const headers = { ...ISOLATION, "cache-control": "no-store" };
    if (path === "/" || path === "/web") return Response.redirect(new URL("/web/", req.url), 302);
    if (path.split("/").includes("..") || !/^\/(web|fixtures\/models)\//.test(path)) {
      return new Response("not found", { status: 404, headers });
    }
    const file = path.startsWith("/web/dist/")
      ? dist + path.slice("/web/dist".length)
      : root + (path.endsWith("/") ? path + "index.html" : path);
    try {
      const body = await Deno.readFile(file);
      const type = TYPES[file.split(".").pop()!] ?? "application/octet-stream";
      return new Response(body, { headers: { ...headers, "content-type": type } });
    } catch {
      return new Response("not found", { status: 404, headers });
    }
  });
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: { port: { type: "string" }, dist: { type: "string" } },
  });
  const server = serveStatic({ port: Number(values.port ?? 8080), dist: values.dist });
  console.log(`demo: http://127.0.0.1:${server.addr.port}/web/ (build the bundle first: deno task bundle)`);
}
