/**
 * API keys and who holds them. A server has no key (open), one key (--api-key, --api-key-file or
 * $JUDGEQ_API_KEY: label "default") or several (--api-keys-file). Each request is attributed to the
 * label of the key it presented; kept contexts belong to that label. Labels, never keys, appear in
 * metrics and logs.
 */

/** Compares secrets in time independent of where they differ. */
export function timingSafeEqual(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a), y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  return diff === 0;
}

export interface ApiKey {
  /** What metrics and logs show: [A-Za-z0-9_.-], 1 to 64 characters. */
  label: string;
  key: string;
}

/** The label of the single key of --api-key, --api-key-file and $JUDGEQ_API_KEY. */
export const DEFAULT_LABEL = "default";

/** A malformed keys file (main.ts turns it into a usage error: exit 2). */
export class KeysFileError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "KeysFileError";
  }
}

const LABEL = /^[A-Za-z0-9_.-]{1,64}$/;

/**
 * An --api-keys-file: one key a line, `KEY` or `LABEL:KEY` (the label is everything before the first
 * ':', so a key containing ':' needs a label). Blank lines and lines starting with '#' are skipped; an
 * unlabelled key is labelled `line-N` (its line number). A key must have no whitespace; keys and
 * labels must be unique; the file must hold at least one key. Errors name the flag and the line.
 */
export function parseKeysFile(text: string, flag = "--api-keys-file"): ApiKey[] {
  const keys: ApiKey[] = [];
  const seenKeys = new Map<string, number>(), seenLabels = new Map<string, number>();
  const lines = text.split(/\r?\n/);
  for (let i = 0; i < lines.length; i++) {
    const n = i + 1, line = lines[i].trim();
    if (line === "" || line.startsWith("#")) continue;
    const fail = (why: string) => new KeysFileError(`${flag}: line ${n}: ${why}`);
    const colon = line.indexOf(":");
    const label = colon < 0 ? `line-${n}` : line.slice(0, colon).trim();
    const key = colon < 0 ? line : line.slice(colon + 1).trim();
    if (!LABEL.test(label)) {
      // Not quoted: what precedes a ':' may be part of a key that holds one.
      throw fail("the label (before the first ':') must be 1 to 64 of A-Z a-z 0-9 _ . - (LABEL:KEY or KEY)");
    }
    if (key === "") throw fail(`no key after the label '${label}'`);
    if (/\s/.test(key)) throw fail(`the key of '${label}' contains whitespace`);
    const sameKey = seenKeys.get(key);
    if (sameKey !== undefined) throw fail(`duplicate key (the same as line ${sameKey})`);
    const sameLabel = seenLabels.get(label);
    if (sameLabel !== undefined) throw fail(`duplicate label '${label}' (as on line ${sameLabel})`);
    seenKeys.set(key, n);
    seenLabels.set(label, n);
    keys.push({ label, key });
  }
  if (keys.length === 0) throw new KeysFileError(`${flag}: the file holds no key`);
  return keys;
}

/** The key a request presents: `Authorization: Bearer KEY`, else `x-api-key: KEY`, else "". */
export function presentedKey(req: Request): string {
  const auth = req.headers.get("authorization") ?? "";
  return auth.toLowerCase().startsWith("bearer ") ? auth.slice(7).trim() : req.headers.get("x-api-key") ?? "";
}

/**
 * The label of the key a request presents, or null. Every key is compared, each in constant time, so
 * the time taken tells neither which key matched nor how much of one did.
 */
export function keyLabel(req: Request, keys: readonly ApiKey[]): string | null {
  const given = presentedKey(req);
  let found: string | null = null;
  for (const k of keys) if (timingSafeEqual(given, k.key) && found === null) found = k.label;
  return found;
}

/** Who sent a request (the label of its key), set by the app once the key is checked. */
const principals = new WeakMap<Request, string>();

export function setPrincipal(req: Request, label: string) {
  principals.set(req, label);
}

/** The label of the key `req` was authenticated with, or null when the server has no keys. */
export function principalOf(req: Request): string | null {
  return principals.get(req) ?? null;
}
