//! Soak tests (ignored by default: minutes each; `scripts/soak.sh` runs them): the real binary on the
//! tiny Qwen2 fixture for long enough that a leak shows.
//!
//! - `glint chat`: 10,000 generated tokens in one session with a 256-token context, so the oldest
//!   turns are dropped again and again (context rollover); after every turn `/stats` reports the
//!   device's live buffers and bytes, and the process's RSS is read from /proc.
//! - `glint serve`: 1,000 requests from 8 concurrent clients (4 slots, so they queue), chat and raw
//!   completions, streamed or not, a quarter of the streams dropped by their client mid-answer; /metrics
//!   (live GPU buffers and bytes, busy slots, queue) and RSS sampled every 50 requests.
//!
//! Both print their samples as a table (docs/RELIABILITY.md) and assert that after a warm-up the
//! host RSS and the GPU bytes stay within 5% of their first post-warm-up value, the number of live
//! GPU buffers does not grow, and (server) that every request is accounted for, no slot stays busy
//! and it still answers afterwards.

#[path = "common/cli.rs"]
mod cli;
mod common;
#[path = "common/server.rs"]
mod server;

use serde_json::json;
use server::{request, send, sse_data, Server};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// One sample of what the process holds.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Tokens generated (chat) or requests answered (server) so far.
    at: u64,
    rss_kib: u64,
    gpu_buffers: u64,
    gpu_bytes: u64,
}

/// Print the samples and check them flat after the first `warmup` (of `unit`s).
fn check_flat(what: &str, unit: &str, samples: &[Sample], warmup: u64) {
    println!("\n{what}: {} samples", samples.len());
    println!("| {unit} | RSS (MiB) | GPU buffers | GPU bytes (MiB) |");
    println!("| ---: | ---: | ---: | ---: |");
    let step = (samples.len() / 12).max(1);
    for (i, s) in samples.iter().enumerate() {
        if i % step == 0 || i + 1 == samples.len() {
            println!(
                "| {} | {:.1} | {} | {:.2} |",
                s.at,
                s.rss_kib as f64 / 1024.0,
                s.gpu_buffers,
                s.gpu_bytes as f64 / (1 << 20) as f64
            );
        }
    }
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= warmup).collect();
    assert!(
        after.len() >= 2,
        "{what}: too few samples after the warm-up"
    );
    let base = after[0];
    let max_rss = after.iter().map(|s| s.rss_kib).max().unwrap();
    let max_bytes = after.iter().map(|s| s.gpu_bytes).max().unwrap();
    let max_buffers = after.iter().map(|s| s.gpu_buffers).max().unwrap();
    println!(
        "{what}: after the warm-up ({warmup} {unit}): RSS {:.1} -> max {:.1} MiB ({:+.2}%), GPU bytes \
         {} -> max {} ({:+.2}%), GPU buffers {} -> max {}",
        base.rss_kib as f64 / 1024.0,
        max_rss as f64 / 1024.0,
        100.0 * (max_rss as f64 / base.rss_kib as f64 - 1.0),
        base.gpu_bytes,
        max_bytes,
        100.0 * (max_bytes as f64 / base.gpu_bytes.max(1) as f64 - 1.0),
        base.gpu_buffers,
        max_buffers
    );
    assert!(
        max_rss as f64 <= base.rss_kib as f64 * 1.05,
        "{what}: RSS grew from {} to {max_rss} KiB",
        base.rss_kib
    );
    assert!(
        max_bytes as f64 <= base.gpu_bytes as f64 * 1.05,
        "{what}: GPU bytes grew from {} to {max_bytes}",
        base.gpu_bytes
    );
    assert!(
        max_buffers <= base.gpu_buffers,
        "{what}: live GPU buffers grew from {} to {max_buffers}",
        base.gpu_buffers
    );
}

