//! What the subcommands share: the model flags (run, chat, bench, serve), the sampling flags (run,
//! chat), loading a model (path or Hugging Face repo id) with a progress bar, streaming generated text
//! to the terminal, and the summary line.

use clap::Args;
use glint::kernels::{Int8, KvType};
use glint::quant::QuantType;
use glint::stop::StopFilter;
use glint::{Flow, GenerateOptions, Generation, LoadOptions, Model};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// The model flags of `glint run`, `chat`, `bench` and `serve`: which model, how to load it, which GPU.
#[derive(Args, Clone, Debug)]
pub struct ModelArgs {
    /// Model: a directory (config.json, model.safetensors, tokenizer.json, ...), a GGUF file, or a
    /// Hugging Face repo id, downloaded into the Hugging Face cache (HF_HOME, HF_HUB_CACHE; HF_HUB_OFFLINE=1
    /// uses the cache only).
    #[arg(short = 'm', long, value_name = "PATH|REPO", default_value = glint::hub::DEFAULT_MODEL)]
    pub model: String,
    /// Quantize a safetensors model's matrices at load: q8_0, q4_0, q4_k, f16, ... (K-quants fall back
    /// to Q5_0 where rows are not a multiple of 256, as llama.cpp does; the fallbacks are listed).
    #[arg(long, value_parser = parse_quant)]
    pub quant: Option<QuantType>,
    /// KV cache element type: f16 (half the memory) or f32. Default: f16 where the device has
    /// SHADER_F16, else f32.
    #[arg(long = "kv-type", visible_alias = "cache-type", value_name = "T", value_parser = parse_kv_type)]
    pub kv_type: Option<KvType>,
    /// Kernel shapes from this tuning file (`glint lab --sweep --tune-out FILE`), which must be for
    /// this device. Default: the user cache's file for this device if any, else the device's defaults.
    #[arg(long, value_name = "FILE")]
    pub tune: Option<PathBuf>,
    /// The int8 matvec over block-quantized (GGUF, --quant) weights: each layer's input rounded to 8
    /// bits per 32 elements and summed 4 bytes at a time (dot4I8Packed), as llama.cpp's CPU backend
    /// does. off: f32 inputs, the default; decode: for one-token calls (a single sequence's decode:
    /// faster on lavapipe); matvec: for every matvec call (the tiled matmul of long prompts stays
    /// f32). The rounding changes answers slightly (greedy text can diverge after a few tokens).
    /// Default: the tuning file's choice, else off.
    #[arg(long, value_name = "MODE", value_parser = parse_int8)]
    pub int8: Option<Int8>,
    #[command(flatten)]
    pub gpu: crate::GpuArgs,
}

impl ModelArgs {
    /// Load options with these flags' quantization, KV cache type, kernel shapes and GPU; the rest
    /// default.
    pub fn load_options(&self) -> glint::Result<LoadOptions> {
        let mut opts = LoadOptions::default();
        self.apply(&mut opts)?;
        Ok(opts)
    }

    /// Set these flags' fields of `opts` (the GPU, --quant, --kv-type, --tune, --int8), leaving the
    /// others as they are.
    pub fn apply(&self, opts: &mut LoadOptions) -> glint::Result<()> {
        opts.gpu = self.gpu.options()?;
        opts.quant = self.quant;
        opts.kv_type = self.kv_type;
        opts.tune = glint::tune::Tuning::file_or_auto(self.tune.clone());
        opts.int8 = self.int8;
        Ok(())
    }

    /// The model's local path: the path given, or the repo id resolved through the Hugging Face cache
    /// (downloading it unless offline; progress on stderr unless `quiet`).
    pub fn resolve(&self, quiet: bool) -> glint::Result<PathBuf> {
        glint::hub::resolve_model(&self.model, !quiet)
    }
}

fn parse_quant(s: &str) -> Result<QuantType, String> {
    QuantType::parse(s).ok_or_else(|| {
        let names: Vec<&str> = QuantType::ALL.iter().map(|t| t.name()).collect();
        format!("'{s}' is not one of {}", names.join(", ").to_lowercase())
    })
}

