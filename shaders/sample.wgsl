// Token sampling, one row of logits per workgroup (a call's outputs: one row per sequence that samples),
// each row with its own parameters, penalty window and draw. transformers' order
// (generation/utils.py): repetition penalty -> temperature -> top-k -> top-p -> min-p -> a draw with the
// uniform u in [0, 1) that the host supplies. Temperature 0 is greedy: the argmax of the penalised
// logits, the lowest id on ties (as argmax.wgsl). Ids at or above n_valid are never chosen. Exact: every
// threshold is found by searching the order-preserving u32 image of the scores ("keys"); no filter
// depends on a candidate cap (the short list below is only a shortcut, taken when it holds every id).
//
// Bindings (group 0):
//   0 params  storage  array<SampleParams>  [rows]            row r's parameters (SampleParams: prelude)
//   1 logits  storage  array<f32>        [rows, row_stride]   read only; ids < n_valid are candidates
//   2 window  storage  array<u32>        [sum of n_window]    ids to penalise, row r's at window_off
//                                                             (duplicates are harmless)
//   3 keys    storage  array<vec4<u32>>  [rows, ceil(n_valid / 4)]  scratch: key(score) of each id,
//                                                             0 past n_valid
//   4 out     storage  array<u32>        [rows, 8]   per row, 0: the chosen id; debugging: 1: the kept count, 2: the kept
//                                               mass (f32 bits: sum of exp(score - max) over the kept set),
//                                               3: the final threshold key (kept = key >= it, then min-p),
//                                               4: the short list's length (0: not used), 5..7: unused
// Workgroup: 256 invocations per row: dispatch (rows, 1, 1). Phases:
//   1 keys[i] = key(logit / T), strided by vec4, and each invocation's max. With a window: (storage
//     barrier) the window ids get the penalised logit, written from the original logit so that a
//     repeated id is penalised once, and the max is taken again.
//   2 the max key and its lowest id (two-level reduction in workgroup memory). Greedy stops here.
//   3 top-k: the largest t with count(key >= t) >= k, which is the k-th largest key; ties at it are kept.
//   4 top-p: the largest t >= t_k with mass(key >= t) >= top_p * mass(key >= t_k), mass = exp(s - max).
//     Every key k >= t then has mass(key > k) < top_p * Z, which is transformers' rule (sort ascending,
//     remove cumsum <= 1 - top_p) for distinct scores. Tie caveat: tokens with equal scores are kept or
//     dropped together here, while transformers' sort may split a tie group at the boundary.
//     Both searches: 12 passes, each counting (or summing mass) at 8 thresholds in [lo, hi] (two vec4
//     accumulators per invocation): the first spaced geometrically below the max, the others evenly,
//     which narrows hi - lo 8-fold per pass (8^11 > 2^32).
//     Short list: once count(key >= lo) <= 256, the next pass also appends those keys to workgroup
//     memory (one per invocation, sorted by id); the later passes, top-p and the draw read the list
//     instead of all the keys. With a small k, or a peaked top-p, that is after 2 or 3 full passes.
//     Otherwise (k > 256, big tie groups, flat top-p) every pass reads all the keys.
//   5 min-p: kept also needs exp(s - max) >= min_p (the max has exp 0 = 1, so prob >= min_p * max prob).
//   6 the draw: each invocation sums the kept masses of its contiguous chunk of ids (or its list entry);
//     invocation 0 scans the 256 sums in id order and finds where the running mass first exceeds
//     u * total; that chunk is staged in workgroup memory and rescanned with the same additions. If the
//     total is 0 or not finite (all -inf), the argmax is chosen.
// Barriers: 3 per search pass (5 while summing mass), 2 to 6 elsewhere; phases that are off (top_k 0,
// top_p 1, no window) are skipped by uniform branches. Every sum has a fixed order: same inputs, same id.

@group(0) @binding(0) var<storage, read> params: array<SampleParams>;
@group(0) @binding(1) var<storage, read> logits: array<f32>;
@group(0) @binding(2) var<storage, read> window: array<u32>;
@group(0) @binding(3) var<storage, read_write> keys: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;

const WG: u32 = 256u;
// The short list holds one id per invocation.
const CAP: u32 = 256u;
// Search passes: one geometric, then 11 that narrow the key range 8-fold (8^11 > 2^32).
const PASSES: u32 = 12u;
// key(-inf). NaN logits get it too.
const NEG_INF_KEY: u32 = 0x007fffffu;
const NEG_ZERO_KEY: u32 = 0x7fffffffu;
const POS_ZERO_KEY: u32 = 0x80000000u;

