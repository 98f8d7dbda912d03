//! Kairos' access to NATS JetStream: the events stream (the log, source of truth), its
//! dead-letter stream, subject names, and acknowledged publishing.
//!
//! Publishing here only reports success once JetStream acknowledged the message (invariant 3).
//! This crate knows nothing of HTTP, PostgreSQL or projections.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use kairos_events::{Event, StreamSeq};
use serde::Deserialize;

/// Where and how the log lives. Several Kairos instances share one NATS server by using
/// different stream names and subject prefixes.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// NATS server URL, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// Name of the events stream; the dead-letter stream is `<stream>_DLQ`.
    pub stream: String,
    /// First token of every subject: events are `<prefix>.events.<category>.<project>`.
    pub subject_prefix: String,
    /// JetStream's duplicate window for `Nats-Msg-Id` (projections dedupe forever regardless).
    #[serde(default = "default_duplicate_window_secs")]
    pub duplicate_window_secs: u64,
    /// How long events are kept on the stream; 0 keeps them forever.
    #[serde(default)]
    pub max_age_days: u64,
    /// Stream replicas: 1 on a single server, 3 in a cluster.
    #[serde(default = "default_replicas")]
    pub replicas: usize,
    /// How Kairos authenticates to NATS; at most one way.
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub token: Option<String>,
    /// An NKey seed (`SU…`).
    #[serde(default)]
    pub nkey_seed: Option<String>,
    /// A `.creds` file (JWT and NKey seed).
    #[serde(default)]
    pub creds_file: Option<String>,
    /// TLS: the CA that signed the server's certificate, and a client certificate and key for
    /// servers that verify clients.
    #[serde(default)]
    pub tls_ca_file: Option<String>,
    #[serde(default)]
    pub tls_cert_file: Option<String>,
    #[serde(default)]
    pub tls_key_file: Option<String>,
    /// Refuse a connection that is not TLS.
    #[serde(default)]
    pub tls_required: bool,
    /// The key Kairos signs its own facts with (every event it states; see
    /// [`kairos_events::Signer`]), at least 32 characters. Every Kairos process
    /// of an installation has the same; it is kept out of the stream and the database. Unset,
    /// those events are published and folded unsigned.
    #[serde(default)]
    pub signing_key: Option<String>,
}

impl std::fmt::Debug for BusConfig {
    /// Shows whether the secrets are set, never what they are.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |s: &Option<String>| s.as_ref().map(|_| "***");
        f.debug_struct("BusConfig")
            .field("url", &self.url)
            .field("stream", &self.stream)
            .field("subject_prefix", &self.subject_prefix)
            .field("duplicate_window_secs", &self.duplicate_window_secs)
            .field("max_age_days", &self.max_age_days)
            .field("replicas", &self.replicas)
            .field("user", &self.user)
            .field("password", &set(&self.password))
            .field("token", &set(&self.token))
            .field("nkey_seed", &set(&self.nkey_seed))
            .field("creds_file", &self.creds_file)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("tls_cert_file", &self.tls_cert_file)
            .field("tls_key_file", &self.tls_key_file)
            .field("tls_required", &self.tls_required)
            .field("signing_key", &set(&self.signing_key))
            .finish()
    }
}

fn default_duplicate_window_secs() -> u64 {
    120
}

fn default_replicas() -> usize {
    1
}

impl BusConfig {
    /// Checks the names are usable as NATS stream names and subject tokens.
    pub fn validate(&self) -> Result<(), BusError> {
        let token_ok = |s: &str| {
            !s.is_empty()
                && s.split('.').all(|t| {
                    !t.is_empty()
                        && t.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                })
        };
        if !token_ok(&self.subject_prefix) {
            return Err(BusError::Config(format!(
                "nats.subject_prefix {:?} must be dot-separated tokens of letters, digits, '_' or '-'",
                self.subject_prefix
            )));
        }
        let name_ok = !self.stream.is_empty()
            && self.stream.len() <= 200
            && self
                .stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !name_ok {
            return Err(BusError::Config(format!(
                "nats.stream {:?} must be letters, digits, '_' or '-'",
                self.stream
            )));
        }
        if self.duplicate_window_secs == 0 {
            return Err(BusError::Config(
                "nats.duplicate_window_secs must be at least 1".into(),
            ));
        }
        if !matches!(self.replicas, 1 | 3 | 5) {
            return Err(BusError::Config("nats.replicas must be 1, 3 or 5".into()));
        }
        let ways = [
            self.user.is_some(),
            self.token.is_some(),
            self.nkey_seed.is_some(),
            self.creds_file.is_some(),
        ];
        if ways.iter().filter(|w| **w).count() > 1 {
            return Err(BusError::Config(
                "nats: set one of nats.user (with nats.password), nats.token, nats.nkey_seed or \
                 nats.creds_file"
                    .into(),
            ));
        }
        if self.password.is_some() != self.user.is_some() {
            return Err(BusError::Config(
                "nats.user and nats.password go together".into(),
            ));
        }
        if let Some(key) = &self.signing_key
            && (key.chars().count() < 32 || key.chars().any(char::is_control))
        {
            return Err(BusError::Config(
                "nats.signing_key must be at least 32 characters, none of them control characters"
                    .into(),
            ));
        }
        if self.tls_cert_file.is_some() != self.tls_key_file.is_some() {
            return Err(BusError::Config(
                "nats.tls_cert_file and nats.tls_key_file go together".into(),
            ));
        }
        for (key, path) in [
            ("nats.creds_file", &self.creds_file),
            ("nats.tls_ca_file", &self.tls_ca_file),
            ("nats.tls_cert_file", &self.tls_cert_file),
            ("nats.tls_key_file", &self.tls_key_file),
        ] {
            if let Some(p) = path
                && !std::path::Path::new(p).is_file()
            {
                return Err(BusError::Config(format!("{key}: no file {p:?}")));
            }
        }
        Ok(())
    }
}

