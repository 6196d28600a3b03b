/**
 * Temperature / top-k / top-p sampling on the GPU, mirroring core/sampling.ts without sorting the
 * vocabulary: the reference walks the tokens in order (logit descending, index ascending) and cuts a
 * prefix; here every prefix is found by binary search over order-preserving 32-bit keys of the logits
 * (mass or count of the tokens whose key is >= a threshold), then among equal logits by index.
 * The xorshift32 generator is the reference's, so draws match it (probabilities are float32 here,
 * float64 there: a draw can differ only when it lands within rounding of a boundary).
 * One workgroup; its lanes stride over the vocabulary and reduce through workgroup memory.
 */
import { type KernelDef, params, read, uniform, write } from "../pipelines.ts";

export function sample(vocab: number, wg = 256): KernelDef {
  const V = vocab;
  const bindings = [
    params(),
    uniform("SP", "Sampling"),
    read("L"),
    write("TOK", "u32"),
    write("RNG", "u32"),
    write("PROB"),
  ];
  return {
    name: "sample",
    bindings,
    workgroupSize: wg,
    body: `${declarations(wg)}${searches(V, wg)}${mainCut(V, wg)}${mainDraw(V)}`,
  };
}

/** The sampler's uniforms, workgroup scratch, order-preserving keys and workgroup reductions. */
function declarations(wg: number): string {
  return `
struct Sampling { temperature: f32, topP: f32, topK: u32, pad: u32 }
var<workgroup> RF: array<f32, ${wg}>;
var<workgroup> RU: array<u32, ${wg}>;
var<workgroup> SHF: f32;
var<workgroup> SHU: u32;
var<workgroup> SEED: u32;
var<private> base: u32;
var<private> li: u32;

fn okey(v: f32) -> u32 {
  let b = bitcast<u32>(v);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}
fn unkey(k: u32) -> f32 {
  return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}
${treeReduce("sumF", "f32", "RF", "SHF", wg, (a, b) => `${a} + ${b}`)}
${treeReduce("maxF", "f32", "RF", "SHF", wg, (a, b) => `max(${a}, ${b})`)}
${treeReduce("sumU", "u32", "RU", "SHU", wg, (a, b) => `${a} + ${b}`)}
`;
}

/**
 * Prefix searches over the keys: mass and count of the tokens at or above a key, binary searches for a
 * key by mass or count, and the j-th token (by index) of one key.
 */
function searches(V: number, wg: number): string {
  return `/** Probability mass of the tokens whose key is >= k (k = 2^32 means none). */
fn massGE(k: u32, none: bool) -> f32 {
  var s = 0.0;
  if (!none) {
    for (var i = li; i < ${V}u; i += ${wg}u) { if (okey(L[base + i]) >= k) { s += PROB[i]; } }
  }
  return sumF(s);
}
fn countGE(k: u32, none: bool) -> u32 {
  var s = 0u;
  if (!none) {
    for (var i = li; i < ${V}u; i += ${wg}u) { if (okey(L[base + i]) >= k) { s += 1u; } }
  }
  return sumU(s);
}
/** Largest key whose mass-at-or-above is >= goal (> goal when strict). */
fn searchMass(goal: f32, strict: bool) -> u32 {
  var lo = 0u;
  var hi = 0xffffffffu;
  for (var it = 0u; it < 33u; it++) {
    if (lo == hi) { break; }
    let d = hi - lo;
    let mid = lo + d / 2u + (d & 1u);
    let m = massGE(mid, false);
    if ((strict && m > goal) || (!strict && m >= goal)) { lo = mid; } else { hi = mid - 1u; }
  }
  return lo;
}
/** Largest key with at least n tokens at or above it. */
fn searchCount(n: u32) -> u32 {
  var lo = 0u;
  var hi = 0xffffffffu;
  for (var it = 0u; it < 33u; it++) {
    if (lo == hi) { break; }
    let d = hi - lo;
    let mid = lo + d / 2u + (d & 1u);
    if (countGE(mid, false) >= n) { lo = mid; } else { hi = mid - 1u; }
  }
  return lo;
}
/** Index of the j-th (1-based) token, by index, among those whose key is exactly k. */
fn nthOfKey(k: u32, j: u32) -> u32 {
  var lo = 0u;
  var hi = ${V - 1}u;
  for (var it = 0u; it < 33u; it++) {
    if (lo == hi) { break; }
    let mid = lo + (hi - lo) / 2u;
    var c = 0u;
    for (var i = li; i <= mid; i += ${wg}u) { if (okey(L[base + i]) == k) { c += 1u; } }
    if (sumU(c) >= j) { hi = mid; } else { lo = mid + 1u; }
  }
  return lo;
}
fn probOfKey(k: u32, mx: f32) -> f32 {
  return exp((unkey(k) - mx) / SP.temperature);
}

`;
}

