// The end of the linear kernels, matvec.wgsl and matvec_quant.wgsl (one source for both, appended to
// each module at pipeline creation, engine/src/kernels.rs): the TPR lanes' partial sums of each of the
// invocation's RPI rows x TOK tokens (`acc`) combined by `row_sum`, scaled by the rmsnorm factor
// (NORM: from the sums of squares in `ss`), then stored, lane 0 writing: each row with the bias
// (LINEAR_BIAS) and onto y's previous value (LINEAR_ACCUMULATE), or (GLU) silu(gate) * up of each
// (gate, up) row pair at column (row_offset + r) / 2.
// Uses the including kernel's bindings (p, bias, y), private arrays (acc, ss), constants (TOK,
// MAX_RPI), overrides (RPI, NORM, GLU) and `row_sum`; called at the end of its entry point, in uniform control flow (row_sum may
// hold barriers).

fn linear_epilogue(r0: u32, t0: u32, n_tok: u32, lid: u32, lane: u32) {
    var inv: array<f32, TOK>;
    for (var t = 0u; t < TOK; t = t + 1u) {
        inv[t] = 1.0;
    }
    if NORM {
        // Each lane summed the squares of its share of x's elements, so the sum over the TPR lanes
        // is the row's sum of squares.
        for (var t = 0u; t < TOK; t = t + 1u) {
            inv[t] = inverseSqrt(row_sum(ss[t], lid) / f32(p.cols) + p.eps);
        }
    }
    for (var rr = 0u; rr < min(RPI, p.rows); rr = rr + 1u) {
        let r = r0 + rr;
        for (var t = 0u; t < TOK; t = t + 1u) {
            let s = row_sum(acc[rr * TOK + t], lid) * inv[t];
            acc[rr * TOK + t] = s;
            if !GLU && r < p.rows && lane == 0u && t < n_tok {
                let o = (t0 + t) * p.y_stride + p.y_offset + p.row_offset + r;
                var v = s;
                if (p.flags & LINEAR_BIAS) != 0u {
                    v = v + bias[p.row_offset + r];
                }
                if (p.flags & LINEAR_ACCUMULATE) != 0u {
                    v = v + y[o];
                }
                y[o] = v;
            }
        }
    }
    if GLU && lane == 0u {
        // Rows r0 + rr (gate) and r0 + rr + 1 (up) of each pair.
        for (var rr = 0u; rr < RPI; rr = rr + 2u) {
            let r = r0 + rr;
            for (var t = 0u; t < n_tok; t = t + 1u) {
                if r + 1u < p.rows {
                    let gate = acc[rr * TOK + t];
                    let up = acc[(rr + 1u) * TOK + t];
                    let o = (t0 + t) * p.y_stride + p.y_offset + (p.row_offset + r) / 2u;
                    y[o] = gate / (1.0 + exp(-gate)) * up;
                }
            }
        }
    }
}
