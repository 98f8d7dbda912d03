//! Routing: recent decisions with their explanations, and a what-if form that replays a range
//! under another catalog (`POST /v1/route/simulate`).

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use chrono::Duration;
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Peer, Signed, form_session, notice_of, or_reason, param};
use crate::Dashboard;
use crate::call::{Failure, enc, query};
use crate::view::{self, Notice, csrf, needs, text, usd, when};

/// Decisions whose explanation the page shows in full.
const EXPLAINED: usize = 10;

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
    render(&d, &s, &q, None, None).await.into_response()
}

fn explanation(x: &Value) -> Markup {
    html! {
        details {
            summary { (text(&x["model"])) " for " (text(&x["project"])) " — " (text(&x["reason"])) }
            p { "Rule " code { (text(&x["rule"])) } ", outcome " strong { (text(&x["outcome"])) } ", estimated " (usd(&x["estimated_cost"])) ", catalog version " (text(&x["catalog_version"])) "." }
            @if !x["budget"].is_null() {
                p { "Budget " (text(&x["budget"]["period"])) ": spent " (usd(&x["budget"]["spent"])) " of " (usd(&x["budget"]["limit"])) ", reserved " (usd(&x["budget"]["reserved"])) "." }
            }
            @if !x["circuit"].is_null() { p { "Circuit: " code { (x["circuit"].to_string()) } } }
            table {
                caption.hint { "The models not chosen, and why" }
                thead { tr { th scope="col" { "Rank" } th scope="col" { "Model" } th.num scope="col" { "Estimate" } th scope="col" { "Why not" } } }
                tbody {
                    @for a in x["alternatives"].as_array().into_iter().flatten() {
                        tr { td { (text(&a["rank"])) } td { (text(&a["model"])) } td.num { (usd(&a["estimated_cost"])) } td { (text(&a["reason"])) } }
                    }
                }
            }
        }
    }
}

