//! Backup and restore (`kairos backup`, `kairos restore`, docs/backup.md): a backup taken from a
//! live instance, its stream then lost, restored onto a stream of the same name and a new
//! database, rebuilds every projection to exactly the tables the original had, with the same
//! stream sequences and stored times, and the API keys still working (the key secret came back
//! with it). A changed, cut or forged backup is refused with what is wrong, and nothing is
//! restored over a stream or database that is in use.

use std::path::{Path, PathBuf};
use std::time::Duration;

use kairos::backup::{self, Manifest};
use kairos::startup::Kairos;
use kairos_events::StreamSeq;
use kairos_tests::{
    TestApp, budget_set, client, llm_call, schema_digest, send, spawn_app_at, spawn_app_with,
};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// A fresh folder under the system's temporary one.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "kairos-backup-{name}-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("a scratch folder");
    dir
}

/// The URL of database `name` on the server of `DATABASE_URL` (the one sqlx::test uses).
fn database_url(name: &str) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL, as sqlx::test needs");
    match base.rfind('/') {
        Some(i) if base[..i].contains("://") && base[i..].len() > 1 => {
            format!("{}/{name}", &base[..i])
        }
        _ => format!("{}/{name}", base.trim_end_matches('/')),
    }
}

/// A new, empty database beside the test's; its name, URL and a pool on it.
async fn new_database(pool: &PgPool) -> (String, String, PgPool) {
    let name = format!("kairos_restore_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(pool)
        .await
        .expect("CREATE DATABASE");
    let url = database_url(&name);
    let p = PgPoolOptions::new()
        .max_connections(10)
        .connect(&url)
        .await
        .expect("the new database");
    (name, url, p)
}

/// Kairos on a new, empty database beside the test's, as a restore starts: the database's
/// name, `settings` pointed at it, a pool on it, and the Kairos.
async fn kairos_on_new_database(
    pool: &PgPool,
    mut settings: kairos::configuration::Settings,
) -> (String, kairos::configuration::Settings, PgPool, Kairos) {
    let (db, url, fresh) = new_database(pool).await;
    settings.database.url = url;
    let k = Kairos::with_pool(settings.clone(), fresh.clone())
        .await
        .expect("Kairos on the new database");
    (db, settings, fresh, k)
}

/// Drops database `name` (best effort: a test that failed before leaves it to be dropped by
/// hand).
async fn drop_database(pool: &PgPool, name: &str) {
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(pool)
    .await;
}

/// The disaster: `app`'s runners stop and its streams are deleted. Its settings, to restore
/// under the same names.
async fn lose_stream(app: &mut TestApp) -> kairos::configuration::Settings {
    app.stop_projections();
    app.stop_access();
    let js = app.kairos.bus.jetstream().clone();
    for stream in [
        app.kairos.bus.stream_name().to_owned(),
        app.kairos.bus.dlq_stream_name(),
    ] {
        js.delete_stream(&stream).await.expect("deleted");
    }
    app.kairos.settings.clone()
}

/// Every projection's tables, by projection.
async fn digests(
    app: &TestApp,
) -> Vec<(
    &'static str,
    std::collections::BTreeMap<String, (i64, String)>,
)> {
    let mut out = Vec::new();
    for name in app.kairos.projection_names() {
        out.push((name, schema_digest(&app.kairos.pool, name).await));
    }
    out
}

/// (seq, stored time, payload) of every message on `k`'s events stream.
async fn messages(k: &Kairos) -> Vec<(u64, chrono::DateTime<chrono::Utc>, bytes::Bytes)> {
    let last = k.bus.last_seq().await.expect("last seq");
    let mut r = k
        .bus
        .read(kairos_bus::ReadFrom::Seq(StreamSeq(1)), None)
        .await
        .expect("read");
    let mut out = Vec::new();
    while let Some(m) = r.next(Duration::from_secs(5)).await.expect("next") {
        out.push((m.seq.0, m.stored_at, m.payload.clone()));
        if m.seq >= last {
            break;
        }
    }
    out
}

/// What every projection has to show: LLM calls of three projects (some without a `time`, so
/// their month comes from when they were stored), a budget with its threshold crossings, a
/// member invited and a key issued (access, audit), a retry, and a message no projection can
/// read (dead-lettered), straight on the events subject.
async fn history(app: &TestApp) -> u64 {
    let mut events = vec![budget_set("b-1", "alpha", "1.00", 50)];
    for i in 0..300 {
        let project = ["alpha", "beta", "gamma"][i % 3];
        let mut e = llm_call(&format!("c-{i}"), project, "0.01");
        if i % 2 == 0 {
            e.as_object_mut().expect("an object").remove("time");
        }
        events.push(e);
    }
    app.ingest(&events).await;
    app.ingest(&events[10..20]).await; // retries: duplicates, not stored again
    let (status, invited) = app
        .post_json(
            "/v1/invitations",
            &json!({"email": "dev@example.com", "role": "developer"}),
        )
        .await;
    assert_eq!(status, 201, "{invited}");
    let (status, key) = app
        .post_json("/v1/api-keys", &json!({"name": "laptop"}))
        .await;
    assert_eq!(status, 201, "{key}");
    let subject = format!("{}.events.llm.alpha", app.prefix());
    app.kairos
        .bus
        .jetstream()
        .publish(subject, "not a CloudEvent".into())
        .await
        .expect("publish")
        .await
        .expect("stored");
    app.kairos.bus.last_seq().await.expect("last seq").0
}

/// Kairos started on a restored stream and database, as on a first start, once every
/// projection has rebuilt up to `last`.
async fn start_restored(
    pool: PgPool,
    settings: kairos::configuration::Settings,
    last: u64,
) -> TestApp {
    let app = spawn_app_at(pool, settings, true, kairos_events::Clock::system()).await;
    for name in app.kairos.projection_names() {
        app.wait_for(name, last).await;
    }
    app
}

async fn settle(app: &TestApp) -> u64 {
    // The threshold events budgets emits land, and are folded, too.
    let mut last = app.kairos.bus.last_seq().await.expect("last").0;
    loop {
        for name in app.kairos.projection_names() {
            app.wait_for(name, last).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = app.kairos.bus.last_seq().await.expect("last").0;
        if now == last {
            return last;
        }
        last = now;
    }
}

#[sqlx::test(migrations = false)]
async fn a_restored_backup_rebuilds_every_projection_as_it_was(pool: PgPool) {
    // On the system clock: point-in-time reads name instants the stream stored events at.
    let mut app = spawn_app_at(
        pool.clone(),
        kairos_tests::test_settings(),
        true,
        kairos_events::Clock::system(),
    )
    .await;
    history(&app).await;
    let last = settle(&app).await;
    let before = digests(&app).await;
    let stored = messages(&app.kairos).await;
    // Half of alpha's calls carry the test clock's November time; the other half count in the
    // month they were stored in, which the restore must keep.
    let (_, budget) = app.get("/v1/projects/alpha/budget?period=2026-11").await;
    assert_eq!(budget["calls"], 50, "{budget}");
    let stored_month = stored_month(&app).await;
    let (_, by_storage) = app
        .get(&format!("/v1/projects/alpha/budget?period={stored_month}"))
        .await;
    assert_eq!(by_storage["calls"], 50, "{by_storage}");
    let crossings = &before
        .iter()
        .find(|(n, _)| *n == "budgets")
        .expect("budgets")
        .1["crossings"];
    assert!(crossings.0 > 0, "the budget was crossed: {crossings:?}");

    // A past instant inside the history, by the stream's own stored times: what was true then.
    let then = stored[stored.len() / 2]
        .1
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let as_of = format!(
        "/v1/projects/alpha/budget?as_of={}",
        then.replace('+', "%2B")
    );
    let (status, past) = app.get(&as_of).await;
    assert_eq!(status, 200, "{past}");
    assert!(
        past["calls"].as_u64().is_some_and(|c| c > 0 && c < 50),
        "part of the month's stored calls: {past}"
    );

    let dir = scratch("full");
    let now: chrono::DateTime<chrono::Utc> = "2026-12-03T04:00:00Z".parse().expect("time");
    let manifest = backup::backup(&app.kairos, &dir, now)
        .await
        .expect("backup");
    assert_eq!(
        (manifest.first_seq, manifest.last_seq, manifest.messages),
        (1, last, last)
    );
    assert_eq!(manifest.created_at, now);
    assert!(manifest.key_secret.is_some(), "{manifest:?}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("manifest.json"))
            .expect("manifest")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the manifest holds a secret: {mode:o}");
    }
    // A second backup into the same folder is refused, not mixed in.
    let again = backup::backup(&app.kairos, &dir, now).await.unwrap_err();
    assert!(
        format!("{again:#}").contains("holds a backup already"),
        "{again:#}"
    );

    // The stream is lost.
    let settings = lose_stream(&mut app).await;

    // Restored under the same names into a new database, then started as on a first start.
    let (db, restored_settings, fresh, k) = kairos_on_new_database(&pool, settings.clone()).await;
    let r = backup::restore(&k, &dir).await.expect("restore");
    assert_eq!((r.messages, r.first_seq, r.last_seq), (last, 1, last));
    assert!(r.key_secret);
    // Every message at its sequence, with its bytes and its stored time.
    assert_eq!(messages(&k).await, stored);
    // A second restore over it is refused: the stream holds messages now.
    let twice = backup::restore(&k, &dir).await.unwrap_err();
    assert!(format!("{twice:#}").contains("holds"), "{twice:#}");

    let restored = start_restored(fresh.clone(), restored_settings, last).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = digests(&restored).await;
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(
            a, b,
            "{name}: the rebuilt tables differ from the original's"
        );
    }
    // The keys issued before the loss still work: the key secret came back with the stream.
    let (status, me) =
        send(client(&restored.admin_key).get(format!("{}/v1/me", restored.url))).await;
    assert_eq!(status, 200, "{me}");
    let (_, budget_after) = restored
        .get("/v1/projects/alpha/budget?period=2026-11")
        .await;
    assert_eq!(
        strip_seq(budget_after),
        strip_seq(budget),
        "the budget reads the same"
    );
    let (_, by_storage_after) = restored
        .get(&format!("/v1/projects/alpha/budget?period={stored_month}"))
        .await;
    assert_eq!(strip_seq(by_storage_after), strip_seq(by_storage));
    // The past reads the same: the restored messages keep their stored times for `as_of` too.
    let (status, past_after) = restored.get(&as_of).await;
    assert_eq!(status, 200, "{past_after}");
    assert_eq!(past_after, past, "as of {then}");
    // The projections re-emitting their events did not add any to the stream for good: the
    // window took them for the restored ones.
    assert_eq!(restored.kairos.bus.last_seq().await.expect("last").0, last);

    restored.cleanup().await;
    drop(fresh);
    drop_database(&pool, &db).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The month (UTC) the stream stored its last message in.
async fn stored_month(app: &TestApp) -> String {
    let all = messages(&app.kairos).await;
    all.last().expect("a message").1.format("%Y-%m").to_string()
}

fn strip_seq(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("as_of_seq");
    }
    v
}

/// Copies the backup in `from` to a new folder, `edit` applied to (manifest, stream lines).
fn edited(from: &Path, edit: impl FnOnce(&mut Value, &mut Vec<String>)) -> PathBuf {
    let dir = scratch("edited");
    let mut manifest: Value =
        serde_json::from_slice(&std::fs::read(from.join("manifest.json")).expect("manifest"))
            .expect("json");
    let mut lines: Vec<String> = std::fs::read_to_string(from.join("stream.jsonl"))
        .expect("stream")
        .lines()
        .map(str::to_owned)
        .collect();
    edit(&mut manifest, &mut lines);
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec(&manifest).expect("json"),
    )
    .expect("write");
    let mut body = lines.join("\n");
    if !body.is_empty() {
        body.push('\n');
    }
    std::fs::write(dir.join("stream.jsonl"), body).expect("write");
    dir
}

