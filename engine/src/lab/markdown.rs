//! A lab report as markdown: a header naming the device, driver, backend, limits, fingerprint, clock and
//! measured ceilings, then one table row per case.

use super::report::{CaseReport, LabReport};
use crate::bench::fmt_load;

/// "12.3 µs" below a millisecond, "1.23 ms" from there.
pub fn fmt_time(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.2} ms", ns / 1e6)
    } else {
        format!("{:.1} µs", ns / 1e3)
    }
}

/// A markdown table with columns padded to their widest cell; `right[c]` right-aligns column c.
pub fn table(header: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let width: Vec<usize> = (0..header.len())
        .map(|c| {
            rows.iter()
                .map(|r| r[c].chars().count())
                .chain([header[c].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let mut s = String::from("|");
        for (c, cell) in cells.iter().enumerate() {
            let pad = " ".repeat(width[c] - cell.chars().count());
            s += &if right[c] {
                format!(" {pad}{cell} |")
            } else {
                format!(" {cell}{pad} |")
            };
        }
        s + "\n"
    };
    let mut out = line(&header.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    out += "|";
    for (c, w) in width.iter().enumerate() {
        out += &if right[c] {
            format!(" {}: |", "-".repeat(w.saturating_sub(1)))
        } else {
            format!(" {} |", "-".repeat(*w))
        };
    }
    out += "\n";
    for r in rows {
        out += &line(r);
    }
    out
}

/// The header lines of a report (each "- ...").
pub fn header(r: &LabReport) -> String {
    let d = &r.device;
    let p = &r.probes;
    let mut out = format!("Kernel lab: {}\n\n", d.describe());
    out += &format!(
        "- device: {}, vendor 0x{:x}, device 0x{:x}, {} backend, type {}; fingerprint {}\n",
        d.adapter.name,
        d.adapter.vendor,
        d.adapter.device,
        d.adapter.backend,
        d.adapter.device_type,
        d.fingerprint
    );
    out += &format!("- driver: {}\n", d.driver());
    out += &format!(
        "- limits: {}; features: {}\n",
        d.limits(),
        d.adapter.features.join(", ")
    );
    out += &format!(
        "- glint {}; date: {}; load average at end: {}\n",
        r.glint_version,
        r.machine.describe(),
        fmt_load(r.load_avg_end)
    );
    out += &format!("- model shapes: {}\n", r.dims.describe());
    out += &format!("- mode: {}\n", r.mode.describe());
    if let Some(f) = &r.filter {
        out += &format!("- filter: cases whose \"kernel variant shape type\" contains '{f}'\n");
    }
    out += &format!(
        "- timing: {}; empty bracket {}\n",
        r.clock.description,
        fmt_time(p.empty_bracket.ns)
    );
    out += &format!(
        "- copy bandwidth: {:.2} GB/s ({} MiB buffer-to-buffer copy, read + write, {} ± {})\n",
        p.copy.gb_s(),
        p.copy.bytes >> 20,
        fmt_time(p.copy.t.ns),
        fmt_time(p.copy.t.sd_ns)
    );
    out += &format!(
        "- peak FLOP/s: {:.2} GFLOP/s (shaders/peak_flops.wgsl: {} workgroups x {} invocations x {} iterations \
         x 64 FLOP of FMA chains, {} ± {})\n",
        p.peak_flops.gflop_s(),
        p.peak_flops.workgroups,
        p.peak_flops.workgroup_size,
        p.peak_flops.iters,
        fmt_time(p.peak_flops.t.ns),
        fmt_time(p.peak_flops.t.sd_ns)
    );
    out += &format!("- kernel launch shapes: {}\n", r.kernel_shapes);
    for n in &r.notes {
        out += &format!("- note: {n}\n");
    }
    if r.interrupted {
        out += "- INTERRUPTED (Ctrl-C): the table holds the cases measured before\n";
    }
    out
}

fn row(r: &LabReport, c: &CaseReport) -> Vec<String> {
    let timed = !c.rep_ns.is_empty();
    let or_dash = |s: String| if timed { s } else { "-".into() };
    let gbs = c.gb_s();
    // A swept row: its launch shapes after the variant.
    let variant = match &c.launch {
        None => c.variant.clone(),
        Some(l) => {
            let l: Vec<String> = l.iter().map(|(k, v)| format!("{k}={v}")).collect();
            super::case::join_key(&[&c.variant, &format!("[{}]", l.join(" "))])
        }
    };
    vec![
        c.kernel.clone(),
        variant,
        c.shape.clone(),
        c.ty.clone(),
        or_dash(fmt_time(c.ns_per_call)),
        if c.rep_ns.len() > 1 {
            format!("±{:.1}%", 100.0 * c.sd_ns / c.ns_per_call)
        } else {
            "-".into()
        },
        or_dash(format!("{}x{}", c.calls_per_rep, c.rep_ns.len())),
        or_dash(format!("{gbs:.2}")),
        or_dash(format!("{:.0}%", 100.0 * gbs / r.probes.copy.gb_s())),
        or_dash(format!("{:.2}", c.gflop_s())),
        format!("{:.2}", if c.bytes > 0.0 { c.intensity() } else { 0.0 }),
        c.check.describe(),
    ]
}

/// The whole report: header, table, summary line.
pub fn report(r: &LabReport) -> String {
    let mut out = header(r);
    out += "\n";
    let rows: Vec<Vec<String>> = r.cases.iter().map(|c| row(r, c)).collect();
    out += &table(
        &[
            "kernel",
            "variant",
            "shape",
            "type",
            "time/call",
            "sd",
            "calls x reps",
            "GB/s",
            "% copy",
            "GFLOP/s",
            "FLOP/B",
            "check",
        ],
        &[
            false, false, false, false, true, true, true, true, true, true, true, false,
        ],
        &rows,
    );
    out += &format!(
        "\n{} cases, {} failed validation; pipelines built in {:.0} ms; total {:.1} s. \"check\": worst error as \
         a fraction of the tolerance of tests/kernels.rs.\n",
        r.cases.len(),
        r.failed(),
        r.pipelines_ms,
        r.elapsed_s
    );
    out
}
