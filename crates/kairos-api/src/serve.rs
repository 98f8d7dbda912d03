//! Serves the router over HTTP/1.1 with the limits a server facing untrusted clients needs: how
//! long a request head may take, how long a connection may wait for its next request, how many
//! connections are open at once, and how long a shutdown waits for the requests in flight.
//!
//! Not here: what a request does (the router), where to listen (the binary).
//!
//! HTTP/1.1 only: the API has no use for HTTP/2 multiplexing, and the TLS proxy in front of it
//! off loopback can speak HTTP/2 to clients.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::HttpSettings;

/// How long to wait before accepting again after an error that is not one client's (out of
/// file descriptors or memory): it lasts until connections close, and retrying at once would
/// spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The limits [`serve`] holds every connection to (`http.*` in `kairos.toml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// Once the first byte of a request head arrived, the whole head must arrive within this.
    pub header_read_timeout: Duration,
    /// A connection's next request head must be complete this long after the connection
    /// opened or its previous response was sent; an idle connection is closed then.
    pub idle_timeout: Duration,
    /// Connections open at once. Beyond it, new connections are not accepted: they wait in
    /// the listener's backlog until one closes.
    pub max_connections: usize,
    /// After the shutdown signal, how long requests in flight may take before their
    /// connections are closed.
    pub shutdown_grace: Duration,
}

