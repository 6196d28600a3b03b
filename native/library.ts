/**
 * ggml through Deno FFI: the prebuilt libraries of npm `@node-llama-cpp/<platform>` (pinned; llama.cpp's own
 * CPU kernels, one build per CPU family) opened with `Deno.dlopen`, and ggml's backend loader choosing the
 * best CPU build for this machine. Everything native goes through the `Ggml` object this module returns;
 * nothing here runs at import, and every failure is a sentence (`nativeUnsupportedReason`).
 */

/** The npm package family that ships ggml's prebuilt libraries; the version is pinned with its headers. */
export const GGML_PACKAGE_VERSION = "3.21.1";

/** Platforms (Deno.build.os-arch) with a prebuilt package, and the package's name. */
const PACKAGES: Record<string, string> = {
  "linux-x86_64": "@node-llama-cpp/linux-x64",
  "linux-aarch64": "@node-llama-cpp/linux-arm64",
  "darwin-aarch64": "@node-llama-cpp/mac-arm64-metal",
  "darwin-x86_64": "@node-llama-cpp/mac-x64",
  "windows-x86_64": "@node-llama-cpp/win-x64",
};

const SHARED_SUFFIX: Record<string, string> = { linux: "so", darwin: "dylib", windows: "dll" };

/** The symbols of libggml-base (tensors, graphs, backends, allocator) and libggml (the backend loader). */
const BASE_SYMBOLS = {
  ggml_log_set: { parameters: ["function", "pointer"], result: "void" },
  ggml_init: { parameters: [{ struct: ["usize", "pointer", "bool"] }], result: "pointer" },
  ggml_free: { parameters: ["pointer"], result: "void" },
  ggml_tensor_overhead: { parameters: [], result: "usize" },
  ggml_graph_overhead_custom: { parameters: ["usize", "bool"], result: "usize" },
  ggml_new_graph_custom: { parameters: ["pointer", "usize", "bool"], result: "pointer" },
  ggml_build_forward_expand: { parameters: ["pointer", "pointer"], result: "void" },
  ggml_graph_n_nodes: { parameters: ["pointer"], result: "i32" },
  ggml_new_tensor_1d: { parameters: ["pointer", "i32", "i64"], result: "pointer" },
  ggml_new_tensor_2d: { parameters: ["pointer", "i32", "i64", "i64"], result: "pointer" },
  ggml_new_tensor_3d: { parameters: ["pointer", "i32", "i64", "i64", "i64"], result: "pointer" },
  ggml_view_1d: { parameters: ["pointer", "pointer", "i64", "usize"], result: "pointer" },
  ggml_view_2d: { parameters: ["pointer", "pointer", "i64", "i64", "usize", "usize"], result: "pointer" },
  ggml_view_3d: {
    parameters: ["pointer", "pointer", "i64", "i64", "i64", "usize", "usize", "usize"],
    result: "pointer",
  },
  ggml_set_input: { parameters: ["pointer"], result: "void" },
  ggml_set_output: { parameters: ["pointer"], result: "void" },
  ggml_nbytes: { parameters: ["pointer"], result: "usize" },
  ggml_row_size: { parameters: ["i32", "i64"], result: "usize" },
  ggml_get_rows: { parameters: ["pointer", "pointer", "pointer"], result: "pointer" },
  ggml_rms_norm: { parameters: ["pointer", "pointer", "f32"], result: "pointer" },
  ggml_mul: { parameters: ["pointer", "pointer", "pointer"], result: "pointer" },
  ggml_add: { parameters: ["pointer", "pointer", "pointer"], result: "pointer" },
  ggml_mul_mat: { parameters: ["pointer", "pointer", "pointer"], result: "pointer" },
  ggml_rope_ext: {
    parameters: [
      "pointer",
      "pointer",
      "pointer",
      "pointer",
      "i32",
      "i32",
      "i32",
      "f32",
      "f32",
      "f32",
      "f32",
      "f32",
      "f32",
    ],
    result: "pointer",
  },
  ggml_soft_max_ext: { parameters: ["pointer", "pointer", "pointer", "f32", "f32"], result: "pointer" },
  ggml_flash_attn_ext: {
    parameters: ["pointer", "pointer", "pointer", "pointer", "pointer", "f32", "f32", "f32"],
    result: "pointer",
  },
  ggml_set_rows: { parameters: ["pointer", "pointer", "pointer", "pointer"], result: "pointer" },
  ggml_cpy: { parameters: ["pointer", "pointer", "pointer"], result: "pointer" },
  ggml_swiglu_split: { parameters: ["pointer", "pointer", "pointer"], result: "pointer" },
  ggml_permute: { parameters: ["pointer", "pointer", "i32", "i32", "i32", "i32"], result: "pointer" },
  ggml_concat: { parameters: ["pointer", "pointer", "pointer", "i32"], result: "pointer" },
  ggml_cont: { parameters: ["pointer", "pointer"], result: "pointer" },
  ggml_reshape_2d: { parameters: ["pointer", "pointer", "i64", "i64"], result: "pointer" },
  ggml_reshape_3d: { parameters: ["pointer", "pointer", "i64", "i64", "i64"], result: "pointer" },
  ggml_transpose: { parameters: ["pointer", "pointer"], result: "pointer" },
  ggml_sum_rows: { parameters: ["pointer", "pointer"], result: "pointer" },
  ggml_quantize_chunk: {
    parameters: ["i32", "buffer", "buffer", "i64", "i64", "i64", "pointer"],
    result: "usize",
  },
  ggml_quantize_requires_imatrix: { parameters: ["i32"], result: "bool" },
  ggml_get_type_traits: { parameters: ["i32"], result: "pointer" },
  ggml_backend_dev_init: { parameters: ["pointer", "pointer"], result: "pointer" },
  ggml_backend_dev_description: { parameters: ["pointer"], result: "pointer" },
  ggml_backend_dev_backend_reg: { parameters: ["pointer"], result: "pointer" },
  ggml_backend_reg_get_proc_address: { parameters: ["pointer", "buffer"], result: "pointer" },
  ggml_backend_reg_name: { parameters: ["pointer"], result: "pointer" },
  ggml_backend_name: { parameters: ["pointer"], result: "pointer" },
  ggml_backend_free: { parameters: ["pointer"], result: "void" },
  ggml_backend_get_default_buffer_type: { parameters: ["pointer"], result: "pointer" },
  ggml_backend_alloc_ctx_tensors: { parameters: ["pointer", "pointer"], result: "pointer" },
  ggml_backend_alloc_ctx_tensors_from_buft: { parameters: ["pointer", "pointer"], result: "pointer" },
  ggml_backend_buffer_free: { parameters: ["pointer"], result: "void" },
  ggml_backend_buffer_clear: { parameters: ["pointer", "u8"], result: "void" },
  ggml_backend_buffer_get_size: { parameters: ["pointer"], result: "usize" },
  ggml_backend_buft_name: { parameters: ["pointer"], result: "pointer" },
  ggml_backend_tensor_set: { parameters: ["pointer", "buffer", "usize", "usize"], result: "void" },
  ggml_backend_tensor_get: { parameters: ["pointer", "buffer", "usize", "usize"], result: "void" },
  ggml_backend_tensor_copy: { parameters: ["pointer", "pointer"], result: "void" },
  ggml_backend_graph_compute: { parameters: ["pointer", "pointer"], result: "i32", nonblocking: true },
  ggml_backend_graph_compute_sync: {
    name: "ggml_backend_graph_compute",
    parameters: ["pointer", "pointer"],
    result: "i32",
  },
  ggml_gallocr_new: { parameters: ["pointer"], result: "pointer" },
  ggml_gallocr_free: { parameters: ["pointer"], result: "void" },
  ggml_gallocr_alloc_graph: { parameters: ["pointer", "pointer"], result: "bool" },
  ggml_gallocr_get_buffer_size: { parameters: ["pointer", "i32"], result: "usize" },
} as const satisfies Deno.ForeignLibraryInterface;

