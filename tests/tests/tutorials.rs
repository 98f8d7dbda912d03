//! The tutorials, tested by following them. `docs/tutorials/hello-agent.md`: the Python agent
//! (`examples/hello_agent.py`) and the Rust one (`crates/kairos-client/examples/hello_agent.rs`)
//! run against a live Kairos with the shipped catalog, by the very command lines the tutorial
//! shows, and their effects are checked through the API: the route decisions, the reservations
//! settled and the spend counted, the workflow sessions and the next-task suggestion. The code
//! the tutorial quotes is checked to be the files' code.
//!
//! `docs/tutorials/hello-projection.md`: its code blocks, put together file by file, are the
//! crate `examples/task-stats` (which the workspace builds and unit-tests); its registration line
//! is the binary's `startup::registry()` with one line more, and the tests register the module
//! exactly so; its `curl` commands run against a live Kairos serving that registry, and answer
//! what the page shows.

use kairos_tests::{
    FIXTURE_NOW, TestApp, examples_python, fixture_clock, output_text, read_repo,
    spawn_app_registered, spawn_app_with, test_settings, test_settings_with,
};
use serde_json::Value;
use sqlx::PgPool;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
const TUTORIAL: &str = "docs/tutorials/hello-agent.md";
const PY_FILE: &str = "examples/hello_agent.py";
const RS_FILE: &str = "crates/kairos-client/examples/hello_agent.rs";

/// The command lines of the tutorial, run as they are written (with bash).
const PY_SETUP: &str = "KAIROS_PYTHON=$(scripts/pyenv.sh)";
const PY_RUN: &str = "\"$KAIROS_PYTHON\" examples/hello_agent.py";
const RS_RUN: &str = "cargo run -p kairos-client --example hello_agent";
const ENV_LINE: &str = ". ./.kairos/env && export KEY=$KAIROS_BOOTSTRAP_ADMIN_KEY";

/// Each task's tokens (plan, draft, review) priced by the shipped catalog's claude-sonnet-4, the
/// model the router picks under a budget this far from its limit: 4 plans and drafts, 3 reviews.
const SPENT: &str = "0.1449";
const CALLS: u64 = 11;

/// A Kairos with the catalog of kairos.toml, as `make run` starts it.
async fn app(pool: PgPool) -> TestApp {
    spawn_app_with(pool, test_settings_with("[catalog]\n"), true).await
}

