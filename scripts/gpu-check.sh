#!/usr/bin/env bash
# One check of glint on a machine with a real GPU, in about 8 minutes: build, the whole test suite on
# the GPU, the kernel lab (quick: every case validated, then the decode-relevant cases timed), and
# glint bench on the real GGUF (pp512, tg128, tg at depths 4096 and 16384, f16 and f32 KV cache, tg128 of
# 1 to 16 sequences decoded together, and tg128 of 1 and 4 through the int8 matvec).
# Everything lands in one directory (default $OUT, else gpu-check/): report.md (the summary to paste
# into docs/PERFORMANCE.md), the logs, and the JSON reports.
# Usage: scripts/gpu-check.sh [OUT_DIR]        Needs: a Rust toolchain, the model (scripts/fetch-model.sh).
# Each step is bounded by `timeout`; a step that fails or times out is reported, and the rest still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
report=$out/report.md
model=${GLINT_MODEL:-models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf}
start=$(date +%s)
: >"$report"
say() { echo "$*" | tee -a "$report"; }
# step NAME SECONDS CMD...: run CMD with a time limit, log to $out/NAME.log, record status and time.
step() {
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  local dt=$(( $(date +%s) - t0 ))
  local what="ok"; ((rc == 124)) && what="TIMED OUT after ${limit} s"; ((rc != 0 && rc != 124)) && what="FAILED (exit $rc)"
  say "- $name: $what in ${dt} s (log: $name.log)"
  return $rc
}

say "# glint GPU check, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say ""
say "- machine: $(uname -srm), $(nproc) CPUs; git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
command -v nvidia-smi >/dev/null && say "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1)"
say ""
say "## Steps"
step build 300 cargo build --release --workspace --all-targets || { say "build failed: see build.log"; exit 1; }
target/release/glint devices >"$out/devices.txt" 2>&1
say ""
say '```'; head -20 "$out/devices.txt" | tee -a "$report" >/dev/null; say '```'
# The tests: CI=true so a missing adapter fails rather than skips.
CI=true step tests 240 cargo test --release --workspace
grep -E '^test result:' "$out/tests.log" | awk '{p+=$4; f+=$6; i+=$8} END {print "- tests: " p " passed, " f " failed, " i " ignored"}' | tee -a "$report"
grep -E '^test .* FAILED$|^---- ' "$out/tests.log" | head -20 | sed 's/^/  - /' | tee -a "$report"
# The lab: every case validated once; then the decode cases timed properly.
step lab-quick 120 target/release/glint lab --quick --json-file "$out/lab-quick.json"
step lab-decode 120 target/release/glint lab --filter decode --json-file "$out/lab-decode.json" -o md
if [[ -f $model ]]; then
  step bench 240 target/release/glint bench -m "$model" -p 512 -n 128 -r 3 -d 0,4096,16384 --json-file "$out/bench-f16.json"
  step bench-f32kv 120 target/release/glint bench -m "$model" -p 512 -n 128 -r 2 -d 0,16384 --kv-type f32 --json-file "$out/bench-f32.json"
  # Batched decode (glint serve's continuous batching): the aggregate of S sequences against one.
  step bench-parallel 120 target/release/glint bench -m "$model" -p 0 -n 128 -r 3 --parallel 1,2,4,8,16 --json-file "$out/bench-parallel.json"
  # The int8 matvec (off by default): tg128 of 1 and 4 sequences against the two steps above.
  step bench-int8 90 target/release/glint bench -m "$model" -p 512 -n 128 -r 3 --parallel 1,4 --int8 matvec --json-file "$out/bench-int8.json"
  say ""
  say "## glint bench ($model)"
  say ""
  for f in bench bench-f32kv bench-parallel bench-int8; do
    [[ -f $out/$f.log ]] && grep -E '^\||^glint [0-9]' "$out/$f.log" | tee -a "$report" >/dev/null && say ""
  done
else
  say "- bench: skipped, no model at $model (scripts/fetch-model.sh, or set GLINT_MODEL)"
fi
say "## Kernel lab (decode cases)"
say ""
[[ -f $out/lab-decode.log ]] && grep -E '^\|' "$out/lab-decode.log" | tee -a "$report" >/dev/null
say ""
say "total: $(( $(date +%s) - start )) s"