impl From<&HttpSettings> for ServeLimits {
    fn from(http: &HttpSettings) -> Self {
        Self {
            header_read_timeout: Duration::from_millis(http.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(http.idle_timeout_ms),
            max_connections: http.max_connections,
            shutdown_grace: Duration::from_millis(http.shutdown_grace_ms),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` completes, then stops accepting, lets the
/// requests in flight finish for up to `limits.shutdown_grace`, and closes what is left.
///
/// Handlers can extract `ConnectInfo<SocketAddr>` (the rate limiter does), as with axum's
/// `into_make_service_with_connect_info`.
///
/// Beyond `limits.max_connections`, connections wait in the kernel's accept queue instead of
/// being accepted and closed: waiting costs the process no file descriptor and no task, a
/// legitimate client is served late rather than refused, and the header and idle timeouts free
/// the slot of a client that sends slowly or nothing within `limits.idle_timeout`. When the
/// queue is full too, the kernel drops new connection attempts and clients retry them.
///
/// ```no_run
/// # async fn run(router: axum::Router) -> std::io::Result<()> {
/// use std::time::Duration;
/// use kairos_api::{ServeLimits, serve};
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// let limits = ServeLimits {
///     header_read_timeout: Duration::from_secs(10),
///     idle_timeout: Duration::from_secs(60),
///     max_connections: 10_000,
///     shutdown_grace: Duration::from_secs(10),
/// };
/// let ctrl_c = async {
///     let _ = tokio::signal::ctrl_c().await;
/// };
/// serve(listener, router, limits, ctrl_c).await;
/// # Ok(())
/// # }
/// ```
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()>,
) {
    let mut http = http1::Builder::new();
    // hyper's "header read timeout" runs from the moment it starts waiting for a request head
    // (a new connection, or the previous response sent) until that head is complete: that is
    // the idle timeout. The bound on the head itself, from its first byte, is `HeadTimer`'s.
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.idle_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(ended) = connections.join_next() => reap(ended),
            (slot, accepted) = async {
                (slots.clone().acquire_owned().await, listener.accept().await)
            } => {
                // The semaphore is never closed.
                let Ok(slot) = slot else { break };
                let (stream, addr) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        accept_failed(e).await;
                        continue;
                    }
                };
                let exchange = Arc::new(Mutex::new(Exchange::default()));
                let io = HeadTimer::new(stream, exchange.clone(), limits.header_read_timeout);
                let service = ConnectionService {
                    router: router.clone(),
                    addr,
                    exchange,
                };
                // On shutdown, hyper closes a connection between requests at once and one
                // reading or answering a request after its response.
                let connection = graceful.watch(http.serve_connection(TokioIo::new(io), service));
                connections.spawn(async move {
                    if let Err(e) = connection.await {
                        // Timeouts and clients vanishing mid-request are routine.
                        tracing::debug!(client = %addr, error = %e, "connection closed");
                    }
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    tracing::info!(
        connections = connections.len(),
        "stopped accepting; finishing the requests in flight"
    );
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        while let Some(ended) = connections.try_join_next() {
            reap(ended);
        }
        tracing::warn!(
            connections = connections.len(),
            grace = ?limits.shutdown_grace,
            "closing the connections still open after the shutdown grace"
        );
    }
    connections.shutdown().await;
}

fn reap(ended: Result<(), tokio::task::JoinError>) {
    if let Err(e) = ended
        && e.is_panic()
    {
        tracing::error!(error = %e, "a connection's task panicked");
    }
}

async fn accept_failed(e: io::Error) {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(error = %e, "cannot accept connections");
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// What a connection's reader needs to know about its requests: whether one is being answered
/// (bytes read then are its body, or a pipelined request) and when the head being read must be
/// complete.
#[derive(Debug, Default)]
struct Exchange {
    /// Requests whose head was read and whose response is not sent yet.
    in_flight: usize,
    head_deadline: Option<Instant>,
}

fn lock(exchange: &Mutex<Exchange>) -> MutexGuard<'_, Exchange> {
    // The state is two plain fields, consistent whatever a panicking holder left undone.
    exchange.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The connection's socket, failing reads once a request head has taken longer than the header
/// timeout since its first byte. hyper then closes the connection without answering.
struct HeadTimer {
    stream: TcpStream,
    exchange: Arc<Mutex<Exchange>>,
    timeout: Duration,
    /// Wakes the connection at the deadline; created at the first head, reset for later ones.
    sleep: Option<Pin<Box<Sleep>>>,
}

impl HeadTimer {
    fn new(stream: TcpStream, exchange: Arc<Mutex<Exchange>>, timeout: Duration) -> Self {
        Self {
            stream,
            exchange,
            timeout,
            sleep: None,
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let Some(deadline) = lock(&self.exchange).head_deadline else {
            return false;
        };
        let sleep = match &mut self.sleep {
            Some(sleep) => {
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                sleep
            }
            None => self
                .sleep
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        sleep.as_mut().poll(cx).is_ready()
    }
}

impl AsyncRead for HeadTimer {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    let mut exchange = lock(&self.exchange);
                    if exchange.in_flight == 0 && exchange.head_deadline.is_none() {
                        exchange.head_deadline = Some(Instant::now() + self.timeout);
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "request head incomplete after http.header_read_timeout_ms",
            ))),
            other => other,
        }
    }
}

impl AsyncWrite for HeadTimer {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// The router for one connection: gives handlers the client's address and tells the
/// connection's `HeadTimer` when a request is being answered.
#[derive(Clone)]
struct ConnectionService {
    router: Router,
    addr: SocketAddr,
    exchange: Arc<Mutex<Exchange>>,
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<Answering>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        {
            let mut exchange = lock(&self.exchange);
            exchange.in_flight += 1;
            exchange.head_deadline = None;
        }
        let guard = InFlight(self.exchange.clone());
        req.extensions_mut().insert(ConnectInfo(self.addr));
        // A Router is always ready: `poll_ready` is not needed before `call`.
        let answer = self.router.clone().call(req);
        Box::pin(async move {
            let response = answer.await?;
            Ok(response.map(|body| Answering {
                body,
                _in_flight: guard,
            }))
        })
    }
}

/// Counts a request as in flight until its response is sent (or abandoned).
struct InFlight(Arc<Mutex<Exchange>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut exchange = lock(&self.0);
        exchange.in_flight = exchange.in_flight.saturating_sub(1);
    }
}

/// A response body that keeps its request in flight until hyper has written it and drops it.
struct Answering {
    body: axum::body::Body,
    _in_flight: InFlight,
}

impl Body for Answering {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn limits() -> ServeLimits {
        ServeLimits {
            header_read_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(5),
            max_connections: 100,
            shutdown_grace: Duration::from_secs(5),
        }
    }

