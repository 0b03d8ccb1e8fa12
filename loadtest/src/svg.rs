//! A hand-written SVG chart of a sweep: rate on x, corrected p50/p99/p99.9
//! on the left axis, error rate on the right axis, the SLO as a dashed line.
//! No plotting dependency: the chart is a few polylines and labels.

use std::fmt::Write as _;

use crate::args::Slo;
use crate::sweep::Step;

const W: f64 = 860.0;
const H: f64 = 480.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 70.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 60.0;

/// A round axis maximum and tick step covering `max`.
fn nice(max: f64) -> (f64, f64) {
    let max = if max > 0.0 && max.is_finite() {
        max
    } else {
        1.0
    };
    let raw = max / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * mag);
    ((max / step).ceil() * step, step)
}

fn fmt_num(v: f64) -> String {
    if v >= 1000.0 && (v / 1000.0).fract() == 0.0 {
        format!("{}k", v / 1000.0)
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}").trim_end_matches('0').to_string()
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

pub fn chart(steps: &[Step], slo: Option<Slo>, title: &str) -> String {
    let mut steps: Vec<&Step> = steps.iter().collect();
    steps.sort_by(|a, b| a.rate.total_cmp(&b.rate));
    let slo_ms = slo.map(|s| s.limit.as_secs_f64() * 1000.0);
    let (x_max, x_step) = nice(steps.iter().map(|s| s.rate).fold(0.0, f64::max) * 1.05);
    // Past saturation latency explodes; cap the axis at 4x the SLO so the
    // interesting region stays readable (points above are clipped to the top).
    let worst = steps.iter().map(|s| s.latency.p999).fold(0.0, f64::max);
    let cap = slo_ms.map(|m| m * 4.0).unwrap_or(f64::INFINITY);
    let (y_max, y_step) = nice(worst.min(cap).max(slo_ms.unwrap_or(0.0) * 1.2));
    let (e_max, e_step) =
        nice((steps.iter().map(|s| s.error_rate).fold(0.0, f64::max) * 100.0).max(1.0));

    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |r: f64| LEFT + r / x_max * pw;
    let y = |ms: f64| TOP + ph - (ms.min(y_max) / y_max) * ph;
    let ye = |pct: f64| TOP + ph - (pct.min(e_max) / e_max) * ph;

    let mut o = String::new();
    let _ = writeln!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(o, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(
        o,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="15">{}</text>"#,
        W / 2.0,
        esc(title)
    );
    // Grid and axes.
    let mut t = 0.0;
    while t <= y_max + 1e-9 {
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#e5e5e5"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            y(t),
            W - RIGHT,
            LEFT - 6.0,
            y(t) + 4.0,
            fmt_num(t)
        );
        t += y_step;
    }
    let mut t = 0.0;
    while t <= x_max + 1e-9 {
        let _ = writeln!(
            o,
            r##"<line x1="{0:.1}" y1="{1}" x2="{0:.1}" y2="{2}" stroke="#eeeeee"/><text x="{0:.1}" y="{3}" text-anchor="middle">{4}</text>"##,
            x(t),
            TOP,
            TOP + ph,
            TOP + ph + 18.0,
            fmt_num(t)
        );
        t += x_step;
    }
    let mut t = 0.0;
    while t <= e_max + 1e-9 {
        let _ = writeln!(
            o,
            r##"<text x="{0}" y="{1:.1}" fill="#777">{2}%</text>"##,
            W - RIGHT + 6.0,
            ye(t) + 4.0,
            fmt_num(t)
        );
        t += e_step;
    }
    let _ = writeln!(
        o,
        r##"<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##
    );
    let _ = writeln!(
        o,
        r#"<text x="{}" y="{}" text-anchor="middle">target rate (req/s)</text>"#,
        LEFT + pw / 2.0,
        H - 18.0
    );
    let _ = writeln!(
        o,
        r#"<text transform="translate(18 {}) rotate(-90)" text-anchor="middle">corrected latency (ms)</text>"#,
        TOP + ph / 2.0
    );
    let _ = writeln!(
        o,
        r##"<text transform="translate({} {}) rotate(90)" text-anchor="middle" fill="#777">error rate</text>"##,
        W - 14.0,
        TOP + ph / 2.0
    );
    if let (Some(ms), Some(s)) = (slo_ms, slo) {
        let _ = writeln!(
            o,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#2a9d3a" stroke-width="1.5" stroke-dasharray="8 4"/><text x="{2}" y="{3:.1}" fill="#2a9d3a">SLO {4} {5} ms</text>"##,
            y(ms),
            W - RIGHT,
            LEFT + 6.0,
            y(ms) - 5.0,
            s.label,
            fmt_num(ms)
        );
    }
    // Name, colour, extra stroke attributes, and the point's y.
    type Series<'a> = (&'a str, &'a str, &'a str, &'a dyn Fn(&Step) -> f64);
    let series: [Series; 4] = [
        ("p50", "#1f77b4", "", &|s: &Step| y(s.latency.p50)),
        ("p99", "#ff7f0e", "", &|s: &Step| y(s.latency.p99)),
        ("p99.9", "#d62728", "", &|s: &Step| y(s.latency.p999)),
        (
            "errors",
            "#777777",
            r#" stroke-dasharray="3 3""#,
            &|s: &Step| ye(s.error_rate * 100.0),
        ),
    ];
    for (i, (name, color, dash, f)) in series.iter().enumerate() {
        let pts: Vec<String> = steps
            .iter()
            .map(|s| format!("{:.1},{:.1}", x(s.rate), f(s)))
            .collect();
        let _ = writeln!(
            o,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
            pts.join(" ")
        );
        for s in &steps {
            let _ = writeln!(
                o,
                r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"#,
                x(s.rate),
                f(s)
            );
        }
        // Legend, top left inside the plot.
        let lx = LEFT + 10.0 + i as f64 * 90.0;
        let _ = writeln!(
            o,
            r#"<line x1="{lx}" y1="{0}" x2="{1}" y2="{0}" stroke="{color}" stroke-width="2"{dash}/><text x="{2}" y="{3}">{name}</text>"#,
            TOP + 14.0,
            lx + 22.0,
            lx + 27.0,
            TOP + 18.0
        );
    }
    o.push_str("</svg>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::histo::Percentiles;

    #[test]
    fn nice_axes() {
        assert_eq!(nice(23.0), (25.0, 5.0));
        assert!((nice(0.0).0 - 1.0).abs() < 1e-9);
        assert_eq!(nice(10_500.0), (12_500.0, 2500.0));
    }

    #[test]
    fn chart_is_wellformed() {
        let step = |rate: f64, p99: f64| Step {
            rate,
            achieved: rate,
            requests: 10,
            latency: Percentiles {
                p50: p99 / 4.0,
                p90: p99 / 2.0,
                p99,
                p999: p99 * 2.0,
                max: p99 * 3.0,
                mean: 1.0,
            },
            raw_p99: p99,
            lag_p99: 0.0,
            error_rate: 0.01,
            unsent: 0,
            pass: p99 <= 25.0,
            verdict: String::new(),
        };
        let slo = crate::args::parse_slo("p99=25ms").unwrap();
        let svg = chart(&[step(2000.0, 30.0), step(1000.0, 5.0)], Some(slo), "a <b>");
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("SLO p99 25 ms") && svg.contains("a &lt;b&gt;"));
        assert_eq!(svg.matches("<polyline").count(), 4);
    }
}
