//! Workflows: a project's frequent task patterns and workflow families, the actors departing
//! from their usual sessions, and live next-task suggestions for a session.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use maud::html;
use serde_json::Value;

use super::{Peer, Signed, or_reason, param};
use crate::Dashboard;
use crate::call::{enc, query};
use crate::view::{self, text, when};

fn tasks(v: &Value) -> String {
    v.as_array()
        .map(|a| a.iter().map(text).collect::<Vec<_>>().join(" → "))
        .unwrap_or_default()
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
    // The projects to pick from: those with a budget the member reaches, else the member's own.
    let projects: Vec<String> = match s.get(&d, "/v1/budgets?limit=1000").await {
        Ok(b) => b["budgets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["project"].as_str().map(str::to_owned))
            .collect(),
        Err(_) => s.projects.clone().unwrap_or_default(),
    };
    let project = match param(&q, "project") {
        "" => projects.first().cloned().unwrap_or_default(),
        p => p.to_owned(),
    };
    let session = param(&q, "session");
    let content = if project.is_empty() {
        html! { p { "Name a project to see its workflows." } }
    } else {
        let p = query(&[("project", &project)]);
        let (patterns, families, actors, suggestions) = tokio::join!(
            s.get(
                &d,
                format!(
                    "/v1/workflows/patterns{}",
                    query(&[("project", &project), ("limit", "20")])
                )
            ),
            s.get(&d, format!("/v1/workflows/families{p}")),
            s.get(&d, format!("/v1/workflows/actors{p}")),
            async {
                if session.is_empty() {
                    None
                } else {
                    Some(
                        s.get(
                            &d,
                            format!("/v1/workflows/sessions/{}/suggestions{p}", enc(session)),
                        )
                        .await,
                    )
                }
            },
        );
        html! {
            section aria-labelledby="sug-h" {
                h2 id="sug-h" { "Next-task suggestions" }
                div id="suggestions" data-live {
                    @match &suggestions {
                        None => p.hint { "Enter a session id above (one of the examples below, say) to follow its suggestions live." },
                        Some(r) => @match or_reason(r) {
                            Ok(x) => {
                                p { "Session " code { (session) } " (" @if x["open"].as_bool() == Some(true) { "open" } @else { "ended" } ", " (text(&x["steps"])) " steps): " (tasks(&x["recent_tasks"])) }
                                ol {
                                    @for g in x["suggestions"].as_array().into_iter().flatten() {
                                        li { strong { @if g["end"].as_bool() == Some(true) { "end the session" } @else { (text(&g["task"])) } }
                                            " — " (format!("{:.0}%", g["probability"].as_f64().unwrap_or(0.0) * 100.0)) ": " (text(&g["because"]["text"])) }
                                    }
                                }
                            }
                            Err(m) => (m),
                        },
                    }
                }
            }
            section aria-labelledby="pat-h" {
                h2 id="pat-h" { "Frequent patterns" }
                div id="patterns" data-live {
                    @match or_reason(&patterns) {
                        Ok(x) => {
                            p.hint { (text(&x["sessions"])) " sessions; patterns seen in at least " (text(&x["min_support"])) "." }
                            table {
                                thead { tr { th scope="col" { "Tasks" } th scope="col" { "Kind" } th.num scope="col" { "Sessions" } th.num scope="col" { "Confidence" } th scope="col" { "Last seen" } th scope="col" { "Examples" } } }
                                tbody {
                                    @for r in x["patterns"].as_array().into_iter().flatten() {
                                        tr {
                                            td { (tasks(&r["tasks"])) } td { (text(&r["kind"])) } td.num { (text(&r["support"])) }
                                            td.num { (format!("{:.0}%", r["confidence"].as_f64().unwrap_or(0.0) * 100.0)) }
                                            td { (when(&r["last_seen"])) }
                                            td { @for e in r["examples"].as_array().into_iter().flatten() {
                                                a href=(format!("/workflows{}", query(&[("project", &project), ("session", e.as_str().unwrap_or(""))]))) { (text(e)) } " "
                                            } }
                                        }
                                    }
                                }
                            }
                        }
                        Err(m) => (m),
                    }
                }
            }
            section aria-labelledby="fam-h" {
                h2 id="fam-h" { "Workflow families" }
                div id="families" data-live {
                    @match or_reason(&families) {
                        Ok(x) => table {
                            thead { tr { th scope="col" { "Family" } th scope="col" { "Typical sequence" } th.num scope="col" { "Sessions" } th.num scope="col" { "Cohesion" } } }
                            tbody {
                                @for f in x["families"].as_array().into_iter().flatten() {
                                    tr { td { code { (text(&f["id"])) } } td { (tasks(&f["sequence"])) } td.num { (text(&f["size"])) } td.num { (format!("{:.2}", f["cohesion"].as_f64().unwrap_or(0.0))) } }
                                }
                            }
                        },
                        Err(m) => (m),
                    }
                }
            }
            section aria-labelledby="act-h" {
                h2 id="act-h" { "Actors departing from their usual sessions" }
                div id="actors" data-live {
                    @match or_reason(&actors) {
                        Ok(x) => {
                            @let dev = x["deviating"].as_array().cloned().unwrap_or_default();
                            @if dev.is_empty() { p { "None above the threshold (" (text(&x["threshold"])) ")." } }
                            @else { ul { @for a in &dev { li { code { (a.to_string()) } } } } }
                        }
                        Err(m) => (m),
                    }
                }
            }
        }
    };
    let page = html! {
        form.row method="get" action="/workflows" aria-label="Choose" {
            label { "Project"
                input name="project" value=(project) list="projects" maxlength="128";
                datalist id="projects" { @for p in &projects { option value=(p) {} } }
            }
            label { "Session" input name="session" value=(session) maxlength="200" placeholder="a session id"; }
            button type="submit" { "Show" }
        }
        (content)
    };
    view::page(&s, "/workflows", "Workflows", None, page).into_response()
}
