//! `glint serve` on the tiny Qwen2 fixture (fast), the real binary on 127.0.0.1 with an ephemeral
//! port: batching does not change answers (exact ids, against transformers' greedy ids), logprobs
//! against a CPU log-softmax of transformers' logits, the official `openai` Python client (stream and
//! non-stream, chunk shape, usage, seeds, stop strings, logprobs, API key), every error case with its
//! status and OpenAI body, a disconnect freeing its slot, 50 concurrent streams, and SIGTERM.

#[path = "common/cli.rs"]
mod cli;
mod common;
#[path = "common/server.rs"]
mod server;

use serde_json::{json, Value};
use server::{request, send, sse_data, Server};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A server on the tiny model, named by repo id in a fake Hugging Face cache with tokenizer `tok`.
fn tiny(name: &str, tok: cli::Tok, args: &[&str]) -> Option<(Server, PathBuf)> {
    common::gpu()?;
    let dir = cli::temp_dir(name);
    let cache = cli::fake_hf_cache(&dir, tok);
    let mut all = vec!["-m", "test/tiny-qwen2"];
    all.extend_from_slice(args);
    let t0 = Instant::now();
    let s = Server::start(
        &all,
        &[("HF_HUB_CACHE", &cache), ("HF_HUB_OFFLINE", Path::new("1"))],
    );
    eprintln!(
        "{name}: server ready in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Some((s, dir))
}

struct Case {
    input: Vec<u32>,
    greedy: Vec<u32>,
    /// transformers' logits after the last input token.
    last_logits: Vec<f64>,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(common::fixture("tiny-qwen2/golden.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let ids = |x: &Value| -> Vec<u32> {
        x.as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect()
    };
    v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            input: ids(&c["input_ids"]),
            greedy: ids(&c["greedy_ids"]),
            last_logits: c["logits"]
                .as_array()
                .unwrap()
                .last()
                .unwrap()
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_f64().unwrap())
                .collect(),
        })
        .collect()
}

fn tokens(r: &Value) -> Vec<u32> {
    r["choices"][0]["tokens"]
        .as_array()
        .unwrap_or_else(|| panic!("no tokens in {r}"))
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect()
}

