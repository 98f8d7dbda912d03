//! The dashboard in a real headless browser: Debian's Chromium driven through ChromeDriver
//! (WebDriver, with fantoccini), against a live Kairos on real NATS and PostgreSQL.
//!
//! `make test` installs `chromium` and `chromium-driver`. The screenshots the user guide shows
//! are taken here: into `target/screenshots/`, and into `docs/img/` when
//! `KAIROS_SCREENSHOTS=1`.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use fantoccini::{Client, ClientBuilder, Locator};
use kairos_tests::{TestApp, budget_set, client, llm_call, send, spawn_app};
use serde_json::json;
use sqlx::PgPool;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// ChromeDriver on a free port, stopped when dropped.
struct Driver {
    child: tokio::process::Child,
    url: String,
    profile: PathBuf,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

async fn driver() -> Driver {
    assert!(
        std::path::Path::new(CHROMEDRIVER).exists() && std::path::Path::new(CHROMIUM).exists(),
        "the browser tests need Debian's chromium and chromium-driver: `make test` installs them \
         (apt-get install chromium chromium-driver)"
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let child = tokio::process::Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let status = reqwest::Client::new();
    for _ in 0..100 {
        if status.get(format!("{url}/status")).send().await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profile = std::env::temp_dir().join(format!("kairos-chromium-{}", uuid::Uuid::new_v4()));
    Driver {
        child,
        url,
        profile,
    }
}

/// A headless Chromium with the flags this machine needs, a fresh profile, a laptop's window.
async fn browser(d: &Driver) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--window-size=1366,900", format!("--user-data-dir={}", d.profile.display()),
            ],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(caps)
        .connect(&d.url)
        .await
        .expect("a browser session")
}

/// Saves a screenshot of the page as `name`.png for the docs.
async fn screenshot(b: &Client, name: &str) {
    let png = b.screenshot().await.expect("a screenshot");
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let dir = root.join("target/screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    std::fs::write(dir.join(format!("{name}.png")), &png).expect("screenshot written");
    if std::env::var("KAIROS_SCREENSHOTS").as_deref() == Ok("1") {
        let docs = root.join("docs/img");
        std::fs::create_dir_all(&docs).expect("docs/img");
        std::fs::write(docs.join(format!("{name}.png")), &png).expect("screenshot written");
    }
}

/// The text of the element `css` finds, waiting up to 5 s for it: a page a click asked for may
/// not have loaded yet, and a live update replaces elements, so one found may be gone by the
/// time its text is read.
async fn text_of(b: &Client, css: &str) -> String {
    let mut last = None;
    for _ in 0..100 {
        match b.find(Locator::Css(css)).await {
            Ok(found) => match found.text().await {
                Ok(t) => return t,
                Err(e) => last = Some(e),
            },
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{css}: {last:?}")
}

/// The texts of every element `css` finds, read in one script (a live update cannot come
/// between them).
async fn texts_of(b: &Client, css: &str) -> Vec<String> {
    let v = b
        .execute(
            "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.textContent.trim())",
            vec![json!(css)],
        )
        .await
        .expect("script runs");
    serde_json::from_value(v).expect("strings")
}

/// Waits (up to 10 s) until the browser is at a URL whose path and query contain `part`: a
/// click that submits a form returns before the next page has loaded.
async fn arrive(b: &Client, part: &str) {
    for _ in 0..100 {
        let url = b.current_url().await.expect("url");
        let at = format!("{}?{}", url.path(), url.query().unwrap_or(""));
        if at.contains(part) && !text_of(b, "main h1").await.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("never reached {part}: {}", text_of(b, "main").await)
}

async fn sign_in(b: &Client, url: &str, key: &str) {
    b.goto(&format!("{url}/sign-in"))
        .await
        .expect("sign-in page");
    b.find(Locator::Id("key"))
        .await
        .expect("key field")
        .send_keys(key)
        .await
        .expect("typed");
    b.find(Locator::Css("form button[type=submit]"))
        .await
        .expect("button")
        .click()
        .await
        .expect("submitted");
    arrive(b, "/?").await;
    let h1 = text_of(b, "main h1").await;
    assert_eq!(h1, "Overview", "signed in: {}", text_of(b, "main").await);
}

async fn sign_out(b: &Client) {
    b.find(Locator::Css("header form[action='/sign-out'] button"))
        .await
        .expect("sign-out button")
        .click()
        .await
        .expect("signed out");
    arrive(b, "/sign-in").await;
    assert!(
        b.current_url()
            .await
            .expect("url")
            .path()
            .starts_with("/sign-in"),
        "back at sign-in"
    );
}

/// A member joined through an invitation with `role`: its member id and key.
async fn member(app: &TestApp, email: &str, role: &str) -> (String, String) {
    let (status, inv) = app
        .post_json("/v1/invitations", &json!({"email": email, "role": role}))
        .await;
    assert_eq!(status, 201, "{inv}");
    let accept = format!(
        "{}{}",
        app.url,
        inv["accept"].as_str().expect("accept path")
    );
    let (status, joined) = send(
        reqwest::Client::new()
            .post(accept)
            .json(&json!({"token": inv["token"]})),
    )
    .await;
    assert_eq!(status, 201, "{joined}");
    let key = joined["api_key"].as_str().expect("a key").to_owned();
    let (_, me) = send(client(&key).get(format!("{}/v1/me", app.url))).await;
    (me["member_id"].as_str().expect("id").to_owned(), key)
}

/// Waits until `css`'s text differs from `before`, for up to 15 s; the new text.
async fn changed(b: &Client, css: &str, before: &str) -> String {
    for _ in 0..150 {
        let now = text_of(b, css).await;
        if now != before {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{css} still reads {before:?} after 15 s");
}

#[sqlx::test]
async fn the_dashboard_in_a_real_browser(pool: PgPool) {
    let app = spawn_app(pool).await;
    // Two calls earlier in the month, and a day's traffic of three models to chart.
    let mut events = vec![
        budget_set("b-shop", "shop", "50.00", 80),
        llm_call("c-1", "shop", "1.25"),
        llm_call("c-2", "shop", "0.75"),
    ];
    let models = [
        ("gpt-4o", "openai"),
        ("claude-sonnet-4", "anthropic"),
        ("llama3.1:8b", "ollama"),
    ];
    for i in 0..24_i32 {
        let cost = format!("{:.2}", 0.05 + 0.01 * f64::from(i % 6));
        let mut e = llm_call(
            &format!("d-{i}"),
            if i % 4 == 0 { "search" } else { "shop" },
            &cost,
        );
        let at = chrono::DateTime::parse_from_rfc3339(kairos_tests::FIXTURE_NOW).expect("time")
            - chrono::Duration::minutes(15 * i64::from(24 - i));
        e["time"] = json!(at.to_rfc3339());
        let (model, provider) = models[(i % 3) as usize];
        e["data"]["model"] = json!(model);
        e["data"]["provider"] = json!(provider);
        e["data"]["latency_ms"] = json!(200 + 40 * (i % 7));
        e["data"]["input_tokens"] = json!(500 + 100 * (i % 5));
        events.push(e);
    }
    let seq = app.ingest(&events).await;
    for p in ["budgets", "analytics", "audit"] {
        app.wait_for(p, seq).await;
    }
    let (dev_id, _) = member(&app, "dev@example.com", "developer").await;
    let (_, viewer_key) = member(&app, "viewer@example.com", "viewer").await;
    let d = driver().await;
    let b = browser(&d).await;

    // Without a session every page sends the browser to sign-in; a wrong key is refused.
    b.goto(&format!("{}/budgets", app.url)).await.expect("page");
    assert_eq!(b.current_url().await.expect("url").path(), "/sign-in");
    b.find(Locator::Id("key"))
        .await
        .expect("key")
        .send_keys("kairos_not-a-key")
        .await
        .expect("typed");
    b.find(Locator::Css("form button"))
        .await
        .expect("button")
        .click()
        .await
        .expect("sent");
    assert!(
        text_of(&b, ".notice.error").await.contains("not valid"),
        "a wrong key is refused with the API's reason"
    );
    screenshot(&b, "dashboard-sign-in").await;
    // Signed in as admin: every page opens, with its heading.
    sign_in(&b, &app.url, &app.admin_key).await;
    let cookies = b.get_all_cookies().await.expect("cookies");
    let session = cookies
        .iter()
        .find(|c| c.name() == "kairos_session")
        .expect("a session cookie");
    assert_eq!(session.http_only(), Some(true), "HttpOnly");
    assert_eq!(
        format!("{:?}", session.same_site()),
        "Some(Strict)",
        "SameSite=Strict"
    );
    let js_cookies = b
        .execute("return document.cookie", vec![])
        .await
        .expect("script runs");
    assert!(
        !js_cookies.as_str().unwrap_or("").contains("kairos_session"),
        "scripts cannot read the session"
    );
    assert_eq!(
        text_of(&b, "#spend-month").await,
        "$3.80",
        "shop and search in 2026-11"
    );
    assert_eq!(
        text_of(&b, "#spend-today").await,
        "$1.80",
        "the calls of 2026-11-20"
    );
    screenshot(&b, "dashboard-overview").await;
    let pages = [
        ("/budgets", "Budgets", "dashboard-budgets"),
        (
            "/analytics?range=24h&bucket=minute",
            "Model analytics",
            "dashboard-analytics",
        ),
        ("/routing", "Routing", "dashboard-routing"),
        ("/workflows", "Workflows", "dashboard-workflows"),
        ("/anomalies", "Anomalies", "dashboard-anomalies"),
        ("/audit", "Audit log", "dashboard-audit"),
        ("/team", "Team", "dashboard-team"),
    ];
    for (path, title, shot) in pages {
        b.goto(&format!("{}{path}", app.url)).await.expect("page");
        assert_eq!(text_of(&b, "main h1").await, title, "{path}");
        assert!(
            b.find_all(Locator::Css(".notice.error"))
                .await
                .expect("query")
                .is_empty(),
            "{path} shows no error: {}",
            text_of(&b, "main").await
        );
        screenshot(&b, shot).await;
    }
    // The analytics page draws its charts as inline SVG with a text alternative.
    b.goto(&format!(
        "{}/analytics?range=24h&bucket=hour&project=shop",
        app.url
    ))
    .await
    .expect("analytics");
    let chart = b
        .find(Locator::Css("figure.chart svg[role=img]"))
        .await
        .expect("a chart");
    assert!(
        chart
            .attr("aria-label")
            .await
            .expect("attr")
            .unwrap_or_default()
            .starts_with("Cost per bucket"),
        "the chart says what it shows"
    );
    // A filter: the audit log narrowed to one actor shows only that actor's entries.
    b.goto(&format!("{}/audit", app.url)).await.expect("audit");
    b.find(Locator::Css("input[name=actor]"))
        .await
        .expect("actor field")
        .send_keys("bootstrap")
        .await
        .expect("typed");
    b.find(Locator::Css("form[aria-label=Filter] button"))
        .await
        .expect("filter")
        .click()
        .await
        .expect("filtered");
    arrive(&b, "actor=bootstrap").await;
    let actors = texts_of(&b, "#entries tbody tr td:nth-child(3)").await;
    assert!(
        !actors.is_empty(),
        "the bootstrap admin's entries are there"
    );
    assert!(actors.iter().all(|a| a == "bootstrap"), "{actors:?}");

    // The chain's verification, on demand.
    b.find(Locator::LinkText("Verify the chain now"))
        .await
        .expect("verify link")
        .click()
        .await
        .expect("verified");
    arrive(&b, "verify=1").await;
    assert!(
        text_of(&b, "#verification")
            .await
            .starts_with("Chain intact")
    );
    // A live update: a new call's cost reaches the overview without a reload.
    b.goto(&app.url.clone()).await.expect("overview");
    b.execute("document.body.dataset.marker = 'no reload'", vec![])
        .await
        .expect("marked");
    let before = text_of(&b, "#spend-month").await;
    app.ingest(&[llm_call("c-3", "shop", "3.00")]).await;
    let after = changed(&b, "#spend-month", &before).await;
    assert_eq!(after, "$6.80");
    let marker = b
        .execute("return document.body.dataset.marker", vec![])
        .await
        .expect("read");
    assert_eq!(marker, json!("no reload"), "the page was updated in place");
    // Admin changes a role.
    b.goto(&format!("{}/team", app.url)).await.expect("team");
    let form = b
        .find(Locator::Css(&format!(
            "form[action='/team/role']:has(input[value='{dev_id}'])"
        )))
        .await
        .expect("the developer's role form");
    form.find(Locator::Css("select[name=role] option[value=viewer]"))
        .await
        .expect("option")
        .click()
        .await
        .expect("chosen");
    form.find(Locator::Css("button"))
        .await
        .expect("button")
        .click()
        .await
        .expect("sent");
    assert_eq!(b.current_url().await.expect("url").path(), "/team");
    // The access projection shows the change once it applied it.
    let mut role = json!(null);
    for _ in 0..100 {
        let (_, members) = app.get("/v1/members").await;
        role = members["members"]
            .as_array()
            .expect("members")
            .iter()
            .find(|m| m["member_id"] == json!(dev_id))
            .expect("dev listed")["role"]
            .clone();
        if role == json!("viewer") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        role,
        json!("viewer"),
        "the role changed: {}",
        text_of(&b, "main").await
    );
    // Admin creates a key for one producer: it expires, and it is bound to two sources.
    b.goto(&format!("{}/team", app.url)).await.expect("team");
    let form = b
        .find(Locator::Css("form[action='/team/keys']"))
        .await
        .expect("the new-key form");
    for (field, value) in [
        ("name", "gateway eu"),
        ("expires_in_days", "30"),
        ("allowed_sources", " llm-gateway/eu-1, batch/ ,"),
    ] {
        form.find(Locator::Css(&format!("input[name={field}]")))
            .await
            .expect("field")
            .send_keys(value)
            .await
            .expect("typed");
    }
    form.find(Locator::Css("button"))
        .await
        .expect("button")
        .click()
        .await
        .expect("sent");
    let shown = text_of(&b, "main").await;
    assert!(shown.contains("Your new API key"), "{shown}");
    let (_, last) = app.get("/v1/projections").await;
    app.wait_for("access", last["stream_last_seq"].as_u64().expect("seq"))
        .await;
    let (_, keys) = app.get("/v1/api-keys").await;
    let made = keys["api_keys"]
        .as_array()
        .expect("keys")
        .iter()
        .find(|k| k["name"] == "gateway eu")
        .expect("the new key listed")
        .clone();
    assert_eq!(
        made["allowed_sources"],
        json!(["llm-gateway/eu-1", "batch/"])
    );
    assert_eq!(made["expires_at"], "2026-12-20T12:00:00Z");
    b.goto(&format!("{}/team", app.url)).await.expect("team");
    let listed = text_of(&b, "#keys").await;
    assert!(listed.contains("llm-gateway/eu-1, batch/"), "{listed}");
    sign_out(&b).await;
    // A viewer: the controls it may not use are disabled; forcing one gets the server's 403.
    sign_in(&b, &app.url, &viewer_key).await;
    b.goto(&format!("{}/budgets", app.url))
        .await
        .expect("budgets");
    let set = b
        .find(Locator::Css("form#set-budget button"))
        .await
        .expect("set button");
    assert!(
        !set.is_enabled().await.expect("state"),
        "disabled for a viewer"
    );
    assert!(text_of(&b, "main").await.contains("lacks manage_budgets"));
    screenshot(&b, "dashboard-viewer-budgets").await;
    b.execute(
        "document.querySelectorAll(\"form#set-budget [disabled]\").forEach(e => e.removeAttribute('disabled'));",
        vec![],
    )
    .await
    .expect("forced");
    b.find(Locator::Css("form#set-budget input[name=project]"))
        .await
        .expect("project")
        .send_keys("shop")
        .await
        .expect("typed");
    b.find(Locator::Css("form#set-budget input[name=monthly_limit]"))
        .await
        .expect("limit")
        .send_keys("9999.00")
        .await
        .expect("typed");
    b.find(Locator::Css("form#set-budget button"))
        .await
        .expect("button")
        .click()
        .await
        .expect("forced submit");
    let refusal = text_of(&b, "main > p.notice.error").await;
    assert!(
        refusal.starts_with("403") && refusal.contains("manage_budgets"),
        "the server's refusal: {refusal}"
    );
    // The status is the server's 403, sent with the viewer's own session.
    let cookie = b
        .get_all_cookies()
        .await
        .expect("cookies")
        .into_iter()
        .find(|c| c.name() == "kairos_session")
        .expect("session");
    let page = reqwest::Client::new()
        .get(format!("{}/budgets", app.url))
        .header("cookie", format!("kairos_session={}", cookie.value()))
        .send()
        .await
        .expect("page")
        .text()
        .await
        .expect("body");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.get(..64))
        .expect("the form's token");
    let forced = reqwest::Client::new()
        .post(format!("{}/budgets", app.url))
        .header("cookie", format!("kairos_session={}", cookie.value()))
        .form(&[
            ("csrf", csrf),
            ("project", "shop"),
            ("monthly_limit", "9999.00"),
        ])
        .send()
        .await
        .expect("forced");
    assert_eq!(forced.status().as_u16(), 403);
    let (_, budget) = app.get("/v1/projects/shop/budget").await;
    assert_eq!(budget["limit"], json!("50.00"), "nothing changed: {budget}");
    b.close().await.expect("browser closed");
    app.cleanup().await;
}

/// What the dashboard's doors refuse: forms without their CSRF token or from another origin,
/// a session cookie that is not one, and a session whose key was revoked.
#[sqlx::test]
async fn forms_need_their_token_and_a_revoked_key_ends_the_session(pool: PgPool) {
    let app = spawn_app(pool).await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let (_, key) = member(&app, "kim@example.com", "developer").await;
    // Sign in without a browser: the sign-in form's token comes with its own cookie.
    let form = http
        .get(format!("{}/sign-in", app.url))
        .send()
        .await
        .expect("form");
    let csp = form.headers()["content-security-policy"]
        .to_str()
        .expect("csp")
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    let sign_in_cookie = form.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .to_owned();
    let token = sign_in_cookie
        .split(';')
        .next()
        .and_then(|c| c.split_once('='))
        .map(|(_, v)| v.to_owned())
        .expect("token");
    let cookie = format!("kairos_sign_in={token}");
    // Without the matching token, sign-in is refused.
    let r = http
        .post(format!("{}/sign-in", app.url))
        .header("cookie", &cookie)
        .form(&[("csrf", "0".repeat(64).as_str()), ("key", key.as_str())])
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 403);
    let r = http
        .post(format!("{}/sign-in", app.url))
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .form(&[("csrf", token.as_str()), ("key", key.as_str())])
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 403, "another origin");
    let r = http
        .post(format!("{}/sign-in", app.url))
        .header("cookie", &cookie)
        .form(&[("csrf", token.as_str()), ("key", key.as_str())])
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 303);
    let set = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .collect::<Vec<_>>();
    let session = set
        .iter()
        .find(|c| c.starts_with("kairos_session="))
        .expect("a session cookie");
    for part in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(session.contains(part), "{session} has {part}");
    }
    let session = session.split(';').next().expect("pair").to_owned();
    let get = |path: &str, cookie: &str| {
        http.get(format!("{}{path}", app.url))
            .header("cookie", cookie.to_owned())
            .send()
    };
    assert_eq!(
        get("/team", &session)
            .await
            .expect("page")
            .status()
            .as_u16(),
        200
    );
    // A made-up or doubled cookie is no session.
    let fake = format!("kairos_session={}", "a".repeat(64));
    assert_eq!(
        get("/team", &fake).await.expect("page").status().as_u16(),
        303
    );
    let doubled = format!("{session}; {session}");
    assert_eq!(
        get("/team", &doubled)
            .await
            .expect("page")
            .status()
            .as_u16(),
        303
    );
    // A form without the session's CSRF token changes nothing.
    let r = http
        .post(format!("{}/team/keys", app.url))
        .header("cookie", &session)
        .form(&[("csrf", "nope"), ("name", "sneaky")])
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 403);
    let (_, seq) = app.get("/v1/projections").await;
    app.wait_for("access", seq["stream_last_seq"].as_u64().expect("seq"))
        .await;
    let (_, keys) = send(client(&key).get(format!("{}/v1/api-keys", app.url))).await;
    assert_eq!(keys["api_keys"].as_array().map(Vec::len), Some(1), "{keys}");
    // Revoking the session's key (as an admin) ends the session at its next request.
    let key_id = {
        let (_, me) = send(client(&key).get(format!("{}/v1/me", app.url))).await;
        me["key_id"].as_str().expect("id").to_owned()
    };
    let (status, r) = app.delete(&format!("/v1/api-keys/{key_id}")).await;
    assert!(status < 300, "{r}");
    let mut ended = false;
    for _ in 0..50 {
        let r = get("/team", &session).await.expect("page");
        if r.status().as_u16() == 303 {
            assert_eq!(r.headers()["location"], "/sign-in?ended=1");
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ended, "the revoked key's session ended");
    // And the session is gone, not only refused.
    assert_eq!(
        get("/", &session).await.expect("page").status().as_u16(),
        303
    );
    app.cleanup().await;
}

/// An HTTP client that shows redirects rather than following them.
fn no_redirects() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// The sign-in form's token (also its cookie's value).
async fn sign_in_token(app: &TestApp, http: &reqwest::Client) -> String {
    let form = http
        .get(format!("{}/sign-in", app.url))
        .send()
        .await
        .expect("form");
    form.headers()["set-cookie"]
        .to_str()
        .expect("cookie")
        .split(';')
        .next()
        .and_then(|c| c.split_once('='))
        .map(|(_, v)| v.to_owned())
        .expect("token")
}

/// A dashboard session for `key`, signed in through the form without a browser: the cookie to
/// send.
async fn session_for(app: &TestApp, http: &reqwest::Client, key: &str) -> String {
    let token = sign_in_token(app, http).await;
    let r = http
        .post(format!("{}/sign-in", app.url))
        .header("cookie", format!("kairos_sign_in={token}"))
        .form(&[("csrf", token.as_str()), ("key", key)])
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 303, "signed in");
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("kairos_session="))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned()
}

