//! Inputs that the fuzz targets (fuzz/, scripts/fuzz.sh) found, replayed with their fix: each made its
//! target fail, and must now be refused with an error that names the field. The inputs are the fuzzer's
//! files as it wrote them (tests/fixtures/fuzz/, named TARGET-WHAT). No GPU needed.

mod common;
use common::fixture;
use glint::config::ModelConfig;
use glint::gguf::Gguf;
use glint::gguf_loader::GgufModel;
use std::path::Path;

fn input(name: &str) -> Vec<u8> {
    std::fs::read(fixture("fuzz").join(name)).expect("fuzz regression input")
}

/// The parts of a safetensors_config input: config.json, generation_config.json, safetensors
/// (fuzz/fuzz_targets/safetensors_config.rs).
fn split_parts(data: &[u8]) -> Vec<&[u8]> {
    const SEP: &[u8] = b"\xff\xfe--\xfe\xff";
    let mut parts = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(SEP.len()).position(|w| w == SEP) {
        parts.push(&rest[..at]);
        rest = &rest[at + SEP.len()..];
    }
    parts.push(rest);
    parts
}

/// gguf_parse, crash-ab4bd9f5: a tiny Qwen2 GGUF whose qwen2.attention.layer_norm_rms_epsilon is
/// -4092434 was accepted as a model (its logits would be NaN). Now the config is refused.
#[test]
fn gguf_with_a_negative_rms_eps_is_refused() {
    let bytes = input("gguf_parse-negative-rms-eps.gguf");
    let g = Gguf::parse(&bytes, Path::new("crash.gguf")).expect("the file itself is well formed");
    let err = GgufModel::from_gguf(g).err().expect("refused").to_string();
    assert_eq!(
        err,
        "crash.gguf: rms_norm_eps -4092434 must be a finite value >= 0"
    );
}

/// safetensors_config, crash-3f72f18f: hidden_size 1 with 2 attention heads and no head_dim gave
/// head_dim 1 / 2 = 0, which validation let through.
#[test]
fn config_whose_head_dim_comes_out_0_is_refused() {
    let bytes = input("safetensors_config-head-dim-0");
    let config: serde_json::Value =
        serde_json::from_slice(split_parts(&bytes)[0]).expect("config.json part");
    assert_eq!(
        ModelConfig::from_json(&config).unwrap_err(),
        "head_dim is 0, expected a positive integer"
    );
}

/// The other values the same fix refuses, each an edit of the tiny fixture's config.json.
#[test]
fn config_values_that_cannot_make_a_model_are_refused() {
    let base: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("tiny-qwen2").join("config.json")).unwrap())
            .unwrap();
    ModelConfig::from_json(&base).expect("the fixture itself is valid");
    let cases: [(&str, serde_json::Value, &str); 6] = [
        (
            "num_key_value_heads",
            0.into(),
            "num_key_value_heads is 0, expected a positive integer",
        ),
        (
            "head_dim",
            0.into(),
            "head_dim is 0, expected a positive integer",
        ),
        (
            "rms_norm_eps",
            (-1e-6).into(),
            "rms_norm_eps -0.000001 must be a finite value >= 0",
        ),
        (
            "rope_theta",
            (-10000.0).into(),
            "rope_theta -10000 must be a finite value > 0",
        ),
        (
            "rms_norm_eps",
            1e300.into(),
            "rms_norm_eps inf must be a finite value >= 0",
        ),
        (
            "vocab_size",
            (1u64 << 62).into(),
            "vocab_size x hidden_size = [4611686018427387904, 64] overflows: not a real model",
        ),
    ];
    for (field, value, want) in cases {
        let mut v = base.clone();
        v[field] = value.clone();
        if field == "rope_theta" {
            v["rope_parameters"]["rope_theta"] = value.clone();
        }
        assert_eq!(
            ModelConfig::from_json(&v).unwrap_err(),
            want,
            "{field} = {value}"
        );
    }
}
