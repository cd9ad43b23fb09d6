// Rotary position embedding with the KV-cache write, in one dispatch (the step between the QKV projection
// and attention). For each token of the call, at its own (slot, position) from `tok_meta`:
//   - every q head is (optionally normalised, then) rotated in place in the qkv row;
//   - every k head is (optionally normalised, then) rotated and written to the token's KV cache row,
//     slot * slot_rows + pos; its v head is copied there unchanged.
// Rotation, NeoX / rotate-half form (transformers' rotate_half, used by Qwen2, Qwen3 and Llama): within a
// head, element i < half pairs with element i + half:
//   out[i]        = v[i] * cos(pos * f_i) - v[i + half] * sin(pos * f_i)
//   out[i + half] = v[i + half] * cos(pos * f_i) + v[i] * sin(pos * f_i)
// with the model's frequencies f_i (rope_theta and its scaling). cos / sin come from a table computed once
// on the CPU in f64 (exact for every position, unlike f32 angles on the GPU).
// QK_NORM (Qwen3): before the rotation each q / k head becomes w * x / sqrt(mean(x^2) + eps), w the
// layer's q_norm / k_norm weight [head_dim], in f32 as transformers' RMSNorm.
// KVF: the cache holds f32 (one word per element) or f16 (two per word, element 2i in the low half).
//
// Bindings (group 0):
//   0 p        uniform  RopeParams
//   1 step     uniform  Step                          (n: tokens)
//   2 table    storage  array<vec2<f32>>  [max_pos, half]   (cos, sin)
//   3 tok_meta storage  array<TokenMeta>  [n_tokens]        (slot, pos)
//   4 qkv      storage  array<f32>  [n_tokens, qkv_stride]  read_write: q [n_heads * head_dim] at column 0,
//                                   k [n_kv_heads * head_dim] after it, v after k
//   5 q_norm   storage  array<f32>  [head_dim]   (read only when QK_NORM)
//   6 k_norm   storage  array<f32>  [head_dim]   (read only when QK_NORM)
//   7 k_cache  storage  array<u32>  [slots * slot_rows, n_kv_heads * head_dim] elements, format KVF
//   8 v_cache  storage  array<u32>  [slots * slot_rows, n_kv_heads * head_dim] elements, format KVF
// Workgroup: 64 invocations, one per (token, head j): j < n_heads a q head, else k / v head j - n_heads.
// Each invocation owns its head (the norm reads the whole head before the rotation writes it), so there
// is no barrier. Grid (ceil((n_heads + n_kv_heads) / 64), n_tokens).
// Shared structs come from the prelude (engine/src/uniforms.rs).

override QK_NORM: bool = false;
override KVF: u32 = KV_F32;

@group(0) @binding(0) var<uniform> p: RopeParams;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> tok_meta: array<TokenMeta>;
@group(0) @binding(4) var<storage, read_write> qkv: array<f32>;
@group(0) @binding(5) var<storage, read> q_norm: array<f32>;
@group(0) @binding(6) var<storage, read> k_norm: array<f32>;
@group(0) @binding(7) var<storage, read_write> k_cache: array<u32>;
@group(0) @binding(8) var<storage, read_write> v_cache: array<u32>;

// 1 / sqrt(mean(x^2) + eps) over the head at qkv[base ..].
fn head_inv_rms(base: u32) -> f32 {
    var ss = 0.0;
    for (var i = 0u; i < p.head_dim; i = i + 1u) {
        let v = qkv[base + i];
        ss = ss + v * v;
    }
    return inverseSqrt(ss / f32(p.head_dim) + p.eps);
}

// The head's elements i and i + half, normalised when QK_NORM (`is_q` picks the weight).
fn head_pair(base: u32, i: u32, half: u32, inv: f32, is_q: bool) -> vec2<f32> {
    var a = qkv[base + i];
    var b = qkv[base + i + half];
    if QK_NORM {
        var wa: f32;
        var wb: f32;
        if is_q {
            wa = q_norm[i];
            wb = q_norm[i + half];
        } else {
            wa = k_norm[i];
            wb = k_norm[i + half];
        }
        a = wa * (a * inv);
        b = wb * (b * inv);
    }
    return vec2<f32>(a, b);
}

@compute @workgroup_size(64)
fn rope_store(@builtin(global_invocation_id) gid: vec3<u32>) {
    let t = gid.y;
    let j = gid.x;
    if t >= step.n || j >= p.n_heads + p.n_kv_heads {
        return;
    }
    let hd = p.head_dim;
    let half = hd / 2u;
    let m = tok_meta[t];
    let cs_base = m.y * half;
    let row = t * p.qkv_stride;
    if j < p.n_heads {
        let base = row + j * hd;
        var inv = 1.0;
        if QK_NORM {
            inv = head_inv_rms(base);
        }
        for (var i = 0u; i < half; i = i + 1u) {
            let v = head_pair(base, i, half, inv, true);
            let cs = table[cs_base + i];
            qkv[base + i] = v.x * cs.x - v.y * cs.y;
            qkv[base + i + half] = v.y * cs.x + v.x * cs.y;
        }
        return;
    }
    let kh = j - p.n_heads;
    let kvd = p.n_kv_heads * hd;
    let kbase = row + p.n_heads * hd + kh * hd;
    let vbase = kbase + kvd;
    // The head's first element in the cache (elements; f16: two per word, hd is even).
    let cache = (m.x * p.slot_rows + m.y) * kvd + kh * hd;
    var inv = 1.0;
    if QK_NORM {
        inv = head_inv_rms(kbase);
    }
    // Rotated k element e: the pair (i, i + half) gives elements i and i + half.
    for (var e = 0u; e < hd; e = e + 2u) {
        var k2: vec2<f32>;
        for (var c = 0u; c < 2u; c = c + 1u) {
            let el = e + c;
            let i = el % half;
            let v = head_pair(kbase, i, half, inv, false);
            let cs = table[cs_base + i];
            k2[c] = select(v.x * cs.x - v.y * cs.y, v.y * cs.x + v.x * cs.y, el >= half);
        }
        let v2 = vec2<f32>(qkv[vbase + e], qkv[vbase + e + 1u]);
        if KVF == KV_F16 {
            k_cache[(cache + e) / 2u] = pack2x16float(k2);
            v_cache[(cache + e) / 2u] = pack2x16float(v2);
        } else {
            k_cache[cache + e] = bitcast<u32>(k2.x);
            k_cache[cache + e + 1u] = bitcast<u32>(k2.y);
            v_cache[cache + e] = bitcast<u32>(v2.x);
            v_cache[cache + e + 1u] = bitcast<u32>(v2.y);
        }
    }
}