/// Batching does not change answers: 4 greedy prompts sent at once get the ids each gets alone,
/// which are transformers' greedy ids for the golden cases. Logprobs are log_softmax of the logits.
/// The goldens are float64: the f32 KV cache (f16's rounding is tested in tests/tiny_models.rs).
#[test]
fn batched_answers_equal_alone_and_logprobs_match_transformers() {
    let args = ["--parallel", "4", "--kv-type", "f32"];
    let Some((s, _dir)) = tiny("serve-ids", cli::Tok::Qwen, &args) else {
        return;
    };
    let cs = cases();
    let mut prompts: Vec<Vec<u32>> = cs.iter().map(|c| c.input.clone()).collect();
    prompts.push(cs[2].input.iter().rev().copied().collect());
    let body = |p: &Vec<u32>| json!({"prompt": p, "max_tokens": 16, "temperature": 0, "return_tokens": true});
    let alone: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let r = s.post("/v1/completions", &body(p));
            assert_eq!(r.status, 200, "{}", r.text());
            tokens(&r.json())
        })
        .collect();
    for (c, a) in cs.iter().zip(&alone) {
        assert_eq!(a, &c.greedy, "alone: transformers' greedy ids");
    }
    for round in 0..2 {
        let together: Vec<Vec<u32>> = std::thread::scope(|sc| {
            let hs: Vec<_> = prompts
                .iter()
                .map(|p| {
                    let b = body(p);
                    let s = &s;
                    sc.spawn(move || s.post("/v1/completions", &b))
                })
                .collect();
            hs.into_iter()
                .map(|h| {
                    let r = h.join().unwrap();
                    assert_eq!(r.status, 200, "{}", r.text());
                    tokens(&r.json())
                })
                .collect()
        });
        assert_eq!(together, alone, "round {round}: batched != alone");
    }
    // Logprobs of the first answer token against log_softmax of transformers' logits (f64).
    for c in &cs {
        let r = s.post(
            "/v1/completions",
            &json!({"prompt": c.input, "max_tokens": 1, "temperature": 0, "logprobs": 5, "return_tokens": true}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let lp = &v["choices"][0]["logprobs"];
        let max = c
            .last_logits
            .iter()
            .cloned()
            .fold(f64::NEG_INFINITY, f64::max);
        let lse = max
            + c.last_logits
                .iter()
                .map(|x| (x - max).exp())
                .sum::<f64>()
                .ln();
        let want: Vec<f64> = c.last_logits.iter().map(|x| x - lse).collect();
        let chosen = tokens(&v)[0] as usize;
        assert_eq!(chosen as u32, c.greedy[0]);
        let got = lp["token_logprobs"][0].as_f64().unwrap();
        assert!(
            (got - want[chosen]).abs() < 1e-4,
            "chosen {got} vs {}",
            want[chosen]
        );
        // The legacy format keys alternatives by their text, and Qwen's tokenizer shows the tiny
        // model's byte tokens >= 0x80 alike (U+FFFD): check the values that came through.
        let mut top: Vec<f64> = lp["top_logprobs"][0]
            .as_object()
            .unwrap()
            .values()
            .map(|x| x.as_f64().unwrap())
            .collect();
        top.sort_by(|a, b| b.partial_cmp(a).unwrap());
        let mut all = want.clone();
        all.sort_by(|a, b| b.partial_cmp(a).unwrap());
        assert!(
            !top.is_empty() && (top[0] - all[0]).abs() < 1e-4,
            "{top:?} vs {:?}",
            &all[..5]
        );
        for g in &top {
            assert!(
                all[..5].iter().any(|w| (g - w).abs() < 1e-4),
                "{top:?} vs {:?}",
                &all[..5]
            );
        }
    }
    let m = s.metric("generated_tokens_total");
    assert_eq!(m, (16 * 4 * 3 + 3) as f64, "every generated token counted");
}

/// The official OpenAI client: models, chat (stream = non-stream, chunk shape, include_usage),
/// completions, seeds, stop strings, logprobs, API key.
#[test]
fn openai_python_client() {
    let Some((s, _dir)) = tiny(
        "serve-openai",
        cli::Tok::Bytes,
        &["--parallel", "2", "--api-key", "sk-test-1"],
    ) else {
        return;
    };
    let base = format!("http://{}/v1", s.addr);
    let t0 = Instant::now();
    let Some(out) = server::openai_checks(
        &base,
        "test/tiny-qwen2",
        "models,chat,completions,seed,stop,logprobs,auth",
        "sk-test-1",
        24,
    ) else {
        return;
    };
    eprintln!("{out}openai checks: {:.1} s", t0.elapsed().as_secs_f64());
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        7,
        "{out}"
    );
}

fn error_of(r: &server::Response, status: u16) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with("application/json"),
        "{:?}",
        r.headers
    );
    let v = r.json();
    // With --nocapture: the bodies of docs/RELIABILITY.md's server table.
    println!("{status} {v}");
    let e = &v["error"];
    for k in ["message", "type", "param", "code"] {
        assert!(e.get(k).is_some(), "error body without '{k}': {v}");
    }
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    e.clone()
}