export type GgmlSymbols = Deno.DynamicLibrary<typeof BASE_SYMBOLS>["symbols"];

/** ggml type ids (ggml.h `enum ggml_type`). */
export const GGML_TYPE = {
  f32: 0,
  f16: 1,
  q4_0: 2,
  q8_0: 8,
  q4_k: 12,
  q6_k: 14,
  i32: 26,
  i64: 27,
  bf16: 30,
} as const;

/** An opened ggml: its symbols, a CPU backend, and what it is. */
export interface Ggml {
  readonly sym: GgmlSymbols;
  /** The CPU backend (one per process; sessions share it). */
  readonly backend: Deno.PointerValue;
  /** Its default buffer type, for weights, KV caches and graph allocation. */
  readonly bufferType: Deno.PointerValue;
  /**
   * ggml's CPU_REPACK buffer type, where this CPU has one: Q4_0 matrices set into it are laid out anew for
   * ggml's interleaved GEMM kernels (what llama.cpp does with its weights by default); null elsewhere.
   */
  readonly repackType: Deno.PointerValue;
  /** "ggml CPU (Intel Xeon ...)"-style description. */
  readonly description: string;
  setThreads(n: number): void;
  /**
   * Runs `fn` (synchronous ggml calls on this thread) with ggml's informational logs silenced (which CPU
   * build loaded, which tensors were repacked); ggml's own logger is back afterwards.
   */
  quietly<T>(fn: () => T): T;
  /** Dequantizes `n` values of `type` (ggml's own to_float) into `out`. */
  toFloat(type: number, src: Uint8Array, out: Float32Array): void;
}

