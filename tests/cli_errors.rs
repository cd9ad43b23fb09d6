//! Bad flags and files on the `glint` command line: each fails with exit status 1 (2 where the flag
//! parser refuses it) and an `error:` line that names the flag, file or field and what was expected, never a panic. The cases of the first
//! table are refused before any model or GPU is touched (a model path that does not exist proves it);
//! docs/RELIABILITY.md lists each with its message.

#[path = "common/cli.rs"]
mod cli;
mod common;

use common::fixture;
use std::path::{Path, PathBuf};

/// Run `glint ARGS` that must fail; returns stderr after checking that it is an error, not a panic.
fn fails(args: &[&str]) -> String {
    let out = cli::glint().args(args).output().expect("running glint");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // 2: refused by the flag parser (clap), 1: by glint.
    assert!(
        matches!(out.status.code(), Some(1 | 2)),
        "glint {args:?}: {} {stderr}",
        out.status
    );
    assert!(
        stderr.contains("error: ") && !stderr.contains("panicked"),
        "glint {args:?}: {stderr}"
    );
    stderr
}

fn assert_mentions(args: &[&str], parts: &[&str]) {
    let stderr = fails(args);
    for p in parts {
        assert!(
            stderr.contains(p),
            "glint {args:?}: stderr should mention {p:?}: {stderr}"
        );
    }
}

