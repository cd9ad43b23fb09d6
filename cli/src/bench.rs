//! `glint bench`: llama-bench's prompt-processing (pp) and generation (tg) tests on one model. The
//! measuring lives in `glint::bench`; this file parses flags and prints the report.

use crate::generate::ModelArgs;
use clap::{Args, ValueEnum};
use glint::bench::{run_bench, BenchSpec};
use glint::Model;
use std::path::PathBuf;

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// llama-bench's markdown table, with a line naming the settings and the machine's load.
    Md,
    /// The whole report as JSON, every repetition's time included.
    Json,
}

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt lengths, comma-separated: one pp test each (batched prefill of that many ids); 0 skips.
    #[arg(
        short = 'p',
        long = "n-prompt",
        value_delimiter = ',',
        default_value = "512"
    )]
    n_prompt: Vec<usize>,
    /// Generation lengths, comma-separated: one tg test each (that many single-token decode steps); 0 skips.
    #[arg(
        short = 'n',
        long = "n-gen",
        value_delimiter = ',',
        default_value = "128"
    )]
    n_gen: Vec<usize>,
    /// Timed repetitions of each test (after one warm-up run).
    #[arg(short = 'r', long = "repetitions", default_value_t = 5)]
    reps: usize,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Output::Md)]
    output: Output,
    /// Also write the JSON report to this file.
    #[arg(long)]
    json_file: Option<PathBuf>,
    /// Context size in tokens (default: just what the tests need).
    #[arg(short = 'c', long = "ctx-size")]
    ctx_size: Option<usize>,
    /// Tokens per prefill submit (llama-bench's micro-batch).
    #[arg(short = 'b', long = "batch-size", default_value_t = 512)]
    batch: usize,
    /// Untimed prompt tokens fed before each tg test (0: start from an empty cache, as llama-bench).
    #[arg(long, default_value_t = 8)]
    tg_prompt: usize,
    /// Depths, comma-separated (llama-bench's -d): every test runs once per depth with that many
    /// positions already in the KV cache. The positions are a synthetic fill, not computed (no
    /// minutes of prefill first); attention over them costs what it would over real keys.
    #[arg(
        short = 'd',
        long = "n-depth",
        value_delimiter = ',',
        default_value = "0"
    )]
    depth: Vec<usize>,
    /// Sequences decoded together, comma-separated (llama-batched-bench's -npl): every S > 1 adds a
    /// `tg{n} xS` test, S sequences each given one token per batched step (the continuous batching of
    /// `glint serve`); its t/s counts every sequence's tokens. Loads S slots of -c each.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    parallel: Vec<usize>,
    /// Skip the warm-up run.
    #[arg(long)]
    no_warmup: bool,
    /// Also profile one decode step for each --parallel entry: every dispatch timed by the GPU's
    /// timestamps, a table of milliseconds per kernel and weight (needs TIMESTAMP_QUERY).
    #[arg(long)]
    profile: bool,
}

pub fn bench(a: BenchArgs) -> glint::Result<()> {
    let spec = BenchSpec {
        n_prompt: a.n_prompt,
        n_gen: a.n_gen,
        reps: a.reps,
        warmup: !a.no_warmup,
        tg_prompt: a.tg_prompt,
        depths: a.depth,
        batch: a.batch,
        ctx_size: a.ctx_size,
        parallel: a.parallel,
        profile: a.profile,
        ..Default::default()
    };
    let mut opts = spec.load_options(a.model.gpu.options()?);
    a.model.apply(&mut opts)?;
    let path = a.model.resolve(false)?;
    eprintln!("glint bench: loading {}", path.display());
    let mut model = Model::load(&path, opts)?;
    eprintln!(
        "glint bench: {} on {}, loaded in {:.0} ms ({}); running {} repetition(s) per test",
        glint::bench::model_name(&path),
        model.gpu.describe(),
        model.load_ms,
        crate::generate::describe_load(&model.load_times),
        spec.reps
    );
    let report = run_bench(&mut model, &spec)?;
    let json = serde_json::to_string_pretty(&report).expect("serialisable");
    if let Some(path) = &a.json_file {
        std::fs::write(path, format!("{json}\n")).map_err(|e| glint::Error::io(path, e))?;
    }
    match a.output {
        Output::Md => print!("{}", report.to_markdown()),
        Output::Json => println!("{json}"),
    }
    Ok(())
}
