#!/usr/bin/env python3
"""Rebuild the fuzz seed corpora in fuzz/seeds/<target>/ from the real models and the test fixtures.

Seeds are small on purpose (libFuzzer's input size limit follows the largest seed): the real GGUFs'
metadata with the vocabulary cut to its first few hundred tokens (merges kept consistent, the special
tokens kept), their tensor infos, a tiny Qwen2 rebuilt with the real keys and tensor types at toy
shapes, a safetensors model at toy shapes beside the fixtures' config.json files, and texts, messages
and ids from tests/fixtures. Needs models/ (scripts/fetch-model.sh). Deterministic: running it again
gives the same files.

    python3 fuzz/make_seeds.py
"""
import json
import os
import struct

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
MODELS = os.environ.get("GLINT_MODELS", os.path.join(ROOT, "models"))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
SEEDS = os.path.join(ROOT, "fuzz", "seeds")
QWEN = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
SMOL = "SmolLM2-135M-Instruct.Q4_1.gguf"

# --- GGUF reading and writing ---------------------------------------------------------------------
SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
STRING, ARRAY = 8, 9


class Reader:
    def __init__(self, f):
        self.f = f

    def get(self, fmt):
        n = struct.calcsize("<" + fmt)
        return struct.unpack("<" + fmt, self.f.read(n))

    def string(self):
        (n,) = self.get("Q")
        return self.f.read(n)

    def value(self, t):
        if t in SCALAR:
            return self.get(SCALAR[t])[0]
        if t == STRING:
            return self.string()
        (et,) = self.get("I")
        (n,) = self.get("Q")
        return (et, [self.value(et) for _ in range(n)])


def read_gguf(path):
    """(version, [(key, type, value)], [(name, dims, ggml_type)]) of a GGUF file's header."""
    with open(path, "rb") as f:
        r = Reader(f)
        assert f.read(4) == b"GGUF"
        (version,) = r.get("I")
        n_tensors, n_kv = r.get("QQ")
        kvs = []
        for _ in range(n_kv):
            key = r.string().decode()
            (t,) = r.get("I")
            kvs.append((key, t, r.value(t)))
        tensors = []
        for _ in range(n_tensors):
            name = r.string().decode()
            (nd,) = r.get("I")
            dims = r.get("Q" * nd)
            (ty,) = r.get("I")
            r.get("Q")  # offset: recomputed
            tensors.append((name, dims, ty))
    return version, kvs, tensors


def w_string(b):
    return struct.pack("<Q", len(b)) + b


def w_value(t, v):
    if t in SCALAR:
        return struct.pack("<" + SCALAR[t], v)
    if t == STRING:
        return w_string(v)
    et, items = v
    return struct.pack("<IQ", et, len(items)) + b"".join(w_value(et, x) for x in items)


# ggml type -> (block size, block bytes)
BLOCK = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
         10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 30: (1, 2)}


def tensor_bytes(dims, ty):
    bs, bb = BLOCK[ty]
    n = 1
    for d in dims:
        n *= d
    return n // bs * bb