/** The entry point's first half: softmax at the temperature, then the kept prefix (top-p, top-k). */
function mainCut(V: number, wg: number): string {
  return `@compute @workgroup_size(${wg})
fn main(@builtin(local_invocation_index) lid: u32) {
  li = lid;
  base = P.inRow * ${V}u;
  var m = -3.4e38;
  for (var i = li; i < ${V}u; i += ${wg}u) { m = max(m, L[base + i]); }
  let mx = maxF(m);
  var t = 0.0;
  for (var i = li; i < ${V}u; i += ${wg}u) {
    let p = exp((L[base + i] - mx) / SP.temperature);
    PROB[i] = p;
    t += p;
  }
  storageBarrier();
  let total = sumF(t);
  let limit = select(${V}u, min(SP.topK, ${V}u), SP.topK > 0u);
  // The kept prefix: all tokens with key > kc, plus the first jc tokens (by index) with key == kc.
  var keep = ${V}u;
  var kc = 0u;
  var jc = 0u;
  var cutKnown = false;
  if (SP.topP < 1.0) {
    let tp = SP.topP * total;
    let kp = searchMass(tp, false);
    if (massGE(kp, false) >= tp) {
      let none = kp == 0xffffffffu;
      let gtMass = massGE(kp + 1u, none);
      let gtCount = countGE(kp + 1u, none);
      let eq = countGE(kp, false) - gtCount;
      let need = ceil((tp - gtMass) / probOfKey(kp, mx));
      let j = clamp(u32(max(need, 1.0)), 1u, max(eq, 1u));
      keep = gtCount + j;
      kc = kp;
      jc = j;
      cutKnown = true;
    }
  }
  if (limit < keep) {
    keep = limit;
    kc = searchCount(keep);
    jc = keep - countGE(kc + 1u, kc == 0xffffffffu);
    cutKnown = true;
  }
  var kept = total;
  if (keep < ${V}u) {
    kept = massGE(kc + 1u, kc == 0xffffffffu) + f32(jc) * probOfKey(kc, mx);
  }
`;
}

/** The entry point's second half: the draw, its key and rank within the key, the token written. */
function mainDraw(V: number): string {
  return `  // The draw (the reference's xorshift32). The state is read once into workgroup memory and loaded
  // uniformly: a read_write storage read is non-uniform to Tint (Chromium), and the draw steers the
  // searches below, whose reductions hold barriers.
  if (li == 0u) { SEED = RNG[0]; }
  var x = workgroupUniformLoad(&SEED);
  x ^= x << 13u;
  x ^= x >> 17u;
  x ^= x << 5u;
  let u = f32(x >> 8u) / 16777216.0;
  let goal = u * kept;
  let kd = searchMass(goal, true);
  var chosenKey = kd;
  var chosenJ = 0u;
  var fallback = massGE(kd, false) <= goal;
  if (!fallback) {
    let none = kd == 0xffffffffu;
    let gtMass = massGE(kd + 1u, none);
    let eq = countGE(kd, false) - countGE(kd + 1u, none);
    let need = floor((goal - gtMass) / probOfKey(kd, mx)) + 1.0;
    chosenJ = clamp(u32(max(need, 1.0)), 1u, max(eq, 1u));
    if (keep < ${V}u && (kd < kc || (kd == kc && chosenJ > jc))) { fallback = true; }
  }
  if (fallback) {
    // Rounding pushed the draw past the kept prefix: the reference returns its last token.
    if (!cutKnown) {
      kc = searchCount(keep);
      jc = keep - countGE(kc + 1u, kc == 0xffffffffu);
    }
    chosenKey = kc;
    chosenJ = jc;
  }
  let token = nthOfKey(chosenKey, chosenJ);
  if (li == 0u) {
    TOK[P.step] = token;
    RNG[0] = x;
  }
}`;
}

/** WGSL for a workgroup tree reduction of one value per invocation, returned uniformly to all. */
function treeReduce(
  name: string,
  type: string,
  scratch: string,
  shared: string,
  wg: number,
  op: (a: string, b: string) => string,
): string {
  return `fn ${name}(v: ${type}) -> ${type} {
  ${scratch}[li] = v;
  workgroupBarrier();
  for (var s = ${wg / 2}u; s > 0u; s >>= 1u) {
    if (li < s) { ${scratch}[li] = ${op(`${scratch}[li]`, `${scratch}[li + s]`)}; }
    workgroupBarrier();
  }
  if (li == 0u) { ${shared} = ${scratch}[0]; }
  return workgroupUniformLoad(&${shared});
}`;
}
