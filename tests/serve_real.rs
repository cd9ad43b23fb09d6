//! `glint serve` on the real model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M GGUF), kept lean (it decodes a
//! few tokens per second on lavapipe): /health is 503 while it loads, 4 greedy prompts sent at once
//! get the ids each gets alone (up to the first near-tie of the top two logprobs, where float
//! differences between batch shapes may rightly pick the other), and the official `openai` client's
//! chat, stop-string and logprobs checks on real UTF-8 text.

#[path = "common/cli.rs"]
mod cli;
mod common;
#[path = "common/server.rs"]
mod server;

use serde_json::{json, Value};
use server::Server;
use std::time::{Duration, Instant};

/// Top-two logprob margin under which a batched answer may rightly differ from the lone one.
const NEAR_TIE: f64 = 0.05;

fn answer(r: &server::Response) -> (Vec<u64>, Vec<f64>) {
    assert_eq!(r.status, 200, "{}", r.text());
    let v: Value = r.json();
    let c = &v["choices"][0];
    let ids = c["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap())
        .collect();
    let margins = c["logprobs"]["top_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let mut v: Vec<f64> = t
                .as_object()
                .unwrap()
                .values()
                .map(|x| x.as_f64().unwrap())
                .collect();
            v.sort_by(|a, b| b.partial_cmp(a).unwrap());
            if v.len() < 2 {
                0.0
            } else {
                v[0] - v[1]
            }
        })
        .collect();
    (ids, margins)
}

#[test]
fn real_model_batched_answers_and_openai_client() {
    let Some(model) = cli::real_model(cli::GGUF) else {
        return;
    };
    if common::gpu().is_none() {
        return;
    }
    cli::glint_bin(); // build the binary first: its build is not part of the load time below
    let t0 = Instant::now();
    let m = model.to_str().unwrap();
    let s = Server::spawn(&["-m", m, "--parallel", "4", "--ctx-size", "512"], &[]);
    // Loading takes seconds: /health and the API say so meanwhile.
    let h = s.get("/health");
    assert_eq!(h.status, 503, "{}", h.text());
    assert_eq!(h.json()["error"]["code"], "loading");
    let r = s.post("/v1/completions", &json!({"prompt": "hi"}));
    assert_eq!(r.status, 503, "{}", r.text());
    s.wait_ready(Duration::from_secs(600));
    assert_eq!(s.get("/health").status, 200);
    let loaded = t0.elapsed().as_secs_f64();

    let prompts = [
        "def fibonacci(n):",
        "The capital of France is",
        "import numpy as np\n",
        "// Reverse a string in C\n",
    ];
    let body = |p: &str| json!({"prompt": p, "max_tokens": 8, "temperature": 0, "logprobs": 2, "return_tokens": true});
    let alone: Vec<(Vec<u64>, Vec<f64>)> = prompts
        .iter()
        .map(|p| answer(&s.post("/v1/completions", &body(p))))
        .collect();
    let t_alone = t0.elapsed().as_secs_f64() - loaded;
    let together: Vec<(Vec<u64>, Vec<f64>)> = std::thread::scope(|sc| {
        let hs: Vec<_> = prompts
            .iter()
            .map(|p| {
                let b = body(p);
                let s = &s;
                sc.spawn(move || answer(&s.post("/v1/completions", &b)))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut compared = 0;
    for ((p, (a, margins)), (b, _)) in prompts.iter().zip(&alone).zip(&together) {
        // Compare up to the first near-tie: from there on the batched answer may rightly differ.
        let k = margins
            .iter()
            .position(|&m| m < NEAR_TIE)
            .map_or(a.len(), |i| i);
        assert_eq!(
            a[..k],
            b[..k],
            "{p:?}: batched != alone (margins {margins:?})"
        );
        compared += k;
    }
    assert!(compared >= 20, "only {compared} tokens had clear margins");
    let t_batch = t0.elapsed().as_secs_f64() - loaded - t_alone;

    let base = format!("http://{}/v1", s.addr);
    let t1 = Instant::now();
    let out = server::openai_checks(
        &base,
        &cli::GGUF.replace(".gguf", ""),
        "chat,stop,logprobs",
        "",
        10,
    );
    eprintln!(
        "real model: load {loaded:.1} s, 4 alone {t_alone:.1} s, 4 together {t_batch:.1} s, \
         openai checks {:.1} s; {compared} tokens compared\n{}",
        t1.elapsed().as_secs_f64(),
        out.unwrap_or_default()
    );
    let status = s.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
}
