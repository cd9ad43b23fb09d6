// Causal multi-head attention with grouped KV heads (GQA) over the KV cache, for decode and prefill:
//   out[t, h, :] = sum_{j <= pos(t)} softmax_j(scale * q[t, h, :] . K[s(t), j, h / group, :]) * V[s(t), j, h / group, :]
// where (s(t), pos(t)) = tok_meta[t] are the token's sequence slot and position: one call can hold tokens of
// several sequences, each attending to its own slot's region of the cache (rows s * slot_rows ..).
// One pass over the keys in tiles of WG with an online softmax (running max and sum), so the context length
// is bounded only by the cache, not by workgroup memory.
//
// Bindings (group 0):
//   0 p        uniform  AttnParams
//   1 step     uniform  Step                  (n: tokens)
//   2 tok_meta storage  array<TokenMeta>  [n_tokens]   (slot, pos)
//   3 q        storage  array<f32>  [n_tokens, q_stride]: the token's heads in its first
//                                   n_heads * head_dim (the q part of the qkv row), already rotated
//   4 k_cache  storage  array<vec4<f32>>  [slots * slot_rows, n_kv_heads * head_dim / 4]
//                                   (rows slot * slot_rows + j, j <= pos, valid)
//   5 v_cache  storage  array<f32>  [slots * slot_rows, n_kv_heads * head_dim]
//   6 out      storage  array<f32>  [n_tokens, n_heads * head_dim]
// Workgroup: WG invocations (<= 256) for one (head, token); grid (n_heads, n_tokens).
// Per tile (2 barriers): invocation j scores key k0 + j and computes its softmax weight; then
// invocation d accumulates output dim d over the tile's values.
// (head_dim a multiple of 4 and <= WG <= 256; the engine picks WG >= head_dim). Scores read K four
// elements at a time. Shared structs come from the prelude (engine/src/uniforms.rs).

override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: AttnParams;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> tok_meta: array<TokenMeta>;
@group(0) @binding(3) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> v_cache: array<f32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;

var<workgroup> qs: array<vec4<f32>, 64>;
var<workgroup> sc: array<f32, 256>;   // the tile's scores
var<workgroup> pr: array<f32, 256>;   // the tile's exp(score - running max)

const NEG_BIG: f32 = -3.0e38;

@compute @workgroup_size(WG)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t = wid.y;
    if t >= step.n {
        return;
    }
    let tm = tok_meta[t];
    let hd = p.head_dim;
    let kvh = h / (p.n_heads / p.n_kv_heads);
    let kv_stride = p.n_kv_heads * hd;
    let kv_base = tm.x * p.slot_rows * kv_stride + kvh * hd;
    let q_base = t * p.q_stride + h * hd;
    let out_base = (t * p.n_heads + h) * hd;
    let n_keys = tm.y + 1u;

    for (var d = lid; d < hd / 4u; d = d + WG) {
        let b = q_base + 4u * d;
        qs[d] = vec4<f32>(q[b], q[b + 1u], q[b + 2u], q[b + 3u]) * p.scale;
    }
    workgroupBarrier();

    var m = NEG_BIG;       // running max of the scores seen so far
    var l = 0.0;           // running sum of exp(score - m)
    var acc = 0.0;         // output dim lid (invocations past head_dim compute a copy of the last dim)
    let dd = min(lid, hd - 1u);
    for (var k0 = 0u; k0 < n_keys; k0 = k0 + WG) {
        let j = k0 + lid;
        var s = NEG_BIG;
        if j < n_keys {
            let kb = (j * kv_stride + kv_base) / 4u;
            var acc4 = vec4<f32>(0.0);
            for (var d = 0u; d < hd / 4u; d = d + 1u) {
                acc4 = acc4 + qs[d] * k_cache[kb + d];
            }
            s = acc4.x + acc4.y + acc4.z + acc4.w;
        }
        sc[lid] = s;
        workgroupBarrier();

        // Every invocation finds the tile's max; invocation j then computes its own key's weight once.
        let n = min(WG, n_keys - k0);
        var tmax = m;
        for (var i = 0u; i < n; i = i + 1u) {
            tmax = max(tmax, sc[i]);
        }
        pr[lid] = select(0.0, exp(s - tmax), lid < n);
        workgroupBarrier();

        let corr = exp(m - tmax);
        l = l * corr;
        acc = acc * corr;
        var vi = k0 * kv_stride + kv_base + dd;
        for (var i = 0u; i < n; i = i + 1u) {
            let w = pr[i];
            l = l + w;
            acc = acc + w * v_cache[vi];
            vi = vi + kv_stride;
        }
        m = tmax;
        // No barrier here: the next tile writes sc only after the barrier above (every invocation is
        // done reading sc), and pr only after its first barrier (every invocation is done reading pr).
    }
    if lid < hd {
        out[out_base + lid] = acc / l;
    }
}
