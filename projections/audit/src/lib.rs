//! The audit projection: who did what, when, with what outcome — in an append-only,
//! hash-chained table that nobody can quietly rewrite.
//!
//! Entries come from `kairos.user.action.v1` (the API records every write, allowed or denied, as
//! one), from the events that change budgets (`kairos.budget.set.v1`,
//! `kairos.budget.threshold_crossed.v1`) and from every identity event (`kairos.member.*`,
//! `kairos.role.assigned.v1`, `kairos.api_key.*`). Entry `n` stores the hash of
//! entry `n-1` and `sha256(prev_hash || canonical(entry))`. [`verify_chain`] recomputes the chain
//! from the table; [`verify_against_stream`] rebuilds the entries from the stream itself and
//! compares, so a consistent forgery of the whole table is caught too. Both name the first entry
//! that was altered, deleted, inserted or reordered.

use chrono::{DateTime, Utc};
use kairos_bus::Bus;
use kairos_events::hex::encode as hex;
use kairos_events::types::{
    API_KEY_ISSUED, API_KEY_REVOKED, AUDIT_CHECKPOINT, AuditCheckpoint, BUDGET_SET,
    BUDGET_THRESHOLD_CROSSED, INVITATION_REVOKED, MEMBER_INVITED, MEMBER_JOINED, MEMBER_REMOVED,
    ROLE_ASSIGNED, USER_ACTION,
};
use kairos_events::{Emit, Event, StreamSeq};
use kairos_runtime::{ApplyError, Decoded, Projection, Rejection, StoredEvent, StreamDecoder};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{PgConnection, PgPool, Row};

mod api;

pub use api::{AuditModule, MODULE};

pub const NAME: &str = "audit";

/// The hash the first entry chains to.
pub const GENESIS: [u8; 32] = [0; 32];

/// One audit entry, as hashed. Field order is the canonical order.
///
/// `actor`, `actor_role`, `ip` and `request_id` are what Kairos authenticated: the member behind
/// a request it recorded (a `kairos/` source with Kairos' signature), or else the producer's
/// source. What a producer's event says about who acted, and from where, is kept apart in
/// `claimed`. `occurred_at` is the event's own time (for a producer's event, the time it
/// claims); `recorded_at` is when the stream stored it, which no producer chooses.
///
/// Entries written before `recorded_at` and `claimed` existed are layout 1: they lack both, and
/// a producer's claims sit in the authenticated fields. Their canonical form, and so their hash,
/// is what it was; [`Entry::in_layout`] gives the layout-1 form of a newer entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub seq: u64,
    /// Microseconds since the epoch (PostgreSQL's precision, so the stored row rehashes equal).
    pub occurred_at_us: i64,
    pub actor: String,
    pub actor_role: Option<String>,
    pub action: String,
    pub resource: String,
    pub outcome: String,
    pub ip: Option<String>,
    pub request_id: Option<String>,
    pub reason: Option<String>,
    pub event_id: String,
    pub event_source: String,
    pub event_type: String,
    /// When the stream stored the event, in microseconds (layout 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recorded_at_us: Option<i64>,
    /// What a producer's user action says about who acted (layout 2): `None` for what Kairos
    /// recorded itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub claimed: Option<Claims>,
    #[serde(skip_serializing_if = "is_first_layout")]
    pub layout: u8,
}

/// The layout [`Entry::from_event`] writes.
pub const LAYOUT: u8 = 2;

fn is_first_layout(layout: &u8) -> bool {
    *layout <= 1
}

