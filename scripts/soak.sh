#!/usr/bin/env bash
# Soak tests (tests/soak.rs, ignored by default): 10,000 tokens in one `glint chat` session with context
# rollover, and 1,000 `glint serve` requests with client cancellations, on the tiny Qwen2 fixture;
# host RSS and the device's live buffers sampled throughout and checked flat (within 5% after a
# warm-up). Prints the sample tables of docs/RELIABILITY.md. A few minutes on lavapipe.
# Usage: scripts/soak.sh [chat|server]   (default both)
set -euo pipefail
cd "$(dirname "$0")/.."
export NODEVICE_SELECT=${NODEVICE_SELECT:-1}
filter=${1:-}
# --workspace: the same build as scripts/test.sh (features unified over the workspace), the glint
# binary included.
exec cargo test --release -q --workspace --test soak -- --ignored --nocapture --test-threads 1 $filter
