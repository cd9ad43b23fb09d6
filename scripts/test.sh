#!/usr/bin/env bash
# The test command (what .ci/run runs): install what is missing, fetch the model in both forms, run
# every test of the workspace, the tiny models again on the GL backend, the quick kernel lab on Vulkan
# and on GL (every kernel validated against its CPU reference on the device), then each fuzz target
# for 30 seconds.
# GPU tests run on whatever Vulkan device is present (lavapipe on machines without a GPU); with CI=true
# a missing adapter or model fails the run instead of skipping.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --hf
export NODEVICE_SELECT=1
cargo test --release --workspace
# The tiny models of every family again on a second wgpu backend: OpenGL (Mesa's llvmpipe without a
# GPU), so GL is run, not only translated by naga (tests/common asserts the adapter's backend).
# --workspace: the features resolve as for the run above, so nothing is rebuilt (without it the
# Hub client's TLS crates and the engine built again, minutes on 2 cores).
WGPU_BACKEND=gl cargo test --release --workspace --test tiny_models
# The kernel lab, quick: each case once, validated (a failed case exits non-zero).
# The binary the tests drive (tests/common/cli.rs builds it the same way): named with a test target so
# that Cargo resolves features as for the tests and links the engine already built (a no-op here).
cargo build --release -p glint-cli --bin glint -p glint-suite --test cli_run
target/release/glint lab --quick --backend vulkan
target/release/glint lab --quick --backend gl
# The cargo-bench caller of the same lab still builds.
cargo bench --bench kernels --no-run
# Each fuzz target for 30 s (fuzz/, its own build in fuzz/target): a crash fails the run.
scripts/fuzz.sh 30
