//! The one source of truth for what the host and the kernels share: every uniform struct (a `#[repr(C)]`
//! Pod struct here, its WGSL declaration generated from the same field list) and the weight-format codes.
//! `kernels::prelude()` puts all of them in front of every shader module, so no `.wgsl` file declares
//! them itself.

use crate::quant::QuantType;

/// Declares `#[repr(C)]` Pod structs and, from the same field lists, their WGSL declarations
/// (`wgsl_decls()`). Fields are u32 or f32, which are spelt the same in both languages; every struct is
/// padded to a multiple of 16 bytes by hand (uniform buffers) and checked by a test.
macro_rules! shared_structs {
    ($( $(#[$m:meta])* pub struct $name:ident { $( $(#[$fm:meta])* $f:ident : $t:ident ),* $(,)? } )*) => {
        $(
            $(#[$m])*
            #[repr(C)]
            #[derive(Copy, Clone, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
            pub struct $name { $( $(#[$fm])* pub $f: $t ),* }
        )*

        /// The WGSL declarations of every shared struct, in order.
        pub fn wgsl_decls() -> String {
            let mut s = String::new();
            $(
                s.push_str(concat!("struct ", stringify!($name), " {\n"));
                $( s.push_str(concat!("    ", stringify!($f), ": ", stringify!($t), ",\n")); )*
                s.push_str("}\n\n");
            )*
            s
        }

        /// (name, size in bytes) of every shared struct, for the layout test.
        pub fn sizes() -> Vec<(&'static str, usize)> {
            vec![$( (stringify!($name), std::mem::size_of::<$name>()) ),*]
        }
    };
}

shared_structs! {
    /// The values that change per forward call. Two copies are bound: one whose `n` counts the call's
    /// tokens (embedding, layers), one whose `n` counts its outputs (final norm, LM head, argmax).
    pub struct Step {
        n: u32,
        /// Split-K attention: key ranges per (token, head) in this call (1: no split).
        kv_splits: u32,
        _pad0: u32,
        _pad1: u32,
    }

    /// Linear layers (matvec.wgsl, matvec_quant.wgsl, matmul.wgsl).
    pub struct MatParams {
        /// Rows of this chunk of the weight matrix.
        rows: u32,
        cols: u32,
        /// The chunk's first row in the full matrix (and in y).
        row_offset: u32,
        /// LINEAR_BIAS | LINEAR_ACCUMULATE.
        flags: u32,
        /// Elements between token rows of y.
        y_stride: u32,
        /// y's column of the matrix's row 0 (a linear layer writing its part of a wider output, as
        /// q, k and v into one qkv row).
        y_offset: u32,
        /// Stacked matrices of two formats: the first row in the second format (WFMT2), `rows` when
        /// there is one format.
        split: u32,
        /// The word of w where the second format's rows start.
        seg_word: u32,
        /// The fused RMSNorm's epsilon (NORM).
        eps: f32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }

    /// embed.wgsl: one chunk of the table.
    pub struct EmbedParams {
        cols: u32,
        row_start: u32,
        rows: u32,
        _pad0: u32,
    }

    /// rmsnorm.wgsl.
    pub struct NormParams {
        cols: u32,
        eps: f32,
        _pad0: u32,
        _pad1: u32,
    }

    /// rope.wgsl.
    pub struct RopeParams {
        n_heads: u32,
        n_kv_heads: u32,
        head_dim: u32,
        /// KV cache rows per sequence slot.
        slot_rows: u32,
        /// Elements between token rows of qkv.
        qkv_stride: u32,
        /// The per-head RMSNorm's epsilon (QK_NORM).
        eps: f32,
        _pad0: u32,
        _pad1: u32,
    }

    /// attention.wgsl.
    pub struct AttnParams {
        n_heads: u32,
        n_kv_heads: u32,
        head_dim: u32,
        scale: f32,
        /// KV cache rows per sequence slot.
        slot_rows: u32,
        /// Elements between token rows of q (the qkv buffer's row).
        q_stride: u32,
        _pad0: u32,
        _pad1: u32,
    }

    /// elementwise.wgsl.
    pub struct EwParams {
        cols: u32,
        _pad0: u32,
        _pad1: u32,
        _pad2: u32,
    }

    /// sample.wgsl: one per row of logits (a storage array, so rows differ).
    pub struct SampleParams {
        n_valid: u32,
        /// Ids of the penalty window (0 when the penalty is 1).
        n_window: u32,
        /// 0 = off; the host also sends 0 for k >= n_valid.
        top_k: u32,
        /// SAMPLE_GREEDY | SAMPLE_TOP_P.
        flags: u32,
        temperature: f32,
        top_p: f32,
        /// 0 = off.
        min_p: f32,
        penalty: f32,
        /// The uniform draw in [0, 1).
        u: f32,
        /// This row's first id in the window buffer.
        window_off: u32,
        /// Elements between rows of logits.
        row_stride: u32,
        _pad0: u32,
    }

    /// argmax.wgsl: one row of logits per workgroup.
    pub struct ArgmaxParams {
        n_valid: u32,
        /// Elements between rows of logits.
        row_stride: u32,
        _pad0: u32,
        _pad1: u32,
    }
}

/// `MatParams::flags`: add the bias.
pub const LINEAR_BIAS: u32 = 1;
/// `MatParams::flags`: add the product to y's previous value (the fused residual connection).
pub const LINEAR_ACCUMULATE: u32 = 2;

/// `SampleParams::flags`: temperature 0 (the argmax of the penalised logits).
pub const SAMPLE_GREEDY: u32 = 1;
/// `SampleParams::flags`: top-p is on (top_p < 1).
pub const SAMPLE_TOP_P: u32 = 2;

/// The shaders' `WFMT` code of a storage format: its index in `QuantType::ALL`.
pub fn wfmt(t: QuantType) -> u32 {
    QuantType::ALL
        .iter()
        .position(|&x| x == t)
        .expect("ALL lists every type") as u32
}

/// `const WFMT_F32: u32 = 0u;` ... for every format, so kernels switch on names, not numbers.
pub fn wgsl_format_consts() -> String {
    let mut s = String::new();
    for t in QuantType::ALL {
        s.push_str(&format!("const WFMT_{}: u32 = {}u;\n", t.name(), wfmt(t)));
    }
    s
}

/// KV cache element formats (the kernels' KVF constant).
pub const KV_F32: u32 = 0;
pub const KV_F16: u32 = 1;

/// The flag and format constants above, in WGSL.
pub fn wgsl_flag_consts() -> String {
    format!(
        "const LINEAR_BIAS: u32 = {LINEAR_BIAS}u;\nconst LINEAR_ACCUMULATE: u32 = {LINEAR_ACCUMULATE}u;\n\
         const SAMPLE_GREEDY: u32 = {SAMPLE_GREEDY}u;\nconst SAMPLE_TOP_P: u32 = {SAMPLE_TOP_P}u;\n\
         const KV_F32: u32 = {KV_F32}u;\nconst KV_F16: u32 = {KV_F16}u;\n"
    )
}

/// Word offsets in the per-token metadata (`TokenMeta` in WGSL: vec2<u32>): the token's sequence slot
/// and its position in that sequence.
pub fn wgsl_meta() -> &'static str {
    "// Per-token metadata: x = sequence slot (its KV cache region), y = position in the sequence.\n\
     alias TokenMeta = vec2<u32>;\n\n"
}

#[cfg(test)]
mod tests {
    #[test]
    fn uniform_structs_are_16_byte_multiples() {
        for (name, size) in super::sizes() {
            assert_eq!(size % 16, 0, "{name} is {size} bytes");
        }
    }

    #[test]
    fn decls_name_every_field() {
        let d = super::wgsl_decls();
        assert!(d.contains("struct MatParams {\n    rows: u32,\n"));
        assert!(d.contains("    eps: f32,\n"));
    }
}
