"""Checks of `glint serve` through the official OpenAI Python client (PyPI `openai`).

Run by tests/serve.rs and tests/serve_real.rs:
    python3 tests/serve_openai.py BASE_URL MODEL CHECKS API_KEY
CHECKS is a comma-separated list of: models, chat, completions, seed, stop, logprobs, auth.
Every check asserts; the script prints one "ok CHECK ..." line per passed check and exits non-zero
on the first failure.
"""

import os
import sys

import openai

base, model, checks, key = sys.argv[1], sys.argv[2], sys.argv[3].split(","), sys.argv[4]
client = openai.OpenAI(base_url=base, api_key=key or "none", max_retries=0, timeout=600)
MESSAGES = [{"role": "user", "content": "Write a haiku about the sea."}]
# Tokens per answer (the real model's test asks for fewer: it decodes ~2 tokens/s on lavapipe).
N = int(os.environ.get("SERVE_TOKENS", "24"))


def greedy(**kw):
    return dict(model=model, messages=MESSAGES, max_tokens=N, temperature=0, **kw)


def stream_text(chunks):
    """Text, finish reason and the chunks, checking the shape of every chunk."""
    chunks = list(chunks)
    assert chunks, "no chunks"
    ids = {c.id for c in chunks}
    created = {c.created for c in chunks}
    assert len(ids) == 1 and len(created) == 1, (ids, created)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    first = chunks[0].choices[0].delta
    assert first.role == "assistant", first
    text, finish, after_finish = "", None, []
    for c in chunks:
        if not c.choices:
            continue
        ch = c.choices[0]
        if finish is not None:
            after_finish.append(c)
        text += ch.delta.content or ""
        if ch.finish_reason is not None:
            finish = ch.finish_reason
    assert finish in ("stop", "length"), finish
    assert not after_finish, "chunks with choices after the finish reason"
    return text, finish, chunks


def check_models():
    ids = [m.id for m in client.models.list().data]
    assert ids == [model], ids
    print("ok models", ids)


def check_chat():
    whole = client.chat.completions.create(**greedy())
    assert whole.object == "chat.completion"
    msg = whole.choices[0].message
    assert msg.role == "assistant"
    text, finish, chunks = stream_text(
        client.chat.completions.create(
            **greedy(stream=True, stream_options={"include_usage": True}, logprobs=True)
        )
    )
    assert text == msg.content, (text, msg.content)
    assert finish == whole.choices[0].finish_reason
    # include_usage: the last chunk has no choices and the usage, which counts the tokens streamed
    # (one logprobs entry per token).
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None, last
    assert all(c.usage is None for c in chunks[:-1])
    n_tokens = sum(
        len(c.choices[0].logprobs.content)
        for c in chunks
        if c.choices and c.choices[0].logprobs is not None
    )
    assert last.usage.completion_tokens == n_tokens == whole.usage.completion_tokens, (
        last.usage,
        n_tokens,
        whole.usage,
    )
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + n_tokens
    if finish == "length":
        assert n_tokens == N
    print("ok chat", repr(text[:40]), whole.usage.completion_tokens, "tokens", finish)


def check_completions():
    kw = dict(model=model, prompt="The sea is", max_tokens=N, temperature=0)
    whole = client.completions.create(**kw)
    assert whole.object == "text_completion"
    text = ""
    finish = None
    chunks = list(client.completions.create(stream=True, **kw))
    assert len({c.id for c in chunks}) == 1
    for c in chunks:
        text += c.choices[0].text
        finish = c.choices[0].finish_reason or finish
    assert text == whole.choices[0].text, (text, whole.choices[0].text)
    assert finish == whole.choices[0].finish_reason
    print("ok completions", repr(text[:40]))


def check_seed():
    def sampled(seed):
        r = client.chat.completions.create(
            model=model, messages=MESSAGES, max_tokens=N, temperature=1.0, top_p=1.0, seed=seed
        )
        return r.choices[0].message.content

    a, b = sampled(42), sampled(42)
    assert a == b, (a, b)
    others = [sampled(s) for s in (1, 2, 3)]
    assert any(o != a for o in others), "every seed gave the same text"
    print("ok seed", repr(a[:40]))


def check_stop():
    text = client.chat.completions.create(**greedy()).choices[0].message.content
    # A stop string from the middle of the greedy answer: the answer ends right before its first
    # occurrence, with finish_reason "stop", streamed or not.
    mid = len(text) // 2
    stop = text[mid : mid + 3]
    assert len(stop) == 3, text
    want = text[: text.find(stop)]
    r = client.chat.completions.create(**greedy(stop=[stop, "\x00never"]))
    assert r.choices[0].message.content == want, (r.choices[0].message.content, want, stop)
    assert r.choices[0].finish_reason == "stop"
    s, finish, chunks = stream_text(client.chat.completions.create(**greedy(stop=stop, stream=True)))
    assert s == want and finish == "stop", (s, want, finish)
    print("ok stop", repr(stop), "->", repr(want[-20:]))


def check_logprobs():
    r = client.chat.completions.create(**greedy(logprobs=True, top_logprobs=3))
    c = r.choices[0]
    entries = c.logprobs.content
    assert len(entries) == r.usage.completion_tokens
    joined = b"".join(bytes(e.bytes) for e in entries).decode("utf-8", errors="replace")
    assert joined == c.message.content, (joined, c.message.content)
    for e in entries:
        tops = [t.logprob for t in e.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True), tops
        assert e.logprob <= 0 and abs(e.logprob - tops[0]) < 1e-5, (e.logprob, tops)
        assert e.top_logprobs[0].bytes == e.bytes
    print("ok logprobs", len(entries), "tokens")


def check_auth():
    ok = client.chat.completions.create(**dict(greedy(), max_tokens=2))
    assert ok.choices[0].message.content is not None
    bad = openai.OpenAI(base_url=base, api_key="wrong-key", max_retries=0)
    try:
        bad.models.list()
    except openai.AuthenticationError as e:
        assert e.status_code == 401
        print("ok auth", e.body)
        return
    raise AssertionError("a wrong key was accepted")


for name in checks:
    globals()["check_" + name]()
