/** Errors are values in the core: a kind for routing (HTTP status, CLI exit) and the field at fault. */
export type ErrorKind =
  | "invalid_config"
  | "invalid_model_file"
  | "invalid_adapter"
  | "invalid_request"
  | "unprocessable"
  | "not_found"
  /** The accelerator was lost (driver reset, unplugged): nothing on it can be used again (503). */
  | "device_lost"
  | "internal";

export class JudgeQError extends Error {
  constructor(
    readonly kind: ErrorKind,
    message: string,
    /** The offending field, tensor or parameter, when one is to blame. */
    readonly param: string | null = null,
  ) {
    super(param ? `${param}: ${message}` : message);
    this.name = "JudgeQError";
  }
}

export const fail = (kind: ErrorKind, message: string, param: string | null = null): JudgeQError =>
  new JudgeQError(kind, message, param);
