/**
 * Matrix-vector micro-benchmark: weight bytes read per second by one decode projection (one input row)
 * for several weight layouts and workgroup sizes, on the 100M llama's shapes. Each variant runs REPS
 * dispatches in one submission; the time of 2*REPS minus the time of REPS (median of several) cancels
 * the ~11 ms submit/sync overhead. Also times a plain read kernel (the ceiling of storage loads here).
 *
 *   deno run -A bench/matvec_micro.ts [--shapes 768x2048,2048x768,768x32000] [--only name,...]
 */
import { acquireDevice } from "../gpu/device.ts";
import { median } from "../core/percentile.ts";

const args = Deno.args;
const arg = (name: string) => (args.includes(name) ? args[args.indexOf(name) + 1] : undefined);
const shapes = (arg("--shapes") ?? "768x2048,2048x768,768x32000").split(",").map((s) =>
  s.split("x").map(Number) as [number, number]
);
const only = arg("--only")?.split(",");
const ctx = await acquireDevice();
const d = ctx.device;
console.error(ctx.description, "load", Deno.loadavg()[0]);

interface Variant {
  name: string;
  /** X bound as a uniform buffer (loads at a uniform offset are one scalar load and a broadcast). */
  ux?: boolean;
  /** WGSL with bindings W (0), X (1), OUT (2); `tex` variants bind a texture at 0. */
  code: (K: number, N: number) => string;
  /** Workgroups to dispatch (x). */
  groups: (K: number, N: number) => number;
  tex?: boolean;
  /** Bytes per weight (4 for f32; 2 for f16 pairs packed in u32). */
  weightBytes?: number;
}

const hdr = (wTy: string) => `
@group(0) @binding(0) var<storage, read> W: array<${wTy}>;
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> OUT: array<f32>;`;

/** W [K][N] (transposed), one output column per invocation, scalar loads; K unrolled by 4. */
function tScalar(wg: number, cols = 1): Variant {
  return {
    name: `t-scalar wg${wg} c${cols}`,
    groups: (_K, N) => Math.ceil(N / cols / wg),
    code: (K, N) =>
      `${hdr("f32")}
@compute @workgroup_size(${wg})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let n = gid.x;
  if (n >= ${N / cols}u) { return; }
  ${Array.from({ length: cols }, (_, c) => `var a${c} = 0.0;`).join(" ")}
  for (var k = 0u; k < ${K / 4}u; k++) {
    let x = X[k];
    let b = 4u * k * ${N}u + n;
    ${
        Array.from({ length: cols }, (_, c) =>
          `a${c} += W[b + ${c * (N / cols)}u] * x.x + W[b + ${N + c * (N / cols)}u] * x.y + W[b + ${
            2 * N + c * (N / cols)
          }u] * x.z + W[b + ${3 * N + c * (N / cols)}u] * x.w;`).join("\n    ")
      }
  }
  ${Array.from({ length: cols }, (_, c) => `OUT[n + ${c * (N / cols)}u] = a${c};`).join(" ")}
}`,
  };
}

/** W [K][N/4] vec4, 4*V output columns per invocation (vec4 c + j*N/(4V)); K unrolled by U. */
function tVec4(wg: number, V = 1, U = 4): Variant {
  return {
    name: `t-vec4 wg${wg} v${V} u${U}`,
    groups: (_K, N) => Math.ceil(N / 4 / V / wg),
    code: (K, N) => {
      const S = N / 4 / V, N4 = N / 4;
      const r = (n: number, f: (i: number) => string, sep = " ") =>
        Array.from({ length: n }, (_, i) => f(i)).join(sep);
      const comp = ["x", "y", "z", "w"];
      return `${hdr("vec4<f32>")}
@compute @workgroup_size(${wg})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let c = gid.x;
  if (c >= ${S}u) { return; }
  ${r(V, (j) => `var a${j} = vec4<f32>(0.0);`)}
  for (var k = 0u; k < ${K / U}u; k++) {
    ${r(U / 4, (q) => `let x${q} = X[${U / 4}u * k + ${q}u];`)}
    let b = ${U}u * k * ${N4}u + c;
    ${
        r(V, (j) =>
          `a${j} += ${
            r(U, (u) =>
              `W[b + ${u * N4 + j * S}u] * x${Math.floor(u / 4)}.${comp[u % 4]}`, " + ")
          };`, "\n    ")
      }
  }
  ${
        r(
          V,
          (j) =>
            `{ let o = 4u * (c + ${
              j * S
            }u); OUT[o] = a${j}.x; OUT[o + 1u] = a${j}.y; OUT[o + 2u] = a${j}.z; OUT[o + 3u] = a${j}.w; }`,
          "\n  ",
        )
      }
}`;
    },
  };
}

