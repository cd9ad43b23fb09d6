//! `glint`: the command line. Thin by design: parse flags, call the engine, print.

use clap::{Args, Parser, Subcommand};
use glint::gpu::{BackendChoice, GpuOptions};
use std::path::PathBuf;
use std::process::ExitCode;

mod bench;
mod chat;
mod generate;
mod lab;
mod perplexity;
mod run;
mod serve;

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
    Run(run::RunArgs),
    /// Chat with a model interactively: multi-turn, the KV cache reused across turns; /help for commands.
    Chat(chat::ChatArgs),
    /// Serve the model over an OpenAI-compatible HTTP API, decoding several requests at once in
    /// batched steps (continuous batching).
    Serve(serve::ServeArgs),
    /// Benchmark a model like llama-bench: prompt processing (pp) and generation (tg) in tokens/s.
    Bench(bench::BenchArgs),
    /// Kernel lab: every kernel validated against its CPU reference, then timed (GPU timestamps); the
    /// device's copy bandwidth and peak FLOP/s; --compare saved reports; --plot a roofline.
    Lab(lab::LabArgs),
    /// Perplexity of a text, and KL divergence against a base model's file, as llama-perplexity.
    Perplexity(perplexity::PerplexityArgs),
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

#[derive(Args, Clone, Debug)]
pub struct GpuArgs {
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

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Devices { json, gpu } => devices(json, &gpu),
        Cmd::Run(a) => run::run(a),
        Cmd::Chat(a) => chat::chat(a),
        Cmd::Bench(a) => bench::bench(a),
        Cmd::Lab(a) => lab::lab(a),
        Cmd::Serve(a) => serve::serve(a),
        Cmd::Perplexity(a) => perplexity::perplexity(a),
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