/// Who a producer says acted, in which role, from where: its word, not Kairos'.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl Entry {
    /// This entry as layout `layout` writes it: unchanged for the current layout; for layout 1,
    /// without `recorded_at`, and with a producer's claims in the actor's fields.
    pub fn in_layout(&self, layout: u8) -> Entry {
        if layout >= LAYOUT {
            return self.clone();
        }
        let mut old = self.clone();
        old.layout = 1;
        old.recorded_at_us = None;
        if let Some(c) = old.claimed.take() {
            old.actor = c.actor.unwrap_or_default();
            old.actor_role = c.role;
            old.ip = c.ip;
            old.request_id = c.request_id;
        }
        old
    }

    pub fn recorded_at(&self) -> Option<DateTime<Utc>> {
        self.recorded_at_us
            .and_then(DateTime::from_timestamp_micros)
    }

    /// The canonical bytes the hash covers.
    pub fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn hash(&self, prev: &[u8; 32]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(prev);
        h.update(self.canonical());
        h.finalize().into()
    }

    pub fn occurred_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.occurred_at_us).unwrap_or_default()
    }

    /// The entry an event makes, if it is auditable.
    pub fn from_event(stored: &StoredEvent) -> Result<Option<Entry>, Rejection> {
        let e = &stored.event;
        let data = &e.json()["data"];
        let s = |k: &str| data[k].as_str().map(str::to_owned);
        // Who acted, in what role, from where: taken from the event only when Kairos recorded it
        // (a `kairos/` source, which the API refuses from anyone else, with Kairos' signature
        // where a key is set); otherwise the producer that reported it is the actor, and what
        // its event says about who acted is its claim.
        let trusted = e.source().starts_with(kairos_events::KAIROS_SOURCE) && stored.vouched;
        let t = |k: &str| if trusted { s(k) } else { None };
        let project = || format!("project:{}", s("project").unwrap_or_default());
        let mut claimed = None;
        let (actor, actor_role, action, resource, outcome, ip, request_id, reason) =
            match e.event_type().as_str() {
                USER_ACTION => {
                    if !trusted {
                        claimed = Some(Claims {
                            actor: s("actor"),
                            role: s("role"),
                            ip: s("ip"),
                            request_id: s("request_id"),
                        });
                    }
                    (
                        if trusted {
                            s("actor").unwrap_or_default()
                        } else {
                            e.source().to_owned()
                        },
                        t("role"),
                        s("action").unwrap_or_default(),
                        s("resource").unwrap_or_default(),
                        s("outcome").unwrap_or_default(),
                        t("ip"),
                        t("request_id"),
                        s("reason"),
                    )
                }
                BUDGET_SET => (
                    t("actor").unwrap_or_else(|| e.source().to_owned()),
                    t("actor_role"),
                    "budget.set".to_owned(),
                    project(),
                    "success".to_owned(),
                    t("ip"),
                    t("request_id"),
                    Some(format!(
                        "monthly_limit {} warn_at_percent {} on_exceeded {}",
                        s("monthly_limit").unwrap_or_default(),
                        data["warn_at_percent"],
                        s("on_exceeded").unwrap_or_default()
                    )),
                ),
                BUDGET_THRESHOLD_CROSSED => (
                    e.source().to_owned(),
                    None,
                    "budget.threshold_crossed".to_owned(),
                    project(),
                    "success".to_owned(),
                    None,
                    None,
                    Some(format!(
                        "{} in {}: spent {} of {}",
                        s("threshold").unwrap_or_default(),
                        s("period").unwrap_or_default(),
                        s("spent").unwrap_or_default(),
                        s("limit").unwrap_or_default()
                    )),
                ),
                kairos_events::types::CATALOG_CHANGED => (
                    t("actor").unwrap_or_else(|| e.source().to_owned()),
                    t("actor_role"),
                    "catalog.changed".to_owned(),
                    "catalog".to_owned(),
                    "success".to_owned(),
                    t("ip"),
                    t("request_id"),
                    Some(format!(
                        "{} models",
                        data["models"].as_array().map_or(0, Vec::len)
                    )),
                ),
                MEMBER_INVITED | INVITATION_REVOKED | MEMBER_JOINED | MEMBER_REMOVED
                | ROLE_ASSIGNED | API_KEY_ISSUED | API_KEY_REVOKED => {
                    let (action, resource, reason) = identity_entry(e.event_type().as_str(), data);
                    (
                        t("actor").unwrap_or_else(|| e.source().to_owned()),
                        t("actor_role"),
                        action.to_owned(),
                        resource,
                        "success".to_owned(),
                        t("ip"),
                        t("request_id"),
                        Some(reason),
                    )
                }
                _ => return Ok(None),
            };
        Ok(Some(Entry {
            seq: stored.seq.0,
            occurred_at_us: stored.occurred_at().timestamp_micros(),
            actor,
            actor_role,
            action,
            resource,
            outcome,
            ip,
            request_id,
            reason,
            event_id: e.id().to_owned(),
            event_source: e.source().to_owned(),
            event_type: e.event_type().to_string(),
            recorded_at_us: Some(stored.stored_at.timestamp_micros()),
            claimed,
            layout: LAYOUT,
        }))
    }
}

/// Action, resource and a summary of an identity event. Hashes of keys and tokens stay out.
fn identity_entry(ty: &str, data: &serde_json::Value) -> (&'static str, String, String) {
    let s = |k: &str| data[k].as_str().unwrap_or_default();
    let scope = || match data["projects"].as_array() {
        Some(ps) => format!(
            " on {}",
            ps.iter()
                .filter_map(|p| p.as_str())
                .collect::<Vec<_>>()
                .join(",")
        ),
        None => String::new(),
    };
    match ty {
        MEMBER_INVITED => (
            "member.invite",
            format!("invitation:{}", s("invitation_id")),
            format!(
                "{} invited as {}{}, expires {}",
                s("email"),
                s("role"),
                scope(),
                s("expires_at")
            ),
        ),
        MEMBER_JOINED => (
            "member.join",
            format!("member:{}", s("member_id")),
            format!(
                "{} joined as {}{}{}, first key {}",
                s("email"),
                s("role"),
                scope(),
                data["invitation_id"]
                    .as_str()
                    .map(|i| format!(" by invitation {i}"))
                    .unwrap_or_default(),
                data["key"]["key_id"].as_str().unwrap_or_default()
            ),
        ),
        INVITATION_REVOKED => (
            "member.revoke_invitation",
            format!("invitation:{}", s("invitation_id")),
            "revoked before it was accepted".to_owned(),
        ),
        MEMBER_REMOVED => (
            "member.remove",
            format!("member:{}", s("member_id")),
            data["reason"].as_str().unwrap_or("removed").to_owned(),
        ),
        ROLE_ASSIGNED => (
            "member.set_role",
            format!("member:{}", s("member_id")),
            format!("role {}{}", s("role"), scope()),
        ),
        API_KEY_ISSUED => (
            "api_key.issue",
            format!("api_key:{}", s("key_id")),
            format!("key {:?} for member {}", s("name"), s("member_id")),
        ),
        _ => (
            "api_key.revoke",
            format!("api_key:{}", s("key_id")),
            format!("key of member {}", s("member_id")),
        ),
    }
}

/// The head of the chain as a signed checkpoint on the stream states it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHead {
    /// Where the checkpoint itself is stored.
    pub seq: u64,
    pub head_seq: u64,
    pub head_hash: [u8; 32],
    pub entries: u64,
    pub at: DateTime<Utc>,
}

/// What the audit projection folds from one event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(clippy::large_enum_variant)] // nearly every item is an entry: boxing would cost each one
pub enum Item {
    Entry(Entry),
    Checkpoint(SignedHead),
}