/// The manifest of `lines` as they are (a consistent forgery: only the key secret or the
/// sequences can give it away).
fn rehash(manifest: &mut Value, lines: &[String]) {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for l in lines {
        h.update(l.as_bytes());
        h.update(b"\n");
    }
    manifest["sha256"] = json!(kairos_access::hex(&h.finalize()));
    manifest["messages"] = json!(lines.len());
}

#[sqlx::test(migrations = false)]
async fn a_changed_or_forged_backup_is_refused_and_nothing_is_restored(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), kairos_tests::test_settings(), true).await;
    let events: Vec<Value> = (0..20)
        .map(|i| llm_call(&format!("c-{i}"), "alpha", "0.01"))
        .collect();
    app.ingest(&events).await;
    let last = app.kairos.bus.last_seq().await.expect("last").0;
    let dir = scratch("src");
    let now: chrono::DateTime<chrono::Utc> = "2026-12-03T04:00:00Z".parse().expect("time");
    let m: Manifest = backup::backup(&app.kairos, &dir, now)
        .await
        .expect("backup");
    assert_eq!(m.messages, last);

    let cases: Vec<(&str, PathBuf, &str)> = vec![
        (
            "a byte changed",
            edited(&dir, |_, lines| lines[3] = lines[3].replace("0.01", "9.99")),
            "SHA-256",
        ),
        (
            "cut short",
            edited(&dir, |_, lines| {
                lines.pop();
            }),
            "SHA-256",
        ),
        (
            "a message taken out, the manifest made to fit",
            edited(&dir, |m, lines| {
                lines.remove(5);
                rehash(m, lines);
            }),
            "sequence 7, where 6 follows",
        ),
        (
            "another format",
            edited(&dir, |m, _| m["format"] = json!("kairos-backup/9\u{0}")),
            "format \"kairos-backup/9\\u{0}\"",
        ),
        (
            "an unknown field",
            edited(&dir, |m, _| m["extra"] = json!(true)),
            "not a Kairos backup manifest",
        ),
        (
            "a line that is not a message",
            edited(&dir, |m, lines| {
                lines[0] = "{\"seq\": \"one\"}".into();
                rehash(m, lines);
            }),
            "line 1 is not a backed-up message",
        ),
        (
            "a subject outside the prefix",
            edited(&dir, |m, lines| {
                let mut v: Value = serde_json::from_str(&lines[0]).expect("json");
                v["subject"] = json!("elsewhere.events.llm.alpha");
                lines[0] = v.to_string();
                rehash(m, lines);
            }),
            "outside the backup's prefix",
        ),
        (
            "a key secret that is not hex",
            edited(&dir, |m, _| m["key_secret"] = json!("zz")),
            "key_secret is not hex",
        ),
    ];
    for (what, bad, said) in cases {
        let (db, _, fresh, k) = kairos_on_new_database(&pool, kairos_tests::test_settings()).await;
        let err = backup::restore(&k, &bad).await.unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains(said), "{what}: {err}");
        // Nothing went onto the stream (a forged subject can be found only while publishing;
        // those before it are the backup's own, at their sequences).
        let on_stream = k.bus.last_seq().await.expect("last").0;
        assert_eq!(on_stream, 0, "{what}: {on_stream} messages restored");
        let js = k.bus.jetstream().clone();
        let _ = js.delete_stream(k.bus.stream_name()).await;
        let _ = js.delete_stream(k.bus.dlq_stream_name()).await;
        drop(k);
        fresh.close().await;
        drop_database(&pool, &db).await;
        let _ = std::fs::remove_dir_all(&bad);
    }

    // Over a stream that holds messages: refused, the stream as it was.
    let err = backup::restore(&app.kairos, &dir).await.unwrap_err();
    assert!(format!("{err:#}").contains("holds"), "{err:#}");
    assert_eq!(app.kairos.bus.last_seq().await.expect("last").0, last);
    // Into a database whose projections went past the backup's end: refused.
    let more: Vec<Value> = (20..25)
        .map(|i| llm_call(&format!("c-{i}"), "alpha", "0.01"))
        .collect();
    let now_last = app.ingest(&more).await;
    app.wait_for("budgets", now_last).await;
    let err = backup::restore(&app.kairos, &dir).await.unwrap_err();
    assert!(
        format!("{err:#}").contains(&format!("beyond the backup's last ({last})")),
        "{err:#}"
    );
    app.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stream whose oldest messages retention removed backs up from its first sequence, and is
