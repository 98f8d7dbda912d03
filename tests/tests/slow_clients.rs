//! The HTTP server under idle and slow clients: thousands of connections that send nothing and
//! dozens that dribble their request head do not keep a new client from being answered at once,
//! and the server closes each of them when its timeout (`http.header_read_timeout_ms`,
//! `http.idle_timeout_ms`) runs out.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::future::join_all;
use kairos_tests::{client, spawn_app_with, test_settings};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{Instant, timeout, timeout_at};

const IDLE_CONNECTIONS: usize = 2_000;
const SLOW_CONNECTIONS: usize = 50;
const HEADER_TIMEOUT: Duration = Duration::from_millis(1_000);
const IDLE_TIMEOUT: Duration = Duration::from_millis(3_000);
/// A slow client's pace: one byte of its request head per interval.
const DRIBBLE: Duration = Duration::from_millis(300);
/// How late the server may close a connection after its timeout, on a busy two-core machine.
const SLACK: Duration = Duration::from_millis(1_500);

#[sqlx::test(migrations = false)]
async fn idle_and_slow_clients_do_not_hold_the_server(pool: PgPool) {
    // Both ends of every connection are in this process.
    require_open_files(2 * (IDLE_CONNECTIONS + SLOW_CONNECTIONS) + 512);
    let mut settings = test_settings();
    settings.http.header_read_timeout_ms = HEADER_TIMEOUT.as_millis() as u64;
    settings.http.idle_timeout_ms = IDLE_TIMEOUT.as_millis() as u64;
    let app = spawn_app_with(pool, settings, false).await;
    let addr: SocketAddr = app.url.trim_start_matches("http://").parse().unwrap();
    assert_eq!(app.get("/v1/me").await.0, 200);

    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    for _ in 0..IDLE_CONNECTIONS {
        idle.push(TcpStream::connect(addr).await.unwrap());
    }
    let idle_opened = Instant::now();
    let slow: Vec<_> = (0..SLOW_CONNECTIONS)
        .map(|_| tokio::spawn(dribble_head(addr)))
        .collect();
    let kept_alive = tokio::spawn(idle_after_a_request(addr));
    tokio::time::sleep(DRIBBLE).await;

    // A new client, so a new connection: it is accepted and answered behind all of them.
    let fresh = client(&app.admin_key);
    let me = timeout(
        Duration::from_secs(1),
        fresh.get(format!("{}/v1/me", app.url)).send(),
    )
    .await
    .expect("GET /v1/me answered within 1 s")
    .unwrap();
    assert_eq!(me.status(), 200);

    // The idle connections were still open while it was answered: the server held them all.
    let mut byte = [0; 1];
    let open = idle
        .iter()
        .filter(|c| matches!(c.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock))
        .count();
    assert_eq!(open, IDLE_CONNECTIONS, "idle connections closed too early");

    for task in slow {
        let (after_first_byte, sent) = timeout(HEADER_TIMEOUT + SLACK + DRIBBLE, task)
            .await
            .expect("the server closes a slow head's connection")
            .unwrap();
        assert!(
            after_first_byte >= HEADER_TIMEOUT && after_first_byte < HEADER_TIMEOUT + SLACK,
            "a slow head was cut {after_first_byte:?} after its first byte ({sent} bytes sent)"
        );
    }
    let after_response = timeout(IDLE_TIMEOUT + SLACK, kept_alive)
        .await
        .expect("the server closes an idle keep-alive connection")
        .unwrap();
    assert!(
        after_response >= IDLE_TIMEOUT - Duration::from_millis(200)
            && after_response < IDLE_TIMEOUT + SLACK,
        "an idle keep-alive connection was closed {after_response:?} after its response"
    );
    let closed = join_all(idle.iter_mut().map(|c| async move {
        timeout_at(idle_opened + IDLE_TIMEOUT + SLACK, closed(c))
            .await
            .is_ok()
    }))
    .await;
    assert!(
        closed.iter().all(|c| *c),
        "{} idle connections still open {:?} after they were opened",
        closed.iter().filter(|c| !**c).count(),
        IDLE_TIMEOUT + SLACK
    );
    assert!(idle_opened.elapsed() >= IDLE_TIMEOUT);
    app.cleanup().await;
}

/// Sends a request head one byte per `DRIBBLE`; how long after the first byte the server
/// closed the connection, and how many bytes were sent by then. Panics if it answered.
async fn dribble_head(addr: SocketAddr) -> (Duration, usize) {
    let head = b"GET /v1/me HTTP/1.1\r\nhost: 127.0.0.1\r\nx-padding: slow\r\n\r\n";
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut pace = tokio::time::interval(DRIBBLE);
    let mut sent = 0;
    let mut first_byte = None;
    let mut buf = [0; 256];
    loop {
        tokio::select! {
            // Never the last byte: the head stays incomplete.
            _ = pace.tick(), if sent < head.len() - 1 => {
                if stream.write_all(&head[sent..=sent]).await.is_err() {
                    break;
                }
                first_byte.get_or_insert_with(Instant::now);
                sent += 1;
            }
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => panic!(
                    "answered an incomplete head: {}",
                    String::from_utf8_lossy(&buf[..n])
                ),
            },
        }
    }
    let first_byte = first_byte.expect("the first byte was sent");
    (first_byte.elapsed(), sent)
}

/// Makes one request on a keep-alive connection, then sends nothing; how long after the
/// response the server closed the connection.
async fn idle_after_a_request(addr: SocketAddr) -> Duration {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /health/live HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    let mut buf = [0; 1024];
    while !complete(&response) {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed before the response was complete");
        response.extend_from_slice(&buf[..n]);
    }
    assert!(response.starts_with(b"HTTP/1.1 200"), "{response:?}");
    let answered = Instant::now();
    closed(&mut stream).await;
    answered.elapsed()
}

/// Whether `response` holds a whole response head and the body its `content-length` announces.
fn complete(response: &[u8]) -> bool {
    let text = String::from_utf8_lossy(response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            if name.eq_ignore_ascii_case("content-length") {
                value.trim().parse::<usize>().ok()
            } else {
                None
            }
        })
        .expect("a content-length");
    body.len() >= length
}

/// Waits until the server closes `stream` (end of file, or a reset); panics if it sends data.
async fn closed(stream: &mut TcpStream) {
    let mut buf = [0; 256];
    match stream.read(&mut buf).await {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!(
            "unexpected data on an idle connection: {}",
            String::from_utf8_lossy(&buf[..n])
        ),
    }
}

/// Fails with what to do when the soft limit on open files is below `needed` (Linux; elsewhere
/// the test runs and an accept error would show the limit).
fn require_open_files(needed: usize) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|s| s.parse::<usize>().ok());
    if let Some(soft) = soft {
        assert!(
            soft >= needed,
            "this test opens {needed} files but the soft limit is {soft}: raise it (ulimit -n {needed})"
        );
    }
}
