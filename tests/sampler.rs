//! The GPU sampler (shaders/sample.wgsl) against the CPU reference (glint::sampler::reference_*), at the
//! real Qwen2 vocabulary: 151936 logits of which 151646 are valid ids. The kernel's debugging words (kept
//! count, kept mass) are compared with the reference's kept set; every drawn id must be in that set.
//! Filter boundaries are placed with a margin (a cut between two distinct values, or between tie
//! groups: `top_p_with_margin`, `min_p_with_margin`), so f32 rounding on the GPU cannot move them.
//! The kernel has two paths, whole-vocabulary passes and a short list of <= 256 candidates; the tests
//! assert which one ran (output word 4) so that both are covered.
//!
//! Timing: `cargo test --release --test sampler -- --ignored --nocapture`.

mod common;
use common::{gpu, Rng};
use glint::gpu::Gpu;
use glint::sampler::{
    penalty_window, reference_distribution, reference_sample, reference_scores, GpuSampler,
    SampleOutput, SamplingParams, SeededRng, OUTPUT_WORDS,
};
use std::collections::{HashMap, HashSet};

const VOCAB: usize = 151936;
const N_VALID: usize = 151646;

struct Ctx {
    gpu: Gpu,
    logits: wgpu::Buffer,
    sampler: GpuSampler,
    readback: wgpu::Buffer,
}

fn ctx() -> Option<Ctx> {
    let gpu = gpu()?;
    let logits = gpu.storage("logits", VOCAB as u64 * 4).unwrap();
    // SAMPLE_WGSL_SUITE=path runs the suite against a variant of shaders/sample.wgsl (kernel development).
    let sampler = match std::env::var("SAMPLE_WGSL_SUITE") {
        Ok(path) => {
            let src = std::fs::read_to_string(path).unwrap();
            GpuSampler::with_source(&gpu, &logits, N_VALID, 4096, &src)
        }
        Err(_) => GpuSampler::new(&gpu, &logits, N_VALID, 4096),
    }
    .expect("sampler");
    let readback = gpu.readback("sample.readback", OUTPUT_WORDS as u64 * 4);
    Some(Ctx {
        gpu,
        logits,
        sampler,
        readback,
    })
}

impl Ctx {
    fn set_logits(&self, l: &[f32]) {
        assert_eq!(l.len(), VOCAB);
        self.gpu
            .queue
            .write_buffer(&self.logits, 0, bytemuck::cast_slice(l));
    }

    /// One sampling dispatch: prepare + record + submit + read back the output words.
    fn draw(&self, p: &SamplingParams, window: &[u32], u: f32) -> SampleOutput {
        self.draw_with(&self.sampler, p, window, u)
    }

    fn draw_with(
        &self,
        s: &GpuSampler,
        p: &SamplingParams,
        window: &[u32],
        u: f32,
    ) -> SampleOutput {
        s.prepare(&self.gpu.queue, p, window, u).expect("prepare");
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        s.record(&mut enc);
        let n = OUTPUT_WORDS as u64 * 4;
        enc.copy_buffer_to_buffer(s.output(), 0, &self.readback, 0, n);
        self.gpu.queue.submit([enc.finish()]);
        SampleOutput::from_bytes(&self.gpu.read_mapped(&self.readback, n).unwrap())
    }
}

fn params(temperature: f32) -> SamplingParams {
    SamplingParams {
        temperature,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repetition_penalty: 1.0,
        repeat_last_n: 64,
        seed: 1,
    }
}

/// What the kernel reports, from the reference: kept count and sum of exp(score - max) over the kept set.
fn reference_kept(logits: &[f32], p: &SamplingParams, window: &[u32]) -> (usize, f64) {
    let s = reference_scores(logits, N_VALID, p, window);
    let m = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let d = reference_distribution(logits, N_VALID, p, window);
    let mass = d
        .iter()
        .map(|&(i, _)| (s[i as usize] as f64 - m).exp())
        .sum();
    (d.len(), mass)
}

/// The GPU keeps exactly the reference's set: same count, same mass (f32 sums: 1e-4 relative), and
/// `draws` draws with fresh u all land in it. Returns the first draw's output.
fn check_kept_set(
    c: &Ctx,
    logits: &[f32],
    p: &SamplingParams,
    window: &[u32],
    draws: usize,
    rng: &mut SeededRng,
    what: &str,
) -> SampleOutput {
    let (count, mass) = reference_kept(logits, p, window);
    let set: HashSet<u32> = reference_distribution(logits, N_VALID, p, window)
        .iter()
        .map(|&(i, _)| i)
        .collect();
    let first = c.draw(p, window, rng.next_uniform());
    assert_eq!(first.kept as usize, count, "{what}: kept count");
    let rel = (first.mass as f64 - mass).abs() / mass;
    assert!(rel < 1e-4, "{what}: kept mass {} vs {mass}", first.mass);
    for d in 0..draws {
        let o = if d == 0 {
            first
        } else {
            c.draw(p, window, rng.next_uniform())
        };
        assert!(
            set.contains(&o.id),
            "{what}: drew {} outside the kept set",
            o.id
        );
    }
    first
}