fn parse_int8(s: &str) -> Result<Int8, String> {
    [Int8::Off, Int8::Decode, Int8::Matvec]
        .into_iter()
        .find(|m| m.name() == s.to_ascii_lowercase())
        .ok_or_else(|| format!("'{s}' is not one of off, decode, matvec"))
}

fn parse_kv_type(s: &str) -> Result<KvType, String> {
    KvType::parse(s).ok_or_else(|| format!("'{s}' is not one of f16, f32"))
}

/// Sampling flags (llama.cpp's names). Each one given overrides the model's own default from its
/// generation_config.json; the others keep it.
#[derive(Args, Clone, Debug, Default)]
pub struct SamplingArgs {
    /// Sampling temperature; 0 is greedy (always the most likely token). Default: the model's
    /// generation_config.json, else 0.
    #[arg(long = "temperature", visible_alias = "temp", value_name = "T")]
    pub temperature: Option<f32>,
    /// Keep only the K most likely tokens before sampling; 0 = off. Default: the model's.
    #[arg(long = "top-k", value_name = "K")]
    pub top_k: Option<usize>,
    /// Nucleus sampling: keep the most likely tokens whose probabilities sum to P (0 < P <= 1; 1 = off).
    /// Default: the model's.
    #[arg(long = "top-p", value_name = "P")]
    pub top_p: Option<f32>,
    /// Drop tokens less likely than P times the most likely one (0 <= P <= 1; 0 = off). Default: the model's.
    #[arg(long = "min-p", value_name = "P")]
    pub min_p: Option<f32>,
    /// Penalise tokens already in the last --repeat-last-n tokens (1.0 = off; 1.05-1.2 is typical).
    /// Default: the model's.
    #[arg(
        long = "repeat-penalty",
        visible_alias = "repetition-penalty",
        value_name = "X"
    )]
    pub repeat_penalty: Option<f32>,
    /// How many of the last context tokens the repeat penalty looks at (0 = the whole context).
    #[arg(long = "repeat-last-n", value_name = "N", default_value_t = 64)]
    pub repeat_last_n: usize,
    /// Random seed for sampling. Default: a random one, printed in the summary on stderr so that the
    /// run can be repeated (same device, same binary, same seed = same text).
    #[arg(short = 's', long, value_name = "N")]
    pub seed: Option<u64>,
    /// Stop when the generated text contains STRING (repeatable). The stop text is not printed.
    #[arg(long = "stop", value_name = "STRING")]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    /// `defaults` (the model's, [`Model::sampling_defaults`]) with each flag given put over it, and the
    /// seed (the flag, else `seed`).
    pub fn params(
        &self,
        defaults: glint::sampler::SamplingParams,
        seed: u64,
    ) -> glint::sampler::SamplingParams {
        let mut p = defaults;
        if let Some(t) = self.temperature {
            p.temperature = t;
        }
        if let Some(k) = self.top_k {
            p.top_k = k;
        }
        if let Some(x) = self.top_p {
            p.top_p = x;
        }
        if let Some(x) = self.min_p {
            p.min_p = x;
        }
        if let Some(x) = self.repeat_penalty {
            p.repetition_penalty = x;
        }
        p.repeat_last_n = self.repeat_last_n;
        p.seed = self.seed.unwrap_or(seed);
        p
    }

    /// Reject bad flag values before the model is loaded (the same checks as the engine's).
    pub fn validate(&self) -> glint::Result<()> {
        self.params(glint::sampler::SamplingParams::greedy(), 0)
            .validate()
    }

    /// The seed to use: the flag, else a fresh random one (32 bits, easy to copy).
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or_else(random_seed)
    }
}

/// A random seed without a random-number crate: std's randomly keyed hasher over the time and pid.
pub fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    h.write_u32(std::process::id());
    h.finish() & 0xFFFF_FFFF
}

/// Resolve `model` (a path, or a Hugging Face repo id downloaded into / found in its cache) and load it
/// onto the GPU, with a progress bar on stderr unless `quiet` (hidden anyway when stderr is not a
/// terminal). Prints the one-line load report unless `quiet`.
pub fn load_model(
    model: &ModelArgs,
    opts: LoadOptions,
    quiet: bool,
) -> glint::Result<(Model, PathBuf)> {
    let path = model.resolve(quiet)?;
    let model = load_path(&path, opts, quiet)?;
    Ok((model, path))
}

