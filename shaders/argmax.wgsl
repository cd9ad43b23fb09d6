// Greedy token choice, one row of logits per workgroup: out[r] = the index of the largest of
// logits[r, 0 .. n_valid] (the lowest index on ties, as torch.argmax). Ids at or above n_valid (embedding
// rows the tokenizer does not define) are never chosen. NaN logits are skipped.
//
// Bindings (group 0):
//   0 p       uniform  ArgmaxParams
//   1 step    uniform  Step                     (n: rows, the call's outputs)
//   2 logits  storage  array<f32>  [step.n, row_stride]
//   3 out     storage  array<u32>  [step.n]
// Workgroup: 256 invocations per row; each scans a strided slice, then a tree reduction in workgroup
// memory (8 barriers, once per row). Grid (1, step.n, 1).
// Shared structs come from the prelude (engine/src/uniforms.rs).

@group(0) @binding(0) var<uniform> p: ArgmaxParams;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;

var<workgroup> best_v: array<f32, 256>;
var<workgroup> best_i: array<u32, 256>;

fn better(v: f32, i: u32, bv: f32, bi: u32) -> bool {
    return v > bv || (v == bv && i < bi);
}

@compute @workgroup_size(256)
fn argmax(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let row = wid.y;
    if row >= step.n {
        return;
    }
    let base = row * p.row_stride;
    var bv = -3.4e38;
    var bi = 0xffffffffu;
    for (var i = lid; i < p.n_valid; i = i + 256u) {
        let v = logits[base + i];
        if v == v && better(v, i, bv, bi) {
            bv = v;
            bi = i;
        }
    }
    best_v[lid] = bv;
    best_i[lid] = bi;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s / 2u) {
        if lid < s && better(best_v[lid + s], best_i[lid + s], best_v[lid], best_i[lid]) {
            best_v[lid] = best_v[lid + s];
            best_i[lid] = best_i[lid + s];
        }
        workgroupBarrier();
    }
    if lid == 0u {
        out[row] = best_i[0];
    }
}