var<workgroup> part: array<vec4<f32>, 512>;
var<workgroup> part2: array<vec4<f32>, 32>;
var<workgroup> part3: array<vec4<f32>, 2>;
var<workgroup> arg_k: array<u32, 256>;
var<workgroup> arg_i: array<u32, 256>;
var<workgroup> arg2_k: array<u32, 16>;
var<workgroup> arg2_i: array<u32, 16>;
var<workgroup> list_key: array<u32, 256>;
var<workgroup> list_id: array<u32, 256>;
var<workgroup> list_n: atomic<u32>;
// Invocation 0's draw, for all: (chunk, total valid) and (goal, mass before the chunk).
var<workgroup> sel_u: vec2<u32>;
var<workgroup> sel_f: vec2<f32>;

// Short-list state. Every invocation computes the same values from the same reductions.
var<private> listed: bool;
var<private> list_len: u32;
// This invocation's list entry (key 0 = none: below every threshold).
var<private> my_key: u32;
var<private> my_id: u32;
// This workgroup's row: its parameters, and where its logits, keys and outputs start.
var<private> p: SampleParams;
var<private> lbase: u32;
var<private> kbase: u32;
var<private> obase: u32;

// Order-preserving image of an f32 in u32: a < b (as floats, no NaN) iff key(a) < key(b).
fn key(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}

fn score(k: u32) -> f32 {
    return bitcast<f32>(select(k & 0x7fffffffu, ~k, (k & 0x80000000u) == 0u));
}

// The scores of four keys (key 0, the padding past n_valid, decodes to a NaN that is always masked).
fn scores4(k: vec4<u32>) -> vec4<f32> {
    let neg = (k & vec4<u32>(0x80000000u)) == vec4<u32>(0u);
    return bitcast<vec4<f32>>(select(k & vec4<u32>(0x7fffffffu), ~k, neg));
}