/// The projection. It appends a signed checkpoint of the chain's head to the stream every
/// `checkpoint_every` entries, or with the first entry `checkpoint_interval` of stream time after
/// the last checkpoint.
#[derive(Debug, Clone, Copy)]
pub struct Audit {
    pub checkpoint_every: u64,
    pub checkpoint_interval: chrono::Duration,
}

impl Default for Audit {
    fn default() -> Self {
        Self {
            checkpoint_every: 1000,
            checkpoint_interval: chrono::Duration::seconds(60),
        }
    }
}

/// The checkpoint event of a chain whose newest entry is at `head_seq` with `head_hash`, the
/// `entries`-th: its id names the head, so the projection and a serving process stating the
/// same head publish one event.
pub fn checkpoint_event(
    head_seq: u64,
    head_hash: &[u8],
    entries: u64,
    at: DateTime<Utc>,
) -> Result<Event, kairos_events::EventError> {
    Emit::new(
        AUDIT_CHECKPOINT,
        "kairos/audit",
        serde_json::json!({"head_seq": head_seq, "head_hash": hex(head_hash), "entries": entries}),
    )
    .id(format!("audit-checkpoint-{head_seq}"))
    .time(at)
    .build()
}

fn decode_checkpoint(stored: &StoredEvent) -> Result<SignedHead, Rejection> {
    let c: AuditCheckpoint = stored.event.data_as()?;
    let head_hash = kairos_events::hex::decode32(&c.head_hash).ok_or_else(|| Rejection {
        code: "invalid_data",
        reason: "head_hash is not 64 hex digits".into(),
    })?;
    Ok(SignedHead {
        seq: stored.seq.0,
        head_seq: c.head_seq,
        head_hash,
        entries: c.entries,
        at: stored.occurred_at(),
    })
}

impl Projection for Audit {
    type Item = Item;
    /// Nothing: audit takes no snapshots, so a batch is one segment.
    type Carry = ();

    fn name(&self) -> &'static str {
        NAME
    }

    fn schema(&self) -> &'static str {
        "audit"
    }

    fn categories(&self) -> Option<&'static [&'static str]> {
        // `member`, `role` and `api_key` hold identity events stored by an earlier layout.
        Some(&[
            "user", "budget", "catalog", "access", "member", "role", "api_key", "audit",
        ])
    }

    fn decode(&self, stored: &StoredEvent) -> Result<Option<Item>, Rejection> {
        if stored.event.event_type().as_str() == AUDIT_CHECKPOINT {
            return decode_checkpoint(stored).map(|c| Some(Item::Checkpoint(c)));
        }
        Ok(Entry::from_event(stored)?.map(Item::Entry))
    }

    async fn apply(
        &self,
        tx: &mut PgConnection,
        items: Vec<Item>,
        _carry: &mut (),
    ) -> Result<Vec<Event>, ApplyError> {
        let (mut entries, mut signed) = (Vec::with_capacity(items.len()), Vec::new());
        for item in items {
            match item {
                Item::Entry(e) => entries.push(e),
                Item::Checkpoint(c) => signed.push(c),
            }
        }
        let mut emitted = Vec::new();
        if let Some(newest) = entries.last() {
            let (head_seq, newest_at) = (newest.seq, newest.occurred_at());
            let head = append(tx, &entries).await?;
            let (count, signed_entries, signed_at): (i64, i64, Option<DateTime<Utc>>) =
                sqlx::query_as(
                    "INSERT INTO chain (one, entries) VALUES (true, $1)
                     ON CONFLICT (one) DO UPDATE SET entries = chain.entries + $1
                     RETURNING entries, signed_entries, signed_at",
                )
                .bind(i64::try_from(entries.len()).unwrap_or(i64::MAX))
                .fetch_one(&mut *tx)
                .await?;
            let every = i64::try_from(self.checkpoint_every).unwrap_or(i64::MAX);
            // A chain not signed yet is first signed at `every` entries, or by a serving
            // process once it is quiet.
            let due = count - signed_entries >= every
                || signed_at.is_some_and(|t| newest_at - t >= self.checkpoint_interval);
            if due {
                let count = u64::try_from(count).unwrap_or(0);
                emitted.push(
                    checkpoint_event(head_seq, &head, count, newest_at)
                        .map_err(|e| ApplyError::Data(format!("audit checkpoint: {e}")))?,
                );
                sqlx::query("UPDATE chain SET signed_entries = entries, signed_at = $1")
                    .bind(newest_at)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        // A checkpoint published by a serving process (for a quiet chain's tail) counts as one
        // this projection appended.
        for c in signed {
            sqlx::query(
                "UPDATE chain SET signed_entries = GREATEST(signed_entries, $1),
                                  signed_at = GREATEST(signed_at, $2)",
            )
            .bind(i64::try_from(c.entries).unwrap_or(i64::MAX))
            .bind(c.at)
            .execute(&mut *tx)
            .await?;
        }
        Ok(emitted)
    }
}

/// Appends `items` to the chain; the new head's hash.
async fn append(tx: &mut PgConnection, items: &[Entry]) -> Result<[u8; 32], ApplyError> {
    // The checkpoint row is locked for this transaction, so the chain head cannot move.
    let head: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT hash FROM entries ORDER BY seq DESC LIMIT 1")
            .fetch_optional(&mut *tx)
            .await?;
    let mut prev: [u8; 32] = match head {
        Some(h) => h
            .try_into()
            .map_err(|_| ApplyError::Data("the audit chain head is not a 32-byte hash".into()))?,
        None => GENESIS,
    };
    let mut prevs = Vec::with_capacity(items.len());
    let mut hashes = Vec::with_capacity(items.len());
    for e in items {
        let h = e.hash(&prev);
        prevs.push(prev.to_vec());
        hashes.push(h.to_vec());
        prev = h;
    }
    sqlx::query(
        "INSERT INTO entries (seq, occurred_at, actor, actor_role, action, resource, outcome, ip,
                              request_id, reason, event_id, event_source, event_type, prev_hash, hash,
                              recorded_at, claimed, layout)
         SELECT * FROM unnest($1::int8[], $2::timestamptz[], $3::text[], $4::text[], $5::text[], $6::text[],
                              $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[],
                              $13::text[], $14::bytea[], $15::bytea[], $16::timestamptz[], $17::jsonb[],
                              $18::int2[])",
    )
    .bind(items.iter().map(|e| i64::try_from(e.seq).unwrap_or(i64::MAX)).collect::<Vec<_>>())
    .bind(items.iter().map(Entry::occurred_at).collect::<Vec<_>>())
    .bind(items.iter().map(|e| e.actor.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|e| e.actor_role.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|e| e.action.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|e| e.resource.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|e| e.outcome.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|e| e.ip.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|e| e.request_id.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|e| e.reason.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|e| e.event_id.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|e| e.event_source.clone()).collect::<Vec<_>>())
    .bind(items.iter().map(|e| e.event_type.clone()).collect::<Vec<_>>())
    .bind(prevs)
    .bind(hashes)
    .bind(items.iter().map(Entry::recorded_at).collect::<Vec<_>>())
    .bind(
        items
            .iter()
            .map(|e| e.claimed.as_ref().map(sqlx::types::Json))
            .collect::<Vec<_>>(),
    )
    .bind(items.iter().map(|e| i16::from(e.layout)).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(prev)
}

/// A stored entry with its chain columns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredEntry {
    #[serde(flatten)]
    pub entry: Entry,
    #[serde(skip)]
    pub prev_hash: Vec<u8>,
    #[serde(skip)]
    pub hash: Vec<u8>,
}

