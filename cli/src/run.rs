//! `glint run`: one generation from a prompt, a message list or raw ids, streamed to stdout.

use crate::generate::{load_model, stream, summary, SamplingArgs};
use clap::Args;
use glint::chat::Message;
use glint::{GenerateOptions, LoadOptions};
use std::io::Write;
use std::path::PathBuf;

#[derive(Args)]
pub struct RunArgs {
    /// Model: a directory (config.json, model.safetensors, tokenizer.json, ...), a GGUF file, or a
    /// Hugging Face repo id, downloaded into the Hugging Face cache (HF_HOME, HF_HUB_CACHE; HF_HUB_OFFLINE=1
    /// uses the cache only).
    #[arg(short = 'm', long, value_name = "PATH|REPO", default_value = glint::hub::DEFAULT_MODEL)]
    model: String,
    /// User prompt; rendered with the model's chat template.
    #[arg(short = 'p', long, group = "input")]
    prompt: Option<String>,
    /// A JSON file holding an OpenAI-style array of {"role", "content"} messages.
    #[arg(long, group = "input", value_name = "FILE")]
    messages: Option<PathBuf>,
    /// Comma-separated token ids, fed as they are (no template, no tokenizer needed).
    #[arg(long, group = "input", value_delimiter = ',', value_name = "IDS")]
    prompt_ids: Option<Vec<u32>>,
    /// System prompt (with --prompt or --messages, replacing theirs). Default: the template's own.
    #[arg(long = "system", visible_alias = "system-prompt", value_name = "TEXT")]
    system: Option<String>,
    /// Maximum number of tokens to generate.
    #[arg(
        short = 'n',
        long = "max-tokens",
        visible_alias = "n-predict",
        default_value_t = 256,
        value_name = "N"
    )]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Quantize a safetensors model's matrices at load: q8_0, q4_0, q4_k or f16 (K-quants fall back to
    /// Q5_0 where rows are not a multiple of 256, as llama.cpp does; the fallbacks are listed).
    #[arg(long, value_parser = crate::parse_quant)]
    quant: Option<glint::quant::QuantType>,
    /// Context size in tokens (default: min(model maximum, 4096)).
    #[arg(short = 'c', long = "ctx-size", value_name = "N")]
    ctx_size: Option<usize>,
    /// Print one JSON object with ids, text, finish reason, seed and timings as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// No progress bars, load report or summary on stderr.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Kernel shapes from this tuning file (`glint lab --sweep --tune-out FILE`), which must be for
    /// this device. Default: the user cache's file for this device if any, else the device's defaults.
    #[arg(long, value_name = "FILE")]
    tune: Option<PathBuf>,
    #[command(flatten)]
    gpu: crate::GpuArgs,
}

pub fn run(a: RunArgs) -> glint::Result<()> {
    a.sampling.validate()?;
    if a.prompt.is_none() && a.messages.is_none() && a.prompt_ids.is_none() {
        return Err(glint::Error::Input(
            "give one of --prompt, --messages or --prompt-ids".into(),
        ));
    }
    let opts = LoadOptions {
        gpu: a.gpu.options()?,
        ctx_size: a.ctx_size,
        quant: a.quant,
        tune: glint::tune::Tuning::file_or_auto(a.tune.clone()),
        ..Default::default()
    };
    // The messages file is read before the model loads, so that a bad one fails at once.
    let messages = if a.prompt_ids.is_some() {
        None
    } else {
        let mut messages = match (&a.messages, &a.prompt) {
            (Some(f), _) => glint::chat::load_messages(f)?,
            (_, p) => vec![Message {
                role: "user".into(),
                content: p.clone().unwrap_or_default(),
            }],
        };
        if let Some(s) = &a.system {
            messages.retain(|m| m.role != "system");
            messages.insert(
                0,
                Message {
                    role: "system".into(),
                    content: s.clone(),
                },
            );
        }
        Some(messages)
    };
    let (mut model, _) = load_model(&a.model, opts, a.quiet)?;
    let prompt: Vec<u32> = match &messages {
        Some(messages) => model.chat_prompt(messages)?,
        None => a.prompt_ids.clone().unwrap_or_default(),
    };
    let seed = a.sampling.seed();
    let gen_opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampling: a.sampling.params(model.sampling_defaults(), seed),
    };
    let mut out = std::io::stdout().lock();
    let s = stream(
        &mut model,
        &prompt,
        &gen_opts,
        &a.sampling.stop,
        None,
        &mut out,
    )?;
    let g = &s.generation;
    let _ = writeln!(out);
    let _ = out.flush();
    if !a.quiet {
        eprintln!("{}", summary(g, seed));
    }
    if a.json {
        let j = serde_json::json!({
            "prompt_tokens": prompt,
            "tokens": g.tokens,
            "text": s.text,
            "finish_reason": g.finish_reason.as_str(),
            "seed": seed,
            "timings": {
                "load_ms": model.load_ms,
                "prompt_ms": g.prompt_ms,
                "decode_ms": g.decode_ms,
                "decode_tokens_per_s": g.decode_tokens_per_s(),
            }
        });
        let _ = writeln!(out, "{j}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// `--help` explains every flag of every subcommand (a doc comment on each).
    #[test]
    fn every_flag_has_help() {
        let cli = crate::Cli::command();
        cli.clone().debug_assert();
        for sub in cli.get_subcommands() {
            assert!(
                sub.get_about().is_some(),
                "glint {} has no description",
                sub.get_name()
            );
            for arg in sub.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(
                    !help.trim().is_empty(),
                    "glint {} --{id} has no help text",
                    sub.get_name()
                );
            }
        }
    }
}
