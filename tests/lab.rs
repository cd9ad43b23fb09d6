//! `glint lab`: the comparison table of two hand-made reports (exact text), their roofline charts
//! (SVG text names every case, PNG is a real PNG of the stated size), bad reports and flags refused with
//! the file or flag named, the device fingerprint (FNV-1a, checked against values computed outside
//! Rust), and on the GPU: a quick, filtered lab at a tiny model's shapes validates every case, and
//! Ctrl-C stops a run and prints what was measured.

#[path = "common/cli.rs"]
mod cli;
mod common;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A complete `glint-lab/1` report with made-up numbers.
#[allow(clippy::too_many_arguments)]
fn report(
    name: &str,
    backend: &str,
    device_type: &str,
    driver: (&str, &str),
    fingerprint: &str,
    mode: &str,
    date: &str,
    copy_ns: f64,
    peak_ns: f64,
    cases: Vec<Value>,
) -> Value {
    json!({
        "schema": "glint-lab/1",
        "glint_version": "0.1.0",
        "device": {
            "index": 0, "name": name, "backend": backend, "device_type": device_type,
            "driver": driver.0, "driver_info": driver.1, "vendor": 4318, "device": 8963,
            "subgroup_min_size": 32, "subgroup_max_size": 32, "features": ["TIMESTAMP_QUERY"],
            "max_storage_buffer_binding_size": 134217728u64, "max_buffer_size": 268435456u64,
            "max_storage_buffers_per_shader_stage": 8, "max_compute_workgroup_storage_size": 32768,
            "max_compute_invocations_per_workgroup": 1024, "max_compute_workgroups_per_dimension": 65535,
            "fingerprint": fingerprint
        },
        "machine": {"date_utc": date, "os": "linux", "cpus": 2, "load_avg": [1.0, 1.0, 1.0]},
        "load_avg_end": null,
        "mode": mode,
        "filter": null,
        "dims": {
            "source": "Qwen2-0.5B (built in)", "hidden": 896, "intermediate": 4864, "vocab": 151936,
            "n_valid": 151646, "n_heads": 14, "n_kv_heads": 2, "head_dim": 64, "rope_theta": 1e6,
            "rms_eps": 1e-6, "prefill": 512
        },
        "clock": {"kind": "gpu_timestamps", "period_ns": 1.0, "description": "GPU timestamps"},
        "kernel_shapes": "Shapes { .. }",
        "pipelines_ms": 100.0,
        "probes": {
            "copy": {"bytes": 1000000, "samples_ns": [copy_ns], "ns": copy_ns, "sd_ns": 0.0},
            "peak_flops": {"flops": 1e9, "workgroups": 8192, "workgroup_size": 64, "iters": 30,
                           "samples_ns": [peak_ns], "ns": peak_ns, "sd_ns": 0.0},
            "empty_bracket": {"samples_ns": [1000.0], "ns": 1000.0, "sd_ns": 0.0}
        },
        "notes": [],
        "cases": cases,
        "interrupted": false,
        "elapsed_s": 1.0
    })
}

/// One case row: `ns` per call (one rep of one call), validation passed or not.
fn case(
    kernel: &str,
    variant: &str,
    shape: &str,
    bytes: f64,
    flops: f64,
    ns: f64,
    ok: bool,
) -> Value {
    json!({
        "kernel": kernel, "variant": variant, "shape": shape, "type": "F32",
        "bytes": bytes, "flops": flops, "first_run_ns": ns, "calls_per_rep": 1, "rep_ns": [ns],
        "ns_per_call": ns, "sd_ns": 0.0,
        "check": if ok { json!({"ok": true, "worst": 0.1, "error": null}) }
                 else { json!({"ok": false, "worst": null, "error": "output 0: gpu 1 vs reference 2"}) }
    })
}

const ATTN: &str = "ctx=128 14/2 heads x 64";

