#!/usr/bin/env python3
"""Write an f16 GGUF file from a Qwen2 safetensors directory, for llama-quantize (docs/QUALITY.md).

llama.cpp's convert_hf_to_gguf.py does this job but needs torch, which these machines do not have; this
script does the same for the Qwen2 family with the `gguf` and `numpy` packages only: every 2-D weight in
f16 (bf16 -> f32 -> f16, round to nearest, as the convert script's --outtype f16), norms and biases in f32,
llama.cpp's tensor names, and the metadata (hyper-parameters, tokenizer, chat template) copied from a GGUF
file of the same model (--meta), with general.file_type set to MOSTLY_F16.

Usage: scripts/qwen2_hf_to_gguf_f16.py MODEL_DIR --meta SAME_MODEL.gguf -o OUT.gguf
"""
import argparse
import json
import struct
import sys

import numpy as np
import gguf

NAMES = {
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    parts = hf.split(".")
    if parts[:2] == ["model", "layers"]:
        layer, rest, kind = parts[2], ".".join(parts[3:-1]), parts[-1]
        if rest in NAMES:
            return f"blk.{layer}.{NAMES[rest]}.{kind}"
    sys.exit(f"qwen2_hf_to_gguf_f16: unexpected tensor {hf!r}")


def read_safetensors(path: str):
    """(name, f32 array) for every tensor of one safetensors file (bf16, f16 or f32)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = data[a:b]
        dtype, shape = info["dtype"], info["shape"]
        if dtype == "BF16":
            bits = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = bits.view(np.float32)
        elif dtype == "F16":
            arr = np.frombuffer(raw, dtype="<f2").astype(np.float32)
        elif dtype == "F32":
            arr = np.frombuffer(raw, dtype="<f4").copy()
        else:
            sys.exit(f"qwen2_hf_to_gguf_f16: {name}: dtype {dtype} not handled")
        yield name, arr.reshape(shape)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--meta", required=True, help="a GGUF file of the same model (metadata source)")
    ap.add_argument("-o", "--out", required=True)
    a = ap.parse_args()
    meta = gguf.GGUFReader(a.meta)
    arch = meta.fields["general.architecture"].contents()
    if arch != "qwen2":
        sys.exit(f"qwen2_hf_to_gguf_f16: {a.meta} is {arch!r}, not qwen2")
    w = gguf.GGUFWriter(a.out, arch)
    for key, field in meta.fields.items():
        if key.startswith("GGUF.") or key in ("general.architecture", "general.file_type"):
            continue
        sub = field.types[1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, field.contents(), field.types[0], sub)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    index = f"{a.model_dir}/model.safetensors.index.json"
    try:
        files = sorted(set(json.load(open(index))["weight_map"].values()))
    except FileNotFoundError:
        files = ["model.safetensors"]
    for file in files:
        for name, arr in read_safetensors(f"{a.model_dir}/{file}"):
            t = arr.astype(np.float16) if arr.ndim == 2 else arr.astype(np.float32)
            w.add_tensor(gguf_name(name), t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(a.out)


if __name__ == "__main__":
    main()
