//! `kairos backup` and `kairos restore`: the Kairos-specific half of a backup (docs/backup.md).
//!
//! The stream is the truth, so a backup is every message of the events stream, in order, with
//! its sequence, subject, stored time and exact bytes (`stream.jsonl`), and what the database
//! holds that no projection can rebuild: the instance's key secret, without which every API key
//! and invitation stops working (`manifest.json`, with the stream's name, its first and last
//! sequence, the message count and the SHA-256 of `stream.jsonl`). Both files are written
//! readable by their owner only: the manifest holds a secret.
//!
//! A restore puts the messages back on an events stream that never held one, at their
//! sequences (the stream's first sequence is set to the backup's) and with their stored time
//! (the `Kairos-Stored-At` header, which readers take as the stored time), checks each sequence
//! JetStream acknowledges, and sets the key secret in a database no projection has used yet.
//! The projections then rebuild from the stream as on any first start (`kairos serve`, or
//! `kairos replay --all`).

use std::collections::HashSet;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use kairos_bus::ReadFrom;
use kairos_events::{StreamSeq, printable};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::startup::Kairos;

/// The format this build writes and reads.
pub const FORMAT: &str = "kairos-backup/1";
const MANIFEST: &str = "manifest.json";
const STREAM: &str = "stream.jsonl";
/// Messages published before their acknowledgements are awaited.
const CHUNK: usize = 2_000;

/// `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub created_at: DateTime<Utc>,
    pub stream: String,
    pub subject_prefix: String,
    /// The first and last sequence of the messages in `stream.jsonl` (0 and 0 when empty).
    pub first_seq: u64,
    pub last_seq: u64,
    pub messages: u64,
    /// SHA-256 of `stream.jsonl`, hex.
    pub sha256: String,
    /// The database's key secret, hex; `None` when `auth.key_secret` is configured instead
    /// (then configure the same one where you restore).
    pub key_secret: Option<String>,
}

/// One line of `stream.jsonl`: the payload as text when it is UTF-8 (a JSON string keeps it
/// byte for byte), else as hex.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    seq: u64,
    subject: String,
    stored_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    payload_hex: Option<String>,
}

fn private_file(path: &Path) -> anyhow::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))
}

/// Writes a backup of `k`'s stream and key secret into `dir` (created; it must not hold a
/// backup already). Messages stored after the backup starts are not in it.
pub async fn backup(k: &Kairos, dir: &Path, now: DateTime<Utc>) -> anyhow::Result<Manifest> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    ensure!(
        !dir.join(MANIFEST).exists() && !dir.join(STREAM).exists(),
        "{} holds a backup already: give another folder",
        dir.display()
    );
    let key_secret: Option<Vec<u8>> = sqlx::query_scalar("SELECT key_secret FROM kairos.instance")
        .fetch_optional(&k.pool)
        .await?
        .flatten();
    let last = k.bus.last_seq().await?;
    let mut out = BufWriter::new(private_file(&dir.join(STREAM))?);
    let mut hash = Sha256::new();
    let (mut first, mut messages, mut previous) = (0, 0_u64, None::<u64>);
    if last.0 > 0 {
        let mut reader = k.bus.read(ReadFrom::Seq(StreamSeq(1)), None).await?;
        while let Some(m) = reader.next(Duration::from_secs(5)).await? {
            if let Some(p) = previous {
                ensure!(
                    m.seq.0 == p + 1,
                    "the stream skips from sequence {p} to {}: a backup needs its messages \
                     without gaps",
                    m.seq.0
                );
            } else {
                first = m.seq.0;
            }
            previous = Some(m.seq.0);
            let (payload, payload_hex) = match std::str::from_utf8(&m.payload) {
                Ok(text) => (Some(text.to_owned()), None),
                Err(_) => (None, Some(kairos_access::hex(&m.payload))),
            };
            let mut line = serde_json::to_vec(&Line {
                seq: m.seq.0,
                subject: m.subject.clone(),
                stored_at: m.stored_at,
                payload,
                payload_hex,
            })?;
            line.push(b'\n');
            hash.update(&line);
            out.write_all(&line)?;
            messages += 1;
            if m.seq >= last {
                break;
            }
        }
        ensure!(
            previous == Some(last.0),
            "the stream ended at sequence {} before its last, {}",
            previous.unwrap_or(0),
            last.0
        );
    }
    out.flush()?;
    let manifest = Manifest {
        format: FORMAT.to_owned(),
        created_at: now,
        stream: k.bus.stream_name().to_owned(),
        subject_prefix: k.settings.nats.subject_prefix.clone(),
        first_seq: first,
        last_seq: previous.unwrap_or(0),
        messages,
        sha256: kairos_access::hex(&hash.finalize()),
        key_secret: key_secret.as_deref().map(kairos_access::hex),
    };
    let mut m = private_file(&dir.join(MANIFEST))?;
    serde_json::to_writer_pretty(&mut m, &manifest)?;
    m.write_all(b"\n")?;
    Ok(manifest)
}

