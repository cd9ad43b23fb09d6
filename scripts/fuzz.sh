#!/usr/bin/env bash
# Run each cargo-fuzz target of fuzz/ in turn for SECONDS (default 60) and print, per target, the
# executions, exec/s, new corpus inputs and crashes. Exits non-zero if any target crashed (the input
# is kept under fuzz/artifacts/TARGET/; replay it with the command printed, then add it to the
# regression tests in tests/fuzz_regressions.rs with the fix).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     e.g. scripts/fuzz.sh 30, scripts/fuzz.sh 600 stop_filter
#   FUZZ_RUNS=10000000 scripts/fuzz.sh 3600 gguf_parse   stop at 10 million executions (or the time)
# To free the CPU for a while, stop a run with SIGINT (libFuzzer prints its stats; fuzz.sh reports the
# exit as a crash without an input) rather than pausing it: a run paused for more than -timeout seconds
# ends with a false timeout when resumed (libFuzzer's alarm counts wall-clock time).
#
# Uses the machine's stable toolchain: RUSTC_BOOTSTRAP=1 lets it accept the unstable flags cargo-fuzz
# passes (sanitizer coverage). cargo-fuzz itself comes from crates.io if it is missing. Targets are
# built without AddressSanitizer (--sanitizer none): the code under test is safe Rust, checked by
# debug assertions and overflow checks, and ASan would halve the executions on 2 cores. The tokenizer,
# chat_template and stream_decoder targets read the real GGUFs in models/ (scripts/fetch-model.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

SECS=${1:-60}
shift || true
# Every target, in the order run.
ALL_TARGETS=(gguf_parse gguf_vocab safetensors_config tokenizer chat_template stop_filter stream_decoder
    server_request)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")
NEEDS_MODELS=(tokenizer chat_template stream_decoder gguf_vocab server_request)

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz from crates.io"
    nice cargo install --locked cargo-fuzz
fi

for t in "${TARGETS[@]}"; do
    if [[ " ${NEEDS_MODELS[*]} " == *" $t "* ]]; then
        for m in models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf models/SmolLM2-135M-Instruct.Q4_1.gguf; do
            if [ ! -f "${GLINT_MODELS:-models}/$(basename "$m")" ]; then
                echo "fuzz.sh: $t needs $m: run scripts/fetch-model.sh" >&2
                exit 1
            fi
        done
    fi
done

FLAGS=(--sanitizer none)
echo "fuzz.sh: building the fuzz targets (fuzz/target)"
nice cargo fuzz build "${FLAGS[@]}"

LOGS=fuzz/target/logs
mkdir -p "$LOGS"
LIMITS=(-max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1)
[ -n "${FUZZ_RUNS:-}" ] && LIMITS+=(-runs="$FUZZ_RUNS")

failed=0
rows=()
for t in "${TARGETS[@]}"; do
    mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log="$LOGS/$t.log"
    echo "fuzz.sh: $t for ${SECS}s${FUZZ_RUNS:+ or $FUZZ_RUNS runs} (log: $log)"
    set +e
    nice cargo fuzz run "${FLAGS[@]}" "$t" "fuzz/corpus/$t" "fuzz/seeds/$t" -- \
        "${LIMITS[@]}" -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1
    rc=$?
    set -e
    stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -1; }
    execs=$(stat number_of_executed_units)
    rate=$(stat average_exec_per_sec)
    added=$(stat new_units_added)
    crashes=0
    artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
    if [ $rc -ne 0 ]; then
        crashes=1
        failed=1
        echo "fuzz.sh: $t CRASHED (exit $rc): ${artifact:-see $log}" >&2
        grep -m 3 -E "panicked|ERROR: libFuzzer|SUMMARY" "$log" >&2 || true
        [ -n "$artifact" ] && echo "  replay: RUSTC_BOOTSTRAP=1 cargo fuzz run ${FLAGS[*]} $t $artifact" >&2
    fi
    rows+=("$(printf '%-20s %12s %10s %8s %8s' "$t" "${execs:-?}" "${rate:-?}" "${added:-?}" "$crashes")")
done

echo
printf '%-20s %12s %10s %8s %8s\n' target execs exec/s new crashes
printf '%s\n' "${rows[@]}"
exit $failed