fn row_to_entry(r: &sqlx::postgres::PgRow) -> Result<StoredEntry, sqlx::Error> {
    let occurred: DateTime<Utc> = r.try_get("occurred_at")?;
    let recorded: Option<DateTime<Utc>> = r.try_get("recorded_at")?;
    let claimed: Option<sqlx::types::Json<Claims>> = r.try_get("claimed")?;
    let layout: i16 = r.try_get("layout")?;
    Ok(StoredEntry {
        entry: Entry {
            seq: u64::try_from(r.try_get::<i64, _>("seq")?).unwrap_or(0),
            occurred_at_us: occurred.timestamp_micros(),
            actor: r.try_get("actor")?,
            actor_role: r.try_get("actor_role")?,
            action: r.try_get("action")?,
            resource: r.try_get("resource")?,
            outcome: r.try_get("outcome")?,
            ip: r.try_get("ip")?,
            request_id: r.try_get("request_id")?,
            reason: r.try_get("reason")?,
            event_id: r.try_get("event_id")?,
            event_source: r.try_get("event_source")?,
            event_type: r.try_get("event_type")?,
            recorded_at_us: recorded.map(|t| t.timestamp_micros()),
            claimed: claimed.map(|c| c.0),
            layout: u8::try_from(layout).unwrap_or(u8::MAX),
        },
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
    })
}

/// What is wrong with an entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// Its content no longer matches its own hash.
    Altered,
    /// It does not chain to the entry before it: something before it was deleted, inserted or
    /// moved.
    ChainBroken,
    /// The stream says this entry should exist, but the table lacks it.
    Deleted,
    /// The table has it, but no event on the stream produced it.
    Inserted,
    /// The stream produced a different entry at this sequence.
    Differs,
    /// A signed checkpoint on the stream states another head for the chain at this entry.
    CheckpointMismatch,
}

/// The first bad entry, or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Finding {
    pub seq: u64,
    pub problem: Problem,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Verification {
    pub entries: u64,
    pub first_bad: Option<Finding>,
    /// Against the stream: the signed checkpoints read, and the newest entry the newest one
    /// covers (the table must reach it, whatever its own checkpoint says).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signed: Option<Signed>,
}

/// What the signed checkpoints on the stream vouch for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct Signed {
    pub checkpoints: u64,
    /// The newest checkpoint's head: the chain held `entries` entries up to this sequence.
    pub through_seq: Option<u64>,
    pub through_entries: Option<u64>,
    /// Auditable events past both the projection's checkpoint and the newest signed head: not
    /// applied yet (or cut off after the newest checkpoint, which the next one would tell).
    pub unapplied: u64,
    /// Events of a signed type refused for their signature (forged, or signed with another key):
    /// never folded, so no entry; the first one's sequence.
    pub refused_signatures: u64,
    pub first_refused_seq: Option<u64>,
    /// The oldest sequence the stream still holds, and the table's entries older than it (their
    /// events aged out, `nats.max_age_days`): the chain check covers those, the stream no longer
    /// can.
    pub stream_first_seq: u64,
    pub aged_out: u64,
    /// Identities of the events read that verify moved from memory to its temporary table
    /// (see [`verify_against_stream_within`]).
    pub spilled_identities: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("audit database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    History(#[from] kairos_runtime::HistoryError),
}