/// The number after `key` in `line` ("... 96 tokens generated" with key " tokens generated").
fn number_before(line: &str, key: &str) -> Option<u64> {
    let head = &line[..line.find(key)?];
    head.rsplit(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

#[test]
#[ignore = "soak: minutes; scripts/soak.sh"]
fn chat_ten_thousand_tokens_with_context_rollover() {
    const TOKENS: u64 = 10_000;
    if common::gpu().is_none() {
        return;
    }
    let dir = cli::temp_dir("soak-chat");
    let cache = cli::fake_hf_cache(&dir, cli::Tok::Bytes);
    let mut child = cli::spawn_tiny_chat(&cache, &["-n", "96", "-c", "256", "--seed", "7"]);
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let err = child.stderr.take().unwrap();
    let dropped = std::thread::spawn(move || {
        BufReader::new(err)
            .split(b'\n')
            .map_while(Result::ok)
            .filter(|l| String::from_utf8_lossy(l).contains("dropped the"))
            .count()
    });
    let t0 = Instant::now();
    let (mut generated, mut turns) = (0u64, 0u64);
    let mut samples = Vec::new();
    while generated < TOKENS {
        assert!(
            t0.elapsed() < Duration::from_secs(1800),
            "chat soak: over 30 minutes"
        );
        writeln!(
            stdin,
            "Turn {turns}: tell me a long story about the number {turns}."
        )
        .and_then(|_| writeln!(stdin, "/stats"))
        .expect("writing to glint chat");
        turns += 1;
        // The answer, then /stats: "... N tokens generated at ..." and " GPU: B buffers alive, X bytes bound)".
        let (mut last, mut live) = (None, None);
        while live.is_none() {
            let mut line = Vec::new();
            let n = out.read_until(b'\n', &mut line).unwrap();
            assert!(n > 0, "glint chat ended after {turns} turns");
            let line = String::from_utf8_lossy(&line);
            if let Some(g) = number_before(&line, " tokens generated at") {
                last = Some(g);
            }
            if let Some(rest) = line.strip_prefix(" GPU: ") {
                let b = number_before(rest, " buffers alive").unwrap();
                let x = number_before(rest, " bytes bound").unwrap();
                live = Some((b, x));
            }
        }
        generated += last.expect("a tokens-generated figure in /stats");
        let (gpu_buffers, gpu_bytes) = live.unwrap();
        samples.push(Sample {
            at: generated,
            rss_kib: server::rss_kib(pid).expect("glint chat's RSS (/proc)"),
            gpu_buffers,
            gpu_bytes,
        });
    }
    drop(stdin);
    let status = child.wait().unwrap();
    assert!(status.success(), "glint chat exit: {status}");
    let dropped = dropped.join().unwrap();
    println!(
        "chat soak: {generated} tokens in {turns} turns, {:.0} s; the context rolled over {dropped} times",
        t0.elapsed().as_secs_f64()
    );
    assert!(
        dropped >= 10,
        "the context rolled over only {dropped} times"
    );
    check_flat("glint chat", "tokens", &samples, TOKENS / 10);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "soak: minutes; scripts/soak.sh"]
fn server_thousand_requests_with_cancellations() {
    const REQUESTS: u64 = 1000;
    const CLIENTS: u64 = 8;
    if common::gpu().is_none() {
        return;
    }
    let dir = cli::temp_dir("soak-serve");
    let cache = cli::fake_hf_cache(&dir, cli::Tok::Bytes);
    let s = Server::start(
        &[
            "-m",
            "test/tiny-qwen2",
            "--parallel",
            "4",
            "--ctx-size",
            "512",
        ],
        &[("HF_HUB_CACHE", &cache), ("HF_HUB_OFFLINE", Path::new("1"))],
    );
    let sample = |at: u64| Sample {
        at,
        rss_kib: s.rss_kib().expect("server RSS"),
        gpu_buffers: s.metric("gpu_buffers") as u64,
        gpu_bytes: s.metric("gpu_buffer_bytes") as u64,
    };
    let t0 = Instant::now();
    let next = std::sync::atomic::AtomicU64::new(0);
    let done = std::sync::atomic::AtomicU64::new(0);
    let dropped = std::sync::atomic::AtomicU64::new(0);
    let samples = std::sync::Mutex::new(vec![sample(0)]);
    std::thread::scope(|sc| {
        for c in 0..CLIENTS {
            let (s, next, done, dropped, samples) = (&s, &next, &done, &dropped, &samples);
            sc.spawn(move || {
                let mut rng = common::Rng::new(1 + c);
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    if i >= REQUESTS {
                        break;
                    }
                    assert!(
                        t0.elapsed() < Duration::from_secs(1800),
                        "server soak: over 30 minutes"
                    );
                    let max_tokens = 8 + rng.next_u64() % 120;
                    let stream = rng.next_u64().is_multiple_of(2);
                    let cancel = stream && rng.next_u64().is_multiple_of(4);
                    let (path, mut body) = if rng.next_u64().is_multiple_of(3) {
                        ("/v1/completions", json!({"prompt": format!("request {i}: once upon a time")}))
                    } else {
                        (
                            "/v1/chat/completions",
                            json!({"messages": [{"role": "user", "content": format!("request {i}: a story")}]}),
                        )
                    };
                    body["max_tokens"] = json!(max_tokens);
                    body["stream"] = json!(stream);
                    body["seed"] = json!(i);
                    let headers = [("Content-Type", "application/json")];
                    if cancel {
                        // Read a few events, then hang up mid-answer.
                        let mut conn = send(&s.addr, "POST", path, &headers, body.to_string().as_bytes());
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 1024];
                        while sse_data(&String::from_utf8_lossy(&buf)).len() < 3 {
                            let n = conn.read(&mut chunk).unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                        }
                        dropped.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    } else {
                        let r = request(&s.addr, "POST", path, &headers, body.to_string().as_bytes());
                        assert_eq!(r.status, 200, "request {i}: {}", r.text());
                        if stream {
                            let ev = r.events();
                            assert_eq!(ev.last().map(String::as_str), Some("[DONE]"), "request {i}: truncated");
                            let last: serde_json::Value = serde_json::from_str(&ev[ev.len() - 2]).unwrap();
                            assert!(
                                last["choices"][0]["finish_reason"].is_string(),
                                "request {i}: no finish reason: {ev:?}"
                            );
                        } else {
                            let v = r.json();
                            assert!(v["choices"][0]["finish_reason"].is_string(), "request {i}: {v}");
                            let n = v["usage"]["completion_tokens"].as_u64().unwrap();
                            assert!(n <= max_tokens, "request {i}: {n} tokens of {max_tokens}");
                        }
                    }
                    let d = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    if d % 50 == 0 {
                        samples.lock().unwrap().push(sample(d));
                    }
                }
            });
        }
    });
    server::wait_until(Duration::from_secs(30), "every slot to be free", || {
        s.metric("busy_slots") == 0.0 && s.metric("queue_length") == 0.0
    });
    let total = s.metric("requests_total");
    let finished = s.metric("requests_finished_total");
    let cancelled = s.metric("requests_cancelled_total");
    println!(
        "server soak: {REQUESTS} requests from {CLIENTS} clients in {:.0} s: {} dropped by their client, \
         {cancelled} cancelled by the server (the rest had finished), {finished} finished, {} tokens generated",
        t0.elapsed().as_secs_f64(),
        dropped.load(std::sync::atomic::Ordering::SeqCst),
        s.metric("generated_tokens_total")
    );
    assert_eq!(total, REQUESTS as f64, "requests admitted");
    assert_eq!(
        finished + cancelled,
        total,
        "every request finished or cancelled"
    );
    assert_eq!(s.metric("requests_failed_total"), 0.0);
    assert_eq!(s.metric("requests_rejected_total"), 0.0);
    assert!(cancelled > 0.0, "no cancellation reached the server");
    // Still serving.
    let r = s.post(
        "/v1/completions",
        &json!({"prompt": "after the soak", "max_tokens": 4, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let mut samples = samples.into_inner().unwrap();
    samples.push(sample(REQUESTS));
    samples.sort_by_key(|s| s.at);
    check_flat("glint serve", "requests", &samples, REQUESTS / 10);
    assert_eq!(s.terminate(Duration::from_secs(30)).code(), Some(0));
    let _ = std::fs::remove_dir_all(&dir);
}
