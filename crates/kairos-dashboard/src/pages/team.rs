//! Team: members and their roles, invitations and API keys for admins; everyone sees who they
//! are and manages their own keys.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method};
use axum::response::{IntoResponse, Redirect, Response};
use maud::{Markup, html};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Peer, Signed, form_session, notice_of, or_reason};
use crate::Dashboard;
use crate::call::{Failure, enc, query};
use crate::view::{self, Notice, csrf, needs, text, when};

const ROLES: [&str; 3] = ["admin", "developer", "viewer"];

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

/// The API path of a list's page: the one `/team?<cursor_param>=` names, else the first.
fn list_path(base: &str, q: &HashMap<String, String>, cursor_param: &str) -> String {
    let cursor = q.get(cursor_param).map_or("", String::as_str);
    let sep = if base.contains('?') { '&' } else { '?' };
    match query(&[("cursor", cursor)]).strip_prefix('?') {
        Some(c) => format!("{base}{sep}{c}"),
        None => base.to_owned(),
    }
}

/// The link to a list's next page, when the API says there is one.
fn more(list: &Value, cursor_param: &str, label: &str) -> Markup {
    html! {
        @if let Some(c) = list["next_cursor"].as_str() {
            p { a href=(format!("/team{}", query(&[(cursor_param, c)]))) rel="next" { (label) } }
        }
    }
}

fn projects_text(v: &Value) -> String {
    v.as_array().map_or_else(
        || "all projects".to_owned(),
        |a| a.iter().map(text).collect::<Vec<_>>().join(", "),
    )
}

/// Comma-separated projects from a form (`None`: every project).
fn projects_field(s: &str) -> Option<Vec<String>> {
    let ps: Vec<String> = s
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    (!ps.is_empty()).then_some(ps)
}

