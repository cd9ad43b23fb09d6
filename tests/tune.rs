//! Kernel-shape tuning: a tuning file round-trips (written, loaded, the same shapes), is refused for
//! another device (its fingerprint and the device's named), and a malformed one is refused naming the
//! field; on the GPU, `glint lab --sweep` on one kernel picks a shape whose cases all validated, its
//! `--tune-out` file loads back as the chosen shapes, and a model loaded with it (and from the user
//! cache, $GLINT_TUNE_DIR) still gives transformers' greedy tokens.

#[path = "common/cli.rs"]
mod cli;
mod common;

use glint::gpu::DeviceCaps;
use glint::kernels::{Int8, Reduce, Shapes};
use glint::tune::{self, TuneDevice, TuneFile, Tuning};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A made-up device: subgroup size 32, 1024 invocations.
fn caps(fingerprint: &str) -> DeviceCaps {
    DeviceCaps {
        cpu_device: false,
        subgroup_size: Some(32),
        shader_f16: true,
        timestamps: true,
        direct_upload: false,
        max_storage_binding: 1 << 30,
        max_buffer_size: 1 << 31,
        max_workgroup_invocations: 1024,
        max_storage_buffers_per_stage: 16,
        fingerprint: fingerprint.into(),
    }
}

const FP: &str = "0123456789abcdef";

/// Shapes that differ from the made-up device's defaults in every swept field.
fn tuned() -> Shapes {
    Shapes {
        reduce: Reduce::Shared,
        tpr: 16,
        matvec_wg: 128,
        attn_wg: 128,
        block_tokens: 4,
        tiled_from: Some(5),
        lane_rows: 4,
        attn_split_keys: 1024,
        attn_max_splits: 16,
        attn_split_tokens: 8,
        int8: Int8::Matvec,
    }
}

fn file(fingerprint: &str, shapes: Shapes) -> TuneFile {
    TuneFile {
        schema: tune::SCHEMA.into(),
        glint_version: "0.1.0".into(),
        created_utc: "2026-01-02T03:04:05Z".into(),
        device: TuneDevice {
            fingerprint: fingerprint.into(),
            name: "Test GPU".into(),
            backend: "Vulkan".into(),
            driver: "testdrv 1.2.3".into(),
        },
        mode: "quick".into(),
        filter: None,
        dims: "test".into(),
        shapes,
        sweep: vec![],
    }
}

fn written(name: &str, f: &TuneFile) -> PathBuf {
    let p = cli::temp_dir(name).join("tune.json");
    f.write(&p).unwrap();
    p
}

fn load_err(path: &Path, caps: &DeviceCaps) -> String {
    tune::load(path, caps)
        .expect_err("the file must be refused")
        .to_string()
}

/// The file's JSON with one edit.
fn edited(name: &str, edit: impl Fn(&mut Value)) -> PathBuf {
    let p = written(name, &file(FP, tuned()));
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(&p, v.to_string()).unwrap();
    p
}

#[test]
fn tuning_file_round_trips() {
    let p = written("tune-roundtrip", &file(FP, tuned()));
    assert_ne!(tuned(), Shapes::for_device(&caps(FP)));
    assert_eq!(tune::load(&p, &caps(FP)).unwrap(), tuned());
    // The file's own fields, as documented in glint::tune.
    let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    assert_eq!(v["schema"], "glint-tune/1");
    assert_eq!(v["device"]["fingerprint"], FP);
    assert_eq!(v["shapes"]["reduce"], "shared");
    assert_eq!(v["shapes"]["tiled_from"], 5);
    // Tuning::File and Tuning::Defaults as the engine resolves them.
    let (s, from) = tune::shapes_for(&caps(FP), &Tuning::File(p.clone())).unwrap();
    assert_eq!((s, from), (tuned(), Some(p)));
    let (s, from) = tune::shapes_for(&caps(FP), &Tuning::Defaults).unwrap();
    assert_eq!((s, from), (Shapes::for_device(&caps(FP)), None));
}

