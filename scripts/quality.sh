#!/usr/bin/env bash
# The quality table of docs/QUALITY.md: `glint perplexity` on one text for each row below, its PPL and
# its KL divergence from the bf16 safetensors model (the base, written once with --kl-divergence-base).
# Each row is one line of ROWS: "label|model|extra flags". To add a row (a kernel path with a flag),
# add a line; finished rows are kept in the work directory, so a rerun only runs new ones.
# Prints the markdown table (the tools' figures, nothing typed by hand) and each row's command.
#
# Usage: scripts/quality.sh [-c N] [--chunks N] [-f TEXT] [-w WORKDIR]
#   defaults: -c 512 --chunks 4 -f tests/fixtures/GPL-3 -w /tmp/glint-quality
# Environment: GLINT (default target/release/glint), GLINT_ARGS (extra flags for every run, e.g.
# "--backend vulkan"), LLAMA_Q8_0 (a Q8_0 GGUF from llama-quantize: one more row). On a machine without a GPU, lavapipe:
# VK_DRIVER_FILES=/usr/share/vulkan/icd.d/lvp_icd.x86_64.json WGPU_BACKEND=vulkan.
# About 1 hour on lavapipe with 2 idle cores (the bf16 base is the longest run).
set -euo pipefail
cd "$(dirname "$0")/.."

CTX=512 CHUNKS=4 TEXT=tests/fixtures/GPL-3 WORK=/tmp/glint-quality
while [ $# -gt 0 ]; do
    case "$1" in
        -c) CTX=$2; shift 2 ;;
        --chunks) CHUNKS=$2; shift 2 ;;
        -f) TEXT=$2; shift 2 ;;
        -w) WORK=$2; shift 2 ;;
        -h|--help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "quality: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
GLINT=${GLINT:-target/release/glint}
GLINT_ARGS=${GLINT_ARGS:-}
export NODEVICE_SELECT=${NODEVICE_SELECT:-1}
BF16=models/qwen2.5-coder-0.5b-instruct-bf16
GGUF=models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
ROWS=(
    "--quant q8_0|$BF16|--quant q8_0"
    "Q4_K_M GGUF as shipped (f16 KV, fused)|$GGUF|"
    "Q4_K_M GGUF, --kv-type f32|$GGUF|--kv-type f32"
    "Q4_K_M GGUF, --no-fuse|$GGUF|--no-fuse"
    "--quant q4_k|$BF16|--quant q4_k"
    "--quant q4_0|$BF16|--quant q4_0"
    "--quant f16|$BF16|--quant f16"
)
# llama-quantize's own Q8_0 of an f16 GGUF written from the bf16 form (scripts/qwen2_hf_to_gguf_f16.py),
# where LLAMA_Q8_0 names it.
if [ -n "${LLAMA_Q8_0:-}" ]; then ROWS+=("llama-quantize Q8_0 GGUF|$LLAMA_Q8_0|"); fi
mkdir -p "$WORK"
BASE="$WORK/bf16-c$CTX-x$CHUNKS.kld"
run() { # out-file, then the glint arguments
    local out=$1; shift
    if [ -s "$out" ] && tail -n 1 "$out" | grep -q '^{'; then return; fi
    echo "quality: glint perplexity $*" >&2
    # shellcheck disable=SC2086
    "$GLINT" perplexity "$@" $GLINT_ARGS -q --json > "$out.tmp"
    mv "$out.tmp" "$out"
}
CMDS=()
base_cmd=(-m "$BF16" -f "$TEXT" -c "$CTX" --chunks "$CHUNKS" --kl-divergence-base "$BASE")
run "$WORK/base.out" "${base_cmd[@]}"
CMDS+=("glint perplexity ${base_cmd[*]}")
FILES=("bf16 safetensors (base)|$WORK/base.out")
for row in "${ROWS[@]}"; do
    IFS='|' read -r label model flags <<< "$row"
    out="$WORK/$(printf '%s' "$label" | tr -c 'A-Za-z0-9' '_').out"
    # shellcheck disable=SC2206
    args=(-m "$model" $flags -f "$TEXT" --kl-divergence --kl-divergence-base "$BASE")
    run "$out" "${args[@]}"
    CMDS+=("glint perplexity ${args[*]}")
    FILES+=("$label|$out")
done
python3 - "${FILES[@]}" <<'PY'
import json, sys
print("| weights | PPL | PPL(Q)/PPL(base) | mean KL divergence | KL 99% | KL max | same top | mean Δp | RMS Δp | tokens/s |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for arg in sys.argv[1:]:
    label, path = arg.split("|", 1)
    v = json.loads(open(path).read().strip().splitlines()[-1])
    k = v.get("kl")
    ppl = f"{v['ppl']:.4f} ± {v['ppl_unc']:.4f}"
    tps = f"{v['tokens_per_s']:.1f}"
    if k is None:
        print(f"| {label} | {ppl} | 1 | 0 | 0 | 0 | 100% | 0 | 0 | {tps} |")
        continue
    print(f"| {label} | {ppl} | {k['ppl_ratio']:.4f} ± {k['ppl_ratio_unc']:.4f} | "
          f"{k['kld_mean']:.5f} ± {k['kld_unc']:.5f} | {k['kld_p99']:.4f} | {k['kld_max']:.4f} | "
          f"{100*k['same_top']:.2f} ± {100*k['same_top_unc']:.2f}% | {100*k['dp_mean']:+.3f}% | "
          f"{100*k['dp_rms']:.3f}% | {tps} |")
dev = json.loads(open(sys.argv[1].split("|", 1)[1]).read().strip().splitlines()[-1])
print()
print(f"{dev['scored']} scored positions ({dev['chunks_done']} chunks of {dev['n_ctx']}) of "
      f"{dev['file']} ({dev['n_tokens']} tokens), on {dev['device']}.")
PY
echo
echo "Commands (glint = $GLINT, run from the repository root):"
echo
for c in "${CMDS[@]}"; do echo "    $c"; done
