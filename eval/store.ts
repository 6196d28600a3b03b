/**
 * The resumable record of a sweep: one JSON line per finished cell after a header line holding the
 * configuration's fingerprint. Appending is crash-safe enough: a torn last line is ignored on resume.
 */
import type { CellResult } from "./runner.ts";

export interface StoreHeader {
  fingerprint: string;
  suite: string;
}

/** SHA-256 (hex, 16 chars) of a JSON-serialisable value. */
export async function fingerprintOf(value: unknown): Promise<string> {
  const h = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(JSON.stringify(value)));
  return Array.from(new Uint8Array(h).slice(0, 8), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Parses a store's text: header and cells by key (later lines win). Pure. */
export function parseStore(text: string): { header: StoreHeader | null; cells: Map<string, CellResult> } {
  const cells = new Map<string, CellResult>();
  let header: StoreHeader | null = null;
  for (const line of text.split("\n")) {
    if (line.trim() === "") continue;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch {
      continue; // a torn line from an interrupted run
    }
    const o = v as Record<string, unknown>;
    if (typeof o.fingerprint === "string") header = o as unknown as StoreHeader;
    else if (typeof o.key === "string") cells.set(o.key, o as unknown as CellResult);
  }
  return { header, cells };
}

export class CellStore {
  private constructor(
    readonly path: string,
    readonly cells: Map<string, CellResult>,
    private file: Deno.FsFile,
  ) {}

  /**
   * Opens `path`, keeping its cells when its fingerprint matches; a mismatch is an error unless
   * `fresh`, which starts over.
   */
  static async open(path: string, header: StoreHeader, fresh: boolean): Promise<CellStore> {
    let text = "";
    try {
      text = await Deno.readTextFile(path);
    } catch (e) {
      if (!(e instanceof Deno.errors.NotFound)) throw e;
    }
    const parsed = parseStore(text);
    const keep = !fresh && parsed.header !== null;
    if (keep && parsed.header!.fingerprint !== header.fingerprint) {
      throw new Error(
        `${path} was made with another configuration (fingerprint ${
          parsed.header!.fingerprint
        }, now ${header.fingerprint}); ` +
          "pass --fresh to discard it, or --out for another directory",
      );
    }
    const cells = keep ? parsed.cells : new Map<string, CellResult>();
    if (!keep) await Deno.writeTextFile(path, JSON.stringify(header) + "\n");
    const file = await Deno.open(path, { append: true });
    // Close a torn last line so the next record starts on its own line.
    if (keep && text.length > 0 && !text.endsWith("\n")) file.writeSync(new TextEncoder().encode("\n"));
    return new CellStore(path, cells, file);
  }

  add(c: CellResult) {
    this.cells.set(c.key, c);
    this.file.writeSync(new TextEncoder().encode(JSON.stringify(c) + "\n"));
  }

  close() {
    this.file.close();
  }
}
