//! Bad input gets an error that names the file or field and what was expected: never a panic, never a
//! silently wrong answer.

mod common;
use common::{fixture, gpu};
use glint::{LoadOptions, Model};
use std::path::{Path, PathBuf};

/// A scratch copy of the tiny model that a test can damage.
fn scratch_model(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("glint-errors-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "generation_config.json", "model.safetensors"] {
        std::fs::copy(fixture("tiny-qwen2").join(f), dir.join(f)).unwrap();
    }
    dir
}

fn load_err(dir: &Path, opts: LoadOptions) -> String {
    match Model::load(dir, opts) {
        Ok(_) => panic!("{} loaded, an error was expected", dir.display()),
        Err(e) => e.to_string(),
    }
}

fn assert_mentions(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "error {msg:?} should mention {p:?}");
    }
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

/// Rewrite the safetensors header with `f` (the data section is kept).
fn edit_safetensors_header(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    f(&mut header);
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend(h);
    out.extend(&bytes[8 + n..]);
    std::fs::write(&p, out).unwrap();
}

#[test]
fn missing_model_directory() {
    let msg = load_err(
        Path::new("/nonexistent/glint-model"),
        LoadOptions::default(),
    );
    assert_mentions(&msg, &["/nonexistent/glint-model", "no such file"]);
}

#[test]
fn missing_weights_file() {
    let dir = scratch_model("noweights");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert_mentions(
        &load_err(&dir, LoadOptions::default()),
        &["model.safetensors", "no weights"],
    );
}

#[test]
fn missing_config() {
    let dir = scratch_model("noconfig");
    std::fs::remove_file(dir.join("config.json")).unwrap();
    assert_mentions(&load_err(&dir, LoadOptions::default()), &["config.json"]);
}

#[test]
fn truncated_safetensors() {
    let dir = scratch_model("truncated");
    let p = dir.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 1000]).unwrap();
    assert_mentions(
        &load_err(&dir, LoadOptions::default()),
        &["model.safetensors", "truncated"],
    );
}

#[test]
fn unknown_architecture() {
    let dir = scratch_model("arch");
    edit_config(&dir, |v| {
        v["architectures"] = serde_json::json!(["MambaForCausalLM"])
    });
    assert_mentions(
        &load_err(&dir, LoadOptions::default()),
        &["config.json", "MambaForCausalLM", "not supported"],
    );
}

#[test]
fn config_field_missing() {
    let dir = scratch_model("field");
    edit_config(&dir, |v| {
        v.as_object_mut().unwrap().remove("hidden_size");
    });
    assert_mentions(
        &load_err(&dir, LoadOptions::default()),
        &["config.json", "hidden_size"],
    );
}

#[test]
fn tensor_shape_disagrees_with_config() {
    if gpu().is_none() {
        return;
    }
    let dir = scratch_model("shape");
    edit_config(&dir, |v| v["intermediate_size"] = serde_json::json!(256));
    assert_mentions(
        &load_err(&dir, LoadOptions::default()),
        &[
            "model.layers.0.mlp.gate_proj.weight",
            "[128, 64]",
            "[256, 64]",
        ],
    );
}

#[test]
fn unsupported_dtype() {
    if gpu().is_none() {
        return;
    }
    let dir = scratch_model("dtype");
    edit_safetensors_header(&dir, |h| {
        h["model.embed_tokens.weight"]["dtype"] = serde_json::json!("I32")
    });
    assert_mentions(
        &load_err(&dir, LoadOptions::default()),
        &["model.embed_tokens.weight", "I32", "BF16"],
    );
}

#[test]
fn prompt_longer_than_context() {
    if gpu().is_none() {
        return;
    }
    let opts = LoadOptions {
        ctx_size: Some(16),
        ..Default::default()
    };
    let mut m = Model::load(&fixture("tiny-qwen2"), opts).unwrap();
    let err = m.feed(&[1u32; 20]).unwrap_err().to_string();
    assert_mentions(&err, &["20 tokens", "context size 16"]);
    // Nothing was consumed: a prompt that fits still works.
    assert_eq!(m.position(), 0);
    m.feed(&[1u32; 16]).unwrap();
    let err = m.feed(&[1]).unwrap_err().to_string();
    assert_mentions(&err, &["16 already in the cache"]);
}

#[test]
fn token_id_out_of_range() {
    if gpu().is_none() {
        return;
    }
    let mut m = Model::load(&fixture("tiny-qwen2"), LoadOptions::default()).unwrap();
    assert_mentions(
        &m.feed(&[3, 512]).unwrap_err().to_string(),
        &["token id 512", "vocab_size 512"],
    );
}

#[test]
fn no_tokenizer_for_text_prompt() {
    if gpu().is_none() {
        return;
    }
    let m = Model::load(&fixture("tiny-qwen2"), LoadOptions::default()).unwrap();
    assert_mentions(
        &m.encode("hello").unwrap_err().to_string(),
        &["no tokenizer", "--prompt-ids"],
    );
}

/// A GPU error raised outside any error scope (here: a buffer over the device's max_buffer_size) does
/// not abort the process, as wgpu's default handler would: it is kept, and every later read back
/// returns it as an error naming what went wrong.
#[test]
fn uncaptured_gpu_errors_become_errors_not_aborts() {
    let Some(gpu) = gpu() else { return };
    let ok = gpu.storage("fine", 64).unwrap();
    assert!(gpu.read_buffer(&ok, 0, 16).is_ok());
    assert!(gpu.check_fault().is_ok());
    let _too_big = gpu.device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("too big"),
        size: gpu.caps.max_buffer_size.saturating_add(1 << 20),
        usage: wgpu::BufferUsages::STORAGE,
        mapped_at_creation: false,
    });
    let e = gpu.check_fault().unwrap_err().to_string();
    assert_mentions(&e, &["GPU error"]);
    let e = gpu.read_buffer(&ok, 0, 16).unwrap_err().to_string();
    assert_mentions(&e, &["GPU error"]);
}
