//! A Hugging Face model directory's files: config.json, generation_config.json and a safetensors
//! file, in one input separated by [`SEP`] (missing parts are empty). Each parses to `Ok` or `Err`;
//! a config accepted is usable (fuzz/src/lib.rs: check_config); the weights a load reads with that
//! config come out with the shapes asked for, or an error.
#![no_main]

use std::path::Path;

use glint::config::{GenerationConfig, ModelConfig};
use glint::safetensors_loader::SafetensorsWeights;
use libfuzzer_sys::fuzz_target;

/// Separates the parts: bytes that JSON text cannot hold (not UTF-8).
const SEP: &[u8] = b"\xff\xfe--\xfe\xff";

fn split<'a>(data: &'a [u8], sep: &[u8]) -> (&'a [u8], &'a [u8]) {
    match data.windows(sep.len()).position(|w| w == sep) {
        Some(at) => (&data[..at], &data[at + sep.len()..]),
        None => (data, &[]),
    }
}

fuzz_target!(|data: &[u8]| {
    let (config, rest) = split(data, SEP);
    let (generation, weights) = split(rest, SEP);
    let cfg = serde_json::from_slice(config)
        .ok()
        .and_then(|v| ModelConfig::from_json(&v).ok());
    if let Some(cfg) = &cfg {
        glint_fuzz::check_config(cfg);
    }
    if let Ok(v) = serde_json::from_slice(generation) {
        let _ = GenerationConfig::from_json(&v);
    }
    let Ok(st) = SafetensorsWeights::from_bytes(weights.to_vec(), Path::new("model.safetensors"))
    else {
        return;
    };
    let _ = st.total_bytes();
    if let Some(cfg) = &cfg {
        let _ = glint_fuzz::load_weights(&st, cfg);
    }
});