def write_gguf(path, version, kvs, tensors, with_data=True, alignment=32):
    """Tensors are (name, dims, type[, data]); offsets are laid out in order, aligned. Without data
    the file ends after the tensor infos (a header-only seed: the parser rejects it at the data)."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for key, t, v in kvs:
        out += w_string(key.encode()) + struct.pack("<I", t) + w_value(t, v)
    offset, blobs = 0, []
    for t in tensors:
        name, dims, ty = t[:3]
        out += w_string(name.encode()) + struct.pack("<I", len(dims))
        out += b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ty, offset)
        size = tensor_bytes(dims, ty)
        data = t[3] if len(t) > 3 else b"\0" * size
        assert len(data) == size, name
        blobs.append((offset, data))
        offset = (offset + size + alignment - 1) // alignment * alignment
    if with_data:
        out += b"\0" * (-len(out) % alignment)
        base = len(out)
        for off, data in blobs:
            out += b"\0" * (base + off - len(out)) + data
    write(path, out)


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    print(f"{os.path.relpath(path, ROOT)}: {len(data)} bytes")


# --- Vocabulary trimming --------------------------------------------------------------------------
def trim_vocab(kvs, n_keep):
    """The kvs with tokenizer.ggml.tokens cut to its first n_keep tokens plus the special ones that
    bos/eos/padding/eot name (appended), token_type cut alike, merges kept where both halves and the
    result are kept, and the special ids renumbered."""
    kv = {k: (t, v) for k, t, v in kvs}
    tokens = kv["tokenizer.ggml.tokens"][1][1]
    types = kv["tokenizer.ggml.token_type"][1][1]
    id_keys = [k for k in kv if k.startswith("tokenizer.ggml.") and k.endswith("_token_id")]
    specials = sorted({kv[k][1] for k in id_keys if kv[k][1] >= n_keep})
    keep = list(range(n_keep)) + specials
    new_id = {old: new for new, old in enumerate(keep)}
    kept = {tokens[i] for i in keep}
    merges = [m for m in kv["tokenizer.ggml.merges"][1][1]
              if len(m.split(b" ")) == 2 and all(p in kept for p in m.split(b" "))
              and m.replace(b" ", b"") in kept]
    out = []
    for k, t, v in kvs:
        if k == "tokenizer.ggml.tokens":
            v = (STRING, [tokens[i] for i in keep])
        elif k == "tokenizer.ggml.token_type":
            v = (v[0], [types[i] for i in keep])
        elif k == "tokenizer.ggml.merges":
            v = (STRING, merges)
        elif k in id_keys:
            v = new_id[v]
        out.append((k, t, v))
    return out, len(keep)


def set_kv(kvs, key, t, v):
    out = [(k, kt, kv) for k, kt, kv in kvs if k != key]
    return out + [(key, t, v)]


# --- GPT-2 byte-level alphabet (for byte-token seeds) ---------------------------------------------
def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def main():
    qwen_v, qwen_kvs, qwen_tensors = read_gguf(os.path.join(MODELS, QWEN))
    smol_v, smol_kvs, smol_tensors = read_gguf(os.path.join(MODELS, SMOL))

    # gguf_parse: the real headers (vocabulary trimmed), tensor infos kept, data cut off.
    q_kvs, q_vocab = trim_vocab(qwen_kvs, 288)
    write_gguf(f"{SEEDS}/gguf_parse/qwen2.5-coder-header.gguf", qwen_v, q_kvs, qwen_tensors,
               with_data=False)
    s_kvs, _ = trim_vocab(smol_kvs, 288)
    write_gguf(f"{SEEDS}/gguf_parse/smollm2-header.gguf", smol_v, s_kvs, smol_tensors,
               with_data=False)

    # A whole tiny Qwen2: the real keys (trimmed vocabulary, template), toy shapes, the real
    # tensor kinds with a spread of types (tied embeddings: no output.weight).
    h, ffn, heads, kv_heads = 32, 64, 2, 1
    kvd = h // heads * kv_heads
    tiny = q_kvs
    for key, v in [("qwen2.block_count", 1), ("qwen2.context_length", 128),
                   ("qwen2.embedding_length", h), ("qwen2.feed_forward_length", ffn),
                   ("qwen2.attention.head_count", heads), ("qwen2.attention.head_count_kv", kv_heads)]:
        tiny = [(k, t, v if k == key else x) for k, t, x in tiny]
    one = struct.pack("<f", 1.0)
    tensors = [
        ("token_embd.weight", (h, q_vocab), 8),
        ("output_norm.weight", (h,), 0, one * h),
        ("blk.0.attn_norm.weight", (h,), 0, one * h),
        ("blk.0.ffn_norm.weight", (h,), 0, one * h),
        ("blk.0.attn_q.weight", (h, h), 6),
        ("blk.0.attn_q.bias", (h,), 0),
        ("blk.0.attn_k.weight", (h, kvd), 6),
        ("blk.0.attn_k.bias", (kvd,), 0),
        ("blk.0.attn_v.weight", (h, kvd), 8),
        ("blk.0.attn_v.bias", (kvd,), 0),
        ("blk.0.attn_output.weight", (h, h), 2),
        ("blk.0.ffn_gate.weight", (h, ffn), 3),
        ("blk.0.ffn_up.weight", (h, ffn), 7),
        ("blk.0.ffn_down.weight", (ffn, h), 1),
    ]
    for target in ["gguf_parse", "gguf_vocab"]:
        write_gguf(f"{SEEDS}/{target}/qwen2-tiny.gguf", 3, tiny, tensors)
    # The same with no tensors beyond the embedding and GGUF v2, for the vocabulary target.
    write_gguf(f"{SEEDS}/gguf_vocab/qwen2-tiny-v2-embd-only.gguf", 2, tiny, tensors[:1])

    # safetensors_config: config.json SEP generation_config.json SEP model.safetensors.
    sep = b"\xff\xfe--\xfe\xff"
    st_cfg = json.load(open(os.path.join(FIXTURES, "tiny-qwen2", "config.json")))
    st_cfg.update(hidden_size=8, intermediate_size=16, num_attention_heads=2, num_key_value_heads=1,
                  num_hidden_layers=1, vocab_size=32, max_position_embeddings=64)
    st_cfg.pop("head_dim", None)
    for tied in [True, False]:
        cfg = dict(st_cfg, tie_word_embeddings=tied)
        gen = open(os.path.join(FIXTURES, "tiny-qwen2", "generation_config.json"), "rb").read()
        name = "tiny-tied" if tied else "tiny-untied"
        weights = toy_safetensors(cfg)
        write(f"{SEEDS}/safetensors_config/{name}",
              json.dumps(cfg).encode() + sep + gen + sep + weights)
    for fixture in ["tiny-qwen2", "tiny-qwen2-untied", "qwen2.5-coder-0.5b-instruct"]:
        cfg = open(os.path.join(FIXTURES, fixture, "config.json"), "rb").read()
        gen = open(os.path.join(FIXTURES, fixture, "generation_config.json"), "rb").read()
        write(f"{SEEDS}/safetensors_config/{fixture}-config",
              cfg + sep + gen + sep + toy_safetensors(st_cfg))

    # tokenizer and stream_decoder: the golden texts and their ids.
    golden = json.load(open(os.path.join(FIXTURES, "tokenizer_golden_dev.json")))["cases"]
    for i, case in enumerate(golden):
        write(f"{SEEDS}/tokenizer/{i:02}-{case['category']}.txt", case["text"].encode())
        stops = bytes([2, 3, 2, 0, 5])  # two stops: chars 3..5 and the first 6 chars
        ids = b"".join(struct.pack("<I", x) for x in case["ids"])
        write(f"{SEEDS}/stream_decoder/{i:02}-{case['category']}", stops + ids)
    # Multi-byte characters as single-byte tokens (top bit set: id & 0xff), Qwen's first 256 ids.
    q_tokens = dict((k, v) for k, _, v in qwen_kvs)["tokenizer.ggml.tokens"][1]
    char_id = {t.decode(): i for i, t in enumerate(q_tokens[:256])}
    b2u = bytes_to_unicode()
    text = "naïve 世界 🙂 ok".encode()
    ids = b"".join(struct.pack("<I", 0x8000_0000 | char_id[b2u[b]]) for b in text)
    write(f"{SEEDS}/stream_decoder/bytes-multibyte", bytes([1, 6, 2]) + ids)

    # chat_template: byte 0 = template (% 3) | add_generation_prompt (4) | JSON mode (8).
    convo = [("system", "You are a helpful assistant."), ("user", "Write hello world in C."),
             ("assistant", "printf(\"hello\\n\");"), ("user", "Now in Rust, 世界 🙂")]
    raw = "\0".join(f"{r}\x01{c}" for r, c in convo).encode()
    js = json.dumps([{"role": r, "content": c} for r, c in convo], ensure_ascii=False).encode()
    for t in range(3):
        write(f"{SEEDS}/chat_template/raw-{t}", bytes([t | 4]) + raw)
        write(f"{SEEDS}/chat_template/json-{t}", bytes([t | 4 | 8]) + js)
    write(f"{SEEDS}/chat_template/user-only", bytes([0]) + "just a question?".encode())

    # stop_filter: stops separated by \x01, then NUL-separated pieces.
    for name, stops, pieces in [
        ("blank-line", ["\n\n"], ["Hello", "\n", "\nWorld"]),
        ("split-end", ["END"], ["abc E", "N", "D more"]),
        ("released", ["END"], ["abc EN", "x"]),
        ("multibyte", ["世界", "b"], ["a世", "界b"]),
        ("emoji", ["🙂!", "</s>"], ["ok 🙂", "?", "</", "s>"]),
        ("overlap", ["aab", "ab"], ["a", "a", "a", "b"]),
    ]:
        write(f"{SEEDS}/stop_filter/{name}", ("\x01".join(stops) + "\0" + "\0".join(pieces)).encode())

    # server_request: request bodies as clients send them (tests/serve.rs's cases and the README's).
    msgs = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi 世界"}]
    for name, body in [
        ("chat-min", {"messages": [{"role": "user", "content": "Hello"}]}),
        ("chat-full", {"model": "glint", "messages": msgs, "max_tokens": 32, "temperature": 0.7,
                       "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repeat_penalty": 1.1, "seed": 42,
                       "stop": ["\n\n", "END"], "stream": True, "stream_options": {"include_usage": True},
                       "logprobs": True, "top_logprobs": 5, "n": 1}),
        ("chat-parts", {"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"},
                                                                        {"type": "text", "text": "b"}]},
                                     {"role": "user", "content": None}], "max_completion_tokens": 8}),
        ("chat-bad-type", {"messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}),
        ("chat-refused", {"messages": [], "n": 2, "presence_penalty": 0.5}),
        ("completion-text", {"prompt": "def fib(n):", "max_tokens": 16, "stop": "\n", "logprobs": 3}),
        ("completion-ids", {"prompt": [151644, 872, 198], "max_tokens": 4, "temperature": 0}),
        ("completion-list", {"prompt": ["one", "two"], "echo": False, "best_of": 1}),
    ]:
        write(f"{SEEDS}/server_request/{name}.json", json.dumps(body, ensure_ascii=False).encode())
    write(f"{SEEDS}/server_request/not-json", b'{"messages": [{"role": "user", "content": "x"}')


def toy_safetensors(cfg):
    """A safetensors file with the tensors a Qwen2 config asks for, at its shapes, in BF16 (norms
    in F32, one matrix in F16); data of a simple pattern."""
    h, i = cfg["hidden_size"], cfg["intermediate_size"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = h // heads
    shapes = [("model.embed_tokens.weight", [cfg["vocab_size"], h], "BF16")]
    if not cfg.get("tie_word_embeddings", False):
        shapes.append(("lm_head.weight", [cfg["vocab_size"], h], "BF16"))
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}"
        shapes += [
            (f"{p}.self_attn.q_proj.weight", [heads * hd, h], "BF16"),
            (f"{p}.self_attn.q_proj.bias", [heads * hd], "BF16"),
            (f"{p}.self_attn.k_proj.weight", [kv * hd, h], "F16"),
            (f"{p}.self_attn.k_proj.bias", [kv * hd], "F16"),
            (f"{p}.self_attn.v_proj.weight", [kv * hd, h], "BF16"),
            (f"{p}.self_attn.v_proj.bias", [kv * hd], "BF16"),
            (f"{p}.self_attn.o_proj.weight", [h, heads * hd], "BF16"),
            (f"{p}.mlp.gate_proj.weight", [i, h], "BF16"),
            (f"{p}.mlp.up_proj.weight", [i, h], "BF16"),
            (f"{p}.mlp.down_proj.weight", [h, i], "BF16"),
            (f"{p}.input_layernorm.weight", [h], "F32"),
            (f"{p}.post_attention_layernorm.weight", [h], "F32"),
        ]
    shapes.append(("model.norm.weight", [h], "F32"))
    header, data = {"__metadata__": {"format": "pt"}}, b""
    for name, shape, dtype in shapes:
        n = 1
        for d in shape:
            n *= d
        width = 4 if dtype == "F32" else 2
        blob = bytes((k * 7 + 1) % 64 for k in range(n * width))
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(blob)]}
        data += blob
    h_bytes = json.dumps(header).encode()
    h_bytes += b" " * (-len(h_bytes) % 8)
    return struct.pack("<Q", len(h_bytes)) + h_bytes + data


if __name__ == "__main__":
    main()
