//! Sign-in with an API key, and sign-out.

use std::collections::HashMap;

use axum::Form;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use kairos_api::{Origin, Role, record_action};
use maud::html;
use serde::Deserialize;

use super::{Peer, same_origin};
use crate::Dashboard;
use crate::call::{self, As};
use crate::session::{self, COOKIE, SIGN_IN_COOKIE};
use crate::view::{self, text};

/// `GET /sign-in`: the form, with a fresh CSRF token in a short-lived cookie of its own.
pub async fn form(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Ok(Some(_)) = session::find(&d.state.pool, &headers, d.state.clock.now()).await {
        return Redirect::to("/").into_response();
    }
    let note = if q.contains_key("ended") {
        Some("Your session ended (signed out, expired, or its key is no longer valid).")
    } else {
        None
    };
    render(&d, StatusCode::OK, note)
}

fn render(d: &Dashboard, status: StatusCode, error: Option<&str>) -> Response {
    let token = session::random_token();
    let page = view::bare(
        "Sign in",
        html! {
            h1 { "Sign in to Kairos" }
            @if let Some(e) = error { p.notice.error role="alert" { (e) } }
            form method="post" action="/sign-in" {
                input type="hidden" name="csrf" value=(token);
                p {
                    label for="key" { "API key" }
                    input id="key" name="key" type="password" autocomplete="off" required
                        size="70" maxlength="512" aria-describedby="key-help";
                }
                p.hint id="key-help" {
                    "Your key starts with " code { "kairos_" } ". " code { "make run" }
                    " writes the first admin's key to " code { ".kairos/env" }
                    " (KAIROS_BOOTSTRAP_ADMIN_KEY). The key is checked once; the browser keeps only a session cookie."
                }
                button type="submit" { "Sign in" }
            }
        },
    );
    let cookie = session::set_cookie(
        SIGN_IN_COOKIE,
        &token,
        "/sign-in",
        600,
        d.settings.secure_cookie,
    );
    (status, [(header::SET_COOKIE, cookie)], page).into_response()
}

/// Who acted at the dashboard's door, and from where, for the audit log.
fn origin(actor: String, actor_role: Option<Role>, peer: &Peer) -> Origin {
    Origin {
        actor,
        actor_role,
        ip: peer.0.map(|a| a.ip().to_string()),
        ..Origin::default()
    }
}

#[derive(Deserialize)]
pub struct SignIn {
    #[serde(default)]
    csrf: String,
    #[serde(default)]
    key: String,
}

/// `POST /sign-in`: checks the key with the API (`GET /v1/me`, so its rate limits and the
/// guessing block apply) and starts a session for it.
pub async fn submit(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    peer: Peer,
    Form(f): Form<SignIn>,
) -> Response {
    if let Err(r) = same_origin(&headers) {
        return r;
    }
    let expected = session::cookie(&headers, SIGN_IN_COOKIE).unwrap_or("");
    if expected.is_empty() || !session::same_token(&f.csrf, expected) {
        return render(
            &d,
            StatusCode::FORBIDDEN,
            Some("The sign-in form expired or came from elsewhere: try again."),
        );
    }
    let key = f.key.trim();
    if key.is_empty() || key.len() > 512 || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return render(
            &d,
            StatusCode::BAD_REQUEST,
            Some("An API key is printable text without spaces, at most 512 characters."),
        );
    }
    let me = match call::api(
        &d,
        &As::Key(key.to_owned()),
        peer.0,
        Method::GET,
        "/v1/me",
        None,
    )
    .await
    {
        Ok(me) => me,
        Err(e) => {
            // A refused key is counted for the log by the API's own refusal of `GET /v1/me`
            // (per address and minute, as every request without a valid key is).
            return render(&d, e.status, Some(&e.message));
        }
    };
    let Some(key_id) = me["key_id"].as_str() else {
        return render(
            &d,
            StatusCode::BAD_GATEWAY,
            Some("the API did not name the key"),
        );
    };
    let now = d.state.clock.now();
    let hours = i64::from(d.settings.session_hours);
    let expires = now + chrono::Duration::hours(hours);
    match session::create(&d.state.pool, key_id, now, expires).await {
        Ok(token) => {
            let role = serde_json::from_value::<Role>(me["role"].clone()).ok();
            let reason = format!("dashboard session for key {key_id}, {hours} h");
            // A session nobody can find in the audit log is not handed out.
            if record_action(
                &d.state,
                &origin(text(&me["email"]), role, &peer),
                "dashboard.sign_in",
                "/sign-in",
                "success",
                &reason,
            )
            .await
            .is_err()
            {
                let _ = session::discard(&d.state.pool, &token).await;
                return render(
                    &d,
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some("signing in could not be recorded in the audit log: try again shortly"),
                );
            }
            let secure = d.settings.secure_cookie;
            let cookie = session::set_cookie(COOKIE, &token, "/", hours * 3600, secure);
            let clear = session::set_cookie(SIGN_IN_COOKIE, "", "/sign-in", 0, secure);
            let mut r = Redirect::to("/").into_response();
            r.headers_mut().append(header::SET_COOKIE, cookie);
            r.headers_mut().append(header::SET_COOKIE, clear);
            r
        }
        Err(e) => render(
            &d,
            StatusCode::SERVICE_UNAVAILABLE,
            Some(&format!("sessions: {e}")),
        ),
    }
}

#[derive(Deserialize)]
pub struct SignOut {
    #[serde(default)]
    csrf: String,
}

/// `POST /sign-out`: ends the session and clears its cookie.
pub async fn sign_out(
    State(d): State<Dashboard>,
    headers: HeaderMap,
    peer: Peer,
    Form(f): Form<SignOut>,
) -> Response {
    // Only the session, its token and the origin: signing out must not wait on the API.
    if let Err(r) = same_origin(&headers) {
        return r;
    }
    let found = session::find(&d.state.pool, &headers, d.state.clock.now()).await;
    match found {
        Ok(Some(s)) if session::same_token(&f.csrf, &s.csrf) => {
            if let Err(e) = session::end(&d.state.pool, &s).await {
                return super::failure(&call::Failure::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    e.to_string(),
                ));
            }
            // Who signed out, from the key's record (cached: no API call); a key revoked
            // meanwhile is named by its id.
            let (actor, role) = match d
                .state
                .authenticator
                .authenticate_key_id(&s.key_id, d.state.clock.now())
                .await
            {
                Ok(p) => (p.email, Some(p.role)),
                Err(_) => (format!("key {}", s.key_id), None),
            };
            let reason = format!("dashboard session of key {} ended", s.key_id);
            // The session has ended whether or not this is recorded: signing out only takes
            // access away, so it never fails for the log's sake (a failure is logged).
            let _ = record_action(
                &d.state,
                &origin(actor, role, &peer),
                "dashboard.sign_out",
                "/sign-out",
                "success",
                &reason,
            )
            .await;
        }
        Ok(Some(_)) => {
            return super::failure(&call::Failure::new(
                StatusCode::FORBIDDEN,
                "the form's CSRF token is missing or stale: reload the page",
            ));
        }
        Ok(None) => {}
        Err(e) => {
            return super::failure(&call::Failure::new(
                StatusCode::SERVICE_UNAVAILABLE,
                e.to_string(),
            ));
        }
    }
    let mut r = Redirect::to("/sign-in?ended=1").into_response();
    r.headers_mut().append(
        header::SET_COOKIE,
        session::set_cookie(COOKIE, "", "/", 0, d.settings.secure_cookie),
    );
    r
}