/// Reads and checks the backup in `dir`: its manifest, and every line of its stream against
/// the manifest's count, sequences and hash.
pub fn read(dir: &Path) -> anyhow::Result<(Manifest, Vec<RestoredMessage>)> {
    let raw = std::fs::read(dir.join(MANIFEST))
        .with_context(|| format!("cannot read {}", dir.join(MANIFEST).display()))?;
    let manifest: Manifest = serde_json::from_slice(&raw)
        .with_context(|| format!("{} is not a Kairos backup manifest", MANIFEST))?;
    ensure!(
        manifest.format == FORMAT,
        "{MANIFEST}: format \"{}\", this Kairos reads {FORMAT:?}",
        printable(&manifest.format, 40)
    );
    let file = std::fs::File::open(dir.join(STREAM))
        .with_context(|| format!("cannot read {}", dir.join(STREAM).display()))?;
    let mut reader = BufReader::new(file);
    let mut hash = Sha256::new();
    let mut out = Vec::new();
    let mut buf = Vec::new();
    let mut n = 0_u64;
    loop {
        buf.clear();
        if reader.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        hash.update(&buf);
        n += 1;
        let line: Line = serde_json::from_slice(&buf)
            .with_context(|| format!("{STREAM} line {n} is not a backed-up message"))?;
        let expected = manifest.first_seq + n - 1;
        ensure!(
            line.seq == expected,
            "{STREAM} line {n}: sequence {}, where {expected} follows",
            line.seq
        );
        let payload = match (line.payload, line.payload_hex) {
            (Some(text), None) => Bytes::from(text),
            (None, Some(hex)) => Bytes::from(
                kairos_access::unhex(&hex)
                    .with_context(|| format!("{STREAM} line {n}: payload_hex is not hex"))?,
            ),
            _ => bail!("{STREAM} line {n}: needs one of payload and payload_hex"),
        };
        out.push(RestoredMessage {
            seq: line.seq,
            subject: line.subject,
            stored_at: line.stored_at,
            payload,
        });
    }
    let sha = kairos_access::hex(&hash.finalize());
    ensure!(
        sha == manifest.sha256,
        "{STREAM} has SHA-256 {sha}, the manifest says \"{}\": the file was changed or cut short",
        printable(&manifest.sha256, 64)
    );
    ensure!(
        n == manifest.messages && (n == 0 || manifest.last_seq == manifest.first_seq + n - 1),
        "{STREAM} holds {n} messages, the manifest says {} ({}..={})",
        manifest.messages,
        manifest.first_seq,
        manifest.last_seq
    );
    Ok((manifest, out))
}

/// A message read back from a backup.
#[derive(Debug, Clone)]
pub struct RestoredMessage {
    pub seq: u64,
    pub subject: String,
    pub stored_at: DateTime<Utc>,
    pub payload: Bytes,
}

