//! A horizontal bar chart, the one shape sections 2–5 need: one labelled bar per row, an axis
//! (linear, or logarithmic when values span decades), and an optional reference line for the
//! baseline. Plain SVG, no dependency.

use std::fmt::Write as _;

/// One row.
pub(super) struct Bar {
    pub label: String,
    pub value: f64,
    pub colour: &'static str,
    /// Printed at the end of the bar.
    pub text: String,
}

pub(super) struct Chart<'a> {
    pub title: &'a str,
    /// What the axis measures.
    pub axis: &'a str,
    pub bars: Vec<Bar>,
    /// A dashed vertical line: the baseline, with its label.
    pub reference: Option<(f64, String)>,
    /// A logarithmic axis (for values across several decades).
    pub log: bool,
    /// Colour swatches with their meaning.
    pub legend: Vec<(&'static str, &'a str)>,
}

const ROW: f64 = 18.0;
const PLOT: f64 = 480.0;
const TOP: f64 = 66.0;
/// Roughly the width of one character at font-size 11.
const CHAR: f64 = 6.3;

#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
pub(super) fn render(c: &Chart<'_>) -> String {
    let widest = |texts: &mut dyn Iterator<Item = &String>| {
        texts.map(|t| t.chars().count()).max().unwrap_or(0) as f64 * CHAR
    };
    let label_width = widest(&mut c.bars.iter().map(|b| &b.label)) + 16.0;
    let text_width = widest(&mut c.bars.iter().map(|b| &b.text)) + 16.0;
    let values = c
        .bars
        .iter()
        .map(|b| b.value)
        .chain(c.reference.iter().map(|r| r.0))
        .filter(|v| v.is_finite() && (!c.log || *v > 0.0));
    let (lo, hi) = values.fold((f64::INFINITY, 0.0f64), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (axis_lo, axis_hi, ticks) = if c.log {
        let lo = lo.max(1e-9).log10().floor();
        let hi = hi.max(1e-9).log10().ceil().max(lo + 1.0);
        let ticks = (lo as i32..=hi as i32)
            .map(|e| 10f64.powi(e))
            .collect::<Vec<_>>();
        (10f64.powf(lo), 10f64.powf(hi), ticks)
    } else {
        let step = nice_step(hi.max(1e-9) / 8.0);
        let top = (hi / step).ceil().max(1.0) * step;
        let ticks = (0..=(top / step).round() as usize)
            .map(|i| i as f64 * step)
            .collect::<Vec<_>>();
        (0.0, top, ticks)
    };
    let x = |v: f64| -> f64 {
        let f = if c.log {
            (v.max(axis_lo).log10() - axis_lo.log10()) / (axis_hi.log10() - axis_lo.log10())
        } else {
            v / axis_hi
        };
        label_width + f.clamp(0.0, 1.0) * PLOT
    };
    let height = TOP + ROW * c.bars.len() as f64 + 40.0;
    let width = label_width + PLOT + text_width.max(110.0);

    let mut out = open(width, height, c.title);
    let w = &mut out;
    let mut lx = 10.0;
    for (colour, meaning) in &c.legend {
        let _ = writeln!(
            w,
            r#"<rect x="{lx}" y="28" width="10" height="10" fill="{colour}"/><text x="{}" y="37">{}</text>"#,
            lx + 14.0,
            escape(meaning)
        );
        lx += 24.0 + 6.5 * meaning.chars().count() as f64;
    }
    for t in &ticks {
        let _ = writeln!(
            w,
            r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#ddd"/><text x="{0:.1}" y="{3}" text-anchor="middle" fill="#666">{4}</text>"##,
            x(*t),
            TOP - 6.0,
            height - 34.0,
            TOP - 9.0,
            tick(*t)
        );
    }
    for (i, b) in c.bars.iter().enumerate() {
        let y = TOP + ROW * i as f64;
        let _ = writeln!(
            w,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            label_width - 6.0,
            y + ROW / 2.0 + 4.0,
            escape(&b.label)
        );
        let end = if b.value.is_finite() {
            x(b.value)
        } else {
            label_width
        };
        let _ = writeln!(
            w,
            r#"<rect x="{label_width}" y="{}" width="{:.1}" height="{}" fill="{}"/><text x="{:.1}" y="{}">{}</text>"#,
            y + 3.0,
            (end - label_width).max(0.5),
            ROW - 6.0,
            b.colour,
            end + 4.0,
            y + ROW / 2.0 + 4.0,
            escape(&b.text)
        );
    }
    if let Some((v, label)) = &c.reference {
        let rx = x(*v);
        let _ = writeln!(
            w,
            r#"<line x1="{rx:.1}" y1="{}" x2="{rx:.1}" y2="{}" stroke="black" stroke-dasharray="4 3"/><text x="{rx:.1}" y="{}" text-anchor="middle">{}</text>"#,
            TOP - 4.0,
            height - 34.0,
            height - 22.0,
            escape(label)
        );
    }
    let _ = writeln!(
        w,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#444">{}</text>"##,
        label_width + PLOT / 2.0,
        height - 6.0,
        escape(c.axis)
    );
    let _ = writeln!(w, "</svg>");
    out
}

/// 1, 2, 2.5 or 5 times a power of ten, at least `raw`.
/// The start of an SVG document: the root element, a white background and a bold title.
#[expect(
    clippy::let_underscore_must_use,
    reason = "writing to a String cannot fail"
)]
pub(super) fn open(width: f64, height: f64, title: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        out,
        r#"<text x="10" y="18" font-size="14" font-weight="bold">{}</text>"#,
        escape(title)
    );
    out
}

fn nice_step(raw: f64) -> f64 {
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * p)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * p)
}

fn tick(v: f64) -> String {
    // Ticks are sums of float steps: print them short (0.6, not 0.6000000000000001).
    let short = |v: f64| {
        let s = format!("{v:.3}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    };
    match v {
        0.0 => "0".to_owned(),
        v if v >= 1e6 => format!("{}M", short(v / 1e6)),
        v if v >= 1e3 => format!("{}k", short(v / 1e3)),
        v => short(v),
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