/// Over `n` draws with fresh u (seeded), each id's frequency f matches the reference probability p:
/// |f - p| <= 4 sqrt(p (1 - p) / n) + 1e-3 (4 standard deviations), and no id outside the support.
fn check_frequencies(c: &Ctx, logits: &[f32], p: &SamplingParams, window: &[u32], n: usize) {
    let want: HashMap<u32, f64> = reference_distribution(logits, N_VALID, p, window)
        .into_iter()
        .collect();
    let mut counts: HashMap<u32, usize> = HashMap::new();
    let mut u = SeededRng::new(p.seed);
    for _ in 0..n {
        let id = c.draw(p, window, u.next_uniform()).id;
        assert!(want.contains_key(&id), "drew {id}, outside the support");
        *counts.entry(id).or_default() += 1;
    }
    for (&id, &q) in &want {
        let f = *counts.get(&id).unwrap_or(&0) as f64 / n as f64;
        let bound = 4.0 * (q * (1.0 - q) / n as f64).sqrt() + 1e-3;
        assert!(
            (f - q).abs() <= bound,
            "id {id}: frequency {f} vs p {q} (bound {bound})"
        );
    }
}

/// Background logits uniform in [-scale, scale), a huge value past n_valid (never chosen).
fn background(rng: &mut Rng, scale: f32) -> Vec<f32> {
    let mut l = rng.vec(VOCAB, scale);
    l[N_VALID + 7] = 1e4;
    l[VOCAB - 1] = 1e4;
    l
}

// ---------------------------------------------------------------------------------------------- CPU

#[test]
fn rng_is_deterministic_and_uniform_in_unit_interval() {
    let a: Vec<f32> = {
        let mut r = SeededRng::new(42);
        (0..1000).map(|_| r.next_uniform()).collect()
    };
    let mut r = SeededRng::new(42);
    let b: Vec<f32> = (0..1000).map(|_| r.next_uniform()).collect();
    assert_eq!(a, b);
    let mut r = SeededRng::new(43);
    assert_ne!(
        a[..8],
        (0..8).map(|_| r.next_uniform()).collect::<Vec<_>>()[..]
    );
    assert!(a.iter().all(|&u| (0.0..1.0).contains(&u)));
    let mean = a.iter().map(|&u| u as f64).sum::<f64>() / a.len() as f64;
    assert!((mean - 0.5).abs() < 0.03, "mean {mean}");
    // splitmix64's published first output for seed 0.
    assert_eq!(SeededRng::new(0).next_u64(), 0xE220_A839_7B1D_CDAF);
}

#[test]
fn penalty_window_takes_distinct_ids_of_the_last_n() {
    assert_eq!(penalty_window(&[0, 1, 1], 0), vec![0, 1]);
    assert_eq!(penalty_window(&[0, 1, 1], 2), vec![1]);
    assert_eq!(penalty_window(&[5, 3, 5, 9, 3], 4), vec![3, 5, 9]);
    assert_eq!(penalty_window(&[5, 3], 64), vec![3, 5]);
    assert!(penalty_window(&[], 0).is_empty());
}

/// transformers' TopPLogitsWarper, transcribed: sort ascending, cumsum of softmax, remove
/// cumsum <= 1 - top_p, keep the last (largest). Returns the kept ids, ascending.
fn transformers_top_p(scores: &[f32], top_p: f64) -> Vec<u32> {
    let m = scores.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let e: Vec<f64> = scores.iter().map(|&s| (s as f64 - m).exp()).collect();
    let z: f64 = e.iter().sum();
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let mut cum = 0.0;
    let mut kept = Vec::new();
    for (rank, &i) in order.iter().enumerate() {
        cum += e[i] / z;
        if cum > 1.0 - top_p || rank == order.len() - 1 {
            kept.push(i as u32);
        }
    }
    kept.sort_unstable();
    kept
}

