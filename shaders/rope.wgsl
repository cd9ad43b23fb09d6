// Rotary position embedding, NeoX / rotate-half form (Qwen2, transformers' rotate_half): within each
// head, element i < half pairs with element i + half, and for the token at position pos
//   out[i]        = v[i] * cos(pos * f_i) - v[i + half] * sin(pos * f_i)
//   out[i + half] = v[i + half] * cos(pos * f_i) + v[i] * sin(pos * f_i),   f_i = theta^(-2i / head_dim).
// cos / sin come from a table computed once on the CPU in f64 (exact for every position, unlike f32
// angles on the GPU).
//
// Two entry points:
//   rope_q:   rotates q in place.
//   store_kv: rotates k and writes it, with v unchanged, into the KV cache rows pos0 .. pos0 + n_tokens.
//
// Bindings (group 0):
//   0 p        uniform  RopeParams
//   1 step     uniform  Step                       (n_tokens, pos0)
//   2 table    storage  array<vec2<f32>> [ctx, half]  (cos, sin)
//   3 src      storage  array<f32>  rope_q: q [n_tokens, n_heads * head_dim] (read_write, rotated in place)
//                                   store_kv: k [n_tokens, n_heads * head_dim]
//   4 v        storage  array<f32>  store_kv only: v [n_tokens, n_heads * head_dim]
//   5 k_cache  storage  array<f32>  store_kv only: [ctx, n_heads * head_dim]
//   6 v_cache  storage  array<f32>  store_kv only: [ctx, n_heads * head_dim]
// (for store_kv, n_heads means the KV heads.)
// Workgroup: 64 invocations, one per (head, i < half) pair; grid (ceil(n_heads * half / 64), n_tokens).

struct RopeParams {
    n_heads: u32,
    head_dim: u32,
    _pad0: u32,
    _pad1: u32,
}

struct Step {
    n_tokens: u32,
    pos0: u32,
    _pad0: u32,
    _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: RopeParams;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> table: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read_write> src: array<f32>;
@group(0) @binding(4) var<storage, read> v: array<f32>;
@group(0) @binding(5) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(6) var<storage, read_write> v_cache: array<f32>;

struct Pair {
    ok: bool,
    i0: u32,      // index of element i in a [n_tokens, n_heads * head_dim] row-major tensor
    i1: u32,      // index of element i + half
    row: u32,     // offset of the token's row
    cs: vec2<f32>,
}

fn pair(gid: vec3<u32>) -> Pair {
    let half = p.head_dim / 2u;
    let t = gid.y;
    var r: Pair;
    r.ok = t < step.n_tokens && gid.x < p.n_heads * half;
    if !r.ok {
        return r;
    }
    let h = gid.x / half;
    let i = gid.x % half;
    let width = p.n_heads * p.head_dim;
    r.row = t * width;
    r.i0 = r.row + h * p.head_dim + i;
    r.i1 = r.i0 + half;
    r.cs = table[(step.pos0 + t) * half + i];
    return r;
}

@compute @workgroup_size(64)
fn rope_q(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = pair(gid);
    if !r.ok {
        return;
    }
    let a = src[r.i0];
    let b = src[r.i1];
    src[r.i0] = a * r.cs.x - b * r.cs.y;
    src[r.i1] = b * r.cs.x + a * r.cs.y;
}

@compute @workgroup_size(64)
fn store_kv(@builtin(global_invocation_id) gid: vec3<u32>) {
    let r = pair(gid);
    if !r.ok {
        return;
    }
    let a = src[r.i0];
    let b = src[r.i1];
    // Row t of k / v goes to cache row pos0 + t.
    let shift = step.pos0 * p.n_heads * p.head_dim;
    k_cache[shift + r.i0] = a * r.cs.x - b * r.cs.y;
    k_cache[shift + r.i1] = b * r.cs.x + a * r.cs.y;
    v_cache[shift + r.i0] = v[r.i0];
    v_cache[shift + r.i1] = v[r.i1];
}
