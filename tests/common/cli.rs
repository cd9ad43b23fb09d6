//! Helpers for the tests that drive the `glint` binary (tests/cli_*.rs), included with
//! `#[path = "common/cli.rs"] mod cli;` next to `mod common;`.
//!
//! The binary belongs to another package (glint-cli), so Cargo gives these tests no
//! `CARGO_BIN_EXE_glint`. [`glint_bin`] runs `cargo build -p glint-cli --bin glint` once per test
//! process, with the cargo and profile that built the test (a no-op when the binary is up to date), and
//! returns target/<profile>/glint: the binary under test is always the current source.

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
        let profile = profile_dir.file_name().and_then(|s| s.to_str()).unwrap_or("debug").to_string();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .args(["build", "--quiet", "-p", "glint-cli", "--bin", "glint"]);
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
        let status = cmd.status().expect("running cargo to build the glint binary");
        assert!(status.success(), "building the glint binary failed ({status})");
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
