/**
 * Server-sent events: `data: <json>\n\n` frames ending in `data: [DONE]`, as OpenAI streams. The
 * stream's cancel (the client went away) aborts `signal`, which the job's decode loop watches.
 *
 * Backpressure: the body queues at most STREAM_BUFFER_BYTES beyond what the HTTP layer has taken (it
 * takes more only as the socket drains). Past that, `full()` gives a promise that resolves once the
 * client has read some: the job waits on it, off the executor, instead of generating into memory.
 */
/** Bytes a stream may queue beyond its socket before its job waits for the client to read. */
export const STREAM_BUFFER_BYTES = 64 << 10;

export interface SseStream {
  response: Response;
  /** Aborted when the client disconnects. */
  signal: AbortSignal;
  send(data: unknown): void;
  /** Sends `data: [DONE]` and ends the body. */
  close(): void;
  /** Resolves when the body ended, true if the client cancelled it. */
  finished: Promise<boolean>;
  /** Null while the buffer has room; else a promise resolved when it has room again or the stream ends. */
  full(): Promise<void> | null;
  /** Ends the body with an error (the connection is cut): a stream whose client stopped reading. */
  abort(reason: string): void;
}

const encoder = new TextEncoder();

export function createSse(
  headers: Record<string, string> = {},
  bufferBytes = STREAM_BUFFER_BYTES,
): SseStream {
  const gone = new AbortController();
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  let open = true;
  let settle!: (cancelled: boolean) => void;
  const finished = new Promise<boolean>((r) => (settle = r));
  let room: PromiseWithResolvers<void> | null = null;
  const roomAgain = () => {
    room?.resolve();
    room = null;
  };
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    },
    pull() {
      roomAgain(); // the HTTP layer wants more: the socket took what was queued
    },
    cancel(reason) {
      open = false;
      gone.abort(reason ?? new DOMException("client disconnected", "AbortError"));
      settle(true);
      roomAgain();
    },
  }, { highWaterMark: bufferBytes, size: (chunk) => chunk.byteLength });
  const write = (text: string) => {
    if (!open) return;
    try {
      controller.enqueue(encoder.encode(text));
    } catch {
      open = false; // the stream errored under us: treat as a disconnect
    }
  };
  return {
    response: new Response(body, {
      status: 200,
      headers: {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        "x-accel-buffering": "no",
        ...headers,
      },
    }),
    signal: gone.signal,
    send: (data) => write(`data: ${JSON.stringify(data)}\n\n`),
    close() {
      write("data: [DONE]\n\n");
      if (open) {
        open = false;
        controller.close();
        settle(false);
      }
    },
    finished,
    full() {
      if (!open || (controller.desiredSize ?? 1) > 0) return null;
      return (room ??= Promise.withResolvers<void>()).promise;
    },
    abort(reason) {
      if (!open) return;
      open = false;
      controller.error(new Error(reason));
      settle(true);
      roomAgain();
    },
  };
}

/** Parses an SSE body into its `data:` payloads (tests and the load test). */
export async function* readSse(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buffer = "";
  for await (const chunk of body) {
    buffer += decoder.decode(chunk, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = frame.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trimStart())
        .join("\n");
      if (data) yield data;
    }
  }
}
