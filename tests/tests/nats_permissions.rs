//! The shipped `nats.conf` locks NATS down: a nats-server started with it on a free port, with
//! Kairos signed in as its own user, a producer allowed only the producer subjects, and a reader
//! allowed only to follow. The server itself refuses what each may not do.

use std::time::Duration;

use async_nats::jetstream;
use kairos_tests::{llm_call, spawn_app_with, test_settings};
use serde_json::json;
use sqlx::PgPool;

/// A nats-server of the test's own, with the shipped configuration; stopped when dropped.
struct LockedNats {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
    passwords: [String; 3],
}

impl LockedNats {
    fn start() -> Self {
        let bin = [
            "/usr/sbin/nats-server",
            "/usr/local/bin/nats-server",
            "/usr/bin/nats-server",
        ]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .map(str::to_owned)
        .unwrap_or_else(|| "nats-server".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("kairos-nats-{tag}"));
        std::fs::create_dir_all(&dir).unwrap();
        let passwords = ["kairos", "producer", "reader"].map(|u| format!("{u}-{tag}"));
        let conf = concat!(env!("CARGO_MANIFEST_DIR"), "/../nats.conf");
        // store_dir in nats.conf is relative to the server's working directory: the temp dir.
        let child = std::process::Command::new(bin)
            .args(["-c", conf, "-a", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(&dir)
            .env("KAIROS_NATS_PASSWORD", &passwords[0])
            .env("NATS_PRODUCER_PASSWORD", &passwords[1])
            .env("NATS_READER_PASSWORD", &passwords[2])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server starts (make test installs it)");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "nats-server did not listen"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            port,
            dir,
            passwords,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn connect(&self, user: &str, password: &str) -> async_nats::Client {
        async_nats::ConnectOptions::new()
            .user_and_password(user.into(), password.into())
            .connect(self.url())
            .await
            .unwrap_or_else(|e| panic!("{user} connects: {e}"))
    }
}

impl Drop for LockedNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether JetStream stored the publish, within two seconds.
async fn stored(js: &jetstream::Context, subject: &str, payload: Vec<u8>) -> bool {
    let publish = async { js.publish(subject.to_owned(), payload.into()).await?.await };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), publish).await,
        Ok(Ok(_))
    )
}

#[sqlx::test(migrations = false)]
async fn the_shipped_nats_conf_keeps_each_user_to_its_subjects(pool: PgPool) {
    let nats = LockedNats::start();
    let mut settings = test_settings();
    settings.nats.url = nats.url();
    settings.nats.subject_prefix = "kairos".into();
    settings.nats.user = Some("kairos".into());
    settings.nats.password = Some(nats.passwords[0].clone());
    let app = spawn_app_with(pool, settings, true).await;
    assert!(app.kairos.bus.server_requires_auth());
    // Kairos' own user does everything Kairos does: ingest, commands, projections.
    let seq = app.ingest(&[llm_call("via-http", "acme", "1")]).await;
    app.wait_for("budgets", seq).await;
    let (status, r) = app
        .post_json(
            "/v1/invitations",
            &json!({"email": "dana@example.com", "role": "viewer"}),
        )
        .await;
    assert_eq!(status, 201, "{r}");

    // No user, or a wrong password: no connection at all.
    assert!(async_nats::connect(nats.url()).await.is_err());
    assert!(
        async_nats::ConnectOptions::new()
            .user_and_password("producer".into(), "guess".into())
            .connect(nats.url())
            .await
            .is_err()
    );

    let producer = jetstream::new(nats.connect("producer", &nats.passwords[1]).await);
    let call = serde_json::to_vec(&llm_call("via-nats", "acme", "2")).unwrap();
    assert!(
        stored(&producer, "kairos.events.llm.acme", call).await,
        "a producer publishes LLM calls"
    );
    let forged = serde_json::to_vec(&json!({
        "specversion": "1.0", "id": "forged-1", "source": "kairos/api",
        "type": "kairos.role.assigned.v1", "datacontenttype": "application/json",
        "data": {"member_id": "m", "role": "admin", "actor": "someone"}
    }))
    .unwrap();
    for subject in [
        "kairos.events.access._global",
        "kairos.events.role._global",
        "kairos.events.budget.acme",
    ] {
        assert!(
            !stored(&producer, subject, forged.clone()).await,
            "the server refuses the producer's {subject}"
        );
    }
    let stream = app.kairos.bus.stream_name().to_owned();
    let deleted =
        tokio::time::timeout(Duration::from_secs(2), producer.delete_stream(&stream)).await;
    assert!(
        !matches!(deleted, Ok(Ok(_))),
        "the server refuses the producer's stream delete"
    );
    assert!(
        app.kairos.bus.last_seq().await.is_ok(),
        "the stream is still there"
    );

    let reader = nats.connect("reader", &nats.passwords[2]).await;
    let mut follow = reader.subscribe("kairos.events.>").await.unwrap();
    reader.flush().await.unwrap();
    let seq = app.ingest(&[llm_call("followed", "acme", "3")]).await;
    // Kairos' own events (the catalog it appends at start-up, say) may come first. A core
    // subscription is at most once: should the reader's connection drop and come back under
    // load, what was published meanwhile is not delivered to it. So while nothing arrives, a
    // call of no cost is published every 3 s; the reader must see one of them.
    let mut nudges = 0;
    let seen = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match tokio::time::timeout(
                Duration::from_secs(3),
                futures_util::StreamExt::next(&mut follow),
            )
            .await
            {
                Ok(m) => {
                    let m = m.unwrap();
                    if m.subject.as_str().starts_with("kairos.events.llm.") {
                        break m;
                    }
                }
                Err(_) => {
                    nudges += 1;
                    app.ingest(&[llm_call(&format!("nudge-{nudges}"), "acme", "0")])
                        .await;
                }
            }
        }
    })
    .await
    .expect("the reader sees events as they are stored");
    assert_eq!(seen.subject.as_str(), "kairos.events.llm.acme");
    assert!(
        !stored(
            &jetstream::new(reader.clone()),
            "kairos.events.llm.acme",
            b"{}".to_vec()
        )
        .await,
        "the reader publishes nothing"
    );

    // The stream is whole: both LLM calls stored, nothing the producer was refused.
    app.wait_for("budgets", seq).await;
    let kinds: Vec<String> = app
        .stored_events()
        .await
        .into_iter()
        .map(|(_, _, e)| e.event_type().as_str().to_owned())
        .collect();
    assert!(
        !kinds.iter().any(|k| k == "kairos.role.assigned.v1"),
        "{kinds:?}"
    );
    let (_, b) = app
        .get(&format!(
            "/v1/projects/acme/budget?period=2026-11&min_seq={seq}"
        ))
        .await;
    assert_eq!(b["spent"], "6.00", "{b}");
    app.cleanup().await;
}
