//! The audit log: filters (actor, claimed actor, action, resource, outcome, time), cursor paging,
//! export, and the chain's verification on demand. "When" is the stream's time; "Claimed" is
//! what a producer's user action says about who acted, and when.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Response};
use maud::html;

use super::{Peer, Signed, or_reason, param};
use crate::Dashboard;
use crate::call::{self, As, query};
use crate::view::{self, text, when};

const FILTERS: [(&str, &str); 7] = [
    ("actor", "Actor"),
    ("claimed_actor", "Claimed actor"),
    ("action", "Action"),
    ("resource", "Resource"),
    ("outcome", "Outcome"),
    ("from", "From (RFC 3339)"),
    ("to", "To (RFC 3339)"),
];

fn filters(q: &HashMap<String, String>) -> Vec<(&'static str, &str)> {
    FILTERS.iter().map(|(k, _)| (*k, param(q, k))).collect()
}

/// The link to the page of entries after cursor `c`, with the same filters.
fn older(base: &[(&str, &str)], c: u64) -> String {
    let c = c.to_string();
    let mut pairs = base.to_vec();
    pairs.push(("cursor", &c));
    format!("/audit{}", query(&pairs))
}

/// When the stream stored the entry's event; an entry of the first layout has only its event's
/// time.
fn recorded(r: &serde_json::Value) -> &serde_json::Value {
    if r["recorded_at"].is_string() {
        &r["recorded_at"]
    } else {
        &r["occurred_at"]
    }
}

/// What a producer claims: who acted (in which role), and when, if that is not when it was
/// recorded.
fn claimed(r: &serde_json::Value) -> String {
    let c = &r["claimed"];
    if !c.is_object() {
        return String::new();
    }
    let mut out = c["actor"].as_str().unwrap_or("?").to_owned();
    if let Some(role) = c["role"].as_str() {
        out.push_str(&format!(" ({role})"));
    }
    if r["occurred_at"].is_string() {
        out.push_str(&format!(", at {}", when(&r["occurred_at"])));
    }
    out
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
    let mut pairs = filters(&q);
    pairs.push(("cursor", param(&q, "cursor")));
    pairs.push(("limit", "50"));
    // A live refresh fetches the page again: it does not walk the chain again each time.
    let verify = !param(&q, "verify").is_empty() && !headers.contains_key("x-kairos-live");
    let (entries, verified) =
        tokio::join!(s.get(&d, format!("/v1/audit{}", query(&pairs))), async {
            if verify {
                Some(s.get(&d, "/v1/audit/verify").await)
            } else {
                None
            }
        },);
    let base = filters(&q);
    let content = html! {
        form.row method="get" action="/audit" aria-label="Filter" {
            @for (k, label) in FILTERS {
                label { (label)
                    @if k == "outcome" {
                        select name="outcome" {
                            @for o in ["", "success", "denied", "failure"] {
                                option value=(o) selected[param(&q, "outcome") == o] { @if o.is_empty() { "any" } @else { (o) } }
                            }
                        }
                    } @else {
                        input name=(k) value=(param(&q, k)) maxlength="200";
                    }
                }
            }
            button type="submit" { "Filter" }
        }
        section aria-labelledby="ver-h" {
            h2 id="ver-h" { "Verification" }
            @match &verified {
                None => p {
                    "The chain is checked on demand (it reads every entry). "
                    a href=(format!("/audit{}", query(&[("verify", "1")]))) { "Verify the chain now" }
                    ". " code { "kairos audit verify" } " also compares the table with the stream."
                },
                Some(r) => @match or_reason(r) {
                    Ok(v) => @if v["ok"].as_bool() == Some(true) {
                        p.status-ok id="verification" { "Chain intact: " (text(&v["entries"])) " entries verified." }
                    } @else {
                        p.status-bad id="verification" role="alert" { "Chain broken at entry " (text(&v["first_bad"]["seq"])) ": " (text(&v["first_bad"]["detail"])) }
                    },
                    Err(m) => (m),
                },
            }
        }
        section aria-labelledby="ent-h" {
            h2 id="ent-h" { "Entries" }
            p { a href=(format!("/audit/export{}", query(&base))) download="audit.jsonl" { "Export these entries (JSON lines)" } }
            div id="entries" data-live {
                @match or_reason(&entries) {
                    Ok(e) => {
                        table {
                            thead { tr {
                                th scope="col" { "Seq" } th scope="col" { "When" } th scope="col" { "Actor" } th scope="col" { "Role" }
                                th scope="col" { "Claimed" } th scope="col" { "Action" } th scope="col" { "Resource" } th scope="col" { "Outcome" } th scope="col" { "Reason" }
                            } }
                            tbody {
                                @for r in e["entries"].as_array().into_iter().flatten() {
                                    tr {
                                        td { (text(&r["seq"])) } td { (when(recorded(r))) } td { (text(&r["actor"])) } td { (text(&r["actor_role"])) }
                                        td { (claimed(r)) } td { (text(&r["action"])) } td { (text(&r["resource"])) } td { (text(&r["outcome"])) } td { (text(&r["reason"])) }
                                    }
                                }
                            }
                        }
                        @if let Some(c) = e["next_cursor"].as_u64() {
                            p { a href=(older(&base, c)) rel="next" { "Older entries" } }
                        }
                    }
                    Err(m) => (m),
                }
            }
        }
    };
    view::page(&s, "/audit", "Audit log", None, content).into_response()
}

/// `GET /audit/export`: the API's export of the filtered entries, streamed through.
pub async fn export(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    peer: Peer,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let s = match Signed::load(&d, &headers, peer).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let path = format!("/v1/audit/export{}", query(&filters(&q)));
    let who = As::Session(s.session.key_id.clone());
    match call::raw(&d, &who, s.peer, Method::GET, &path, None).await {
        Ok(r) if !r.status().is_success() => {
            let status = r.status();
            let body = axum::body::to_bytes(r.into_body(), 64 * 1024)
                .await
                .unwrap_or_default();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            let message = v["error"]["message"]
                .as_str()
                .unwrap_or("the export failed");
            super::failure(&call::Failure::new(status, message))
        }
        Ok(mut r) => {
            r.headers_mut().insert(
                axum::http::header::CONTENT_DISPOSITION,
                axum::http::HeaderValue::from_static("attachment; filename=\"audit.jsonl\""),
            );
            r
        }
        Err(f) => super::failure(&f),
    }
}