/**
 * How long ggml's idle threads spin before sleeping, 0..100 (ggml's and llama.cpp's default, 50: the next
 * graph of a decode starts at once). `JUDGEQ_GGML_POLL=0` makes them sleep at once, for machines whose cores
 * are shared with other busy processes.
 */
function threadPoll(): number {
  let v = 50;
  try {
    v = Number(Deno.env.get("JUDGEQ_GGML_POLL") ?? 50);
  } catch { /* no env permission: the default */ }
  return Number.isInteger(v) && v >= 0 && v <= 100 ? v : 50;
}

const cString = (s: string) => new TextEncoder().encode(s + "\0");
const readCString = (p: Deno.PointerValue) => (p ? Deno.UnsafePointerView.getCString(p) : "");

let opened: Ggml | null = null;
let failure: string | null = null;

/** Why the native executor cannot run here, or null when ggml is loaded (loads it on first call). */
export async function nativeUnsupportedReason(): Promise<string | null> {
  if (opened) return null;
  if (failure) return failure;
  try {
    opened = await openGgml();
    return null;
  } catch (e) {
    failure = (e as Error).message;
    return failure;
  }
}

/** The opened library; throws with the reason when it cannot be opened. */
export async function loadGgml(): Promise<Ggml> {
  const why = await nativeUnsupportedReason();
  if (why) throw new Error(why);
  return opened!;
}

/** The folder of ggml's prebuilt libraries for this platform (throws naming why there is none). */
export async function ggmlBinsDir(): Promise<string> {
  const platform = `${Deno.build.os}-${Deno.build.arch}`;
  const pkg = PACKAGES[platform];
  if (!pkg) throw new Error(`no prebuilt ggml for this platform (${platform})`);
  let override: string | undefined;
  try {
    override = Deno.env.get("JUDGEQ_GGML_DIR");
  } catch { /* no env permission */ }
  if (override) return override;
  // The package exports getBinsDir(): the folder of its libraries inside Deno's npm cache.
  const mod = await import(`npm:${pkg}@${GGML_PACKAGE_VERSION}`) as {
    getBinsDir(): { binsDir: string };
  };
  const sub = Deno.build.os === "windows" ? "win-x64" : platform.replace("x86_64", "x64").replace(
    "aarch64",
    "arm64",
  ).replace("darwin", "mac");
  const dir = mod.getBinsDir().binsDir;
  for (
    const d of [
      `${dir}/${sub}`,
      ...[...Deno.readDirSync(dir)].filter((e) => e.isDirectory).map((e) => `${dir}/${e.name}`),
    ]
  ) {
    try {
      Deno.statSync(`${d}/${libName("ggml-base")}`);
      return d;
    } catch { /* next */ }
  }
  throw new Error(`${pkg}@${GGML_PACKAGE_VERSION} holds no ${libName("ggml-base")}`);
}

const libName = (name: string) =>
  Deno.build.os === "windows" ? `${name}.dll` : `lib${name}.${SHARED_SUFFIX[Deno.build.os]}`;