/// Every error case: its status and OpenAI's error body, naming the field at fault.
#[test]
fn errors_have_their_status_and_openai_body() {
    let dir = cli::temp_dir("serve-keyfile");
    let keyfile = dir.join("keys.txt");
    std::fs::write(&keyfile, "# keys\nsk-a\n\nsk-b\n").unwrap();
    let Some((s, _dir)) = tiny(
        "serve-errors",
        cli::Tok::Bytes,
        &[
            "--parallel",
            "1",
            "--queue-size",
            "1",
            "--ctx-size",
            "2048",
            "--max-body",
            "4096",
            "--api-key-file",
            keyfile.to_str().unwrap(),
        ],
    ) else {
        return;
    };
    let a = &s.addr;
    let json_h = ("Content-Type", "application/json");
    let post = |path: &str, key: Option<&str>, body: &[u8]| {
        let auth = key.map(|k| format!("Bearer {k}"));
        let mut h = vec![json_h];
        if let Some(x) = auth.as_deref() {
            h.push(("Authorization", x));
        }
        request(a, "POST", path, &h, body)
    };
    let chat = |body: Value| {
        post(
            "/v1/chat/completions",
            Some("sk-b"),
            body.to_string().as_bytes(),
        )
    };
    let hi = json!([{"role": "user", "content": "hi"}]);

    // 401 without a key or with a wrong one; /health stays public.
    let e = error_of(&post("/v1/chat/completions", None, b"{}"), 401);
    assert_eq!(e["code"], "invalid_api_key");
    let e = error_of(&post("/v1/chat/completions", Some("sk-c"), b"{}"), 401);
    assert_eq!(e["message"], "incorrect API key");
    assert_eq!(s.get("/health").status, 200);
    assert_eq!(
        error_of(&s.get("/v1/models"), 401)["code"],
        "invalid_api_key"
    );
    let ok = chat(json!({"messages": hi, "max_tokens": 2, "unknown_field": {"x": 1}}));
    assert_eq!(ok.status, 200, "unknown fields are ignored: {}", ok.text());
    assert_eq!(ok.json()["usage"]["completion_tokens"], 2);

    // 400: malformed JSON, wrong types, empty or missing messages, n > 1, penalties, logprobs.
    let e = error_of(
        &post("/v1/chat/completions", Some("sk-a"), b"{\"messages\": [}"),
        400,
    );
    assert_eq!(e["code"], "invalid_json");
    let e = error_of(&chat(json!({"messages": hi, "temperature": "hot"})), 400);
    assert_eq!(e["param"], "temperature");
    let e = error_of(&chat(json!({"messages": hi, "max_tokens": -1})), 400);
    assert_eq!(e["param"], "max_tokens");
    let e = error_of(
        &chat(json!({"messages": [{"role": "user", "content": 5}]})),
        400,
    );
    assert_eq!(e["param"], "messages[0].content");
    let e = error_of(&chat(json!({"messages": []})), 400);
    assert_eq!(e["param"], "messages");
    let e = error_of(&chat(json!({"max_tokens": 3})), 400);
    assert_eq!(e["param"], "messages");
    let e = error_of(&chat(json!({"messages": hi, "n": 2})), 400);
    assert_eq!(e["param"], "n");
    let e = error_of(&chat(json!({"messages": hi, "presence_penalty": 0.5})), 400);
    assert_eq!(e["param"], "presence_penalty");
    assert!(e["message"].as_str().unwrap().contains("repeat_penalty"));
    let e = error_of(
        &chat(json!({"messages": hi, "logprobs": true, "top_logprobs": 21})),
        400,
    );
    assert_eq!(e["param"], "top_logprobs");
    let e = error_of(&chat(json!({"messages": hi, "top_logprobs": 2})), 400);
    assert_eq!(e["param"], "top_logprobs");
    let e = error_of(&chat(json!({"messages": hi, "top_p": 1.5})), 400);
    assert_eq!(e["param"], "top_p");
    let e = error_of(&chat(json!({"messages": hi, "max_tokens": 0})), 400);
    assert_eq!(e["param"], "max_tokens");
    // A prompt longer than a slot's context: how long it was and what fits.
    let long = "x".repeat(2100);
    let e = error_of(
        &chat(json!({"messages": [{"role": "user", "content": long}]})),
        400,
    );
    assert_eq!(e["param"], "messages");
    assert_eq!(e["code"], "context_length_exceeded");
    let m = e["message"].as_str().unwrap();
    assert!(
        m.contains("the prompt is 21") && m.contains("holds 2048"),
        "{m}"
    );

    // 404: unknown route, unknown model; 405: wrong method.
    let e = error_of(&post("/v1/nothing", Some("sk-a"), b"{}"), 404);
    assert_eq!(e["code"], "unknown_url");
    let e = error_of(&chat(json!({"messages": hi, "model": "gpt-4o"})), 404);
    assert_eq!(
        (e["param"].as_str(), e["code"].as_str()),
        (Some("model"), Some("model_not_found"))
    );
    let r = request(
        a,
        "GET",
        "/v1/chat/completions",
        &[("Authorization", "Bearer sk-a")],
        b"",
    );
    error_of(&r, 405);

    // 413: a body over --max-body.
    let big = json!({"messages": [{"role": "user", "content": "y".repeat(5000)}]});
    let e = error_of(&chat(big), 413);
    assert_eq!(e["code"], "request_too_large");

    // 503: one slot busy, one request queued (it hears so, as a comment, while it waits), the next
    // is refused.
    let stream_body = |n: u32| {
        json!({"messages": [{"role": "user", "content": format!("story {n}")}], "max_tokens": 1500,
               "stream": true, "temperature": 0})
        .to_string()
    };
    let auth = ("Authorization", "Bearer sk-a");
    let mut first = send(
        a,
        "POST",
        "/v1/chat/completions",
        &[json_h, auth],
        stream_body(1).as_bytes(),
    );
    read_until(&mut first, |t| sse_data(t).len() >= 3);
    let mut second = send(
        a,
        "POST",
        "/v1/chat/completions",
        &[json_h, auth],
        stream_body(2).as_bytes(),
    );
    let seen = read_until(&mut second, |t| t.contains(": queued: position 1"));
    assert!(seen.contains("text/event-stream"), "{seen}");
    let e = error_of(&chat(json!({"messages": hi})), 503);
    assert_eq!(e["code"], "server_busy");
    assert_eq!(s.metric_with("requests_rejected_total", Some("sk-a")), 1.0);
    drop(first);
    // The queued one gets the slot and completes.
    let mut rest = String::new();
    second.read_to_string(&mut rest).unwrap();
    let all = seen + &rest;
    let body = server::parse_response(all.as_bytes());
    let ev = body.events();
    assert_eq!(ev.last().unwrap(), "[DONE]", "{all}");
}

