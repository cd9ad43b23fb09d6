// Row reduction, subgroup flavour: appended to a kernel module (matvec.wgsl, rmsnorm.wgsl) when the
// device has SUBGROUP and a fixed subgroup size. The kernel is then instantiated with TPR (threads per
// row) equal to the subgroup size, so the TPR invocations that share a row are exactly one subgroup and
// the sum needs no barrier and no workgroup memory.
//
// Requires from the kernel module: nothing but the call, which must be in uniform control flow.

fn row_sum(v: f32, lid: u32) -> f32 {
    return subgroupAdd(v);
}
