//! `glint`: the command line. Thin by design: parse flags, call the engine, print.

use clap::{Args, Parser, Subcommand};
use glint::chat::Message;
use glint::gpu::{BackendChoice, GpuOptions};
use glint::{Flow, LoadOptions, Model};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "glint",
    version,
    about = "GPU-first LLM inference on any GPU (Vulkan, Metal, DX12) through wgpu"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// List GPU adapters with their backend, type, driver, features and limits.
    Devices {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        gpu: GpuArgs,
    },
    /// Generate text from a prompt, a JSON message list, or raw token ids.
    Run(RunArgs),
    /// Print the token ids of a text as a JSON array (special tokens written in the text are recognised).
    Tokenize {
        /// Model directory (tokenizer.json) or GGUF file.
        #[arg(short = 'm', long)]
        model: PathBuf,
        /// Read the text from this file instead of the argument.
        #[arg(short = 'f', long)]
        file: Option<PathBuf>,
        /// The text to tokenize.
        text: Option<String>,
    },
}

#[derive(Args, Clone)]
struct GpuArgs {
    /// Graphics API: vulkan, metal, dx12 or gl (default: the best available; WGPU_BACKEND is honoured).
    #[arg(long)]
    backend: Option<String>,
    /// Adapter index, as listed by `glint devices`.
    #[arg(long)]
    adapter: Option<usize>,
}

impl GpuArgs {
    fn options(&self) -> glint::Result<GpuOptions> {
        Ok(GpuOptions {
            backend: self
                .backend
                .as_deref()
                .map(BackendChoice::parse)
                .transpose()?,
            adapter: self.adapter,
        })
    }
}

#[derive(Args)]
struct RunArgs {
    /// Model directory (config.json, model.safetensors, tokenizer.json, ...).
    #[arg(short = 'm', long)]
    model: PathBuf,
    /// User prompt; rendered with the model's chat template.
    #[arg(short = 'p', long, group = "input")]
    prompt: Option<String>,
    /// A JSON file holding an OpenAI-style array of {"role", "content"} messages.
    #[arg(long, group = "input")]
    messages: Option<PathBuf>,
    /// Comma-separated token ids, fed as they are (no template, no tokenizer needed).
    #[arg(long, group = "input", value_delimiter = ',')]
    prompt_ids: Option<Vec<u32>>,
    /// System prompt (with --prompt). Default: the template's own.
    #[arg(long = "system", visible_alias = "system-prompt")]
    system: Option<String>,
    /// Maximum number of tokens to generate.
    #[arg(
        short = 'n',
        long = "max-tokens",
        visible_alias = "n-predict",
        default_value_t = 256
    )]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy (the only mode so far).
    #[arg(long, visible_alias = "temp", default_value_t = 0.0)]
    temperature: f32,
    /// Context size in tokens (default: min(model maximum, 4096)).
    #[arg(short = 'c', long = "ctx-size")]
    ctx_size: Option<usize>,
    /// Print one JSON object with ids, text and timings as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// No progress or summary on stderr.
    #[arg(short = 'q', long)]
    quiet: bool,
    #[command(flatten)]
    gpu: GpuArgs,
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Devices { json, gpu } => devices(json, &gpu),
        Cmd::Run(a) => run(a),
        Cmd::Tokenize { model, file, text } => tokenize(model, file, text),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn devices(json: bool, gpu: &GpuArgs) -> glint::Result<()> {
    let list = glint::gpu::list_adapters(&gpu.options()?);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&list).expect("serialisable")
        );
        return Ok(());
    }
    if list.is_empty() {
        return Err(glint::Error::Gpu(
            "no GPU adapter found (on Linux without a GPU: apt-get install mesa-vulkan-drivers libvulkan1)".into(),
        ));
    }
    for a in &list {
        println!(
            "[{}] {} ({}, {})",
            a.index, a.name, a.backend, a.device_type
        );
        println!("    driver: {} {}", a.driver, a.driver_info);
        println!("    features: {}", a.features.join(", "));
        println!(
            "    subgroup size: {}..{}",
            a.subgroup_min_size, a.subgroup_max_size
        );
        println!(
            "    max storage binding: {} MiB, max buffer: {} MiB, storage buffers/stage: {}, workgroup memory: {} KiB, invocations/workgroup: {}",
            a.max_storage_buffer_binding_size >> 20,
            a.max_buffer_size >> 20,
            a.max_storage_buffers_per_shader_stage,
            a.max_compute_workgroup_storage_size >> 10,
            a.max_compute_invocations_per_workgroup
        );
    }
    Ok(())
}

