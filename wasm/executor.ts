/**
 * The fast CPU executor: WebAssembly SIMD kernels on a pool of threads sharing one memory that holds
 * the weights, the activations and every session's KV cache. Prefill runs chunks of rows through
 * blocked GEMMs; decoding streams the weights once per token. Same interface and results (within
 * float32 rounding) as the CPU reference.
 */
import type { ModelConfig } from "../core/config.ts";
import { JudgeQError } from "../core/errors.ts";
import { checkSnapshot } from "../core/cache_snapshot.ts";
import type { CacheSnapshot, Executor, KvSession } from "../core/executor.ts";
import type { ModelWeights } from "../core/weights.ts";
import type { WasmWeightChoice } from "../core/weight_formats.ts";
import { Arena } from "./arena.ts";
import {
  KERNEL_CHOICES,
  type KernelChoice,
  type KernelFlavor,
  kernelModule,
  resolveKernels,
  unsupportedReason,
} from "./kernels.ts";
import { chunksFor, type Job, ThreadPool } from "./pool.ts";
import { CONTROL_BYTES } from "./pool_protocol.ts";
import { WasmSession } from "./session.ts";
import { checkFits, resolveWeightFormat, uploadWeights, type WasmWeights } from "./weights.ts";
import { Workspace } from "./workspace.ts";

export interface WasmExecutorOptions {
  /** Threads, the calling one included (default: the cores available). */
  threads?: number;
  /** "auto" (f32), "f32", "f16" or "int8" storage of the projection and embedding matrices. */
  weightFormat?: WasmWeightChoice;
  /**
   * Multiply-adds of work below which a step runs on one thread (default: per dispatch 65,536, and
   * models whose layers are smaller than ~131,000 never wake the workers). 0 splits every step: tests use it.
   */
  parallelMinWork?: number;
  /**
   * "auto" (the default): the relaxed-SIMD kernels where the engine has relaxed SIMD, else the plain-SIMD
   * ones; "simd" forces the fallback (tests); "relaxed" demands relaxed SIMD.
   */
  kernels?: KernelChoice;
}

/** Per-token multiply-adds below which one thread beats waking others (stories260K-sized models). */
const PARALLEL_MIN_LAYER_WORK = 1 << 17;

export function defaultThreads(): number {
  return Math.max(1, (globalThis.navigator?.hardwareConcurrency as number | undefined) ?? 1);
}

/** Checks a thread count: a whole number from 1 to 256, else an error naming `threads`. */
export function checkThreads(threads: unknown): number {
  if (typeof threads !== "number" || !Number.isInteger(threads) || threads < 1 || threads > 256) {
    throw new JudgeQError(
      "invalid_request",
      `expected a whole number from 1 to 256, got '${threads}'`,
      "threads",
    );
  }
  return threads;
}

export class WasmExecutor implements Executor {
  readonly kind = "wasm" as const;
  readonly config: ModelConfig;
  readonly description: string;
  private disposed = false;

  private constructor(
    private readonly arena: Arena,
    private readonly pool: ThreadPool,
    readonly weights: WasmWeights,
    private readonly workspace: Workspace,
    private readonly parallel: boolean,
    config: ModelConfig,
    /** The kernel module it runs: "relaxed" (relaxed SIMD) or "simd" (the fallback). */
    readonly kernels: KernelFlavor,
  ) {
    this.config = config;
    this.description = `CPU (WebAssembly SIMD, ${pool.threads} thread${pool.threads > 1 ? "s" : ""}, ` +
      `${weights.format} weights${kernels === "relaxed" ? ", relaxed SIMD" : ""})`;
  }

  static async create(w: ModelWeights, o: WasmExecutorOptions = {}): Promise<WasmExecutor> {
    const threads = checkThreads(o.threads ?? defaultThreads());
    const format = resolveWeightFormat(o.weightFormat ?? "auto", w);
    const choice = o.kernels ?? "auto";
    if (!KERNEL_CHOICES.includes(choice)) {
      throw new JudgeQError("invalid_request", `expected auto, relaxed or simd, got '${choice}'`, "kernels");
    }
    const why = unsupportedReason();
    if (why) throw new JudgeQError("internal", `fast CPU executor unavailable: ${why}`, "executor");
    let flavor;
    try {
      flavor = resolveKernels(choice);
    } catch (e) {
      throw new JudgeQError("unprocessable", (e as Error).message, "kernels");
    }
    const c = w.config;
    checkFits(c, format, CONTROL_BYTES + Workspace.bytes(c, chunksFor(threads)));
    const module = await kernelModule(flavor);
    const arena = new Arena(CONTROL_BYTES);
    const weights = uploadWeights(arena, w, format);
    const workspace = new Workspace(arena, c, chunksFor(threads));
    const pool = new ThreadPool(module, arena, threads, o.parallelMinWork);
    const parallel = threads > 1 && c.dim * c.hiddenDim >= (o.parallelMinWork ?? PARALLEL_MIN_LAYER_WORK);
    if (parallel) await pool.ready();
    return new WasmExecutor(arena, pool, weights, workspace, parallel, c, flavor);
  }

  get threads(): number {
    return this.pool.threads;
  }

  /** Calls `observer` with every dispatch's jobs and wall time from now on (null: stop); for profiling. */
  observeDispatches(observer: ((jobs: Job[], ms: number) => void) | null) {
    this.pool.observer = observer;
  }

  /** Kernel dispatches so far, and those split over the threads (a barrier each): the benchmarks count them. */
  dispatchCounts(): { dispatches: number; barriers: number } {
    return { ...this.pool.counts };
  }

  createSession(capacity: number): WasmSession {
    if (this.disposed) throw new Error("executor disposed");
    const c = this.config;
    checkFits(
      c,
      this.weights.format,
      this.arena.size - this.weights.bytes +
        2 * c.nLayers * c.nKvHeads * capacity * (c.headDim * 4 + 2),
    );
    return new WasmSession({
      config: c,
      arena: this.arena,
      pool: this.pool,
      weights: this.weights,
      workspace: this.workspace,
      parallel: this.parallel,
    }, capacity);
  }

  restoreSession(snapshot: CacheSnapshot, capacity: number): Promise<KvSession> {
    checkSnapshot(snapshot, this.config, capacity);
    const session = this.createSession(capacity);
    session.load(snapshot);
    return Promise.resolve(session);
  }

  dispose() {
    this.disposed = true;
    this.pool.dispose();
  }
}
