//! `docs/api_examples/`, run against a live Kairos (with the shipped catalog, as `make run` has):
//! every curl script passes, and between them they call every operation of `/openapi.json`; the
//! Python examples publish over HTTP and straight to NATS, and read budgets and analytics, with
//! their effect checked through the API; the committed Postman collection is what
//! `scripts/postman.py` makes of the live document, and each of its requests, sent as it is,
//! reaches a route that answers without a server error.

use std::collections::BTreeSet;
use std::process::Output;

use kairos_tests::{
    FIXTURE_NOW, TestApp, examples_python, output_text, spawn_app_with, test_settings_with,
};
use serde_json::{Value, json};
use sqlx::PgPool;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const CURL_DIR: &str = "docs/api_examples/curl";
const PYTHON_DIR: &str = "docs/api_examples/python";
const COLLECTION: &str = "docs/api_examples/postman/kairos.postman_collection.json";

/// Every curl script of `docs/api_examples/curl/`, each run by a test below.
const CURL_SCRIPTS: &[&str] = &[
    "access.sh",
    "analytics.sh",
    "anomalies.sh",
    "audit.sh",
    "budgets.sh",
    "catalog.sh",
    "events.sh",
    "platform.sh",
    "route.sh",
    "workflows.sh",
];

/// A Kairos with the catalog of kairos.toml, as `make run` starts it.
async fn app(pool: PgPool) -> TestApp {
    spawn_app_with(pool, test_settings_with("[catalog]\n"), true).await
}

/// A command with only the environment an example gets from the tests: this instance, its
/// admin's key, the test clock's instant.
fn command(app: &TestApp, program: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(program);
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "HOME",
            std::env::var("HOME").unwrap_or_else(|_| "/tmp".into()),
        )
        .env("KAIROS_URL", &app.url)
        .env("KEY", &app.admin_key)
        .env("NOW", FIXTURE_NOW)
        .current_dir(ROOT);
    c
}

/// Runs `docs/api_examples/curl/<script>` with bash; panics with its output unless it succeeds.
async fn run_curl(app: &TestApp, script: &str) -> String {
    let out = command(app, "bash")
        .arg(format!("{CURL_DIR}/{script}"))
        .output()
        .await
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

macro_rules! curl_tests {
    ($($name:ident => $script:literal),* $(,)?) => {$(
        #[sqlx::test(migrations = false)]
        async fn $name(pool: PgPool) {
            let app = app(pool).await;
            let stdout = run_curl(&app, $script).await;
            // Each script checks the status of every call; it printed them.
            assert!(stdout.contains("HTTP 2"), "{stdout}");
            app.cleanup().await;
        }
    )*};
}

curl_tests! {
    curl_access_runs => "access.sh",
    curl_analytics_runs => "analytics.sh",
    curl_anomalies_runs => "anomalies.sh",
    curl_audit_runs => "audit.sh",
    curl_budgets_runs => "budgets.sh",
    curl_catalog_runs => "catalog.sh",
    curl_events_runs => "events.sh",
    curl_platform_runs => "platform.sh",
    curl_route_runs => "route.sh",
    curl_workflows_runs => "workflows.sh",
}

/// A script added to the folder gets a test: the list above is the folder's.
#[test]
fn every_curl_script_is_run_by_a_test() {
    let mut found: Vec<String> = std::fs::read_dir(format!("{ROOT}/{CURL_DIR}"))
        .expect("the curl folder")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|n| n.ends_with(".sh") && n != "lib.sh")
        .collect();
    found.sort();
    assert_eq!(
        found, CURL_SCRIPTS,
        "add the new script to CURL_SCRIPTS and curl_tests!"
    );
}

