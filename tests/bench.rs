//! `glint::bench` on the tiny model: the report has the tests, repetitions and fields it promises.
//! Speeds are never asserted (they depend on the machine and its load), only that times are positive.

mod common;
use common::{fixture, gpu};
use glint::bench::{mean_sd, run_bench, BenchSpec};
use glint::Model;

fn spec() -> BenchSpec {
    BenchSpec {
        n_prompt: vec![8],
        n_gen: vec![4],
        reps: 2,
        ..Default::default()
    }
}

fn load(spec: &BenchSpec) -> Option<Model> {
    gpu()?; // skip (locally) or fail (CI) when there is no adapter
    let path = fixture("tiny-qwen2");
    Some(Model::load(&path, spec.load_options(Default::default())).expect("load tiny-qwen2"))
}

#[test]
fn report_shape_pp_and_tg() {
    let spec = spec();
    let Some(mut model) = load(&spec) else { return };
    let r = run_bench(&mut model, &spec).expect("bench");

    assert_eq!(r.model_filename, "tiny-qwen2");
    assert_eq!(r.reps, 2);
    assert!(r.model_size > 0 && r.model_n_params > 0);
    assert!(r.gpu_allocated_bytes >= r.model_size + r.kv_bytes);
    assert_eq!(r.ctx_size, spec.ctx_needed());
    assert_eq!(r.ctx_size, 8.max(spec.tg_prompt + 4));
    assert!(r.decode_dispatches > 0);
    assert!(!r.device.is_empty() && r.backend.starts_with("wgpu-"));

    let names: Vec<&str> = r.tests.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["pp8", "tg4"]);
    for t in &r.tests {
        assert_eq!(t.samples_ns.len(), 2, "{}", t.name);
        assert_eq!(t.samples_ts.len(), 2, "{}", t.name);
        assert!(t.samples_ns.iter().all(|&ns| ns > 0), "{}", t.name);
        assert!(t.samples_ts.iter().all(|&ts| ts > 0.0 && ts.is_finite()));
        assert!(t.avg_ts > 0.0 && t.stddev_ts >= 0.0 && t.avg_ns > 0.0);
        assert_eq!((t.avg_ts, t.stddev_ts), mean_sd(&t.samples_ts));
    }
    let (pp, tg) = (&r.tests[0], &r.tests[1]);
    assert_eq!((pp.n_prompt, pp.n_gen, pp.n_tokens), (8, 0, 8));
    assert_eq!(pp.submits, 1);
    assert!(pp.avg_gb_s.is_none());
    assert_eq!((tg.n_prompt, tg.n_gen, tg.n_tokens), (spec.tg_prompt, 4, 4));
    assert_eq!(tg.submits, 4);
    assert_eq!(tg.submits_per_token, 1.0);
    assert_eq!(tg.dispatches, 4 * r.decode_dispatches);
    assert_eq!(tg.avg_ctx, spec.tg_prompt as f64 + 2.5);
    assert!(tg.bytes_per_token.unwrap() > 0 && tg.avg_gb_s.unwrap() > 0.0);

    // The JSON carries every repetition; the markdown has a row per test.
    let j = serde_json::to_value(&r).unwrap();
    assert_eq!(j["tests"][1]["samples_ns"].as_array().unwrap().len(), 2);
    assert!(j["machine"]["date_utc"].as_str().unwrap().ends_with('Z'));
    let md = r.to_markdown();
    assert!(md.starts_with("| model"), "{md}");
    assert_eq!(
        md.lines().filter(|l| l.contains("| tiny-qwen2 ")).count(),
        2,
        "{md}"
    );
}

/// llama-bench's depth: each test again with 100 positions already in the cache; the context holds
/// the deepest depth plus the longest test; the step's average context counts the depth.
#[test]
fn depths_repeat_every_test_over_a_filled_cache() {
    let spec = BenchSpec {
        depths: vec![0, 100],
        reps: 1,
        ..spec()
    };
    let Some(mut model) = load(&spec) else { return };
    let r = run_bench(&mut model, &spec).expect("bench");
    assert_eq!(r.ctx_size, 100 + 8.max(spec.tg_prompt + 4));
    let names: Vec<&str> = r.tests.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["pp8", "tg4", "pp8 @ d100", "tg4 @ d100"]);
    let depths: Vec<usize> = r.tests.iter().map(|t| t.n_depth).collect();
    assert_eq!(depths, [0, 0, 100, 100]);
    assert_eq!(r.tests[3].avg_ctx, (100 + spec.tg_prompt) as f64 + 2.5);
    assert_eq!(r.tests[2].avg_ctx, 100.0 + 4.5);
    // A later generation from an empty cache is not confused by the filled positions.
    model.fill_cache_for_bench(100).unwrap();
    assert_eq!(model.position(), 100);
    model.reset();
    assert_eq!(model.position(), 0);
    assert!(r.to_markdown().contains("synthetic fill"));
}

#[test]
fn skips_zero_lengths_and_rejects_bad_specs() {
    let mut spec = spec();
    spec.n_prompt = vec![0, 4];
    spec.n_gen = vec![0];
    spec.reps = 1;
    let Some(mut model) = load(&spec) else { return };
    let r = run_bench(&mut model, &spec).expect("bench");
    let names: Vec<&str> = r.tests.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["pp4"]);
    assert_eq!(r.tests[0].stddev_ts, 0.0, "one repetition has no spread");

    let too_long = BenchSpec {
        n_prompt: vec![64],
        ..spec.clone()
    };
    let e = run_bench(&mut model, &too_long).unwrap_err().to_string();
    assert!(e.contains("raise -c"), "{e}");
    let no_reps = BenchSpec {
        reps: 0,
        ..spec.clone()
    };
    assert!(run_bench(&mut model, &no_reps).is_err());
}