/// Two reports in a fresh directory as a.json and b.json. A: matvec, rmsnorm, attention (failed). B:
/// matvec (twice as fast), attention, argmax, embed (no FLOPs); no rmsnorm.
fn two_reports(name: &str) -> PathBuf {
    let dir = cli::temp_dir(name);
    let a = report(
        "Test GPU A",
        "Vulkan",
        "DiscreteGpu",
        ("testdrv", "1.2.3"),
        "0123456789abcdef",
        "quick",
        "2026-01-02T03:04:05Z",
        20_000.0,
        1e6,
        vec![
            case("matvec", "decode", "896x896", 3.2e6, 1.6e6, 1e6, true),
            case("rmsnorm", "", "1x896", 7.5e3, 3.6e3, 1e4, true),
            case("attention", "decode", ATTN, 2.6e5, 4.6e5, 3e6, false),
        ],
    );
    let b = report(
        "Test GPU B",
        "Gl",
        "IntegratedGpu",
        ("gldrv", "4.5"),
        "fedcba9876543210",
        "thorough",
        "2026-01-02T04:05:06Z",
        40_000.0,
        2e6,
        vec![
            case("matvec", "decode", "896x896", 3.2e6, 1.6e6, 5e5, true),
            case("attention", "decode", ATTN, 2.6e5, 4.6e5, 2e6, true),
            case(
                "argmax",
                "",
                "151936 (valid 151646)",
                6.1e5,
                1.5e5,
                3e5,
                true,
            ),
            case("embed", "", "4096x896 n=1", 3.6e3, 0.0, 5e4, true),
        ],
    );
    std::fs::write(dir.join("a.json"), a.to_string()).unwrap();
    std::fs::write(dir.join("b.json"), b.to_string()).unwrap();
    dir
}