/** W [N][K] row-major vec4, one output row per invocation (each lane streams its own row). */
function rowDot(wg: number): Variant {
  return {
    name: `row-dot wg${wg}`,
    groups: (_K, N) => Math.ceil(N / wg),
    code: (K, N) =>
      `${hdr("vec4<f32>")}
@compute @workgroup_size(${wg})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let n = gid.x;
  if (n >= ${N}u) { return; }
  var a = vec4<f32>(0.0);
  let b = n * ${K / 4}u;
  for (var k = 0u; k < ${K / 4}u; k++) { a += W[b + k] * X[k]; }
  OUT[n] = a.x + a.y + a.z + a.w;
}`,
  };
}

/**
 * The executor's layout: blocks of 32 columns [K][8 vec4], 4 columns per invocation. `splitK` > 1 splits
 * K over that many invocation sets writing partial sums (a second, tiny pass would add them);
 * `readOnly` sums the weights without X (the ceiling of this layout's loads).
 */
function blocked(wg: number, splitK = 1, readOnly = false): Variant {
  return {
    name: `${readOnly ? "read-" : ""}blocked32 wg${wg}${splitK > 1 ? ` splitK${splitK}` : ""}`,
    groups: (_K, N) => Math.ceil((N / 4) * splitK / wg),
    code: (K, N) =>
      `${hdr("vec4<f32>")}
@compute @workgroup_size(${wg})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let c4 = gid.x % ${N / 4}u;
  let part = gid.x / ${N / 4}u;
  if (part >= ${splitK}u) { return; }
  var a = vec4<f32>(0.0);
  var wb = (c4 >> 3u) * ${K * 8}u + (c4 & 7u) + part * ${(K / splitK) * 8}u;
  for (var k = part * ${K / 4 / splitK}u; k < (part + 1u) * ${K / 4 / splitK}u; k++) {
    ${
        readOnly
          ? "a += W[wb] + W[wb + 8u] + W[wb + 16u] + W[wb + 24u];"
          : "let v = X[k]; a += W[wb] * v.x + W[wb + 8u] * v.y + W[wb + 16u] * v.z + W[wb + 24u] * v.w;"
      }
    wb += 32u;
  }
  ${readOnly ? "a += X[0];" : ""}
  let o = part * ${N}u + 4u * c4;
  OUT[o] = a.x; OUT[o + 1u] = a.y; OUT[o + 2u] = a.z; OUT[o + 3u] = a.w;
}`,
  };
}

/**
 * f16 weights packed in pairs into u32 (unpack2x16float: core WGSL, no shader-f16 needed). Blocks of 32
 * columns [K/2][8 vec4<u32>]: one vec4<u32> holds 4 columns of two consecutive input rows, so each load
 * carries 8 weights instead of 4.
 */
function blockedF16(wg: number): Variant {
  return {
    name: `blocked32-f16 wg${wg}`,
    weightBytes: 2,
    groups: (_K, N) => Math.ceil(N / 4 / wg),
    code: (K, N) =>
      `${hdr("vec4<u32>")}
fn h(u: vec2<u32>) -> vec4<f32> { return vec4<f32>(unpack2x16float(u.x), unpack2x16float(u.y)); }
@compute @workgroup_size(${wg})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let c4 = gid.x;
  if (c4 >= ${N / 4}u) { return; }
  var a = vec4<f32>(0.0);
  var wb = (c4 >> 3u) * ${K * 4}u + (c4 & 7u);
  for (var k = 0u; k < ${K / 4}u; k++) {
    let v = X[k];
    let p = W[wb]; let q = W[wb + 8u];
    a += h(p.xy) * v.x + h(p.zw) * v.y + h(q.xy) * v.z + h(q.zw) * v.w;
    wb += 16u;
  }
  let o = 4u * c4;
  OUT[o] = a.x; OUT[o + 1u] = a.y; OUT[o + 2u] = a.z; OUT[o + 3u] = a.w;
}`,
  };
}

