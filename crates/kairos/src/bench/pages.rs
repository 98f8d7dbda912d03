//! Dashboard page speed over the history: each page fetched `--page-reads` times, one at a time,
//! by a browser's session (signed in through the sign-in form), after every projection has
//! built the whole history. A page's time is the whole answer: the session check, its API calls
//! in-process and the rendering.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};

/// The pages timed, as a browser opens them from the navigation.
pub(super) const PAGES: [&str; 9] = [
    "/",
    "/budgets",
    "/analytics",
    "/analytics?range=1h&bucket=minute",
    "/routing",
    "/workflows",
    "/anomalies",
    "/audit",
    "/team",
];

/// Signs in with `key` at `base`; the session cookie (`kairos_session=…`).
async fn sign_in(http: &reqwest::Client, base: &str, key: &str) -> anyhow::Result<String> {
    let form = http.get(format!("{base}/sign-in")).send().await?;
    let cookie = form
        .headers()
        .get(reqwest::header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|c| c.split(';').next())
        .context("the sign-in form set no cookie")?
        .to_owned();
    let body = form.text().await?;
    let csrf = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.get(..64))
        .context("the sign-in form has no token")?;
    let signed = http
        .post(format!("{base}/sign-in"))
        .header(reqwest::header::COOKIE, cookie)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body(format!("csrf={csrf}&key={key}"))
        .send()
        .await?;
    ensure!(
        signed.status() == 303,
        "sign-in answered {}",
        signed.status()
    );
    signed
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("kairos_session="))
        .and_then(|c| c.split(';').next())
        .map(str::to_owned)
        .context("sign-in set no session")
}

/// Each page's times, sorted.
pub(super) async fn measure(
    base: &str,
    key: &str,
    rounds: usize,
) -> anyhow::Result<Vec<(&'static str, Vec<Duration>)>> {
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let session = sign_in(&http, base, key).await?;
    let mut out: Vec<(&'static str, Vec<Duration>)> = PAGES
        .iter()
        .map(|p| (*p, Vec::with_capacity(rounds)))
        .collect();
    for _ in 0..rounds {
        for (page, times) in &mut out {
            let t = Instant::now();
            let r = http
                .get(format!("{base}{page}"))
                .header(reqwest::header::COOKIE, &session)
                .send()
                .await?;
            let status = r.status();
            let body = r.text().await?;
            times.push(t.elapsed());
            ensure!(status == 200, "{page} answered {status}");
            ensure!(
                !body.contains("Not available:"),
                "{page} could not show a part: {}",
                body.split("Not available:")
                    .nth(1)
                    .unwrap_or("")
                    .chars()
                    .take(200)
                    .collect::<String>()
            );
        }
    }
    for (_, times) in &mut out {
        times.sort();
    }
    Ok(out)
}