fn report(r: &Value) -> Markup {
    html! {
        table {
            caption { "What would have happened between " (when(&r["from"])) " and " (when(&r["to"])) }
            thead { tr {
                th scope="col" { "Project" } th.num scope="col" { "Calls" } th.num scope="col" { "Decisions" } th.num scope="col" { "Rerouted" }
                th.num scope="col" { "Refused" } th.num scope="col" { "Actual cost" } th.num scope="col" { "Simulated cost" } th.num scope="col" { "Delta" }
            } }
            tbody {
                @for p in r["projects"].as_array().into_iter().flatten() {
                    tr {
                        td { (text(&p["project"])) } td.num { (text(&p["calls"])) } td.num { (text(&p["decisions"])) }
                        td.num { (text(&p["rerouted"])) } td.num { (text(&p["refused"])) }
                        td.num { (usd(&p["cost_actual"])) } td.num { (usd(&p["cost_simulated"])) } td.num { (usd(&p["delta"])) }
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
    simulated: Option<(&WhatIf, &Value)>,
) -> Markup {
    let project = param(q, "project");
    let (list, catalog) = tokio::join!(
        s.get(
            d,
            format!(
                "/v1/route/decisions{}",
                query(&[("project", project), ("limit", "50")])
            )
        ),
        s.get(d, "/v1/catalog"),
    );
    let ids: Vec<String> = list
        .as_ref()
        .ok()
        .and_then(|l| l["decisions"].as_array())
        .map(|ds| {
            ds.iter()
                .take(EXPLAINED)
                .filter_map(|x| x["decision_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let explained: Vec<Result<Value, Failure>> = futures_util::future::join_all(
        ids.iter()
            .map(|id| s.get(d, format!("/v1/route/decisions/{}", enc(id)))),
    )
    .await;
    let now = d.state.clock.now();
    let (from, to, models) = match simulated {
        Some((w, _)) => (w.from.clone(), w.to.clone(), w.models.clone()),
        None => (
            (now - Duration::hours(24))
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string(),
            now.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            catalog
                .as_ref()
                .ok()
                .and_then(|c| serde_json::to_string_pretty(&c["models"]).ok())
                .unwrap_or_else(|| "[]".into()),
        ),
    };
    let can = s.can("route");
    let content = html! {
        form.row method="get" action="/routing" aria-label="Filter" {
            label { "Project" input name="project" value=(project) maxlength="128" placeholder="all"; }
            button type="submit" { "Apply" }
        }
        section aria-labelledby="dec-h" {
            h2 id="dec-h" { "Recent decisions" }
            div id="decisions" data-live {
                @match or_reason(&list) {
                    Ok(l) => {
                        @let ds = l["decisions"].as_array().cloned().unwrap_or_default();
                        @if ds.is_empty() { p { "No routing decision yet: agents ask " code { "POST /v1/route" } "." } }
                        @else {
                            table {
                                thead { tr { th scope="col" { "Decided" } th scope="col" { "Project" } th scope="col" { "Model" } th scope="col" { "Rule" } th scope="col" { "Outcome" } th.num scope="col" { "Estimate" } th.num scope="col" { "Reserved" } } }
                                tbody {
                                    @for x in &ds {
                                        tr { td { (when(&x["decided_at"])) } td { (text(&x["project"])) } td { (text(&x["model"])) } td { (text(&x["rule"])) } td { (text(&x["outcome"])) } td.num { (usd(&x["estimated_cost"])) } td.num { (usd(&x["reserved"])) } }
                                    }
                                }
                            }
                            h2 { "Explanations of the latest " (explained.len()) }
                            @for x in explained.iter().flatten() { (explanation(x)) }
                        }
                    }
                    Err(m) => (m),
                }
            }
        }
        section aria-labelledby="sim-h" {
            h2 id="sim-h" { "What if: another catalog" }
            p.hint { "Replays the recorded decisions and calls of a range (at most 31 days) under the catalog below: edit prices, windows or tiers, or remove a model." }
            (needs(s, "route"))
            form method="post" action="/routing/simulate" {
                (csrf(s))
                div.row {
                    label { "From (RFC 3339)" input name="from" value=(from) required disabled[!can]; }
                    label { "To (RFC 3339)" input name="to" value=(to) required disabled[!can]; }
                    label { "Project" input name="project" value=(project) placeholder="all" disabled[!can]; }
                }
                label { "Models (JSON, as GET /v1/catalog lists them)"
                    textarea name="models" rows="12" cols="100" spellcheck="false" disabled[!can] { (models) }
                }
                p { button type="submit" disabled[!can] { "Simulate" } }
            }
            @if let Some((_, r)) = simulated { div id="simulation" { (report(r)) } }
        }
    };
    view::page(s, "/routing", "Routing", notice.as_ref(), content)
}

#[derive(Deserialize)]
pub struct WhatIf {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    #[serde(default)]
    project: String,
    #[serde(default)]
    models: String,
}

/// `POST /routing/simulate`: the report shown under the form (a simulation changes nothing).
pub async fn simulate(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    peer: Peer,
    Form(f): Form<WhatIf>,
) -> Response {
    let s = match form_session(&d, &headers, peer, &f.csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let q = HashMap::from([("project".to_owned(), f.project.clone())]);
    let models: Value = match serde_json::from_str(&f.models) {
        Ok(m) => m,
        Err(e) => {
            let n = Notice::Error(format!("400: the models are not JSON: {e}"));
            return view::answer(
                axum::http::StatusCode::BAD_REQUEST,
                render(&d, &s, &q, Some(n), None).await,
            );
        }
    };
    let mut body = json!({ "models": models, "from": f.from.trim(), "to": f.to.trim() });
    if !f.project.trim().is_empty() {
        body["project"] = json!(f.project.trim());
    }
    match s
        .send(&d, Method::POST, "/v1/route/simulate", Some(&body))
        .await
    {
        Ok(r) => render(
            &d,
            &s,
            &q,
            Some(Notice::Ok("Simulated; nothing was changed.".into())),
            Some((&f, &r)),
        )
        .await
        .into_response(),
        Err(e) => view::answer(
            e.status,
            render(&d, &s, &q, Some(notice_of(&e)), None).await,
        ),
    }
}
