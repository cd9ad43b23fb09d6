// Row reduction, portable flavour: appended to a kernel module (matvec.wgsl, rmsnorm.wgsl) on devices
// without subgroups (or with a variable subgroup size). A tree reduction in workgroup memory over the TPR
// consecutive invocations that share a row; TPR must be a power of two and the workgroup at most 256.
//
// Requires from the kernel module: `override TPR: u32`, and the call in uniform control flow.

var<workgroup> red: array<f32, 256>;

fn row_sum(v: f32, lid: u32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    let lane = lid % TPR;
    for (var s = TPR / 2u; s > 0u; s = s / 2u) {
        if lane < s {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    let total = red[lid - lane];
    workgroupBarrier();
    return total;
}
