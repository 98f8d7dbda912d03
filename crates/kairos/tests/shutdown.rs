//! Graceful shutdown under load, from outside: `kairos serve` takes SIGTERM while clients post
//! batches of LLM calls, stops taking requests, finishes those in flight and exits 0 within its
//! grace period. Every batch it acknowledged is stored; after a restart the clients send again
//! every batch that got no answer (and some that did), and the budget counts each call exactly
//! once: nothing lost, nothing doubled.

mod common;
use common::{load_batch, load_budget_at, unique_tag};

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

const BATCH: usize = 200;
const CLIENTS: usize = 4;

fn serve(env: &[(String, String)]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_kairos"))
        .arg("serve")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("KAIROS_CONFIG")
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("kairos serve runs")
}

/// Posts batch `n`; the last sequence stored when it was acknowledged whole.
async fn post(http: &reqwest::Client, url: &str, key: &str, n: usize) -> Option<u64> {
    let r = http
        .post(format!("{url}/v1/events"))
        .bearer_auth(key)
        .header("content-type", "application/cloudevents-batch+json")
        .body(load_batch("test/shutdown", n, BATCH).to_string())
        .send()
        .await
        .ok()?;
    if r.status().as_u16() != 202 {
        return None;
    }
    let body: Value = r.json().await.ok()?;
    (body["accepted"] == BATCH)
        .then(|| {
            body["results"]
                .as_array()?
                .iter()
                .filter_map(|x| x["seq"].as_u64())
                .max()
        })
        .flatten()
}

async fn wait_ready(http: &reqwest::Client, url: &str, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let me = http
            .get(format!("{url}/v1/me"))
            .bearer_auth(key)
            .send()
            .await;
        if me.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        assert!(Instant::now() < deadline, "kairos serve did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn sigterm_under_load_loses_nothing_and_doubles_nothing() {
    let tag = unique_tag();
    let base = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let (server, _) = base.rsplit_once('/').expect("a database URL");
    let db = format!("kairos_shutdown_{tag}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let key = format!("kairos_{}{}", tag, "0123456789abcdef".repeat(4));
    let env: Vec<(String, String)> = [
        ("KAIROS_DATABASE_URL", format!("{server}/{db}")),
        ("KAIROS_NATS_STREAM", format!("SHUTDOWN_{tag}")),
        ("KAIROS_NATS_SUBJECT_PREFIX", format!("shut{tag}")),
        ("KAIROS_HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("KAIROS_HTTP_RATE_LIMIT_PER_SECOND", "0".into()),
        ("KAIROS_HTTP_READ_WAIT_MS", "5000".into()),
        ("KAIROS_BOOTSTRAP_ADMIN_KEY", key.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let admin = rt.block_on(async {
        let pool = sqlx::PgPool::connect(&base).await.expect("PostgreSQL");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&pool)
            .await
            .expect("CREATE DATABASE");
        pool
    });
    let http = reqwest::Client::new();

    let t0 = Instant::now();
    let mut first = serve(&env);
    rt.block_on(wait_ready(&http, &url, &key));

    // Clients post batches until told to stop; each records what was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (http, url, key, stop) = (http.clone(), url.clone(), key.clone(), stop.clone());
            rt.spawn(async move {
                let mut sent = Vec::new();
                let mut n = c;
                // Until the server stops answering (or the test says so).
                while !stop.load(Ordering::Relaxed) {
                    let seq = post(&http, &url, &key, n).await;
                    sent.push((n, seq));
                    n += CLIENTS;
                    if seq.is_none() {
                        break;
                    }
                }
                sent
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1_500));
    let term = Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(killed.success());
    let status = loop {
        if let Some(s) = first.try_wait().expect("wait") {
            break s;
        }
        assert!(
            term.elapsed() < Duration::from_secs(20),
            "kairos serve did not exit within 20 s of SIGTERM (grace 10 s)"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = term.elapsed();
    stop.store(true, Ordering::Relaxed);
    let sent: Vec<(usize, Option<u64>)> = rt.block_on(async {
        let mut all = Vec::new();
        for c in clients {
            all.extend(c.await.expect("a client"));
        }
        all
    });
    assert!(status.success(), "exit status on SIGTERM: {status}");
    let acked = sent.iter().filter(|(_, s)| s.is_some()).count();
    let unanswered: Vec<usize> = sent
        .iter()
        .filter(|(_, s)| s.is_none())
        .map(|(n, _)| *n)
        .collect();
    assert!(
        acked >= 4,
        "the load ran before the signal: {acked} batches"
    );
    assert!(
        !unanswered.is_empty(),
        "some requests met the stopped server (else the signal came after the load)"
    );

    // Restarted: the clients send again what got no answer, and a few batches that did.
    let mut second = serve(&env);
    let last = rt.block_on(async {
        wait_ready(&http, &url, &key).await;
        let mut last = 0;
        let again = sent
            .iter()
            .filter(|(_, s)| s.is_some())
            .take(3)
            .map(|(n, _)| *n);
        for n in unanswered.iter().copied().chain(again) {
            let mut tries = 0;
            let seq = loop {
                if let Some(seq) = post(&http, &url, &key, n).await {
                    break seq;
                }
                tries += 1;
                assert!(tries < 50, "batch {n} is refused after the restart");
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            last = last.max(seq);
        }
        last.max(sent.iter().filter_map(|(_, s)| *s).max().unwrap_or(0))
    });
    // The restarted projections catch up first (on a loaded machine that can take longer than
    // one read's wait): asked again until the budget has applied the last batch.
    let budget = rt.block_on(load_budget_at(&http, &url, &key, last));
    let batches = sent.len();
    let calls = batches * BATCH;
    assert_eq!(budget["calls"], calls, "every call once: {budget}");
    let cents = calls; // 0.01 each
    assert_eq!(
        budget["spent"],
        format!("{}.{:02}", cents / 100, cents % 100),
        "{budget}"
    );
    eprintln!(
        "{:.1} s in all; {batches} batches ({acked} acknowledged before SIGTERM, {} sent again); exit {:.2} s after SIGTERM",
        t0.elapsed().as_secs_f64(),
        unanswered.len(),
        took.as_secs_f64()
    );

    let _ = Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status();
    let _ = second.wait();
    rt.block_on(async {
        if let Ok(nc) = async_nats::connect(
            std::env::var("KAIROS_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into()),
        )
        .await
        {
            let js = async_nats::jetstream::new(nc);
            let _ = js.delete_stream(format!("SHUTDOWN_{tag}")).await;
            let _ = js.delete_stream(format!("SHUTDOWN_{tag}_DLQ")).await;
        }
        let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
        )))
        .execute(&admin)
        .await;
    });
}