/// A file written before `int8` existed (no such field) loads, with int8 off.
#[test]
fn tuning_file_without_int8_loads_it_off() {
    let p = edited("tune-no-int8", |v| {
        v["shapes"].as_object_mut().unwrap().remove("int8");
    });
    let s = tune::load(&p, &caps(FP)).unwrap();
    assert_eq!(
        s,
        Shapes {
            int8: Int8::Off,
            ..tuned()
        }
    );
    let p = edited("tune-int8-type", |v| v["shapes"]["int8"] = "always".into());
    let e = load_err(&p, &caps(FP));
    assert!(e.contains("field 'shapes.int8' is \"always\": unknown variant `always`, expected one of `off`, `decode`, `matvec`"), "{e}");
}

#[test]
fn tuning_file_for_another_device_is_refused() {
    // A hand-edited fingerprint: the file now claims another device.
    let p = edited("tune-other-device", |v| {
        v["device"]["fingerprint"] = "fedcba9876543210".into()
    });
    let e = load_err(&p, &caps(FP));
    assert!(e.starts_with(&format!("{}: ", p.display())), "{e}");
    assert!(
        e.contains("this tuning file is for device fingerprint fedcba9876543210 (Test GPU, Vulkan, testdrv 1.2.3), but this device's fingerprint is 0123456789abcdef"),
        "{e}"
    );
}

/// An edit of a tuning file's JSON.
type Edit = Box<dyn Fn(&mut Value)>;

#[test]
fn malformed_tuning_files_are_refused_naming_the_field() {
    let cases: [(&str, Edit, &str); 7] = [
        (
            "type",
            Box::new(|v| v["shapes"]["tpr"] = "sixteen".into()),
            "field 'shapes.tpr' is \"sixteen\": invalid type: string \"sixteen\", expected u32",
        ),
        (
            "missing",
            Box::new(|v| {
                v["shapes"].as_object_mut().unwrap().remove("lane_rows");
            }),
            "field 'shapes.lane_rows' is missing",
        ),
        (
            "unknown",
            Box::new(|v| v["shapes"]["rows_per_wg"] = 8.into()),
            "field 'shapes.rows_per_wg' is not a kernel shape (expected: ",
        ),
        (
            "reduce",
            Box::new(|v| v["shapes"]["reduce"] = "tree".into()),
            "field 'shapes.reduce' is \"tree\": unknown variant `tree`, expected `subgroup` or `shared`",
        ),
        (
            "schema",
            Box::new(|v| v["schema"] = "glint-lab/1".into()),
            "field 'schema' is 'glint-lab/1', expected 'glint-tune/1'",
        ),
        (
            "fingerprint",
            Box::new(|v| v["device"]["fingerprint"] = 12.into()),
            "field 'device.fingerprint' is 12, expected a string of 16 hex digits",
        ),
        (
            "shapes",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("shapes");
            }),
            "field 'shapes' is missing",
        ),
    ];
    for (name, edit, want) in cases {
        let p = edited(&format!("tune-bad-{name}"), edit);
        let e = load_err(&p, &caps(FP));
        assert!(e.starts_with(&format!("{}: ", p.display())), "{name}: {e}");
        assert!(e.contains(want), "{name}: {e}\nwanted: {want}");
    }
    // Not JSON at all.
    let p = cli::temp_dir("tune-bad-json").join("tune.json");
    std::fs::write(&p, "{ \"schema\": ").unwrap();
    let e = load_err(&p, &caps(FP));
    assert!(e.contains("invalid JSON: "), "{e}");
}