#[test]
fn utc_date_format() {
    let d = glint::bench::utc_now();
    assert_eq!(d.len(), 20, "{d}");
    assert_eq!(&d[4..5], "-");
    assert_eq!(&d[10..11], "T");
    assert!(d[..4].parse::<u32>().unwrap() >= 2024);
}

/// `parallel`: a `tg{n} xS` test decodes S slots together (one token of each per step): it counts
/// every slot's tokens, submits once per step, leaves each slot with its prompt and n tokens, and a
/// step's weight traffic is shared by the S tokens.
#[test]
fn parallel_tg_decodes_every_slot_per_step() {
    let wide = BenchSpec {
        n_prompt: vec![0],
        parallel: vec![1, 3],
        reps: 1,
        ..spec()
    };
    let Some(mut model) = load(&wide) else { return };
    assert_eq!(model.n_slots(), 3);
    let r = run_bench(&mut model, &wide).expect("bench");
    let names: Vec<&str> = r.tests.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["tg4", "tg4 x3"]);
    let (one, three) = (&r.tests[0], &r.tests[1]);
    assert_eq!((three.n_gen, three.n_tokens, three.submits), (4, 12, 4));
    assert_eq!(three.submits_per_token, 4.0 / 12.0);
    assert_eq!(three.dispatches, one.dispatches);
    assert!(three.bytes_per_token.unwrap() < one.bytes_per_token.unwrap());
    for slot in 0..3 {
        assert_eq!(
            model.slot_ids(slot).len(),
            wide.tg_prompt + 4,
            "slot {slot}"
        );
    }
    // Different prompts per slot.
    assert_ne!(model.slot_ids(1), model.slot_ids(2));

    // A model with fewer slots than asked for is refused with what it has.
    let mut one_slot = load(&spec()).expect("loaded above");
    let e = run_bench(&mut one_slot, &wide).unwrap_err().to_string();
    assert!(
        e.contains("--parallel 3 needs 3 sequence slots") && e.contains("1 slot(s)"),
        "{e}"
    );
}

/// `--profile`: every dispatch of a step timed on its own, named by kernel and weight; the profiled
/// forward computes what the ordinary one does (same logits, bit for bit), and the report sums each
/// name over the layers.
#[test]
fn profile_times_every_dispatch_of_a_step() {
    let spec = BenchSpec {
        n_prompt: vec![0],
        parallel: vec![1, 2],
        reps: 1,
        profile: true,
        ..spec()
    };
    let Some(mut model) = load(&spec) else { return };
    let greedy = glint::sampler::SamplingParams::greedy();
    let sample = glint::engine::SeqSample {
        params: &greedy,
        u: 0.0,
        top_logprobs: None,
    };
    let step = [glint::engine::SeqStep {
        slot: 0,
        tokens: &[5, 17, 3],
        sample: Some(sample),
    }];
    if !model.gpu.caps.timestamps {
        let e = model.profile_call(&step).unwrap_err().to_string();
        assert!(e.contains("TIMESTAMP_QUERY"), "{e}");
        return;
    }
    let profile = model.profile_call(&step).expect("profile");
    assert_eq!(model.slot_ids(0), [5, 17, 3]);
    let profiled = model.logits().expect("logits");
    assert_eq!(profile.len(), model.call_dispatches(3, 1, 3));
    assert_eq!(profile[0].0, "embed");
    assert!(profile.iter().all(|(_, ns)| ns.is_finite() && *ns >= 0.0));
    assert!(profile.iter().map(|p| p.1).sum::<f64>() > 0.0);
    // A linear layer is named by kernel, weight (layer number as *), format and shape.
    let down = profile
        .iter()
        .find(|(n, _)| n.contains("layers.*.mlp.down_proj"))
        .map(|p| p.0.clone());
    let down = down.unwrap_or_else(|| panic!("no down_proj in {profile:?}"));
    assert!(down.starts_with("matvec"), "{down}");
    assert!(
        down.ends_with(&format!("x{}", model.cfg.intermediate)),
        "{down}"
    );
    model.truncate_slot(0, 0);
    model.step_batch(&step).expect("step");
    assert_eq!(model.logits().expect("logits"), profiled);

    let r = run_bench(&mut model, &spec).expect("bench");
    assert_eq!(r.profile.len(), 2);
    for p in &r.profile {
        let n: usize = p.rows.iter().map(|r| r.dispatches).sum();
        let at = spec.tg_prompt + 1;
        assert_eq!(n, model.call_dispatches(p.seqs, p.seqs, at), "x{}", p.seqs);
        assert_eq!(p.gpu_ns, p.rows.iter().map(|r| r.ns).sum::<f64>());
        assert!(p.step_ns > 0.0);
    }
    let md = r.to_markdown();
    assert!(
        md.contains("| dispatch | n | ms x1 | % x1 | ms x2 | % x2 |"),
        "{md}"
    );
    assert!(md.contains("| sum of the dispatches |"), "{md}");
}