async function openGgml(): Promise<Ggml> {
  if (typeof Deno?.dlopen !== "function") throw new Error("FFI is not available in this runtime");
  const ffi = await Deno.permissions.query({ name: "ffi" });
  if (ffi.state !== "granted") throw new Error("FFI is not permitted (run with --allow-ffi or -A)");
  let dir: string;
  try {
    dir = await ggmlBinsDir();
  } catch (e) {
    throw new Error(`the ggml libraries could not be found: ${(e as Error).message}`);
  }
  const base = Deno.dlopen(`${dir}/${libName("ggml-base")}`, BASE_SYMBOLS);
  // The loader lives in libggml; it picks the best libggml-cpu-<family> for this CPU by score.
  const loader = Deno.dlopen(
    `${dir}/${libName(`ggml.v0.4.0`)}`,
    {
      ggml_backend_load_all_from_path: { parameters: ["buffer"], result: "void" },
      ggml_backend_dev_by_type: { parameters: ["i32"], result: "pointer" },
    } as const,
  );
  // ggml logs which library it loaded (and, later, which tensors it repacked): the callback is set only
  // around such synchronous calls on this thread (never while graphs compute on ggml's threads), and
  // ggml's own logger is back afterwards for anything worse.
  const quiet = new Deno.UnsafeCallback(
    { parameters: ["i32", "pointer", "pointer"], result: "void" } as const,
    () => {},
  );
  const quietly = <T>(fn: () => T): T => {
    base.symbols.ggml_log_set(quiet.pointer, null);
    try {
      return fn();
    } finally {
      base.symbols.ggml_log_set(null, null);
    }
  };
  quietly(() => loader.symbols.ggml_backend_load_all_from_path(cString(dir)));
  const dev = loader.symbols.ggml_backend_dev_by_type(0); // GGML_BACKEND_DEVICE_TYPE_CPU
  if (!dev) throw new Error(`no ggml CPU backend loads from the prebuilt libraries (no build for this CPU?)`);
  const s = base.symbols;
  const backend = s.ggml_backend_dev_init(dev, null);
  if (!backend) throw new Error("the ggml CPU backend did not start");
  const reg = s.ggml_backend_dev_backend_reg(dev);
  const setThreadsPtr = s.ggml_backend_reg_get_proc_address(reg, cString("ggml_backend_set_n_threads"));
  if (!setThreadsPtr) throw new Error("the ggml CPU backend has no ggml_backend_set_n_threads");
  const setThreads = new Deno.UnsafeFnPointer(setThreadsPtr as Deno.PointerObject<never>, {
    parameters: ["pointer", "i32"],
    result: "void",
  });
  // A kept thread pool per thread count (without one ggml starts and joins its threads for every graph).
  const proc = (name: string) => {
    const p = s.ggml_backend_reg_get_proc_address(reg, cString(name));
    if (!p) throw new Error(`the ggml CPU backend has no ${name}`);
    return p as Deno.PointerObject<never>;
  };
  const poolNew = new Deno.UnsafeFnPointer(proc("ggml_threadpool_new"), {
    parameters: ["buffer"],
    result: "pointer",
  });
  const setPool = new Deno.UnsafeFnPointer(proc("ggml_backend_cpu_set_threadpool"), {
    parameters: ["pointer", "pointer"],
    result: "void",
  });
  const pools = new Map<number, Deno.PointerValue>();
  let current = 0;
  const useThreads = (n: number) => {
    if (n === current) return;
    let pool = pools.get(n);
    if (!pool) {
      // struct ggml_threadpool_params: cpumask[512] (no affinity), n_threads, prio, poll, strict_cpu, paused.
      const params = new Uint8Array(528);
      const v = new DataView(params.buffer);
      v.setInt32(512, n, true);
      v.setInt32(516, 0, true);
      v.setUint32(520, threadPoll(), true);
      pool = poolNew.call(params);
      if (!pool) throw new Error(`ggml could not start ${n} threads`);
      pools.set(n, pool);
    }
    setPool.call(backend, pool);
    setThreads.call(backend, n);
    current = n;
  };
  const description = `ggml ${readCString(s.ggml_backend_reg_name(reg))} (${
    readCString(s.ggml_backend_dev_description(dev)).trim()
  })`;
  // The device's extra buffer types (a null-terminated array), CPU_REPACK among them on x86 and Arm.
  let repackType: Deno.PointerValue = null;
  const extraPtr = s.ggml_backend_reg_get_proc_address(reg, cString("ggml_backend_dev_get_extra_bufts"));
  if (extraPtr) {
    const extra = new Deno.UnsafeFnPointer(extraPtr as Deno.PointerObject<never>, {
      parameters: ["pointer"],
      result: "pointer",
    });
    const list = extra.call(dev);
    if (list) {
      const view = new Deno.UnsafePointerView(list);
      for (let i = 0; i < 16; i++) {
        const buft = view.getPointer(i * 8);
        if (!buft) break;
        if (readCString(s.ggml_backend_buft_name(buft)) === "CPU_REPACK") repackType = buft;
      }
    }
  }
  const toFloatFns = new Map<
    number,
    Deno.UnsafeFnPointer<{ parameters: ["pointer", "buffer", "i64"]; result: "void" }>
  >();
  return {
    sym: s,
    backend,
    bufferType: s.ggml_backend_get_default_buffer_type(backend),
    repackType,
    description,
    setThreads: useThreads,
    quietly,
    toFloat(type, src, out) {
      let fn = toFloatFns.get(type);
      if (!fn) {
        const traits = s.ggml_get_type_traits(type);
        // struct ggml_type_traits: name (8), blck_size (8), blck_size_interleave (8), type_size (8), is_quantized
        // (8 with padding), then to_float.
        const p = new Deno.UnsafePointerView(traits!).getPointer(40);
        if (!p) throw new Error(`ggml has no dequantizer for type ${type}`);
        fn = new Deno.UnsafeFnPointer(
          p as Deno.PointerObject<never>,
          { parameters: ["pointer", "buffer", "i64"], result: "void" } as const,
        );
        toFloatFns.set(type, fn);
      }
      fn.call(
        Deno.UnsafePointer.of(src as Uint8Array<ArrayBuffer>),
        out as Float32Array<ArrayBuffer>,
        BigInt(out.length),
      );
    },
  };
}
