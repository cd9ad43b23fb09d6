//! `glint lab --compare A.json B.json ...`: one table of the same cases across reports (devices,
//! backends, drivers, commits), with each report's time per call and its ratio to the first.
//!
//! Reports are named A, B, C... in the order given; rows are the union of their cases, lined up by
//! [`CaseReport::key`], in the order they first appear. A ratio is the first report's time per call
//! divided by this report's (above 1: faster than the first). A case a report lacks is shown as
//! `missing`, one that failed validation there as `FAIL`; neither has a ratio (`-`).

use super::markdown::{fmt_time, table};
use super::report::{CaseReport, LabReport};

/// The name of the i-th report: A..Z, then R27, R28...
pub fn report_name(i: usize) -> String {
    if i < 26 {
        ((b'A' + i as u8) as char).to_string()
    } else {
        format!("R{}", i + 1)
    }
}

/// One line per report: its name, file, device, fingerprint, mode, date and measured ceilings.
pub fn legend(reports: &[(String, LabReport)]) -> String {
    let mut out = String::new();
    for (i, (file, r)) in reports.iter().enumerate() {
        out += &format!(
            "- {}: {file}: {}; fingerprint {}; {} mode, {}; copy {:.2} GB/s, peak {:.2} GFLOP/s{}\n",
            report_name(i),
            r.device.describe(),
            r.device.fingerprint,
            r.mode.name(),
            r.machine.date_utc,
            r.probes.copy.gb_s(),
            r.probes.peak_flops.gflop_s(),
            if r.interrupted { "; interrupted" } else { "" }
        );
    }
    out
}

/// The case's time per call, when it was timed and validated.
fn time(c: Option<&CaseReport>) -> Option<f64> {
    c.filter(|c| c.check.ok && !c.rep_ns.is_empty() && c.ns_per_call > 0.0)
        .map(|c| c.ns_per_call)
}

/// The comparison: legend, table, and what its cells mean. `filter` keeps the cases whose key contains it.
pub fn compare(reports: &[(String, LabReport)], filter: Option<&str>) -> String {
    let mut keys: Vec<(String, &CaseReport)> = Vec::new();
    for (_, r) in reports {
        for c in &r.cases {
            let k = c.key();
            if filter.is_none_or(|f| k.contains(f)) && !keys.iter().any(|(seen, _)| *seen == k) {
                keys.push((k, c));
            }
        }
    }
    let names: Vec<String> = (0..reports.len()).map(report_name).collect();
    let mut header: Vec<String> = ["kernel", "variant", "shape", "type"]
        .map(String::from)
        .to_vec();
    header.extend(names.iter().cloned());
    header.extend(names.iter().skip(1).map(|n| format!("{n} vs {}", names[0])));
    let rows: Vec<Vec<String>> = keys
        .iter()
        .map(|(k, c)| {
            let found: Vec<Option<&CaseReport>> = reports
                .iter()
                .map(|(_, r)| r.cases.iter().find(|x| x.key() == *k))
                .collect();
            let mut row = vec![
                c.kernel.clone(),
                c.variant.clone(),
                c.shape.clone(),
                c.ty.clone(),
            ];
            row.extend(found.iter().map(|f| match f {
                None => "missing".to_string(),
                Some(x) => match time(Some(x)) {
                    Some(ns) => fmt_time(ns),
                    None => "FAIL".to_string(),
                },
            }));
            let first = time(found[0]);
            row.extend(found.iter().skip(1).map(|f| match (first, time(*f)) {
                (Some(a), Some(b)) => format!("{:.2}x", a / b),
                _ => "-".to_string(),
            }));
            row
        })
        .collect();
    let mut right = vec![false; 4];
    right.resize(header.len(), true);
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut out = String::from("Reports:\n\n");
    out += &legend(reports);
    out += "\n";
    out += &table(&header, &right, &rows);
    out += &format!(
        "\nTime per call in each report; \"X vs {0}\": {0}'s time ÷ X's (above 1: X is faster). missing: the \
         case is not in that report; FAIL: it failed validation there (or was not timed); -: no ratio.\n",
        names.first().map_or("A", String::as_str)
    );
    out
}