/// [`load_model`] for a resolved path.
pub fn load_path(path: &Path, mut opts: LoadOptions, quiet: bool) -> glint::Result<Model> {
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template("loading weights [{bar:30}] {bytes}/{total_bytes} {wide_msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let b = bar.clone();
    opts.progress = Some(Box::new(move |name: &str, done: u64, total: u64| {
        if b.length() != Some(total) {
            b.set_length(total);
        }
        b.set_position(done);
        b.set_message(name.to_string());
    }));
    let loaded = Model::load(path, opts);
    bar.finish_and_clear();
    let model = loaded?;
    if !quiet {
        eprintln!(
            "glint: {} on {} (loaded in {:.0} ms: {}; {:.0} MiB weights, {:.0} MiB KV cache, context {})",
            path.display(),
            model.gpu.describe(),
            model.load_ms,
            describe_load(&model.load_times),
            model.weight_bytes() as f64 / (1 << 20) as f64,
            model.kv_bytes() as f64 / (1 << 20) as f64,
            model.ctx_size()
        );
    }
    Ok(model)
}

/// The outcome of [`stream`].
pub struct Streamed {
    pub generation: Generation,
    /// The text shown: stop ids and stop strings excluded.
    pub text: String,
    /// `interrupt` was raised while generating.
    pub interrupted: bool,
}

/// Generate from `prompt` (the whole context; the cached prefix is reused) and write the text to `out`
/// as it comes, flushed per piece: ids are detokenized incrementally (a multi-byte character split
/// across ids is written once complete), stop ids are not shown, and text is held back while it could
/// be the start of a stop string, which ends generation and is never shown. A raised `interrupt` flag
/// (cleared here) or a failed write stops generation after the current token.
pub fn stream(
    model: &mut Model,
    prompt: &[u32],
    opts: &GenerateOptions,
    stops: &[String],
    interrupt: Option<&AtomicBool>,
    out: &mut dyn Write,
) -> glint::Result<Streamed> {
    let tokenizer = model.tokenizer();
    if !stops.is_empty() && tokenizer.is_none() {
        return Err(glint::Error::Input(
            "--stop needs the model's tokenizer to see text, and this model has none".into(),
        ));
    }
    let mut decoder = tokenizer.as_ref().map(|t| t.stream());
    let mut filter = StopFilter::new(stops);
    let stop_ids = model.stop_ids().to_vec();
    let mut text = String::new();
    let mut err = None;
    let mut stopped = false;
    let mut interrupted = false;
    let mut show = |s: &str, text: &mut String| -> bool {
        text.push_str(s);
        s.is_empty() || (out.write_all(s.as_bytes()).is_ok() && out.flush().is_ok())
    };
    let generation = model.generate_with(prompt, opts, |id| {
        if let Some(d) = decoder.as_mut() {
            if !stop_ids.contains(&id) {
                match d.push(id) {
                    Ok(piece) => {
                        let (visible, hit) = filter.push(&piece);
                        if !show(&visible, &mut text) {
                            return Flow::Stop;
                        }
                        if hit {
                            stopped = true;
                            return Flow::Stop;
                        }
                    }
                    Err(e) => {
                        err = Some(e);
                        return Flow::Stop;
                    }
                }
            }
        }
        if interrupt.is_some_and(|f| f.swap(false, Ordering::SeqCst)) {
            interrupted = true;
            return Flow::Stop;
        }
        Flow::Continue
    })?;
    if let Some(e) = err {
        return Err(e);
    }
    if let (Some(d), false) = (decoder.as_mut(), stopped) {
        let (visible, hit) = filter.push(&d.finish()?);
        show(&visible, &mut text);
        if !hit {
            show(&filter.finish(), &mut text);
        }
    }
    Ok(Streamed {
        generation,
        text,
        interrupted,
    })
}

/// Tokens per second of the prompt part that was computed (the reused prefix costs nothing).
pub fn prompt_tokens_per_s(g: &Generation) -> f64 {
    let n = g.prompt_tokens - g.reused_tokens;
    if g.prompt_ms > 0.0 {
        n as f64 * 1e3 / g.prompt_ms
    } else {
        0.0
    }
}

/// The one-line summary: prompt and generated token counts, speeds, seed.
/// Where a load's time went: "files 12 ms, device 80 ms, weights 900 ms, pipelines 1100 ms beside
/// them (waited for 300 ms) (pipeline cache)".
pub fn describe_load(t: &glint::engine::LoadTimes) -> String {
    format!(
        "files {:.0} ms, device {:.0} ms, weights {:.0} ms, pipelines {:.0} ms beside them \
         (waited for {:.0} ms){}",
        t.files_ms,
        t.device_ms,
        t.weights_ms,
        t.pipelines_ms,
        t.pipelines_wait_ms,
        if t.pipeline_cache_hit {
            " (pipeline cache)"
        } else {
            ""
        }
    )
}

pub fn summary(g: &Generation, seed: u64) -> String {
    let reused = if g.reused_tokens > 0 {
        format!(" ({} reused from the cache)", g.reused_tokens)
    } else {
        String::new()
    };
    format!(
        "glint: prompt {} tokens{reused} at {:.1} tok/s (first token after {:.0} ms), generated {} tokens at {:.2} tok/s ({}), seed {seed}",
        g.prompt_tokens,
        prompt_tokens_per_s(g),
        g.prompt_ms,
        g.tokens.len(),
        g.decode_tokens_per_s(),
        g.finish_reason.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::SamplingArgs;
    use clap::Parser;
    use glint::sampler::SamplingParams;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        s: SamplingArgs,
    }

    fn parse(args: &[&str]) -> SamplingArgs {
        T::try_parse_from(std::iter::once("t").chain(args.iter().copied()))
            .unwrap()
            .s
    }

    fn model_defaults() -> SamplingParams {
        SamplingParams {
            temperature: 0.7,
            top_k: 20,
            top_p: 0.8,
            min_p: 0.0,
            repetition_penalty: 1.05,
            repeat_last_n: 64,
            seed: 0,
        }
    }

    #[test]
    fn no_flags_keep_the_model_defaults() {
        let p = parse(&[]).params(model_defaults(), 42);
        assert_eq!(
            p,
            SamplingParams {
                seed: 42,
                ..model_defaults()
            }
        );
    }

    #[test]
    fn flags_override_field_by_field() {
        let a = parse(&[
            "--temp",
            "0",
            "--top-k",
            "5",
            "--repeat-last-n",
            "0",
            "-s",
            "7",
        ]);
        let p = a.params(model_defaults(), 42);
        assert_eq!(p.temperature, 0.0);
        assert!(p.is_greedy());
        assert_eq!(p.top_k, 5);
        assert_eq!(p.top_p, 0.8, "not given: the model's");
        assert_eq!(p.repetition_penalty, 1.05, "not given: the model's");
        assert_eq!(p.repeat_last_n, 0);
        assert_eq!(p.seed, 7, "--seed wins over the random one");
        let p = parse(&[
            "--temperature",
            "1.5",
            "--top-p",
            "0.9",
            "--min-p",
            "0.1",
            "--repeat-penalty",
            "1.2",
        ])
        .params(model_defaults(), 1);
        assert_eq!(
            (p.temperature, p.top_p, p.min_p, p.repetition_penalty),
            (1.5, 0.9, 0.1, 1.2)
        );
    }

    #[test]
    fn stop_is_repeatable_and_bad_values_are_refused() {
        assert_eq!(
            parse(&["--stop", "\n\n", "--stop", "END"]).stop,
            vec!["\n\n", "END"]
        );
        assert!(parse(&["--top-p", "1.5"]).validate().is_err());
        assert!(parse(&["--temp=-1"]).validate().is_err());
        assert!(parse(&["--min-p", "2"]).validate().is_err());
        assert!(parse(&["--temp", "0.8", "--top-p", "0.95"])
            .validate()
            .is_ok());
    }

    #[test]
    fn random_seeds_fit_32_bits_and_differ() {
        let a = super::random_seed();
        let b = super::random_seed();
        assert!(a <= u32::MAX as u64 && b <= u32::MAX as u64);
        assert_ne!(a, b);
    }
}
