//! NATS and PostgreSQL restarted under load, from outside. The test runs its own nats-server
//! (JetStream, file storage) and its own PostgreSQL cluster, each on a free port, and a
//! `kairos serve` against them. While clients post batches of LLM calls (each batch sent again
//! until it is acknowledged), NATS is stopped and started again, then PostgreSQL is stopped
//! (`-m immediate`, as a crash) and started again. `/health/ready` answers 503 while each is down
//! and 200 once it is back; at the end every projection has caught up and the budget counts
//! each call exactly once.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{KillOnDrop, load_batch, load_budget_at, unique_tag};
use serde_json::Value;

const BATCH: usize = 100;
const CLIENTS: usize = 3;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("a free port")
        .local_addr()
        .expect("its address")
        .port()
}

/// The PostgreSQL server binaries (Debian keeps them out of PATH).
fn pg_bin(tool: &str) -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|d| d.path().join("bin").join(tool))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!("no PostgreSQL {tool} under /usr/lib/postgresql (apt-get install postgresql)")
    })
}

/// Runs a PostgreSQL tool as the `postgres` user when this process is root (initdb and postgres
/// refuse root).
fn as_postgres(tool: &str) -> Command {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    if is_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_bin(tool));
        c
    } else {
        Command::new(pg_bin(tool))
    }
}

struct Postgres {
    dir: PathBuf,
    port: u16,
}

impl Postgres {
    fn init(root: &Path) -> Self {
        let dir = root.join("pg");
        std::fs::create_dir_all(&dir).expect("the cluster directory");
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(root)
            .status();
        let ok = as_postgres("initdb")
            .args(["-D"])
            .arg(&dir)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb runs");
        assert!(ok.success(), "initdb failed");
        let pg = Self {
            dir,
            port: free_port(),
        };
        pg.start();
        pg
    }

    fn start(&self) {
        let ok = as_postgres("pg_ctl")
            .arg("-D")
            .arg(&self.dir)
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.display()
            ))
            .args(["-w", "-l"])
            .arg(self.dir.join("log"))
            .arg("start")
            .stdout(Stdio::null())
            .status()
            .expect("pg_ctl runs");
        assert!(ok.success(), "PostgreSQL did not start");
    }

    fn stop(&self, mode: &str) {
        let _ = as_postgres("pg_ctl")
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", mode, "-w", "stop"])
            .stdout(Stdio::null())
            .status();
    }

    fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop("fast");
    }
}

struct Nats {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Nats {
    fn start(root: &Path) -> Self {
        let mut n = Self {
            dir: root.join("nats"),
            port: free_port(),
            child: None,
        };
        n.restart();
        n
    }