/// restored with its messages at those sequences: the next event follows the last, and the
/// projections rebuilt from it start at the first message kept.
#[sqlx::test(migrations = false)]
async fn a_backup_that_starts_past_sequence_one_is_restored_at_its_sequences(pool: PgPool) {
    let app = spawn_app_with(pool.clone(), kairos_tests::test_settings(), true).await;
    let events: Vec<Value> = (0..20)
        .map(|i| llm_call(&format!("c-{i}"), "alpha", "0.01"))
        .collect();
    app.ingest(&events).await;
    let src = scratch("src");
    let now: chrono::DateTime<chrono::Utc> = "2026-12-03T04:00:00Z".parse().expect("time");
    let last = backup::backup(&app.kairos, &src, now)
        .await
        .expect("backup")
        .last_seq;
    let stored = messages(&app.kairos).await;
    // The events stream denies purges; a backup of a stream that lost its first 8 messages to
    // `max_age` is this one without its first 8 lines, starting at 9.
    const GONE: usize = 8;
    let dir = edited(&src, |m, lines| {
        lines.drain(..GONE);
        m["first_seq"] = json!(GONE + 1);
        rehash(m, lines);
    });
    let kept = &stored[GONE..];
    let calls_kept = kept
        .iter()
        .filter(|(_, _, p)| {
            serde_json::from_slice::<Value>(p)
                .is_ok_and(|e| e["type"] == "kairos.llm.call.completed.v1")
        })
        .count();
    assert!(calls_kept > 0 && calls_kept < 20, "{calls_kept}");

    let (db, settings, fresh, k) =
        kairos_on_new_database(&pool, kairos_tests::test_settings()).await;
    let r = backup::restore(&k, &dir).await.expect("restore");
    assert_eq!(
        (r.first_seq, r.last_seq, r.messages),
        (GONE as u64 + 1, last, last - GONE as u64)
    );
    let mut stream = k
        .bus
        .jetstream()
        .get_stream(k.bus.stream_name())
        .await
        .expect("the stream");
    let info = stream.info().await.expect("info").clone();
    assert_eq!(
        (info.state.first_sequence, info.state.last_sequence),
        (GONE as u64 + 1, last)
    );
    // Opened to purges only to start there: closed again, as every events stream.
    assert!(info.config.deny_purge && info.config.deny_delete);
    assert_eq!(
        messages(&k).await,
        kept,
        "the kept messages at their sequences"
    );
    drop(k);

    let restored = start_restored(fresh.clone(), settings, last).await;
    let (_, budget) = restored
        .get("/v1/projects/alpha/budget?period=2026-11")
        .await;
    assert_eq!(
        budget["calls"], calls_kept,
        "the kept calls, once: {budget}"
    );
    // New events go on after the restored last one, with no gap.
    let next = restored
        .ingest(&[llm_call("c-after", "alpha", "0.01")])
        .await;
    assert!(next > last, "{next} after {last}");
    let state = stream.info().await.expect("info").state.clone();
    assert_eq!(state.first_sequence, GONE as u64 + 1);
    assert_eq!(
        state.messages,
        state.last_sequence - GONE as u64,
        "{state:?}"
    );

    restored.cleanup().await;
    app.cleanup().await;
    drop(fresh);
    drop_database(&pool, &db).await;
    let _ = std::fs::remove_dir_all(&src);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `pg_dump` of `db` into `file` (custom format), or `pg_restore` of it into `db`.
fn pg(tool: &str, url: &str, file: &Path) {
    let mut c = std::process::Command::new(tool);
    match tool {
        "pg_dump" => c.args(["--format=custom", "--file"]).arg(file).arg(url),
        _ => c.args(["--no-owner", "--dbname", url]).arg(file),
    };
    let out = c.output().unwrap_or_else(|e| panic!("{tool}: {e}"));
    assert!(
        out.status.success(),
        "{tool}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The guide's order: a PostgreSQL dump, then `kairos backup` (so the stream covers whatever
/// the dump's projections applied); restored in the same order, the projections go on from the
/// dump's checkpoints over the events stored after it, and end as the original did.
#[sqlx::test(migrations = false)]
async fn a_dump_then_a_backup_restore_in_that_order(pool: PgPool) {
    let mut app = spawn_app_with(pool.clone(), kairos_tests::test_settings(), true).await;
    history(&app).await;
    let at_dump = settle(&app).await;
    let db: String = sqlx::query_scalar("SELECT current_database()::text")
        .fetch_one(&pool)
        .await
        .expect("the test's database");
    let source_url = database_url(&db);
    let dir = scratch("dump");
    let dump = dir.join("kairos.pgdump");
    pg("pg_dump", &source_url, &dump);
    // Events after the dump: only the stream backup has them.
    let late: Vec<Value> = (300..360)
        .map(|i| llm_call(&format!("c-{i}"), "beta", "0.02"))
        .collect();
    app.ingest(&late).await;
    let last = settle(&app).await;
    assert!(last > at_dump);
    let before = digests(&app).await;
    let backup_dir = dir.join("stream");
    let now: chrono::DateTime<chrono::Utc> = "2026-12-03T04:00:00Z".parse().expect("time");
    backup::backup(&app.kairos, &backup_dir, now)
        .await
        .expect("backup");

    let settings = lose_stream(&mut app).await;

    let (new_db, url, fresh) = new_database(&pool).await;
    pg("pg_restore", &url, &dump);
    let applied: i64 = sqlx::query_scalar("SELECT max(last_seq) FROM kairos.checkpoints")
        .fetch_one(&fresh)
        .await
        .expect("the dump's checkpoints");
    assert_eq!(
        applied as u64, at_dump,
        "the dump holds the projections as they were"
    );
    let mut restored_settings = settings;
    restored_settings.database.url = url;
    let k = Kairos::with_pool(restored_settings.clone(), fresh.clone())
        .await
        .expect("Kairos on the restored database");
    let r = backup::restore(&k, &backup_dir).await.expect("restore");
    assert_eq!(r.last_seq, last);
    let restored = spawn_app_with(fresh.clone(), restored_settings, true).await;
    for name in restored.kairos.projection_names() {
        restored.wait_for(name, last).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = digests(&restored).await;
    for ((name, a), (_, b)) in before.iter().zip(&after) {
        assert_eq!(a, b, "{name}: differs from the original's");
    }
    let (_, beta) = restored.get("/v1/projects/beta/budget").await;
    // In November: the half of its first 100 calls that carry a time, and the 60 late ones.
    assert_eq!(beta["calls"], 50 + 60, "{beta}");

    restored.cleanup().await;
    drop(fresh);
    drop_database(&pool, &new_db).await;
    let _ = std::fs::remove_dir_all(&dir);
}
