//! `glint chat` driven as a person drives it: in a terminal (a tmux pane on a private tmux server),
//! keys typed with send-keys, the screen read with capture-pane. Real model (GGUF), greedy.
//!
//! Turn 1 gives a name, turn 2 asks for it back (the history goes through the chat template and the
//! KV cache of turn 1 is reused); Ctrl-C at the prompt prints a hint and the program goes on; Ctrl-C
//! during an answer stops the answer, not the program; /reset is acknowledged; /exit ends the process
//! with status 0.

#[path = "common/cli.rs"]
mod cli;
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A private tmux server (its own socket) with one pane; killed on drop.
struct Tmux {
    socket: String,
    /// Where the pane's shell writes glint's exit status when it ends.
    status_file: PathBuf,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> std::process::Output {
        Command::new("tmux")
            .env_remove("TMUX")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("running tmux")
    }

    fn start(command: &str, status_file: PathBuf) -> Tmux {
        let t = Tmux {
            socket: format!("glint-test-{}", std::process::id()),
            status_file,
        };
        let out = t.cmd(&[
            "new-session",
            "-d",
            "-s",
            "chat",
            "-x",
            "200",
            "-y",
            "60",
            command,
        ]);
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    /// The pane's whole history, wrapped lines joined.
    fn screen(&self) -> String {
        let out = self.cmd(&["capture-pane", "-p", "-J", "-S", "-", "-t", "chat"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn type_line(&self, text: &str) {
        assert!(self
            .cmd(&["send-keys", "-t", "chat", "-l", text])
            .status
            .success());
        assert!(self
            .cmd(&["send-keys", "-t", "chat", "Enter"])
            .status
            .success());
    }

    fn key(&self, key: &str) {
        assert!(self.cmd(&["send-keys", "-t", "chat", key]).status.success());
    }

    /// Wait until `done(screen)`; panics with the screen after `secs`.
    fn wait(&self, what: &str, secs: u64, done: impl Fn(&str) -> bool) -> String {
        let t0 = Instant::now();
        loop {
            let s = self.screen();
            if done(&s) {
                return s;
            }
            if self.status_file.exists() {
                panic!("glint ended while waiting for {what}; the screen:\n{s}");
            }
            if t0.elapsed() > Duration::from_secs(secs) {
                panic!("timed out after {secs} s waiting for {what}; the screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// The screen's last non-empty line is the input prompt.
fn at_prompt(s: &str) -> bool {
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .is_some_and(|l| l.trim_end() == ">")
}

/// Per-answer summary lines "[prompt N tokens, R reused from the cache, ...]": (N, R) each.
fn summaries(s: &str) -> Vec<(usize, usize)> {
    s.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("[prompt ")?;
            let (n, rest) = rest.split_once(" tokens, ")?;
            let (r, _) = rest.split_once(" reused")?;
            Some((n.parse().ok()?, r.parse().ok()?))
        })
        .collect()
}

/// The lines between the input line `> {input}` and the next summary line: the answer.
fn answer_to(s: &str, input: &str) -> String {
    let start = s
        .find(&format!("> {input}"))
        .expect("the input line is on screen");
    let after = &s[start..];
    let after = &after[after.find('\n').map_or(after.len(), |i| i + 1)..];
    after
        .split("\n[prompt ")
        .next()
        .unwrap_or("")
        .trim()
        .to_string()
}

fn sh_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

#[test]
fn chat_remembers_a_name_across_turns_and_handles_commands() {
    if Command::new("tmux").arg("-V").output().is_err() {
        let msg = "tmux is not installed (scripts/setup.sh installs it)";
        if cli::in_ci() {
            panic!("CI=true: {msg}");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    }
    if common::gpu().is_none() {
        return;
    }
    let Some(model) = cli::real_model(cli::GGUF) else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("glint-chat-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let status_file: PathBuf = dir.join("status");
    let _ = std::fs::remove_file(&status_file);
    // The pane runs a shell that records glint's exit status, then waits so the screen stays readable.
    let command = format!(
        "NODEVICE_SELECT=1 {} chat -m {} --temperature 0 -n 64 -c 1024; echo $? > {}; sleep 600",
        sh_quote(cli::glint_bin()),
        sh_quote(&model),
        sh_quote(&status_file)
    );
    let t = Tmux::start(&command, status_file.clone());

    t.wait("the first prompt", 300, at_prompt);

    let turn1 = "My name is Ada. Remember it and reply with just OK.";
    t.type_line(turn1);
    let s = t.wait("the answer to turn 1", 600, |s| {
        summaries(s).len() == 1 && at_prompt(s)
    });
    println!("turn 1 answer: {:?}", answer_to(&s, turn1));

    let turn2 = "What is my name? Answer in one word.";
    t.type_line(turn2);
    let s = t.wait("the answer to turn 2", 600, |s| {
        summaries(s).len() == 2 && at_prompt(s)
    });
    let answer = answer_to(&s, turn2);
    println!("turn 2 answer: {answer:?}");
    assert!(
        answer.contains("Ada"),
        "turn 2 answer {answer:?} lacks the name; screen:\n{s}"
    );
    let sums = summaries(&s);
    assert!(
        sums[1].1 >= sums[0].0,
        "turn 2 should reuse at least turn 1's prompt from the KV cache: {sums:?}"
    );

    // Ctrl-C at the prompt: a hint, and the program goes on.
    t.key("C-c");
    t.wait("the Ctrl-C hint", 30, |s| {
        s.contains("(Ctrl-C stops an answer") && at_prompt(s)
    });

    // Ctrl-C during an answer: the answer stops, the conversation goes on.
    let turn3 = "Write a long story about a dragon.";
    t.type_line(turn3);
    t.wait("the first words of the story", 600, |s| {
        s.find(&format!("> {turn3}\n")).is_some_and(|i| {
            let after = &s[i + turn3.len() + 3..];
            after.chars().filter(|c| !c.is_whitespace()).count() >= 3
        })
    });
    t.key("C-c");
    let s = t.wait("the stopped answer", 120, |s| {
        s.contains("(stopped)") && at_prompt(s)
    });
    assert_eq!(
        summaries(&s).len(),
        3,
        "the stopped answer has its summary; screen:\n{s}"
    );

    t.type_line("/reset");
    t.wait("the /reset acknowledgement", 30, |s| {
        s.contains("(conversation reset") && at_prompt(s)
    });

    t.type_line("/exit");
    let t0 = Instant::now();
    let status = loop {
        if let Ok(s) = std::fs::read_to_string(&status_file) {
            if !s.trim().is_empty() {
                break s.trim().to_string();
            }
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "glint did not exit after /exit:\n{}",
            t.screen()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("{}", t.screen().trim_end());
    assert_eq!(status, "0", "exit status after /exit");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Piped stdin (no terminal) on the tiny model, found by repo id in a fake Hugging Face cache, with a
/// context of 256 tokens: the conversation outgrows it, the oldest turns are dropped with a note and the
/// session goes on; /system is acknowledged; the end of input (Ctrl-D) ends it with status 0.
#[test]
fn chat_drops_the_oldest_turns_when_the_context_is_full() {
    use std::io::Write;
    if common::gpu().is_none() {
        return;
    }
    let dir = cli::temp_dir("chat-context");
    let cache = cli::fake_hf_cache(&dir, cli::Tok::Bytes);
    let mut child = cli::spawn_tiny_chat(&cache, &["--temperature", "0", "-n", "16", "-c", "256"]);
    let turns = 8;
    let mut input = String::from("/system You are terse.\n");
    for i in 0..turns {
        input += &format!("Tell me something about the number {i}.\n");
    }
    input += "/stats\n";
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "status {}: {stderr}", out.status);
    assert!(stdout.contains("(system prompt set"), "{stdout}");
    assert!(
        stderr.contains("outgrew the context of 256 tokens: dropped the"),
        "{stderr}"
    );
    assert_eq!(
        stderr.matches("\n[prompt ").count(),
        turns,
        "one summary per turn: {stderr}"
    );
    assert!(stdout.contains("(context: "), "/stats: {stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// SmolLM2 (the Llama family) holds a two-turn conversation in `glint chat` (piped stdin, greedy): the
/// second turn reuses the first turn's KV cache, and its answer is exactly what a fresh `glint run` of
/// the whole conversation gives (cache reuse across turns changes nothing).
#[test]
fn chat_two_turns_with_smollm2_equal_a_fresh_run() {
    use std::io::Write;
    use std::process::Stdio;
    if common::gpu().is_none() {
        return;
    }
    let Some(model) = cli::real_model(cli::SMOLLM2) else {
        return;
    };
    let (turn1, turn2) = (
        "My favourite colour is green.",
        "Name a fruit of that colour.",
    );
    let mut child = cli::glint()
        .args(["chat", "-m"])
        .arg(&model)
        .args(["--temperature", "0", "-n", "8"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting glint chat");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{turn1}\n{turn2}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "status {}: {stderr}", out.status);
    let sums = summaries(&stderr);
    assert_eq!(sums.len(), 2, "one summary per turn: {stderr}");
    assert!(
        sums[1].1 >= sums[0].0,
        "turn 2 reuses turn 1's prompt from the KV cache: {sums:?}"
    );
    // stdout holds the two answers, each followed by a newline (and a note when cut).
    let answers: Vec<&str> = stdout
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('('))
        .collect();
    assert_eq!(answers.len(), 2, "two answers: {stdout:?}");
    let dir = cli::temp_dir("chat-smollm2");
    let history = dir.join("messages.json");
    let messages = serde_json::json!([
        {"role": "user", "content": turn1},
        {"role": "assistant", "content": answers[0]},
        {"role": "user", "content": turn2},
    ]);
    std::fs::write(&history, messages.to_string()).unwrap();
    let fresh = cli::glint()
        .args(["run", "-q", "-m"])
        .arg(&model)
        .args(["--temperature", "0", "-n", "8", "--messages"])
        .arg(&history)
        .output()
        .unwrap();
    assert!(fresh.status.success());
    let fresh = String::from_utf8_lossy(&fresh.stdout);
    assert_eq!(fresh.trim(), answers[1].trim(), "turn 2 vs a fresh run");
    let _ = std::fs::remove_dir_all(&dir);
}