impl StoredEntry {
    /// The entry as the API shows it: its fields, the time as RFC 3339 and its hash in hex.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.entry).unwrap_or_default();
        if let Some(m) = v.as_object_mut() {
            m.remove("occurred_at_us");
            m.remove("recorded_at_us");
        }
        v["occurred_at"] = serde_json::json!(rfc3339(self.entry.occurred_at()));
        v["recorded_at"] = serde_json::json!(self.entry.recorded_at().map(rfc3339));
        v["layout"] = serde_json::json!(self.entry.layout);
        v["prev_hash"] = serde_json::json!(hex(&self.prev_hash));
        v["hash"] = serde_json::json!(hex(&self.hash));
        v
    }

    /// One CSV record (RFC 4180 quoting; cells that a spreadsheet would run as a formula are
    /// prefixed with `'`).
    pub fn to_csv(&self) -> String {
        let e = &self.entry;
        let when = rfc3339(e.occurred_at());
        let claims = e.claimed.clone().unwrap_or_default();
        let cells = [
            e.seq.to_string(),
            when,
            e.actor.clone(),
            e.actor_role.clone().unwrap_or_default(),
            e.action.clone(),
            e.resource.clone(),
            e.outcome.clone(),
            e.ip.clone().unwrap_or_default(),
            e.request_id.clone().unwrap_or_default(),
            e.reason.clone().unwrap_or_default(),
            e.event_id.clone(),
            e.event_source.clone(),
            e.event_type.clone(),
            e.recorded_at().map(rfc3339).unwrap_or_default(),
            claims.actor.unwrap_or_default(),
            claims.role.unwrap_or_default(),
            claims.ip.unwrap_or_default(),
            claims.request_id.unwrap_or_default(),
            hex(&self.hash),
        ];
        cells
            .iter()
            .map(|c| csv_cell(c))
            .collect::<Vec<_>>()
            .join(",")
            + "\r\n"
    }
}

/// A time as the API and the export show it: RFC 3339 in UTC, to the microsecond.
fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// The CSV header matching [`StoredEntry::to_csv`].
pub const CSV_HEADER: &str = "seq,occurred_at,actor,actor_role,action,resource,outcome,ip,request_id,reason,event_id,event_source,event_type,recorded_at,claimed_actor,claimed_role,claimed_ip,claimed_request_id,hash\r\n";

fn csv_cell(c: &str) -> String {
    let c = if c.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{c}")
    } else {
        c.to_owned()
    };
    if c.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", c.replace('"', "\"\""))
    } else {
        c
    }
}

/// Recomputes the chain over the table, oldest first.
pub async fn verify_chain(pool: &PgPool) -> Result<Verification, VerifyError> {
    // Streamed in order: an audit log of years is never held in memory.
    let mut rows = sqlx::query("SELECT * FROM audit.entries ORDER BY seq").fetch(pool);
    let mut prev = GENESIS.to_vec();
    let mut n = 0;
    while let Some(r) = futures_util::TryStreamExt::try_next(&mut rows).await? {
        let s = row_to_entry(&r)?;
        n += 1;
        let own = s
            .entry
            .hash(&s.prev_hash.clone().try_into().unwrap_or(GENESIS));
        if own.as_slice() != s.hash.as_slice() {
            return Ok(Verification {
                signed: None,
                entries: n,
                first_bad: Some(Finding {
                    seq: s.entry.seq,
                    problem: Problem::Altered,
                    detail: "the entry's content does not match its hash".into(),
                }),
            });
        }
        if s.prev_hash != prev {
            return Ok(Verification {
                signed: None,
                entries: n,
                first_bad: Some(Finding {
                    seq: s.entry.seq,
                    problem: Problem::ChainBroken,
                    detail: format!(
                        "it chains to {} but the entry before it hashes to {}: an entry before it was deleted, inserted or moved",
                        &hex(&s.prev_hash)[..16],
                        &hex(&prev)[..16]
                    ),
                }),
            });
        }
        prev = s.hash;
    }
    Ok(Verification {
        entries: n,
        first_bad: None,
        signed: None,
    })
}

/// Rebuilds the entries from the stream alone (no table decides which events count: a retry is
/// the second event with an identity the stream already holds) and compares them with the
/// table in order, both streamed. The table must hold every entry up to the projection's
/// checkpoint or the newest signed checkpoint on the stream, whichever is further, so a tail
/// cut off together with the projection's own records is noticed; and every signed head must be
/// the table's entry at that sequence, with as many entries up to it.
pub async fn verify_against_stream(bus: &Bus, pool: &PgPool) -> Result<Verification, VerifyError> {
    verify_against_stream_within(bus, pool, IDENTITIES_IN_MEMORY).await
}

/// How many identities [`verify_against_stream`] keeps in memory (about 40 MB) before it moves
/// them to a temporary table of its own.
pub const IDENTITIES_IN_MEMORY: usize = 1 << 20;

