//! `glint chat`: an interactive multi-turn conversation on stdin/stdout.
//!
//! Every turn renders the whole conversation through the model's chat template; the engine reuses the
//! KV cache for the prefix it has already seen, so only the new user message (and the template's glue)
//! is computed. When the conversation would not leave room for an answer in the context, the oldest
//! turns are dropped (the system prompt is kept). Ctrl-C stops the answer being generated; at the
//! prompt it prints a hint. `/exit` or Ctrl-D ends the session.

use crate::generate::{load_model, prompt_tokens_per_s, stream, ModelArgs, SamplingArgs};
use clap::Args;
use glint::chat::Message;
use glint::{GenerateOptions, LoadOptions, Model};
use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// System prompt for the conversation (change it later with /system). Default: the template's own.
    #[arg(long = "system", visible_alias = "system-prompt", value_name = "TEXT")]
    system: Option<String>,
    /// Maximum number of tokens per answer.
    #[arg(
        short = 'n',
        long = "max-tokens",
        visible_alias = "n-predict",
        default_value_t = 1024,
        value_name = "N"
    )]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Context size in tokens (default: min(model maximum, 4096)). The oldest turns are dropped when the
    /// conversation outgrows it.
    #[arg(short = 'c', long = "ctx-size", value_name = "N")]
    ctx_size: Option<usize>,
    /// No progress bars, load report or per-turn summary on stderr.
    #[arg(short = 'q', long)]
    quiet: bool,
}

const HELP: &str = "commands:
  /reset        forget the conversation (the system prompt is kept)
  /system TEXT  set the system prompt (/system alone shows it)
  /stats        context use, cache reuse and speed of the last answer
  /exit         quit (also /quit, or Ctrl-D)
Ctrl-C stops the answer being written.";

/// The last answer's figures, for `/stats`.
#[derive(Default)]
struct Last {
    prompt_tokens: usize,
    reused_tokens: usize,
    generated: usize,
    prompt_tok_s: f64,
    decode_tok_s: f64,
}

pub fn chat(a: ChatArgs) -> glint::Result<()> {
    a.sampling.validate()?;
    let opts = LoadOptions {
        ctx_size: a.ctx_size,
        ..a.model.load_options()?
    };
    let (mut model, _) = load_model(&a.model, opts, a.quiet)?;
    // Fail now, not at the first message, when the model cannot chat.
    model.chat_prompt(&[user("hi")])?;
    let seed = a.sampling.seed();
    let gen_opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampling: a.sampling.params(model.sampling_defaults(), seed),
    };

    // Ctrl-C: stop the answer while one is generated, else print a hint (the program goes on).
    let generating = Arc::new(AtomicBool::new(false));
    let interrupt = Arc::new(AtomicBool::new(false));
    {
        let (generating, interrupt) = (generating.clone(), interrupt.clone());
        ctrlc::set_handler(move || {
            if generating.load(Ordering::SeqCst) {
                interrupt.store(true, Ordering::SeqCst);
            } else {
                eprintln!("\n(Ctrl-C stops an answer; to quit type /exit or press Ctrl-D)");
                print!("> ");
                let _ = std::io::stdout().flush();
            }
        })
        .map_err(|e| glint::Error::Input(format!("cannot handle Ctrl-C: {e}")))?;
    }

    if !a.quiet {
        let p = &gen_opts.sampling;
        eprintln!(
            "glint chat: temperature {}, top-k {}, top-p {}, min-p {}, repeat-penalty {}, seed {seed}. \
             Type /help for commands; Ctrl-C stops an answer, /exit or Ctrl-D quits.",
            p.temperature, p.top_k, p.top_p, p.min_p, p.repetition_penalty
        );
    }
    let mut system = a.system.clone();
    let mut history: Vec<Message> = Vec::new();
    let mut last = Last::default();
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut line = String::new();
    // The "> " prompt is for a person at a terminal; piped input gets the answers alone.
    let interactive = std::io::stdin().is_terminal();
    loop {
        if interactive {
            print!("> ");
            let _ = std::io::stdout().flush();
        }
        line.clear();
        if input
            .read_line(&mut line)
            .map_err(|e| glint::Error::Input(format!("reading stdin: {e}")))?
            == 0
        {
            if interactive {
                println!();
            }
            break;
        }
        let text = line.trim_end_matches(['\n', '\r']);
        if text.trim().is_empty() {
            continue;
        }
        if let Some(cmd) = text.trim().strip_prefix('/') {
            let (name, arg) = cmd.split_once(char::is_whitespace).unwrap_or((cmd, ""));
            let arg = arg.trim();
            match name {
                "exit" | "quit" => break,
                "reset" => {
                    history.clear();
                    model.reset();
                    last = Last::default();
                    println!("(conversation reset; the system prompt is kept)");
                }
                "system" if arg.is_empty() => match &system {
                    Some(s) => println!("(system prompt: {s})"),
                    None => println!("(system prompt: the chat template's default)"),
                },
                "system" => {
                    system = Some(arg.to_string());
                    println!("(system prompt set; it applies from the next answer, the conversation is kept)");
                }
                "stats" => println!("{}", stats(&model, &history, &last)),
                "help" | "?" => println!("{HELP}"),
                _ => println!("(unknown command /{name}; /help lists the commands)"),
            }
            continue;
        }

        history.push(user(text));
        let (prompt, dropped) = match fit(&model, system.as_deref(), &mut history, a.max_tokens) {
            Ok(x) => x,
            Err(e) => {
                history.pop();
                eprintln!("error: {e}");
                continue;
            }
        };
        if dropped > 0 {
            eprintln!(
                "(the conversation outgrew the context of {} tokens: dropped the {dropped} oldest message(s); the system prompt is kept)",
                model.ctx_size()
            );
        }
        interrupt.store(false, Ordering::SeqCst);
        generating.store(true, Ordering::SeqCst);
        let result = {
            let mut out = std::io::stdout().lock();
            stream(
                &mut model,
                &prompt,
                &gen_opts,
                &a.sampling.stop,
                Some(&interrupt),
                &mut out,
            )
        };
        generating.store(false, Ordering::SeqCst);
        println!();
        let s = match result {
            Ok(s) => s,
            Err(e) => {
                history.pop();
                model.reset();
                eprintln!("error: {e}");
                continue;
            }
        };
        let g = &s.generation;
        history.push(Message {
            role: "assistant".into(),
            content: s.text.clone(),
        });
        last = Last {
            prompt_tokens: g.prompt_tokens,
            reused_tokens: g.reused_tokens,
            generated: g.tokens.len(),
            prompt_tok_s: prompt_tokens_per_s(g),
            decode_tok_s: g.decode_tokens_per_s(),
        };
        if s.interrupted {
            eprintln!("(stopped)");
        } else if g.finish_reason == glint::FinishReason::Length {
            let why = if model.position() >= model.ctx_size() {
                "the context is full"
            } else {
                "--max-tokens reached"
            };
            eprintln!("(answer cut: {why})");
        }
        if !a.quiet {
            eprintln!(
                "[prompt {} tokens, {} reused from the cache, {:.1} tok/s; answer {} tokens at {:.2} tok/s; context {}/{}]",
                g.prompt_tokens,
                g.reused_tokens,
                last.prompt_tok_s,
                g.tokens.len(),
                last.decode_tok_s,
                model.position(),
                model.ctx_size()
            );
        }
    }
    Ok(())
}