#[test]
fn reference_top_p_is_transformers_rule_on_distinct_scores() {
    let mut rng = Rng::new(11);
    for trial in 0..200 {
        let n = 50 + trial * 7;
        let scale = [0.5f32, 2.0, 8.0][trial % 3];
        let logits = rng.vec(n, scale);
        let top_p = 0.05 + 0.9 * (rng.f32() as f64 * 0.5 + 0.5);
        let p = SamplingParams {
            top_p: top_p as f32,
            ..params(1.0)
        };
        let ours: Vec<u32> = reference_distribution(&logits, n, &p, &[])
            .iter()
            .map(|&(i, _)| i)
            .collect();
        assert_eq!(
            ours,
            transformers_top_p(&logits, p.top_p as f64),
            "trial {trial}"
        );
    }
}

#[test]
fn reference_top_k_keeps_ties_and_min_p_is_relative_to_max() {
    let logits = [1.0f32, 3.0, 2.0, 2.0, 2.0, 0.5, 3.0, -1.0];
    let p = SamplingParams {
        top_k: 3,
        ..params(1.0)
    };
    let ids: Vec<u32> = reference_distribution(&logits, 8, &p, &[])
        .iter()
        .map(|&(i, _)| i)
        .collect();
    // 3rd largest is 2.0: the three 2.0 ties are all kept.
    assert_eq!(ids, vec![1, 2, 3, 4, 6]);
    // min_p 0.3: keep exp(s - 3) >= 0.3, i.e. s >= 3 + ln 0.3 = 1.796.
    let p = SamplingParams {
        min_p: 0.3,
        ..params(1.0)
    };
    let ids: Vec<u32> = reference_distribution(&logits, 8, &p, &[])
        .iter()
        .map(|&(i, _)| i)
        .collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 6]);
    // Greedy: lowest id among the max ties; masked ids never.
    let g = SamplingParams::greedy();
    assert_eq!(reference_distribution(&logits, 8, &g, &[]), vec![(1, 1.0)]);
    assert_eq!(reference_sample(&logits, 6, &g, &[], 0.3), 1);
}

/// The hand-worked example: logits [2.0, -1.0, 0.5, 0.0, ...], penalty 1.5, context [0, 1, 1] ->
/// scores [2 / 1.5, -1 * 1.5, 0.5, ...] = [1.3333, -1.5, 0.5, ...]; id 1 is penalised once.
fn worked_example_logits(n: usize) -> Vec<f32> {
    let mut l = vec![-30.0f32; n];
    l[0] = 2.0;
    l[1] = -1.0;
    l[2] = 0.5;
    l
}

fn worked_example_probs() -> [f64; 3] {
    let s = [2.0 / 1.5, -1.5, 0.5f64];
    let z: f64 = s.iter().map(|v| v.exp()).sum();
    [s[0].exp() / z, s[1].exp() / z, s[2].exp() / z]
}

#[test]
fn reference_repetition_penalty_matches_worked_example() {
    let logits = worked_example_logits(8);
    let window = penalty_window(&[0, 1, 1], 0);
    let p = SamplingParams {
        repetition_penalty: 1.5,
        top_k: 3,
        ..params(1.0)
    };
    let s = reference_scores(&logits, 8, &p, &window);
    assert!((s[0] - 1.333_333_3).abs() < 1e-6, "{s:?}");
    assert_eq!(s[1], -1.5);
    assert_eq!(s[2], 0.5);
    let d = reference_distribution(&logits, 8, &p, &window);
    let want = worked_example_probs();
    assert_eq!(d.len(), 3);
    for (k, &(id, q)) in d.iter().enumerate() {
        assert_eq!(id, k as u32);
        assert!((q - want[k]).abs() < 1e-7, "p[{id}] {q} vs {}", want[k]);
    }
    // Duplicates in the window do not penalise twice.
    assert_eq!(reference_scores(&logits, 8, &p, &[0, 1, 1, 1]), s);
}

// ---------------------------------------------------------------------------------------------- GPU

