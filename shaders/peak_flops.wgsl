// Peak FLOP/s probe of the kernel lab (glint::lab::probes), for the roofline's compute ceiling: every
// invocation runs 8 independent chains of vec4 fused multiply-adds, a = fma(a, m, c), for p.iters
// iterations, then writes the sum of its chains so that no work can be dropped. FLOPs per invocation:
// iters x 8 chains x 4 lanes x 2 = 64 x iters. m and c come from the uniform rather than constants, so
// the compiler cannot fold the chains; with 0 < m < 1 every chain converges to c / (1 - m) without
// overflow or denormals. No memory traffic besides one f32 store per invocation.
//
// Bindings (group 0):
//   0 p    uniform  PeakParams
//   1 out  storage  array<f32>  [num_workgroups.x * WG]
// Workgroup: WG invocations (override, default 64) on a 1-D grid; no workgroup memory, no barriers.

struct PeakParams {
    iters: u32,
    m: f32,
    c: f32,
    _pad: u32,
}

override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: PeakParams;
@group(0) @binding(1) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn peak_flops(@builtin(global_invocation_id) gid: vec3<u32>) {
    let s = f32(gid.x & 1023u) * 1e-3;
    let m = vec4<f32>(p.m);
    let c = vec4<f32>(p.c);
    var a0 = vec4<f32>(s, s + 0.1, s + 0.2, s + 0.3);
    var a1 = a0 + vec4<f32>(0.01);
    var a2 = a0 + vec4<f32>(0.02);
    var a3 = a0 + vec4<f32>(0.03);
    var a4 = a0 + vec4<f32>(0.04);
    var a5 = a0 + vec4<f32>(0.05);
    var a6 = a0 + vec4<f32>(0.06);
    var a7 = a0 + vec4<f32>(0.07);
    for (var k = 0u; k < p.iters; k = k + 1u) {
        a0 = fma(a0, m, c);
        a1 = fma(a1, m, c);
        a2 = fma(a2, m, c);
        a3 = fma(a3, m, c);
        a4 = fma(a4, m, c);
        a5 = fma(a5, m, c);
        a6 = fma(a6, m, c);
        a7 = fma(a7, m, c);
    }
    out[gid.x] = dot(a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7, vec4<f32>(1.0));
}