fn user(text: &str) -> Message {
    Message {
        role: "user".into(),
        content: text.to_string(),
    }
}

fn with_system(system: Option<&str>, history: &[Message]) -> Vec<Message> {
    let mut m = Vec::with_capacity(history.len() + 1);
    if let Some(s) = system {
        m.push(Message {
            role: "system".into(),
            content: s.to_string(),
        });
    }
    m.extend_from_slice(history);
    m
}

/// The prompt ids of the conversation, leaving room for an answer (`max_tokens`, at most half the
/// context): while it does not fit, the oldest messages are dropped (a user message with its answer),
/// never the system prompt nor the new message. Returns the ids and how many messages were dropped; an
/// error when the new message alone does not fit.
fn fit(
    model: &Model,
    system: Option<&str>,
    history: &mut Vec<Message>,
    max_tokens: usize,
) -> glint::Result<(Vec<u32>, usize)> {
    let ctx = model.ctx_size();
    let room = max_tokens.clamp(1, (ctx / 2).max(1));
    let mut dropped = 0;
    loop {
        let ids = model.chat_prompt(&with_system(system, history))?;
        if ids.len() + room <= ctx {
            return Ok((ids, dropped));
        }
        if history.len() <= 1 {
            return Err(glint::Error::Input(format!(
                "this message takes {} tokens with the system prompt and the template, and the context holds {ctx} \
                 with {room} kept for the answer: shorten it, or raise --ctx-size",
                ids.len()
            )));
        }
        let n = drop_oldest_turn(history);
        dropped += n;
    }
}

/// Remove the oldest message and the replies up to the next user message (never the last message).
/// Returns how many messages went.
fn drop_oldest_turn(history: &mut Vec<Message>) -> usize {
    let keep_from = history
        .iter()
        .enumerate()
        .skip(1)
        .find(|(_, m)| m.role == "user")
        .map_or(history.len() - 1, |(i, _)| i);
    history.drain(..keep_from);
    keep_from
}

fn stats(model: &Model, history: &[Message], last: &Last) -> String {
    let live = model.gpu.live_buffers();
    format!(
        "(context: {} of {} tokens in the cache; {} message(s) in the conversation\n last answer: prompt {} tokens of which {} reused from the cache, computed at {:.1} tok/s; {} tokens generated at {:.2} tok/s\n GPU: {} buffers alive, {} bytes bound)",
        model.position(),
        model.ctx_size(),
        history.len(),
        last.prompt_tokens,
        last.reused_tokens,
        last.prompt_tok_s,
        last.generated,
        last.decode_tok_s,
        live.buffers,
        live.bytes,
    )
}

#[cfg(test)]
mod tests {
    use super::{drop_oldest_turn, user};
    use glint::chat::Message;

    fn assistant(t: &str) -> Message {
        Message {
            role: "assistant".into(),
            content: t.into(),
        }
    }

    #[test]
    fn dropping_removes_a_whole_turn_and_never_the_new_message() {
        let mut h = vec![
            user("a"),
            assistant("A"),
            user("b"),
            assistant("B"),
            user("c"),
        ];
        assert_eq!(drop_oldest_turn(&mut h), 2);
        assert_eq!(h, vec![user("b"), assistant("B"), user("c")]);
        assert_eq!(drop_oldest_turn(&mut h), 2);
        assert_eq!(h, vec![user("c")]);
        let mut h = vec![assistant("x"), assistant("y"), user("c")];
        assert_eq!(drop_oldest_turn(&mut h), 2);
        assert_eq!(h, vec![user("c")]);
    }
}