#[test]
fn gpu_top_k_stays_in_the_k_best_with_boundary_ties() {
    let Some(c) = ctx() else { return };
    let mut rng = Rng::new(1);
    let mut u = SeededRng::new(1);
    let mut l = background(&mut rng, 2.0);
    // 3 distinct leaders, then 4 ties at 5.0 (ranks 4..7), spread over the vocabulary.
    for (id, v) in [(100, 6.0), (70_000, 5.8), (151_000, 5.5)] {
        l[id] = v;
    }
    for id in [5, 40_000, 90_000, 151_645] {
        l[id] = 5.0;
    }
    c.set_logits(&l);
    for (k, want) in [
        (1, 1),
        (3, 3),
        (4, 7),
        (5, 7),
        (7, 7),
        (8, 8),
        (50, 50),
        (300, 300),
    ] {
        let p = SamplingParams {
            top_k: k,
            ..params(1.0)
        };
        let o = check_kept_set(&c, &l, &p, &[], 40, &mut u, &format!("top_k {k}"));
        assert_eq!(o.kept, want, "top_k {k}: ties at the boundary are all kept");
        // k > 256 cannot use the short list.
        assert_eq!(o.short_list > 0, k <= 256, "top_k {k}: path");
    }
    // Every id of the tie group is drawn (u spread over [0, 1)).
    let p = SamplingParams {
        top_k: 5,
        ..params(1.0)
    };
    let mut seen = HashSet::new();
    for i in 0..64 {
        seen.insert(c.draw(&p, &[], (i as f32 + 0.5) / 64.0).id);
    }
    let want: HashSet<u32> = [100, 70_000, 151_000, 5, 40_000, 90_000, 151_645].into();
    assert_eq!(seen, want);

    // A tie group of 400 at the boundary: kept whole, through whole-vocabulary passes.
    for k in 0..400 {
        l[k * 373] = 4.0;
    }
    c.set_logits(&l);
    let p = SamplingParams {
        top_k: 10,
        ..params(1.0)
    };
    let o = check_kept_set(&c, &l, &p, &[], 40, &mut u, "top_k 10, 400 ties");
    assert_eq!((o.kept, o.short_list), (407, 0));
}

/// A top_p halfway between two consecutive achievable "mass above" values of the reference, near `aim`.
fn top_p_with_margin(logits: &[f32], p: &SamplingParams, aim: f64) -> f32 {
    let q = SamplingParams {
        top_p: 1.0,
        min_p: 0.0,
        ..p.clone()
    };
    let mut d = reference_distribution(logits, N_VALID, &q, &[]);
    let s = reference_scores(logits, N_VALID, &q, &[]);
    d.sort_by(|a, b| s[b.0 as usize].total_cmp(&s[a.0 as usize]));
    // Cumulative mass at each tie-group end, descending.
    let mut cuts = Vec::new();
    let mut cum = 0.0;
    for (k, &(id, pr)) in d.iter().enumerate() {
        cum += pr;
        if k + 1 == d.len() || s[d[k + 1].0 as usize] != s[id as usize] {
            cuts.push(cum);
        }
    }
    // Tie group k holds the aim: top_p between the mass above it and the mass through it keeps
    // groups 0..=k, with half of group k's mass as the margin.
    let k = cuts
        .iter()
        .position(|&c| c >= aim)
        .unwrap_or(cuts.len() - 1);
    let (a, b) = (if k == 0 { 0.0 } else { cuts[k - 1] }, cuts[k]);
    assert!(
        b - a > 1e-3,
        "tie groups too light for a safe margin: {a} {b}"
    );
    ((a + b) / 2.0) as f32
}

/// A min_p halfway (geometrically) between two consecutive distinct exp(s - max) values near `aim`.
fn min_p_with_margin(logits: &[f32], p: &SamplingParams, aim: f64) -> f32 {
    let s = reference_scores(logits, N_VALID, p, &[]);
    let m = s.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let mut e: Vec<f64> = s.iter().map(|&v| (v as f64 - m).exp()).collect();
    e.sort_by(|a, b| b.total_cmp(a));
    e.dedup();
    let k = e
        .iter()
        .position(|&x| x < aim)
        .unwrap_or(e.len() - 1)
        .max(1);
    let (hi, lo) = (e[k - 1], e[k]);
    assert!(hi / lo > 1.001, "min_p margin too thin: {hi} {lo}");
    (hi * lo).sqrt() as f32
}

