//! Budgets: each project's spend and reservations against its limit, its status, the history
//! of threshold crossings; admins set a budget.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Peer, Signed, form_session, notice_of, or_reason, param};
use crate::Dashboard;
use crate::call::{enc, query};
use crate::view::{self, Notice, csrf, needs, number, text, usd, when};

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

fn status_class(status: &str) -> &'static str {
    match status {
        "ok" => "status-ok",
        "warning" => "status-warn",
        _ => "status-bad",
    }
}

/// The share of `limit` spent and reserved, in steps of ten (a CSS width class; no inline style).
fn bar(b: &Value) -> Markup {
    let used = number(&b["spent"]).unwrap_or(0.0) + number(&b["reserved"]).unwrap_or(0.0);
    let limit = number(&b["limit"]).unwrap_or(0.0);
    let share = if limit > 0.0 {
        (used / limit).clamp(0.0, 1.0)
    } else {
        0.0
    };
    let step = (share * 10.0).round() as u32 * 10;
    html! {
        div.bar role="meter" aria-valuemin="0" aria-valuemax="100" aria-valuenow=(format!("{:.0}", share * 100.0))
            aria-label=(format!("{} used", text(&b["project"]))) {
            span class=(format!("w{step}")) {}
        }
    }
}

pub(crate) async fn render(
    d: &Dashboard,
    s: &Signed,
    q: &HashMap<String, String>,
    notice: Option<Notice>,
) -> Markup {
    let period = param(q, "period");
    let history_path = format!(
        "/v1/audit{}",
        query(&[("action", "budget.threshold_crossed"), ("limit", "20")])
    );
    let (budgets, history) = tokio::join!(
        s.get(
            d,
            format!(
                "/v1/budgets{}",
                query(&[("period", period), ("limit", "1000")])
            )
        ),
        async {
            // Threshold crossings are audit entries; a role without read_audit is not shown them.
            if s.can("read_audit") {
                Some(s.get(d, history_path).await)
            } else {
                None
            }
        },
    );
    let can_set = s.can("manage_budgets");
    let content = html! {
        form.row method="get" action="/budgets" {
            label { "Month (YYYY-MM)" input name="period" value=(period) pattern="[0-9]{4}-[0-9]{2}" placeholder="this month"; }
            button type="submit" { "Show" }
        }
        section aria-labelledby="list-h" {
            h2 id="list-h" { "Budgets" }
            div id="budget-list" data-live {
                @match or_reason(&budgets) {
                    Ok(b) => {
                        p.hint { "Period " (text(&b["period"])) ". Available is the limit less spend and open reservations." }
                        table {
                            thead { tr {
                                th scope="col" { "Project" } th.num scope="col" { "Spent" } th.num scope="col" { "Reserved" }
                                th.num scope="col" { "Limit" } th scope="col" { "Used" } th.num scope="col" { "Available" }
                                th scope="col" { "Status" } th scope="col" { "When spent" } th.num scope="col" { "Calls" }
                            } }
                            tbody {
                                @for b in b["budgets"].as_array().into_iter().flatten() {
                                    tr {
                                        td { (text(&b["project"])) }
                                        td.num { (usd(&b["spent"])) }
                                        td.num { (usd(&b["reserved"])) }
                                        td.num { (usd(&b["limit"])) }
                                        td { (bar(b)) }
                                        td.num { (usd(&b["available"])) }
                                        td { span class=(status_class(b["status"].as_str().unwrap_or(""))) { (text(&b["status"])) } }
                                        td { (text(&b["on_exceeded"])) @if let Some(m) = b["fallback_model"].as_str() { " → " code { (m) } } }
                                        td.num { (text(&b["calls"])) }
                                    }
                                }
                            }
                        }
                    }
                    Err(m) => (m),
                }
            }
        }
        section aria-labelledby="hist-h" {
            h2 id="hist-h" { "Threshold history" }
            div id="threshold-history" data-live {
                @match history.as_ref().map(or_reason) {
                    None => p.hint { "The threshold history comes from the audit log: your role (" (s.role) ") lacks " code { "read_audit" } "." },
                    Some(Ok(h)) => {
                        @let rows: Vec<&Value> = h["entries"].as_array().into_iter().flatten().collect();
                        @if rows.is_empty() { p { "No threshold was crossed yet." } }
                        @else {
                            table {
                                thead { tr { th scope="col" { "When" } th scope="col" { "Project" } th scope="col" { "What" } } }
                                tbody {
                                    @for r in rows {
                                        tr {
                                            td { (when(&r["occurred_at"])) }
                                            td { (text(&r["resource"])) }
                                            td { (text(&r["reason"])) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    Some(Err(m)) => (m),
                }
            }
        }
        section aria-labelledby="set-h" {
            h2 id="set-h" { "Set a budget" }
            (needs(s, "manage_budgets"))
            form.row id="set-budget" method="post" action="/budgets" {
                (csrf(s))
                label { "Project" input name="project" required maxlength="128" disabled[!can_set]; }
                label { "Monthly limit (USD)" input name="monthly_limit" required inputmode="decimal" placeholder="100.00" disabled[!can_set]; }
                label { "Warn at (%)" input name="warn_at_percent" type="number" min="1" max="100" value="80" disabled[!can_set]; }
                label { "When spent"
                    select name="on_exceeded" disabled[!can_set] {
                        option value="fallback_to_local" { "fall back to a local model" }
                        option value="block" { "block" }
                    }
                }
                label { "Fallback model" input name="fallback_model" maxlength="200" placeholder="the catalog's local model" disabled[!can_set]; }
                button type="submit" disabled[!can_set] { "Set budget" }
            }
        }
    };
    view::page(s, "/budgets", "Budgets", notice.as_ref(), content)
}

#[derive(Deserialize)]
pub struct SetBudget {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    project: String,
    #[serde(default)]
    monthly_limit: String,
    #[serde(default)]
    warn_at_percent: String,
    #[serde(default)]
    on_exceeded: String,
    #[serde(default)]
    fallback_model: String,
}

/// `POST /budgets`: `PUT /v1/projects/{project}/budget` as the member.
pub async fn set(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    peer: Peer,
    Form(f): Form<SetBudget>,
) -> Response {
    let s = match form_session(&d, &headers, peer, &f.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let mut body = json!({ "monthly_limit": f.monthly_limit.trim() });
    if let Ok(w) = f.warn_at_percent.trim().parse::<u64>() {
        body["warn_at_percent"] = json!(w);
    } else if !f.warn_at_percent.trim().is_empty() {
        body["warn_at_percent"] = json!(f.warn_at_percent.trim());
    }
    if !f.on_exceeded.is_empty() {
        body["on_exceeded"] = json!(f.on_exceeded);
    }
    if !f.fallback_model.trim().is_empty() {
        body["fallback_model"] = json!(f.fallback_model.trim());
    }
    let path = format!("/v1/projects/{}/budget", enc(f.project.trim()));
    match s.send(&d, Method::PUT, &path, Some(&body)).await {
        Ok(_) => Redirect::to("/budgets").into_response(),
        Err(e) => {
            let page = render(&d, &s, &HashMap::new(), Some(notice_of(&e))).await;
            view::answer(e.status, page)
        }
    }
}
