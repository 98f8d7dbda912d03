//! Line charts drawn as SVG on the server (plotters), inlined in the page: no script, nothing
//! fetched, and the page's CSP needs no exception for them.

use chrono::{DateTime, Utc};
use plotters::prelude::*;

/// One line: its name (in the legend) and its points.
pub struct Line {
    pub name: String,
    pub points: Vec<(DateTime<Utc>, f64)>,
}

/// Colours with at least 3:1 contrast on white, told apart by more than hue alone.
const COLOURS: [RGBColor; 6] = [
    RGBColor(11, 87, 208),
    RGBColor(164, 22, 26),
    RGBColor(17, 99, 41),
    RGBColor(138, 75, 0),
    RGBColor(106, 27, 154),
    RGBColor(0, 105, 120),
];

/// A chart of `lines` over time, titled `title`, with `unit` on the y axis; its text
/// alternative (`aria-label`) says what it shows. `None` when there is nothing to draw.
pub fn lines(title: &str, unit: &str, lines: &[Line]) -> Option<String> {
    let all: Vec<&(DateTime<Utc>, f64)> = lines.iter().flat_map(|l| &l.points).collect();
    let (t0, t1) = (
        all.iter().map(|p| p.0).min()?,
        all.iter().map(|p| p.0).max()?,
    );
    let t1 = if t1 == t0 {
        t0 + chrono::Duration::minutes(1)
    } else {
        t1
    };
    let ymax = all.iter().map(|p| p.1).fold(0.0_f64, f64::max);
    let ymax = if ymax <= 0.0 { 1.0 } else { ymax * 1.1 };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (640, 260)).into_drawing_area();
        root.fill(&WHITE).ok()?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(28)
            .y_label_area_size(64)
            .build_cartesian_2d(t0..t1, 0.0..ymax)
            .ok()?;
        let span = t1 - t0;
        let format = if span > chrono::Duration::days(2) {
            "%m-%d"
        } else {
            "%H:%M"
        };
        chart
            .configure_mesh()
            .x_labels(6)
            .y_labels(5)
            .x_label_formatter(&|t| t.format(format).to_string())
            .y_desc(unit)
            .light_line_style(RGBColor(235, 237, 241))
            .draw()
            .ok()?;
        for (i, line) in lines.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            chart
                .draw_series(LineSeries::new(
                    line.points.iter().copied(),
                    colour.stroke_width(2),
                ))
                .ok()?
                .label(line.name.clone())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(3))
                });
        }
        if lines.len() > 1 {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(201, 206, 216))
                .position(SeriesLabelPosition::UpperLeft)
                .draw()
                .ok()?;
        }
        root.present().ok()?;
    }
    let names: Vec<&str> = lines.iter().map(|l| l.name.as_str()).collect();
    let label = format!(
        "{title}: {} from {} to {} UTC, up to {ymax:.3} {unit}",
        names.join(", "),
        t0.format("%Y-%m-%d %H:%M"),
        t1.format("%Y-%m-%d %H:%M")
    );
    let label = maud::html! { (label) }.into_string();
    Some(svg.replacen(
        "<svg ",
        &format!("<svg role=\"img\" aria-label=\"{label}\" "),
        1,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_svg_with_a_text_alternative_and_no_inline_style() {
        let t = |m: i64| DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::minutes(m);
        let svg = lines(
            "Cost",
            "USD",
            &[
                Line {
                    name: "a<b>".into(),
                    points: vec![(t(0), 1.0), (t(1), 2.0)],
                },
                Line {
                    name: "c".into(),
                    points: vec![(t(0), 0.5)],
                },
            ],
        )
        .expect("drawn");
        assert!(
            svg.starts_with("<svg role=\"img\" aria-label=\"Cost: a&lt;b&gt;, c"),
            "{}",
            &svg[..200]
        );
        assert!(
            svg.contains("<polyline") || svg.contains("<path"),
            "a line is drawn"
        );
        // The dashboard's CSP has no 'unsafe-inline' for styles.
        assert!(!svg.contains("style="), "no inline style attributes");
        assert!(lines("Cost", "USD", &[]).is_none());
    }
}
