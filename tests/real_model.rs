//! The real model (Qwen2.5-Coder-0.5B-Instruct, fetched by scripts/fetch-model.sh) against
//! tests/fixtures/golden_real_dev.json, computed by transformers in float32 from the same weights:
//! exact prompt ids from the chat template, and greedy ids identical for the first 32 generated
//! tokens on at least 5 of the 6 prompts, from the GGUF file alone and from the bf16 safetensors form.
//! transformers' own bf16 run flips dev_en_tips at step 7 (an f32 margin of 0.007), so one prompt may
//! diverge for bf16 / quantized weights. Figures for all 6 are printed (run with --nocapture).
//!
//! Without the model files these tests fail in CI (CI=true) and say how to fetch them elsewhere.

mod common;
use common::{fixture, gpu, models_dir};
use glint::chat::Message;
use glint::{Flow, LoadOptions, Model};
use serde_json::Value;
use std::path::PathBuf;

const STEPS: usize = 32;

struct Prompt {
    name: String,
    messages: Vec<Message>,
    prompt_ids: Vec<u32>,
    generated: Vec<u32>,
}

fn golden() -> Vec<Prompt> {
    let v: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("golden_real_dev.json")).unwrap())
            .unwrap();
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
        "{} is missing: run scripts/fetch-model.sh --hf (or set GLINT_MODELS)",
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
    Some(Model::load(&p, opts).unwrap())
}

/// Generate for every golden prompt; returns how many match the golden for the first 32 tokens.
fn check_golden(model: &mut Model, label: &str) -> usize {
    let mut ok = 0;
    let mut total_tokens = 0;
    let mut decode_ms = 0.0;
    for p in golden() {
        let ids = model.chat_prompt(&p.messages).unwrap();
        assert_eq!(
            ids, p.prompt_ids,
            "{label} {}: prompt ids from the chat template",
            p.name
        );
        model.reset();
        let want = &p.generated[..p.generated.len().min(STEPS)];
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
        "{label}: {ok}/6 prompts identical for the first {STEPS} tokens; decode {:.2} tok/s on {}",
        total_tokens as f64 * 1e3 / decode_ms,
        model.gpu.describe()
    );
    ok
}

#[test]
fn gguf_reproduces_golden() {
    let Some(mut m) = load(
        "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
        LoadOptions::default(),
    ) else {
        return;
    };
    let ok = check_golden(&mut m, "gguf");
    assert!(ok >= 5, "gguf: only {ok}/6 prompts match the golden");
}

#[test]
fn safetensors_bf16_reproduces_golden() {
    let Some(mut m) = load("qwen2.5-coder-0.5b-instruct-bf16", LoadOptions::default()) else {
        return;
    };
    let ok = check_golden(&mut m, "bf16");
    assert!(ok >= 5, "bf16: only {ok}/6 prompts match the golden");
}

/// The tokenizer rebuilt from GGUF metadata gives the golden ids on all 20 strings.
#[test]
fn gguf_tokenizer_matches_golden() {
    let Some(p) = model_path("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf") else {
        return;
    };
    let tok = glint::engine::tokenizer_for(&p).unwrap();
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tokenizer_golden_dev.json")).unwrap(),
    )
    .unwrap();
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 20);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(
            tok.encode(text).unwrap(),
            want,
            "GGUF tokenizer on {text:?}"
        );
    }
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
    let Some(mut bf16) = load(name, LoadOptions::default()) else {
        return;
    };
    let reference = argmaxes(&mut bf16);
    drop(bf16);
    let opts = LoadOptions {
        quant: Some(glint::quant::QuantType::Q8_0),
        ..Default::default()
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