#[test]
fn gpu_top_p_and_min_p_keep_the_reference_set() {
    let Some(c) = ctx() else { return };
    let mut rng = Rng::new(2);
    let mut u = SeededRng::new(2);
    // Peaked: 12 leaders well above a background in [-3, 3).
    let mut peaked = background(&mut rng, 3.0);
    for (k, id) in [
        9, 777, 5_000, 20_001, 33_333, 60_000, 75_432, 99_999, 120_000, 130_001, 140_000, 151_640,
    ]
    .iter()
    .enumerate()
    {
        peaked[*id] = 14.0 - 0.37 * k as f32;
    }
    // Flat: 48 levels in [-1, 1), about 3160 tied ids each (tie groups are kept or dropped whole).
    let flat: Vec<f32> = {
        let mut l = background(&mut rng, 1.0);
        for v in l.iter_mut().take(N_VALID) {
            *v = (*v * 24.0).floor() / 24.0;
        }
        l
    };
    // (name, logits, temperatures, top_p aims, min_p aims, top_k for the combination, short list?)
    let cases = [
        (
            "peaked",
            &peaked,
            [1.0f32, 0.7],
            [0.3, 0.6, 0.8],
            [0.5, 0.05, 1e-3],
            40,
            true,
        ),
        (
            "flat",
            &flat,
            [1.0, 0.5],
            [0.3, 0.8, 0.95],
            [0.5, 0.3, 0.15],
            5000,
            false,
        ),
    ];
    for (name, l, temps, p_aims, min_aims, top_k, listed) in cases {
        c.set_logits(l);
        for t in temps {
            for aim in p_aims {
                let mut p = params(t);
                p.top_p = top_p_with_margin(l, &p, aim);
                let what = format!("{name} T {t} top_p {}", p.top_p);
                let o = check_kept_set(&c, l, &p, &[], 20, &mut u, &what);
                eprintln!("{what}: kept {}, short list {}", o.kept, o.short_list);
                // Peaked: the top-p search switches to the short list; flat: it cannot.
                assert_eq!(o.short_list > 0, listed, "{what}: path");
            }
            for aim in min_aims {
                let mut p = params(t);
                p.min_p = min_p_with_margin(l, &p, aim);
                let what = format!("{name} T {t} min_p {}", p.min_p);
                let o = check_kept_set(&c, l, &p, &[], 20, &mut u, &what);
                eprintln!("{what}: kept {}", o.kept);
                assert_eq!(o.short_list, 0, "{what}: no search, no list");
            }
        }
        // All three together (generation_config.json has top_k 20, top_p 0.8), plus min-p.
        let mut p = params(0.7);
        p.top_k = top_k;
        p.top_p = top_p_with_margin(l, &p, 0.4);
        p.min_p = min_p_with_margin(l, &p, 0.02);
        let what = format!("{name} top_k {top_k} top_p {} min_p {}", p.top_p, p.min_p);
        let o = check_kept_set(&c, l, &p, &[], 20, &mut u, &what);
        eprintln!("{what}: kept {}, short list {}", o.kept, o.short_list);
        assert_eq!(o.short_list > 0, listed, "{what}: path");
    }
    // min_p 1 keeps exactly the ties at the max (prob >= min_p * max prob, not >).
    let mut l = background(&mut rng, 3.0);
    for id in [11, 77_777, 151_000] {
        l[id] = 4.0;
    }
    c.set_logits(&l);
    let p = SamplingParams {
        min_p: 1.0,
        ..params(0.9)
    };
    let o = check_kept_set(&c, &l, &p, &[], 30, &mut u, "min_p 1");
    assert_eq!(o.kept, 3);

    // Continuous (untied) flat logits: boundaries are as thin as one token's mass (~1e-5), below the
    // f32 error of a sum over 151646 ids, so the count may differ by a few ids there; draws stay inside.
    let l = background(&mut rng, 1.0);
    c.set_logits(&l);
    for top_p in [0.5f32, 0.9] {
        let p = SamplingParams {
            top_p,
            ..params(1.0)
        };
        let (count, _) = reference_kept(&l, &p, &[]);
        let o = c.draw(&p, &[], 0.5);
        let diff = (o.kept as i64 - count as i64).abs();
        eprintln!(
            "continuous flat top_p {top_p}: GPU kept {} reference {count}",
            o.kept
        );
        assert!(diff <= 8, "continuous top_p {top_p}: {} vs {count}", o.kept);
    }
}

#[test]
fn gpu_repetition_penalty_matches_worked_example() {
    let Some(c) = ctx() else { return };
    let mut l = worked_example_logits(VOCAB);
    l[2] = 1.5; // greedy: 2.0 beats 1.5 unpenalised; 2 / 1.5 = 1.333 loses to it penalised
    c.set_logits(&l);
    let window = penalty_window(&[0, 1, 1], 0);
    let g = SamplingParams::greedy();
    assert_eq!(c.draw(&g, &window, 0.0).id, 0);
    let gp = SamplingParams {
        repetition_penalty: 1.5,
        ..g.clone()
    };
    assert_eq!(c.draw(&gp, &window, 0.0).id, 2);
    assert_eq!(reference_sample(&l, N_VALID, &gp, &window, 0.0), 2);
    // Duplicated window ids are penalised once.
    assert_eq!(c.draw(&gp, &[1, 0, 1, 0, 0], 0.0).id, 2);

    // Sampling over the worked example: kept mass and drawn frequencies.
    let l = worked_example_logits(VOCAB);
    c.set_logits(&l);
    let p = SamplingParams {
        repetition_penalty: 1.5,
        top_k: 3,
        ..params(1.0)
    };
    let want = worked_example_probs();
    let o = c.draw(&p, &window, 0.5);
    assert_eq!(o.kept, 3);
    let mass_want = 1.0 + (-1.5f64 - 4.0 / 3.0).exp() + (0.5f64 - 4.0 / 3.0).exp();
    assert!(
        (o.mass as f64 - mass_want).abs() < 1e-5,
        "mass {} vs {mass_want}",
        o.mass
    );
    let n = 1000;
    let mut counts = [0usize; 3];
    let mut rng = SeededRng::new(3);
    for _ in 0..n {
        let id = c.draw(&p, &window, rng.next_uniform()).id as usize;
        assert!(id < 3, "drew {id}");
        counts[id] += 1;
    }
    for k in 0..3 {
        let f = counts[k] as f64 / n as f64;
        let bound = 4.0 * (want[k] * (1.0 - want[k]) / n as f64).sqrt() + 1e-3;
        assert!((f - want[k]).abs() <= bound, "id {k}: {f} vs {}", want[k]);
    }
}

