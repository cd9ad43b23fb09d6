// Causal multi-head attention with grouped KV heads (GQA) over the KV cache, for decode and prefill:
//   out[t, h, :] = sum_{j <= pos0 + t} softmax_j(scale * q[t, h, :] . K[j, h / group, :]) * V[j, h / group, :]
// One pass over the keys in tiles of WG with an online softmax (running max and sum), so the context length
// is bounded only by the cache, not by workgroup memory.
//
// Bindings (group 0):
//   0 p        uniform  AttnParams
//   1 step     uniform  Step                  (n_tokens, pos0)
//   2 q        storage  array<f32>  [n_tokens, n_heads * head_dim]     (already rotated)
//   3 k_cache  storage  array<f32>  [ctx, n_kv_heads * head_dim]       (rows < pos0 + n_tokens are valid)
//   4 v_cache  storage  array<f32>  [ctx, n_kv_heads * head_dim]
//   5 out      storage  array<f32>  [n_tokens, n_heads * head_dim]
// Workgroup: WG invocations (<= 256) for one (head, token); grid (n_heads, n_tokens).
// Per tile: invocation j scores key k0 + j; then invocation d accumulates output dims d, d + WG, ...
// (head_dim <= 4 * WG and <= 256).

struct AttnParams {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    scale: f32,
}

struct Step {
    n_tokens: u32,
    pos0: u32,
    _pad0: u32,
    _pad1: u32,
}

override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: AttnParams;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> q: array<f32>;
@group(0) @binding(3) var<storage, read> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read> v_cache: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

var<workgroup> qs: array<f32, 256>;
var<workgroup> sc: array<f32, 256>;

const NEG_BIG: f32 = -3.0e38;

@compute @workgroup_size(WG)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t = wid.y;
    if t >= step.n_tokens {
        return;
    }
    let hd = p.head_dim;
    let kvh = h / (p.n_heads / p.n_kv_heads);
    let kv_stride = p.n_kv_heads * hd;
    let kv_base = kvh * hd;
    let q_base = (t * p.n_heads + h) * hd;
    let n_keys = step.pos0 + t + 1u;

    for (var d = lid; d < hd; d = d + WG) {
        qs[d] = q[q_base + d] * p.scale;
    }
    workgroupBarrier();

    var m = NEG_BIG;       // running max of the scores seen so far
    var l = 0.0;           // running sum of exp(score - m)
    var acc = array<f32, 4>(0.0, 0.0, 0.0, 0.0);   // output dims lid, lid + WG, ...
    for (var k0 = 0u; k0 < n_keys; k0 = k0 + WG) {
        let j = k0 + lid;
        var s = NEG_BIG;
        if j < n_keys {
            let kb = j * kv_stride + kv_base;
            s = 0.0;
            for (var d = 0u; d < hd; d = d + 1u) {
                s = s + qs[d] * k_cache[kb + d];
            }
        }
        sc[lid] = s;
        workgroupBarrier();

        let n = min(WG, n_keys - k0);
        var tmax = m;
        for (var i = 0u; i < n; i = i + 1u) {
            tmax = max(tmax, sc[i]);
        }
        let corr = exp(m - tmax);
        l = l * corr;
        for (var c = 0u; c < 4u; c = c + 1u) {
            acc[c] = acc[c] * corr;
        }
        for (var i = 0u; i < n; i = i + 1u) {
            let pr = exp(sc[i] - tmax);
            l = l + pr;
            let vb = (k0 + i) * kv_stride + kv_base;
            for (var c = 0u; c < 4u; c = c + 1u) {
                let d = lid + c * WG;
                if d < hd {
                    acc[c] = acc[c] + pr * v_cache[vb + d];
                }
            }
        }
        m = tmax;
        workgroupBarrier();
    }
    let inv = 1.0 / l;
    for (var c = 0u; c < 4u; c = c + 1u) {
        let d = lid + c * WG;
        if d < hd {
            out[q_base + d] = acc[c] * inv;
        }
    }
}