/// The page's HTML, in `session`.
async fn page_html(app: &TestApp, http: &reqwest::Client, session: &str, path: &str) -> String {
    let r = http
        .get(format!("{}{path}", app.url))
        .header("cookie", session)
        .send()
        .await
        .expect("page");
    assert_eq!(r.status().as_u16(), 200, "{path}");
    r.text().await.expect("html")
}

#[sqlx::test]
async fn analytics_charts_show_the_costliest_models_and_sum_the_rest(pool: PgPool) {
    let app = spawn_app(pool).await;
    // Eight models: the costliest sorts last by name, the cheapest first.
    let models = [
        ("aa-cheap", "0.01"),
        ("bb-cheap", "0.02"),
        ("cc-mid", "0.10"),
        ("dd-mid", "0.20"),
        ("ee-mid", "0.30"),
        ("ff-mid", "0.40"),
        ("yy-dear", "2.00"),
        ("zz-dearest", "5.00"),
    ];
    let mut events = Vec::new();
    for (k, (model, cost)) in models.iter().enumerate() {
        for i in 0..3 {
            let mut e = llm_call(&format!("m{k}-{i}"), "shop", cost);
            let at = chrono::DateTime::parse_from_rfc3339(kairos_tests::FIXTURE_NOW).expect("time")
                - chrono::Duration::minutes(20 * i64::from(i + 1));
            e["time"] = json!(at.to_rfc3339());
            e["data"]["model"] = json!(model);
            events.push(e);
        }
    }
    let seq = app.ingest(&events).await;
    app.wait_for("analytics", seq).await;
    let http = no_redirects();
    let session = session_for(&app, &http, &app.admin_key).await;
    let html = page_html(&app, &http, &session, "/analytics?range=24h&bucket=hour").await;
    let cost_chart = html
        .split("aria-label=\"")
        .find(|s| s.starts_with("Cost per bucket"))
        .and_then(|s| s.split('"').next())
        .expect("the cost chart's label");
    // Five lines by cost, then one for the three cheapest.
    for shown in ["zz-dearest", "yy-dear", "ff-mid", "ee-mid", "dd-mid"] {
        assert!(cost_chart.contains(shown), "{shown} in {cost_chart}");
    }
    assert!(cost_chart.contains("3 other models"), "{cost_chart}");
    for folded in ["aa-cheap", "bb-cheap", "cc-mid"] {
        assert!(!cost_chart.contains(folded), "{folded} in {cost_chart}");
    }
    let latency_chart = html
        .split("aria-label=\"")
        .find(|s| s.starts_with("Latency p95"))
        .and_then(|s| s.split('"').next())
        .expect("the latency chart's label");
    assert!(
        latency_chart.starts_with("Latency p95: zz-dearest · shop, yy-dear · shop"),
        "{latency_chart}"
    );
    app.cleanup().await;
}