/// 8 leaders spread over the vocabulary (and so over the kernel's per-invocation chunks).
const LEADERS: [usize; 8] = [3, 1_000, 17_171, 50_000, 88_888, 100_001, 140_000, 151_645];

#[test]
fn gpu_frequencies_match_reference_softmax_short_list() {
    let Some(c) = ctx() else { return };
    let mut rng = Rng::new(4);
    let mut l = background(&mut rng, 2.0);
    for (k, &id) in LEADERS.iter().enumerate() {
        l[id] = 5.0 - 0.3 * k as f32;
    }
    c.set_logits(&l);
    let p = SamplingParams {
        top_k: 8,
        ..params(1.0)
    };
    assert_eq!(reference_distribution(&l, N_VALID, &p, &[]).len(), 8);
    assert!(c.draw(&p, &[], 0.5).short_list > 0);
    check_frequencies(&c, &l, &p, &[], 2000);
}

#[test]
fn gpu_frequencies_match_reference_softmax_full_vocabulary() {
    let Some(c) = ctx() else { return };
    let mut rng = Rng::new(9);
    // Background in [-20, -12): min_p 1e-4 removes it (exp(-12 - 3) < 1e-6), no search runs.
    let mut l: Vec<f32> = rng.vec(VOCAB, 4.0).iter().map(|v| v - 16.0).collect();
    for (k, &id) in LEADERS.iter().enumerate() {
        l[id] = 3.0 - 0.25 * k as f32;
    }
    c.set_logits(&l);
    let p = SamplingParams {
        min_p: 1e-4,
        seed: 77,
        ..params(0.8)
    };
    assert_eq!(reference_distribution(&l, N_VALID, &p, &[]).len(), 8);
    let o = c.draw(&p, &[], 0.5);
    assert_eq!((o.kept, o.short_list), (8, 0));
    check_frequencies(&c, &l, &p, &[], 4000);
}

#[test]
fn gpu_same_seed_same_ids_and_draws_match_reference() {
    let Some(c) = ctx() else { return };
    let mut rng = Rng::new(5);
    let mut l = background(&mut rng, 3.0);
    for k in 0..30 {
        l[k * 5003] = 6.0 + 0.1 * k as f32;
    }
    c.set_logits(&l);
    let window: Vec<u32> = (0..64).map(|k| (k * 2417) as u32).collect();
    let p = SamplingParams {
        temperature: 0.7,
        top_k: 20,
        top_p: 0.8,
        min_p: 0.02,
        repetition_penalty: 1.1,
        repeat_last_n: 64,
        seed: 1234,
    };
    let run = |seed: u64| -> Vec<u32> {
        let mut u = SeededRng::new(seed);
        (0..40)
            .map(|_| c.draw(&p, &window, u.next_uniform()).id)
            .collect()
    };
    let a = run(p.seed);
    assert_eq!(a, run(p.seed));
    assert_ne!(a, run(p.seed + 1));
    // Each draw is the reference's draw for the same u, unless u sits within 1e-5 of a cumulative
    // boundary of the reference distribution (f32 vs f64 sums).
    let d = reference_distribution(&l, N_VALID, &p, &window);
    let mut cuts = Vec::new();
    let mut cum = 0.0;
    for &(_, q) in &d {
        cum += q;
        cuts.push(cum);
    }
    let mut u = SeededRng::new(p.seed);
    let mut compared = 0;
    for &id in &a {
        let x = u.next_uniform();
        if cuts.iter().all(|&c| (c - x as f64).abs() > 1e-5) {
            assert_eq!(id, reference_sample(&l, N_VALID, &p, &window, x), "u {x}");
            compared += 1;
        }
    }
    assert!(compared >= 35, "{compared}");
}