/// [`verify_against_stream`], keeping at most about `in_memory` identities in memory: past
/// that, the identities met so far move to a temporary table in a transaction of verify's own,
/// filled from the stream alone and dropped when verify ends, and each later read of the stream
/// asks it about the identities it holds, a thousand at a time.
pub async fn verify_against_stream_within(
    bus: &Bus,
    pool: &PgPool,
    in_memory: usize,
) -> Result<Verification, VerifyError> {
    let stream_err = |e: kairos_bus::BusError| kairos_runtime::HistoryError::Stream(e.to_string());
    let (first, end) = bus.span().await.map_err(stream_err)?;
    let first = first.0;
    let applied = kairos_runtime::checkpoint(pool, NAME)
        .await?
        .map_or(0, |c| c.last_seq);
    let audit = Audit::default();
    let mut expected = Expected {
        decoder: StreamDecoder::open(&audit, bus, StreamSeq(1), end).await?,
        seen: Seen::new(pool, in_memory),
        ahead: std::collections::VecDeque::new(),
        heads: Vec::new(),
        signed: Signed::default(),
    };
    expected.signed.stream_first_seq = first;
    let mut rows = sqlx::query("SELECT * FROM audit.entries WHERE seq >= $1 ORDER BY seq")
        .bind(i64::try_from(first).unwrap_or(i64::MAX))
        .fetch(pool);
    let mut next_row = async || -> Result<Option<Entry>, VerifyError> {
        match futures_util::TryStreamExt::try_next(&mut rows).await? {
            Some(r) => Ok(Some(row_to_entry(&r)?.entry)),
            None => Ok(None),
        }
    };
    let (mut e, mut a) = (expected.next().await?, next_row().await?);
    let mut finding = None;
    // Entries written before an upgrade are in an older layout; none comes after a newer one.
    let mut layout = 0;
    loop {
        let found = match (&e, &a) {
            (None, None) => break,
            (Some(_), Some(y)) if y.layout < layout => Finding {
                seq: y.seq,
                problem: Problem::Differs,
                detail: format!(
                    "the entry is in layout {} after an entry in layout {layout}",
                    y.layout
                ),
            },
            (Some(x), Some(y)) if x.in_layout(y.layout) == *y => {
                layout = y.layout;
                e = expected.next().await?;
                a = next_row().await?;
                continue;
            }
            (Some(x), Some(y)) if x.seq == y.seq => Finding {
                seq: y.seq,
                problem: Problem::Differs,
                detail: "the table's entry differs from the one its event produces".into(),
            },
            (Some(x), Some(y)) if x.seq < y.seq => deleted(x.seq),
            (_, Some(y)) => Finding {
                seq: y.seq,
                problem: Problem::Inserted,
                detail: "no event on the stream produced this entry".into(),
            },
            // The table ends here: what the stream holds past it is missing only up to what was
            // applied or signed, known once the stream is read to its end.
            (Some(_), None) => break,
        };
        finding = Some(found);
        break;
    }
    let first_unapplied = if finding.is_none() { e.take() } else { None };
    // The rest of the stream: its checkpoints, and how many entries follow the first missing one.
    let mut after_first = 0;
    while expected.next().await?.is_some() {
        after_first += 1;
    }
    let mut signed = expected.signed;
    let newest = expected.heads.iter().max_by_key(|h| h.head_seq).cloned();
    signed.through_seq = newest.as_ref().map(|h| h.head_seq);
    signed.through_entries = newest.as_ref().map(|h| h.entries);
    if finding.is_none()
        && let Some(x) = first_unapplied
    {
        let must_reach = applied.max(signed.through_seq.unwrap_or(0));
        if x.seq <= must_reach {
            finding = Some(deleted(x.seq));
        } else {
            signed.unapplied = 1 + after_first;
        }
    }
    if finding.is_none() {
        finding = check_heads(pool, &expected.heads).await?;
    }
    let (entries, aged_out): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(*) FILTER (WHERE seq < $1) FROM audit.entries")
            .bind(i64::try_from(first).unwrap_or(i64::MAX))
            .fetch_one(pool)
            .await?;
    signed.aged_out = u64::try_from(aged_out).unwrap_or(0);
    signed.spilled_identities = expected.seen.spilled;
    expected.seen.close().await;
    Ok(Verification {
        entries: u64::try_from(entries).unwrap_or(0),
        first_bad: finding,
        signed: Some(signed),
    })
}

fn deleted(seq: u64) -> Finding {
    Finding {
        seq,
        problem: Problem::Deleted,
        detail: "the event is on the stream; its entry is missing".into(),
    }
}

/// The entries the stream implies, in order, and the signed heads it holds.
struct Expected<'a> {
    decoder: StreamDecoder<'a, Audit>,
    seen: Seen<'a>,
    /// Entries decoded ahead of the comparison (at most a read's worth).
    ahead: std::collections::VecDeque<Entry>,
    heads: Vec<SignedHead>,
    signed: Signed,
}

/// How many decoded events [`Expected`] reads ahead (fewer if [`Seen`] keeps fewer in memory):
/// one question to [`Seen`]'s table each.
const READ_AHEAD: usize = 1000;

impl Expected<'_> {
    async fn next(&mut self) -> Result<Option<Entry>, VerifyError> {
        loop {
            if let Some(e) = self.ahead.pop_front() {
                return Ok(Some(e));
            }
            let mut read = Vec::new();
            while read.len() < READ_AHEAD.min(self.seen.cap)
                && let Some(d) = self.decoder.next().await?
            {
                read.push(d);
            }
            if read.is_empty() {
                return Ok(None);
            }
            let met_before = self.seen.met_before(&read).await?;
            for d in read {
                match d {
                    Decoded::Item(identity, _, item)
                        if !met_before.contains(&identity) && self.seen.insert(identity) =>
                    {
                        match item {
                            Item::Entry(e) => self.ahead.push_back(e),
                            Item::Checkpoint(c) => {
                                self.signed.checkpoints += 1;
                                self.heads.push(c);
                            }
                        }
                    }
                    Decoded::Item(..) => {}
                    Decoded::Rejected(seq, r) if matches!(r.code, "unsigned" | "bad_signature") => {
                        self.signed.refused_signatures += 1;
                        self.signed.first_refused_seq.get_or_insert(seq.0);
                    }
                    Decoded::Rejected(..) => {}
                }
            }
        }
    }
}

/// The identities of the events verify has met, so that a retry (an identity met before) makes
/// no entry: in memory up to `cap`, then moved to a temporary table of verify's own.
struct Seen<'a> {
    pool: &'a PgPool,
    memory: std::collections::HashSet<uuid::Uuid>,
    cap: usize,
    /// The transaction holding the table, once identities were moved there: the table is
    /// dropped with it, however verify ends.
    table: Option<sqlx::Transaction<'static, sqlx::Postgres>>,
    spilled: u64,
}