pub(crate) async fn render(
    d: &Dashboard,
    s: &Signed,
    q: &HashMap<String, String>,
    notice: Option<Notice>,
) -> Markup {
    let admin = s.can("manage_members");
    let not_admin = || {
        Err(Failure::new(
            axum::http::StatusCode::FORBIDDEN,
            "only roles with manage_members see this",
        ))
    };
    let (members, invitations, keys) = tokio::join!(
        async {
            if admin {
                s.get(d, list_path("/v1/members", q, "members_cursor"))
                    .await
            } else {
                not_admin()
            }
        },
        async {
            if admin {
                s.get(
                    d,
                    list_path("/v1/invitations?status=open", q, "invitations_cursor"),
                )
                .await
            } else {
                not_admin()
            }
        },
        s.get(d, list_path("/v1/api-keys", q, "keys_cursor")),
    );
    let content = html! {
        section aria-labelledby="you-h" {
            h2 id="you-h" { "You" }
            p { (s.email) ", role " strong { (s.role) } ", " (s.projects.as_ref().map_or_else(|| "all projects".to_owned(), |p| p.join(", "))) "." }
            p.hint { "Permissions: " (s.permissions.join(", ")) }
        }
        section aria-labelledby="mem-h" {
            h2 id="mem-h" { "Members" }
            (needs(s, "manage_members"))
            div id="members" data-live {
                @match or_reason(&members) {
                    Ok(m) => { table {
                        thead { tr { th scope="col" { "E-mail" } th scope="col" { "Name" } th scope="col" { "Role" } th scope="col" { "Projects" } th scope="col" { "Status" } th scope="col" { "Joined" } th scope="col" { "Change role" } } }
                        tbody {
                            @for x in m["members"].as_array().into_iter().flatten() {
                                @let id = text(&x["member_id"]);
                                tr {
                                    td { (text(&x["email"])) } td { (text(&x["name"])) } td { (text(&x["role"])) }
                                    td { (projects_text(&x["projects"])) } td { (text(&x["status"])) } td { (when(&x["joined_at"])) }
                                    td {
                                        @if x["status"].as_str() == Some("active") {
                                            form.inline method="post" action="/team/role" {
                                                (csrf(s))
                                                input type="hidden" name="member_id" value=(id);
                                                label { span.hint { "Role of " (text(&x["email"])) }
                                                    select name="role" {
                                                        @for r in ROLES { option value=(r) selected[x["role"].as_str() == Some(r)] { (r) } }
                                                    }
                                                }
                                                label { span.hint { "Projects (comma-separated; empty: all)" }
                                                    input name="projects" value=(x["projects"].as_array().map(|a| a.iter().map(text).collect::<Vec<_>>().join(",")).unwrap_or_default()) size="16";
                                                }
                                                button type="submit" { "Set role" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    } (more(m, "members_cursor", "More members")) },
                    // A failure is shown as it is; only a role without the permission gets
                    // the explanation instead.
                    Err(reason) => @if admin { (reason) } @else { p { "Only admins see the team's members." } },
                }
            }
        }
        section aria-labelledby="inv-h" {
            h2 id="inv-h" { "Invitations" }
            div id="invitations" data-live {
                @match or_reason(&invitations) {
                    Ok(i) => {
                        // Open ones only (`status=open`): not accepted, not revoked.
                        @let list = i["invitations"].as_array().cloned().unwrap_or_default();
                        @if list.is_empty() { p { "No open invitation." } }
                        @else {
                            table {
                                thead { tr { th scope="col" { "E-mail" } th scope="col" { "Role" } th scope="col" { "Projects" } th scope="col" { "Expires" } } }
                                tbody { @for x in &list { tr { td { (text(&x["email"])) } td { (text(&x["role"])) } td { (projects_text(&x["projects"])) } td { (when(&x["expires_at"])) } } } }
                            }
                        }
                        (more(i, "invitations_cursor", "More invitations"))
                    },
                    Err(reason) => @if admin { (reason) },
                }
            }
            form.row method="post" action="/team/invite" {
                (csrf(s))
                label { "E-mail" input name="email" type="email" required maxlength="200" disabled[!admin]; }
                label { "Role"
                    select name="role" disabled[!admin] { @for r in ROLES { option value=(r) selected[r == "developer"] { (r) } } }
                }
                label { "Projects (comma-separated; empty: all)" input name="projects" maxlength="1000" disabled[!admin]; }
                button type="submit" disabled[!admin] { "Invite" }
            }
        }
        section aria-labelledby="key-h" {
            h2 id="key-h" { "API keys" }
            div id="keys" data-live {
                @match or_reason(&keys) {
                    Ok(k) => { table {
                        thead { tr { th scope="col" { "Name" } th scope="col" { "Key id" } th scope="col" { "Member" } th scope="col" { "Created" } th scope="col" { "Expires" } th scope="col" { "Sources" } th scope="col" { "Revoked" } th scope="col" { "" } } }
                        tbody {
                            @for x in k["api_keys"].as_array().into_iter().flatten() {
                                @let id = text(&x["key_id"]);
                                tr {
                                    td { (text(&x["name"])) } td { code { (id) } } td { code { (text(&x["member_id"])) } }
                                    td { (when(&x["created_at"])) } td { (when(&x["expires_at"])) }
                                    td.sources { (sources(&x["allowed_sources"])) } td { (when(&x["revoked_at"])) }
                                    td {
                                        @if x["revoked_at"].is_null() && id != s.session.key_id {
                                            form.inline method="post" action="/team/keys/revoke" {
                                                (csrf(s))
                                                input type="hidden" name="key_id" value=(id);
                                                button type="submit" aria-label=(format!("Revoke key {}", text(&x["name"]))) { "Revoke" }
                                            }
                                        } @else if id == s.session.key_id { span.hint { "this session's key" } }
                                    }
                                }
                            }
                        }
                    } (more(k, "keys_cursor", "More keys")) },
                    Err(m) => (m),
                }
            }
            form.row method="post" action="/team/keys" {
                (csrf(s))
                label { "New key's name" input name="name" required maxlength="100"; }
                label { "Expires in (days; empty: never)" input name="expires_in_days" type="number" min="1" max="3650"; }
                label { "Sources it may publish under (prefixes, comma-separated; empty: any)" input name="allowed_sources" maxlength="4200"; }
                button type="submit" { "Create key" }
            }
        }
    };
    view::page(s, "/team", "Team", notice.as_ref(), content)
}

/// A write to the API a team form asks for; `secret` names the answer's field to show once.
struct Action {
    method: Method,
    path: String,
    body: Option<Value>,
    secret: Option<(&'static str, &'static str)>,
}

async fn act(d: &Dashboard, headers: &HeaderMap, peer: Peer, csrf: &str, a: Action) -> Response {
    let s = match form_session(d, headers, peer, csrf).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    match s.send(d, a.method, &a.path, a.body.as_ref()).await {
        Ok(v) => match a.secret {
            // A secret is shown once, on the page the action answers with (no redirect).
            Some((what, field)) => render(
                d,
                &s,
                &HashMap::new(),
                Some(Notice::Secret {
                    what: what.to_owned(),
                    value: text(&v[field]),
                }),
            )
            .await
            .into_response(),
            None => Redirect::to("/team").into_response(),
        },
        Err(e) => view::answer(
            e.status,
            render(d, &s, &HashMap::new(), Some(notice_of(&e))).await,
        ),
    }
}

#[derive(Deserialize)]
pub struct SetRole {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    member_id: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    projects: String,
}

/// `POST /team/role`: `PUT /v1/members/{id}/role`.
pub async fn set_role(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    peer: Peer,
    Form(f): Form<SetRole>,
) -> Response {
    let body = json!({ "role": f.role, "projects": projects_field(&f.projects) });
    let path = format!("/v1/members/{}/role", enc(&f.member_id));
    act(
        &d,
        &headers,
        peer,
        &f.csrf,
        Action {
            method: Method::PUT,
            path,
            body: Some(body),
            secret: None,
        },
    )
    .await
}

#[derive(Deserialize)]
pub struct Invite {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    email: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    projects: String,
}

/// `POST /team/invite`: `POST /v1/invitations`; the token is shown once.
pub async fn invite(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    peer: Peer,
    Form(f): Form<Invite>,
) -> Response {
    let body =
        json!({ "email": f.email.trim(), "role": f.role, "projects": projects_field(&f.projects) });
    let secret = Some(("The invitation token for the invitee", "token"));
    act(
        &d,
        &headers,
        peer,
        &f.csrf,
        Action {
            method: Method::POST,
            path: "/v1/invitations".into(),
            body: Some(body),
            secret,
        },
    )
    .await
}

#[derive(Deserialize)]
pub struct NewKey {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    expires_in_days: String,
    #[serde(default)]
    allowed_sources: String,
}

/// A key's source prefixes as the list shows them; `null` is any source.
fn sources(v: &Value) -> String {
    match v.as_array() {
        Some(prefixes) => prefixes.iter().map(text).collect::<Vec<_>>().join(", "),
        None => "any".to_owned(),
    }
}

/// `POST /team/keys`: `POST /v1/api-keys`; the key is shown once.
pub async fn new_key(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    peer: Peer,
    Form(f): Form<NewKey>,
) -> Response {
    let mut body = json!({ "name": f.name.trim() });
    if let Ok(days) = f.expires_in_days.trim().parse::<u32>() {
        body["expires_in_days"] = json!(days);
    }
    let prefixes: Vec<&str> = f
        .allowed_sources
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if !prefixes.is_empty() {
        body["allowed_sources"] = json!(prefixes);
    }
    let secret = Some(("Your new API key", "api_key"));
    act(
        &d,
        &headers,
        peer,
        &f.csrf,
        Action {
            method: Method::POST,
            path: "/v1/api-keys".into(),
            body: Some(body),
            secret,
        },
    )
    .await
}

#[derive(Deserialize)]
pub struct Revoke {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    key_id: String,
}

/// `POST /team/keys/revoke`: `DELETE /v1/api-keys/{id}`.
pub async fn revoke_key(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    peer: Peer,
    Form(f): Form<Revoke>,
) -> Response {
    let path = format!("/v1/api-keys/{}", enc(&f.key_id));
    act(
        &d,
        &headers,
        peer,
        &f.csrf,
        Action {
            method: Method::DELETE,
            path,
            body: None,
            secret: None,
        },
    )
    .await
}