/// Read from a stream until `done(text so far)`, for at most 60 s.
fn read_until(s: &mut std::net::TcpStream, done: impl Fn(&str) -> bool) -> String {
    let mut buf = Vec::new();
    let t0 = Instant::now();
    let mut chunk = [0u8; 4096];
    while !done(&String::from_utf8_lossy(&buf)) {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "timed out: {}",
            String::from_utf8_lossy(&buf)
        );
        let n = s.read(&mut chunk).unwrap();
        assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&buf));
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

/// A streamed chat answer read to the end: (text, finish reason), checking every chunk.
fn streamed(addr: &str, body: &Value) -> (String, String) {
    let r = request(
        addr,
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = r.events();
    assert_eq!(
        ev.last().map(String::as_str),
        Some("[DONE]"),
        "truncated: {ev:?}"
    );
    let chunks: Vec<Value> = ev[..ev.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let id = &chunks[0]["id"];
    assert!(chunks.iter().all(|c| &c["id"] == id), "mixed ids: {ev:?}");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut text = String::new();
    for c in &chunks {
        text.push_str(c["choices"][0]["delta"]["content"].as_str().unwrap_or(""));
    }
    let finish = chunks.last().unwrap()["choices"][0]["finish_reason"]
        .as_str()
        .unwrap_or_else(|| panic!("no finish reason: {ev:?}"))
        .to_string();
    (text, finish)
}

/// A client that disconnects mid-stream frees its slot; 50 concurrent streaming clients (more than
/// the slots: they queue) all get their whole answer, none mixed, memory stays flat, and the server
/// keeps serving.
#[test]
fn disconnects_free_slots_and_fifty_streams_complete() {
    // A context long enough that a stream runs for seconds (the tiny model decodes in ~4 ms).
    let args = ["--parallel", "4", "--ctx-size", "2048"];
    let Some((s, _dir)) = tiny("serve-load", cli::Tok::Bytes, &args) else {
        return;
    };
    // Disconnect mid-stream.
    let body = json!({"messages": [{"role": "user", "content": "a long story"}], "max_tokens": 1500,
                      "stream": true, "temperature": 0});
    let mut c = send(
        &s.addr,
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    read_until(&mut c, |t| sse_data(t).len() >= 4);
    drop(c);
    server::wait_until(Duration::from_secs(20), "the slot to be freed", || {
        s.metric("busy_slots") == 0.0
    });
    assert_eq!(s.metric("requests_cancelled_total"), 1.0);
    assert!(
        s.metric("generated_tokens_total") < 1000.0,
        "generation went on"
    );

    let prompts: Vec<Value> = (0..5)
        .map(|i| json!([{"role": "user", "content": format!("prompt number {i}")}]))
        .collect();
    let want: Vec<(String, String)> = prompts
        .iter()
        .map(|m| {
            streamed(
                &s.addr,
                &json!({"messages": m, "max_tokens": 12, "temperature": 0, "stream": true}),
            )
        })
        .collect();
    let round = |n: usize| {
        std::thread::scope(|sc| {
            let hs: Vec<_> = (0..n)
                .map(|i| {
                    let b = json!({"messages": prompts[i % 5], "max_tokens": 12, "temperature": 0,
                                   "stream": true});
                    let addr = s.addr.clone();
                    sc.spawn(move || streamed(&addr, &b))
                })
                .collect();
            for (i, h) in hs.into_iter().enumerate() {
                assert_eq!(h.join().unwrap(), want[i % 5], "client {i}");
            }
        })
    };
    let t0 = Instant::now();
    round(50);
    let rss1 = s.rss_kib();
    round(50);
    let rss2 = s.rss_kib();
    eprintln!(
        "2 x 50 streams: {:.1} s, RSS {rss1:?} -> {rss2:?} KiB",
        t0.elapsed().as_secs_f64()
    );
    if let (Some(a), Some(b)) = (rss1, rss2) {
        assert!(
            b < a + 16 * 1024,
            "memory grew from {a} to {b} KiB over 50 requests"
        );
    }
    assert_eq!(s.metric("busy_slots"), 0.0);
    assert_eq!(s.metric("queue_length"), 0.0);
    assert_eq!(s.metric("requests_finished_total"), 105.0);
    assert_eq!(
        streamed(
            &s.addr,
            &json!({"messages": prompts[0], "max_tokens": 12, "temperature": 0, "stream": true})
        ),
        want[0]
    );
}

/// SIGTERM ends an in-flight stream with an error event and [DONE], and the server exits 0.
#[test]
fn sigterm_ends_streams_and_exits_zero() {
    let args = ["--parallel", "2", "--ctx-size", "2048"];
    let Some((s, _dir)) = tiny("serve-term", cli::Tok::Bytes, &args) else {
        return;
    };
    let body = json!({"messages": [{"role": "user", "content": "go on"}], "max_tokens": 1500,
                      "stream": true, "temperature": 0});
    let mut c = send(
        &s.addr,
        "POST",
        "/v1/chat/completions",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    );
    let head = read_until(&mut c, |t| sse_data(t).len() >= 2);
    let status = s.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit status {status}");
    let mut rest = Vec::new();
    c.read_to_end(&mut rest).unwrap();
    let all = head + &String::from_utf8_lossy(&rest);
    let ev = server::parse_response(all.as_bytes()).events();
    assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "{all}");
    let err: Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
    assert_eq!(
        err["error"]["message"], "the server is shutting down",
        "{all}"
    );
}

/// Bad flags are refused before anything loads, naming the flag or file.
#[test]
fn bad_flags_are_refused() {
    let run = |args: &[&str]| {
        let out = cli::glint().arg("serve").args(args).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let tiny = common::fixture("tiny-qwen2");
    let m = tiny.to_str().unwrap();
    assert!(run(&["-m", m, "--parallel", "0"]).contains("--parallel"));
    assert!(run(&["-m", m, "--parallel", "8", "-b", "8"]).contains("--batch-size"));
    let e = run(&["-m", m, "--api-key-file", "/nonexistent/keys"]);
    assert!(e.contains("/nonexistent/keys"), "{e}");
    let e = run(&["-m", m, "--port", "99999"]);
    assert!(e.contains("--port"), "{e}");
    let e = run(&["-m", m, "--kv-type", "q8"]);
    assert!(e.contains("--kv-type") && e.contains("f16, f32"), "{e}");
}