impl<'a> Seen<'a> {
    fn new(pool: &'a PgPool, cap: usize) -> Self {
        Self {
            pool,
            memory: std::collections::HashSet::new(),
            cap: cap.max(1),
            table: None,
            spilled: 0,
        }
    }

    /// Whether `identity` is new (and now met).
    fn insert(&mut self, identity: uuid::Uuid) -> bool {
        self.memory.insert(identity)
    }

    /// The identities of `read` that the table holds; first moves the memory's identities to
    /// the table if there are `cap` of them (between reads, so none of `read` is moved before
    /// it is asked about).
    async fn met_before(
        &mut self,
        read: &[Decoded<Item>],
    ) -> Result<std::collections::HashSet<uuid::Uuid>, VerifyError> {
        if self.memory.len() >= self.cap {
            let conn = match &mut self.table {
                Some(c) => c,
                None => {
                    let mut c = self.pool.begin().await?;
                    sqlx::query(
                        "CREATE TEMPORARY TABLE kairos_verify_seen (identity uuid PRIMARY KEY) ON COMMIT DROP",
                    )
                    .execute(&mut *c)
                    .await?;
                    self.table.insert(c)
                }
            };
            let ids: Vec<uuid::Uuid> = self.memory.drain().collect();
            sqlx::query("INSERT INTO kairos_verify_seen SELECT unnest($1::uuid[])")
                .bind(&ids)
                .execute(&mut **conn)
                .await?;
            self.spilled += ids.len() as u64;
            self.memory.shrink_to(self.cap);
        }
        let Some(conn) = &mut self.table else {
            return Ok(std::collections::HashSet::new());
        };
        let ids: Vec<uuid::Uuid> = read
            .iter()
            .filter_map(|d| match d {
                Decoded::Item(identity, ..) => Some(*identity),
                Decoded::Rejected(..) => None,
            })
            .collect();
        Ok(sqlx::query_scalar::<_, uuid::Uuid>(
            "SELECT identity FROM kairos_verify_seen WHERE identity = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut **conn)
        .await?
        .into_iter()
        .collect())
    }

    /// Drops the table (its transaction rolled back; dropping the transaction would too).
    async fn close(self) {
        if let Some(t) = self.table {
            let _ = t.rollback().await;
        }
    }
}

/// Each signed head against the table: the entry at its sequence has its hash, and the newest
/// has as many entries up to it as it says.
async fn check_heads(pool: &PgPool, heads: &[SignedHead]) -> Result<Option<Finding>, VerifyError> {
    let mismatch = |h: &SignedHead, why: String| Finding {
        seq: h.head_seq,
        problem: Problem::CheckpointMismatch,
        detail: format!("the signed checkpoint at stream seq {} {why}", h.seq),
    };
    let seqs: Vec<i64> = heads
        .iter()
        .map(|h| i64::try_from(h.head_seq).unwrap_or(i64::MAX))
        .collect();
    let stored: std::collections::HashMap<i64, Vec<u8>> = sqlx::query_as::<_, (i64, Vec<u8>)>(
        "SELECT seq, hash FROM audit.entries WHERE seq = ANY($1)",
    )
    .bind(&seqs)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    let mut ordered: Vec<&SignedHead> = heads.iter().collect();
    ordered.sort_by_key(|h| h.head_seq);
    for h in &ordered {
        match stored.get(&i64::try_from(h.head_seq).unwrap_or(i64::MAX)) {
            None => return Ok(Some(mismatch(h, "names an entry the table lacks".into()))),
            Some(hash) if hash.as_slice() != h.head_hash => {
                return Ok(Some(mismatch(
                    h,
                    format!(
                        "states hash {} for it; the table's is {}",
                        &hex(&h.head_hash)[..16],
                        &hex(hash)[..16.min(hash.len() * 2)]
                    ),
                )));
            }
            Some(_) => {}
        }
    }
    if let Some(h) = ordered.last() {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM audit.entries WHERE seq <= $1")
            .bind(i64::try_from(h.head_seq).unwrap_or(i64::MAX))
            .fetch_one(pool)
            .await?;
        if u64::try_from(n).unwrap_or(0) != h.entries {
            return Ok(Some(mismatch(
                h,
                format!("counts {} entries up to it; the table holds {n}", h.entries),
            )));
        }
    }
    Ok(None)
}

/// Filters for [`query`].
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// The actor Kairos authenticated.
    pub actor: Option<String>,
    /// The actor a producer's user action names.
    pub claimed_actor: Option<String>,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub outcome: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
    /// What `from` and `to` bound: when the stream stored the event (the default), or the time
    /// the event states.
    pub time: TimeBasis,
    /// Only entries before this sequence (keyset cursor, newest first).
    pub before_seq: Option<u64>,
    /// Only entries at or before this sequence (`as_of`).
    pub upto_seq: Option<u64>,
    /// Only entries after this sequence (keyset cursor, oldest first).
    pub after_seq: Option<u64>,
}

/// Which time of an entry a filter bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TimeBasis {
    /// When the stream stored the event: no producer chooses it.
    #[default]
    Recorded,
    /// The event's own `time`: for a producer's event, the time it claims.
    Occurred,
}

