//! Helpers for the tests that drive the `glint` binary (tests/cli_*.rs), included with
//! `#[path = "common/cli.rs"] mod cli;` next to `mod common;`.
//!
//! The binary belongs to another package (glint-cli), so Cargo gives these tests no
//! `CARGO_BIN_EXE_glint`. [`glint_bin`] runs `cargo build -p glint-cli --bin glint` once per test
//! process, with the cargo and profile that built the test (a no-op when the binary is up to date), and
//! returns target/<profile>/glint: the binary under test is always the current source. The same command
//! names the running test's own target too (`-p glint-suite --test NAME`, already built), so that Cargo
//! resolves features as it did for the test build, dev-dependencies included: the binary links the
//! glint-engine and wgpu already built for the tests instead of a second build of them (the dev-only
//! `msl-out` feature of naga would otherwise change every crate above it; minutes on 2 cores).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The GPU environment the binary gets: the test's own (VK_DRIVER_FILES, WGPU_BACKEND, ...) plus
/// NODEVICE_SELECT=1, which keeps Mesa's device-select layer out of lavapipe runs.
pub fn glint() -> Command {
    let mut c = Command::new(glint_bin());
    c.env("NODEVICE_SELECT", "1");
    c
}

/// Path of the freshly built `glint` binary.
pub fn glint_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        // This test runs from target/<profile>/deps/<name>-<hash>.
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("target/<profile>/deps/test")
            .to_path_buf();
        let profile = profile_dir
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("debug")
            .to_string();
        // The test target's name: its executable is <name>-<hash>.
        let test = exe
            .file_stem()
            .and_then(|s| s.to_str())
            .and_then(|s| s.rsplit_once('-'))
            .map(|(name, _)| name.to_string())
            .expect("test executable named <test>-<hash>");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR")).args([
            "build",
            "--quiet",
            "-p",
            "glint-cli",
            "--bin",
            "glint",
            "-p",
            "glint-suite",
            "--test",
            &test,
        ]);
        match profile.as_str() {
            "debug" => {}
            "release" => {
                cmd.arg("--release");
            }
            other => {
                cmd.args(["--profile", other]);
            }
        }
        if let Some(target_dir) = profile_dir.parent() {
            cmd.env("CARGO_TARGET_DIR", target_dir);
        }
        let status = cmd
            .status()
            .expect("running cargo to build the glint binary");
        assert!(
            status.success(),
            "building the glint binary failed ({status})"
        );
        let bin = profile_dir.join(format!("glint{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.exists(), "{} was not built", bin.display());
        bin
    })
}

pub fn in_ci() -> bool {
    std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
}

/// A real model file or directory under models/ (scripts/fetch-model.sh), or None with a message when
/// it is absent; in CI (CI=true) its absence fails the test.
pub fn real_model(name: &str) -> Option<PathBuf> {
    let p = crate::common::models_dir().join(name);
    if p.exists() {
        return Some(p);
    }
    let msg = format!(
        "{} is missing: run scripts/fetch-model.sh (or set GLINT_MODELS)",
        p.display()
    );
    if in_ci() {
        panic!("CI=true: {msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

/// The default model of the CLI tests: the Q4_K_M GGUF file.
pub const GGUF: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
/// The Llama-family real model (scripts/fetch-smollm2.sh).
pub const SMOLLM2: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// The tokenizer of [`fake_hf_cache`]'s model.
#[derive(Copy, Clone, PartialEq)]
pub enum Tok {
    /// Qwen2.5's own: decodes any id, but text encodes to ids beyond the tiny vocabulary of 512.
    Qwen,
    /// Byte-level BPE without merges: id = byte value, `<|im_start|>` 256, `<|im_end|>` 257, so any
    /// text and the Qwen chat template encode within the tiny vocabulary.
    Bytes,
}

/// A Hugging Face cache with `models--test--tiny-qwen2`: the tiny weights, a tokenizer ([`Tok`]) and
/// Qwen2.5's tokenizer_config.json (chat template), the weights as a blob behind a symlink as
/// huggingface_hub stores them.
pub fn fake_hf_cache(root: &Path, tokenizer: Tok) -> PathBuf {
    let repo = root.join("models--test--tiny-qwen2");
    let rev = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(rev);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), rev).unwrap();
    for f in ["config.json", "generation_config.json"] {
        std::fs::copy(crate::common::fixture("tiny-qwen2").join(f), snap.join(f)).unwrap();
    }
    let qwen = crate::common::fixture("qwen2.5-coder-0.5b-instruct");
    std::fs::copy(
        qwen.join("tokenizer_config.json"),
        snap.join("tokenizer_config.json"),
    )
    .unwrap();
    match tokenizer {
        Tok::Qwen => {
            std::fs::copy(qwen.join("tokenizer.json"), snap.join("tokenizer.json")).unwrap();
        }
        Tok::Bytes => std::fs::write(snap.join("tokenizer.json"), byte_tokenizer_json()).unwrap(),
    }
    let blob = repo.join("blobs/deadbeef");
    std::fs::copy(
        crate::common::fixture("tiny-qwen2").join("model.safetensors"),
        &blob,
    )
    .unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink("../../blobs/deadbeef", snap.join("model.safetensors")).unwrap();
    #[cfg(not(unix))]
    std::fs::copy(&blob, snap.join("model.safetensors")).unwrap();
    root.to_path_buf()
}

/// `glint chat -m test/tiny-qwen2 ARGS` from the fake cache `cache` ([`fake_hf_cache`]), offline, with
/// stdin, stdout and stderr piped.
pub fn spawn_tiny_chat(cache: &Path, args: &[&str]) -> std::process::Child {
    use std::process::Stdio;
    glint()
        .args(["chat", "-m", "test/tiny-qwen2"])
        .args(args)
        .env("HF_HUB_CACHE", cache)
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting glint chat")
}

/// A fresh directory under the system temp dir, unique to this test process.
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("glint-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// tokenizer.json of [`Tok::Bytes`]: GPT-2's byte-to-character map as the vocabulary, no merges.
fn byte_tokenizer_json() -> String {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32)
        .chain(0xA1..=0xAC)
        .chain(0xAE..=0xFF)
        .collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let vocab: serde_json::Map<String, serde_json::Value> = bs
        .iter()
        .zip(&cs)
        .map(|(&b, &c)| {
            (
                char::from_u32(c).unwrap().to_string(),
                serde_json::Value::from(b),
            )
        })
        .collect();
    let added = |id: u32, content: &str| {
        serde_json::json!({"id": id, "content": content, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false,
        "use_regex": false});
    serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [added(256, "<|im_start|>"), added(257, "<|im_end|>")],
        "normalizer": null,
        "pre_tokenizer": level,
        "post_processor": null,
        "decoder": level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
            "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "vocab": vocab, "merges": []}
    })
    .to_string()
}
