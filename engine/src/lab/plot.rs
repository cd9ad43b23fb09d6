//! Roofline charts of lab reports (`glint lab --plot FILE.svg|FILE.png`), drawn with plotters.
//!
//! One point per case: its arithmetic intensity (FLOP per byte it must move, x) against the bandwidth
//! it achieved (GB/s, y), both axes logarithmic, labelled with kernel (and variant where it names another
//! kernel) and type. The roof is each report's own measurements: the copy-bandwidth line (horizontal: no
//! kernel moves bytes faster than a copy does) and the peak-FLOP/s line (a kernel of intensity I doing
//! P FLOP/s moves P / I bytes a second: descending), meeting at the ridge point. Every report has its own
//! colour. Cases without FLOPs (embed, a gather: intensity 0), not timed, or failed validation are not
//! drawn; a footnote names them.
//!
//! Text: PNGs are drawn with DejaVu Sans from the `dejavu` crate (plotters' `ab_glyph` feature, no
//! system font lookup); SVGs name the font family "sans-serif" and leave the drawing to the viewer.

use super::compare::report_name;
use super::report::LabReport;
use crate::error::{Error, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use std::path::Path;

/// Chart size in pixels.
const SIZE: (u32, u32) = (1400, 900);
const FONT: &str = "sans-serif";

/// One colour per report, in order (then around again).
const COLOURS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // DejaVu Sans is a valid TrueType font: registration cannot fail.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draw the rooflines of `reports` (file label, report) into `path`: SVG or PNG by its extension.
pub fn roofline(reports: &[(String, LabReport)], path: &Path) -> Result<()> {
    if reports.is_empty() {
        return Err(Error::Input("--plot: no report to draw".into()));
    }
    register_font();
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    let failed = |e: String| Error::Input(format!("--plot {}: {e}", path.display()));
    match ext.as_deref() {
        Some("svg") => {
            let root = SVGBackend::new(path, SIZE).into_drawing_area();
            draw(&root, reports).map_err(|e| failed(e.to_string()))?;
            root.present().map_err(|e| failed(e.to_string()))
        }
        Some("png") => {
            let root = BitMapBackend::new(path, SIZE).into_drawing_area();
            draw(&root, reports).map_err(|e| failed(e.to_string()))?;
            root.present().map_err(|e| failed(e.to_string()))
        }
        _ => Err(Error::Input(format!(
            "--plot {}: the file name must end in .svg or .png",
            path.display()
        ))),
    }
}

/// A drawn point: intensity, GB/s, label.
struct Point {
    x: f64,
    y: f64,
    label: String,
}

fn points(r: &LabReport) -> (Vec<Point>, Vec<String>) {
    let mut drawn = Vec::new();
    let mut left_out: Vec<String> = Vec::new();
    for c in &r.cases {
        let ok = c.check.ok && !c.rep_ns.is_empty() && c.ns_per_call > 0.0;
        if ok && c.flops > 0.0 && c.bytes > 0.0 {
            drawn.push(Point {
                x: c.intensity(),
                y: c.gb_s(),
                label: c.label(),
            });
        } else {
            let why = if !ok {
                "failed or not timed"
            } else {
                "no FLOPs"
            };
            let l = format!("{} ({why})", c.label());
            if !left_out.contains(&l) {
                left_out.push(l);
            }
        }
    }
    (drawn, left_out)
}

fn draw<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    reports: &[(String, LabReport)],
) -> std::result::Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    root.fill(&WHITE).map_err(e)?;
    let per_report: Vec<(Vec<Point>, Vec<String>)> =
        reports.iter().map(|(_, r)| points(r)).collect();

    // Axis ranges: every point, every copy line, every ridge point, with a margin of 3x.
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for ((_, r), (pts, _)) in reports.iter().zip(&per_report) {
        let bw = r.probes.copy.gb_s();
        let ridge = r.probes.peak_flops.gflop_s() / bw;
        for (x, y) in pts.iter().map(|p| (p.x, p.y)).chain([(ridge, bw)]) {
            if x.is_finite() && y.is_finite() && x > 0.0 && y > 0.0 {
                (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
            }
        }
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (0.1, 10.0, 0.1, 10.0);
    }
    let (x0, x1, y0, y1) = (x0 / 3.0, x1 * 3.0, y0 / 3.0, y1 * 3.0);

    let title = if reports.len() == 1 {
        let d = &reports[0].1.device.adapter;
        format!("Roofline: {} ({})", d.name, d.backend)
    } else {
        format!(
            "Roofline: {}",
            (0..reports.len())
                .map(report_name)
                .collect::<Vec<_>>()
                .join(" vs ")
        )
    };
    let notes: Vec<String> = reports
        .iter()
        .zip(&per_report)
        .enumerate()
        .filter(|(_, (_, (_, left)))| !left.is_empty())
        .map(|(i, ((_, _), (_, left)))| {
            let who = if reports.len() > 1 {
                format!("{}: ", report_name(i))
            } else {
                String::new()
            };
            format!("{who}not drawn: {}", left.join(", "))
        })
        .collect();
    // Footnote lines of at most ~190 characters.
    let mut foot: Vec<String> = Vec::new();
    for n in &notes {
        let mut line = String::new();
        for word in n.split(", ") {
            if !line.is_empty() && line.len() + word.len() > 190 {
                foot.push(format!("{line},"));
                line.clear();
            }
            if !line.is_empty() {
                line += ", ";
            }
            line += word;
        }
        foot.push(line);
    }
    let foot_h = 18 * foot.len() as u32 + 8;
    let (chart_area, foot_area) = root.split_vertically(SIZE.1 - foot_h);
    for (i, l) in foot.iter().enumerate() {
        foot_area
            .draw(&Text::new(
                l.clone(),
                (20, 4 + 18 * i as i32),
                (FONT, 13).into_font().color(&BLACK.mix(0.7)),
            ))
            .map_err(e)?;
    }

    let mut chart = ChartBuilder::on(&chart_area)
        .caption(title, (FONT, 24))
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(70)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("arithmetic intensity (FLOP / byte moved)")
        .y_desc("achieved GB/s")
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .light_line_style(BLACK.mix(0.05))
        .draw()
        .map_err(e)?;

    for (i, ((_, r), (pts, _))) in reports.iter().zip(&per_report).enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let name = if reports.len() > 1 {
            format!("{}: ", report_name(i))
        } else {
            String::new()
        };
        let device = format!("{} ({})", r.device.adapter.name, r.device.adapter.backend);
        let bw = r.probes.copy.gb_s();
        let peak = r.probes.peak_flops.gflop_s();
        // Copy line: y = bw across the chart.
        chart
            .draw_series(LineSeries::new(
                [(x0, bw), (x1, bw)],
                colour.stroke_width(2),
            ))
            .map_err(e)?
            .label(format!("{name}{device}: copy {bw:.2} GB/s"))
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 24, y)], colour.stroke_width(2))
            });
        // Peak line: y = peak / x, inside the chart's box.
        let (xa, xb) = ((peak / y1).max(x0), (peak / y0).min(x1));
        if xa < xb {
            chart
                .draw_series(DashedLineSeries::new(
                    [(xa, peak / xa), (xb, peak / xb)],
                    8,
                    5,
                    colour.stroke_width(2),
                ))
                .map_err(e)?
                .label(format!("{name}peak {peak:.2} GFLOP/s (FMA probe)"))
                .legend(move |(x, y)| {
                    let dash =
                        |a: i32| PathElement::new(vec![(a, 0), (a + 7, 0)], colour.stroke_width(2));
                    EmptyElement::at((x, y)) + dash(0) + dash(10) + dash(20)
                });
        }
        chart
            .draw_series(pts.iter().map(|p| {
                EmptyElement::at((p.x, p.y))
                    + Circle::new((0, 0), 4, colour.filled())
                    + Text::new(
                        p.label.clone(),
                        (6, -14),
                        (FONT, 12).into_font().color(&colour),
                    )
            }))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.4))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(e)?;
    Ok(())
}
