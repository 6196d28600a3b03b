/**
 * Request plumbing: JSON bodies bounded in size (413) and in time (408), parsed against a zod schema
 * (400 naming the field).
 */
import type { z } from "zod";
import { Cancelled, fromZod, HttpError } from "./errors.ts";

export interface BodyLimits {
  maxBytes: number;
  timeoutMs: number;
}

/** The body as JSON; 413 past maxBytes (declared or streamed), 408 past timeoutMs, 400 if not JSON. */
export async function readJson(req: Request, limits: BodyLimits): Promise<unknown> {
  const tooLarge = () => new HttpError(413, `the body exceeds ${limits.maxBytes} bytes`);
  if (Number(req.headers.get("content-length") ?? "NaN") > limits.maxBytes) throw tooLarge();
  const chunks: Uint8Array[] = [];
  let size = 0, timedOut = false;
  if (req.body) {
    // A body that trickles in forever would hold its connection: bounded in time as in size.
    const reader = req.body.getReader();
    const timer = setTimeout(() => {
      timedOut = true;
      reader.cancel().catch(() => {});
    }, limits.timeoutMs);
    /**
     * A read that fails is the client's doing, never a 500: the connection went away mid-body (Deno's
     * BadResource: a client disconnect, 499, nothing logged), or the body broke its framing (a bad chunk
     * size after the first chunk: a 400 the client can still read).
     */
    const next = () =>
      reader.read().catch((e) => {
        if (timedOut) return { done: true as const, value: undefined };
        if (e instanceof HttpError) throw e;
        if (req.signal.aborted || (e as Error)?.name === "BadResource") throw new Cancelled();
        throw new HttpError(400, `the request body could not be read: ${(e as Error)?.message ?? e}`);
      });
    try {
      for (let r = await next(); !r.done; r = await next()) {
        size += r.value.byteLength;
        if (size > limits.maxBytes) {
          reader.cancel().catch(() => {});
          throw tooLarge();
        }
        chunks.push(r.value);
      }
    } finally {
      clearTimeout(timer);
    }
    if (timedOut) throw new HttpError(408, `the body did not arrive within ${limits.timeoutMs} ms`);
  }
  const bytes = new Uint8Array(size);
  let at = 0;
  for (const c of chunks) {
    bytes.set(c, at);
    at += c.byteLength;
  }
  const text = new TextDecoder().decode(bytes);
  if (text.trim() === "") throw new HttpError(400, "a JSON body is required");
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new HttpError(400, `malformed JSON: ${(e as Error).message}`);
  }
}

export async function parseBody<S extends z.ZodType>(
  req: Request,
  schema: S,
  limits: BodyLimits,
): Promise<z.infer<S>> {
  const r = schema.safeParse(await readJson(req, limits));
  if (!r.success) throw fromZod(r.error);
  return r.data;
}