#[sqlx::test]
async fn the_team_page_shows_why_members_are_not_shown(pool: PgPool) {
    let app = spawn_app(pool).await;
    let http = no_redirects();
    let (_, viewer_key) = member(&app, "viewer@example.com", "viewer").await;
    let viewer = session_for(&app, &http, &viewer_key).await;
    let html = page_html(&app, &http, &viewer, "/team").await;
    assert!(
        html.contains("Only admins see the team"),
        "a viewer is told why"
    );
    // An admin whose read fails sees the failure, not the viewer's explanation.
    let admin = session_for(&app, &http, &app.admin_key).await;
    sqlx::query("ALTER TABLE access.members RENAME TO members_away")
        .execute(&app.kairos.pool)
        .await
        .expect("rename");
    let html = page_html(&app, &http, &admin, "/team").await;
    sqlx::query("ALTER TABLE access.members_away RENAME TO members")
        .execute(&app.kairos.pool)
        .await
        .expect("rename back");
    assert!(html.contains("Not available: "), "the failure is shown");
    assert!(!html.contains("Only admins see"), "not the viewer's note");
    app.cleanup().await;
}

#[sqlx::test]
async fn signing_in_and_out_are_in_the_audit_log(pool: PgPool) {
    let app = spawn_app(pool).await;
    let http = no_redirects();
    let (_, key) = member(&app, "kim@example.com", "developer").await;
    let session = session_for(&app, &http, &key).await;
    let html = page_html(&app, &http, &session, "/team").await;
    let csrf = html
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .expect("the session's form token")
        .to_owned();
    let r = http
        .post(format!("{}/sign-out", app.url))
        .header("cookie", &session)
        .form(&[("csrf", csrf.as_str())])
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 303);
    // A sign-in with a key that is not valid is recorded too, without the key.
    let token = sign_in_token(&app, &http).await;
    let bogus = format!("kairos_{}", "0".repeat(64));
    let r = http
        .post(format!("{}/sign-in", app.url))
        .header("cookie", format!("kairos_sign_in={token}"))
        .form(&[("csrf", token.as_str()), ("key", bogus.as_str())])
        .send()
        .await
        .expect("sent");
    assert_eq!(r.status().as_u16(), 401);
    // Counted with the address's other requests without a valid key, once the minute is over.
    app.kairos.clock.advance(chrono::TimeDelta::seconds(60));
    let denied = app.refusals().await;
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["actor"], "anonymous");
    assert!(
        denied[0]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("1 request ") && r.contains("GET /v1/me ×1")),
        "{}",
        denied[0]
    );
    assert!(
        !denied[0].to_string().contains(&bogus),
        "the key is not in the log: {}",
        denied[0]
    );
    let last = app.kairos.bus.last_seq().await.expect("last").0;
    app.wait_for("audit", last).await;
    for action in ["dashboard.sign_in", "dashboard.sign_out"] {
        let (status, page) = app
            .get(&format!("/v1/audit?action={action}&outcome=success"))
            .await;
        assert_eq!(status, 200, "{page}");
        let entries = page["entries"].as_array().expect("entries");
        assert_eq!(entries.len(), 1, "{action}: {page}");
        let e = &entries[0];
        assert_eq!(
            (
                e["actor"].as_str(),
                e["actor_role"].as_str(),
                e["outcome"].as_str()
            ),
            (Some("kim@example.com"), Some("developer"), Some("success")),
            "{e}"
        );
        assert!(e["ip"].as_str().is_some_and(|ip| ip == "127.0.0.1"), "{e}");
    }
    app.cleanup().await;
}