#[test]
fn shapes_the_device_cannot_run_are_refused() {
    let mut s = tuned();
    s.reduce = Reduce::Subgroup; // tpr 16 on a device whose subgroups are 32 wide
    let e = load_err(&written("tune-bad-tpr", &file(FP, s)), &caps(FP));
    assert!(
        e.contains(
            "field 'shapes': tpr is 16 but the subgroup reduction needs the subgroup size, 32"
        ),
        "{e}"
    );
    let mut s = tuned();
    s.lane_rows = 4;
    s.matvec_wg = 32; // 2 rows per workgroup: 4 rows per lane do not divide them
    let e = load_err(&written("tune-bad-lanes", &file(FP, s)), &caps(FP));
    assert!(
        e.contains(
            "lane_rows is 4: it must be 1, 2, 4, 8, 16 or 32, and max(lane_rows, 2) must divide the 2 rows"
        ),
        "{e}"
    );
    let mut s = tuned();
    s.matvec_wg = 1024;
    s.lane_rows = 1; // the shared tree holds 256 partial sums
    let e = load_err(&written("tune-bad-wg", &file(FP, s)), &caps(FP));
    assert!(
        e.contains("matvec_wg / lane_rows = 1024 invocations, over the limit of 256"),
        "{e}"
    );
}

fn tiny() -> PathBuf {
    common::fixture("tiny-qwen2")
}

/// transformers' greedy continuation of tiny-qwen2 after these ids (as in the crate docs).
const PROMPT: [u32; 7] = [235, 396, 72, 255, 393, 203, 133];
const GREEDY: [u32; 4] = [237, 349, 366, 120];

fn greedy(tune: Tuning) -> glint::Result<Vec<u32>> {
    let opts = glint::LoadOptions {
        tune,
        ..Default::default()
    };
    let mut m = glint::Model::load(&tiny(), opts)?;
    let g = glint::GenerateOptions {
        max_tokens: 4,
        ..Default::default()
    };
    Ok(m.generate_with(&PROMPT, &g, |_| glint::Flow::Continue)?
        .tokens)
}

#[test]
fn sweep_on_one_kernel_picks_a_valid_shape_and_its_file_loads() {
    let Some(gpu) = common::gpu() else {
        return;
    };
    let dir = cli::temp_dir("tune-sweep");
    let out = cli::glint()
        .current_dir(&dir)
        .args([
            "lab", "--sweep", "--quick", "--filter", "rmsnorm", "-o", "json",
        ])
        .args(["--tune-out", "tune.json", "-m"])
        .arg(tiny())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "glint lab --sweep failed: {stderr}");
    let r: Value = serde_json::from_slice(&out.stdout).expect("JSON report on stdout");
    let sweep = &r["sweep"];
    let params = sweep["parameters"].as_array().unwrap();
    // rmsnorm is timed by the reduction's parameter only: the others have no case and are not swept.
    assert_eq!(params[0]["parameter"], "reduce, tpr");
    for p in &params[1..] {
        assert_eq!(p["note"], "no case matches: not swept", "{p}");
        assert_eq!(p["default"], p["chosen"]);
    }
    let p = &params[0];
    let cands = p["candidates"].as_array().unwrap();
    // lavapipe: a fixed subgroup size (the default, first) and the shared tree at 4 widths.
    assert!(cands.len() >= 2, "{p}");
    assert_eq!(cands[0]["value"], p["default"]);
    for c in cands {
        assert_eq!(c["cases"], 2, "{c}");
        assert!(c["total_ns"].as_f64().unwrap() > 0.0);
    }
    let chosen = cands
        .iter()
        .find(|c| c["value"] == p["chosen"])
        .expect("the chosen value is a candidate");
    assert_eq!(chosen["ok"], true, "the chosen shape validated: {chosen}");
    // Kept unless faster by the margin; otherwise the fastest valid candidate.
    let t = |c: &Value| c["total_ns"].as_f64().unwrap();
    let margin = sweep["margin"].as_f64().unwrap();
    if p["chosen"] != p["default"] {
        assert!(t(chosen) < t(&cands[0]) * (1.0 - margin), "{p}");
        assert!(cands
            .iter()
            .filter(|c| c["ok"] == true)
            .all(|c| t(c) >= t(chosen)));
    }
    // Every swept row carries its launch shapes and validated; 2 rows per candidate.
    let rows = r["cases"].as_array().unwrap();
    assert_eq!(rows.len(), 2 * cands.len());
    for row in rows {
        assert_eq!(row["kernel"], "rmsnorm");
        assert_eq!(row["check"]["ok"], true, "{row}");
        assert!(row["launch"]["tpr"].as_u64().is_some(), "{row}");
    }
    assert!(
        stderr.contains("glint lab: sweep reduce, tpr = "),
        "{stderr}"
    );
    assert!(
        stderr.contains("glint lab: tuning file written to tune.json"),
        "{stderr}"
    );

    // The tuning file holds the chosen shapes, for this device, and they run here.
    let path = dir.join("tune.json");
    let want: Shapes = serde_json::from_value(sweep["chosen"].clone()).unwrap();
    assert_eq!(tune::load(&path, &gpu.caps).unwrap(), want);
    assert_eq!(want.check(&gpu.caps), Ok(()));
    let f = TuneFile::read(&path).unwrap();
    assert_eq!(f.device.fingerprint, r["device"]["fingerprint"]);
    assert_eq!(f.device.fingerprint, gpu.caps.fingerprint);
    assert_eq!(f.filter.as_deref(), Some("rmsnorm"));

    // A model loaded with the file still gives transformers' tokens.
    assert_eq!(greedy(Tuning::File(path.clone())).unwrap()[..4], GREEDY);
    // Refused for another device, through the engine too.
    let mut other = f.clone();
    other.device.fingerprint = "fedcba9876543210".into();
    let other_path = dir.join("other.json");
    other.write(&other_path).unwrap();
    let e = greedy(Tuning::File(other_path.clone()))
        .expect_err("another device's file")
        .to_string();
    assert!(e.starts_with(&format!("{}: ", other_path.display())), "{e}");
    assert!(
        e.contains("for device fingerprint fedcba9876543210 ("),
        "{e}"
    );
    assert!(e.contains(&gpu.caps.fingerprint), "{e}");
}