/// The engine's argmax kernel (shaders/argmax.wgsl, with the prelude) on `logits`, one row.
fn gpu_argmax(c: &Ctx, n_valid: usize) -> u32 {
    use glint::uniforms::{ArgmaxParams, Step};
    let g = &c.gpu;
    let m = g.device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("argmax"),
        source: wgpu::ShaderSource::Wgsl(
            glint::kernels::compose(glint::kernels::ARGMAX, None).into(),
        ),
    });
    let pl = g
        .device
        .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("argmax"),
            layout: None,
            module: &m,
            entry_point: Some("argmax"),
            compilation_options: Default::default(),
            cache: None,
        });
    let params = g.uniform_init(
        "argmax",
        bytemuck::bytes_of(&ArgmaxParams {
            n_valid: n_valid as u32,
            row_stride: n_valid as u32,
            ..Default::default()
        }),
    );
    let step = g.uniform_init(
        "step",
        bytemuck::bytes_of(&Step {
            n: 1,
            ..Default::default()
        }),
    );
    let out = g.storage("argmax.out", 4).unwrap();
    let entries: Vec<wgpu::BindGroupEntry> = [&params, &step, &c.logits, &out]
        .iter()
        .enumerate()
        .map(|(i, b)| wgpu::BindGroupEntry {
            binding: i as u32,
            resource: b.as_entire_binding(),
        })
        .collect();
    let bg = g.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pl.get_bind_group_layout(0),
        entries: &entries,
    });
    let mut enc = g.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pl);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(1, 1, 1);
    }
    g.queue.submit([enc.finish()]);
    u32::from_le_bytes(g.read_buffer(&out, 0, 4).unwrap().try_into().unwrap())
}

#[test]
fn gpu_temperature_zero_is_the_argmax() {
    let Some(c) = ctx() else { return };
    let mut rng = Rng::new(6);
    let mut u = SeededRng::new(6);
    for case in 0..4 {
        let mut l = background(&mut rng, 10.0);
        match case {
            0 => {}
            1 => {
                l[77] = 50.0;
                l[90_000] = 50.0; // tie: the lower id wins
                l[5] = f32::NAN;
            }
            2 => {
                l[151_645] = 20.0; // the last valid id
            }
            _ => {
                for v in l.iter_mut() {
                    *v = -(*v).abs() - 1.0; // all negative
                }
                l[123_456] = -0.5;
                l[N_VALID + 1] = 0.0;
            }
        }
        c.set_logits(&l);
        let want = glint::reference::argmax(&l, N_VALID);
        assert_eq!(gpu_argmax(&c, N_VALID), want, "case {case}: argmax kernel");
        let g = SamplingParams::greedy();
        for _ in 0..3 {
            let o = c.draw(&g, &[], u.next_uniform());
            assert_eq!(o.id, want, "case {case}: greedy sampler");
        }
        // top_k 1 without ties is the argmax too.
        if case != 1 {
            let p = SamplingParams {
                top_k: 1,
                ..params(0.8)
            };
            assert_eq!(
                c.draw(&p, &[], u.next_uniform()).id,
                want,
                "case {case}: top_k 1"
            );
        }
    }
}

#[test]
fn gpu_never_chooses_ids_past_n_valid() {
    let Some(c) = ctx() else { return };
    let mut rng = Rng::new(7);
    let mut l = background(&mut rng, 1.0);
    for v in &mut l[N_VALID..] {
        *v = 1e3; // the largest logits are all padding rows
    }
    l[N_VALID - 1] = 1.5;
    c.set_logits(&l);
    let window: Vec<u32> = vec![0, 1, N_VALID as u32 + 3, VOCAB as u32 - 1, u32::MAX];
    let configs = [
        SamplingParams::greedy(),
        params(1.0),
        params(100.0),
        SamplingParams {
            top_k: 1,
            ..params(1.0)
        },
        SamplingParams {
            top_k: 1000,
            ..params(5.0)
        },
        SamplingParams {
            top_p: 0.01,
            ..params(1.0)
        },
        SamplingParams {
            min_p: 0.9,
            ..params(1.0)
        },
        SamplingParams {
            repetition_penalty: 0.5,
            ..params(2.0)
        },
    ];
    let mut u = SeededRng::new(7);
    for p in &configs {
        for x in [0.0, 0.999_999_94, 0.5] {
            let id = c.draw(p, &window, x).id;
            assert!((id as usize) < N_VALID, "{p:?} u {x}: {id}");
        }
        for _ in 0..5 {
            let id = c.draw(p, &window, u.next_uniform()).id;
            assert!((id as usize) < N_VALID, "{p:?}: {id}");
        }
    }
    // All valid logits -inf (or NaN): still a valid id (the lowest).
    let mut l = vec![f32::NEG_INFINITY; VOCAB];
    l[3] = f32::NAN;
    l[N_VALID..].fill(5.0);
    c.set_logits(&l);
    for p in &configs {
        assert_eq!(c.draw(p, &[], 0.5).id, 0, "{p:?}");
    }
}