    /// A router whose `/sleep/{ms}` answers after that many milliseconds and whose `/addr`
    /// answers with the client address handlers see.
    fn router() -> Router {
        Router::new()
            .route(
                "/sleep/{ms}",
                get(
                    |axum::extract::Path(ms): axum::extract::Path<u64>| async move {
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                        "slept"
                    },
                ),
            )
            .route(
                "/addr",
                get(|ConnectInfo(addr): ConnectInfo<SocketAddr>| async move { addr.to_string() }),
            )
    }

    async fn start(
        limits: ServeLimits,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<()>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, router(), limits, async {
            let _ = stopped.await;
        }));
        (addr, stop, server)
    }

    /// Sends a GET for `path` asking the server to close the connection after the answer;
    /// what it read until the connection closed.
    async fn get_on(stream: &mut TcpStream, path: &str) -> String {
        let head = format!("GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n");
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let mut chunk = [0; 1024];
        while let Ok(n @ 1..) = stream.read(&mut chunk).await {
            answer.extend_from_slice(&chunk[..n]);
        }
        String::from_utf8(answer).unwrap()
    }

    #[tokio::test]
    async fn handlers_see_the_client_address() {
        let (addr, _stop, _server) = start(limits()).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let local = stream.local_addr().unwrap();
        let answer = get_on(&mut stream, "/addr").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with(&local.to_string()), "{answer}");
    }

    #[tokio::test]
    async fn a_shutdown_lets_requests_in_flight_finish() {
        let (addr, stop, server) = start(limits()).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let answer = tokio::spawn(async move { get_on(&mut stream, "/sleep/300").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        let answer = answer.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("slept"), "{answer}");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returns once the connections closed")
            .unwrap();
        assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
    }

    #[tokio::test]
    async fn a_shutdown_closes_connections_between_requests_at_once() {
        let (addr, stop, server) = start(limits()).await;
        let mut never_used = TcpStream::connect(addr).await.unwrap();
        let mut kept_alive = TcpStream::connect(addr).await.unwrap();
        kept_alive
            .write_all(b"GET /addr HTTP/1.1\r\nhost: test\r\n\r\n")
            .await
            .unwrap();
        let mut answer = [0; 1024];
        let n = kept_alive.read(&mut answer).await.unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200"));
        stop.send(()).unwrap();
        // Well within the grace (5 s): nothing waited for these two.
        tokio::time::timeout(Duration::from_secs(1), server)
            .await
            .expect("serve returns without waiting for idle connections")
            .unwrap();
        for stream in [&mut never_used, &mut kept_alive] {
            assert!(matches!(stream.read(&mut answer).await, Ok(0) | Err(_)));
        }
    }

    #[tokio::test]
    async fn a_shutdown_closes_what_outlasts_the_grace() {
        let limits = ServeLimits {
            shutdown_grace: Duration::from_millis(200),
            ..limits()
        };
        let (addr, stop, server) = start(limits).await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let answer = tokio::spawn(async move { get_on(&mut stream, "/sleep/60000").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("serve returns after the grace")
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), answer)
            .await
            .expect("the connection was closed")
            .unwrap();
        assert_eq!(answer, "", "no answer to the request cut short");
    }

    #[tokio::test]
    async fn connections_beyond_the_cap_wait_for_a_free_slot() {
        let limits = ServeLimits {
            max_connections: 1,
            ..limits()
        };
        let (addr, _stop, _server) = start(limits).await;
        let mut first = TcpStream::connect(addr).await.unwrap();
        // The first connection holds the only slot until its slow answer is sent.
        let first = tokio::spawn(async move { get_on(&mut first, "/sleep/500").await });
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut second = TcpStream::connect(addr).await.unwrap();
        let second = tokio::spawn(async move { get_on(&mut second, "/addr").await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !second.is_finished(),
            "the second connection was served while the first held the only slot"
        );
        let first = first.await.unwrap();
        assert!(first.ends_with("slept"), "{first}");
        let second = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the second connection is served once the first closed")
            .unwrap();
        assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    }
}
