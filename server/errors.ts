/**
 * HTTP errors: one shape on the wire, `{ "error": { "type", "message", "param" } }`, and one mapping from
 * core errors to statuses, so no handler ever leaks a stack trace.
 */
import type { z } from "zod";
import { JudgeQError } from "../core/errors.ts";

export const ERROR_TYPES: Record<number, string> = {
  400: "invalid_request_error",
  401: "authentication_error",
  403: "permission_error",
  404: "not_found_error",
  405: "method_not_allowed",
  408: "request_timeout",
  409: "conflict",
  413: "request_too_large",
  422: "unprocessable_entity",
  429: "rate_limit_error",
  431: "request_header_fields_too_large",
  499: "client_closed_request",
  500: "server_error",
  503: "service_unavailable",
  505: "http_version_not_supported",
};

export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = "HttpError";
  }

  /** More fields for the error object on the wire (e.g. what a job did before its time ran out). */
  details: Record<string, unknown> = {};
}

/** The client disconnected mid-job: nobody reads the answer, so nothing is logged. */
export class Cancelled extends Error {
  constructor() {
    super("the client disconnected");
    this.name = "Cancelled";
  }
}

/** A stream's client read nothing for too long while its buffer was full: the stream is cut. */
export class Stalled extends Cancelled {
  constructor(readonly limitMs: number) {
    super();
    this.message = `the client read nothing of its stream for ${limitMs} ms`;
    this.name = "Stalled";
  }
}

/** A device-lost error from an executor: kind device_lost (or, from elsewhere, worded so). */
export const isDeviceLost = (e: unknown): boolean =>
  (e instanceof JudgeQError && e.kind === "device_lost") ||
  (e instanceof Error && /device (was )?lost/i.test(e.message));

/**
 * Core errors by kind. A core `invalid_request` about kv_compression passed the schema, so it is
 * "schema-valid nonsense" (window above budget, sinks above budget, ...): 422, as the issue asks.
 */
export function fromJudgeQ(e: JudgeQError): HttpError {
  const message = e.param && e.message.startsWith(`${e.param}: `)
    ? e.message.slice(e.param.length + 2)
    : e.message;
  if (isDeviceLost(e)) return new HttpError(503, message, null);
  switch (e.kind) {
    case "invalid_request":
      return new HttpError(e.param?.startsWith("kv_compression") ? 422 : 400, message, e.param);
    case "unprocessable":
    case "invalid_adapter":
      return new HttpError(422, message, e.param);
    case "not_found":
      return new HttpError(404, message, e.param);
    default:
      return new HttpError(500, "internal error", null);
  }
}

/** Turns anything thrown into an HttpError; unknown errors are logged, never sent. */
export function toHttpError(e: unknown, log: (m: string) => void = console.error): HttpError {
  if (e instanceof HttpError) return e;
  if (e instanceof Cancelled) return new HttpError(499, e.message); // nginx's "client closed request"
  if (e instanceof JudgeQError) {
    const h = fromJudgeQ(e);
    if (h.status === 500) log(`internal error: ${e.message}`);
    return h;
  }
  if (isDeviceLost(e)) return new HttpError(503, "the GPU device was lost; restart the server");
  log(`internal error: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
  return new HttpError(500, "internal error");
}

/** The first zod issue as a 400 naming the field ("kv_compression.budget", "messages.0.content"). */
export function fromZod(error: z.ZodError, prefix = ""): HttpError {
  const issue = error.issues[0];
  let path = issue.path.map(String);
  // An unknown key is reported on its parent; name the key itself.
  if (issue.code === "unrecognized_keys" && issue.keys.length > 0) path = [...path, issue.keys[0]];
  const param = [prefix, ...path].filter((s) => s !== "").join(".") || null;
  return new HttpError(400, issue.message, param);
}

export function errorBody(e: HttpError) {
  return {
    error: { type: ERROR_TYPES[e.status] ?? "error", message: e.message, param: e.param, ...e.details },
  };
}

export function jsonResponse(body: unknown, status = 200, headers: Record<string, string> = {}): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "content-type": "application/json", ...headers },
  });
}

export function errorResponse(e: HttpError): Response {
  return jsonResponse(errorBody(e), e.status, e.headers);
}
