//! A small SVG chart: accuracy against k (or tokens) on a log2 axis, one line per method,
//! markers for single points (adaptive rules), a dashed line for greedy. Kept by hand: one
//! kind of chart, written as SVG text in ~200 lines, with no font files or rasteriser to
//! ship (plotting crates need a font backend to lay out their text).

use std::fmt::Write;

pub struct Series {
    pub name: String,
    pub color: &'static str,
    pub points: Vec<(f64, f64)>,
    /// Joined by a line (a method over k), or markers alone (a rule's single operating point).
    pub line: bool,
}

pub struct Chart {
    pub title: String,
    pub y_label: String,
    pub x_label: String,
    /// Where the x axis is labelled, and with what.
    pub x_ticks: Vec<(f64, String)>,
    pub series: Vec<Series>,
    /// A horizontal reference line (greedy), if any.
    pub baseline: Option<(String, f64)>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

impl Chart {
    pub fn svg(&self) -> String {
        let (w, h) = (760.0, 460.0);
        let (l, r, t, b) = (70.0, 190.0, 50.0, 60.0);
        let (pw, ph) = (w - l - r, h - t - b);
        let xs: Vec<f64> = {
            let mut v: Vec<f64> = self
                .series
                .iter()
                .flat_map(|s| s.points.iter().map(|p| p.0))
                .chain(self.x_ticks.iter().map(|t| t.0))
                .filter(|x| *x > 0.0)
                .collect();
            v.sort_by(f64::total_cmp);
            v.dedup();
            v
        };
        let values: Vec<f64> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .chain(self.baseline.iter().map(|b| b.1))
            .collect();
        let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (mut y0, mut y1) = ((lo - 0.05).max(0.0), (hi + 0.05).min(1.0));
        if y1 <= y0 || !y0.is_finite() || !y1.is_finite() {
            (y0, y1) = (0.0, 1.0);
        }
        // Round the range to tenths for readable ticks.
        y0 = (y0 * 20.0).floor() / 20.0;
        y1 = (y1 * 20.0).ceil() / 20.0;
        let xmin = xs.first().map_or(1.0, |&k| k.log2());
        let xmax = xs.last().map_or(2.0, |&k| k.log2()).max(xmin + 1.0);
        let x = |k: f64| l + (k.max(f64::MIN_POSITIVE).log2() - xmin) / (xmax - xmin) * pw;
        let y = |v: f64| t + (1.0 - (v - y0) / (y1 - y0)) * ph;
        let mut s = String::new();
        let _ = write!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="Helvetica, Arial, sans-serif">"#
        );
        let _ = write!(s, r#"<rect width="{w}" height="{h}" fill="white"/>"#);
        let _ = write!(
            s,
            r#"<text x="{}" y="28" font-size="17" font-weight="bold">{}</text>"#,
            l,
            esc(&self.title)
        );
        // Grid and y ticks.
        let steps = (((y1 - y0) / 0.05).round() as usize).max(1);
        let every = if steps > 10 { 2 } else { 1 };
        for i in (0..=steps).step_by(every) {
            let v = y0 + (y1 - y0) * i as f64 / steps as f64;
            let yy = y(v);
            let _ = write!(
                s,
                r##"<line x1="{l}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#e6e6e6"/>"##,
                l + pw
            );
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end" fill="#444">{:.0}%</text>"##,
                l - 8.0,
                yy + 4.0,
                v * 100.0
            );
        }
        for (k, label) in &self.x_ticks {
            let xx = x(*k);
            let _ = write!(
                s,
                r##"<line x1="{xx:.1}" y1="{t}" x2="{xx:.1}" y2="{:.1}" stroke="#f0f0f0"/>"##,
                t + ph
            );
            let _ = write!(
                s,
                r##"<text x="{xx:.1}" y="{:.1}" font-size="12" text-anchor="middle" fill="#444">{}</text>"##,
                t + ph + 18.0,
                esc(label)
            );
        }
        let _ = write!(
            s,
            r##"<rect x="{l}" y="{t}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>"##
        );
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" font-size="13" text-anchor="middle" fill="#222">{}</text>"##,
            l + pw / 2.0,
            h - 16.0,
            esc(&self.x_label)
        );
        let _ = write!(
            s,
            r##"<text transform="translate(20 {:.1}) rotate(-90)" font-size="13" text-anchor="middle" fill="#222">{}</text>"##,
            t + ph / 2.0,
            esc(&self.y_label)
        );
        let mut legend_y = t + 10.0;
        if let Some((name, v)) = &self.baseline {
            let yy = y(*v);
            let _ = write!(
                s,
                r##"<line x1="{l}" y1="{yy:.1}" x2="{:.1}" y2="{yy:.1}" stroke="#777" stroke-width="2" stroke-dasharray="6 5"/>"##,
                l + pw
            );
            let _ = write!(
                s,
                r##"<line x1="{:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="#777" stroke-width="2" stroke-dasharray="6 5"/>"##,
                l + pw + 16.0,
                l + pw + 44.0
            );
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{:.1}" font-size="13" fill="#333">{} {:.1}%</text>"##,
                l + pw + 50.0,
                legend_y + 4.0,
                esc(name),
                v * 100.0
            );
            legend_y += 24.0;
        }
        for se in &self.series {
            let pts: Vec<String> = se
                .points
                .iter()
                .map(|&(k, v)| format!("{:.1},{:.1}", x(k), y(v)))
                .collect();
            if se.line {
                let _ = write!(
                    s,
                    r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2.5"/>"#,
                    pts.join(" "),
                    se.color
                );
            }
            let radius = if se.line { 4.0 } else { 6.5 };
            for &(k, v) in &se.points {
                let _ = write!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="{radius}" fill="{}"/>"#,
                    x(k),
                    y(v),
                    se.color
                );
            }
            if let Some(&(k, v)) = se.points.last() {
                let _ = write!(
                    s,
                    r#"<text x="{:.1}" y="{:.1}" font-size="11" fill="{}">{:.1}%</text>"#,
                    x(k) + 7.0,
                    y(v) - 7.0,
                    se.color,
                    v * 100.0
                );
            }
            if se.line {
                let _ = write!(
                    s,
                    r#"<line x1="{:.1}" y1="{legend_y:.1}" x2="{:.1}" y2="{legend_y:.1}" stroke="{}" stroke-width="3"/>"#,
                    l + pw + 16.0,
                    l + pw + 44.0,
                    se.color
                );
            } else {
                let _ = write!(
                    s,
                    r#"<circle cx="{:.1}" cy="{legend_y:.1}" r="6" fill="{}"/>"#,
                    l + pw + 30.0,
                    se.color
                );
            }
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{:.1}" font-size="13" fill="#333">{}</text>"##,
                l + pw + 50.0,
                legend_y + 4.0,
                esc(&se.name)
            );
            legend_y += 24.0;
        }
        s.push_str("</svg>\n");
        s
    }
}