/// What a restore did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    pub messages: u64,
    pub first_seq: u64,
    pub last_seq: u64,
    pub key_secret: bool,
}

/// Restores the backup in `dir` onto `k`'s events stream, which must never have held a message,
/// and `k`'s database: a new one, or one restored from a dump taken before the backup (no
/// projection's checkpoint past the backup's last sequence, the same key secret). Subjects move
/// to `k`'s subject prefix when the backup's was another.
pub async fn restore(k: &Kairos, dir: &Path) -> anyhow::Result<Restored> {
    let (manifest, messages) = read(dir)?;
    // A new database, or one restored from a dump taken before this backup (its projections
    // then go on from where the dump left them): none may have applied past the backup's end.
    let applied: Option<i64> = sqlx::query_scalar("SELECT max(last_seq) FROM kairos.checkpoints")
        .fetch_one(&k.pool)
        .await?;
    let applied = applied.unwrap_or(0).max(0) as u64;
    ensure!(
        applied <= manifest.last_seq,
        "the database's projections have applied up to sequence {applied}, beyond the backup's \
         last ({}): restore into a new database, or one dumped before the backup was taken",
        manifest.last_seq
    );
    // Everything checked before anything changes: the subjects, then the key secret.
    let (from, to) = (&manifest.subject_prefix, &k.settings.nats.subject_prefix);
    // The first copy of each event keeps its JetStream identity, so that an event a rebuilding
    // projection emits again inside the duplicate window is taken for the one restored; later
    // copies (stored again past the window in the original) go without one, as they were stored.
    let mut seen = HashSet::new();
    let mut prepared = Vec::with_capacity(messages.len());
    for m in messages {
        let subject = match m.subject.strip_prefix(from.as_str()) {
            Some(rest) if rest.starts_with('.') => format!("{to}{rest}"),
            _ => bail!(
                "message {} is on \"{}\", outside the backup's prefix \"{}\"",
                m.seq,
                printable(&m.subject, 200),
                printable(from, 100)
            ),
        };
        let msg_id = kairos_events::Event::from_slice(&m.payload)
            .ok()
            .map(|e| e.msg_id())
            .filter(|id| seen.insert(id.clone()));
        prepared.push((subject, msg_id, m.payload, m.stored_at));
    }
    let secret = manifest
        .key_secret
        .as_deref()
        .map(|hex| kairos_access::unhex(hex).context("the manifest's key_secret is not hex"))
        .transpose()?;
    // The stream is checked before the key secret is set: a stream that held messages stops
    // the restore with the database untouched.
    k.bus
        .delete_empty_events_stream()
        .await
        .context("the events stream")?;
    if let Some(secret) = &secret {
        let set = sqlx::query(
            "UPDATE kairos.instance SET key_secret = $1 \
             WHERE key_secret IS NULL OR key_secret = $1",
        )
        .bind(secret)
        .execute(&k.pool)
        .await?
        .rows_affected();
        ensure!(
            set == 1,
            "the database has another key secret than the backup's: restore into a new \
             database, or one dumped from the same instance"
        );
    }
    k.bus
        .ensure_streams_from((manifest.first_seq > 1).then_some(manifest.first_seq))
        .await?;
    let mut expected = manifest.first_seq;
    let mut rest = prepared.into_iter().peekable();
    while rest.peek().is_some() {
        let chunk: Vec<_> = rest.by_ref().take(CHUNK).collect();
        for seq in k.bus.restore_messages(chunk).await? {
            ensure!(
                seq == expected,
                "JetStream stored message {expected} of the backup at sequence {seq}"
            );
            expected += 1;
        }
    }
    let key_secret = secret.is_some();
    Ok(Restored {
        messages: manifest.messages,
        first_seq: manifest.first_seq,
        last_seq: manifest.last_seq,
        key_secret,
    })
}
