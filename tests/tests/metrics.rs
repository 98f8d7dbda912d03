//! `/metrics`: every family the platform records, in Prometheus text format, each with its HELP
//! and TYPE lines, parsed back here; and checked by `promtool check metrics` when
//! `KAIROS_PROMTOOL` names it (`make test` does).

use std::collections::{BTreeMap, BTreeSet};

use kairos_tests::{llm_call, spawn_app};
use serde_json::json;
use sqlx::PgPool;

/// A family's TYPE and HELP lines, and its samples as (name with labels, value).
#[derive(Default, Debug)]
struct Family {
    kind: Option<String>,
    help: Option<String>,
    samples: Vec<(String, f64)>,
}

/// Parses the text format strictly enough to catch what scrapers reject: samples of families
/// never typed, values that are not numbers, TYPE or HELP given twice.
fn parse(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').expect("HELP name text");
            let f = families.entry(name.to_owned()).or_default();
            assert!(
                f.help.replace(help.to_owned()).is_none(),
                "HELP twice: {name}"
            );
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
            assert!(
                ["counter", "gauge", "histogram", "summary"].contains(&kind),
                "{line}"
            );
            let f = families.entry(name.to_owned()).or_default();
            assert!(
                f.kind.replace(kind.to_owned()).is_none(),
                "TYPE twice: {name}"
            );
        } else {
            assert!(!line.starts_with('#'), "unknown comment: {line}");
            let (series, value) = line.rsplit_once(' ').expect("sample value");
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line}"));
            let name = series.split('{').next().unwrap();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s).filter(|base| {
                        families
                            .get(*base)
                            .is_some_and(|f| f.kind.as_deref() == Some("histogram"))
                    })
                })
                .unwrap_or(name);
            let f = families
                .get_mut(family)
                .unwrap_or_else(|| panic!("sample of an untyped family: {line}"));
            f.samples.push((series.to_owned(), value));
        }
    }
    families
}

fn value(f: &BTreeMap<String, Family>, family: &str, series: &str) -> Option<f64> {
    f.get(family)?
        .samples
        .iter()
        .find(|(s, _)| s == series)
        .map(|(_, v)| *v)
}

#[sqlx::test(migrations = false)]
async fn every_family_is_typed_described_and_parses(pool: PgPool) {
    let app = spawn_app(pool).await;
    let seq = app
        .ingest(&[
            llm_call("m-1", "acme", "0.25"),
            llm_call("m-2", "acme", "0.5"),
        ])
        .await;
    // A duplicate and a refused event, by reason.
    app.ingest(&[llm_call("m-1", "acme", "0.25")]).await;
    let (status, _) = app
        .post_events(
            "application/cloudevents+json",
            b"{\"specversion\":\"1.0\"}".to_vec(),
        )
        .await;
    assert_eq!(status, 400);
    app.wait_for("budgets", seq).await;
    let (status, r) = app
        .put_json("/v1/projects/acme/budget", &json!({"monthly_limit": "5"}))
        .await;
    assert_eq!(status, 202, "{r}");
    let (status, _) = app.get("/v1/projects/acme/budget").await;
    assert_eq!(status, 200);

    let text = app
        .http
        .get(format!("{}/metrics", app.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let families = parse(&text);
    for (name, f) in &families {
        assert!(f.kind.is_some(), "{name} has no TYPE");
        assert!(
            f.help.as_deref().is_some_and(|h| !h.is_empty()),
            "{name} has no HELP"
        );
    }
    let expected: BTreeSet<&str> = [
        "kairos_http_request_duration_seconds",
        "kairos_ingest_events_total",
        "kairos_stream_last_seq",
        "kairos_projection_checkpoint",
        "kairos_projection_lag_events",
        "kairos_projection_events_applied_total",
        "kairos_projection_duplicates_total",
        "kairos_projection_dead_lettered_total",
        "kairos_projection_batch_size",
        "kairos_projection_apply_duration_seconds",
        "kairos_commands_total",
        "kairos_command_conflicts_total",
        "kairos_db_pool_connections",
        "kairos_nats_reconnects_total",
    ]
    .into();
    let present: BTreeSet<&str> = families.keys().map(String::as_str).collect();
    assert!(
        expected.is_subset(&present),
        "missing: {:?}\n{text}",
        expected.difference(&present).collect::<Vec<_>>()
    );
    assert_eq!(
        families["kairos_http_request_duration_seconds"]
            .kind
            .as_deref(),
        Some("histogram")
    );
    assert_eq!(
        families["kairos_projection_batch_size"].kind.as_deref(),
        Some("histogram")
    );
    // Requests by route template, never the raw path.
    assert!(
        families["kairos_http_request_duration_seconds"]
            .samples
            .iter()
            .any(
                |(s, _)| s.contains("route=\"/v1/projects/{project}/budget\"")
                    && s.contains("status=\"200\"")
            ),
        "{text}"
    );
    assert!(!text.contains("/v1/projects/acme/budget"), "no raw paths");
    let ingest = |outcome: &str, reason: &str| {
        value(
            &families,
            "kairos_ingest_events_total",
            &format!("kairos_ingest_events_total{{outcome=\"{outcome}\",reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(ingest("accepted", ""), Some(2.0), "{text}");
    assert_eq!(ingest("duplicate", ""), Some(1.0), "{text}");
    assert_eq!(ingest("rejected", "missing_attribute"), Some(1.0), "{text}");
    assert_eq!(
        value(
            &families,
            "kairos_commands_total",
            "kairos_commands_total{aggregate=\"budget\",outcome=\"appended\"}"
        ),
        Some(1.0),
        "{text}"
    );
    let applied = value(
        &families,
        "kairos_projection_events_applied_total",
        "kairos_projection_events_applied_total{projection=\"budgets\"}",
    )
    .unwrap();
    assert!(applied >= 2.0, "{text}");
    assert!(
        families["kairos_db_pool_connections"].samples.len() == 2,
        "in use and idle: {text}"
    );

    if let Ok(promtool) = std::env::var("KAIROS_PROMTOOL") {
        use std::io::Write;
        let mut child = std::process::Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{promtool}: {e}"));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool: {said}"
        );
    }
    app.cleanup().await;
}