/** W as an rgba32float texture [K][N/4] (texel = 4 columns), four output columns per invocation. */
function texVec4(wg: number): Variant {
  return {
    name: `tex-vec4 wg${wg}`,
    tex: true,
    groups: (_K, N) => Math.ceil(N / 4 / wg),
    code: (K, N) => `
@group(0) @binding(0) var W: texture_2d<f32>;
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> OUT: array<f32>;
@compute @workgroup_size(${wg})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let c = i32(gid.x);
  if (gid.x >= ${N / 4}u) { return; }
  var a = vec4<f32>(0.0);
  for (var k = 0; k < ${K / 4}; k++) {
    let x = X[k];
    a += textureLoad(W, vec2<i32>(c, 4 * k), 0) * x.x + textureLoad(W, vec2<i32>(c, 4 * k + 1), 0) * x.y
      + textureLoad(W, vec2<i32>(c, 4 * k + 2), 0) * x.z + textureLoad(W, vec2<i32>(c, 4 * k + 3), 0) * x.w;
  }
  let o = 4u * gid.x;
  OUT[o] = a.x; OUT[o + 1u] = a.y; OUT[o + 2u] = a.z; OUT[o + 3u] = a.w;
}`,
  };
}

/** Pure streaming read: each invocation sums a strided (lane-contiguous) range of vec4s. */
function readOnly(wg: number): Variant {
  return {
    name: `read-vec4 wg${wg}`,
    groups: (_K, N) => Math.ceil(N / 4 / wg),
    code: (K, N) =>
      `${hdr("vec4<f32>")}
@compute @workgroup_size(${wg})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let c = gid.x;
  if (c >= ${N / 4}u) { return; }
  var a = X[0];
  for (var k = 0u; k < ${K}u; k++) { a += W[k * ${N / 4}u + c]; }
  OUT[c] = a.x + a.y + a.z + a.w;
}`,
  };
}

/** The same kernel with X read from a uniform buffer. */
function withUniformX(v: Variant): Variant {
  return {
    ...v,
    name: v.name + " uX",
    ux: true,
    code: (K, N) =>
      v.code(K, N).replace(
        "@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;",
        `@group(0) @binding(1) var<uniform> X: array<vec4<f32>, ${K / 4}>;`,
      ),
  };
}

/** Pure texture read: the ceiling of texel fetches. */
function readTex(wg: number): Variant {
  return {
    name: `read-tex wg${wg}`,
    tex: true,
    groups: (_K, N) => Math.ceil(N / 4 / wg),
    code: (K, N) => `
@group(0) @binding(0) var W: texture_2d<f32>;
@group(0) @binding(1) var<storage, read> X: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> OUT: array<f32>;
@compute @workgroup_size(${wg})
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  if (gid.x >= ${N / 4}u) { return; }
  var a = X[0];
  for (var k = 0; k < ${K}; k++) { a += textureLoad(W, vec2<i32>(i32(gid.x), k), 0); }
  OUT[gid.x] = a.x + a.y + a.z + a.w;
}`,
  };
}

const variants0: Variant[] = [
  blocked(64),
  blockedF16(64),
  blocked(256),
  tVec4(64),
  tVec4(64, 4),
  tVec4(256, 1, 8),
  tScalar(256),
  rowDot(64),
  texVec4(64),
  texVec4(256),
  readOnly(256),
  readTex(64),
];
const sets: Record<string, Variant[]> = {
  wg: [
    blocked(64),
    blocked(32),
    blocked(96),
    blocked(128),
    blocked(256),
    blocked(64, 1, true),
    blocked(32, 1, true),
  ],
  f16: [blocked(64), blockedF16(64), blockedF16(32), blockedF16(128), blocked(64, 1, true)],
  lm: [blocked(64), blocked(256), blocked(64, 2), blocked(128, 2), blocked(64, 4), blocked(64, 1, true)],
};
const variants = [
  ...(arg("--set") ? sets[arg("--set")!] : variants0),
  ...(arg("--set")
    ? []
    : [blocked(64), blocked(256), tVec4(64, 4), texVec4(64), texVec4(256)].map(withUniformX)),
].filter((v) => !only || only.some((o) => v.name.startsWith(o)));

