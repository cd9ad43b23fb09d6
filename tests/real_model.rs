//! The real models against goldens computed by transformers in float32 from the same weights: exact
//! prompt ids from the chat template, and greedy ids identical for the first 16 generated tokens from
//! the GGUFs, 8 from the bf16 safetensors (CI's lean check: bf16 weights decode slowest on lavapipe;
//! `GLINT_GOLDEN_STEPS=32` checks the goldens' 32 for every form, as the held-out set is checked).
//! - Qwen2.5-Coder-0.5B-Instruct (scripts/fetch-model.sh), tests/fixtures/golden_real_dev.json: all 6
//!   prompts from the GGUF file alone, and at least 5 of 6 from the bf16 safetensors form
//!   (transformers' own bf16 run flips dev_en_tips at step 7, an f32 margin of 0.007).
//! - SmolLM2-135M-Instruct, a Llama (scripts/fetch-smollm2.sh), tests/fixtures/smollm2/golden_dev.json:
//!   all 4 prompts from the Q4_1 GGUF alone (its Q/K rows permuted by llama.cpp's converter, its
//!   tokenizer rebuilt with the "smollm" pre-tokenizer).
//!
//! Figures for every prompt are printed (run with --nocapture).
//!
//! Without the model files these tests fail in CI (CI=true) and say how to fetch them elsewhere.

mod common;
use common::{fixture, gpu, models_dir};
use glint::chat::Message;
use glint::{Flow, LoadOptions, Model};
use serde_json::Value;
use std::path::PathBuf;

/// Generated tokens compared with each golden: `lean`, or `GLINT_GOLDEN_STEPS` (the goldens hold 32).
fn steps(lean: usize) -> usize {
    match std::env::var("GLINT_GOLDEN_STEPS") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("GLINT_GOLDEN_STEPS={v:?}: expected a number of tokens")),
        Err(_) => lean,
    }
}

struct Prompt {
    name: String,
    messages: Vec<Message>,
    prompt_ids: Vec<u32>,
    generated: Vec<u32>,
}

const QWEN_GGUF: &str = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf";
const QWEN_GOLDEN: &str = "golden_real_dev.json";
const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const SMOLLM2_GOLDEN: &str = "smollm2/golden_dev.json";

fn golden(file: &str) -> Vec<Prompt> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(fixture(file)).unwrap()).unwrap();
    let ids = |x: &Value| {
        x.as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect::<Vec<_>>()
    };
    v["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| Prompt {
            name: p["name"].as_str().unwrap().to_string(),
            messages: serde_json::from_value(p["messages"].clone()).unwrap(),
            prompt_ids: ids(&p["prompt_ids"]),
            generated: ids(&p["generated_ids"]),
        })
        .collect()
}

/// The model file or directory, or None (with a message) when it has not been fetched.
fn model_path(name: &str) -> Option<PathBuf> {
    let p = models_dir().join(name);
    if p.exists() {
        return Some(p);
    }
    let msg = format!(
        "{} is missing: run scripts/setup.sh --hf (or set GLINT_MODELS)",
        p.display()
    );
    if std::env::var("CI")
        .map(|v| v == "true" || v == "1")
        .unwrap_or(false)
    {
        panic!("CI=true: {msg}");
    }
    eprintln!("SKIPPED: {msg}");
    None
}

fn load(name: &str, opts: LoadOptions) -> Option<Model> {
    gpu()?;
    let p = model_path(name)?;
    let m = Model::load(&p, opts).unwrap();
    // The placeholder forward listed every pipeline, so all compiled alongside the weights.
    assert_eq!(m.late_pipelines(), 0, "{name}: pipelines compiled late");
    Some(m)
}

/// Generate for every prompt of a golden file; returns how many match the golden for the first
/// `steps` tokens, and how many prompts there are.
fn check_golden(model: &mut Model, file: &str, label: &str, steps: usize) -> (usize, usize) {
    let mut ok = 0;
    let mut total_tokens = 0;
    let mut decode_ms = 0.0;
    let prompts = golden(file);
    let n = prompts.len();
    for p in prompts {
        let ids = model.chat_prompt(&p.messages).unwrap();
        assert_eq!(
            ids, p.prompt_ids,
            "{label} {}: prompt ids from the chat template",
            p.name
        );
        model.reset();
        let want = &p.generated[..p.generated.len().min(steps)];
        let g = model
            .generate(&ids, want.len(), |_| Flow::Continue)
            .unwrap();
        total_tokens += g.tokens.len().saturating_sub(1);
        decode_ms += g.decode_ms;
        let same = g
            .tokens
            .iter()
            .zip(want)
            .take_while(|(a, b)| a == b)
            .count();
        if g.tokens == want {
            ok += 1;
            println!("{label} {:<26} identical for {} tokens", p.name, want.len());
        } else {
            println!(
                "{label} {:<26} first divergence at step {same} (got {:?}, golden {:?})",
                p.name,
                g.tokens.get(same),
                want.get(same)
            );
        }
    }
    println!(
        "{label}: {ok}/{n} prompts identical for the first {} tokens; decode {:.2} tok/s on {}",
        steps,
        total_tokens as f64 * 1e3 / decode_ms,
        model.gpu.describe()
    );
    (ok, n)
}

