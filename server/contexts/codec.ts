/**
 * A kept context as bytes and back: its session's cache (exportCache / restoreSession) and what the
 * server knows of it (tokens, plan, stats, decode settings), in core/context_blob.ts's layout, stamped
 * with the model's and the adapter's fingerprints so that no replica answers on another model's cache.
 */
import { z } from "zod";
import { BlobError, decodeContextBlob, encodeContextBlob } from "../../core/context_blob.ts";
import { type CompressedContext, contextCapacity, type Model } from "../../core/engine.ts";
import type { CacheSnapshot } from "../../core/executor.ts";
import { adapterFingerprint, modelFingerprintOf } from "../../core/fingerprint.ts";
import { HttpError } from "../errors.ts";

/** The identity a blob must carry to be restored here. */
export interface Identity {
  model: string;
  adapter: string | null;
}

export async function identityOf(model: Model): Promise<Identity> {
  return {
    model: await modelFingerprintOf(model.config, model.tokenEmbeddings),
    adapter: model.adapter ? await adapterFingerprint(model.adapter.softEmbeddings) : null,
  };
}

/** The server's part of the header (the blob's `meta`), checked field by field when read back. */
const metaSchema = z.object({
  createdAt: z.number().int().nonnegative(),
  /** The label of the API key that created it (null: no keys); absent in blobs from before owners. */
  owner: z.string().nullable().optional(),
  capacity: z.number().int().positive(),
  contextTokens: z.array(z.number().int().nonnegative()),
  plan: z.object({ method: z.string(), capacity: z.number().int() }).passthrough(),
  stats: z.object({ method: z.string(), kept: z.array(z.array(z.array(z.number().int()))) }).passthrough(),
  timings: z.record(z.string(), z.number()),
  decode: z.object({}).passthrough().nullable(),
});

export async function encodeContext(
  ctx: CompressedContext,
  who: Identity,
  createdAt: number,
  capacity: number,
  owner: string | null = null,
): Promise<Uint8Array> {
  const meta: z.infer<typeof metaSchema> = {
    createdAt,
    owner,
    capacity,
    contextTokens: ctx.contextTokens,
    plan: ctx.plan as unknown as z.infer<typeof metaSchema>["plan"],
    stats: ctx.stats as unknown as z.infer<typeof metaSchema>["stats"],
    timings: ctx.timings,
    decode: ctx.decode as z.infer<typeof metaSchema>["decode"],
  };
  return encodeContextBlob({
    model: who.model,
    adapter: who.adapter,
    snapshot: await ctx.session.exportCache(),
    meta,
  });
}

/** A blob that cannot be read (truncated, corrupt, foreign): the caller deletes it. */
export class CorruptContext extends HttpError {
  constructor(id: string, why: string) {
    super(
      422,
      `context ${
        JSON.stringify(id)
      } is corrupt in the context store (${why}); it was deleted: create it again`,
      "id",
    );
  }
}

const short = (fp: string | null) => (fp === null ? "none" : fp.slice(0, 12));

/**
 * What in a blob's header does not fit the model it claims (its fingerprint only says which model; a
 * blob with a valid checksum can still be forged or come from a bug): positions within the model's
 * context, the session's capacity and every count within what a context of this model can need, the
 * logits one per vocabulary entry, the tokens within the vocabulary. Null when it fits.
 */
export function fitsModel(
  s: CacheSnapshot,
  m: { capacity: number; contextTokens: number[] },
  model: Model,
): string | null {
  const c = model.config, context = c.maxSeqLen;
  // A context's session is allocated for the model's context plus the rows scoring adds (soft tokens,
  // lookahead), and an answer's question and tokens, which are themselves within the context.
  const most = contextCapacity(model, 0) + context;
  if (s.nLayers !== c.nLayers || s.nKvHeads !== c.nKvHeads || s.headDim !== c.headDim) {
    return `header fields 'nLayers', 'nKvHeads', 'headDim': ${s.nLayers} x ${s.nKvHeads} x ${s.headDim}, ` +
      `the model has ${c.nLayers} x ${c.nKvHeads} x ${c.headDim}`;
  }
  if (s.nextPosition > context) {
    return `header field 'nextPosition': ${s.nextPosition}, past the model's context of ${context}`;
  }
  if (m.capacity > most) {
    return `header field 'meta.capacity': ${m.capacity}, over the ${most} a context of this model can need`;
  }
  const over = s.positions.findIndex((p) => p.length > m.capacity);
  if (over >= 0) {
    return `header field 'counts.${over}': ${
      s.positions[over].length
    } entries, over its capacity ${m.capacity}`;
  }
  if (s.logits !== null && s.logits.length !== c.vocabSize) {
    return `header field 'logits': ${s.logits.length}, the model's vocabulary has ${c.vocabSize}`;
  }
  if (m.contextTokens.length > context) {
    return `header field 'meta.contextTokens': ${m.contextTokens.length} tokens, past the model's context of ${context}`;
  }
  const token = m.contextTokens.findIndex((t) => t >= c.vocabSize);
  if (token >= 0) {
    return `header field 'meta.contextTokens.${token}': ${
      m.contextTokens[token]
    }, outside the vocabulary of ${c.vocabSize}`;
  }
  return null;
}

/** Reads a blob into a live context on `model`'s executor: 409 for another model or adapter's, 422 if corrupt. */
export async function decodeContext(
  id: string,
  bytes: Uint8Array,
  model: Model,
  who: Identity,
): Promise<{ ctx: CompressedContext; createdAt: number; owner: string | null }> {
  let blob;
  try {
    blob = decodeContextBlob(bytes);
  } catch (e) {
    if (e instanceof BlobError) throw new CorruptContext(id, e.message);
    throw e;
  }
  if (blob.model !== who.model) {
    throw new HttpError(
      409,
      `context ${JSON.stringify(id)} was compressed by another model (fingerprint ${short(blob.model)}, ` +
        `this server's is ${short(who.model)}): model mismatch`,
      "id",
    );
  }
  if (blob.adapter !== who.adapter) {
    throw new HttpError(
      409,
      `context ${JSON.stringify(id)} was compressed with another Judge Q adapter (fingerprint ${
        short(blob.adapter)
      }, this server's is ${short(who.adapter)}): adapter mismatch`,
      "id",
    );
  }
  const meta = metaSchema.safeParse(blob.meta);
  if (!meta.success) {
    const issue = meta.error.issues[0];
    throw new CorruptContext(id, `header field 'meta.${issue.path.join(".")}': ${issue.message}`);
  }
  const m = blob.meta as z.infer<typeof metaSchema>; // as stored (the parse reorders keys)
  const wrong = fitsModel(blob.snapshot, m, model);
  if (wrong) throw new CorruptContext(id, wrong);
  let session;
  try {
    session = await model.executor.restoreSession(blob.snapshot, m.capacity);
  } catch (e) {
    throw new CorruptContext(id, `its cache cannot be restored: ${(e as Error).message}`);
  }
  const ctx: CompressedContext = {
    plan: m.plan as unknown as CompressedContext["plan"],
    session,
    contextTokens: m.contextTokens,
    stats: m.stats as unknown as CompressedContext["stats"],
    timings: m.timings,
    decode: m.decode as CompressedContext["decode"],
  };
  return { ctx, createdAt: m.createdAt, owner: m.owner ?? null };
}
