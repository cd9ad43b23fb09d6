#!/usr/bin/env bash
# One command on a fresh machine: install what is missing, fetch the default model, build, and generate.
# Usage: scripts/quickstart.sh ["your prompt"]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export NODEVICE_SELECT=1
cargo build --release --quiet
# fetch-model.sh prints where the model is ($GLINT_MODELS or ./models); it is verified, not downloaded again.
model=$(scripts/fetch-model.sh)
exec target/release/glint run -m "$model" \
  -p "${1:-Write a Rust function that reverses a string, with a short explanation.}" -n 256
