//! `glint run --json` streams its text: what reaches stdout before the JSON line is exactly the JSON
//! "text", and multi-byte UTF-8 (CJK, emoji, spread over several byte-level tokens) is never split
//! (no U+FFFD). Real model (GGUF), greedy, a few tokens.

#[path = "common/cli.rs"]
mod cli;
mod common;

use serde_json::Value;

/// Run `glint run --json --temperature 0 -n 24` on `prompt`: (streamed text, JSON line).
fn run_json(prompt: &str) -> Option<(String, Value)> {
    common::gpu()?;
    let model = cli::real_model(cli::GGUF)?;
    let out = cli::glint()
        .args([
            "run",
            "--json",
            "--temperature",
            "0",
            "-n",
            "24",
            "-p",
            prompt,
            "-m",
        ])
        .arg(&model)
        .output()
        .expect("running glint");
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "glint run failed: {stderr}");
    eprintln!("{stderr}");
    // stdout: the streamed text, a newline, the JSON line, a newline.
    let body = stdout
        .strip_suffix('\n')
        .expect("stdout ends with a newline");
    let (streamed, json) = body
        .rsplit_once('\n')
        .expect("text line(s), then the JSON line");
    let j: Value = serde_json::from_str(json).expect("the last stdout line is JSON");
    Some((streamed.to_string(), j))
}

fn check(streamed: &str, j: &Value) -> String {
    let text = j["text"].as_str().expect("\"text\" is a string");
    assert_eq!(
        streamed, text,
        "the streamed text differs from the JSON text"
    );
    assert!(
        !text.contains('\u{FFFD}'),
        "U+FFFD in {text:?}: a character was split"
    );
    assert!(!j["tokens"].as_array().unwrap().is_empty());
    assert!(j["finish_reason"] == "stop" || j["finish_reason"] == "length");
    for k in ["load_ms", "prompt_ms", "decode_ms", "decode_tokens_per_s"] {
        assert!(j["timings"][k].is_number(), "timings.{k}");
    }
    println!("text: {text:?}");
    text.to_string()
}

#[test]
fn chinese_text_streams_whole() {
    let Some((streamed, j)) = run_json("用一句话介绍你自己") else {
        return;
    };
    let text = check(&streamed, &j);
    assert!(
        text.chars().any(|c| ('\u{4E00}'..='\u{9FFF}').contains(&c)),
        "no CJK character in {text:?}"
    );
}

#[test]
fn emoji_text_streams_whole() {
    let Some((streamed, j)) = run_json("Reply with three fruit emoji and nothing else.") else {
        return;
    };
    let text = check(&streamed, &j);
    assert!(
        text.chars()
            .any(|c| ('\u{1F300}'..='\u{1FAFF}').contains(&c)),
        "no emoji in {text:?}"
    );
}