/// `expect` stops a script, naming the statuses, when an answer is not the one it expects; so a
/// broken example fails its test.
#[sqlx::test(migrations = false)]
async fn a_curl_example_that_gets_another_status_fails(pool: PgPool) {
    let app = app(pool).await;
    let out = command(&app, "bash")
        .arg("-c")
        .arg(format!(
            "set -euo pipefail; EXAMPLE=broken; . {CURL_DIR}/lib.sh; \
             expect 200 curl -sS \"$KAIROS_URL/v1/me\"; echo reached the end"
        ))
        .output()
        .await
        .unwrap();
    let said = output_text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("broken: expected HTTP 200, got 401"),
        "{said}"
    );
    assert!(!said.contains("reached the end"), "{said}");
    // The same for an answer with a key: the key is not printed in the failure.
    let out = command(&app, "bash")
        .arg("-c")
        .arg(format!(
            "set -euo pipefail; EXAMPLE=broken; . {CURL_DIR}/lib.sh; \
             expect 201 curl -sS -H \"Authorization: Bearer $KEY\" \"$KAIROS_URL/v1/me\""
        ))
        .output()
        .await
        .unwrap();
    let said = output_text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("broken: expected HTTP 201, got 200"),
        "{said}"
    );
    assert!(said.contains("Bearer $KEY"), "{said}");
    assert!(!said.contains(&app.admin_key), "{said}");
    // And a check on a value.
    let out = command(&app, "bash")
        .arg("-c")
        .arg(format!(
            "set -euo pipefail; EXAMPLE=broken; . {CURL_DIR}/lib.sh; \
             expect 200 curl -sS -H \"Authorization: Bearer $KEY\" \"$KAIROS_URL/v1/me\"; \
             check role \"$(json role)\" viewer"
        ))
        .output()
        .await
        .unwrap();
    let said = output_text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("role is admin, expected viewer"), "{said}");
    app.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// Every operation has a curl example.