#[test]
fn gguf_reproduces_golden() {
    let Some(mut m) = load(QWEN_GGUF, LoadOptions::default()) else {
        return;
    };
    let (ok, n) = check_golden(&mut m, QWEN_GOLDEN, "gguf", steps(16));
    assert_eq!(ok, n, "gguf: only {ok}/{n} prompts match the golden");
}

#[test]
fn safetensors_bf16_reproduces_golden() {
    let Some(mut m) = load("qwen2.5-coder-0.5b-instruct-bf16", LoadOptions::default()) else {
        return;
    };
    let (ok, n) = check_golden(&mut m, QWEN_GOLDEN, "bf16", steps(8));
    assert!(ok + 1 >= n, "bf16: only {ok}/{n} prompts match the golden");
}

/// SmolLM2 (Llama architecture) from its Q4_1 GGUF alone.
#[test]
fn smollm2_gguf_reproduces_golden() {
    let Some(mut m) = load(SMOLLM2_GGUF, LoadOptions::default()) else {
        return;
    };
    let (ok, n) = check_golden(&mut m, SMOLLM2_GOLDEN, "smollm2", steps(16));
    assert_eq!(ok, n, "smollm2: only {ok}/{n} prompts match the golden");
}

/// The tokenizer rebuilt from a GGUF's metadata gives the golden ids on all 20 strings.
fn check_gguf_tokenizer(gguf: &str, golden: &str) {
    let Some(p) = model_path(gguf) else {
        return;
    };
    let tok = glint::engine::tokenizer_for(&p).unwrap();
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture(golden)).unwrap()).unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 20);
    for c in cases {
        let hex = c["text_utf8_hex"].as_str().unwrap();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let text = String::from_utf8(bytes).unwrap();
        let text = text.as_str();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tok.encode(text).unwrap(),
            want,
            "{gguf} tokenizer on {text:?}"
        );
    }
}

#[test]
fn gguf_tokenizer_matches_golden() {
    check_gguf_tokenizer(QWEN_GGUF, "tokenizer_golden_dev.json");
}

#[test]
fn smollm2_gguf_tokenizer_matches_golden() {
    check_gguf_tokenizer(SMOLLM2_GGUF, "smollm2/tokenizer_golden_dev.json");
}

/// `--quant q8_0` against the bf16 weights it was made from: top-1 agreement of the logits at every
/// position of a fixed text (teacher forcing). The floor is 95%.
#[test]
fn q8_0_top1_agreement_with_bf16() {
    let name = "qwen2.5-coder-0.5b-instruct-bf16";
    let text = "The borrow checker is the part of the Rust compiler that enforces ownership rules. \
        Every value has a single owner, and references must never outlive the data they point to. \
        When you pass a value to a function, ownership moves unless the type implements Copy. \
        Mutable references are exclusive: while one exists, no other reference to the same value may be used. \
        These rules let the compiler prove memory safety without a garbage collector, at the cost of a \
        learning curve for programmers coming from languages where aliasing is unrestricted.";
    let argmaxes = |m: &mut Model| -> Vec<u32> {
        let ids = m.encode(text).unwrap();
        m.reset();
        m.forward_all_logits(&ids)
            .unwrap()
            .iter()
            .map(|l| glint::reference::argmax(l, l.len()))
            .collect()
    };
    // Every position's logits from one call (prefill), not one call per token: at most what one
    // binding of [rows, vocab] f32 holds (220 rows for Qwen2's 151936 ids).
    let all_rows = || LoadOptions {
        max_outputs: Some(256),
        ..Default::default()
    };
    let Some(mut bf16) = load(name, all_rows()) else {
        return;
    };
    let reference = argmaxes(&mut bf16);
    drop(bf16);
    let opts = LoadOptions {
        quant: Some(glint::quant::QuantType::Q8_0),
        ..all_rows()
    };
    let mut q8 = load(name, opts).unwrap();
    let got = argmaxes(&mut q8);
    let agree = got.iter().zip(&reference).filter(|(a, b)| a == b).count();
    let frac = agree as f64 / reference.len() as f64;
    println!(
        "q8_0 vs bf16: top-1 agreement {agree}/{} = {:.1}%",
        reference.len(),
        100.0 * frac
    );
    assert!(
        frac >= 0.95,
        "q8_0 top-1 agreement {:.1}% < 95%",
        100.0 * frac
    );
}
