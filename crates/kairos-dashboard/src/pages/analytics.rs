//! Model analytics: cost, calls, tokens, latency percentiles and error rate over time, per
//! model and per project, in minute, hour or day buckets over a chosen range.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Duration, Utc};
use maud::html;
use serde_json::Value;

use super::{Peer, Signed, or_reason, param};
use crate::Dashboard;
use crate::call::query;
use crate::chart::{self, Line};
use crate::view::{self, number, svg, text, usd, when};

/// Lines a chart draws at most (the last one sums the models not shown).
const MAX_LINES: usize = 6;

/// The ranges the picker offers: value, label, length.
const RANGES: [(&str, &str, i64); 5] = [
    ("1h", "last hour", 1),
    ("24h", "last 24 hours", 24),
    ("7d", "last 7 days", 24 * 7),
    ("30d", "last 30 days", 24 * 30),
    ("90d", "last 90 days", 24 * 90),
];

/// The bucket that keeps a range under the API's 10,000-bucket answer.
fn default_bucket(hours: i64) -> &'static str {
    match hours {
        h if h <= 6 => "minute",
        h if h <= 24 * 14 => "hour",
        _ => "day",
    }
}

fn selected(v: &str, current: &str) -> bool {
    v == current
}

pub async fn page(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    peer: Peer,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = match Signed::load(&d, &headers, peer).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let range = RANGES
        .iter()
        .find(|r| r.0 == param(&q, "range"))
        .copied()
        .unwrap_or(RANGES[1]);
    let bucket = match param(&q, "bucket") {
        b @ ("minute" | "hour" | "day") => b,
        _ => default_bucket(range.2),
    };
    let (project, model) = (param(&q, "project"), param(&q, "model"));
    let now = d.state.clock.now();
    let from = now - Duration::hours(range.2);
    let path = format!(
        "/v1/analytics/models{}",
        query(&[
            ("project", project),
            ("model", model),
            ("bucket", bucket),
            ("from", &from.to_rfc3339()),
            ("to", &now.to_rfc3339()),
        ])
    );
    let answer = s.get(&d, &path).await;
    let items: Vec<&Value> = answer
        .as_ref()
        .ok()
        .and_then(|a| a["items"].as_array())
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    // The charts show the models that cost most (then the busiest): the first five, and the
    // rest summed as one line, so a costly model is never left out for its name.
    let mut totals: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for i in &items {
        let t = totals.entry(text(&i["model"])).or_default();
        t.0 += number(&i["cost"]).unwrap_or(0.0);
        t.1 += number(&i["calls"]).unwrap_or(0.0);
    }
    let mut ranked: Vec<(String, (f64, f64))> = totals.into_iter().collect();
    ranked.sort_by(|a, b| {
        b.1.0
            .total_cmp(&a.1.0)
            .then(b.1.1.total_cmp(&a.1.1))
            .then(a.0.cmp(&b.0))
    });
    let ranked: Vec<String> = ranked.into_iter().map(|(m, _)| m).collect();
    let shown = if ranked.len() > MAX_LINES {
        MAX_LINES - 1
    } else {
        ranked.len()
    };
    let other = format!("{} other models", ranked.len() - shown);
    // The rank of each model drawn on its own line.
    let rank: HashMap<&str, usize> = ranked[..shown]
        .iter()
        .enumerate()
        .map(|(k, m)| (m.as_str(), k))
        .collect();
    let line_of = |model: String| -> String {
        if rank.contains_key(model.as_str()) {
            model
        } else {
            other.clone()
        }
    };
    // Counts add up across projects and models; percentiles do not, so latency lines are per
    // model and project.
    let sum_by_model = |f: &dyn Fn(&Value) -> f64| -> Vec<Line> {
        let mut m: BTreeMap<String, BTreeMap<DateTime<Utc>, f64>> = BTreeMap::new();
        for i in &items {
            let Some(t) = i["start"]
                .as_str()
                .and_then(|t| t.parse::<DateTime<Utc>>().ok())
            else {
                continue;
            };
            *m.entry(line_of(text(&i["model"])))
                .or_default()
                .entry(t)
                .or_default() += f(i);
        }
        let order = ranked[..shown].iter().chain(std::iter::once(&other));
        order
            .filter_map(|name| {
                m.remove(name).map(|pts| Line {
                    name: name.clone(),
                    points: pts.into_iter().collect(),
                })
            })
            .collect()
    };
    let cost = sum_by_model(&|i| number(&i["cost"]).unwrap_or(0.0));
    let calls = sum_by_model(&|i| number(&i["calls"]).unwrap_or(0.0));
    let tokens = sum_by_model(&|i| {
        number(&i["input_tokens"]).unwrap_or(0.0) + number(&i["output_tokens"]).unwrap_or(0.0)
    });
    let errors = sum_by_model(&|i| number(&i["errors"]).unwrap_or(0.0));
    let error_rate: Vec<Line> = errors
        .iter()
        .zip(&calls)
        .map(|(e, c)| Line {
            name: e.name.clone(),
            points: e
                .points
                .iter()
                .zip(&c.points)
                .map(|((t, e), (_, c))| (*t, if *c > 0.0 { e / c } else { 0.0 }))
                .collect(),
        })
        .collect();
    // Latency lines of the models shown, the busiest (model, project) first within a model.
    // (model rank, line name) -> (calls, points)
    type Points = Vec<(DateTime<Utc>, f64)>;
    let mut lat: BTreeMap<(usize, String), (f64, Points)> = BTreeMap::new();
    for i in &items {
        let model = text(&i["model"]);
        let Some(&rank) = rank.get(model.as_str()) else {
            continue;
        };
        if let (Some(t), Some(p95)) = (
            i["start"]
                .as_str()
                .and_then(|t| t.parse::<DateTime<Utc>>().ok()),
            number(&i["latency_ms"]["p95"]),
        ) {
            let line = lat
                .entry((rank, format!("{model} · {}", text(&i["project"]))))
                .or_default();
            line.0 += number(&i["calls"]).unwrap_or(0.0);
            line.1.push((t, p95));
        }
    }
    let mut lat: Vec<_> = lat.into_iter().collect();
    lat.sort_by(|a, b| a.0.0.cmp(&b.0.0).then(b.1.0.total_cmp(&a.1.0)));
    let latency: Vec<Line> = lat
        .into_iter()
        .take(MAX_LINES)
        .map(|((_, name), (_, mut points))| {
            points.sort_by_key(|p| p.0);
            Line { name, points }
        })
        .collect();
    let charts = [
        chart::lines("Cost per bucket", "USD", &cost),
        chart::lines("Calls per bucket", "calls", &calls),
        chart::lines("Tokens per bucket (in + out)", "tokens", &tokens),
        chart::lines("Latency p95", "ms", &latency),
        chart::lines("Error rate", "share", &error_rate),
    ];
    let content = html! {
        form.row method="get" action="/analytics" aria-label="Filter" {
            label { "Project" input name="project" value=(project) maxlength="128" placeholder="all"; }
            label { "Model" input name="model" value=(model) maxlength="200" placeholder="all"; }
            label { "Range"
                select name="range" {
                    @for (v, l, _) in RANGES { option value=(v) selected[selected(v, range.0)] { (l) } }
                }
            }
            label { "Bucket"
                select name="bucket" {
                    @for b in ["minute", "hour", "day"] { option value=(b) selected[selected(b, bucket)] { (b) } }
                }
            }
            button type="submit" { "Apply" }
        }
        div id="analytics" data-live {
            @match or_reason(&answer) {
                Ok(_) => {
                    p.hint { (items.len()) " buckets from " (when(&Value::from(from.to_rfc3339()))) " to " (when(&Value::from(now.to_rfc3339()))) " UTC, by " (bucket) "." }
                    @if items.is_empty() { p { "No LLM calls in this range." } }
                    div.charts {
                        @for c in charts.iter().flatten() { figure.chart { (svg(c)) } }
                    }
                    h2 { "Buckets" }
                    table {
                        thead { tr {
                            th scope="col" { "Start" } th scope="col" { "Project" } th scope="col" { "Model" } th.num scope="col" { "Calls" }
                            th.num scope="col" { "Error rate" } th.num scope="col" { "Tokens in" } th.num scope="col" { "Tokens out" } th.num scope="col" { "Cost" }
                            th.num scope="col" { "p50 ms" } th.num scope="col" { "p95 ms" } th.num scope="col" { "p99 ms" }
                        } }
                        tbody {
                            @for i in items.iter().rev().take(200) {
                                tr {
                                    td { (when(&i["start"])) } td { (text(&i["project"])) } td { (text(&i["model"])) }
                                    td.num { (text(&i["calls"])) }
                                    td.num { (format!("{:.1}%", number(&i["error_rate"]).unwrap_or(0.0) * 100.0)) }
                                    td.num { (text(&i["input_tokens"])) } td.num { (text(&i["output_tokens"])) }
                                    td.num { (usd(&i["cost"])) }
                                    td.num { (format!("{:.0}", number(&i["latency_ms"]["p50"]).unwrap_or(0.0))) }
                                    td.num { (format!("{:.0}", number(&i["latency_ms"]["p95"]).unwrap_or(0.0))) }
                                    td.num { (format!("{:.0}", number(&i["latency_ms"]["p99"]).unwrap_or(0.0))) }
                                }
                            }
                        }
                    }
                    p.hint { "Latency percentiles come from mergeable sketches (relative error 1%)." }
                }
                Err(m) => (m),
            }
        }
    };
    view::page(&s, "/analytics", "Model analytics", None, content).into_response()
}