/// `METHOD /path` of every operation of the document.
fn operations(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in ["get", "put", "post", "delete", "patch", "head", "options"] {
            if item.get(method).is_some() {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

/// Each curl command of a script as (method, path): its `-X` (else GET) and the path after each
/// `$KAIROS_URL`, up to the query or the closing quote. Continued lines are joined; comments
/// are skipped.
fn curl_calls(script: &str) -> Vec<(String, String)> {
    let joined = script.replace("\\\n", " ");
    let mut out = Vec::new();
    for line in joined.lines() {
        let line = line.trim();
        if line.starts_with('#') || !line.split_whitespace().any(|w| w == "curl") {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let method = words
            .windows(2)
            .find(|w| w[0] == "-X")
            .map(|w| w[1].trim_matches(|c| c == '"' || c == '\'').to_owned())
            .unwrap_or_else(|| "GET".into());
        let mut rest = line;
        while let Some(at) = rest.find("$KAIROS_URL") {
            rest = &rest[at + "$KAIROS_URL".len()..];
            let end = rest
                .find(|c: char| c == '"' || c == '?' || c == '\'' || c.is_whitespace())
                .unwrap_or(rest.len());
            out.push((method.clone(), rest[..end].to_owned()));
        }
    }
    out
}

/// Whether `path` (as a script writes it, `$VAR`s in it) is an instance of `template`.
fn path_matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && t.ends_with('}') && !p.is_empty()) || t == p)
}

/// The operations no call covers, and the calls that are no operation (a typo, or a removed
/// route).
fn coverage(
    ops: &BTreeSet<(String, String)>,
    calls: &[(String, String)],
) -> (Vec<String>, Vec<String>) {
    let covered =
        |(m, t): &(String, String)| calls.iter().any(|(cm, cp)| cm == m && path_matches(t, cp));
    let missing = ops
        .iter()
        .filter(|op| !covered(op))
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    let unknown = calls
        .iter()
        .filter(|(m, p)| {
            // The document describes every route but itself.
            let this_document = m == "GET" && p == "/openapi.json";
            let an_operation = ops.iter().any(|(om, ot)| om == m && path_matches(ot, p));
            !(this_document || an_operation)
        })
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    (missing, unknown)
}

#[sqlx::test(migrations = false)]
async fn every_operation_has_a_curl_example(pool: PgPool) {
    let app = app(pool).await;
    let doc: Value = reqwest::get(format!("{}/openapi.json", app.url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ops = operations(&doc);
    assert!(ops.len() > 30, "{ops:?}");
    let mut calls = Vec::new();
    for script in CURL_SCRIPTS {
        let body = std::fs::read_to_string(format!("{ROOT}/{CURL_DIR}/{script}")).unwrap();
        calls.extend(curl_calls(&body));
    }
    let (missing, unknown) = coverage(&ops, &calls);
    assert!(
        missing.is_empty(),
        "operations of /openapi.json without a curl example in {CURL_DIR}/: {missing:?}"
    );
    assert!(
        unknown.is_empty(),
        "curl calls in {CURL_DIR}/ of no operation: {unknown:?}"
    );

    // The check can fail: an operation the scripts do not call is reported, and so is a call
    // of no operation, and a call with another method does not cover an operation.
    let mut more = ops.clone();
    more.insert(("GET".into(), "/v1/not-in-any-script/{id}".into()));
    more.insert(("PATCH".into(), "/v1/projects/{project}/budget".into()));
    let (missing, _) = coverage(&more, &calls);
    assert_eq!(
        missing,
        [
            "GET /v1/not-in-any-script/{id}",
            "PATCH /v1/projects/{project}/budget"
        ]
    );
    let parsed = curl_calls(
        "# curl -X DELETE \"$KAIROS_URL/v1/ignored\"\n\
         expect 200 curl -sS -X PUT \"$KAIROS_URL/v1/members/$ID/role\" \\\n  -d '{}'\n\
         curl -sS -H \"Authorization: Bearer $KEY\" \"$KAIROS_URL/v1/budgetz?limit=2\"\n",
    );
    assert_eq!(
        parsed,
        [
            ("PUT".into(), "/v1/members/$ID/role".into()),
            ("GET".into(), "/v1/budgetz".into())
        ]
    );
    let (_, unknown) = coverage(&ops, &parsed);
    assert_eq!(unknown, ["GET /v1/budgetz"]);
    app.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// The Python examples.

/// Runs `docs/api_examples/python/<script> args` with the virtualenv's Python and `env`.
async fn run_python(app: &TestApp, script: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let python = examples_python().await;
    let mut c = command(app, &python);
    c.arg(format!("{PYTHON_DIR}/{script}")).args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().await.expect("python runs")
}

/// As [`run_python`]; panics unless it succeeds; its standard output.
async fn run_python_ok(app: &TestApp, script: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run_python(app, script, args, env).await;
    assert!(
        out.status.success(),
        "{script} failed:\n{}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The value of `name=` in the output's `name=value` words.
fn printed<'a>(stdout: &'a str, name: &str) -> Vec<&'a str> {
    stdout
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .collect()
}

fn project() -> String {
    format!("py-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

#[sqlx::test(migrations = false)]
async fn python_publishes_over_http_with_the_cloudevents_sdk(pool: PgPool) {
    let app = app(pool).await;
    let project = project();
    let stdout = run_python_ok(&app, "publish_http.py", &[], &[("PROJECT", &project)]).await;
    let ids = printed(&stdout, "id");
    assert_eq!(ids.len(), 3, "{stdout}");
    assert_eq!(ids[0], ids[2], "the retry is the first event: {stdout}");
    assert_eq!(
        printed(&stdout, "duplicate"),
        ["false", "false", "true"],
        "{stdout}"
    );
    let seq = printed(&stdout, "last_seq")[0];

    // Two calls stored, the retry counted once, at the instant given.
    let (status, b) = app
        .get(&format!("/v1/projects/{project}/budget?min_seq={seq}"))
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["spent"], "0.0177", "{b}");
    assert_eq!(b["calls"], 2, "{b}");
    assert_eq!(b["period"], "2026-11", "{b}");
    let (_, events) = app.get(&format!("/v1/events?project={project}")).await;
    let stored: Vec<&Value> = events["events"].as_array().unwrap().iter().collect();
    assert_eq!(stored.len(), 2, "{events}");
    let stored_ids: Vec<&str> = stored
        .iter()
        .map(|e| e["event"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(stored_ids, [ids[0], ids[1]], "{events}");
    // Structured, then binary: the same CloudEvent either way.
    for (e, model) in stored.iter().zip(["gpt-4o", "claude-sonnet-4"]) {
        assert_eq!(e["event"]["data"]["model"], model, "{e}");
        assert_eq!(e["event"]["time"], FIXTURE_NOW, "{e}");
        assert_eq!(e["event"]["subject"], json!(project), "{e}");
        assert_eq!(
            e["event"]["source"], "api-examples/python/publish_http",
            "{e}"
        );
    }

    // A key Kairos does not know: the example says so and fails.
    let out = run_python(&app, "publish_http.py", &[], &[("KEY", "not-a-key")]).await;
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("answered 401"),
        "{}",
        output_text(&out)
    );
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn python_publishes_straight_to_nats_with_nats_py(pool: PgPool) {
    let app = app(pool).await;
    let project = project();
    let nats = app.kairos.settings.nats.url.clone();
    let stream = app.kairos.bus.stream_name().to_owned();
    let prefix = app.prefix().to_owned();
    let env = [
        ("PROJECT", project.as_str()),
        ("KAIROS_NATS_URL", nats.as_str()),
        ("KAIROS_NATS_STREAM", stream.as_str()),
        ("KAIROS_NATS_SUBJECT_PREFIX", prefix.as_str()),
    ];
    let stdout = run_python_ok(&app, "publish_nats.py", &[], &env).await;
    let subject = format!("{prefix}.events.llm.{project}");
    assert_eq!(printed(&stdout, "subject"), [subject.as_str()], "{stdout}");
    let seqs = printed(&stdout, "seq");
    assert_eq!(seqs.len(), 2, "{stdout}");
    assert_eq!(seqs[0], seqs[1], "the retry is the same message: {stdout}");
    assert_eq!(printed(&stdout, "duplicate"), ["false", "true"], "{stdout}");
    let seq: u64 = seqs[0].parse().unwrap();

    // On the stream once, on the project's subject, with the Nats-Msg-Id Kairos itself gives it.
    let messages = app.read_stream(&stream, &subject).await;
    assert_eq!(messages.len(), 1);
    let message = &messages[0];
    assert_eq!(message.info().unwrap().stream_sequence, seq);
    let event = kairos_events::Event::from_slice(&message.payload).expect("a valid event");
    assert_eq!(event.id(), printed(&stdout, "id")[0]);
    let header = message
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Id"))
        .map(|v| v.as_str().to_owned());
    assert_eq!(header.as_deref(), Some(event.msg_id().as_str()));
    assert_eq!(printed(&stdout, "msg_id"), [event.msg_id().as_str()]);

    // The projections applied it like any other event: the budget counts the call once.
    let (status, b) = app
        .get(&format!("/v1/projects/{project}/budget?min_seq={seq}"))
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(
        (b["spent"].as_str(), b["calls"].as_u64()),
        (Some("0.0003735"), Some(1)),
        "{b}"
    );
    let (_, events) = app.get(&format!("/v1/events?project={project}")).await;
    assert_eq!(events["events"].as_array().unwrap().len(), 1, "{events}");

    // A stream that does not hold the subject: JetStream refuses, and so does the example.
    let wrong = [
        ("KAIROS_NATS_STREAM", "NO_SUCH_STREAM"),
        env[0],
        env[1],
        env[3],
    ];
    let out = run_python(&app, "publish_nats.py", &[], &wrong).await;
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("JetStream did not store"),
        "{}",
        output_text(&out)
    );
    app.cleanup().await;
}

/// One LLM call of `project` ten minutes before the test clock's now.
fn call(id: &str, project: &str, model: &str, cost: &str, status: &str) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "test/api-examples", "type": "kairos.llm.call.completed.v1",
        "subject": project, "time": "2026-11-20T11:50:00Z",
        "data": {"project": project, "model": model, "provider": "openai", "input_tokens": 100,
                 "output_tokens": 20, "cost": cost, "latency_ms": 300, "status": status}
    })
}

#[sqlx::test(migrations = false)]
async fn python_reads_budgets(pool: PgPool) {
    let app = app(pool).await;
    let project = project();
    let (status, r) = app
        .put_json(
            &format!("/v1/projects/{project}/budget"),
            &json!({"monthly_limit": "10.00"}),
        )
        .await;
    assert_eq!(status, 202, "{r}");
    let seq = app
        .ingest(&[
            call("b-1", &project, "gpt-4o", "1.25", "ok"),
            call("b-2", &project, "gpt-4o", "7.50", "ok"),
        ])
        .await;
    let stdout = run_python_ok(
        &app,
        "read_budgets.py",
        &["--min-seq", &seq.to_string()],
        &[],
    )
    .await;
    assert!(stdout.starts_with("budgets for 2026-11\n"), "{stdout}");
    let row: Vec<&str> = stdout
        .lines()
        .find(|l| l.starts_with(&project))
        .unwrap_or_else(|| panic!("no row for {project}: {stdout}"))
        .split_whitespace()
        .collect();
    // project, limit, spent, remaining, status (8.75 of 10.00 is past the 80 % warning), calls
    assert_eq!(
        row,
        [project.as_str(), "10.00", "8.75", "1.25", "warning", "2"],
        "{stdout}"
    );
    assert!(stdout.contains("USD spent"), "{stdout}");

    // An error answer makes it fail.
    let out = run_python(&app, "read_budgets.py", &["--period", "2026-13"], &[]).await;
    assert!(!out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("invalid_period"),
        "{}",
        output_text(&out)
    );
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn python_reads_analytics(pool: PgPool) {
    let app = app(pool).await;
    let project = project();
    let seq = app
        .ingest(&[
            call("a-1", &project, "gpt-4o", "0.01", "ok"),
            call("a-2", &project, "gpt-4o", "0.02", "error"),
            call("a-3", &project, "gpt-4o-mini", "0.001", "ok"),
        ])
        .await;
    let stdout = run_python_ok(
        &app,
        "read_analytics.py",
        &["--project", &project, "--min-seq", &seq.to_string()],
        &[],
    )
    .await;
    let rows = |first: &str| -> Vec<Vec<String>> {
        stdout
            .lines()
            .filter(|l| l.starts_with(first))
            .map(|l| l.split_whitespace().map(str::to_owned).collect())
            .collect()
    };
    // The hour buckets: one per model, in the 11:00 hour.
    let buckets = rows("2026-11-20T11:00:00Z");
    assert_eq!(buckets.len(), 2, "{stdout}");
    assert_eq!(
        buckets[0][..9],
        [
            "2026-11-20T11:00:00Z",
            &project,
            "gpt-4o",
            "openai",
            "2",
            "1",
            "50.0%",
            "200",
            "40"
        ],
        "{stdout}"
    );
    assert_eq!(buckets[0][9], "0.03", "{stdout}");
    assert_eq!(buckets[1][2], "gpt-4o-mini", "{stdout}");
    // The project's totals per model and overall.
    let total = rows("total");
    assert_eq!(total.len(), 1, "{stdout}");
    assert_eq!(
        total[0][..7],
        ["total", "3", "1", "33.3%", "300", "60", "0.031"],
        "{stdout}"
    );
    assert!(stdout.contains(&format!("project {project}, ")), "{stdout}");

    let out = run_python(
        &app,
        "read_analytics.py",
        &["--project", "not a project"],
        &[],
    )
    .await;
    assert!(!out.status.success(), "{}", output_text(&out));
    app.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// The Postman collection.

#[sqlx::test(migrations = false)]
async fn the_postman_collection_is_generated_from_the_live_document(pool: PgPool) {
    let app = app(pool).await;
    let doc = reqwest::get(format!("{}/openapi.json", app.url))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let mut child = tokio::process::Command::new("python3")
        .arg(format!("{ROOT}/scripts/postman.py"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, &doc)
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "scripts/postman.py failed:\n{}",
        output_text(&out)
    );
    let generated = String::from_utf8(out.stdout).unwrap();
    // `KAIROS_BLESS=1` writes it, as for the API reference.
    if std::env::var_os("KAIROS_BLESS").is_some() {
        std::fs::write(format!("{ROOT}/{COLLECTION}"), &generated).unwrap();
    }
    let committed = std::fs::read_to_string(format!("{ROOT}/{COLLECTION}")).unwrap();
    assert!(
        generated == committed,
        "{COLLECTION} is stale: regenerate it with\n  \
         KAIROS_BLESS=1 cargo nextest run -p kairos-tests --test api_examples postman_collection_is_generated"
    );

    // One request per operation, in one folder per tag.
    let doc: Value = serde_json::from_slice(&doc).unwrap();
    let collection: Value = serde_json::from_str(&committed).unwrap();
    let names: BTreeSet<String> = requests(&collection)
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    let ops: BTreeSet<String> = operations(&doc)
        .into_iter()
        .map(|(m, p)| format!("{m} {p}"))
        .collect();
    assert_eq!(names, ops);
    assert_eq!(requests(&collection).len(), ops.len());
    app.cleanup().await;
}

/// Every request item of the collection, folders flattened.
fn requests(collection: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    let mut stack: Vec<&Value> = vec![collection];
    while let Some(node) = stack.pop() {
        for item in node["item"].as_array().into_iter().flatten().rev() {
            if item.get("request").is_some() {
                out.push(item);
            } else {
                stack.push(item);
            }
        }
    }
    out
}

/// `{{name}}` replaced with the variable's value.
fn substitute(s: &str, vars: &[(&str, &str)]) -> String {
    let mut s = s.to_owned();
    for (k, v) in vars {
        s = s.replace(&format!("{{{{{k}}}}}"), v);
    }
    s
}

/// Sends one request item as Postman would: the collection's bearer key unless the item says
/// `noauth`, its path variables, enabled query parameters and headers, its raw body.
async fn send_item(item: &Value, vars: &[(&str, &str)]) -> (u16, Value) {
    let r = &item["request"];
    let url = &r["url"];
    let mut path = String::new();
    for segment in url["path"].as_array().unwrap() {
        let segment = segment.as_str().unwrap();
        let value = match segment.strip_prefix(':') {
            Some(name) => url["variable"]
                .as_array()
                .and_then(|v| v.iter().find(|v| v["key"] == name))
                .and_then(|v| v["value"].as_str())
                .unwrap_or_else(|| panic!("{}: no value for :{name}", item["name"]))
                .to_owned(),
            None => segment.to_owned(),
        };
        path.push('/');
        path.push_str(&substitute(&value, vars));
    }
    let host = substitute(url["host"][0].as_str().unwrap(), vars);
    let method = reqwest::Method::from_bytes(r["method"].as_str().unwrap().as_bytes()).unwrap();
    let enabled = |list: &Value| -> Vec<(String, String)> {
        list.as_array()
            .into_iter()
            .flatten()
            .filter(|q| q["disabled"] != true)
            .map(|q| {
                (
                    q["key"].as_str().unwrap().to_owned(),
                    substitute(q["value"].as_str().unwrap_or_default(), vars),
                )
            })
            .collect()
    };
    let mut target = reqwest::Url::parse(&format!("{host}{path}")).expect("a URL");
    for (k, v) in enabled(&url["query"]) {
        target.query_pairs_mut().append_pair(&k, &v);
    }
    let mut req = reqwest::Client::new().request(method, target);
    for (k, v) in enabled(&r["header"]) {
        req = req.header(k, v);
    }
    if r["auth"]["type"] != "noauth" {
        req = req.bearer_auth(substitute("{{apiKey}}", vars));
    }
    if let Some(raw) = r["body"]["raw"].as_str() {
        req = req.body(substitute(raw, vars));
    }
    let response = req.send().await.expect("request sent");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Why an answer shows the request did not reach a working route: a server error, a path no
/// route has, or a method the route does not take. `None` for any other answer.
fn broken(status: u16, body: &Value) -> Option<String> {
    let no_route = status == 404
        && body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("no route"));
    (status >= 500 || status == 405 || no_route).then(|| format!("{status} {body}"))
}

#[sqlx::test(migrations = false)]
async fn every_request_of_the_postman_collection_reaches_its_route(pool: PgPool) {
    let app = app(pool).await;
    let committed = std::fs::read_to_string(format!("{ROOT}/{COLLECTION}")).unwrap();
    let collection: Value = serde_json::from_str(&committed).unwrap();
    assert_eq!(collection["auth"]["type"], "bearer");
    assert_eq!(collection["auth"]["bearer"][0]["value"], "{{apiKey}}");
    let vars = [
        ("baseUrl", app.url.as_str()),
        ("apiKey", app.admin_key.as_str()),
    ];
    let items = requests(&collection);
    assert!(items.len() > 30);
    let mut failures = Vec::new();
    let mut authorised = 0;
    for item in &items {
        let (status, body) = send_item(item, &vars).await;
        if let Some(why) = broken(status, &body) {
            failures.push(format!("{}: {why}", item["name"]));
        }
        if status != 401 {
            authorised += 1;
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // The key reached every route that needs one.
    assert_eq!(authorised, items.len());

    // The classification catches what it is for: a path no route serves, a wrong method.
    let ghost = json!({"name": "GET /v1/ghost", "request": {"method": "GET", "header": [],
        "url": {"host": ["{{baseUrl}}"], "path": ["v1", "ghost"]}}});
    let (status, body) = send_item(&ghost, &vars).await;
    assert!(broken(status, &body).is_some(), "{status} {body}");
    let wrong = json!({"name": "DELETE /v1/me", "request": {"method": "DELETE", "header": [],
        "url": {"host": ["{{baseUrl}}"], "path": ["v1", "me"]}}});
    let (status, body) = send_item(&wrong, &vars).await;
    assert!(broken(status, &body).is_some(), "{status} {body}");
    app.cleanup().await;
}