/// `glint lab ARGS` run in `dir`: (success, stdout, stderr).
fn lab_in(dir: &Path, args: &[&str]) -> (bool, String, String) {
    let out = cli::glint()
        .current_dir(dir)
        .arg("lab")
        .args(args)
        .output()
        .expect("running glint");
    (
        out.status.success(),
        String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn compare_table_of_two_reports() {
    let dir = two_reports("lab-compare");
    let (ok, stdout, stderr) = lab_in(&dir, &["--compare", "a.json", "b.json"]);
    assert!(ok, "glint lab --compare failed: {stderr}");
    let expected = "\
Reports:

- A: a.json: Test GPU A (Vulkan, DiscreteGpu, testdrv 1.2.3); fingerprint 0123456789abcdef; quick mode, 2026-01-02T03:04:05Z; copy 100.00 GB/s, peak 1000.00 GFLOP/s
- B: b.json: Test GPU B (Gl, IntegratedGpu, gldrv 4.5); fingerprint fedcba9876543210; thorough mode, 2026-01-02T04:05:06Z; copy 50.00 GB/s, peak 500.00 GFLOP/s

| kernel    | variant | shape                   | type |       A |        B | B vs A |
| --------- | ------- | ----------------------- | ---- | ------: | -------: | -----: |
| matvec    | decode  | 896x896                 | F32  | 1.00 ms | 500.0 µs |  2.00x |
| rmsnorm   |         | 1x896                   | F32  | 10.0 µs |  missing |      - |
| attention | decode  | ctx=128 14/2 heads x 64 | F32  |    FAIL |  2.00 ms |      - |
| argmax    |         | 151936 (valid 151646)   | F32  | missing | 300.0 µs |      - |
| embed     |         | 4096x896 n=1            | F32  | missing |  50.0 µs |      - |

Time per call in each report; \"X vs A\": A's time ÷ X's (above 1: X is faster). missing: the case is not in that report; FAIL: it failed validation there (or was not timed); -: no ratio.
";
    assert_eq!(stdout, expected);

    // --filter keeps the rows whose "kernel variant shape type" contains the text.
    let (ok, stdout, _) = lab_in(
        &dir,
        &["--compare", "a.json", "b.json", "--filter", "decode"],
    );
    assert!(ok);
    let rows: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| kernel") && !l.starts_with("| -"))
        .collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(rows[0].starts_with("| matvec ") && rows[1].starts_with("| attention "));
}

/// The text of every `<text>` element of an SVG written by plotters (one element per line of text).
fn svg_texts(svg: &str) -> Vec<String> {
    svg.split("<text")
        .skip(1)
        .map(|t| {
            let body =
                &t[t.find('>').expect("text tag closes") + 1..t.find("</text>").expect("end")];
            body.trim()
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&")
        })
        .collect()
}

#[test]
fn roofline_plot_names_every_case() {
    let dir = two_reports("lab-plot");
    let (ok, _, stderr) = lab_in(
        &dir,
        &["--compare", "a.json", "b.json", "--plot", "roof.svg"],
    );
    assert!(ok, "--plot roof.svg failed: {stderr}");
    let svg = std::fs::read_to_string(dir.join("roof.svg")).expect("roof.svg written");
    let texts = svg_texts(&svg);
    let count = |s: &str| texts.iter().filter(|t| *t == s).count();
    assert_eq!(count("Roofline: A vs B"), 1, "{texts:?}");
    // Drawn points: matvec in both reports; rmsnorm only in A; attention (failed in A) and argmax in B.
    assert_eq!(count("matvec F32"), 2, "{texts:?}");
    assert_eq!(count("rmsnorm F32"), 1, "{texts:?}");
    assert_eq!(count("attention F32"), 1, "{texts:?}");
    assert_eq!(count("argmax F32"), 1, "{texts:?}");
    // Not drawn, and said so: A's failed attention, B's embed (a gather: no FLOPs, intensity 0).
    assert_eq!(
        count("A: not drawn: attention F32 (failed or not timed)"),
        1,
        "{texts:?}"
    );
    assert_eq!(count("B: not drawn: embed F32 (no FLOPs)"), 1, "{texts:?}");
    // Each report's roof in the legend, with its measured ceilings.
    for l in [
        "A: Test GPU A (Vulkan): copy 100.00 GB/s",
        "A: peak 1000.00 GFLOP/s (FMA probe)",
        "B: Test GPU B (Gl): copy 50.00 GB/s",
        "B: peak 500.00 GFLOP/s (FMA probe)",
    ] {
        assert_eq!(count(l), 1, "legend '{l}' in {texts:?}");
    }
    // One colour per report.
    for colour in ["#1F77B4", "#D62728"] {
        assert!(svg.contains(colour), "colour {colour} not in the SVG");
    }

    // PNG: a real PNG of the chart's size, text drawn with the embedded font.
    let (ok, _, stderr) = lab_in(&dir, &["--compare", "a.json", "--plot", "roof.png"]);
    assert!(ok, "--plot roof.png failed: {stderr}");
    let png = std::fs::read(dir.join("roof.png")).expect("roof.png written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&png[12..16], b"IHDR");
    let be = |b: &[u8]| u32::from_be_bytes(b.try_into().unwrap());
    assert_eq!((be(&png[16..20]), be(&png[20..24])), (1400, 900));
}

#[test]
fn bad_reports_and_flags_are_refused() {
    let dir = two_reports("lab-bad");
    std::fs::write(dir.join("bench.json"), r#"{"tests": []}"#).unwrap();
    std::fs::write(
        dir.join("future.json"),
        r#"{"schema": "glint-lab/99", "cases": []}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("broken.json"),
        r#"{"schema": "glint-lab/1", "cases": 3}"#,
    )
    .unwrap();
    for (file, wanted) in [
        ("bench.json", "bench.json: field 'schema' is missing"),
        (
            "future.json",
            "future.json: field 'schema' is 'glint-lab/99', expected 'glint-lab/1'",
        ),
        (
            "broken.json",
            "broken.json: not a valid 'glint-lab/1' lab report",
        ),
        ("absent.json", "absent.json: "),
    ] {
        let (ok, _, stderr) = lab_in(&dir, &["--compare", "a.json", file]);
        assert!(!ok, "{file} accepted");
        assert!(stderr.contains(wanted), "{file}: {stderr}");
    }
    let (ok, _, stderr) = lab_in(&dir, &["--compare", "a.json", "--plot", "roof.jpg"]);
    assert!(!ok);
    assert!(
        stderr.contains("--plot roof.jpg: the file name must end in .svg or .png"),
        "{stderr}"
    );
    let (ok, _, stderr) = lab_in(&dir, &["--compare", "a.json", "-o", "json"]);
    assert!(!ok);
    assert!(
        stderr.contains("-o json: --compare prints a markdown table"),
        "{stderr}"
    );
    let (ok, _, stderr) = lab_in(&dir, &["--compare", "a.json", "--quick"]);
    assert!(!ok);
    assert!(stderr.contains("--quick"), "{stderr}");
}

#[test]
fn fingerprint_is_fnv1a_of_the_identity() {
    use glint::lab::device::fingerprint;
    // Expected values computed with an independent FNV-1a (Python) over the fields joined by NUL.
    assert_eq!(
        fingerprint(
            "llvmpipe (LLVM 15.0.6, 256 bits)",
            0x10005,
            0,
            "llvmpipe",
            "Mesa 22.3.6 (LLVM 15.0.6)",
            "Vulkan"
        ),
        "b0b892b2a6d3b1fd"
    );
    assert_eq!(
        fingerprint("NVIDIA H200", 4318, 8963, "NVIDIA", "570.00", "Vulkan"),
        "1ff6dd48b7ac813e"
    );
    // Any field changes it.
    assert_ne!(
        fingerprint("NVIDIA H200", 4318, 8963, "NVIDIA", "570.00", "Gl"),
        "1ff6dd48b7ac813e"
    );
}

fn tiny() -> PathBuf {
    common::fixture("tiny-qwen2")
}

#[test]
fn quick_lab_validates_on_the_device() {
    if common::gpu().is_none() {
        return;
    }
    let dir = cli::temp_dir("lab-quick");
    let model = tiny();
    let (ok, stdout, stderr) = lab_in(
        &dir,
        &[
            "--quick",
            "-m",
            model.to_str().unwrap(),
            "--filter",
            "rmsnorm",
            "-o",
            "json",
            "--json-file",
            "lab.json",
        ],
    );
    assert!(ok, "glint lab --quick failed: {stderr}");
    let r: Value = serde_json::from_str(&stdout).expect("JSON report on stdout");
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("lab.json")).unwrap()).unwrap();
    assert_eq!(r, saved, "--json-file holds the printed report");
    assert_eq!(r["schema"], "glint-lab/1");
    assert_eq!(r["mode"], "quick");
    assert_eq!(r["filter"], "rmsnorm");
    // The shapes are the tiny model's (hidden 64), read from its config.
    assert_eq!(r["dims"]["hidden"], 64);
    assert!(r["dims"]["source"]
        .as_str()
        .unwrap()
        .ends_with("tiny-qwen2"));
    let cases = r["cases"].as_array().unwrap();
    let keys: Vec<String> = cases
        .iter()
        .map(|c| format!("{} {} {}", c["kernel"], c["shape"], c["type"]))
        .collect();
    assert_eq!(
        keys,
        [r#""rmsnorm" "1x64" "F32""#, r#""rmsnorm" "512x64" "F32""#]
    );
    for c in cases {
        assert_eq!(c["check"]["ok"], true, "{c}");
        assert!(c["check"]["worst"].as_f64().unwrap() <= 1.0, "{c}");
        assert_eq!(c["rep_ns"].as_array().unwrap().len(), 1, "quick: one run");
        assert!(c["ns_per_call"].as_f64().unwrap() > 0.0);
    }
    // The device and its measured ceilings are in the report.
    let d = &r["device"];
    assert_eq!(d["fingerprint"].as_str().unwrap().len(), 16);
    assert_eq!(
        d["fingerprint"].as_str().unwrap(),
        glint::lab::device::fingerprint(
            d["name"].as_str().unwrap(),
            d["vendor"].as_u64().unwrap() as u32,
            d["device"].as_u64().unwrap() as u32,
            d["driver"].as_str().unwrap(),
            d["driver_info"].as_str().unwrap(),
            d["backend"].as_str().unwrap()
        )
    );
    assert!(r["probes"]["copy"]["ns"].as_f64().unwrap() > 0.0);
    assert!(r["probes"]["peak_flops"]["ns"].as_f64().unwrap() > 0.0);
    assert!(!r["probes"]["peak_flops"]["samples_ns"]
        .as_array()
        .unwrap()
        .is_empty());
    // Progress on stderr, one line per case.
    assert!(
        stderr.contains("glint lab: [1/2] rmsnorm 1x64 F32: "),
        "{stderr}"
    );
    assert!(
        stderr.contains("glint lab: [2/2] rmsnorm 512x64 F32: "),
        "{stderr}"
    );
}

#[cfg(unix)]
#[test]
fn ctrl_c_prints_what_was_measured() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    if common::gpu().is_none() {
        return;
    }
    let model = tiny();
    let mut child = cli::glint()
        .args(["lab", "--quick", "-o", "json", "-m"])
        .arg(&model)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running glint");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut total = 0usize;
    let mut seen = String::new();
    let mut line = String::new();
    // Wait for the first measured case, then send SIGINT (the remaining cases take seconds).
    while stderr.read_line(&mut line).unwrap() > 0 {
        seen += &line;
        // "glint lab: [ 1/70] matvec ...": the index is padded to the width of the total.
        if let Some((index, rest)) = line
            .strip_prefix("glint lab: [")
            .and_then(|l| l.split_once('/'))
        {
            if index.trim() == "1" {
                total = rest.split(']').next().unwrap().parse().unwrap();
                break;
            }
        }
        line.clear();
    }
    assert!(total > 2, "no case measured: {seen}");
    let killed = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "an interrupted lab exits non-zero");
    let r: Value = serde_json::from_slice(&out.stdout).expect("the report is printed");
    assert_eq!(r["interrupted"], true);
    let n = r["cases"].as_array().unwrap().len();
    assert!(n >= 1 && n < total, "{n} of {total} cases");
    assert!(
        rest.contains(&format!(
            "glint lab: interrupted: {n} of {total} cases measured"
        )),
        "{rest}"
    );
}
