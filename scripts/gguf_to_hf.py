#!/usr/bin/env python3
"""Write the Hugging Face form (bf16 model.safetensors + config/tokenizer files) of the Qwen2 GGUF that
fetch-model.sh assembles, so the safetensors path can be tested on the same real weights.
Needs: pip install gguf numpy. Usage: gguf_to_hf.py MODEL.gguf OUT_DIR
The weights are the GGUF's, dequantized by gguf-py and rounded to bf16 (round to nearest even), as
transformers' own GGUF loader + save_pretrained(bf16) does. Names follow transformers' Qwen2 layout."""
import json, os, shutil, sys
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

src, out = sys.argv[1], sys.argv[2]
# The model's Hugging Face side files (config, tokenizer) ship in the repo's test fixtures.
here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                    "qwen2.5-coder-0.5b-instruct")
os.makedirs(out, exist_ok=True)

names = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
per_layer = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
             "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
             "ffn_down": "mlp.down_proj"}

def hf_name(n):
    base, kind = n.rsplit(".", 1)
    if base.startswith("blk."):
        _, i, part = base.split(".", 2)
        return f"model.layers.{i}.{per_layer[part]}.{kind}"
    return f"{names[base]}.{kind}"

def bf16_bits(x):
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16          # round to nearest even
    return u.astype(np.uint16)

reader = GGUFReader(src)
header, blobs, offset = {}, [], 0
for t in reader.tensors:
    shape = [int(d) for d in reversed(t.shape)]        # GGUF dims run fastest-first
    w = dequantize(t.data, t.tensor_type).reshape(shape)
    b = bf16_bits(w).tobytes()
    header[hf_name(t.name)] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + len(b)]}
    blobs.append(b)
    offset += len(b)
header = dict(sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]))
header["__metadata__"] = {"format": "pt"}
h = json.dumps(header, separators=(",", ":")).encode()
h += b" " * (-len(h) % 8)
with open(os.path.join(out, "model.safetensors"), "wb") as f:
    f.write(len(h).to_bytes(8, "little"))
    f.write(h)
    for b in blobs:
        f.write(b)
for name in ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
    shutil.copy(os.path.join(here, name), os.path.join(out, name))
print(out)
