// Log-probabilities over rows of logits, one workgroup per row: for row r, over the ids below n_valid,
// the max logit, the log-sum-exp lse = max + ln(sum_i exp(logits[r, i] - max)), the argmax, the
// log-softmax logits[r, id] - lse at each of the row's n_req requested ids (perplexity: the next token;
// KL divergence: the base model's top-k ids; a server's `logprobs`: the chosen token), and the top_k
// most likely ids with their log-probabilities. Only this compact output is meant to be read back,
// never the [n_rows, vocab] logits.
//
// Bindings (group 0):
//   0 p       uniform  LogprobParams
//   1 logits  storage  array<f32>  [n_rows, row_stride]   read only; ids >= n_valid are ignored
//   2 req     storage  array<u32>  [n_rows, n_req]        requested ids, row-major
//   3 out     storage  array<u32>  [n_rows, out_stride]   out_stride = 4 + n_req + 2 * top_k; f32 as bits:
//                                     0: max logit (f32), 1: lse (f32), 2: argmax (u32, lowest id on
//                                     ties), 3: 0;
//                                     4 + j: log p(req[r, j]) (f32; -inf for an id >= n_valid);
//                                     4 + n_req + 2 t, + 1: the t-th most likely id (u32) and its log p
//                                     (f32), most likely first, lowest id first on ties; past the
//                                     finite candidates: id 0xffffffff, log p -inf
// Workgroup: WG invocations (override; a multiple of 16, at most 256), one row per workgroup; grid
// (min(n_rows, 65535), ceil(n_rows / 65535), 1).
// Phases: 1 each invocation reads ids lid, lid + WG, ... once, keeping an online (max, sum of exp,
// argmax) and, when top_k > 0, its own sorted top-k in private memory (the row's top-k is among the
// union of those). 2 (max, sum, argmax) are combined in a fixed order: 16-entry groups, then the
// groups (3 barriers). 3 the requested ids. 4 top_k rounds of the same two-level selection over each
// invocation's best untaken candidate; the winner's owner moves to its next one (3 barriers a round).
// NaN logits make lse NaN (the host reports it); -inf logits add nothing and are never top-k.

