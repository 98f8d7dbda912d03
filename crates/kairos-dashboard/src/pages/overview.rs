//! Overview: spend today and this month, open alerts, and how far each projection is behind.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{Datelike, TimeZone, Utc};
use maud::html;
use serde_json::Value;

use super::{Peer, Signed, or_reason};
use crate::Dashboard;
use crate::call::query;
use crate::view::{self, number, text, usd};

pub async fn page(State(d): State<Dashboard>, headers: HeaderMap, peer: Peer) -> Response {
    let s = match Signed::load(&d, &headers, peer).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let now = d.state.clock.now();
    let today = Utc
        .with_ymd_and_hms(now.year(), now.month(), now.day(), 0, 0, 0)
        .single()
        .unwrap_or(now);
    let month_start = Utc
        .with_ymd_and_hms(now.year(), now.month(), 1, 0, 0, 0)
        .single()
        .unwrap_or(today);
    // Today and the month from one read of the day buckets, so that the two agree (read from two
    // projections, one a little further than the other, today could exceed the month).
    let range = |from: chrono::DateTime<Utc>| {
        format!(
            "/v1/analytics/models{}",
            query(&[
                ("bucket", "day"),
                ("from", &from.to_rfc3339()),
                ("to", &now.to_rfc3339())
            ])
        )
    };
    let (days, alerts, projections) = tokio::join!(
        s.get(&d, range(month_start)),
        s.get(&d, "/v1/anomalies?status=open&limit=1000"),
        s.get(&d, "/v1/projections"),
    );
    let cost = |a: &Value, since: chrono::DateTime<Utc>| -> f64 {
        a["items"].as_array().map_or(0.0, |items| {
            items
                .iter()
                .filter(|i| {
                    i["start"]
                        .as_str()
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                        .is_some_and(|t| t >= since)
                })
                .filter_map(|i| number(&i["cost"]))
                .sum()
        })
    };
    let (day, month, month_label) = match &days {
        Ok(a) => (
            cost(a, today),
            cost(a, month_start),
            format!("Spend this month (UTC, {})", month_start.format("%Y-%m")),
        ),
        // More buckets than one answer holds (many projects and models): the month from the
        // budgets (in their time zone), today on its own.
        Err(_) => {
            let (budgets, today_only) =
                tokio::join!(s.get(&d, "/v1/budgets?limit=1000"), s.get(&d, range(today)));
            let month = budgets
                .as_ref()
                .ok()
                .and_then(|b| b["budgets"].as_array())
                .map_or(0.0, |bs| {
                    bs.iter().filter_map(|b| number(&b["spent"])).sum()
                });
            let period = budgets
                .as_ref()
                .ok()
                .map(|b| text(&b["period"]))
                .unwrap_or_default();
            (
                today_only.as_ref().map_or(0.0, |a| cost(a, today)),
                month,
                format!("Spend this month ({period}, from the budgets)"),
            )
        }
    };
    let open = alerts
        .as_ref()
        .ok()
        .and_then(|a| a["alerts"].as_array())
        .map(Vec::len);
    let content = html! {
        section aria-labelledby="now-h" {
            h2 id="now-h" { "Now" }
            div.cards id="cards" data-live {
                div.card { div.label { "Spend today (UTC)" } div.value id="spend-today" { (usd(&Value::from(day))) } }
                div.card { div.label { (month_label) } div.value id="spend-month" { (usd(&Value::from(month))) } }
                div.card {
                    div.label { "Open alerts" }
                    div.value id="open-alerts" { (open.map_or("–".to_owned(), |n| if n >= 1000 { "1000+".to_owned() } else { n.to_string() })) }
                    a href="/anomalies" { "See alerts" }
                }
            }
        }
        section aria-labelledby="lag-h" {
            h2 id="lag-h" { "Projections" }
            div id="projections" data-live {
                @match or_reason(&projections) {
                    Ok(p) => {
                        p { "The stream's last sequence: " strong { (text(&p["stream_last_seq"])) } }
                        table {
                            caption.hint { "Lag is how many stream messages a projection has yet to apply." }
                            thead { tr { th scope="col" { "Projection" } th.num scope="col" { "Last applied" } th.num scope="col" { "Lag" } th.num scope="col" { "Applied" } th.num scope="col" { "Dead-lettered" } th scope="col" { "Updated" } } }
                            tbody {
                                @for r in p["projections"].as_array().into_iter().flatten() {
                                    tr {
                                        td { (text(&r["projection"])) }
                                        td.num { (text(&r["last_seq"])) }
                                        td.num { (text(&r["lag"])) }
                                        td.num { (text(&r["events_applied"])) }
                                        td.num { (text(&r["dead_lettered"])) }
                                        td { (view::when(&r["updated_at"])) }
                                    }
                                }
                            }
                        }
                    }
                    Err(m) => (m),
                }
            }
        }
    };
    view::page(&s, "/", "Overview", None, content).into_response()
}