async function timeRuns(pipe: GPUComputePipeline, group: GPUBindGroup, groups: number, reps: number) {
  const enc = d.createCommandEncoder();
  const pass = enc.beginComputePass();
  pass.setPipeline(pipe);
  pass.setBindGroup(0, group);
  for (let i = 0; i < reps; i++) pass.dispatchWorkgroups(groups);
  pass.end();
  const t = performance.now();
  d.queue.submit([enc.finish()]);
  await d.queue.onSubmittedWorkDone();
  return performance.now() - t;
}

const ROUNDS = Number(arg("--rounds") ?? 5);
const results: Record<string, Record<string, number>> = {};
for (const [K, N] of shapes) {
  const bytes = K * N * 4;
  const reps = Math.max(2, Math.min(40, Math.round(2e9 / 4 / bytes)));
  const W = d.createBuffer({ size: bytes, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
  // Real values everywhere: an unwritten buffer reads the kernel's shared zero page (always cached),
  // and tiny values would be denormals. The first half also holds the f16 variants' packed halves
  // (read as f32 they are small normal values).
  const data = new Float32Array(K * N).map((_, i) => Math.sin(i * 0.618) * 0.05);
  d.queue.writeBuffer(W, 0, data);
  d.queue.writeBuffer(W, 0, new Float16Array(data));
  const X = d.createBuffer({
    size: K * 4,
    usage: GPUBufferUsage.STORAGE | GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST,
  });
  const OUT = d.createBuffer({ size: 4 * N * 4, usage: GPUBufferUsage.STORAGE });
  let tex: GPUTexture | null = null;
  if (N / 4 <= d.limits.maxTextureDimension2D && K <= d.limits.maxTextureDimension2D) {
    tex = d.createTexture({
      size: [N / 4, K],
      format: "rgba32float",
      usage: GPUTextureUsage.TEXTURE_BINDING | GPUTextureUsage.COPY_DST,
    });
    d.queue.writeTexture({ texture: tex }, data, { bytesPerRow: N * 4 }, [N / 4, K]);
  }
  const key = `${K}x${N}`;
  results[key] = {};
  const runs: { v: Variant; pipe: GPUComputePipeline; group: GPUBindGroup; g: number; per: number[] }[] = [];
  for (const v of variants) {
    if (v.tex && !tex) continue;
    d.pushErrorScope("validation");
    const module = d.createShaderModule({ code: v.code(K, N) });
    const pipe = d.createComputePipeline({ layout: "auto", compute: { module, entryPoint: "main" } });
    const group = d.createBindGroup({
      layout: pipe.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: v.tex ? tex!.createView() : { buffer: W } },
        { binding: 1, resource: { buffer: X } },
        { binding: 2, resource: { buffer: OUT } },
      ],
    });
    const err = await d.popErrorScope();
    if (err) {
      console.error(v.name, err.message);
      continue;
    }
    const g = v.groups(K, N);
    await timeRuns(pipe, group, g, 2);
    runs.push({ v, pipe, group, g, per: [] });
  }
  // Rounds interleave the variants, so load from other processes hits them alike.
  for (let i = 0; i < ROUNDS; i++) {
    for (const r of runs) {
      const a = await timeRuns(r.pipe, r.group, r.g, reps);
      const b = await timeRuns(r.pipe, r.group, r.g, 2 * reps);
      r.per.push((b - a) / reps);
    }
  }
  const base = runs[0];
  for (const r of runs) {
    const ms = median(r.per);
    const ratio = median(r.per.map((t, i) => base.per[i] / t));
    const gbs = (bytes * (r.v.weightBytes ?? 4) / 4) / (ms / 1000) / 1e9;
    results[key][r.v.name] = Math.round(gbs * 100) / 100;
    console.log(
      `${key.padEnd(10)} ${r.v.name.padEnd(22)} groups ${String(r.g).padStart(4)} ${
        ms.toFixed(3).padStart(8)
      } ms  ${gbs.toFixed(2)} GB/s  speed vs first ${ratio.toFixed(2)}`,
    );
  }
  W.destroy();
  X.destroy();
  OUT.destroy();
  tex?.destroy();
}
console.error("load", Deno.loadavg()[0]);
if (args.includes("--json")) console.log(JSON.stringify(results));