// The key of a logit after the penalty (for window ids) and the temperature; NaN -> -inf, -0 -> +0.
fn score_key(x: f32, penalise: bool) -> u32 {
    if (bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u {
        return NEG_INF_KEY;
    }
    var s = x;
    if penalise {
        s = select(s / p.penalty, s * p.penalty, s < 0.0);
    }
    if (p.flags & SAMPLE_GREEDY) == 0u {
        s = s / p.temperature;
    }
    let k = key(s);
    return select(k, POS_ZERO_KEY, k == NEG_ZERO_KEY);
}

fn better(k: u32, i: u32, bk: u32, bi: u32) -> bool {
    return k > bk || (k == bk && i < bi);
}

// The workgroup sum of two vec4 per invocation, in a fixed order. Three barriers: 512 vec4 -> 32 partial
// sums (by 32 invocations) -> 2 (by 2) -> every invocation. (Fewer loads per invocation than a
// two-level version, which matters where workgroup memory is emulated, as on lavapipe.)
fn reduce2(lid: u32, a: vec4<f32>, b: vec4<f32>) -> array<vec4<f32>, 2> {
    part[lid] = a;
    part[WG + lid] = b;
    workgroupBarrier();
    if lid < 32u {
        let base = (lid >> 4u) * WG + (lid & 15u) * 16u;
        var s = vec4<f32>(0.0);
        for (var j = 0u; j < 16u; j++) {
            s += part[base + j];
        }
        part2[lid] = s;
    }
    workgroupBarrier();
    if lid < 2u {
        var s = vec4<f32>(0.0);
        for (var j = 0u; j < 16u; j++) {
            s += part2[lid * 16u + j];
        }
        part3[lid] = s;
    }
    workgroupBarrier();
    return array<vec4<f32>, 2>(part3[0], part3[1]);
}

// Adds one key's weights at the 8 thresholds: row 0 weighs w0, rows 1..7 weigh w.
fn tally(acc: ptr<function, array<vec4<f32>, 2>>, k: u32, w0: f32, w: f32, ta: vec4<u32>, tb: vec4<u32>) {
    let kk = vec4<u32>(k);
    (*acc)[0] += select(vec4<f32>(0.0), vec4<f32>(w0, w, w, w), kk >= ta);
    (*acc)[1] += select(vec4<f32>(0.0), vec4<f32>(w), kk >= tb);
}

// The largest t in [lo, hi] with V(t) >= goal, where V(t) sums a weight over the ids with key >= t:
// 1 (a count, exact in f32 below 2^24 ids) or, with use_mass, exp(score - m); then the goal is
// top_p * V(lo), V(lo) taken from the first pass. Requires V(lo) >= goal and lo >= 1 (padding out).
// Each pass evaluates V at 8 thresholds t_0 = lo < t_1 <= .. <= t_7 <= hi and keeps [t_J, t_(J+1) - 1]
// for the last j that passes (V is non-increasing in t, also in f32). The first pass spaces them
// geometrically below hi (hi - 2^28, hi - 2^24, .., hi - 2^4: the answer is usually near the max),
// the 11 others linearly (t_j = lo + min(j * step, hi - lo), step = ((hi - lo) >> 3) + 1), which narrows
// any range 8-fold per pass: 12 passes in all. Once count(key >= lo) <= CAP, the next pass lists those
// keys in workgroup memory and later passes read the list. Row 0 (lo itself) carries that count;
// when summing mass, the first pass sums Z = V(lo) there instead.
fn search(lid: u32, lo_in: u32, hi_in: u32, goal_in: f32, use_mass: bool, m: f32) -> u32 {
    let n4 = (p.n_valid + 3u) / 4u;
    var lo = lo_in;
    var hi = hi_in;
    var goal = goal_in;
    // An upper bound of count(key >= lo).
    var cnt = select(f32(p.n_valid), 3.4e38, use_mass);
    for (var it = 0u; it < PASSES; it++) {
        let w = hi - lo;
        var ta: vec4<u32>;
        var tb: vec4<u32>;
        if it == 0u {
            ta = vec4<u32>(hi) - min(vec4<u32>(w, 1u << 28u, 1u << 24u, 1u << 20u), vec4<u32>(w));
            tb = vec4<u32>(hi) - min(vec4<u32>(1u << 16u, 1u << 12u, 1u << 8u, 1u << 4u), vec4<u32>(w));
        } else {
            let step = (w >> 3u) + 1u;
            ta = vec4<u32>(lo) + min(vec4<u32>(0u, 1u, 2u, 3u) * step, vec4<u32>(w));
            tb = vec4<u32>(lo) + min(vec4<u32>(4u, 5u, 6u, 7u) * step, vec4<u32>(w));
        }
        let z_pass = use_mass && it == 0u;
        var acc = array<vec4<f32>, 2>(vec4<f32>(0.0), vec4<f32>(0.0));
        let append = !listed && cnt <= f32(CAP);
        // A full pass over the keys; or one that lists the few keys >= lo and weighs only them (the
        // others weigh at no threshold); or the list entry (none past list_len: key 0).
        let end = select(n4, 0u, listed || append);
        for (var i = lid; i < end; i += WG) {
            let k4 = keys[kbase + i];
            var e4 = vec4<f32>(1.0);
            if use_mass {
                e4 = exp(scores4(k4) - m);
            }
            let r4 = select(vec4<f32>(1.0), e4, z_pass);
            tally(&acc, k4.x, r4.x, e4.x, ta, tb);
            tally(&acc, k4.y, r4.y, e4.y, ta, tb);
            tally(&acc, k4.z, r4.z, e4.z, ta, tb);
            tally(&acc, k4.w, r4.w, e4.w, ta, tb);
        }
        let end_append = select(0u, n4, append);
        for (var i = lid; i < end_append; i += WG) {
            let k4 = keys[kbase + i];
            if any(k4 >= vec4<u32>(lo)) {
                for (var c = 0u; c < 4u; c++) {
                    let k = k4[c];
                    if k >= lo {
                        var e = 1.0;
                        if use_mass {
                            e = exp(score(k) - m);
                        }
                        tally(&acc, k, select(1.0, e, z_pass), e, ta, tb);
                        let slot = atomicAdd(&list_n, 1u);
                        if slot < CAP {
                            list_key[slot] = k;
                            list_id[slot] = i * 4u + c;
                        }
                    }
                }
            }
        }
        if listed {
            var e = 1.0;
            if use_mass {
                e = exp(score(my_key) - m);
            }
            tally(&acc, my_key, select(1.0, e, z_pass), e, ta, tb);
        }
        let v = reduce2(lid, acc[0], acc[1]);
        if z_pass {
            goal = p.top_p * v[0].x;
        }
        let one = vec4<u32>(1u);
        let zero = vec4<u32>(0u);
        let big = vec4<f32>(goal);
        let jj = dot(select(zero, one, v[0] >= big), vec4<u32>(0u, 1u, 1u, 1u))
            + dot(select(zero, one, v[1] >= big), one);
        let nx = min(jj + 1u, 7u);
        if jj < 7u {
            hi = select(ta[nx & 3u], tb[nx & 3u], nx >= 4u) - 1u;
        }
        lo = select(ta[jj & 3u], tb[jj & 3u], jj >= 4u);
        if !use_mass {
            cnt = select(v[0][jj & 3u], v[1][jj & 3u], jj >= 4u);
        } else if it > 0u {
            cnt = v[0].x;
        }
        if append {
            // reduce2's barriers made the appends visible. The list holds every key >= the old lo.
            listed = true;
            list_len = min(atomicLoad(&list_n), CAP);
            my_key = select(0u, list_key[lid], lid < list_len);
            my_id = select(0xffffffffu, list_id[lid], lid < list_len);
        }
        if use_mass {
            // Mass sums need a fixed order: sort a new list by id now (counting sorts it afterwards).
            sort_list(lid, append);
        }
    }
    return lo;
}

// Sort the short list by id (ranks by counting; ids are distinct); then entry lid is this
// invocation's. Does nothing but its two barriers unless `now`.
fn sort_list(lid: u32, now: bool) {
    let mine = now && lid < list_len;
    var rank = 0u;
    if mine {
        for (var j = 0u; j < list_len; j++) {
            rank += select(0u, 1u, list_id[j] < my_id);
        }
    }
    workgroupBarrier();
    if mine {
        list_key[rank] = my_key;
        list_id[rank] = my_id;
    }
    workgroupBarrier();
    if now {
        my_key = select(0u, list_key[lid], lid < list_len);
        my_id = select(0xffffffffu, list_id[lid], lid < list_len);
    }
}

// exp(score - m) where the id is kept (key >= t, then min-p), else 0.
fn kept_mass4(k4: vec4<u32>, t: u32, m: f32) -> vec4<f32> {
    let e = exp(scores4(k4) - m);
    let kept = (k4 >= vec4<u32>(t)) & (e >= vec4<f32>(p.min_p));
    return select(vec4<f32>(0.0), e, kept);
}

@compute @workgroup_size(256)
fn sample(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    p = params[wid.x];
    let n = p.n_valid;
    let n4 = (n + 3u) / 4u;
    lbase = wid.x * p.row_stride;
    kbase = wid.x * n4;
    obase = wid.x * 8u;
    listed = false;
    list_len = 0u;
    my_key = 0u;
    my_id = 0xffffffffu;
    if lid == 0u {
        atomicStore(&list_n, 0u);
    }

    // 1. Keys of the tempered logits, and this invocation's max key (lowest id on ties: ids ascend
    // within an invocation, so '>' keeps the lowest).
    var bk = 0u;
    var bi = 0xffffffffu;
    for (var i = lid; i < n4; i += WG) {
        var k4 = vec4<u32>(0u);
        for (var c = 0u; c < 4u; c++) {
            let id = i * 4u + c;
            if id < n {
                let k = score_key(logits[lbase + id], false);
                k4[c] = k;
                if k > bk {
                    bk = k;
                    bi = id;
                }
            }
        }
        keys[kbase + i] = k4;
    }
    // The window ids are rewritten with the penalty; then the max is taken again.
    if p.n_window > 0u {
        storageBarrier();
        for (var j = lid; j < p.n_window; j += WG) {
            let id = window[p.window_off + j];
            if id < n {
                keys[kbase + (id >> 2u)][id & 3u] = score_key(logits[lbase + id], true);
            }
        }
        storageBarrier();
        bk = 0u;
        bi = 0xffffffffu;
        for (var i = lid; i < n4; i += WG) {
            let k4 = keys[kbase + i];
            for (var c = 0u; c < 4u; c++) {
                if k4[c] > bk {
                    bk = k4[c];
                    bi = i * 4u + c;
                }
            }
        }
    }

    // 2. The max key over the workgroup.
    arg_k[lid] = bk;
    arg_i[lid] = bi;
    workgroupBarrier();
    if lid < 16u {
        var k = arg_k[lid * 16u];
        var i = arg_i[lid * 16u];
        for (var j = 1u; j < 16u; j++) {
            if better(arg_k[lid * 16u + j], arg_i[lid * 16u + j], k, i) {
                k = arg_k[lid * 16u + j];
                i = arg_i[lid * 16u + j];
            }
        }
        arg2_k[lid] = k;
        arg2_i[lid] = i;
    }
    workgroupBarrier();
    var kmax = arg2_k[0];
    var imax = arg2_i[0];
    for (var j = 1u; j < 16u; j++) {
        if better(arg2_k[j], arg2_i[j], kmax, imax) {
            kmax = arg2_k[j];
            imax = arg2_i[j];
        }
    }
    if (p.flags & SAMPLE_GREEDY) != 0u {
        if lid == 0u {
            out[obase + 0u] = imax;
            out[obase + 1u] = 1u;
            out[obase + 2u] = bitcast<u32>(1.0);
            out[obase + 3u] = kmax;
            out[obase + 4u] = 0u;
        }
        return;
    }
    let m = score(kmax);

    // 3. top-k, then the short list sorted by id (a fixed order for the mass sums that follow).
    var t = 1u;
    if p.top_k > 0u {
        t = search(lid, 1u, kmax, f32(p.top_k), false, m);
        sort_list(lid, listed);
    }
    // 4. top-p.
    if (p.flags & SAMPLE_TOP_P) != 0u {
        t = search(lid, t, kmax, 0.0, true, m);
    }

    // 5, 6. Kept masses of this invocation's contiguous chunk of ids (or its list entry), in id order.
    storageBarrier();
    let chunk = (n4 + WG - 1u) / WG;
    var mass = 0.0;
    var count = 0u;
    if listed {
        let e = exp(score(my_key) - m);
        let kept = my_key >= t && e >= p.min_p;
        mass = select(0.0, e, kept);
        count = select(0u, 1u, kept);
    } else {
        let begin = min(lid * chunk, n4);
        let end = min(begin + chunk, n4);
        for (var i = begin; i < end; i++) {
            let k4 = keys[kbase + i];
            let e = kept_mass4(k4, t, m);
            mass += e.x;
            mass += e.y;
            mass += e.z;
            mass += e.w;
            // With min-p on, kept means e >= min_p > 0; without it, an id may be kept with e = 0.
            let kept = select(k4 >= vec4<u32>(t), e > vec4<f32>(0.0), p.min_p > 0.0);
            count += dot(select(vec4<u32>(0u), vec4<u32>(1u), kept), vec4<u32>(1u));
        }
    }
    part[lid] = vec4<f32>(mass, f32(count), 0.0, 0.0);
    workgroupBarrier();
    var total = 0.0;
    var kept_n = 0.0;
    if lid == 0u {
        for (var j = 0u; j < WG; j++) {
            total += part[j].x;
            kept_n += part[j].y;
        }
        let valid = total > 0.0 && total <= 3.4e38;
        let goal = p.u * total;
        // The chunk where the running mass first exceeds the goal (else the last one with mass).
        var base = 0.0;
        var jc = 0u;
        var jbase = 0.0;
        for (var j = 0u; j < WG; j++) {
            let x = part[j].x;
            if x > 0.0 {
                jc = j;
                jbase = base;
            }
            let next = base + x;
            if next > goal {
                break;
            }
            base = next;
        }
        sel_u = vec2<u32>(jc, select(0u, 1u, valid));
        sel_f = vec2<f32>(goal, jbase);
    }
    workgroupBarrier();
    // Stage the chosen chunk's kept masses (chunks of up to 256 vec4: n_valid <= 262144).
    let jc = sel_u.x;
    let b = jc * chunk;
    let staged = !listed && chunk <= WG;
    if staged && lid < chunk && b + lid < n4 {
        part[WG + lid] = kept_mass4(keys[kbase + b + lid], t, m);
    }
    workgroupBarrier();
    if lid == 0u {
        var pick = imax;
        if sel_u.y != 0u {
            if listed {
                pick = list_id[jc];
            } else {
                // Rescan with the same additions as the chunk's sum; the last id with mass is the
                // fallback (reached only if u * total rounds up to the total).
                let goal = sel_f.x;
                let jbase = sel_f.y;
                let len = min(b + chunk, n4) - b;
                var cum = 0.0;
                var done = false;
                for (var v = 0u; v < len && !done; v++) {
                    var e: vec4<f32>;
                    if staged {
                        e = part[WG + v];
                    } else {
                        e = kept_mass4(keys[kbase + b + v], t, m);
                    }
                    for (var c = 0u; c < 4u && !done; c++) {
                        cum += e[c];
                        if e[c] > 0.0 {
                            pick = (b + v) * 4u + c;
                            done = jbase + cum > goal;
                        }
                    }
                }
            }
        }
        out[obase + 0u] = pick;
        out[obase + 1u] = u32(kept_n);
        out[obase + 2u] = bitcast<u32>(total);
        out[obase + 3u] = t;
        out[obase + 4u] = select(0u, list_len, listed);
    }
}
