//! The command line as a user meets it: bad configuration stops start-up naming the key, and
//! `kairos publish` validates every line like the HTTP door, against a real NATS server.

mod common;
use common::unique_tag;

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn kairos(args: &[&str], env: &[(&str, &str)], stdin: Option<&[u8]>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kairos"));
    cmd.args(args)
        .env_remove("KAIROS_CONFIG")
        .env("RUST_LOG", "error")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("kairos runs");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin");
        // A writer thread: the child may answer before it has read everything.
        let input = input.to_vec();
        std::thread::spawn(move || {
            let _ = pipe.write_all(&input);
        });
    }
    child.wait_with_output().expect("kairos exits")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts that the command failed and said `why` on stderr.
fn assert_refused(o: &Output, why: &str) {
    assert!(
        !o.status.success() && stderr(o).contains(why),
        "{}",
        stderr(o)
    );
}

#[test]
fn bad_configuration_stops_start_up_naming_the_key() {
    let dir = std::env::temp_dir().join(format!("kairos-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cases = [
        ("[http]\naddr = 8080\n", "http.addr"),
        (
            "[nats]\nurl = \"nats://x\"\nsubject_prefix = \"has space\"\n",
            "nats.subject_prefix",
        ),
        (
            "[budgets]\ntimezone = \"Atlantis/Capital\"\n",
            "budgets.timezone",
        ),
        (
            "[database]\nmax_connections = \"many\"\n",
            "database.max_connections",
        ),
        ("[unknown_section]\nx = 1\n", "unknown_section"),
        ("[projections]\npartitions = 0\n", "projections.partitions"),
        ("[projections]\npartitions = 65\n", "projections.partitions"),
        (
            "[projections]\npartitions = \"six\"\n",
            "projections.partitions",
        ),
        ("[anomalies]\nsave_every = 6000\n", "anomalies.save_every"),
        (
            "[anomalies]\nevict_idle_hours = 0\n",
            "anomalies.evict_idle_hours",
        ),
        (
            "[anomalies]\nkeep_alerts_days = 0\n",
            "anomalies.keep_alerts_days",
        ),
        ("[anomalies]\nraise_above = 1.5\n", "anomalies.raise_above"),
        (
            "[anomalies]\ncost_action = \"panic\"\n",
            "anomalies.cost_action",
        ),
        (
            "[anomalies]\nwebhook_url = \"ftp://x\"\nwebhook_secret = \"0123456789abcdef\"\n",
            "anomalies.webhook_url",
        ),
        (
            "[anomalies]\nwebhook_url = \"https://hooks.example.com/k\"\nwebhook_secret = \"short\"\n",
            "anomalies.webhook_secret",
        ),
        ("[http\naddr=", "TOML"),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad-{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = kairos(
            &["check-config", "--config", path.to_str().unwrap()],
            &[],
            None,
        );
        assert!(!out.status.success(), "{text}");
        assert!(stderr(&out).contains(key), "{text}: {}", stderr(&out));
    }
    let out = kairos(
        &["check-config", "--config", "/no/such/kairos.toml"],
        &[],
        None,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("/no/such/kairos.toml"));

    // Environment overrides are validated the same way, and applied when valid.
    let out = kairos(
        &["check-config"],
        &[("KAIROS_HTTP_ADDR", "not-an-address")],
        None,
    );
    assert!(!out.status.success());
    assert!(stderr(&out).contains("http.addr"), "{}", stderr(&out));
    // A module's section, through the environment: `_` or `__` after the section's name.
    for var in ["KAIROS_BUDGETS_TIMEZONE", "KAIROS_BUDGETS__TIMEZONE"] {
        let out = kairos(&["check-config"], &[(var, "Atlantis/Capital")], None);
        assert!(!out.status.success(), "{var}");
        assert!(
            stderr(&out).contains("budgets.timezone"),
            "{var}: {}",
            stderr(&out)
        );
    }
    let out = kairos(
        &["check-config"],
        &[("KAIROS_BUDGETS__TIMEZONE", "Pacific/Auckland")],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Pacific/Auckland"),
        "the override is applied"
    );
    let out = kairos(
        &["check-config"],
        &[
            ("KAIROS_NATS_SUBJECT_PREFIX", "tenant-b"),
            ("KAIROS_DATABASE_URL", "postgres://u:hunter2@db/k"),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("\"tenant-b\""));
    assert!(!shown.contains("hunter2"), "passwords are not printed");
    let out = kairos(
        &["check-config"],
        &[
            (
                "KAIROS_ANOMALIES_WEBHOOK_URL",
                "https://hooks.example.com/T0/hunter4",
            ),
            (
                "KAIROS_ANOMALIES_WEBHOOK_SECRET",
                "a-webhook-secret-hunter3",
            ),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("hooks.example.com"), "{shown}");
    assert!(
        !shown.contains("hunter3"),
        "a module's secret is not printed"
    );
    assert!(!shown.contains("hunter4"), "nor a webhook URL's path");
    let out = kairos(
        &["check-config"],
        &[("KAIROS_BOOTSTRAP_ADMIN_KEY", "short")],
        None,
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("auth.bootstrap_admin_key"),
        "{}",
        stderr(&out)
    );
    let key = "kairos_0123456789abcdef0123456789abcdef";
    let out = kairos(
        &["check-config"],
        &[
            ("KAIROS_BOOTSTRAP_ADMIN_KEY", key),
            (
                "KAIROS_AUTH_KEY_SECRET",
                "a-server-secret-of-at-least-32-chars",
            ),
        ],
        None,
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("bootstrap_admin_key: Some("), "{shown}");
    assert!(
        !shown.contains(key) && !shown.contains("a-server-secret"),
        "secrets are not printed"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn unknown_commands_and_projections_are_refused() {
    let out = kairos(&["consume", "nonexistent"], &[], None);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("unknown projection"),
        "{}",
        stderr(&out)
    );
    let out = kairos(&["frobnicate"], &[], None);
    assert!(!out.status.success());
}

#[test]
fn publish_validates_each_line_and_keeps_going() {
    let tag = unique_tag();
    let stream = format!("CLI_{tag}");
    let prefix = format!("cli{tag}");
    let good = |id: &str| {
        format!(
            r#"{{"specversion":"1.0","id":"{id}","source":"cli-test","type":"kairos.llm.call.completed.v1","subject":"p1","data":{{"project":"p1","model":"m","provider":"x","input_tokens":1,"output_tokens":1,"cost":"0.01","latency_ms":1,"status":"ok"}}}}"#
        )
    };
    let mut input = String::new();
    input.push_str(&good("one"));
    input.push('\n');
    input.push_str("{not json\n");
    input.push('\n');
    input.push_str(&good("one").replace("\"cost\":\"0.01\"", "\"cost\":\"cheap\""));
    input.push('\n');
    input.push_str(&format!(
        "{{\"pad\":\"{}\"}}\n",
        "x".repeat(10 * 1024 * 1024)
    ));
    input.push_str(&good("two"));
    input.push('\n');
    input.push_str(&good("one")); // a retry: stored once
    let env = [
        ("KAIROS_NATS_STREAM", stream.as_str()),
        ("KAIROS_NATS_SUBJECT_PREFIX", prefix.as_str()),
    ];
    let out = kairos(&["publish"], &env, Some(input.as_bytes()));
    assert_eq!(
        out.status.code(),
        Some(1),
        "rejected lines give exit code 1: {}",
        stderr(&out)
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON result per line"))
        .collect();
    let summary: Vec<(u64, &str)> = lines
        .iter()
        .map(|l| (l["line"].as_u64().unwrap(), l["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            (2, "rejected"),
            (4, "rejected"),
            (5, "rejected"),
            (1, "accepted"),
            (6, "accepted"),
            (7, "accepted")
        ]
    );
    assert_eq!(lines[1]["error"]["field"], "data.cost");
    assert_eq!(lines[2]["error"]["code"], "event_too_large");
    assert_eq!(lines[5]["duplicate"], true);
    assert!(
        stderr(&out).contains("3 accepted (1 duplicates), 3 rejected"),
        "{}",
        stderr(&out)
    );

    // Clean up the stream this test made.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url =
            std::env::var("KAIROS_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let client = async_nats::connect(url).await.unwrap();
        let js = async_nats::jetstream::new(client);
        let info = js
            .get_stream(&stream)
            .await
            .unwrap()
            .info()
            .await
            .unwrap()
            .clone();
        assert_eq!(info.state.messages, 2, "two distinct events stored");
        js.delete_stream(&stream).await.unwrap();
        js.delete_stream(format!("{stream}_DLQ")).await.unwrap();
    });
}

#[test]
fn export_then_import_restores_the_same_events_once() {
    let tag = unique_tag();
    let (src, dst) = (format!("EXA_{tag}"), format!("EXB_{tag}"));
    let (psrc, pdst) = (format!("exa{tag}"), format!("exb{tag}"));
    let lines: String = (0..20)
        .map(|i| {
            let ty = if i % 4 == 0 { "kairos.metric.recorded.v1" } else { "kairos.task.started.v1" };
            let data = if i % 4 == 0 {
                format!(r#"{{"project":"p","name":"queue_depth","value":{i}}}"#)
            } else {
                format!(r#"{{"project":"p","workflow_id":"w","task_id":"t{i}","task_type":"plan"}}"#)
            };
            format!(r#"{{"specversion":"1.0","id":"e{i}","source":"cli","type":"{ty}","subject":"p","data":{data}}}"#) + "\n"
        })
        .collect();
    let env_src = [
        ("KAIROS_NATS_STREAM", src.as_str()),
        ("KAIROS_NATS_SUBJECT_PREFIX", psrc.as_str()),
    ];
    let env_dst = [
        ("KAIROS_NATS_STREAM", dst.as_str()),
        ("KAIROS_NATS_SUBJECT_PREFIX", pdst.as_str()),
    ];
    let out = kairos(&["publish"], &env_src, Some(lines.as_bytes()));
    assert!(out.status.success(), "{}", stderr(&out));

    let all = kairos(&["events", "export"], &env_src, None);
    assert!(all.status.success(), "{}", stderr(&all));
    assert_eq!(String::from_utf8_lossy(&all.stdout).lines().count(), 20);
    let metrics = kairos(
        &["events", "export", "--type", "kairos.metric.recorded.v1"],
        &env_src,
        None,
    );
    assert_eq!(String::from_utf8_lossy(&metrics.stdout).lines().count(), 5);
    let bad = kairos(&["events", "export", "--from", "noon"], &env_src, None);
    assert!(!bad.status.success());

    // Import into another instance; importing again stores nothing new.
    for round in 0..2 {
        let imported = kairos(&["events", "import"], &env_dst, Some(&all.stdout));
        assert!(
            imported.status.success(),
            "round {round}: {}",
            stderr(&imported)
        );
        let want = if round == 0 {
            "20 accepted (0 duplicates)"
        } else {
            "20 accepted (20 duplicates)"
        };
        assert!(
            stderr(&imported).contains(want),
            "round {round}: {}",
            stderr(&imported)
        );
    }
    let copy = kairos(&["events", "export"], &env_dst, None);
    assert_eq!(copy.stdout, all.stdout, "the exported bytes round-trip");

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let url =
            std::env::var("KAIROS_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
        for s in [&src, &dst] {
            js.delete_stream(s).await.unwrap();
            js.delete_stream(format!("{s}_DLQ")).await.unwrap();
        }
    });
}

#[test]
fn admin_manages_members_and_keys_with_the_apis_checks() {
    let out = kairos(&["admin", "permissions"], &[], None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        kairos_api::permission_table(&kairos::startup::endpoints(
            &kairos::startup::configure(
                &kairos::configuration::Settings::from_toml("").unwrap(),
                &kairos::startup::registry(),
                &kairos_events::Clock::system()
            )
            .unwrap()
        ))
    );

    // A fresh database and stream, and the access projection running beside the commands.
    let tag = unique_tag();
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (server, _) = base.rsplit_once('/').expect("a database URL");
    let db = format!("kairos_cli_{tag}");
    let url = format!("{server}/{db}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pool = sqlx::PgPool::connect(&base).await.unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&pool)
            .await
            .unwrap();
    });
    let (stream, prefix) = (format!("CLI_{tag}"), format!("cli{tag}"));
    let env = [
        ("KAIROS_DATABASE_URL", url.as_str()),
        ("KAIROS_NATS_STREAM", stream.as_str()),
        ("KAIROS_NATS_SUBJECT_PREFIX", prefix.as_str()),
        ("KAIROS_HTTP_READ_WAIT_MS", "30000"),
    ];
    assert!(kairos(&["migrate"], &env, None).status.success());
    let mut consumer = Command::new(env!("CARGO_BIN_EXE_kairos"))
        .args(["consume", "access"])
        .envs(env)
        .env_remove("KAIROS_CONFIG")
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kairos consume runs");
    let json = |o: &Output| -> serde_json::Value {
        assert!(o.status.success(), "{}", stderr(o));
        serde_json::from_slice(&o.stdout).expect("JSON on stdout")
    };

    let ops = json(&kairos(
        &[
            "admin",
            "add-member",
            "--email",
            "ops@example.com",
            "--role",
            "admin",
        ],
        &env,
        None,
    ));
    assert!(ops["seq"].as_u64().is_some_and(|s| s > 0), "{ops}");
    assert!(ops["api_key"].as_str().unwrap().starts_with("kairos_"));
    let bad = kairos(
        &[
            "admin",
            "add-member",
            "--email",
            "x@example.com",
            "--role",
            "root",
        ],
        &env,
        None,
    );
    assert_refused(&bad, "role");
    let narrowed_admin = kairos(
        &[
            "admin",
            "add-member",
            "--email",
            "y@example.com",
            "--role",
            "admin",
            "--project",
            "p1",
        ],
        &env,
        None,
    );
    assert!(
        !narrowed_admin.status.success(),
        "admins are never narrowed"
    );
    let dev = json(&kairos(
        &[
            "admin",
            "add-member",
            "--email",
            "dev@example.com",
            "--role",
            "developer",
            "--project",
            "p1",
        ],
        &env,
        None,
    ));
    let ops_id = ops["member_id"].as_str().unwrap();
    let last = kairos(&["admin", "set-role", ops_id, "viewer"], &env, None);
    assert_refused(&last, "last admin");
    let members = json(&kairos(&["admin", "members"], &env, None));
    let emails: Vec<&str> = members["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["email"].as_str().unwrap())
        .collect();
    assert_eq!(emails, ["ops@example.com", "dev@example.com"]);
    let key = json(&kairos(
        &[
            "admin",
            "issue-key",
            dev["member_id"].as_str().unwrap(),
            "--name",
            "ci",
            "--allowed-source",
            "ci/",
            "--allowed-source",
            "deploy/",
        ],
        &env,
        None,
    ));
    assert_eq!(
        key["allowed_sources"],
        serde_json::json!(["ci/", "deploy/"]),
        "{key}"
    );
    let bad = kairos(
        &[
            "admin",
            "issue-key",
            dev["member_id"].as_str().unwrap(),
            "--name",
            "ci",
            "--allowed-source",
            "kairos/cli",
        ],
        &env,
        None,
    );
    assert_refused(&bad, "allowed_sources");
    let key_id = key["key_id"].as_str().unwrap();
    json(&kairos(&["admin", "revoke-key", key_id], &env, None));
    let again = kairos(&["admin", "revoke-key", key_id], &env, None);
    assert_refused(&again, "already revoked");
    let keys = json(&kairos(&["admin", "keys"], &env, None));
    assert_eq!(keys["api_keys"].as_array().unwrap().len(), 3);
    assert!(
        !String::from_utf8_lossy(&kairos(&["admin", "keys"], &env, None).stdout)
            .contains("kairos_"),
        "listings never show a key"
    );

    let _ = consumer.kill();
    let _ = consumer.wait();
    rt.block_on(async {
        let nats =
            std::env::var("KAIROS_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let js = async_nats::jetstream::new(async_nats::connect(nats).await.unwrap());
        let _ = js.delete_stream(&stream).await;
        let _ = js.delete_stream(format!("{stream}_DLQ")).await;
        let pool = sqlx::PgPool::connect(&base).await.unwrap();
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE {db} WITH (FORCE)"
        )))
        .execute(&pool)
        .await;
    });
}