impl BusConfig {
    /// The events stream `stream` with subjects under `subject_prefix` at `url`, defaults for the
    /// rest and no credentials.
    pub fn new(
        url: impl Into<String>,
        stream: impl Into<String>,
        subject_prefix: impl Into<String>,
    ) -> Self {
        Self {
            url: url.into(),
            stream: stream.into(),
            subject_prefix: subject_prefix.into(),
            duplicate_window_secs: default_duplicate_window_secs(),
            max_age_days: 0,
            replicas: default_replicas(),
            user: None,
            password: None,
            token: None,
            nkey_seed: None,
            creds_file: None,
            tls_ca_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_required: false,
            signing_key: None,
        }
    }

    /// What signs and checks Kairos' own facts, when a signing key is set.
    pub fn signer(&self) -> Option<kairos_events::Signer> {
        self.signing_key
            .as_deref()
            .map(|k| kairos_events::Signer::new(k.as_bytes()))
    }

    /// `options` with the configured credentials and TLS settings.
    async fn authenticate(
        &self,
        mut options: async_nats::ConnectOptions,
    ) -> Result<async_nats::ConnectOptions, BusError> {
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &self.token {
            options = options.token(token.clone());
        }
        if let Some(seed) = &self.nkey_seed {
            options = options.nkey(seed.clone());
        }
        if let Some(path) = &self.creds_file {
            options = options
                .credentials_file(path)
                .await
                .map_err(|e| BusError::Config(format!("nats.creds_file {path:?}: {e}")))?;
        }
        if let Some(ca) = &self.tls_ca_file {
            options = options.add_root_certificates(ca.into());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert_file, &self.tls_key_file) {
            options = options.add_client_certificate(cert.into(), key.into());
        }
        Ok(options.require_tls(self.tls_required))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid NATS configuration: {0}")]
    Config(String),
    /// The cause is in the message, not also in `source()`: a chain printed whole (`{:#}`) would
    /// say it twice.
    #[error("cannot connect to NATS at {url}: {cause}")]
    Connect {
        url: String,
        cause: async_nats::ConnectError,
    },
    #[error("no NATS server answered at {url} within 15 s ({reason})")]
    Unreachable { url: String, reason: String },
    #[error("JetStream stream {stream}: {message}")]
    Stream { stream: String, message: String },
    #[error("publish to {subject} was not acknowledged: {message}")]
    Publish { subject: String, message: String },
    /// A conditional append found another message on its subject since the sequence it
    /// expected: the aggregate changed, decide again.
    #[error("{subject} moved past sequence {expected}")]
    Conflict { subject: String, expected: u64 },
}

/// The acknowledgement of one stored event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub seq: StreamSeq,
    /// JetStream already had a message with this `Nats-Msg-Id` inside its duplicate window;
    /// `seq` is the original's.
    pub duplicate: bool,
}

/// Where reading the events stream starts.
#[derive(Debug, Clone, Copy)]
pub enum ReadFrom {
    /// At this sequence (inclusive).
    Seq(StreamSeq),
    /// At the first event stored at or after this time.
    Time(chrono::DateTime<chrono::Utc>),
    /// With the next event stored from now on.
    New,
}

/// The header of a message `kairos restore` put back on a stream: when the original was stored
/// (RFC 3339), which the message then counts as its stored time. Only the restore sets it (the
/// HTTP ingest builds its own headers); a producer publishing straight to NATS could set it, but
/// it could set the event's `time`, which comes first, as well.
pub const STORED_AT_HEADER: &str = "Kairos-Stored-At";

/// When the original of a message `kairos restore` put back was stored, from its header.
fn restored_at(headers: &HeaderMap) -> Option<chrono::DateTime<chrono::Utc>> {
    headers
        .get(STORED_AT_HEADER)
        .and_then(|v| chrono::DateTime::parse_from_rfc3339(v.as_str()).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
}

/// When a message fetched by sequence was stored: its restore header's time, else JetStream's.
fn stored_time(m: &jetstream::message::StreamMessage) -> chrono::DateTime<chrono::Utc> {
    restored_at(&m.headers).unwrap_or(m.time)
}

/// A message of the events stream, as stored.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub seq: StreamSeq,
    pub subject: String,
    pub stored_at: chrono::DateTime<chrono::Utc>,
    pub payload: Bytes,
    /// Messages of the same consumer still to come after this one, as the server counted when it
    /// sent it (0: this was the last one stored so far).
    pub pending: u64,
}

impl StoredMessage {
    /// The stored message a consumer delivered, `info` being the delivery's.
    pub fn delivered(m: &jetstream::Message, info: &jetstream::message::Info<'_>) -> Self {
        // A message put back by `kairos restore` says when the original was stored.
        let restored = m.headers.as_ref().and_then(restored_at);
        Self {
            seq: StreamSeq(info.stream_sequence),
            subject: m.subject.to_string(),
            stored_at: restored.unwrap_or(info.published),
            payload: m.payload.clone(),
            pending: info.pending,
        }
    }
}

