//! The engine pieces under `glint serve`: logprobs from a batched step against a CPU log-softmax of
//! transformers' logits (tiny Qwen2, two sequences in one call), and token bytes that add up to the
//! text.

mod common;
use common::{fixture, gpu};
use glint::engine::{Logprobs, SeqSample, SeqStep};
use glint::kernels::KvType;
use glint::sampler::SamplingParams;
use glint::{LoadOptions, Model};
use serde_json::Value;

/// log_softmax in f64 of a golden logits row, and its ids sorted by descending logprob.
fn reference(row: &[f64]) -> (Vec<f64>, Vec<u32>) {
    let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = max + row.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
    let lp: Vec<f64> = row.iter().map(|x| x - lse).collect();
    let mut ids: Vec<u32> = (0..row.len() as u32).collect();
    ids.sort_by(|&a, &b| lp[b as usize].partial_cmp(&lp[a as usize]).unwrap());
    (lp, ids)
}

#[test]
fn step_logprobs_match_a_cpu_log_softmax_of_transformers_logits() {
    if gpu().is_none() {
        return;
    }
    let opts = LoadOptions {
        slots: 2,
        batch: 64,
        // The goldens are float64: the f32 cache (f16's rounding is tested in tests/tiny_models.rs).
        kv_type: Some(KvType::F32),
        ..Default::default()
    };
    let mut m = Model::load(&fixture("tiny-qwen2"), opts).unwrap();
    let text = std::fs::read_to_string(fixture("tiny-qwen2/golden.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let case = |i: usize| {
        let c = &v["cases"][i];
        let ids: Vec<u32> = c["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let last: Vec<f64> = c["logits"]
            .as_array()
            .unwrap()
            .last()
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        (ids, last)
    };
    let (a, a_logits) = case(1);
    let (b, b_logits) = case(2);
    let greedy = SamplingParams::greedy();
    let sampled = SamplingParams {
        temperature: 0.8,
        seed: 3,
        ..SamplingParams::greedy()
    };
    let out = m
        .step(&[
            SeqStep {
                slot: 0,
                tokens: &a,
                sample: Some(SeqSample {
                    params: &greedy,
                    u: 0.0,
                    top_logprobs: Some(20),
                }),
            },
            SeqStep {
                slot: 1,
                tokens: &b,
                sample: Some(SeqSample {
                    params: &sampled,
                    u: 0.5,
                    top_logprobs: Some(0),
                }),
            },
        ])
        .unwrap();
    // Greedy row: the chosen id is the top one; every value within 1e-4 of the reference, the ids
    // in its order (no near-ties among the first 20 of this case: checked by the margin).
    let (lp, order) = reference(&a_logits);
    let s = out[0].as_ref().unwrap();
    let l = s.logprobs.as_ref().unwrap();
    assert_eq!(s.id, order[0]);
    assert!((l.chosen as f64 - lp[s.id as usize]).abs() < 1e-4);
    assert_eq!(l.top.len(), 20);
    for (k, &(id, x)) in l.top.iter().enumerate() {
        assert!(
            (x as f64 - lp[id as usize]).abs() < 1e-4,
            "rank {k}: {x} vs {}",
            lp[id as usize]
        );
        let margin = (lp[order[k] as usize] - lp[order[k + 1] as usize]).abs();
        if margin > 1e-3 {
            assert_eq!(id, order[k], "rank {k}");
        }
    }
    // Sampled row: the chosen id's logprob (of the raw logits, not the tempered ones), no top list.
    let (lp_b, _) = reference(&b_logits);
    let s = out[1].as_ref().unwrap();
    let l = s.logprobs.as_ref().unwrap();
    assert!(l.top.is_empty());
    assert!((l.chosen as f64 - lp_b[s.id as usize]).abs() < 1e-4);
    // Without the field, no logprobs and the same ids as step_batch gives.
    m.truncate_slot(0, 0);
    let again = m
        .step(&[SeqStep {
            slot: 0,
            tokens: &a,
            sample: Some(SeqSample {
                params: &greedy,
                u: 0.0,
                top_logprobs: None,
            }),
        }])
        .unwrap();
    assert_eq!(again[0].as_ref().unwrap().id, order[0]);
    assert!(again[0].as_ref().unwrap().logprobs.is_none());
}

#[test]
fn logprobs_from_logits_leave_out_invalid_ids_and_nan() {
    let row = [1.0, f32::NAN, 3.0, 2.0, 100.0];
    let l = Logprobs::from_logits(&row, 4, 2, 3);
    let lse = (1f64.exp() + 3f64.exp() + 2f64.exp()).ln();
    assert!((l.chosen as f64 - (3.0 - lse)).abs() < 1e-6);
    assert_eq!(l.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![2, 3, 0]);
    let total: f64 = l.top.iter().map(|t| (t.1 as f64).exp()).sum();
    assert!(
        (total - 1.0).abs() < 1e-6,
        "the valid ids hold all the mass"
    );
    // Ties: the lower id first.
    let l = Logprobs::from_logits(&[0.5, 2.0, 2.0, 1.0], 4, 0, 2);
    assert_eq!(l.top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 2]);
}

/// Each token's bytes, joined, are the text of the ids, multi-byte characters split across tokens
/// included (Qwen2.5's byte-level tokenizer); special tokens are their text.
#[test]
fn token_bytes_add_up_to_the_text() {
    let tok = glint::tokenizer::Tokenizer::from_file(&fixture(
        "qwen2.5-coder-0.5b-instruct/tokenizer.json",
    ))
    .unwrap();
    let text = "héllo wörld, 世界 🙂🦀 𓀀ꙮ𝔘 <|im_end|> fn main() {}\n\t";
    let ids = tok.encode(text).unwrap();
    let mut bytes = Vec::new();
    let mut partial = 0;
    for &id in &ids {
        let b = tok.token_bytes(id).unwrap();
        partial += std::str::from_utf8(&b).is_err() as usize;
        bytes.extend(b);
    }
    assert_eq!(String::from_utf8(bytes).unwrap(), text);
    assert!(
        partial > 0,
        "the text has tokens holding part of a character"
    );
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    assert_eq!(tok.token_bytes(im_end).unwrap(), b"<|im_end|>");
}