#[test]
fn the_cli_takes_tune_and_the_user_cache() {
    let Some(gpu) = common::gpu() else {
        return;
    };
    let dir = cli::temp_dir("tune-cache");
    let ids = [
        "--prompt-ids",
        "235,396,72,255,393,203,133",
        "-n",
        "4",
        "--json",
    ];
    let run = |extra: &[&str], cache: &Path| {
        cli::glint()
            .env("GLINT_TUNE_DIR", cache)
            .args(["run", "-m"])
            .arg(tiny())
            .args(ids)
            .args(extra)
            .output()
            .unwrap()
    };
    // The cache holds a file for this device with shapes it cannot run: Auto finds it and refuses it,
    // naming it, so the lookup is real.
    let mut bad = Shapes::for_device(&gpu.caps);
    bad.block_tokens = 9;
    let cached = dir.join(format!("{}.json", gpu.caps.fingerprint));
    file(&gpu.caps.fingerprint, bad).write(&cached).unwrap();
    let out = run(&[], &dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!(
            "{}: field 'shapes': block_tokens is 9: it must be 1..=8",
            cached.display()
        )),
        "{stderr}"
    );
    // A good file in the cache is used; --tune FILE takes a file from anywhere. Same tokens as
    // transformers either way.
    let mut good = Shapes::for_device(&gpu.caps);
    good.block_tokens = 4;
    good.lane_rows = 2;
    file(&gpu.caps.fingerprint, good.clone())
        .write(&cached)
        .unwrap();
    let elsewhere = cli::temp_dir("tune-cache-empty");
    let explicit = elsewhere.join("mine.json");
    file(&gpu.caps.fingerprint, good).write(&explicit).unwrap();
    for out in [
        run(&[], &dir),
        run(&["--tune", explicit.to_str().unwrap()], &elsewhere),
    ] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or_default();
        let v: Value = serde_json::from_str(last).expect("JSON last line");
        let tokens: Vec<u64> = v["tokens"]
            .as_array()
            .unwrap_or_else(|| panic!("tokens in {v}"))
            .iter()
            .map(|t| t.as_u64().unwrap())
            .collect();
        assert_eq!(tokens[..4], GREEDY.map(u64::from));
    }
    // --tune with a missing file names it.
    let out = run(&["--tune", "/nonexistent/tune.json"], &elsewhere);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/tune.json"), "{stderr}");
}