/// A stored message's place on the stream's time axis: its sequence and when it was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredAt {
    pub seq: StreamSeq,
    pub time: chrono::DateTime<chrono::Utc>,
}

/// Reads the events stream in order (an ordered, ephemeral consumer: no state on the server).
pub struct EventReader {
    messages: async_nats::jetstream::consumer::pull::Ordered,
    at_start: u64,
}

impl EventReader {
    /// How many messages matched when the reader was created: 0 means there is nothing to read
    /// (yet), without waiting for a message that will not come.
    pub fn pending_at_start(&self) -> u64 {
        self.at_start
    }

    /// The next message, or `None` when none arrives within `wait`.
    pub async fn next(&mut self, wait: Duration) -> Result<Option<StoredMessage>, BusError> {
        use futures_util::StreamExt;
        let err = |e: &dyn std::fmt::Display| BusError::Stream {
            stream: "events".into(),
            message: e.to_string(),
        };
        match tokio::time::timeout(wait, self.messages.next()).await {
            Err(_) | Ok(None) => Ok(None),
            Ok(Some(Err(e))) => Err(err(&e)),
            Ok(Some(Ok(m))) => {
                let info = m.info().map_err(|e| err(&e))?;
                Ok(Some(StoredMessage::delivered(&m, &info)))
            }
        }
    }
}

/// Reads a stretch of the events stream in large batches, for rebuilding a projection: an
/// ephemeral pull consumer without acknowledgements, asked for up to `batch` messages at a
/// time. On a long history it reads a third faster than [`EventReader`] (whose ordered
/// consumer asks for 500 at a time), and has no heartbeat to miss while its reader is busy:
/// the server sends only what was asked for. A message lost on the way (the consumer's own
/// sequence skips one) or a consumer the server dropped (idle too long) makes it start a new
/// consumer where it stood.
pub struct BatchReader {
    stream: jetstream::stream::Stream<()>,
    stream_name: String,
    consumer: Option<jetstream::consumer::PullConsumer>,
    /// The first stream sequence not handed out yet.
    next: u64,
    /// The consumer sequence of the last message received from the current consumer.
    delivered: u64,
    batch: usize,
}

