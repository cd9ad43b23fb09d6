//! Shared helpers for the integration tests.
#![allow(dead_code)]

use glint::gpu::{Gpu, GpuOptions};
use glint::graph::{Plan, StepBuffers};
use glint::kernels::KvType;
use std::path::PathBuf;

pub mod kernel_ctx;

/// The GPU adapter for tests. Locally a missing adapter skips the test with a message on stderr; in CI
/// (CI=true) it fails the test: GPU tests never skip silently.
/// With WGPU_BACKEND set (scripts/test.sh runs the tiny-model tests again with WGPU_BACKEND=gl), the
/// adapter must be on that backend, so a second backend is really exercised.
pub fn gpu() -> Option<Gpu> {
    match Gpu::new(&GpuOptions::default()) {
        Ok(g) => {
            if let Ok(want) = std::env::var("WGPU_BACKEND") {
                let got = format!("{:?}", g.info.backend).to_ascii_lowercase();
                let want = want.to_ascii_lowercase();
                assert!(
                    want.split(',').any(|w| got.starts_with(w.trim())),
                    "WGPU_BACKEND={want} but the adapter is on {got}"
                );
            }
            Some(g)
        }
        Err(e) => {
            let ci = std::env::var("CI")
                .map(|v| v == "true" || v == "1")
                .unwrap_or(false);
            if ci {
                panic!("CI=true and no GPU adapter: {e}. Install mesa-vulkan-drivers (lavapipe).");
            }
            eprintln!("SKIPPED: no GPU adapter ({e})");
            None
        }
    }
}

pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

/// The real model's files, from the project's fetch step (scripts/fetch-model.sh), if present.
pub fn models_dir() -> PathBuf {
    std::env::var_os("GLINT_MODELS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"))
}

/// Deterministic pseudo-random numbers (xorshift64*), so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    /// Uniform in [-1, 1).
    pub fn f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32() * scale).collect()
    }
}

/// Run a plan over `n_tokens` tokens of one sequence (slot 0, positions pos0 ..), every token row an
/// output, and wait for it.
pub fn run(gpu: &Gpu, plan: &Plan, steps: &StepBuffers, n_tokens: u32, pos0: u32) {
    let meta: Vec<[u32; 2]> = (0..n_tokens).map(|t| [0, pos0 + t]).collect();
    let out_rows: Vec<u32> = (0..n_tokens.min(steps.max_out as u32)).collect();
    run_meta(gpu, plan, steps, &meta, &out_rows);
}

/// Run a plan over tokens with the given (slot, position) each and output rows, and wait for it.
pub fn run_meta(gpu: &Gpu, plan: &Plan, steps: &StepBuffers, meta: &[[u32; 2]], out_rows: &[u32]) {
    run_split(gpu, plan, steps, meta, out_rows, 1);
}

/// `run_meta` with the split-K attention's key ranges per (token, head).
pub fn run_split(
    gpu: &Gpu,
    plan: &Plan,
    steps: &StepBuffers,
    meta: &[[u32; 2]],
    out_rows: &[u32],
    kv_splits: u32,
) {
    let call = steps.write(&gpu.queue, meta, out_rows, kv_splits).unwrap();
    let mut enc = gpu.device.create_command_encoder(&Default::default());
    plan.record(&mut enc, call);
    gpu.queue.submit([enc.finish()]);
    gpu.device
        .poll(wgpu::PollType::wait_indefinitely())
        .unwrap();
}

/// Both KV cache element types, for kernel tests.
pub const KV_TYPES: [KvType; 2] = [KvType::F32, KvType::F16];

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}