    fn restart(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server runs");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let _ = c.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Posts batch `n` until it is acknowledged whole; its highest sequence.
async fn post_until_acked(http: &reqwest::Client, url: &str, key: &str, n: usize) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let r = http
            .post(format!("{url}/v1/events"))
            .bearer_auth(key)
            .header("content-type", "application/cloudevents-batch+json")
            .timeout(Duration::from_secs(20))
            .body(load_batch("test/restart", n, BATCH).to_string())
            .send()
            .await;
        if let Ok(r) = r
            && r.status().as_u16() == 202
            && let Ok(body) = r.json::<Value>().await
            && body["accepted"] == BATCH
            && let Some(seq) = body["results"]
                .as_array()
                .and_then(|rs| rs.iter().filter_map(|x| x["seq"].as_u64()).max())
        {
            return seq;
        }
        assert!(Instant::now() < deadline, "batch {n} never acknowledged");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn ready(http: &reqwest::Client, url: &str) -> Option<u16> {
    http.get(format!("{url}/health/ready"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// Waits until `/health/ready` answers `want`; how long it took.
async fn until_ready_is(http: &reqwest::Client, url: &str, want: u16, what: &str) -> Duration {
    let started = Instant::now();
    loop {
        if ready(http, url).await == Some(want) {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "/health/ready never answered {want} {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn nats_and_postgres_restarted_under_load_lose_nothing_and_double_nothing() {
    let tag = unique_tag();
    let root = std::env::temp_dir().join(format!("kairos-restart-{tag}"));
    std::fs::create_dir_all(&root).expect("a directory");
    let pg = Postgres::init(&root);
    let mut nats = Nats::start(&root);
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let key = format!("kairos_{}{}", tag, "0123456789abcdef".repeat(4));
    let env: Vec<(String, String)> = [
        ("KAIROS_DATABASE_URL", pg.url("postgres")),
        ("KAIROS_NATS_URL", format!("nats://127.0.0.1:{}", nats.port)),
        ("KAIROS_HTTP_ADDR", format!("127.0.0.1:{port}")),
        ("KAIROS_HTTP_RATE_LIMIT_PER_SECOND", "0".into()),
        ("KAIROS_HTTP_READ_WAIT_MS", "5000".into()),
        ("KAIROS_BOOTSTRAP_ADMIN_KEY", key.clone()),
        ("KAIROS_PROJECTIONS_ACK_WAIT_MS", "2000".into()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let serve = Command::new(env!("CARGO_BIN_EXE_kairos"))
        .arg("serve")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("KAIROS_CONFIG")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(root.join("serve.log")).expect("a log"))
        .spawn()
        .expect("kairos serve runs");
    let mut serve = KillOnDrop(serve);
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let http = reqwest::Client::new();
    rt.block_on(until_ready_is(&http, &url, 200, "at start"));

    // The load: each client sends its batches in turn, each until acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (http, url, key) = (http.clone(), url.clone(), key.clone());
            let (stop, acked) = (stop.clone(), acked.clone());
            rt.spawn(async move {
                let (mut n, mut sent, mut last) = (c, 0, 0);
                while !stop.load(Ordering::Relaxed) {
                    last = last.max(post_until_acked(&http, &url, &key, n).await);
                    acked.fetch_add(1, Ordering::Relaxed);
                    sent += 1;
                    n += CLIENTS;
                }
                (sent, last)
            })
        })
        .collect();
    let wait_for_acks = |more: usize| {
        let from = acked.load(Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked.load(Ordering::Relaxed) < from + more {
            assert!(Instant::now() < deadline, "the load stalled");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for_acks(10);

    // NATS goes away and comes back (its file store kept).
    nats.stop();
    let nats_down = rt.block_on(until_ready_is(&http, &url, 503, "with NATS stopped"));
    std::thread::sleep(Duration::from_secs(2));
    nats.restart();
    let nats_back = rt.block_on(until_ready_is(&http, &url, 200, "after NATS restarted"));
    wait_for_acks(10);

    // PostgreSQL crashes and comes back.
    pg.stop("immediate");
    let pg_down = rt.block_on(until_ready_is(&http, &url, 503, "with PostgreSQL stopped"));
    std::thread::sleep(Duration::from_secs(2));
    pg.start();
    let pg_back = rt.block_on(until_ready_is(
        &http,
        &url,
        200,
        "after PostgreSQL restarted",
    ));
    wait_for_acks(10);

    stop.store(true, Ordering::Relaxed);
    let (batches, last) = rt.block_on(async {
        let (mut batches, mut last) = (0, 0);
        for c in clients {
            let (sent, l) = c.await.expect("a client");
            batches += sent;
            last = last.max(l);
        }
        (batches, last)
    });
    let budget = rt.block_on(load_budget_at(&http, &url, &key, last));
    // Every projection came back, not only budgets: each reaches the last batch.
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let behind: Vec<String> = match http
                .get(format!("{url}/v1/projections"))
                .bearer_auth(&key)
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => {
                    let body: Value = r.json().await.expect("projections");
                    body["projections"]
                        .as_array()
                        .expect("a list")
                        .iter()
                        .filter(|p| p["last_seq"].as_u64().is_none_or(|s| s < last))
                        .map(|p| format!("{} at {}", p["projection"], p["last_seq"]))
                        .collect()
                }
                r => vec![format!("/v1/projections answered {r:?}")],
            };
            if behind.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "projections stopped short of {last}: {behind:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    let calls = batches * BATCH;
    assert_eq!(budget["calls"], calls, "every call once: {budget}");
    assert_eq!(
        budget["spent"],
        format!("{}.{:02}", calls / 100, calls % 100),
        "{budget}"
    );
    eprintln!(
        "{batches} batches; not ready {:.1} s after NATS stopped, ready {:.1} s after it restarted; \
         not ready {:.1} s after PostgreSQL stopped, ready {:.1} s after it restarted",
        nats_down.as_secs_f64(),
        nats_back.as_secs_f64(),
        pg_down.as_secs_f64(),
        pg_back.as_secs_f64()
    );
    let _ = Command::new("kill")
        .args(["-TERM", &serve.0.id().to_string()])
        .status();
    let _ = serve.0.wait();
    nats.stop();
    pg.stop("fast");
    let _ = std::fs::remove_dir_all(&root);
}