impl BatchReader {
    /// The next messages in stream order (at most the batch size), or none when nothing more
    /// arrived within `wait`.
    pub async fn next_batch(&mut self, wait: Duration) -> Result<Vec<StoredMessage>, BusError> {
        use futures_util::StreamExt;
        let started = std::time::Instant::now();
        let mut failures = 0;
        loop {
            let mut consumer = match self.consumer.take() {
                Some(c) => c,
                None => {
                    self.delivered = 0;
                    self.create().await?
                }
            };
            let mut out = Vec::new();
            let mut broken = None;
            // Without an expiry, a request to a consumer the server dropped would wait forever;
            // with one, it ends within it (+5 s, async-nats' margin). A live consumer answers at
            // once, with what is stored.
            let fetched = consumer
                .fetch()
                .max_messages(self.batch)
                .expires(Duration::from_secs(1))
                .messages()
                .await;
            match fetched {
                Err(e) => broken = Some(e.to_string()),
                Ok(mut messages) => {
                    out.reserve(self.batch);
                    while let Some(m) = messages.next().await {
                        let m = match m {
                            Ok(m) => m,
                            Err(e) => {
                                broken = Some(e.to_string());
                                break;
                            }
                        };
                        let info = m.info().map_err(|e| self.error(&e))?;
                        if info.consumer_sequence != self.delivered + 1 {
                            broken = Some(format!(
                                "message {} of the consumer lost on the way",
                                self.delivered + 1
                            ));
                            break;
                        }
                        self.delivered = info.consumer_sequence;
                        self.next = info.stream_sequence + 1;
                        out.push(StoredMessage::delivered(&m, &info));
                    }
                }
            }
            // Nothing: either nothing more is stored yet, or the consumer is gone.
            if out.is_empty()
                && broken.is_none()
                && let Err(e) = consumer.info().await
            {
                broken = Some(e.to_string());
            }
            let retry = broken.is_some();
            match broken {
                None => self.consumer = Some(consumer),
                Some(reason) => {
                    // Start again from the first message not handed out; what this consumer
                    // sent after the break goes with it.
                    failures += 1;
                    if failures > 5 {
                        return Err(self.error(&reason));
                    }
                    tracing::debug!(%reason, next = self.next, "recreating the batch reader's consumer");
                    let _ = self
                        .stream
                        .delete_consumer(&consumer.cached_info().name)
                        .await;
                }
            }
            if !out.is_empty() || (!retry && started.elapsed() >= wait) {
                return Ok(out);
            }
            if !retry {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// Removes the consumer from the server now rather than when it has idled long enough.
    pub async fn close(mut self) {
        if let Some(c) = self.consumer.take() {
            let _ = self.stream.delete_consumer(&c.cached_info().name).await;
        }
    }

    async fn create(&self) -> Result<jetstream::consumer::PullConsumer, BusError> {
        use jetstream::consumer::{AckPolicy, DeliverPolicy, pull::Config};
        self.stream
            .create_consumer(Config {
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: self.next.max(1),
                },
                ack_policy: AckPolicy::None,
                // A replay pauses between requests while its writes catch up; the server drops
                // the consumer after this long without one (it is then recreated).
                inactive_threshold: Duration::from_secs(60),
                memory_storage: true,
                ..Default::default()
            })
            .await
            .map_err(|e| self.error(&e))
    }

    fn error(&self, e: &dyn std::fmt::Display) -> BusError {
        BusError::Stream {
            stream: self.stream_name.clone(),
            message: e.to_string(),
        }
    }
}

/// Publishes awaiting an acknowledgement, at most (async-nats' own window has the same size).
const MAX_IN_FLIGHT: usize = 8192;
/// Publishes sent before their acknowledgements are awaited.
const CHUNK: usize = 1024;

/// Describes the bus' metric families (HELP lines), once the process has a recorder.
pub fn describe_metrics() {
    metrics::describe_counter!(
        "kairos_nats_reconnects_total",
        metrics::Unit::Count,
        "Times a NATS connection of this process was re-established after a loss."
    );
}

/// A connection to NATS plus the names of this Kairos instance's streams.
///
/// Cloned into every request's state and every task: a clone is one reference count, not the
/// client's and the JetStream context's several.
#[derive(Clone)]
pub struct Bus {
    inner: std::sync::Arc<Connection>,
}

struct Connection {
    client: async_nats::Client,
    js: jetstream::Context,
    config: BusConfig,
    signer: Option<kairos_events::Signer>,
    inflight: tokio::sync::Semaphore,
}

impl Bus {
    /// Connects (retrying the first connection for a few seconds) without touching streams.
    pub async fn connect(config: &BusConfig, name: &str) -> Result<Self, BusError> {
        config.validate()?;
        // Every connection after the first is a reconnect.
        let connected_before = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Why the first connection has not come up yet, for the error if it never does.
        let last_error = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let seen = last_error.clone();
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .event_callback(move |event| {
                let connected_before = connected_before.clone();
                let seen = seen.clone();
                async move {
                    match &event {
                        async_nats::Event::Connected
                            if connected_before
                                .swap(true, std::sync::atomic::Ordering::Relaxed) =>
                        {
                            metrics::counter!("kairos_nats_reconnects_total").increment(1);
                        }
                        async_nats::Event::ClientError(e) => {
                            *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                        }
                        async_nats::Event::ServerError(e) => {
                            *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
                        }
                        _ => {}
                    }
                }
            })
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .max_reconnects(None);
        let client = config
            .authenticate(client)
            .await?
            .connect(&config.url)
            .await
            .map_err(|cause| BusError::Connect {
                url: config.url.clone(),
                cause,
            })?;
        // `retry_on_initial_connect` returns at once and connects in the background: wait for
        // it here, so that an unreachable server or refused credentials are said as such, not
        // as the first JetStream request's timeout.
        let up = async {
            while client.connection_state() != async_nats::connection::State::Connected {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if tokio::time::timeout(Duration::from_secs(15), up)
            .await
            .is_err()
        {
            let reason = last_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "no answer".to_owned());
            return Err(BusError::Unreachable {
                url: config.url.clone(),
                reason,
            });
        }
        // Shown from the start, at 0, rather than after the first loss.
        metrics::counter!("kairos_nats_reconnects_total").increment(0);
        let js = jetstream::ContextBuilder::new()
            .timeout(Duration::from_secs(10))
            .max_ack_inflight(MAX_IN_FLIGHT)
            .build(client.clone());
        Ok(Self {
            inner: std::sync::Arc::new(Connection {
                client,
                js,
                config: config.clone(),
                signer: config.signer(),
                inflight: tokio::sync::Semaphore::new(MAX_IN_FLIGHT),
            }),
        })
    }

    /// Whether the server asked this connection to authenticate: `false` means any process that
    /// reaches it may publish anything, Kairos' own facts included.
    pub fn server_requires_auth(&self) -> bool {
        self.inner.client.server_info().auth_required
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// Whether the connection to NATS is up now (the client reconnects on its own meanwhile).
    pub fn is_connected(&self) -> bool {
        self.inner.client.connection_state() == async_nats::connection::State::Connected
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.js
    }

    pub fn config(&self) -> &BusConfig {
        &self.inner.config
    }

    pub fn stream_name(&self) -> &str {
        &self.inner.config.stream
    }

    pub fn dlq_stream_name(&self) -> String {
        format!("{}_DLQ", self.inner.config.stream)
    }

    /// Every event subject: `<prefix>.events.>`.
    pub fn events_filter(&self) -> String {
        format!("{}.events.>", self.inner.config.subject_prefix)
    }

    /// Where a projection's rejected events go: `<prefix>.dlq.<projection>`.
    pub fn dlq_subject(&self, projection: &str) -> String {
        format!("{}.dlq.{projection}", self.inner.config.subject_prefix)
    }

    /// Creates the events and dead-letter streams, or updates their settings.
    ///
    /// The events stream denies deleting and purging messages: history leaves only by age.
    pub async fn ensure_streams(&self) -> Result<(), BusError> {
        self.ensure_streams_from(None).await
    }

    /// As [`Bus::ensure_streams`]; a new events stream numbers its first message `first`
    /// (a restore puts messages back at their sequences). nats-server before 2.10 ignores a
    /// stream's `first_sequence`, so the empty stream is created open to purges, purged up to
    /// `first` (which moves an empty stream's next sequence there) and then closed to purges.
    pub async fn ensure_streams_from(&self, first: Option<u64>) -> Result<(), BusError> {
        let events = self.events_stream_config(first);
        if let Some(first) = first.filter(|f| *f > 1) {
            self.start_events_stream_at(events.clone(), first).await?;
        }
        let dlq = stream::Config {
            name: self.dlq_stream_name(),
            subjects: vec![format!("{}.dlq.>", self.inner.config.subject_prefix)],
            storage: stream::StorageType::File,
            duplicate_window: Duration::from_secs(self.inner.config.duplicate_window_secs),
            num_replicas: self.inner.config.replicas,
            ..Default::default()
        };
        for config in [events, dlq] {
            let name = config.name.clone();
            self.inner
                .js
                .create_or_update_stream(config)
                .await
                .map_err(|e| BusError::Stream {
                    stream: name,
                    message: e.to_string(),
                })?;
        }
        Ok(())
    }

    /// The events stream's settings (`first`: the sequence a new one starts at).
    fn events_stream_config(&self, first: Option<u64>) -> stream::Config {
        stream::Config {
            name: self.inner.config.stream.clone(),
            subjects: vec![self.events_filter()],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            discard: stream::DiscardPolicy::Old,
            duplicate_window: Duration::from_secs(self.inner.config.duplicate_window_secs),
            max_age: Duration::from_secs(self.inner.config.max_age_days * 86_400),
            num_replicas: self.inner.config.replicas,
            deny_delete: true,
            deny_purge: true,
            allow_direct: true,
            first_sequence: first,
            ..Default::default()
        }
    }

    /// Creates the events stream (`config`, open to purges until it starts at `first`) empty
    /// and numbering its next message `first` (see [`Bus::ensure_streams_from`]); refuses a
    /// stream that holds messages.
    async fn start_events_stream_at(
        &self,
        config: stream::Config,
        first: u64,
    ) -> Result<(), BusError> {
        let name = self.inner.config.stream.clone();
        let fail = |message: String| BusError::Stream {
            stream: name.clone(),
            message,
        };
        let mut stream = self
            .inner
            .js
            .create_stream(stream::Config {
                deny_purge: false,
                ..config
            })
            .await
            .map_err(|e| fail(e.to_string()))?;
        let state = stream
            .info()
            .await
            .map_err(|e| fail(e.to_string()))?
            .state
            .clone();
        if state.messages > 0 {
            return Err(fail(format!(
                "holds {} messages: a restore needs it empty",
                state.messages
            )));
        }
        if state.first_sequence != first {
            stream
                .purge()
                .sequence(first)
                .await
                .map_err(|e| fail(format!("cannot start it at sequence {first}: {e}")))?;
            let now = stream
                .info()
                .await
                .map_err(|e| fail(e.to_string()))?
                .state
                .first_sequence;
            if now != first {
                return Err(fail(format!(
                    "starts at sequence {now} after a purge up to {first}"
                )));
            }
        }
        Ok(())
    }

    /// Deletes the events stream if it holds no message (a restore recreates it to number its
    /// messages as the backup's); refuses one that holds any. True if there was one to delete.
    pub async fn delete_empty_events_stream(&self) -> Result<bool, BusError> {
        let err = |e: &dyn std::fmt::Display| self.stream_error(e);
        let mut stream = match self.inner.js.get_stream(&self.inner.config.stream).await {
            Ok(s) => s,
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                return Ok(false);
            }
            Err(e) => return Err(err(&e)),
        };
        let state = stream.info().await.map_err(|e| err(&e))?.state.clone();
        if state.messages > 0 || state.last_sequence > 0 {
            return Err(err(&format!(
                "holds {} messages (last sequence {}): a restore needs a stream that never held one",
                state.messages, state.last_sequence
            )));
        }
        self.inner
            .js
            .delete_stream(&self.inner.config.stream)
            .await
            .map_err(|e| err(&e))?;
        Ok(true)
    }

    /// Publishes `messages` (subject, payload, when the original was stored) in order, each
    /// without a duplicate check unless it carries a `Nats-Msg-Id`, and waits for every
    /// acknowledgement: the sequences stored, in order.
    pub async fn restore_messages(
        &self,
        messages: Vec<(String, Option<String>, Bytes, chrono::DateTime<chrono::Utc>)>,
    ) -> Result<Vec<u64>, BusError> {
        let err = |e: &dyn std::fmt::Display| self.stream_error(e);
        let mut acks = Vec::with_capacity(messages.len());
        for (subject, msg_id, payload, stored_at) in messages {
            let mut headers = HeaderMap::new();
            headers.insert(
                STORED_AT_HEADER,
                stored_at
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
                    .as_str(),
            );
            if let Some(id) = msg_id {
                headers.insert("Nats-Msg-Id", id.as_str());
            }
            acks.push(
                self.inner
                    .js
                    .publish_with_headers(subject, headers, payload)
                    .await
                    .map_err(|e| err(&e))?,
            );
        }
        let mut seqs = Vec::with_capacity(acks.len());
        for ack in acks {
            let ack = ack.await.map_err(|e| err(&e))?;
            if ack.duplicate {
                return Err(err(&format!(
                    "a message was taken for a duplicate of sequence {}",
                    ack.sequence
                )));
            }
            seqs.push(ack.sequence);
        }
        Ok(seqs)
    }

    /// The last sequence stored on the events stream (0 when empty).
    pub async fn last_seq(&self) -> Result<StreamSeq, BusError> {
        Ok(StreamSeq(self.state().await?.last_sequence))
    }

    /// The oldest sequence the events stream still holds (the next one when it holds none): what
    /// came before it was removed by age (`nats.max_age_days`).
    pub async fn first_seq(&self) -> Result<StreamSeq, BusError> {
        Ok(self.span().await?.0)
    }

    /// [`Bus::first_seq`] and [`Bus::last_seq`], from one look at the stream.
    pub async fn span(&self) -> Result<(StreamSeq, StreamSeq), BusError> {
        let state = self.state().await?;
        let first = if state.messages == 0 {
            state.last_sequence + 1
        } else {
            state.first_sequence
        };
        Ok((StreamSeq(first), StreamSeq(state.last_sequence)))
    }

    /// The events stream's state, in one request (the stream lookup already carries it).
    async fn state(&self) -> Result<jetstream::stream::State, BusError> {
        let stream = self
            .inner
            .js
            .get_stream(&self.inner.config.stream)
            .await
            .map_err(|e| self.stream_error(e))?;
        Ok(stream.cached_info().state.clone())
    }

    /// Reads the events stream from `from`, only subjects matching `filter` (default: all events).
    pub async fn read(
        &self,
        from: ReadFrom,
        filter: Option<String>,
    ) -> Result<EventReader, BusError> {
        self.read_with(from, filter, false, None).await
    }

    /// Reads the events stream from `from` in batches of up to `batch` messages (see
    /// [`BatchReader`]).
    pub async fn read_batches(
        &self,
        from: StreamSeq,
        batch: usize,
    ) -> Result<BatchReader, BusError> {
        let mut reader = BatchReader {
            stream: self.events_stream().await?,
            stream_name: self.inner.config.stream.clone(),
            consumer: None,
            next: from.0.max(1),
            delivered: 0,
            batch: batch.max(1),
        };
        reader.consumer = Some(reader.create().await?);
        Ok(reader)
    }

    /// Reads the messages `from..=to` of the events stream (and possibly a few after): the
    /// server is asked for no more than that many at a time, rather than the ordered
    /// consumer's batches of 500 of which a short read would use a few.
    pub async fn read_span(&self, from: StreamSeq, to: StreamSeq) -> Result<EventReader, BusError> {
        let span = to.0.saturating_sub(from.0).saturating_add(1);
        let batch = i64::try_from(span).unwrap_or(i64::MAX).min(500);
        self.read_with(ReadFrom::Seq(from), None, false, Some(batch))
            .await
    }

    /// As [`Bus::read`]; `headers_only` leaves the payloads on the server (sequences and times
    /// are all that is wanted).
    async fn read_with(
        &self,
        from: ReadFrom,
        filter: Option<String>,
        headers_only: bool,
        max_batch: Option<i64>,
    ) -> Result<EventReader, BusError> {
        use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
        let err = |e: &dyn std::fmt::Display| self.stream_error(e);
        let deliver_policy = match from {
            ReadFrom::Seq(s) => DeliverPolicy::ByStartSequence {
                start_sequence: s.0.max(1),
            },
            ReadFrom::Time(t) => DeliverPolicy::ByStartTime { start_time: t },
            ReadFrom::New => DeliverPolicy::New,
        };
        // No stream lookup first: creating the consumer is the one request needed.
        let stream = self
            .inner
            .js
            .get_stream_no_info(&self.inner.config.stream)
            .await
            .map_err(|e| err(&e))?;
        let consumer = stream
            .create_consumer(OrderedConfig {
                // No filter for the whole stream (its only subjects are the events'): the server
                // counts a filtered consumer's pending messages by scanning the stream, which on
                // a long history takes up to seconds.
                filter_subject: filter.unwrap_or_default(),
                deliver_policy,
                headers_only,
                max_batch: max_batch.unwrap_or_default(),
                ..Default::default()
            })
            .await
            .map_err(|e| err(&e))?;
        let at_start = consumer.cached_info().num_pending;
        let messages = consumer.messages().await.map_err(|e| err(&e))?;
        Ok(EventReader { messages, at_start })
    }

    /// The last sequence the events stream stored at or before `at` (0 if none).
    pub async fn seq_at_time(
        &self,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Result<StreamSeq, BusError> {
        self.seq_at_time_within(at, None, None).await
    }

    /// As [`Bus::seq_at_time`], searching only between stored messages known to surround
    /// `at` (`lo` stored at or before it, `hi` after it; say, where a projection took
    /// snapshots); a missing end is the stream's first or last message. On a long stream each
    /// request for a message far from the last one makes the server load another block: a
    /// narrow bracket keeps the search to the block read next anyway. A `lo` that does not hold
    /// (no longer stored at the time given) is ignored.
    pub async fn seq_at_time_within(
        &self,
        at: chrono::DateTime<chrono::Utc>,
        lo: Option<StoredAt>,
        hi: Option<StoredAt>,
    ) -> Result<StreamSeq, BusError> {
        let stream = self.events_stream().await?;
        let hi = hi.filter(|hi| at < hi.time);
        let mut lo = match lo.filter(|lo| lo.time <= at && hi.is_none_or(|hi| lo.seq < hi.seq)) {
            // Times kept elsewhere may be rounded (PostgreSQL keeps microseconds): the stored
            // message's own time is the one the search compares with.
            Some(lo) => stream.get_raw_message(lo.seq.0).await.ok().and_then(|m| {
                let time = stored_time(&m);
                (time.timestamp_micros() == lo.time.timestamp_micros() && time <= at)
                    .then_some(StoredAt { seq: lo.seq, time })
            }),
            None => None,
        };
        let hi = match (lo, hi) {
            (Some(_), Some(hi)) => hi,
            _ => {
                let state = self.state().await?;
                if state.messages == 0 {
                    return Ok(StreamSeq(state.first_sequence.saturating_sub(1)));
                }
                // The ends' own stored times: on a restored stream, JetStream's are the
                // restore's, the headers' the originals'.
                let (mut first_t, mut last_t) = (state.first_timestamp, state.last_timestamp);
                if let Ok(m) = stream.get_raw_message(state.first_sequence).await {
                    first_t = stored_time(&m);
                }
                if let Ok(m) = stream.get_raw_message(state.last_sequence).await {
                    last_t = stored_time(&m);
                }
                if at < first_t {
                    return Ok(StreamSeq(state.first_sequence.saturating_sub(1)));
                }
                if at >= last_t {
                    return Ok(StreamSeq(state.last_sequence));
                }
                lo = lo.or(Some(StoredAt {
                    seq: StreamSeq(state.first_sequence),
                    time: first_t,
                }));
                match hi {
                    Some(hi) if lo.is_some_and(|lo| lo.seq < hi.seq) => hi,
                    _ => StoredAt {
                        seq: StreamSeq(state.last_sequence),
                        time: last_t,
                    },
                }
            }
        };
        let lo = lo.unwrap_or(hi);
        if lo.seq >= hi.seq {
            return Ok(lo.seq);
        }
        self.search(&stream, at, lo, hi).await
    }

    /// An error about the events stream.
    fn stream_error(&self, e: impl std::fmt::Display) -> BusError {
        BusError::Stream {
            stream: self.inner.config.stream.clone(),
            message: e.to_string(),
        }
    }

    async fn events_stream(&self) -> Result<jetstream::stream::Stream<()>, BusError> {
        self.inner
            .js
            .get_stream_no_info(&self.inner.config.stream)
            .await
            .map_err(|e| self.stream_error(e))
    }

    /// The last sequence stored at or before `at`, with `lo` stored at or before it and `hi`
    /// after it.
    async fn search(
        &self,
        stream: &jetstream::stream::Stream<()>,
        at: chrono::DateTime<chrono::Utc>,
        lo: StoredAt,
        hi: StoredAt,
    ) -> Result<StreamSeq, BusError> {
        // Somewhere inside: search by sequence, a stored message's time per request (times grow
        // with sequences). Interpolating on time converges in a few requests when the rate is
        // steady; every other step halves, so an uneven history costs at most twice a bisection.
        // A consumer started by time would do in one request, but on a long stream the server's
        // search for its start takes tens of milliseconds now and then.
        let after = hi.seq.0;
        let (mut lo, mut lo_t) = (lo.seq.0, lo.time);
        let (mut hi, mut hi_t) = (hi.seq.0, hi.time);
        let mut step = 0u32;
        while hi - lo > 1 {
            step += 1;
            let span = (hi_t - lo_t).num_nanoseconds().unwrap_or(i64::MAX).max(1) as f64;
            let into = (at - lo_t).num_nanoseconds().unwrap_or(0).max(0) as f64;
            let mid = if step.is_multiple_of(2) {
                lo + (hi - lo) / 2
            } else {
                lo + ((hi - lo) as f64 * (into / span)) as u64
            }
            .clamp(lo + 1, hi - 1);
            let t = match stream.get_raw_message(mid).await {
                Ok(m) => stored_time(&m),
                // A message missing inside the stream: ask the server to search by time.
                Err(_) => return self.seq_at_time_by_consumer(at, after).await,
            };
            if t <= at {
                (lo, lo_t) = (mid, t);
            } else {
                (hi, hi_t) = (mid, t);
            }
        }
        Ok(StreamSeq(lo))
    }

    /// As [`Bus::seq_at_time`], by a consumer started at `at`.
    async fn seq_at_time_by_consumer(
        &self,
        at: chrono::DateTime<chrono::Utc>,
        last: u64,
    ) -> Result<StreamSeq, BusError> {
        let mut reader = self
            .read_with(ReadFrom::Time(at), None, true, Some(1))
            .await?;
        match reader.next(Duration::from_secs(5)).await? {
            Some(m) if m.stored_at > at => Ok(StreamSeq(m.seq.0.saturating_sub(1))),
            Some(m) => Ok(m.seq),
            None => Ok(StreamSeq(last)),
        }
    }

    /// Publishes events in order and waits for every acknowledgement. Publishes are pipelined
    /// in chunks: a chunk's in-flight slots are taken all at once before it is sent, so callers
    /// publishing concurrently never each hold part of the window while waiting for the rest.
    pub async fn publish_events(&self, events: &[Event]) -> Vec<Result<Receipt, BusError>> {
        let mut results = Vec::with_capacity(events.len());
        for chunk in events.chunks(CHUNK) {
            let Ok(_slots) = self.inner.inflight.acquire_many(chunk.len() as u32).await else {
                results.extend(
                    chunk
                        .iter()
                        .map(|_| Err(BusError::Config("the bus is closed".into()))),
                );
                continue;
            };
            let mut pending = Vec::with_capacity(chunk.len());
            for event in chunk {
                let signed = match self.signed(event) {
                    Ok(signed) => signed,
                    Err(e) => {
                        pending.push((
                            event.nats_subject(&self.inner.config.subject_prefix),
                            Err(e),
                        ));
                        continue;
                    }
                };
                let event = signed.as_ref().unwrap_or(event);
                let subject = event.nats_subject(&self.inner.config.subject_prefix);
                let mut headers = HeaderMap::new();
                headers.insert("Nats-Msg-Id", event.msg_id().as_str());
                headers.insert("Content-Type", "application/cloudevents+json");
                let sent = self
                    .inner
                    .js
                    .publish_with_headers(
                        subject.clone(),
                        headers,
                        Bytes::copy_from_slice(event.to_bytes()),
                    )
                    .await
                    .map_err(|e| e.to_string());
                pending.push((subject, sent));
            }
            for (subject, sent) in pending {
                let result = match sent {
                    Ok(ack) => ack
                        .await
                        .map(|ack| Receipt {
                            seq: StreamSeq(ack.sequence),
                            duplicate: ack.duplicate,
                        })
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e),
                };
                results.push(result.map_err(|message| BusError::Publish { subject, message }));
            }
        }
        results
    }

    /// Publishes `event` only if the last message stored on its subject is at stream sequence
    /// `expected` (0: the subject has none yet): JetStream's
    /// `Nats-Expected-Last-Subject-Sequence`, checked and stored atomically by the server. A
    /// subject that moved on answers [`BusError::Conflict`].
    pub async fn publish_if_last(&self, event: &Event, expected: u64) -> Result<Receipt, BusError> {
        let signed = self.signed(event).map_err(|message| BusError::Publish {
            subject: event.nats_subject(&self.inner.config.subject_prefix),
            message,
        })?;
        let event = signed.as_ref().unwrap_or(event);
        let subject = event.nats_subject(&self.inner.config.subject_prefix);
        let mut headers = HeaderMap::new();
        headers.insert("Nats-Msg-Id", event.msg_id().as_str());
        headers.insert("Content-Type", "application/cloudevents+json");
        headers.insert(
            "Nats-Expected-Last-Subject-Sequence",
            expected.to_string().as_str(),
        );
        let failed = |e: &dyn std::fmt::Display| BusError::Publish {
            subject: subject.clone(),
            message: e.to_string(),
        };
        let _slot = self
            .inner
            .inflight
            .acquire()
            .await
            .map_err(|_| BusError::Config("the bus is closed".into()))?;
        let ack = self
            .inner
            .js
            .publish_with_headers(
                subject.clone(),
                headers,
                Bytes::copy_from_slice(event.to_bytes()),
            )
            .await
            .map_err(|e| failed(&e))?;
        match ack.await {
            Ok(ack) => Ok(Receipt {
                seq: StreamSeq(ack.sequence),
                duplicate: ack.duplicate,
            }),
            Err(e)
                if e.kind()
                    == async_nats::jetstream::context::PublishErrorKind::WrongLastSequence =>
            {
                Err(BusError::Conflict { subject, expected })
            }
            Err(e) => Err(failed(&e)),
        }
    }

    /// The stream sequence of the last message stored on `subject`, `0` if none is. A direct
    /// get (the stream allows them): served beside the JetStream API's queue, which a busy
    /// server works through one request at a time.
    pub async fn last_seq_on(&self, subject: &str) -> Result<u64, BusError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        match self
            .events_stream()
            .await?
            .direct_get_last_for_subject(subject)
            .await
        {
            Ok(m) => Ok(m.sequence),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(0),
            Err(e) => Err(self.stream_error(e)),
        }
    }

    /// The payload stored at `seq` (a direct get); `None` when the stream no longer holds it.
    pub async fn payload_at(&self, seq: StreamSeq) -> Result<Option<Bytes>, BusError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        match self.events_stream().await?.direct_get(seq.0).await {
            Ok(m) => Ok(Some(m.payload)),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.stream_error(e)),
        }
    }

