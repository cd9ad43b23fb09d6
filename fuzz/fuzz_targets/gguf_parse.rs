//! GGUF header and metadata parsing, and the model a GGUF describes: any input must give `Ok` or
//! `Err`, never a panic, an overflow or an out-of-bounds read. A file that parses must hand out
//! tensor data of the declared size that dequantizes; a model config it yields must be usable
//! (fuzz/src/lib.rs: check_config); the weights a load reads must come out with the shapes asked for.
#![no_main]

use std::path::Path;

use glint::gguf::Gguf;
use glint::gguf_loader::GgufModel;
use glint::quant::dequantize;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(g) = Gguf::parse(data, Path::new("fuzz.gguf")) else {
        return;
    };
    for (key, _) in &g.metadata {
        let _ = (
            g.get_u32(key),
            g.get_u64(key),
            g.get_f32(key),
            g.get_bool(key),
        );
        let _ = (g.get_str(key), g.get_str_array(key), g.get_i32_array(key));
    }
    for t in &g.tensors {
        assert!(g.tensor(&t.name).is_some());
        let bytes = g.tensor_data(t);
        assert_eq!(bytes.len() as u64, t.size, "{}", t.name);
        // Bounded by the input size: the parser checked size against the file.
        let mut out = vec![0f32; t.n_elements() as usize];
        dequantize(t.ggml_type, bytes, &mut out);
    }
    let Ok(model) = GgufModel::from_gguf(g) else {
        return;
    };
    glint_fuzz::check_config(&model.cfg);
    let _ = model.generation_config();
    let _ = glint_fuzz::load_weights(&model, &model.cfg);
});
