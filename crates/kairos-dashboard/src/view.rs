//! The page shell, shared pieces of markup, and the embedded assets.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde_json::Value;

use crate::pages::Signed;

const CSS: &str = include_str!("../assets/app.css");
const JS: &str = include_str!("../assets/app.js");

pub async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        CSS,
    )
        .into_response()
}

pub async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=300"),
        ],
        JS,
    )
        .into_response()
}

/// The pages in the navigation: path, title.
pub const PAGES: [(&str, &str); 8] = [
    ("/", "Overview"),
    ("/budgets", "Budgets"),
    ("/analytics", "Model analytics"),
    ("/routing", "Routing"),
    ("/workflows", "Workflows"),
    ("/anomalies", "Anomalies"),
    ("/audit", "Audit log"),
    ("/team", "Team"),
];

/// A message above the page's content.
#[derive(Debug, Clone)]
pub enum Notice {
    Ok(String),
    Error(String),
    /// A secret shown once (a new key or invitation token), with what it is.
    Secret {
        what: String,
        value: String,
    },
}

/// A whole page: the shell (navigation, who is signed in, sign-out) around `content`.
pub fn page(
    s: &Signed,
    path: &str,
    title: &str,
    notice: Option<&Notice>,
    content: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Kairos" }
                link rel="stylesheet" href="/assets/app.css";
                script src="/assets/app.js" defer {}
            }
            body data-live-source="/live" {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    span.brand { "Kairos" }
                    nav aria-label="Main" {
                        ul {
                            @for (href, name) in PAGES {
                                li {
                                    @if href == path {
                                        a href=(href) aria-current="page" { (name) }
                                    } @else {
                                        a href=(href) { (name) }
                                    }
                                }
                            }
                        }
                    }
                    div.who {
                        span { (s.email) " · " strong { (s.role) } }
                        form method="post" action="/sign-out" {
                            (csrf(s))
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main id="main" tabindex="-1" {
                    h1 { (title) }
                    @if let Some(n) = notice { (show_notice(n)) }
                    (content)
                }
                footer {
                    p id="live-status" role="status" aria-live="polite" { "Live updates: connecting…" }
                }
            }
        }
    }
}

/// The sign-in page (no session yet).
pub fn bare(title: &str, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Kairos" }
                link rel="stylesheet" href="/assets/app.css";
            }
            body {
                main id="main" .narrow { (content) }
            }
        }
    }
}

pub fn show_notice(n: &Notice) -> Markup {
    match n {
        Notice::Ok(m) => html! { p.notice.ok role="status" { (m) } },
        Notice::Error(m) => html! { p.notice.error role="alert" { (m) } },
        Notice::Secret { what, value } => html! {
            div.notice.secret role="alert" {
                p { (what) " — shown once; copy it now:" }
                code.secret-value { (value) }
            }
        },
    }
}

/// The session's CSRF token as a hidden field; every form carries it.
pub fn csrf(s: &Signed) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// `disabled` when the role may not use a control: shown, not usable, with the reason.
pub fn allowed(s: &Signed, permission: &str) -> bool {
    s.permissions.iter().any(|p| p == permission)
}

/// The note beside controls a role may not use.
pub fn needs(s: &Signed, permission: &str) -> Markup {
    html! {
        @if !allowed(s, permission) {
            p.hint { "Your role (" (s.role) ") lacks " code { (permission) } "; these controls are disabled." }
        }
    }
}

/// A JSON value as text for a table cell (strings without quotes, null as a dash).
pub fn text(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A money amount (a decimal string or a number) as `$1,234.56`; more digits under a cent.
pub fn usd(v: &Value) -> String {
    let Some(x) = number(v) else {
        return text(v);
    };
    if x != 0.0 && x.abs() < 0.01 {
        return format!("${x:.6}");
    }
    let cents = (x * 100.0).round() as i128;
    let (whole, frac) = (cents.abs() / 100, cents.abs() % 100);
    let digits = whole.to_string();
    let mut grouped = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    let sign = if cents < 0 { "-" } else { "" };
    format!("{sign}${grouped}.{frac:02}")
}

/// A number given as a JSON number or a decimal string.
pub fn number(v: &Value) -> Option<f64> {
    let x: f64 = match v {
        Value::Number(n) => n.to_string().parse().ok()?,
        Value::String(s) => s.parse().ok()?,
        _ => return None,
    };
    x.is_finite().then_some(x)
}

/// An RFC 3339 time as `2026-11-20 12:00:00` (UTC), or as given if it is not one.
pub fn when(v: &Value) -> String {
    v.as_str()
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map_or_else(
            || text(v),
            |t| {
                t.with_timezone(&chrono::Utc)
                    .format("%Y-%m-%d %H:%M:%S")
                    .to_string()
            },
        )
}

/// A page answering `status` (an action's failure keeps the API's status, say 403).
pub fn answer(status: StatusCode, markup: Markup) -> Response {
    (status, markup).into_response()
}

/// An inline SVG chart, as the chart module drew it.
pub fn svg(svg: &str) -> Markup {
    PreEscaped(svg.to_owned())
}
