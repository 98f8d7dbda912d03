//! Anomalies: open and recent alerts with the series around each, acknowledgement, and the
//! models the circuit breaker has taken out.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::{DateTime, Duration, Utc};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::Value;

use super::{Peer, Signed, form_session, notice_of, or_reason, param};
use crate::Dashboard;
use crate::call::{enc, query};
use crate::chart::{self, Line};
use crate::view::{self, Notice, csrf, needs, svg, text, when};

/// Alerts whose series the page draws.
const DRAWN: usize = 6;

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
    render(&d, &s, &q, None).await.into_response()
}

/// The series around an alert: from an hour before it was raised to an hour after it ended.
async fn around(d: &Dashboard, s: &Signed, a: &Value) -> Option<String> {
    let raised: DateTime<Utc> = a["raised_at"].as_str()?.parse().ok()?;
    let end = a["resolved_at"]
        .as_str()
        .and_then(|t| t.parse::<DateTime<Utc>>().ok())
        .unwrap_or(raised);
    let path = format!(
        "/v1/series/{}/scores{}",
        enc(a["series"].as_str()?),
        query(&[
            ("from", &(raised - Duration::hours(1)).to_rfc3339()),
            ("to", &(end + Duration::hours(1)).to_rfc3339()),
            ("limit", "2000"),
        ])
    );
    let r = s.get(d, &path).await.ok()?;
    let points: Vec<(DateTime<Utc>, f64)> = r["points"]
        .as_array()?
        .iter()
        .filter_map(|p| Some((p["at"].as_str()?.parse().ok()?, p["value"].as_f64()?)))
        .collect();
    chart::lines(
        &format!("{} around alert {}", text(&a["series"]), text(&a["id"])),
        "value",
        &[Line {
            name: text(&a["series"]),
            points,
        }],
    )
}

fn alert_row(s: &Signed, a: &Value, can: bool) -> Markup {
    let open = a["status"].as_str() == Some("open");
    let acked = !a["acknowledged_at"].is_null();
    html! {
        tr {
            td { code { (text(&a["id"])) } }
            td { (text(&a["severity"])) }
            td { (text(&a["series"])) }
            td.num { (text(&a["value"])) }
            td { (text(&a["expected_low"])) " to " (text(&a["expected_high"])) }
            td { (when(&a["raised_at"])) }
            td { @if open { strong.status-bad { "open" } } @else { "resolved " (when(&a["resolved_at"])) " (" (text(&a["resolve_reason"])) ")" } }
            td { (text(&a["action"])) }
            td {
                @if acked { "by " (text(&a["acknowledged_by"])) }
                @else {
                    form.inline method="post" action=(format!("/anomalies/{}/acknowledge", enc(a["id"].as_str().unwrap_or("")))) {
                        (csrf(s))
                        button type="submit" disabled[!can] aria-label=(format!("Acknowledge alert {}", text(&a["id"]))) { "Acknowledge" }
                    }
                }
            }
        }
    }
}

pub(crate) async fn render(
    d: &Dashboard,
    s: &Signed,
    q: &HashMap<String, String>,
    notice: Option<Notice>,
) -> Markup {
    let (status, project) = (param(q, "status"), param(q, "project"));
    let (alerts, breakers) = tokio::join!(
        s.get(
            d,
            format!(
                "/v1/anomalies{}",
                query(&[("status", status), ("project", project), ("limit", "100")])
            )
        ),
        s.get(d, format!("/v1/breakers{}", query(&[("project", project)]))),
    );
    let list: Vec<Value> = alerts
        .as_ref()
        .ok()
        .and_then(|a| a["alerts"].as_array().cloned())
        .unwrap_or_default();
    let charts: Vec<Option<String>> =
        futures_util::future::join_all(list.iter().take(DRAWN).map(|a| around(d, s, a))).await;
    let can = s.can("manage_alerts");
    let content = html! {
        form.row method="get" action="/anomalies" aria-label="Filter" {
            label { "Status"
                select name="status" {
                    option value="" selected[status.is_empty()] { "all" }
                    option value="open" selected[status == "open"] { "open" }
                    option value="resolved" selected[status == "resolved"] { "resolved" }
                }
            }
            label { "Project" input name="project" value=(project) maxlength="128" placeholder="all"; }
            button type="submit" { "Apply" }
        }
        section aria-labelledby="brk-h" {
            h2 id="brk-h" { "Circuit breakers" }
            div id="breakers" data-live {
                @match or_reason(&breakers) {
                    Ok(b) => {
                        @let open: Vec<(&String, &Value)> = b["breakers"].as_object().map(|m| m.iter().collect()).unwrap_or_default();
                        @if open.is_empty() { p.status-ok { "Every model's circuit is closed: the router may use them all." } }
                        @else {
                            table {
                                caption.hint { "Models the router skips (open) or sends only probe calls (half-open)" }
                                thead { tr { th scope="col" { "Model" } th scope="col" { "State" } th scope="col" { "Since" } th scope="col" { "Why" } } }
                                tbody { @for (m, x) in open { tr { td { (m) } td { strong.status-bad { (text(&x["state"])) } } td { (when(&x["since"])) } td { (text(&x["reason"])) } } } }
                            }
                        }
                        @let lowered: Vec<(&String, &Value)> = b["lowered_limits"].as_object().map(|m| m.iter().collect()).unwrap_or_default();
                        @if !lowered.is_empty() {
                            table {
                                caption.hint { "Budgets a cost alert lowered until it is acknowledged" }
                                thead { tr { th scope="col" { "Project" } th.num scope="col" { "Factor" } th scope="col" { "Alert" } th scope="col" { "Since" } } }
                                tbody { @for (p, x) in lowered { tr { td { (p) } td.num { (text(&x["factor"])) } td { code { (text(&x["alert_id"])) } } td { (when(&x["since"])) } } } }
                            }
                        }
                    }
                    Err(m) => (m),
                }
            }
        }
        section aria-labelledby="al-h" {
            h2 id="al-h" { "Alerts" }
            (needs(s, "manage_alerts"))
            div id="alerts" data-live {
                @match or_reason(&alerts) {
                    Ok(_) => {
                        @if list.is_empty() { p { "No alert matches." } }
                        @else {
                            table {
                                thead { tr {
                                    th scope="col" { "Alert" } th scope="col" { "Severity" } th scope="col" { "Series" } th.num scope="col" { "Value" }
                                    th scope="col" { "Expected" } th scope="col" { "Raised" } th scope="col" { "Status" } th scope="col" { "Action" } th scope="col" { "Acknowledged" }
                                } }
                                tbody { @for a in &list { (alert_row(s, a, can)) } }
                            }
                            div.charts { @for c in charts.iter().flatten() { figure.chart { (svg(c)) } } }
                        }
                    }
                    Err(m) => (m),
                }
            }
        }
    };
    view::page(s, "/anomalies", "Anomalies", notice.as_ref(), content)
}

#[derive(Deserialize)]
pub struct Ack {
    #[serde(default)]
    csrf: String,
}

/// `POST /anomalies/{id}/acknowledge`.
pub async fn acknowledge(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    peer: Peer,
    Path(id): Path<String>,
    Form(f): Form<Ack>,
) -> Response {
    let s = match form_session(&d, &headers, peer, &f.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let path = format!("/v1/anomalies/{}/acknowledge", enc(&id));
    match s.send(&d, Method::POST, &path, None).await {
        Ok(_) => Redirect::to("/anomalies").into_response(),
        Err(e) => view::answer(
            e.status,
            render(&d, &s, &HashMap::new(), Some(notice_of(&e))).await,
        ),
    }
}