/// A file in a fresh scratch directory of this test process.
fn scratch(name: &str, content: &[u8]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("glint-cli-errors-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, content).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[test]
fn bad_flags_and_files_fail_before_loading() {
    let nothing = "/nonexistent/model";
    let run = |extra: &[&str]| -> Vec<String> {
        ["run", "-m", nothing, "--prompt-ids", "1"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let bad_json = scratch(
        "bad-messages.json",
        b"[{\"role\": \"user\", \"content\": \"hi\"},",
    );
    let object = scratch(
        "object-messages.json",
        b"{\"role\": \"user\", \"content\": \"hi\"}",
    );
    let no_content = scratch("nocontent-messages.json", b"[{\"role\": \"user\"}]");
    let empty_gguf = scratch("empty.gguf", b"");
    let short_gguf = scratch("short.gguf", b"GGUF\x03\x00\x00\x00");
    let empty_dir = scratch("empty-dir/.keep", b"");
    let empty_dir = empty_dir.parent().unwrap();
    let tiny = fixture("tiny-qwen2");
    let messages = |file: &Path| -> Vec<String> {
        ["run", "-m", nothing, "--messages", s(file)]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    let cases: Vec<(Vec<String>, Vec<&str>)> = vec![
        (
            run(&["--temperature", "abc"]),
            vec!["invalid value 'abc' for '--temperature <T>'"],
        ),
        (
            run(&["--temperature", "nan"]),
            vec!["sampling: temperature = NaN, expected a finite value >= 0"],
        ),
        (
            run(&["--repeat-penalty", "0"]),
            vec!["repetition_penalty = 0, expected a finite value > 0"],
        ),
        (
            run(&["--top-p", "0"]),
            vec!["top_p = 0, expected a value in (0, 1]"],
        ),
        (run(&["--top-k", "-1"]), vec!["unexpected argument '-1'"]),
        (
            run(&["--backend", "foo"]),
            vec!["--backend: unknown backend 'foo' (expected vulkan, metal, dx12 or gl)"],
        ),
        (
            ["devices", "--backend", "metal3"]
                .map(String::from)
                .to_vec(),
            vec!["unknown backend 'metal3'"],
        ),
        (
            run(&["--quant", "q2_k"]),
            vec!["'q2_k' is not one of f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k, q5_k, q6_k"],
        ),
        (
            run(&["--int8", "always"]),
            vec!["invalid value 'always' for '--int8 <MODE>': 'always' is not one of off, decode, matvec"],
        ),
        (
            run(&["-n", "abc"]),
            vec!["invalid value 'abc' for '--max-tokens <N>'"],
        ),
        (
            ["run", "-m", nothing, "--prompt-ids", "1,x"]
                .map(String::from)
                .to_vec(),
            vec!["invalid value 'x' for '--prompt-ids <IDS>'"],
        ),
        (
            ["run", "-m", nothing, "--prompt-ids=-1"]
                .map(String::from)
                .to_vec(),
            vec!["'-1' for '--prompt-ids <IDS>': -1 is not in 0..=4294967295"],
        ),
        (
            ["run", "-m", nothing, "--prompt-ids", "1", "-p", "hi"]
                .map(String::from)
                .to_vec(),
            vec!["'--prompt-ids <IDS>' cannot be used with '--prompt <PROMPT>'"],
        ),
        (
            ["run", "-m", nothing].map(String::from).to_vec(),
            vec!["give one of --prompt, --messages or --prompt-ids"],
        ),
        (
            messages(&bad_json),
            vec!["bad-messages.json: not valid JSON: EOF while parsing"],
        ),
        (
            messages(&object),
            vec!["object-messages.json: expected a JSON array of {\"role\", \"content\"} objects"],
        ),
        (
            messages(&no_content),
            vec!["nocontent-messages.json: message 0: expected an object with a string \"content\""],
        ),
        (
            messages(Path::new("/nonexistent/messages.json")),
            vec!["/nonexistent/messages.json: No such file or directory"],
        ),
        (
            ["run", "-m", "/nonexistent/model.gguf", "--prompt-ids", "1"]
                .map(String::from)
                .to_vec(),
            vec!["/nonexistent/model.gguf: no such file or directory (give a model directory, a GGUF file, or a Hugging Face repo id"],
        ),
        (
            ["run", "-m", s(empty_dir), "--prompt-ids", "1"]
                .map(String::from)
                .to_vec(),
            vec!["empty-dir/config.json: No such file or directory"],
        ),
        (
            ["run", "-m", s(&empty_gguf), "--prompt-ids", "1"]
                .map(String::from)
                .to_vec(),
            vec!["empty.gguf: truncated file: magic at offset 0 needs 4 bytes, the file has 0 bytes"],
        ),
        (
            ["run", "-m", s(&short_gguf), "--prompt-ids", "1"]
                .map(String::from)
                .to_vec(),
            vec!["short.gguf: truncated file: tensor_count at offset 8 needs 8 bytes"],
        ),
        (
            ["run", "-m", s(&short_gguf), "--prompt-ids", "1", "--quant", "q8_0"]
                .map(String::from)
                .to_vec(),
            vec!["--quant applies to safetensors models; a GGUF file keeps its own types"],
        ),
        (
            ["tokenize", "-m", s(&tiny)].map(String::from).to_vec(),
            vec!["tokenize: give a TEXT argument or --file"],
        ),
        (
            ["tokenize", "-m", s(&tiny), "hi"].map(String::from).to_vec(),
            vec!["tiny-qwen2: no tokenizer (tokenizer.json, or tokenizer.ggml.* in a GGUF file)"],
        ),
        (
            ["tokenize", "-m", s(&tiny), "-f", "/nonexistent/text.txt"]
                .map(String::from)
                .to_vec(),
            vec!["/nonexistent/text.txt: No such file or directory"],
        ),
        (
            ["bench", "-m", s(&tiny), "-p", "abc"]
                .map(String::from)
                .to_vec(),
            vec!["invalid value 'abc' for '--n-prompt <N_PROMPT>'"],
        ),
    ];
    cli::glint_bin(); // built once, before the cases
    for (args, parts) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_mentions(&args, parts);
    }
}

/// Errors that need the GPU adapter list or a loaded model (the tiny fixture, no tokenizer).
#[test]
fn bad_input_to_a_loaded_model() {
    if common::gpu().is_none() {
        return;
    }
    let tiny = fixture("tiny-qwen2");
    let tiny = s(&tiny);
    assert_mentions(
        &["run", "-m", tiny, "--prompt-ids", "1", "--adapter", "99"],
        &[
            "--adapter 99: only",
            "adapter(s) found",
            "see `glint devices`",
        ],
    );
    assert_mentions(
        &["run", "-m", tiny, "--prompt-ids", "1", "-c", "0"],
        &["context size must be at least 1"],
    );
    // A context no buffer can hold is refused before anything is allocated (it used to abort on a
    // 1 TB host allocation of the RoPE table), with what fits.
    assert_mentions(
        &["run", "-m", tiny, "--prompt-ids", "1", "-c", "4000000000"],
        &[
            "context size 4000000000 does not fit this device",
            "KV cache",
            "tokens per slot fit here (--ctx-size)",
        ],
    );
    assert_mentions(
        &["run", "-m", tiny, "--prompt-ids", "600"],
        &["token id 600 is out of range (vocab_size 512)"],
    );
    assert_mentions(
        &["run", "-m", tiny, "-p", "hi"],
        &["tiny-qwen2: the model has no chat template; use --prompt-ids or a raw prompt"],
    );
}
