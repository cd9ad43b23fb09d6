// Activations quantized to 8 bits per 32-element block, for the int8 matvec (matvec_q8.wgsl), as ggml's
// Q8_0 / Q8_1 activations: for block b of x's row r(t) (times the norm weight g with NORM),
//   d = max|v| / 127,  q[i] = round(v[i] / d)  (round half to even; q = 0 when d = 0),
//   xq[t, 8b + j] = q[4j .. 4j + 4] packed as signed bytes (pack4xI8), element 4j + k in byte k,
//   xd[t, b]      = (d, d * sum(q), sum(x^2), 0)   (x^2 of the raw x: the fused RMSNorm's sum of squares)
// so that v ≈ d * q. r(t) = t, or rows[t] with GATHER (the LM head: only the call's output rows, packed
// by output). With NORM, v = g * x: the RMSNorm's 1 / sqrt(mean(x^2) + eps) is a factor of the whole row,
// which the matvec applies after its sums (as the f32 matvec does), so it is left out here.
//
// Bindings (group 0):
//   0 p     uniform  NormParams                (cols, a multiple of 32)
//   1 step  uniform  Step                      (n: tokens, or outputs with GATHER)
//   2 x     storage  array<vec4<f32>>  [x rows, cols]
//   3 g     storage  array<vec4<f32>>  [cols]  the norm weight (read only with NORM)
//   4 rows  storage  array<u32>        [n]     x's row of each output (read only with GATHER)
//   5 xq    storage  array<u32>        [n, cols / 4]
//   6 xd    storage  array<vec4<f32>>  [n, cols / 32]
// Workgroup: WG invocations, one block each; grid (ceil(cols / 32 / WG), step.n, 1). No barrier.
// Shared structs come from the prelude (engine/src/uniforms.rs).

override WG: u32 = 64u;
override NORM: bool = false;
override GATHER: bool = false;

@group(0) @binding(0) var<uniform> p: NormParams;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> g: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> rows: array<u32>;
@group(0) @binding(5) var<storage, read_write> xq: array<u32>;
@group(0) @binding(6) var<storage, read_write> xd: array<vec4<f32>>;

@compute @workgroup_size(WG)
fn quantize_q8(@builtin(global_invocation_id) gid: vec3<u32>) {
    let blocks = p.cols / 32u;
    let b = gid.x;
    let t = gid.y;
    if b >= blocks || t >= step.n {
        return;
    }
    var row = t;
    if GATHER {
        row = rows[t];
    }
    let src = row * (p.cols / 4u) + 8u * b;
    var v: array<vec4<f32>, 8>;
    var amax = 0.0;
    var ss = 0.0;
    for (var i = 0u; i < 8u; i = i + 1u) {
        var e = x[src + i];
        ss = ss + dot(e, e);
        if NORM {
            e = e * g[8u * b + i];
        }
        v[i] = e;
        let a = abs(e);
        amax = max(amax, max(max(a.x, a.y), max(a.z, a.w)));
    }
    let d = amax / 127.0;
    let id = select(0.0, 1.0 / d, d > 0.0);
    let dst = t * (p.cols / 4u) + 8u * b;
    var sum = vec4<i32>(0);
    for (var i = 0u; i < 8u; i = i + 1u) {
        let q = clamp(vec4<i32>(round(v[i] * id)), vec4<i32>(-127), vec4<i32>(127));
        sum = sum + q;
        xq[dst + i] = pack4xI8(q);
    }
    let s = sum.x + sum.y + sum.z + sum.w;
    xd[t * blocks + b] = vec4<f32>(d, d * f32(s), ss, 0.0);
}