/// Entries matching `f`, newest first, at most `limit`.
pub async fn query(
    pool: &PgPool,
    f: &Filter,
    limit: i64,
    oldest_first: bool,
) -> Result<Vec<StoredEntry>, sqlx::Error> {
    let order = if oldest_first { "ASC" } else { "DESC" };
    // A layout-1 entry has no `recorded_at`: its event's time stands in.
    let time = match f.time {
        TimeBasis::Recorded => "COALESCE(recorded_at, occurred_at)",
        TimeBasis::Occurred => "occurred_at",
    };
    let sql = format!(
        "SELECT * FROM audit.entries
         WHERE ($1::text IS NULL OR actor = $1) AND ($2::text IS NULL OR action = $2)
           AND ($3::text IS NULL OR resource = $3) AND ($4::text IS NULL OR outcome = $4)
           AND ($5::timestamptz IS NULL OR {time} >= $5) AND ($6::timestamptz IS NULL OR {time} <= $6)
           AND ($7::int8 IS NULL OR seq < $7) AND ($8::int8 IS NULL OR seq <= $8)
           AND ($10::int8 IS NULL OR seq > $10)
           AND ($11::text IS NULL OR claimed->>'actor' = $11)
         ORDER BY seq {order} LIMIT $9"
    );
    let seq = |s: Option<u64>| s.map(|s| i64::try_from(s).unwrap_or(i64::MAX));
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(&f.actor)
        .bind(&f.action)
        .bind(&f.resource)
        .bind(&f.outcome)
        .bind(f.from)
        .bind(f.to)
        .bind(seq(f.before_seq))
        .bind(seq(f.upto_seq))
        .bind(limit)
        .bind(seq(f.after_seq))
        .bind(&f.claimed_actor)
        .fetch_all(pool)
        .await?
        .iter()
        .map(row_to_entry)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64, actor: &str) -> Entry {
        Entry {
            seq,
            occurred_at_us: 1_700_000_000_000_000,
            actor: actor.into(),
            actor_role: Some("admin".into()),
            action: "budget.set".into(),
            resource: "project:p".into(),
            outcome: "success".into(),
            ip: None,
            request_id: None,
            reason: None,
            event_id: format!("e{seq}"),
            event_source: "s".into(),
            event_type: USER_ACTION.into(),
            recorded_at_us: None,
            claimed: None,
            layout: 1,
        }
    }

    #[test]
    fn the_hash_covers_content_and_position_in_the_chain() {
        let a = entry(1, "alice");
        let h = a.hash(&GENESIS);
        assert_eq!(h, a.hash(&GENESIS));
        assert_ne!(h, entry(1, "mallory").hash(&GENESIS));
        assert_ne!(h, entry(2, "alice").hash(&GENESIS));
        assert_ne!(h, a.hash(&h));
    }

    #[test]
    fn a_layout_1_entry_hashes_as_it_always_did() {
        // The canonical form entries were hashed in before layout 2: its bytes must not move.
        let e = entry(7, "alice");
        assert_eq!(
            String::from_utf8(e.canonical()).unwrap(),
            r#"{"seq":7,"occurred_at_us":1700000000000000,"actor":"alice","actor_role":"admin","action":"budget.set","resource":"project:p","outcome":"success","ip":null,"request_id":null,"reason":null,"event_id":"e7","event_source":"s","event_type":"kairos.user.action.v1"}"#
        );
        let mut newer = e.clone();
        newer.layout = LAYOUT;
        assert_ne!(
            newer.hash(&GENESIS),
            e.hash(&GENESIS),
            "the layout is hashed"
        );
    }

    fn stored(source: &str, vouched: bool) -> StoredEvent {
        let event = Emit::new(
            USER_ACTION,
            source,
            serde_json::json!({"actor": "alice", "role": "admin", "ip": "10.0.0.9",
                               "request_id": "r-1", "action": "prompt.update",
                               "resource": "prompt:1", "outcome": "success"}),
        )
        .id("u-1")
        .time("2020-01-01T00:00:00Z".parse().unwrap())
        .build()
        .unwrap();
        StoredEvent {
            seq: StreamSeq(3),
            subject: "kairos.events.user._global".into(),
            stored_at: "2026-12-06T10:00:00.123456789Z".parse().unwrap(),
            event,
            vouched,
        }
    }

    #[test]
    fn a_producer_claims_who_acted_and_kairos_says_who_it_authenticated() {
        let recorded = Entry::from_event(&stored("kairos/api", true))
            .unwrap()
            .unwrap();
        assert_eq!(
            (recorded.actor.as_str(), recorded.actor_role.as_deref()),
            ("alice", Some("admin"))
        );
        assert_eq!(
            (recorded.ip.as_deref(), recorded.claimed),
            (Some("10.0.0.9"), None)
        );

        for (source, vouched) in [("console", true), ("kairos/api", false)] {
            let e = Entry::from_event(&stored(source, vouched))
                .unwrap()
                .unwrap();
            assert_eq!(
                e.actor, source,
                "the producer is who acted, as far as Kairos knows"
            );
            assert_eq!((&e.actor_role, &e.ip, &e.request_id), (&None, &None, &None));
            let c = e.claimed.clone().unwrap();
            assert_eq!(
                (c.actor.as_deref(), c.role.as_deref(), c.ip.as_deref()),
                (Some("alice"), Some("admin"), Some("10.0.0.9"))
            );
            // The producer's time and the stream's, apart.
            assert_eq!(e.occurred_at().to_rfc3339(), "2020-01-01T00:00:00+00:00");
            assert_eq!(
                e.recorded_at().unwrap().to_rfc3339(),
                "2026-12-06T10:00:00.123456+00:00"
            );
            // Layout 1 had the claims in the actor's fields, and no stream time.
            let old = e.in_layout(1);
            assert_eq!(
                (
                    old.actor.as_str(),
                    old.actor_role.as_deref(),
                    old.ip.as_deref()
                ),
                ("alice", Some("admin"), Some("10.0.0.9"))
            );
            assert_eq!(
                (old.recorded_at_us, old.claimed, old.layout),
                (None, None, 1)
            );
        }
    }

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(csv_cell("-1"), "'-1");
        assert_eq!(csv_cell("two\nlines"), "\"two\nlines\"");
    }
}