/// `line` run by bash from the repository's root against `app`, as the tutorial's reader runs
/// it after sourcing `.kairos/env`: this instance's URL, stream and subject prefix, its admin's
/// key, the test clock's instant. Panics unless it succeeds; its standard output.
async fn follow(app: &TestApp, line: &str, env: &[(&str, &str)]) -> String {
    let nats = &app.kairos.settings.nats;
    let mut c = tokio::process::Command::new("bash");
    c.arg("-c")
        .arg(line)
        .env_remove("KAIROS_BOOTSTRAP_ADMIN_KEY")
        .env("KAIROS_URL", &app.url)
        .env("KEY", &app.admin_key)
        .env("NOW", FIXTURE_NOW)
        .env("KAIROS_NATS_URL", &nats.url)
        .env("KAIROS_NATS_STREAM", &nats.stream)
        .env("KAIROS_NATS_SUBJECT_PREFIX", &nats.subject_prefix)
        .current_dir(ROOT);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().await.expect("bash runs");
    assert!(
        out.status.success(),
        "{line} failed:\n{}",
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

fn fresh(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// What the agent did, as the API shows it.
async fn check_effects(app: &TestApp, project: &str, session: &str, stdout: &str) {
    assert_eq!(printed(stdout, "session"), [session], "{stdout}");
    assert_eq!(printed(stdout, "next"), ["review"], "{stdout}");
    let seq = printed(stdout, "last_seq")[0];
    let decisions = printed(stdout, "decision");
    assert_eq!(decisions.len() as u64, CALLS, "{stdout}");

    // Every task's route was recorded, each reserving budget for a paid model.
    let (status, list) = app
        .get(&format!("/v1/route/decisions?project={project}&limit=100"))
        .await;
    assert_eq!(status, 200, "{list}");
    let recorded: Vec<&Value> = list["decisions"].as_array().unwrap().iter().collect();
    assert_eq!(recorded.len() as u64, CALLS, "{list}");
    for d in &recorded {
        assert_eq!(d["outcome"], "reserved", "{d}");
        assert_eq!(d["model"], "claude-sonnet-4", "{d}");
        assert!(
            decisions.contains(&d["decision_id"].as_str().unwrap()),
            "{d}"
        );
    }

    // Each call settled its reservation: the calls' cost is spent, nothing is held.
    let (status, b) = app
        .get(&format!("/v1/projects/{project}/budget?min_seq={seq}"))
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["period"], "2026-11", "{b}");
    assert_eq!(b["limit"], "5.00", "{b}");
    assert_eq!(b["calls"], CALLS, "{b}");
    assert_eq!(b["spent"], SPENT, "{b}");
    assert_eq!(b["reserved"], "0.00", "{b}");
    assert_eq!(b["unpriced_calls"], 0, "{b}");

    // The workflow's sessions were seen, and the last one is told what comes next.
    let (status, s) = app
        .get(&format!(
            "/v1/workflows/sessions/{session}/suggestions?project={project}&min_seq={seq}"
        ))
        .await;
    assert_eq!(status, 200, "{s}");
    assert_eq!(
        s["recent_tasks"],
        serde_json::json!(["plan", "draft"]),
        "{s}"
    );
    assert_eq!(s["steps"], 2, "{s}");
    assert_eq!(s["suggestions"][0]["task"], "review", "{s}");
    assert_eq!(s["suggestions"][0]["end"], false, "{s}");
    assert!(
        s["suggestions"][0]["because"]["text"]
            .as_str()
            .unwrap()
            .contains("3 of 3 times"),
        "{s}"
    );
    for past in 1..=3 {
        let (status, p) = app
            .get(&format!(
                "/v1/workflows/sessions/{session}-past-{past}/suggestions?project={project}&min_seq={seq}"
            ))
            .await;
        assert_eq!(status, 200, "{p}");
        assert_eq!(
            p["recent_tasks"],
            serde_json::json!(["plan", "draft", "review"]),
            "{p}"
        );
    }
    let (status, patterns) = app
        .get(&format!(
            "/v1/workflows/patterns?project={project}&min_support=3&min_seq={seq}"
        ))
        .await;
    assert_eq!(status, 200, "{patterns}");
    assert!(
        patterns["patterns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["tasks"] == serde_json::json!(["plan", "draft", "review"])),
        "{patterns}"
    );
}

#[sqlx::test(migrations = false)]
async fn the_python_hello_agent_runs_as_the_tutorial_says(pool: PgPool) {
    let app = app(pool).await;
    let (project, session) = (fresh("hello-py"), fresh("s"));
    let python = examples_python().await;
    let stdout = follow(
        &app,
        PY_RUN,
        &[
            ("KAIROS_PYTHON", &python),
            ("PROJECT", &project),
            ("SESSION", &session),
        ],
    )
    .await;
    check_effects(&app, &project, &session, &stdout).await;
    // Every event it sent is a CloudEvent of its own source, stored at the instant given.
    let (_, events) = app
        .get(&format!("/v1/events?project={project}&limit=100"))
        .await;
    let stored = events["events"].as_array().unwrap();
    assert!(stored.len() >= 33, "{events}");
    for e in stored
        .iter()
        .filter(|e| e["event"]["source"] == "examples/hello-agent")
    {
        assert_eq!(e["event"]["specversion"], "1.0", "{e}");
        assert_eq!(e["event"]["time"], FIXTURE_NOW, "{e}");
    }
    app.cleanup().await;
}

#[sqlx::test(migrations = false)]
async fn the_rust_hello_agent_runs_as_the_tutorial_says(pool: PgPool) {
    let app = app(pool).await;
    let (project, session) = (fresh("hello-rs"), fresh("s"));
    let stdout = follow(
        &app,
        RS_RUN,
        &[("PROJECT", &project), ("SESSION", &session)],
    )
    .await;
    check_effects(&app, &project, &session, &stdout).await;
    app.cleanup().await;
}

/// Each fenced block of `lang` in `doc`.
fn blocks<'a>(doc: &'a str, lang: &str) -> Vec<&'a str> {
    let fence = format!("```{lang}\n");
    let mut out = Vec::new();
    let mut rest = doc;
    while let Some(at) = rest.find(&fence) {
        let body = &rest[at + fence.len()..];
        let end = body.find("```").expect("a closed block");
        out.push(&body[..end]);
        rest = &body[end..][3..];
    }
    out
}

/// The tutorial shows the commands the tests above run, and its code is the files' code: a
/// change to either that the other does not follow fails here.
#[test]
fn the_tutorial_shows_what_the_tests_run() {
    let doc = read_repo(TUTORIAL);
    for line in [ENV_LINE, PY_SETUP, PY_RUN, RS_RUN, "make run"] {
        assert!(
            doc.lines().any(|l| l.trim() == line
                || l.trim().starts_with(&format!("{line} "))
                || l.trim().contains(&format!("&& {line}"))),
            "{TUTORIAL} does not show the command line `{line}`"
        );
    }
    for (lang, file) in [("python", PY_FILE), ("rust", RS_FILE)] {
        let code = read_repo(file);
        let quoted = blocks(&doc, lang);
        assert!(
            quoted.len() >= 3,
            "{TUTORIAL} quotes {file} in ```{lang} blocks"
        );
        for block in quoted {
            assert!(
                code.contains(block),
                "{TUTORIAL} quotes code that is not in {file}:\n{block}"
            );
        }
    }
    // What the tutorial says the agent prints is what it prints.
    for said in [
        "next=review",
        "Kairos suggests:",
        "3 of 3 times",
        "outcome=reserved",
    ] {
        assert!(doc.contains(said), "{TUTORIAL} lacks `{said}`");
    }
    assert!(doc.contains(SPENT), "{TUTORIAL} lacks the spend {SPENT}");
}

// ---------------------------------------------------------------------------------------------
// Hello projection.
// ---------------------------------------------------------------------------------------------

const PROJECTION_TUTORIAL: &str = "docs/tutorials/hello-projection.md";
const PROJECTION_CRATE: &str = "examples/task-stats";
/// The comment that marks the registry's new line in the tutorial.
const NEW_LINE: &str = " // the new line";

/// The path a block's first line names (`// path`, `# path`, `-- path`, optionally followed by
/// ` (continued)`), and the rest of the block.
fn named(block: &str) -> Option<(&str, &str)> {
    let (first, rest) = block.split_once('\n')?;
    let path = ["// ", "# ", "-- "]
        .iter()
        .find_map(|c| first.strip_prefix(c))?
        .trim_end_matches(" (continued)");
    (path.contains('/') || path.ends_with(".toml")).then_some((path, rest))
}

/// The shipped registry with the tutorial's module added, as its one line in
/// `startup::registry()` makes it.
fn with_task_stats() -> kairos_api::Registry {
    let mut modules: Vec<&'static dyn kairos_api::Module> =
        kairos::startup::registry().modules().collect();
    modules.push(&kairos_task_stats::MODULE);
    kairos_api::Registry::new(modules)
}

/// Following the page gives the crate: each file's blocks, in the page's order, are the file;
/// the registration lines are where the page says (the binary's registry, its dependency line as
/// the tests carry it).
#[test]
fn the_hello_projection_tutorial_builds_the_crate_it_shows() {
    let doc = read_repo(PROJECTION_TUTORIAL);
    let mut files: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for lang in ["toml", "sql", "rust"] {
        for block in blocks(&doc, lang) {
            let (path, body) =
                named(block).unwrap_or_else(|| panic!("a block names no file:\n{block}"));
            files.entry(path).or_default().push(body);
        }
    }
    let crate_files = [
        "examples/task-stats/Cargo.toml",
        "examples/task-stats/migrations/0001_tasks.sql",
        "examples/task-stats/src/lib.rs",
    ];
    for file in crate_files {
        // Blocks of one language were collected in page order; a file is all one language.
        let shown = files
            .get(file)
            .unwrap_or_else(|| panic!("{PROJECTION_TUTORIAL} does not show {file}"))
            .join("\n");
        let code = read_repo(file);
        if shown.trim_end() != code.trim_end() {
            let at = shown
                .lines()
                .zip(code.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(shown.lines().count().min(code.lines().count()));
            panic!(
                "{PROJECTION_TUTORIAL}'s blocks of {file} are not the file: they part at line {}:\n\
                 page: {:?}\nfile: {:?}",
                at + 1,
                shown.lines().nth(at),
                code.lines().nth(at)
            );
        }
    }
    // No file of the crate goes unshown.
    let mut in_crate = Vec::new();
    let mut dirs = vec![std::path::PathBuf::from(format!(
        "{ROOT}/{PROJECTION_CRATE}"
    ))];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("the crate's folder") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                let rel = path
                    .strip_prefix(format!("{ROOT}/"))
                    .expect("under the root");
                in_crate.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    in_crate.sort();
    assert_eq!(in_crate, crate_files, "the crate's files");

    // The registry block is the binary's registry() with the one line added.
    let registry = files["crates/kairos/src/startup.rs"].join("\n");
    let line = registry
        .lines()
        .find(|l| l.ends_with(NEW_LINE))
        .expect("the block marks its new line");
    assert_eq!(
        line.trim().trim_end_matches(NEW_LINE),
        "&kairos_task_stats::MODULE,"
    );
    let without: String = registry
        .lines()
        .filter(|l| !l.ends_with(NEW_LINE))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        read_repo("crates/kairos/src/startup.rs").contains(&without),
        "{PROJECTION_TUTORIAL}'s registry() is not the binary's:\n{without}"
    );
    // The dependency lines: the workspace's is in the root manifest; the binary's is the line
    // the tests, which register the module in its place, carry.
    for (shown_in, really_in) in [
        ("Cargo.toml", "Cargo.toml"),
        ("crates/kairos/Cargo.toml", "tests/Cargo.toml"),
    ] {
        let dep = files[shown_in].join("\n");
        let manifest = read_repo(really_in);
        for l in dep.lines().filter(|l| !l.trim().is_empty()) {
            assert!(
                manifest.lines().any(|m| m == l),
                "{really_in} lacks the tutorial's `{l}`"
            );
        }
    }
    assert_eq!(
        files.keys().copied().collect::<Vec<_>>(),
        [
            "Cargo.toml",
            "crates/kairos/Cargo.toml",
            "crates/kairos/src/startup.rs",
            "examples/task-stats/Cargo.toml",
            "examples/task-stats/migrations/0001_tasks.sql",
            "examples/task-stats/src/lib.rs",
        ],
        "the files the page shows"
    );
    assert!(doc.contains("```sh\ncargo test -p kairos-task-stats\n```"));
    // The module registers as the page says: its name, its route, its guard.
    let registry = with_task_stats();
    assert!(registry.names().contains(&"task_stats"));
}

/// The commands of step 9 (all but `make run` and sourcing the environment, which the test's
/// instance stands in for), run twice as the page says: the second publish is a duplicate and
/// changes nothing.
#[sqlx::test(migrations = false)]
async fn the_hello_projection_answers_as_the_tutorial_says(pool: PgPool) {
    let doc = read_repo(PROJECTION_TUTORIAL);
    let run = &doc[doc.find("## 9. Run it").expect("step 9")..];
    let commands: Vec<&str> = blocks(run, "sh")
        .into_iter()
        .filter(|b| b.trim() != "make run" && !b.starts_with(". ./.kairos/env"))
        .collect();
    assert_eq!(commands.len(), 3, "publish, read, read without a key");
    let read_back: Value = serde_json::from_str(blocks(run, "json")[0]).expect("the page's JSON");
    let unauthorised = blocks(run, "text")[0].trim();

    let settings = test_settings();
    let app = spawn_app_registered(pool, settings, true, fixture_clock(), with_task_stats()).await;
    let script = format!("set -euo pipefail\n{}", commands.concat());
    for round in ["first", "again"] {
        let stdout = follow(&app, &script, &[]).await;
        let mut lines = stdout.lines();
        let seq = lines.next().and_then(|l| l.strip_prefix("seq="));
        assert!(
            seq.is_some_and(|s| s.parse::<u64>().is_ok_and(|n| n > 0)),
            "{round}: {stdout}"
        );
        let got: Value = serde_json::from_str(lines.next().unwrap_or_default())
            .unwrap_or_else(|e| panic!("{round}: {e}: {stdout}"));
        assert_eq!(got, read_back, "{round}: the read is what the page shows");
        assert_eq!(lines.next(), Some(unauthorised), "{round}: {stdout}");
    }
    // The second batch was stored once: three events on the stream.
    let (_, events) = app.get("/v1/events?project=hello&limit=100").await;
    assert_eq!(
        events["events"].as_array().map(Vec::len),
        Some(3),
        "{events}"
    );
    // Its migrations ran into their own history.
    assert_eq!(
        kairos_runtime::module_table("task_stats"),
        "kairos._migrations_task_stats"
    );
    let applied: Vec<(i64, String)> = sqlx::query_as(
        "SELECT version, description FROM kairos._migrations_task_stats ORDER BY version",
    )
    .fetch_all(&app.kairos.pool)
    .await
    .expect("the module's migration history");
    assert_eq!(applied, [(1, "tasks".to_owned())]);
    app.cleanup().await;
}
