// Causal multi-head attention with grouped KV heads (GQA) over the KV cache, for decode and prefill:
//   out[t, h, :] = sum_{j <= pos(t)} softmax_j(scale * q[t, h, :] . K[s(t), j, h / group, :]) * V[s(t), j, h / group, :]
// where (s(t), pos(t)) = tok_meta[t] are the token's sequence slot and position: one call can hold tokens
// of several sequences, each attending to its own slot's region of the cache (rows s * slot_rows ..).
// One pass over the keys in tiles of WG with an online softmax (running max and sum), so the context
// length is bounded only by the cache, not by workgroup memory.
// Split-K ("flash-decoding"): with step.kv_splits = S > 1, the keys of each (token, head) are cut into S
// ranges, one workgroup each (grid z), which write their unnormalised output with their max and sum to
// `part`; `attention_reduce` then combines the S partials. S comes with each call (the host picks it
// from the call's longest context and Shapes::attn_split_keys), so a long context fills the GPU while a
// short one stays one workgroup per (token, head).
// The cache is f32 or f16 (KVF): f16 pairs packed in u32 words, element 2i in the low half.
//
// Bindings (group 0):
//   0 p        uniform  AttnParams
//   1 step     uniform  Step                  (n: tokens, kv_splits)
//   2 tok_meta storage  array<TokenMeta>  [n_tokens]   (slot, pos)
//   3 q        storage  array<f32>  [n_tokens, q_stride]: the token's heads in its first
//                                   n_heads * head_dim (the q part of the qkv row), already rotated
//   4 k_cache  storage  array<vec2<u32>>  [slots * slot_rows, n_kv_heads * head_dim]: f32 2 elements per
//                                   vec2, f16 4 (rows slot * slot_rows + j, j <= pos, valid)
//   5 v_cache  storage  array<u32>  [slots * slot_rows, n_kv_heads * head_dim]: f32 1 element per word,
//                                   f16 2
//   6 out      storage  array<f32>  [n_tokens, n_heads * head_dim]
//   7 part     storage  array<f32>  [n_tokens, n_heads, S, head_dim + 2]: split partials (acc..., m, l)
// Workgroup: WG invocations (<= 256) for one (head, token, split); grid (n_heads, n_tokens, S).
// Per tile (2 barriers): invocation j scores key k0 + j and computes its softmax weight; then
// invocation d accumulates output dim d over the tile's values.
// (head_dim a multiple of 4 and <= WG <= 256; the engine picks WG >= head_dim). Scores read K four
// elements at a time.
// attention_reduce: WG invocations for one (head, token), invocation d combining dim d of the S partials;
// grid (n_heads, n_tokens, 1).
// Shared structs come from the prelude (engine/src/uniforms.rs).

override WG: u32 = 64u;
override KVF: u32 = KV_F32;

@group(0) @binding(0) var<uniform> p: AttnParams;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> tok_meta: array<TokenMeta>;
@group(0) @binding(3) var<storage, read> q: array<f32>;
@group(0) @binding(4) var<storage, read> k_cache: array<vec2<u32>>;
@group(0) @binding(5) var<storage, read> v_cache: array<u32>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
@group(0) @binding(7) var<storage, read_write> part: array<f32>;

var<workgroup> qs: array<vec4<f32>, 64>;
var<workgroup> sc: array<f32, 256>;   // the tile's scores
var<workgroup> pr: array<f32, 256>;   // the tile's exp(score - running max)

const NEG_BIG: f32 = -3.0e38;

// Elements 4i .. 4i + 4 of the K cache (element index 4i).
fn k4(i: u32) -> vec4<f32> {
    if KVF == KV_F16 {
        let w = k_cache[i / 4u];
        return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
    }
    let a = k_cache[i / 2u];
    let b = k_cache[i / 2u + 1u];
    return bitcast<vec4<f32>>(vec4<u32>(a, b));
}

// Element i of the V cache.
fn v1(i: u32) -> f32 {
    if KVF == KV_F16 {
        return unpack2x16float(v_cache[i / 2u])[i % 2u];
    }
    return bitcast<f32>(v_cache[i]);
}

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
    let n_keys = tm.y + 1u;
    // This workgroup's keys: split wid.z of step.kv_splits.
    let splits = max(step.kv_splits, 1u);
    let chunk = (n_keys + splits - 1u) / splits;
    let key0 = min(wid.z * chunk, n_keys);
    let key1 = min(key0 + chunk, n_keys);

    for (var d = lid; d < hd / 4u; d = d + WG) {
        let b = q_base + 4u * d;
        qs[d] = vec4<f32>(q[b], q[b + 1u], q[b + 2u], q[b + 3u]) * p.scale;
    }
    workgroupBarrier();

    var m = NEG_BIG;       // running max of the scores seen so far
    var l = 0.0;           // running sum of exp(score - m)
    var acc = 0.0;         // output dim lid (invocations past head_dim compute a copy of the last dim)
    let dd = min(lid, hd - 1u);
    for (var k0 = key0; k0 < key1; k0 = k0 + WG) {
        let j = k0 + lid;
        var s = NEG_BIG;
        if j < key1 {
            let kb = j * kv_stride + kv_base;
            var acc4 = vec4<f32>(0.0);
            for (var d = 0u; d < hd / 4u; d = d + 1u) {
                acc4 = acc4 + qs[d] * k4(kb + 4u * d);
            }
            s = acc4.x + acc4.y + acc4.z + acc4.w;
        }
        sc[lid] = s;
        workgroupBarrier();

        // Every invocation finds the tile's max; invocation j then computes its own key's weight once.
        let n = min(WG, key1 - k0);
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
            acc = acc + w * v1(vi);
            vi = vi + kv_stride;
        }
        m = tmax;
        // No barrier here: the next tile writes sc only after the barrier above (every invocation is
        // done reading sc), and pr only after its first barrier (every invocation is done reading pr).
    }
    if splits == 1u {
        if lid < hd {
            out[(t * p.n_heads + h) * hd + lid] = acc / l;
        }
        return;
    }
    let pb = ((t * p.n_heads + h) * splits + wid.z) * (hd + 2u);
    if lid < hd {
        part[pb + lid] = acc;
    }
    if lid == 0u {
        part[pb + hd] = m;
        part[pb + hd + 1u] = l;
    }
}

@compute @workgroup_size(WG)
fn attention_reduce(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wid.x;
    let t = wid.y;
    let hd = p.head_dim;
    let splits = step.kv_splits;
    if t >= step.n || lid >= hd {
        return;
    }
    let pb = (t * p.n_heads + h) * splits * (hd + 2u);
    var mx = NEG_BIG;
    for (var s = 0u; s < splits; s = s + 1u) {
        mx = max(mx, part[pb + s * (hd + 2u) + hd]);
    }
    var num = 0.0;
    var den = 0.0;
    for (var s = 0u; s < splits; s = s + 1u) {
        let b = pb + s * (hd + 2u);
        // Empty splits (l = 0, m = NEG_BIG) weigh exp(NEG_BIG - mx) * 0 = 0.
        let c = exp(part[b + hd] - mx);
        num = num + c * part[b + lid];
        den = den + c * part[b + hd + 1u];
    }
    out[(t * p.n_heads + h) * hd + lid] = num / den;
}