/// utime + stime of this process from /proc/self/stat (0 where there is none).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which ends with ')'): utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')').unwrap_or(0) + 1..];
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    f.iter().sum::<f64>() / 100.0
}

/// Wall-clock time of one sampling dispatch (prepare + submit + 16-byte read, blocking), per
/// configuration. Run with `cargo test --release --test sampler -- --ignored --nocapture`.
#[test]
#[ignore]
fn gpu_sampling_dispatch_timing() {
    let Some(c) = ctx() else { return };
    let mut rng = Rng::new(8);
    let uniform = background(&mut rng, 5.0);
    // LLM-like: a bell-shaped bulk (sum of three uniforms, sd 2) and a sparse top of 200 ids in [8, 16).
    let mut llm: Vec<f32> = (0..VOCAB)
        .map(|_| 2.0 * (rng.f32() + rng.f32() + rng.f32()))
        .collect();
    for k in 0..200 {
        llm[(k * 7919) % N_VALID] = 12.0 + 4.0 * rng.f32();
    }
    let window: Vec<u32> = (0..64).map(|k| (k * 2000) as u32).collect();
    let configs = [
        ("greedy", SamplingParams::greedy()),
        (
            "top_k 8",
            SamplingParams {
                top_k: 8,
                ..params(1.0)
            },
        ),
        ("temperature only", params(0.8)),
        (
            "top_k 40",
            SamplingParams {
                top_k: 40,
                ..params(0.8)
            },
        ),
        (
            "top_p 0.9",
            SamplingParams {
                top_p: 0.9,
                ..params(0.8)
            },
        ),
        (
            "qwen default (T 0.7, k 20, p 0.8, rp 1.1)",
            SamplingParams {
                temperature: 0.7,
                top_k: 20,
                top_p: 0.8,
                min_p: 0.0,
                repetition_penalty: 1.1,
                repeat_last_n: 64,
                seed: 0,
            },
        ),
    ];
    eprintln!("device: {}", c.gpu.describe());
    // SAMPLE_WGSL=path: time that variant of the kernel too, interleaved with this one.
    let other = std::env::var("SAMPLE_WGSL").ok().map(|path| {
        let src = std::fs::read_to_string(&path).unwrap();
        let s = GpuSampler::with_source(&c.gpu, &c.logits, N_VALID, 4096, &src).unwrap();
        (path, s)
    });
    let mut u = SeededRng::new(8);
    // SAMPLE_ROUNDS: draws per round (default 4; more for a finer CPU time, which has 10 ms ticks).
    let rounds: usize = std::env::var("SAMPLE_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    // Wall clock: the best of 15 rounds of draws (the machine may be shared). With a CPU device,
    // the process's CPU time per draw too (Linux), which other load disturbs less.
    let mut time = |s: &GpuSampler, p: &SamplingParams| {
        let cpu0 = cpu_seconds();
        let wall = (0..15)
            .map(|_| {
                let t0 = std::time::Instant::now();
                for _ in 0..rounds {
                    c.draw_with(s, p, &window, u.next_uniform());
                }
                t0.elapsed().as_secs_f64() * 1e3 / rounds as f64
            })
            .fold(f64::INFINITY, f64::min);
        let cpu = (cpu_seconds() - cpu0) * 1e3 / (15 * rounds) as f64;
        format!("{wall:.3} ms (cpu {cpu:.2} ms)")
    };
    for (set, l) in [("uniform logits", &uniform), ("LLM-like logits", &llm)] {
        c.set_logits(l);
        for (name, p) in &configs {
            c.draw(p, &window, 0.5);
            let ms = time(&c.sampler, p);
            match &other {
                Some((path, s)) => {
                    c.draw_with(s, p, &window, 0.5);
                    let ms2 = time(s, p);
                    let ms3 = time(&c.sampler, p);
                    eprintln!("{set}, {name}: {ms} / {ms3}; {path}: {ms2}");
                }
                None => eprintln!("{set}, {name}: {ms} per draw"),
            }
        }
    }
}