    /// `event` signed, if this bus signs and Kairos states it ([`kairos_events::states`]).
    fn signed(&self, event: &Event) -> Result<Option<Event>, String> {
        match &self.inner.signer {
            Some(signer) => signer
                .sign(event)
                .map_err(|e| format!("signing the event: {e}")),
            None => Ok(None),
        }
    }

    /// Publishes one event and waits for its acknowledgement.
    pub async fn publish_event(&self, event: &Event) -> Result<Receipt, BusError> {
        self.publish_events(std::slice::from_ref(event))
            .await
            .pop()
            .unwrap_or_else(|| Err(BusError::Config("nothing was published".into())))
    }

    /// Sends a message a projection could not apply to `<prefix>.dlq.<projection>`, with the
    /// reason and its origin in headers, and waits for the acknowledgement. Idempotent per
    /// (projection, original sequence) inside the duplicate window.
    pub async fn dead_letter(
        &self,
        projection: &str,
        original_subject: &str,
        original_seq: StreamSeq,
        payload: Bytes,
        code: &str,
        reason: &str,
    ) -> Result<StreamSeq, BusError> {
        let subject = self.dlq_subject(projection);
        let mut headers = HeaderMap::new();
        headers.insert(
            "Nats-Msg-Id",
            format!("dlq-{projection}-{original_seq}").as_str(),
        );
        headers.insert("Kairos-Dlq-Projection", projection);
        headers.insert("Kairos-Dlq-Code", code);
        // Header values cannot carry line breaks; reasons can quote hostile input.
        let reason: String = reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(1000)
            .collect();
        headers.insert("Kairos-Dlq-Reason", reason.as_str());
        headers.insert("Kairos-Original-Subject", original_subject);
        headers.insert("Kairos-Original-Seq", original_seq.to_string().as_str());
        let publish_err = |e: &dyn std::fmt::Display| BusError::Publish {
            subject: subject.clone(),
            message: e.to_string(),
        };
        let ack = self
            .inner
            .js
            .publish_with_headers(subject.clone(), headers, payload)
            .await
            .map_err(|e| publish_err(&e))?
            .await
            .map_err(|e| publish_err(&e))?;
        Ok(StreamSeq(ack.sequence))
    }
}
