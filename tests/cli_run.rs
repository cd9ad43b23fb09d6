//! `glint run` flags on the tiny Qwen2 fixture (fast): sampling defaults and overrides, seeds (given,
//! random and printed, repeatable), --stop, bad values refused before loading, and models named by
//! Hugging Face repo id: found in a fake cache offline, a clear and quick error when absent or when the
//! Hub cannot be reached.

#[path = "common/cli.rs"]
mod cli;
mod common;

use common::fixture;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

struct Run {
    json: Value,
    streamed: String,
    stderr: String,
}

impl Run {
    fn tokens(&self) -> Vec<u64> {
        self.json["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect()
    }
    fn text(&self) -> &str {
        self.json["text"].as_str().unwrap()
    }
}

fn output(cmd: &mut Command) -> Output {
    cmd.output().expect("running glint")
}

/// `glint run --json -m MODEL ARGS...` that must succeed.
fn run_ok(model: &Path, args: &[&str], env: &[(&str, &Path)]) -> Run {
    let mut c = cli::glint();
    c.args(["run", "--json", "-m"]).arg(model).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = output(&mut c);
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 stdout");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "glint run {args:?} failed: {stderr}");
    let body = stdout
        .strip_suffix('\n')
        .expect("stdout ends with a newline");
    let (streamed, json) = body.rsplit_once('\n').expect("text, then the JSON line");
    Run {
        json: serde_json::from_str(json).expect("JSON last line"),
        streamed: streamed.to_string(),
        stderr,
    }
}

fn tiny() -> PathBuf {
    fixture("tiny-qwen2")
}

/// The seed the stderr summary reports.
fn summary_seed(stderr: &str) -> u64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("generated"))
        .expect("a summary line");
    line.rsplit("seed ")
        .next()
        .unwrap()
        .trim()
        .parse()
        .expect("a seed number")
}

#[test]
fn sampling_defaults_overrides_and_seeds() {
    if common::gpu().is_none() {
        return;
    }
    let m = tiny();
    let ids = ["--prompt-ids", "1,2,3", "-n", "12"];
    let with = |extra: &[&str]| run_ok(&m, &[&ids[..], extra].concat(), &[]);

    // tiny-qwen2's generation_config.json has no do_sample: greedy by default, as --temperature 0.
    let default = with(&[]);
    let greedy = with(&["--temperature", "0"]);
    assert_eq!(default.tokens(), greedy.tokens());
    assert_eq!(default.tokens().len(), 12);
    assert_eq!(default.json["finish_reason"], "length");

    // A given seed repeats; other seeds give other draws.
    let a = with(&["--temp", "1.5", "--seed", "7"]);
    let b = with(&["--temp", "1.5", "-s", "7"]);
    assert_eq!(a.tokens(), b.tokens(), "same seed, same tokens");
    assert_eq!(a.json["seed"], 7);
    assert_eq!(
        summary_seed(&a.stderr),
        7,
        "the summary names the seed: {}",
        a.stderr
    );
    let others: Vec<Vec<u64>> = ["8", "9"]
        .iter()
        .map(|s| with(&["--temp", "1.5", "--seed", s]).tokens())
        .collect();
    assert!(
        others.iter().any(|t| *t != a.tokens()),
        "seeds 7, 8, 9 all gave {:?}",
        a.tokens()
    );
    assert_ne!(
        a.tokens(),
        greedy.tokens(),
        "temperature 1.5 sampled the greedy path exactly"
    );

    // No --seed: a random one, printed, and repeatable with --seed.
    let r = with(&[
        "--temp",
        "1.5",
        "--top-k",
        "40",
        "--top-p",
        "0.95",
        "--min-p",
        "0.01",
        "--repeat-penalty",
        "1.1",
    ]);
    let seed = summary_seed(&r.stderr);
    assert_eq!(r.json["seed"], seed);
    let again = with(&[
        "--temp",
        "1.5",
        "--top-k",
        "40",
        "--top-p",
        "0.95",
        "--min-p",
        "0.01",
        "--repeat-penalty",
        "1.1",
        "--seed",
        &seed.to_string(),
    ]);
    assert_eq!(
        r.tokens(),
        again.tokens(),
        "--seed {seed} repeats the run that printed it"
    );

    // --quiet: nothing on stderr.
    let q = with(&["--quiet"]);
    assert_eq!(q.stderr.trim(), "", "--quiet printed: {}", q.stderr);
}