struct LogprobParams {
    n_rows: u32,
    row_stride: u32,
    n_valid: u32,
    n_req: u32,
    // At most MAX_K.
    top_k: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override WG: u32 = 256u;

const MAX_K: u32 = 32u;
const NONE: u32 = 0xffffffffu;
const GROUP: u32 = 16u;

@group(0) @binding(0) var<uniform> p: LogprobParams;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> req: array<u32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

var<workgroup> red_v: array<f32, 256>;
var<workgroup> red_s: array<f32, 256>;
var<workgroup> red_i: array<u32, 256>;
var<workgroup> grp_v: array<f32, 16>;
var<workgroup> grp_s: array<f32, 16>;
var<workgroup> grp_i: array<u32, 16>;
var<workgroup> win_v: f32;
var<workgroup> win_s: f32;
var<workgroup> win_i: u32;

fn neg_inf() -> f32 {
    return bitcast<f32>(0xff800000u);
}

// (v, i) ranks above (bv, bi): larger value, then lower id.
fn better(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    return v > bv || (v == bv && i < bi);
}

// Two partial (max, sum of exp(x - max), argmax) merged.
struct Acc {
    m: f32,
    s: f32,
    i: u32,
}

fn merge(a: Acc, b: Acc) -> Acc {
    let m = max(a.m, b.m);
    let s = a.s * exp(a.m - m) + b.s * exp(b.m - m);
    var i = a.i;
    if better(b.m, b.i, a.m, a.i) {
        i = b.i;
    }
    return Acc(m, s, i);
}

@compute @workgroup_size(WG)
fn logprobs(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y * 65535u + wid.x;
    if row >= p.n_rows {
        return;
    }
    let base = row * p.row_stride;
    let k = min(p.top_k, MAX_K);
    let n = min(p.n_valid, p.row_stride);

    // Phase 1. The max starts at the lowest finite f32, so that exp(x - m) is never NaN for x = -inf.
    var acc = Acc(bitcast<f32>(0xff7fffffu), 0.0, NONE);
    var tv: array<f32, 32>;
    var ti: array<u32, 32>;
    for (var j = 0u; j < MAX_K; j = j + 1u) {
        tv[j] = neg_inf();
        ti[j] = NONE;
    }
    if k == 0u {
        for (var i = lid; i < n; i = i + WG) {
            let x = logits[base + i];
            if x > acc.m {
                acc.s = acc.s * exp(acc.m - x) + 1.0;
                acc.m = x;
                acc.i = i;
            } else {
                acc.s = acc.s + exp(x - acc.m);
            }
        }
    } else {
        for (var i = lid; i < n; i = i + WG) {
            let x = logits[base + i];
            if x > acc.m {
                acc.s = acc.s * exp(acc.m - x) + 1.0;
                acc.m = x;
                acc.i = i;
            } else {
                acc.s = acc.s + exp(x - acc.m);
            }
            // Ids come in increasing order, so a tie with an entry keeps the earlier (lower) id first.
            if x > tv[k - 1u] {
                var j = k - 1u;
                while j > 0u && x > tv[j - 1u] {
                    tv[j] = tv[j - 1u];
                    ti[j] = ti[j - 1u];
                    j = j - 1u;
                }
                tv[j] = x;
                ti[j] = i;
            }
        }
    }

    // Phase 2: groups of 16 in order, then the groups in order.
    red_v[lid] = acc.m;
    red_s[lid] = acc.s;
    red_i[lid] = acc.i;
    workgroupBarrier();
    if lid < WG / GROUP {
        var g = Acc(red_v[lid * GROUP], red_s[lid * GROUP], red_i[lid * GROUP]);
        for (var j = 1u; j < GROUP; j = j + 1u) {
            let e = lid * GROUP + j;
            g = merge(g, Acc(red_v[e], red_s[e], red_i[e]));
        }
        grp_v[lid] = g.m;
        grp_s[lid] = g.s;
        grp_i[lid] = g.i;
    }
    workgroupBarrier();
    if lid == 0u {
        var t = Acc(grp_v[0], grp_s[0], grp_i[0]);
        for (var j = 1u; j < WG / GROUP; j = j + 1u) {
            t = merge(t, Acc(grp_v[j], grp_s[j], grp_i[j]));
        }
        win_v = t.m;
        win_s = t.s;
        win_i = t.i;
    }
    workgroupBarrier();
    let m = win_v;
    let log_s = log(win_s);
    let ob = row * (4u + p.n_req + 2u * k);
    if lid == 0u {
        out[ob] = bitcast<u32>(m);
        out[ob + 1u] = bitcast<u32>(m + log_s);
        out[ob + 2u] = win_i;
        out[ob + 3u] = 0u;
    }

    // Phase 3.
    for (var j = lid; j < p.n_req; j = j + WG) {
        let id = req[row * p.n_req + j];
        var lp = neg_inf();
        if id < n {
            lp = (logits[base + id] - m) - log_s;
        }
        out[ob + 4u + j] = bitcast<u32>(lp);
    }

    // Phase 4. The workgroup memory of phase 2 is reused: every read of it precedes the last barrier.
    var c = 0u;
    let top = ob + 4u + p.n_req;
    for (var r = 0u; r < k; r = r + 1u) {
        var hv = neg_inf();
        var hi = NONE;
        if c < k {
            hv = tv[c];
            hi = ti[c];
        }
        red_v[lid] = hv;
        red_i[lid] = hi;
        workgroupBarrier();
        if lid < WG / GROUP {
            var bv = red_v[lid * GROUP];
            var bi = red_i[lid * GROUP];
            for (var j = 1u; j < GROUP; j = j + 1u) {
                let e = lid * GROUP + j;
                if better(red_v[e], red_i[e], bv, bi) {
                    bv = red_v[e];
                    bi = red_i[e];
                }
            }
            grp_v[lid] = bv;
            grp_i[lid] = bi;
        }
        workgroupBarrier();
        if lid == 0u {
            var bv = grp_v[0];
            var bi = grp_i[0];
            for (var j = 1u; j < WG / GROUP; j = j + 1u) {
                if better(grp_v[j], grp_i[j], bv, bi) {
                    bv = grp_v[j];
                    bi = grp_i[j];
                }
            }
            win_i = bi;
            var lp = neg_inf();
            if bi != NONE {
                lp = (bv - m) - log_s;
            }
            out[top + 2u * r] = bi;
            out[top + 2u * r + 1u] = bitcast<u32>(lp);
        }
        workgroupBarrier();
        if hi != NONE && hi == win_i {
            c = c + 1u;
        }
    }
}
