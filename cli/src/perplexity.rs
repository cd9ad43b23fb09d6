//! `glint perplexity`: llama-perplexity's perplexity and KL-divergence measures over a text file. The
//! method and the statistics live in `glint::perplexity`; this file parses flags, drives the chunks,
//! and prints (a progress bar on stderr, the running estimate and the report on stdout).

use crate::generate::load_model;
use clap::Args;
use glint::perplexity::{
    model_bos, score_chunk, tokenize_text, vocab_sha256, Chunking, KlBase, KlBaseHeader,
    KlBaseWriter, KlReport, KlStats, NllStats,
};
use glint::{Error, LoadOptions};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

#[derive(Args)]
pub struct PerplexityArgs {
    /// The model, --quant, --kv-type and the GPU, as for `glint run`.
    #[command(flatten)]
    model: crate::generate::ModelArgs,
    /// The text to score (read whole, tokenized at once).
    #[arg(short = 'f', long, value_name = "FILE")]
    file: PathBuf,
    /// Tokens per chunk (default 512; with --kl-divergence, the base file's).
    #[arg(short = 'c', long = "ctx-size", value_name = "N")]
    ctx_size: Option<usize>,
    /// Score at most N chunks (default: every whole chunk of the text; with --kl-divergence, the base
    /// file's).
    #[arg(long, value_name = "N")]
    chunks: Option<usize>,
    /// Tokens per forward call (default: -c). The rows of logits of one call are further limited to
    /// what one GPU binding holds (220 rows for a 151936-id vocabulary under 128 MiB).
    #[arg(short = 'b', long = "batch-size", value_name = "N")]
    batch: Option<usize>,
    /// Without --kl-divergence: also write the model's top-k log-probabilities at every scored position
    /// to FILE (the base of a later --kl-divergence run). With it: the base file to compare against.
    #[arg(long = "kl-divergence-base", value_name = "FILE")]
    kl_base: Option<PathBuf>,
    /// Compare this model with the base file of --kl-divergence-base: KL divergence, same top token,
    /// Δp and the PPL ratio, as llama-perplexity reports them.
    #[arg(long = "kl-divergence", requires = "kl_base")]
    kl_divergence: bool,
    /// Top-k entries per position written to a base file (1 to 32).
    #[arg(long = "kl-top-k", value_name = "K", default_value_t = 32)]
    kl_top_k: usize,
    /// Keep every layer's matrices separate (no fused q/k/v and gate/up dispatches), to measure what
    /// the fused kernels cost in quality.
    #[arg(long = "no-fuse")]
    no_fuse: bool,
    /// Print one JSON object with every figure as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// No progress bar or load report on stderr.
    #[arg(short = 'q', long)]
    quiet: bool,
}

/// Which measure a run takes.
enum Mode {
    Perplexity,
    WriteBase(PathBuf),
    Compare(Box<KlBase>),
}

