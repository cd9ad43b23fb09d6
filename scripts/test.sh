#!/usr/bin/env bash
# The test command (what .ci/run runs): install what is missing, fetch the model in both forms, run
# every test of the workspace, then each benchmark once in quick mode to check it still works, then each
# fuzz target for 30 seconds.
# GPU tests run on whatever Vulkan device is present (lavapipe on machines without a GPU); with CI=true
# a missing adapter or model fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --hf
export NODEVICE_SELECT=1
cargo test --release --workspace
# The tiny models of every family again on a second wgpu backend: OpenGL (Mesa's llvmpipe without a
# GPU), so GL is run, not only translated by naga (tests/common asserts the adapter's backend).
WGPU_BACKEND=gl cargo test --release --test tiny_models
# Each kernel benchmark once (validation included), so a broken benchmark cannot land unseen.
cargo bench --bench kernels -- --quick
# Each fuzz target for 30 s (fuzz/, its own build in fuzz/target): a crash fails the run.
scripts/fuzz.sh 30
