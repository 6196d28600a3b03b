/**
 * Server-sent events: `data: <json>\n\n` frames ending in `data: [DONE]`, as OpenAI streams. The
 * stream's cancel (the client went away) aborts `signal`, which the job's decode loop watches.
 */
export interface SseStream {
  response: Response;
  /** Aborted when the client disconnects. */
  signal: AbortSignal;
  send(data: unknown): void;
  /** Sends `data: [DONE]` and ends the body. */
  close(): void;
  /** Resolves when the body ended, true if the client cancelled it. */
  finished: Promise<boolean>;
}

const encoder = new TextEncoder();

export function createSse(headers: Record<string, string> = {}): SseStream {
  const gone = new AbortController();
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  let open = true;
  let settle!: (cancelled: boolean) => void;
  const finished = new Promise<boolean>((r) => (settle = r));
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    },
    cancel(reason) {
      open = false;
      gone.abort(reason ?? new DOMException("client disconnected", "AbortError"));
      settle(true);
    },
  });
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