pub fn perplexity(a: PerplexityArgs) -> glint::Result<()> {
    if !(1..=glint::logprobs::MAX_TOP_K).contains(&a.kl_top_k) {
        return Err(Error::Input(format!(
            "--kl-top-k {}: expected 1 to {}",
            a.kl_top_k,
            glint::logprobs::MAX_TOP_K
        )));
    }
    // The base file is read first, so that a bad one fails before the model loads.
    let mode = match (&a.kl_base, a.kl_divergence) {
        (Some(p), true) => Mode::Compare(Box::new(KlBase::open(p)?)),
        (Some(p), false) => Mode::WriteBase(p.clone()),
        (None, _) => Mode::Perplexity,
    };
    let (n_ctx, max_chunks) = match &mode {
        Mode::Compare(base) => {
            let h = &base.header;
            let c = h.n_ctx as usize;
            if a.ctx_size.is_some_and(|x| x != c) {
                return Err(Error::Input(format!(
                    "-c {}: {} was made with -c {c}; leave -c out or give {c}",
                    a.ctx_size.unwrap_or(0),
                    base.path.display()
                )));
            }
            if a.chunks.is_some_and(|x| x != h.n_chunks as usize) {
                return Err(Error::Input(format!(
                    "--chunks {}: {} holds {} chunks; leave --chunks out or give {}",
                    a.chunks.unwrap_or(0),
                    base.path.display(),
                    h.n_chunks,
                    h.n_chunks
                )));
            }
            (c, Some(h.n_chunks as usize))
        }
        _ => (a.ctx_size.unwrap_or(512), a.chunks),
    };
    let text = std::fs::read_to_string(&a.file).map_err(|e| Error::io(&a.file, e))?;
    let batch = a.batch.unwrap_or(n_ctx);
    if batch == 0 {
        return Err(Error::Input(
            "-b/--batch-size 0: at least 1 is needed".into(),
        ));
    }
    // Every token of a call may be a scored position: as many output rows as tokens (the engine
    // caps them at one binding's worth of logits).
    let mut opts = LoadOptions {
        ctx_size: Some(n_ctx),
        batch,
        max_outputs: Some(batch),
        fuse: !a.no_fuse,
        ..Default::default()
    };
    a.model.apply(&mut opts)?;
    let (mut model, path) = load_model(&a.model, opts, a.quiet)?;
    let tokens = tokenize_text(&model, &text)?;
    let bos = model_bos(&model)?;
    let ch = Chunking::new(tokens.len(), n_ctx, max_chunks)?;
    let vocab_sha = vocab_sha256(&model);
    let n_vocab = model.config().vocab;
    let mut writer = None;
    match &mode {
        Mode::Compare(base) => {
            base.check(&vocab_sha, n_vocab, &tokens)?;
            if base.header.bos != bos {
                return Err(Error::format(
                    &base.path,
                    format!(
                        "made with BOS {:?} at the start of each chunk, this model uses {bos:?}",
                        base.header.bos
                    ),
                ));
            }
        }
        Mode::WriteBase(p) => {
            let header = KlBaseHeader {
                n_ctx: n_ctx as u32,
                n_chunks: ch.n_chunks as u32,
                top_k: a.kl_top_k as u32,
                n_vocab: n_vocab as u32,
                bos,
                vocab_sha256: vocab_sha,
                tokens_sha256: [0; 32],
                model: path.display().to_string(),
            };
            writer = Some(KlBaseWriter::create(p, header, &tokens)?);
        }
        Mode::Perplexity => {}
    }
    if !a.quiet {
        eprintln!(
            "perplexity: {} tokens, {} chunks of {n_ctx} ({} positions scored in each), batch {}, \
             {} logit rows per call, KV {}, {}, BOS {}",
            tokens.len(),
            ch.n_chunks,
            ch.scored_per_chunk(),
            model.max_batch(),
            model.max_outputs(),
            model.kv_type().name(),
            if a.no_fuse { "unfused" } else { "fused" },
            bos.map_or("none".into(), |b| b.to_string()),
        );
    }

    // Ctrl-C: the first finishes the chunk in progress and reports the estimate so far; a second quits.
    let presses = Arc::new(AtomicUsize::new(0));
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let (presses, interrupted) = (presses.clone(), interrupted.clone());
        ctrlc::set_handler(move || {
            if presses.fetch_add(1, Ordering::SeqCst) == 0 {
                interrupted.store(true, Ordering::SeqCst);
                eprintln!(
                    "\ninterrupted: finishing the chunk in progress, then the estimate so far \
                     (Ctrl-C again to quit now)"
                );
            } else {
                std::process::exit(130);
            }
        })
        .map_err(|e| Error::Input(format!("cannot handle Ctrl-C: {e}")))?;
    }

    let bar = if a.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::with_draw_target(Some(ch.n_chunks as u64), ProgressDrawTarget::stderr())
    };
    bar.set_style(
        ProgressStyle::with_template(
            "perplexity [{bar:30}] {pos}/{len} chunks, {elapsed} elapsed, ETA {eta} {wide_msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let mut stats = NllStats::default();
    let mut kl = KlStats::default();
    let mut running = Vec::new();
    let mut stdout = std::io::stdout();
    if matches!(mode, Mode::Compare(_)) {
        println!(
            "chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS            Same top p"
        );
    }
    let t0 = Instant::now();
    let mut done = 0;
    for i in 0..ch.n_chunks {
        if interrupted.load(Ordering::SeqCst) {
            break;
        }
        let scores = match &mode {
            Mode::Compare(base) => {
                let k = base.header.top_k as usize;
                score_chunk(&mut model, &ch, &tokens, i, bos, 0, &base.chunk_ids(i), k)?
            }
            Mode::WriteBase(_) => {
                score_chunk(&mut model, &ch, &tokens, i, bos, a.kl_top_k, &[], 0)?
            }
            Mode::Perplexity => score_chunk(&mut model, &ch, &tokens, i, bos, 0, &[], 0)?,
        };
        for s in &scores {
            stats.push(s.logprob);
        }
        if let Some(w) = writer.as_mut() {
            w.write_chunk(&scores)?;
        }
        done = i + 1;
        let line = match &mode {
            Mode::Compare(base) => {
                for (s, b) in scores.iter().zip(base.chunk(i)) {
                    kl.push(b, s);
                }
                kl_chunk_line(done, &kl.report())
            }
            _ => format!(
                "[{done}]{:.4} +/- {}",
                stats.ppl(),
                stats
                    .ppl_uncertainty()
                    .map_or("-".into(), |u| format!("{u:.5}"))
            ),
        };
        running.push(serde_json::json!({
            "chunk": done,
            "ppl": stats.ppl(),
            "ppl_unc": stats.ppl_uncertainty(),
        }));
        bar.suspend(|| {
            let _ = writeln!(stdout, "{line}");
            let _ = stdout.flush();
        });
        let secs = t0.elapsed().as_secs_f64();
        bar.set_message(format!(
            "{:.2} tokens/s",
            (done * n_ctx) as f64 / secs.max(1e-9)
        ));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let secs = t0.elapsed().as_secs_f64();
    let was_interrupted = done < ch.n_chunks;
    let tokens_per_s = (done * n_ctx) as f64 / secs.max(1e-9);
    if was_interrupted {
        println!(
            "interrupted after {done} of {} chunks: the figures below are over those {done}",
            ch.n_chunks
        );
    }
    if done == 0 {
        return Err(Error::Input(
            "interrupted before the first chunk was scored".into(),
        ));
    }
    let base_written = match writer {
        Some(w) => {
            let h = w.finish()?;
            if !a.quiet {
                eprintln!(
                    "perplexity: wrote the top-{} log-probabilities of {} positions to {}",
                    h.top_k,
                    h.n_chunks as usize * ch.scored_per_chunk(),
                    a.kl_base.as_ref().expect("base mode").display()
                );
            }
            true
        }
        None => false,
    };
    let report = match &mode {
        Mode::Compare(base) => {
            let r = kl.report();
            print_kl_report(&r, &base.header.model);
            Some(r)
        }
        _ => {
            match stats.ppl_uncertainty() {
                Some(u) => println!("Final estimate: PPL = {:.4} +/- {u:.5}", stats.ppl()),
                None => println!("Final estimate: PPL = {:.4}", stats.ppl()),
            }
            None
        }
    };
    println!(
        "perplexity: {} tokens ({done} chunks of {n_ctx}) in {secs:.2} s, {tokens_per_s:.2} tokens/s, on {}",
        done * n_ctx,
        model.gpu.describe()
    );
    if a.json {
        let v = serde_json::json!({
            "model": path.display().to_string(),
            "file": a.file.display().to_string(),
            "n_tokens": tokens.len(),
            "n_ctx": n_ctx,
            "n_chunks": ch.n_chunks,
            "chunks_done": done,
            "interrupted": was_interrupted,
            "scored": stats.count,
            "batch": model.max_batch(),
            "max_outputs": model.max_outputs(),
            "kv_type": model.kv_type().name(),
            "fuse": !a.no_fuse,
            "bos": bos,
            "ppl": stats.ppl(),
            "ppl_unc": stats.ppl_uncertainty(),
            "running": running,
            "seconds": secs,
            "tokens_per_s": tokens_per_s,
            "device": model.gpu.describe(),
            "kl_divergence_base": if base_written { a.kl_base.as_ref().map(|p| p.display().to_string()) } else { None },
            "kl": report,
        });
        println!("{v}");
    }
    Ok(())
}

/// One row of llama-perplexity's per-chunk KL table.
fn kl_chunk_line(chunk: usize, r: &KlReport) -> String {
    format!(
        "{chunk:4}    {:9.4} ± {:9.4}    {:10.5} ± {:10.5}    {:10.5} ± {:10.5}    {:6.3} ± {:6.3} %    {:6.3} ± {:6.3} %",
        r.ppl,
        r.ppl_unc,
        r.ln_ppl_ratio,
        r.ln_ppl_ratio_unc,
        r.kld_mean,
        r.kld_unc,
        100.0 * r.dp_rms,
        100.0 * r.dp_rms_unc,
        100.0 * r.same_top,
        100.0 * r.same_top_unc
    )
}

/// llama-perplexity's closing statistics.
fn print_kl_report(r: &KlReport, base_model: &str) {
    println!();
    println!("====== Perplexity statistics ======");
    println!(
        "Mean PPL(Q)                   : {:10.6} ± {:10.6}",
        r.ppl, r.ppl_unc
    );
    println!(
        "Mean PPL(base)                : {:10.6} ± {:10.6}   ({base_model})",
        r.ppl_base, r.ppl_base_unc
    );
    println!("Cor(ln(PPL(Q)), ln(PPL(base))): {:6.2}%", 100.0 * r.cor);
    println!(
        "Mean ln(PPL(Q)/PPL(base))     : {:10.6} ± {:10.6}",
        r.ln_ppl_ratio, r.ln_ppl_ratio_unc
    );
    println!(
        "Mean PPL(Q)/PPL(base)         : {:10.6} ± {:10.6}",
        r.ppl_ratio, r.ppl_ratio_unc
    );
    println!(
        "Mean PPL(Q)-PPL(base)         : {:10.6} ± {:10.6}",
        r.ppl_diff, r.ppl_diff_unc
    );
    println!();
    println!("====== KL divergence statistics (base top-k + rest bucket) ======");
    println!("Mean    KLD: {:10.6} ± {:10.6}", r.kld_mean, r.kld_unc);
    println!("Maximum KLD: {:10.6}", r.kld_max);
    println!("99.9%   KLD: {:10.6}", r.kld_p999);
    println!("99.0%   KLD: {:10.6}", r.kld_p99);
    println!("95.0%   KLD: {:10.6}", r.kld_p95);
    println!("90.0%   KLD: {:10.6}", r.kld_p90);
    println!("Median  KLD: {:10.6}", r.kld_median);
    println!("10.0%   KLD: {:10.6}", r.kld_p10);
    println!(" 5.0%   KLD: {:10.6}", r.kld_p5);
    println!(" 1.0%   KLD: {:10.6}", r.kld_p1);
    println!("Minimum KLD: {:10.6}", r.kld_min);
    println!();
    println!("====== Token probability statistics ======");
    println!(
        "Mean    Δp: {:6.3} ± {:5.3} %",
        100.0 * r.dp_mean,
        100.0 * r.dp_mean_unc
    );
    println!("Maximum Δp: {:6.3}%", 100.0 * r.dp_max);
    println!("99.0%   Δp: {:6.3}%", 100.0 * r.dp_p99);
    println!("Median  Δp: {:6.3}%", 100.0 * r.dp_median);
    println!(" 1.0%   Δp: {:6.3}%", 100.0 * r.dp_p1);
    println!("Minimum Δp: {:6.3}%", 100.0 * r.dp_min);
    println!(
        "RMS Δp    : {:6.3} ± {:5.3} %",
        100.0 * r.dp_rms,
        100.0 * r.dp_rms_unc
    );
    println!(
        "Same top p: {:6.3} ± {:5.3} %",
        100.0 * r.same_top,
        100.0 * r.same_top_unc
    );
}