fn tokenize(model: PathBuf, file: Option<PathBuf>, text: Option<String>) -> glint::Result<()> {
    let text = match (file, text) {
        (Some(f), _) => std::fs::read_to_string(&f).map_err(|e| glint::Error::io(&f, e))?,
        (None, Some(t)) => t,
        (None, None) => {
            return Err(glint::Error::Input(
                "tokenize: give a TEXT argument or --file".into(),
            ))
        }
    };
    let tok = glint::engine::tokenizer_for(&model)?;
    let ids = tok.encode(&text)?;
    println!("{}", serde_json::to_string(&ids).expect("serialisable"));
    Ok(())
}

fn run(a: RunArgs) -> glint::Result<()> {
    if a.temperature != 0.0 {
        return Err(glint::Error::Input(
            "--temperature: only 0 (greedy) is implemented so far".into(),
        ));
    }
    let opts = LoadOptions {
        gpu: a.gpu.options()?,
        ctx_size: a.ctx_size,
        ..Default::default()
    };
    let mut model = Model::load(&a.model, opts)?;
    if !a.quiet {
        eprintln!(
            "glint: {} on {} ({:.0} ms, {:.0} MiB weights, {:.0} MiB KV cache)",
            a.model.display(),
            model.gpu.describe(),
            model.load_ms,
            model.weight_bytes() as f64 / (1 << 20) as f64,
            model.kv_bytes() as f64 / (1 << 20) as f64
        );
    }
    let prompt: Vec<u32> = if let Some(ids) = &a.prompt_ids {
        ids.clone()
    } else {
        let mut messages = match (&a.messages, &a.prompt) {
            (Some(f), _) => glint::chat::load_messages(f)?,
            (None, Some(p)) => vec![Message {
                role: "user".into(),
                content: p.clone(),
            }],
            (None, None) => {
                return Err(glint::Error::Input(
                    "give one of --prompt, --messages or --prompt-ids".into(),
                ))
            }
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
        model.chat_prompt(&messages)?
    };
    let tokenizer = model.tokenizer();
    let mut stream = tokenizer.as_ref().map(|t| t.stream());
    let stop_ids = model.stop_ids().to_vec();
    let mut out = std::io::stdout().lock();
    let mut text = String::new();
    let mut err = None;
    let generation = model.generate(&prompt, a.max_tokens, |id| {
        if let Some(s) = stream.as_mut() {
            if stop_ids.contains(&id) {
                return Flow::Continue;
            }
            match s.push(id) {
                Ok(piece) => {
                    text.push_str(&piece);
                    let _ = out.write_all(piece.as_bytes());
                    let _ = out.flush();
                }
                Err(e) => {
                    err = Some(e);
                    return Flow::Stop;
                }
            }
        }
        Flow::Continue
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    if let Some(s) = stream.as_mut() {
        let rest = s.finish()?;
        text.push_str(&rest);
        let _ = out.write_all(rest.as_bytes());
    }
    let _ = writeln!(out);
    if !a.quiet {
        eprintln!(
            "glint: prompt {} tokens in {:.0} ms ({:.1} tok/s), generated {} tokens at {:.2} tok/s",
            prompt.len(),
            generation.prompt_ms,
            prompt.len() as f64 * 1e3 / generation.prompt_ms.max(1e-9),
            generation.tokens.len(),
            generation.decode_tokens_per_s()
        );
    }
    if a.json {
        let j = serde_json::json!({
            "prompt_tokens": prompt,
            "tokens": generation.tokens,
            "text": text,
            "finish_reason": generation.finish_reason.as_str(),
            "timings": {
                "load_ms": model.load_ms,
                "prompt_ms": generation.prompt_ms,
                "decode_ms": generation.decode_ms,
                "decode_tokens_per_s": generation.decode_tokens_per_s(),
            }
        });
        let _ = writeln!(out, "{j}");
    }
    Ok(())
}