#[test]
fn bad_flags_fail_before_loading() {
    for (args, want) in [
        (&["--top-p", "1.5"][..], "top_p"),
        (&["--temp=-1"][..], "temperature"),
        (&["--min-p", "2"][..], "min_p"),
    ] {
        cli::glint_bin(); // built first: the time limit is for glint alone
        let t0 = Instant::now();
        // A model path that does not exist: the flag error must come first.
        let out = output(
            cli::glint()
                .args(["run", "-m", "/nonexistent/model", "--prompt-ids", "1"])
                .args(args),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(t0.elapsed() < Duration::from_secs(10));
    }
    if common::gpu().is_none() {
        return;
    }
    let out = output(
        cli::glint()
            .args(["run", "--prompt-ids", "1", "--stop", "x", "-m"])
            .arg(tiny()),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("--stop needs"), "{stderr}");
}

/// A repo id found in the cache offline runs; --stop ends generation at the stop text, which is not
/// shown (streamed or in the JSON), with finish_reason "stop".
#[test]
fn repo_id_from_the_cache_offline_and_stop_strings() {
    if common::gpu().is_none() {
        return;
    }
    let dir = cli::temp_dir("hub-cache");
    let cache = cli::fake_hf_cache(&dir, cli::Tok::Qwen);
    let env: [(&str, &Path); 2] = [("HF_HUB_CACHE", &cache), ("HF_HUB_OFFLINE", Path::new("1"))];
    let repo = Path::new("test/tiny-qwen2");
    let ids = ["--prompt-ids", "1,2,3", "-n", "24", "--temperature", "0"];
    let full = run_ok(repo, &ids, &env);
    let text = full.text().to_string();
    assert_eq!(full.streamed, text);
    assert!(
        full.stderr.contains("snapshots"),
        "loaded from the cache: {}",
        full.stderr
    );
    // A stop string from the middle of the text: two characters that first occur there.
    let chars: Vec<(usize, char)> = text.char_indices().collect();
    assert!(chars.len() >= 8, "too little text to cut: {text:?}");
    let (at, stop) = (chars.len() / 2..chars.len() - 1)
        .filter_map(|i| {
            let s: String = chars[i..i + 2].iter().map(|(_, c)| c).collect();
            let at = text.find(&s)?;
            (at > 0 && !s.contains('\u{FFFD}')).then_some((at, s))
        })
        .next()
        .unwrap_or_else(|| panic!("no stop string candidate in {text:?}"));
    let cut = run_ok(
        repo,
        &[&ids[..], &["--stop", &stop, "--stop", "never-generated"]].concat(),
        &env,
    );
    assert_eq!(
        cut.text(),
        &text[..at],
        "text up to the stop string {stop:?}"
    );
    assert_eq!(
        cut.streamed,
        cut.text(),
        "the stop text is not streamed either"
    );
    assert_eq!(cut.json["finish_reason"], "stop");
    assert!(cut.tokens().len() < full.tokens().len());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Offline and not in the cache: a quick error that says what to do.
#[test]
fn repo_id_missing_offline_is_a_clear_error() {
    let dir = cli::temp_dir("hub-empty");
    cli::glint_bin();
    let t0 = Instant::now();
    let out = output(
        cli::glint()
            .args(["run", "-m", "nobody/no-such-model", "-p", "hi"])
            .env("HF_HUB_CACHE", &dir)
            .env("HF_HUB_OFFLINE", "1"),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for want in [
        "nobody/no-such-model",
        "HF_HUB_OFFLINE",
        "scripts/fetch-model.sh",
        "-m PATH",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in: {stderr}");
    }
    assert!(t0.elapsed() < Duration::from_secs(10));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Online but the endpoint cannot be reached (a closed port on this machine): a quick error naming
/// the ways out (a local path, HF_ENDPOINT). The default model is what `-m` omitted means.
#[test]
fn unreachable_hub_is_a_quick_clear_error() {
    let dir = cli::temp_dir("hub-unreachable");
    cli::glint_bin();
    let t0 = Instant::now();
    let mut c = cli::glint();
    c.args(["run", "-p", "hi"])
        .env("HF_HUB_CACHE", &dir)
        .env("HF_ENDPOINT", "http://127.0.0.1:9")
        .env_remove("HF_HUB_OFFLINE");
    for k in [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ] {
        c.env_remove(k);
    }
    let out = output(&mut c);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    for want in [
        "Qwen/Qwen2-0.5B-Instruct",
        "cannot be reached",
        "-m PATH",
        "HF_ENDPOINT",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in: {stderr}");
    }
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "took {:?}",
        t0.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