/// The team page shows a page of each list, and a link to the next one when the API has more:
/// 101 open invitations fill one page of 100 and start another.
#[sqlx::test]
async fn the_team_page_links_to_the_next_page_of_a_long_list(pool: PgPool) {
    let app = spawn_app(pool).await;
    let http = no_redirects();
    for i in 0..101 {
        let (status, r) = app
            .post_json(
                "/v1/invitations",
                &json!({"email": format!("p{i:03}@example.com"), "role": "viewer"}),
            )
            .await;
        assert_eq!(status, 201, "{r}");
    }
    app.wait_for("access", app.kairos.bus.last_seq().await.unwrap().0)
        .await;
    let admin = session_for(&app, &http, &app.admin_key).await;
    let first = page_html(&app, &http, &admin, "/team").await;
    let listed = |html: &str| {
        (0..101)
            .filter(|i| html.contains(&format!("p{i:03}@example.com")))
            .count()
    };
    assert_eq!(listed(&first), 100, "one page");
    let link = "href=\"/team?invitations_cursor=";
    let at = first.find(link).expect("a link to the next page") + "href=\"".len();
    let href = first[at..].split('"').next().unwrap().to_owned();
    let rest = page_html(&app, &http, &admin, &href.replace("&amp;", "&")).await;
    assert_eq!(listed(&rest), 1, "the one left: {href}");
    assert!(!rest.contains("More invitations"), "the last page");
    assert!(!first.contains("More members") && !first.contains("More keys"));
    app.cleanup().await;
}
